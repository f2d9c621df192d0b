"""Items → row tuples under a table schema, in one pass over each item's attributes.

A row has one value per schema column, in column order; attributes an item lacks are None (SQL NULL). jsonb values
come back serialised (bytes), so the target writes them as they are. The schema must already hold every column the
item needs (see :func:`podyn_py.core.schema.evolve`); a missing one is a bug, reported as DataError naming the key.

Each item is first built by a fast path that knows, per type tag, the column of each attribute, converts the common
values in line, and gives up (returns None) at the first thing it does not handle alone: an attribute without a
column, a U+0000, an empty map without its "M", NULL that is not true, any error. The general path then builds the
item from scratch, so what it decides (errors, counts, overflow, MissingColumn) is decided in one place; both give
the same rows (tests/test_fast_rows.py).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, TypeVar

from podyn_py.core.schema import DATA_COLUMN, ConversionMode, TableSchema
from podyn_py.core.values import (
    NULL_TAG,
    NUMBER,
    PG_TYPE_OF_TAG,
    decode_binary,
    dump_json,
    key_text,
    split_value,
    to_column_value,
    to_json,
    to_json_general,
)
from podyn_py.errors import DataError

Item = Mapping[str, Any]
T = TypeVar("T")

_number = NUMBER.fullmatch


@dataclass(frozen=True)
class Rejected:
    """An item (or stream record) that cannot become a row, kept whole in ``podyn.rejected`` with why."""

    item: dict[str, Any]
    key: str
    attribute: str | None
    error: str


class MissingColumn(Exception):
    """The schema lacks a column this item needs: evolve the schema, then build again."""


class RowBuilder:
    """Builds rows for one schema version. Build a new one when the schema gains columns."""

    def __init__(
        self,
        schema: TableSchema,
        nul_counts: Counter[str] | None = None,
        untagged_map_counts: Counter[str] | None = None,
    ) -> None:
        self.schema = schema
        self.width = len(schema.columns)
        #: Per column name, how many values lost a U+0000 (pass one Counter to successive builders to add up).
        self.nul_counts: Counter[str] = Counter() if nul_counts is None else nul_counts
        #: Per attribute, how many empty maps came as ``{}`` without their ``"M"`` (DynamoDB Local's stream images)
        #: and were taken as empty maps; shared like ``nul_counts``.
        self.untagged_map_counts: Counter[str] = Counter() if untagged_map_counts is None else untagged_map_counts
        spec = schema.spec
        self._keys = tuple((k.name, schema.columns.index(schema.key_column(k))) for k in spec.key_columns_attributes)
        self._required = tuple((k.name, k.tag) for k in spec.primary_key)
        self._jsonb = spec.mode is ConversionMode.JSONB
        self._data_position = schema.column_names.index(DATA_COLUMN) if self._jsonb else -1
        self._overflow = schema.overflow_position
        #: Per type tag, each attribute's position in the row (the fast path's one lookup per attribute).
        self._positions: dict[str, dict[str, int]] = {tag: {} for tag in PG_TYPE_OF_TAG}
        for index, column in enumerate(schema.columns):
            if column.attribute is not None:
                for tag, pg_type in PG_TYPE_OF_TAG.items():
                    if pg_type is column.type:
                        self._positions[tag][column.attribute] = index
        self._key_positions = tuple((name, index, schema.columns[index].type) for name, index in self._keys)

    def build(self, item: Item) -> list[Any]:
        return self._in_context(item, self._build)

    def build_general(self, item: Item) -> list[Any]:
        """:meth:`build` without the fast path: what the fast path must agree with."""
        return self._in_context(item, self._build_jsonb if self._jsonb else self._build_columns)

    def fast_row(self, item: Item) -> list[Any] | None:
        """The row by the fast path alone (key attributes unchecked), or None where the general path must build it."""
        return self._fast_jsonb(item) if self._jsonb else self._fast_columns(item)

    def _build(self, item: Item) -> list[Any]:
        if self._jsonb:
            row = self._fast_jsonb(item)
            return self._build_jsonb(item) if row is None else row
        row = self._fast_columns(item)
        return self._build_columns(item) if row is None else row

    def check(self, item: Item) -> None:
        """Raise the DataError that building ``item`` would meet once the schema holds its columns.

        For items that need new columns: a value that cannot be converted must not make the schema grow, since
        evolve would add a column for its type tag all the same.
        """
        self._in_context(item, _check_values)

    def _in_context(self, item: Item, build: Callable[[Item], T]) -> T:
        """``build(item)`` after checking the key attributes; a DataError gains the table and the item's key."""
        try:
            for name, tag in self._required:
                value = item.get(name)
                if value is None:
                    raise DataError("item lacks a key attribute", attribute=name)
                if not isinstance(value, dict) or tag not in value or len(value) != 1:
                    raise DataError(f"key attribute is not of type {tag}: {value!r:.80}", attribute=name)
            return build(item)
        except DataError as exc:
            raise DataError(
                exc.message,
                table=self.schema.spec.source,
                key=key_text(item, self.schema.spec.key_names),
                attribute=exc.attribute,
            ) from exc

    def _fast_columns(self, item: Item) -> list[Any] | None:
        """The row, or None for the general path to build it (see the module's docstring)."""
        row: list[Any] = [None] * self.width
        positions = self._positions
        nuls: list[int] = []
        untagged: list[int] = []
        try:
            for attribute, value in item.items():
                try:
                    ((tag, raw),) = value.items()
                except (AttributeError, ValueError):
                    return None
                by_attribute = positions.get(tag)
                if by_attribute is None:
                    if tag == NULL_TAG and raw is True:
                        continue
                    return None
                index = by_attribute.get(attribute)
                if index is None:
                    return None
                if tag == "S":
                    if raw.__class__ is not str or "\x00" in raw:
                        return None
                    row[index] = raw
                elif tag == "N":
                    # Digits alone are a number (cheaper than the pattern; isascii: "²".isdigit() is true too).
                    if raw.__class__ is not str or not ((raw.isdigit() and raw.isascii()) or _number(raw)):
                        return None
                    row[index] = Decimal(raw)
                elif tag == "BOOL":
                    if raw.__class__ is not bool:
                        return None
                    row[index] = raw
                elif tag == "B":
                    row[index] = decode_binary(raw)
                else:
                    tree = to_json(value, nuls, untagged)
                    if nuls or untagged:
                        return None
                    row[index] = dump_json(tree)
        except DataError:
            return None
        return row

    def _build_columns(self, item: Item) -> list[Any]:
        row: list[Any] = [None] * self.width
        nuls: list[int] = []
        untagged: list[int] = []
        found: list[str] = []
        position = self.schema.position
        overflow: dict[str, Any] | None = None
        for attribute, value in item.items():
            try:
                ((tag, raw),) = value.items()
            except (AttributeError, ValueError):
                try:
                    tag, raw = split_value(value, untagged)  # only {} passes: an empty map without its "M"
                except DataError as exc:
                    raise DataError(exc.message, attribute=attribute) from None
            if tag == NULL_TAG:
                if raw is not True:
                    raise DataError(f"NULL value is not true: {raw!r:.40}", attribute=attribute)
                continue
            pg_type = PG_TYPE_OF_TAG.get(tag)
            if pg_type is None:
                raise DataError(f"unknown DynamoDB type tag {tag!r}", attribute=attribute)
            index = position(attribute, pg_type)
            if index is None:
                if self._overflow is None:
                    raise MissingColumn(attribute)
                if overflow is None:
                    overflow = {}
                try:
                    overflow[attribute.replace("\x00", "")] = to_json_general(value, nuls, untagged)
                except DataError as exc:
                    raise DataError(exc.message, attribute=attribute) from exc
                self._note_untagged(attribute, untagged, found)
                continue
            try:
                row[index] = to_column_value(tag, raw, nuls, untagged)
            except DataError as exc:
                raise DataError(exc.message, attribute=attribute) from exc
            self._note_untagged(attribute, untagged, found)
            if nuls:
                self.nul_counts[self.schema.columns[index].name] += 1
                nuls.clear()
        if overflow is not None:
            assert self._overflow is not None
            row[self._overflow] = dump_json(overflow)
            if nuls:
                self.nul_counts[self.schema.columns[self._overflow].name] += 1
        self.untagged_map_counts.update(found)
        return row

    def _fast_jsonb(self, item: Item) -> list[Any] | None:
        """The row, or None for the general path to build it (see the module's docstring)."""
        nuls: list[int] = []
        untagged: list[int] = []
        try:
            if "\x00" in "".join(item):
                return None
        except TypeError:  # a name that is not a str
            return None
        try:
            tree = {attribute: to_json(value, nuls, untagged) for attribute, value in item.items()}
            if nuls or untagged:
                return None
            row: list[Any] = [None] * self.width
            for attribute, index, pg_type in self._key_positions:
                value = item.get(attribute)
                if value is None:
                    continue
                ((tag, raw),) = value.items()
                if PG_TYPE_OF_TAG.get(tag) is pg_type:
                    row[index] = to_column_value(tag, raw)
            row[self._data_position] = dump_json(tree)
        except DataError:
            return None
        return row

    def _build_jsonb(self, item: Item) -> list[Any]:
        row: list[Any] = [None] * self.width
        nuls: list[int] = []
        untagged: list[int] = []
        found: list[str] = []
        tree = {}
        for attribute, value in item.items():
            try:
                tree[attribute.replace("\x00", "")] = to_json_general(value, nuls, untagged)
            except DataError as exc:
                raise DataError(exc.message, attribute=attribute) from exc
            self._note_untagged(attribute, untagged, found)
        for attribute, index in self._keys:
            value = item.get(attribute)
            if value is None:
                continue
            ((tag, raw),) = value.items()
            if PG_TYPE_OF_TAG.get(tag) is self.schema.columns[index].type:
                row[index] = to_column_value(tag, raw)
        if nuls or any("\x00" in a for a in item):
            self.nul_counts[DATA_COLUMN] += 1
        row[self._data_position] = dump_json(tree)
        self.untagged_map_counts.update(found)
        return row

    @staticmethod
    def _note_untagged(attribute: str, untagged: list[int], found: list[str]) -> None:
        """Move the empty maps without "M" just seen to ``found``, counted once the whole row is built (a row
        abandoned for a missing column is built again and must not count twice)."""
        if untagged:
            found.extend([attribute] * len(untagged))
            untagged.clear()


def _check_values(item: Item) -> None:
    """Convert every attribute value of ``item``, keeping nothing: DataError names the first one that fails."""
    for attribute, value in item.items():
        try:
            to_column_value(*split_value(value))
        except DataError as exc:
            raise DataError(exc.message, attribute=attribute) from exc
