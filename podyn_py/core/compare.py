"""Expected row against stored row: what podyn makes of a DynamoDB item, under a mapping, compared with its row.

Pure: the caller reads the item and the row (``podyn --verify`` in :mod:`podyn_py.verify`, its SQL in
:mod:`podyn_py.target.verify_sql`) and gets back the differences, each with its kind, key, column and both values
shown short. Equal means equal values of the same type: JSON's true is not 1, 1.50 is 1.5, and the members of a
DynamoDB set have no order. What podyn changes on purpose (U+0000 removed) is no difference, since the expected row
is the one :class:`RowBuilder` builds.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from decimal import Decimal
from enum import StrEnum
from typing import Any, Protocol

import orjson

from podyn_py.core.rows import MissingColumn, RowBuilder
from podyn_py.core.schema import DATA_COLUMN, ConversionMode
from podyn_py.core.values import PgType
from podyn_py.errors import DataError

Item = dict[str, Any]


class Kind(StrEnum):
    MISSING = "missing"  # an item without its row
    EXTRA = "extra"  # a row without its item
    VALUE = "differs"  # a column whose value is not the item's
    UNMAPPED = "unmapped"  # an attribute (of this type) that no column holds
    INVALID = "invalid"  # an item podyn cannot convert (the load keeps it in podyn.rejected)
    COLUMN = "column"  # a mapped column the table lacks


@dataclass(frozen=True)
class Difference:
    kind: Kind
    key: str | None
    column: str | None = None
    expected: str | None = None
    found: str | None = None


class Counts(Protocol):
    """What a comparison counts: a part's :class:`Tally`, or a table's whole report (``verify.TableReport``)."""

    items: int
    missing: int
    extra: int
    differing: int
    invalid: int
    differences: list[Difference]
    difference_count: int
    not_rechecked: int


def count(into: Counts, found: Sequence[Difference], limit: int) -> None:
    """Count one key's differences (a mapped column missing from the table: one column's), as confirmed; the
    first ``limit`` differences are listed."""
    kind = found[0].kind
    if kind is Kind.MISSING:
        into.missing += 1
    elif kind is Kind.EXTRA:
        into.extra += 1
    elif kind is Kind.INVALID:
        into.invalid += 1
    elif kind is not Kind.COLUMN:
        into.differing += 1
    into.differences.extend(found[: max(0, limit - len(into.differences))])
    into.difference_count += len(found)


def add_up(into: Counts, other: Counts, limit: int) -> None:
    """Count ``other``'s findings too; its differences listed after those of ``into``, up to ``limit`` in all."""
    into.items += other.items
    into.missing += other.missing
    into.extra += other.extra
    into.differing += other.differing
    into.invalid += other.invalid
    into.differences.extend(other.differences[: max(0, limit - len(into.differences))])
    into.difference_count += other.difference_count
    into.not_rechecked += other.not_rechecked


@dataclass
class Tally:
    """What the comparison of one part of a table found (a scan segment, or the rows without items): ``--verify``
    shared by several processes commits one per part, and each process's report adds them up."""

    items: int = 0
    missing: int = 0
    extra: int = 0
    differing: int = 0
    invalid: int = 0
    differences: list[Difference] = field(default_factory=list)
    difference_count: int = 0
    not_rechecked: int = 0

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Tally:
        differences = [Difference(**(d | {"kind": Kind(d["kind"])})) for d in data.get("differences", [])]
        counts = {name: int(value) for name, value in data.items() if name != "differences"}
        return cls(**counts, differences=differences)


def exact_loads(data: bytes | str) -> Any:
    """JSON with exact numbers (Decimal), as jsonb values are compared: the reader for the verifying connections."""
    return json.loads(data, parse_float=Decimal, parse_int=Decimal)


def compare(builder: RowBuilder, item: Item | None, row: Sequence[Any] | None, key: str) -> list[Difference]:
    """How a row (None: no row) differs from what ``builder`` makes of the item (None: no item); empty when equal.

    ``row`` holds the values of ``builder.schema``'s columns, in column order, as read with :func:`exact_loads`
    for jsonb; ``key`` is the item's key as shown in the differences.
    """
    if item is None:
        return [] if row is None else [Difference(Kind.EXTRA, key)]
    try:
        expected = builder.build(item)
    except MissingColumn as exc:
        return [Difference(Kind.UNMAPPED, key, f"(attribute {exc.args[0]!r})", found="no column holds it")]
    except DataError as exc:
        return [Difference(Kind.INVALID, key, exc.attribute, expected=exc.message)]
    if row is None:
        return [Difference(Kind.MISSING, key)]
    found: list[Difference] = []
    jsonb_mode = builder.schema.spec.mode is ConversionMode.JSONB
    for column, want, have in zip(builder.schema.columns, expected, row, strict=True):
        if column.type is not PgType.JSONB:
            if not _same(want, have):
                found.append(Difference(Kind.VALUE, key, column.name, show(want), show(have)))
            continue
        want = None if want is None else exact_loads(want)
        if jsonb_mode and column.name == DATA_COLUMN and isinstance(want, dict) and isinstance(have, dict):
            found.extend(_data_differences(item, want, have, key))
        elif not _same_json(item.get(column.attribute) if column.attribute else {"M": item}, want, have):
            found.append(Difference(Kind.VALUE, key, column.name, show(want), show(have)))
    return found


def _data_differences(item: Item, want: dict[str, Any], have: dict[str, Any], key: str) -> list[Difference]:
    """jsonb mode: name the top-level attributes that differ inside ``data``."""
    shapes = {name.replace("\x00", ""): value for name, value in item.items()}
    return [
        Difference(
            Kind.VALUE,
            key,
            f"{DATA_COLUMN}.{name}",
            show(want[name]) if name in want else "(absent)",
            show(have[name]) if name in have else "(absent)",
        )
        for name in sorted(want.keys() | have.keys())
        if name not in want or name not in have or not _same_json(shapes.get(name), want[name], have[name])
    ]


def _same(want: Any, have: Any) -> bool:
    """Equal values of the same type: JSON's true is not 1, 1.50 is 1.5."""
    if isinstance(want, dict):
        return isinstance(have, dict) and want.keys() == have.keys() and all(_same(want[k], have[k]) for k in want)
    if isinstance(want, list):
        return isinstance(have, list) and len(want) == len(have) and all(map(_same, want, have))
    return type(want) is type(have) and want == have


def _same_json(shape: Any, want: Any, have: Any) -> bool:
    """Like :func:`_same`, except that DynamoDB sets (found through the attribute value ``shape``) have no order."""
    tag: str | None = None
    raw: Any = None
    if isinstance(shape, dict) and len(shape) == 1:
        ((tag, raw),) = shape.items()
    if tag == "M" and isinstance(want, dict) and isinstance(have, dict) and want.keys() == have.keys():
        shapes = {name.replace("\x00", ""): value for name, value in raw.items()}
        return all(_same_json(shapes.get(k), want[k], have[k]) for k in want)
    if tag == "L" and isinstance(want, list) and isinstance(have, list) and len(want) == len(have):
        return all(map(_same_json, raw, want, have))
    if tag in ("SS", "NS", "BS") and isinstance(want, list) and isinstance(have, list):
        try:
            return _same(sorted(want, key=_order), sorted(have, key=_order))
        except TypeError:  # members that do not sort together are not the same set
            return False
    return _same(want, have)


def _order(value: Any) -> tuple[str, Any]:
    return type(value).__name__, value


def show(value: Any, limit: int = 80) -> str:
    """A value, short: bytea as hex, the rest as JSON with exact numbers."""
    if value is None:
        text = "NULL"
    elif isinstance(value, bytes):
        text = "\\x" + value.hex()
    else:
        text = orjson.dumps(value, default=_exact_number).decode()
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _exact_number(value: Any) -> Any:
    if isinstance(value, Decimal):
        return orjson.Fragment(str(value))
    raise TypeError
