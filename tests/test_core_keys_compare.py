"""The pure pieces that moved into the core: key conversion (core/keys.py), the expected-row comparison of
``--verify`` (core/compare.py) and the key columns of indexes added later (core/schema.complete_keys).

No database, no DynamoDB: rows are built as psycopg would return them (numeric as Decimal, bytea as memoryview,
jsonb through :func:`compare.exact_loads`).
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from podyn_py.core import compare, keys
from podyn_py.core.rows import RowBuilder
from podyn_py.core.schema import (
    Column,
    ConversionMode,
    IndexSpec,
    KeyAttribute,
    TableSchema,
    TableSpec,
    complete_keys,
    evolve,
    initial_schema,
)
from podyn_py.core.values import PgType

SPEC = TableSpec("T", "public", "t", KeyAttribute("pk", "B"), KeyAttribute("sk", "N"))


@pytest.mark.parametrize(
    ("key", "values"),
    [
        ({"pk": {"B": b"\x00\xff"}, "sk": {"N": "1.50"}}, (b"\x00\xff", Decimal("1.50"))),
        ({"pk": {"B": "AP8="}, "sk": {"N": "-1E-130"}}, (b"\x00\xff", Decimal("-1E-130"))),  # fast path: base64
        ({"sk": {"N": "0"}, "pk": {"B": b""}, "other": {"S": "ignored"}}, (b"", Decimal("0"))),  # an item
    ],
)
def test_key_values_are_the_row_key_in_column_order(key: dict[str, Any], values: tuple[Any, ...]) -> None:
    assert keys.key_values(SPEC, key) == values


def test_key_from_values_is_a_dynamodb_key_again() -> None:
    # As psycopg returns them: numeric as Decimal, bytea as memoryview.
    key = keys.key_from_values(SPEC, (memoryview(b"\x01"), Decimal("1.50")))
    assert key == {"pk": {"B": b"\x01"}, "sk": {"N": "1.50"}}
    assert type(key["pk"]["B"]) is bytes
    assert keys.key_values(SPEC, key) == (b"\x01", Decimal("1.50"))
    text = TableSpec("T", "public", "t", KeyAttribute("id", "S"))
    assert keys.key_from_values(text, ("a\u00e9",)) == {"id": {"S": "a\u00e9"}}


@pytest.mark.parametrize(
    "key",
    [
        {"pk": {"B": b"\x00\xff"}, "sk": {"N": "7"}},
        {"pk": {"S": "x"}},
        {"pk": {"B": b""}},
    ],
)
def test_key_json_round_trip(key: dict[str, Any]) -> None:
    stored = keys.key_to_json(key)
    assert stored is not None
    assert all(not isinstance(raw, bytes) for value in stored.values() for raw in value.values())
    assert keys.key_from_json(stored) == key
    assert keys.key_to_json(None) is None
    assert keys.key_from_json(None) is None


def _row(schema: TableSchema, item: dict[str, Any]) -> list[Any]:
    """The row as verify reads it back: what the builder writes, jsonb parsed with exact numbers."""
    built = RowBuilder(schema).build(item)
    return [
        compare.exact_loads(v) if c.type is PgType.JSONB and v is not None else v
        for c, v in zip(schema.columns, built, strict=True)
    ]


ITEM = {
    "id": {"S": "k"},
    "n": {"N": "1.50"},
    "flag": {"BOOL": True},
    "tags": {"SS": ["b", "a"]},
    "m": {"M": {"x": {"N": "1"}}},
}


@pytest.mark.parametrize("mode", list(ConversionMode))
def test_compare_equal_row_and_kinds_of_difference(mode: ConversionMode) -> None:
    spec = TableSpec("T", "public", "t", KeyAttribute("id", "S"), mode=mode)
    schema = initial_schema(spec)
    schema = schema.with_columns(evolve(schema, [ITEM]))
    builder = RowBuilder(schema)
    row = _row(schema, ITEM)
    assert compare.compare(builder, ITEM, row, "id=k") == []
    assert compare.compare(builder, ITEM, None, "id=k") == [compare.Difference(compare.Kind.MISSING, "id=k")]
    assert compare.compare(builder, None, row, "id=k") == [compare.Difference(compare.Kind.EXTRA, "id=k")]
    assert compare.compare(builder, None, None, "id=k") == []
    # A set's members have no order; a number's digits and a JSON true are what they are.
    reordered = _row(schema, {**ITEM, "tags": {"SS": ["a", "b"]}})
    assert compare.compare(builder, ITEM, reordered, "id=k") == []
    changed = _row(schema, {**ITEM, "n": {"N": "2"}, "flag": {"N": "1"}} if mode is ConversionMode.JSONB else ITEM)
    if mode is ConversionMode.COLUMNS:
        changed[schema.column_names.index("n")] = Decimal("2")
    found = compare.compare(builder, ITEM, changed, "id=k")
    assert {d.kind for d in found} == {compare.Kind.VALUE}
    columns = {d.column for d in found}
    assert columns == ({"data.n", "data.flag"} if mode is ConversionMode.JSONB else {"n"})
    assert any(d.expected == "1.50" and d.found == "2" for d in found)


def test_compare_unmapped_and_invalid() -> None:
    schema = initial_schema(TableSpec("T", "public", "t", KeyAttribute("id", "S")))
    schema = schema.with_columns([Column("n", PgType.NUMERIC, "n")])
    builder = RowBuilder(schema)
    (unmapped,) = compare.compare(builder, {"id": {"S": "k"}, "new": {"S": "v"}}, ["k", None], "id=k")
    assert (unmapped.kind, unmapped.column) == (compare.Kind.UNMAPPED, "(attribute 'new')")
    (invalid,) = compare.compare(builder, {"id": {"S": "k"}, "n": {"N": "x"}}, ["k", None], "id=k")
    assert (invalid.kind, invalid.column) == (compare.Kind.INVALID, "n")


def test_show_is_short_and_exact() -> None:
    assert compare.show(None) == "NULL"
    assert compare.show(b"\x00\xff") == "\\x00ff"
    assert compare.show(Decimal("1E-130")) == "1E-130"
    assert compare.show("x" * 100) == '"' + "x" * 78 + "…"


def test_complete_keys_adds_new_index_keys_and_variants() -> None:
    base = TableSpec("T", "public", "t", KeyAttribute("id", "S"))
    schema = initial_schema(base).with_columns([Column("gk", PgType.TEXT, "gk")])
    assert complete_keys(schema) is schema
    indexed = TableSpec(
        "T",
        "public",
        "t",
        KeyAttribute("id", "S"),
        indexes=(IndexSpec("byG", (KeyAttribute("gk", "N"),)), IndexSpec("byH", (KeyAttribute("hk", "S"),))),
    )
    completed = complete_keys(TableSchema(indexed, schema.columns))
    assert completed.columns[len(schema.columns) :] == (
        Column("gk_numeric", PgType.NUMERIC, "gk", True),
        Column("hk", PgType.TEXT, "hk"),
    )
