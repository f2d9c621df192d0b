"""Schema inference and evolution (podyn_py.core.schema) and row building (podyn_py.core.rows)."""

from __future__ import annotations

import json
from collections import Counter
from decimal import Decimal
from typing import Any

import orjson
import pytest

from podyn_py.core.rows import MissingColumn, RowBuilder
from podyn_py.core.schema import (
    DATA_COLUMN,
    Column,
    ConversionMode,
    IndexSpec,
    KeyAttribute,
    TableSchema,
    TableSpec,
    evolve,
    initial_schema,
)
from podyn_py.core.values import PgType
from podyn_py.errors import DataError

BIG = "12345678901234567890123456789012345678"

ID = KeyAttribute("id", "S")
TS = KeyAttribute("ts", "N")
CUSTOMER = KeyAttribute("customer", "S")
BLOB = KeyAttribute("blob", "B")


def make_spec(
    *,
    partition: KeyAttribute = ID,
    sort: KeyAttribute | None = TS,
    indexes: tuple[IndexSpec, ...] = (IndexSpec("byCustomer", (CUSTOMER, TS)),),
    mode: ConversionMode = ConversionMode.COLUMNS,
    lower_case: bool = False,
) -> TableSpec:
    return TableSpec(
        source="Orders",
        schema="public",
        table="orders",
        partition_key=partition,
        sort_key=sort,
        indexes=indexes,
        mode=mode,
        lower_case=lower_case,
    )


def columns_of(schema: TableSchema | list[Column]) -> list[tuple[str, PgType, str | None, bool]]:
    columns = schema.columns if isinstance(schema, TableSchema) else schema
    return [(c.name, c.type, c.attribute, c.variant) for c in columns]


def grown(schema: TableSchema, *items: dict[str, Any]) -> TableSchema:
    return schema.with_columns(evolve(schema, items))


# --- initial_schema ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        (
            make_spec(),
            [
                ("id", PgType.TEXT, "id", False),
                ("ts", PgType.NUMERIC, "ts", False),
                ("customer", PgType.TEXT, "customer", False),
            ],
        ),
        (make_spec(sort=None, indexes=()), [("id", PgType.TEXT, "id", False)]),
        (
            make_spec(partition=BLOB, sort=None, indexes=(IndexSpec("lsi", (BLOB, ID), is_global=False),)),
            [("blob", PgType.BYTEA, "blob", False), ("id", PgType.TEXT, "id", False)],
        ),
        (
            make_spec(mode=ConversionMode.JSONB),
            [
                ("id", PgType.TEXT, "id", False),
                ("ts", PgType.NUMERIC, "ts", False),
                ("customer", PgType.TEXT, "customer", False),
                ("data", PgType.JSONB, None, False),
            ],
        ),
        (
            make_spec(partition=KeyAttribute("ID", "S"), sort=KeyAttribute("Ts", "N"), indexes=(), lower_case=True),
            [("id", PgType.TEXT, "ID", False), ("ts", PgType.NUMERIC, "Ts", False)],
        ),
        # A key attribute called "data" keeps its name in columns mode...
        (
            make_spec(partition=KeyAttribute("data", "S"), sort=None, indexes=()),
            [("data", PgType.TEXT, "data", False)],
        ),
    ],
    ids=["typical", "hash-only", "binary-key", "jsonb", "lower-case", "data-key-columns"],
)
def test_initial_schema(spec: TableSpec, expected: list[tuple[str, PgType, str | None, bool]]) -> None:
    schema = initial_schema(spec)
    assert columns_of(schema) == expected
    assert [c.attribute for c in schema.primary_key_columns] == list(spec.key_names)


@pytest.mark.parametrize("lower_case", [False, True])
@pytest.mark.parametrize("key_name", ["data", "DATA"])
def test_jsonb_key_named_data_is_renamed(key_name: str, lower_case: bool) -> None:
    key = KeyAttribute(key_name, "S")
    spec = make_spec(partition=key, sort=None, indexes=(), mode=ConversionMode.JSONB, lower_case=lower_case)
    schema = initial_schema(spec)
    names = schema.column_names
    assert len(set(names)) == len(names) == 2
    key_column = schema.key_column(key)
    assert key_column.name != DATA_COLUMN
    assert (key_column.type, key_column.attribute) == (PgType.TEXT, key_name)
    if key_name == "DATA" and not lower_case:
        assert key_column.name == "DATA"  # quoted identifiers are case-sensitive: no clash
    assert [c for c in schema.columns if c.name == DATA_COLUMN] == [Column(DATA_COLUMN, PgType.JSONB, None)]


def test_index_attributes_once() -> None:
    spec = make_spec(indexes=(IndexSpec("a", (CUSTOMER, TS)), IndexSpec("b", (TS, CUSTOMER)), IndexSpec("c", (ID,))))
    assert initial_schema(spec).column_names == ("id", "ts", "customer")


# --- evolve --------------------------------------------------------------------------------------------------------


def test_evolve_returns_only_new_columns_in_first_seen_order() -> None:
    schema = initial_schema(make_spec())
    before = schema.columns
    items: list[dict[str, Any]] = [
        {"id": {"S": "1"}, "ts": {"N": "1"}, "zeta": {"S": "z"}, "alpha": {"N": "1"}},
        {"id": {"S": "2"}, "ts": {"N": "2"}, "customer": {"S": "c"}, "mid": {"BOOL": True}, "zeta": {"S": "y"}},
        {"blob": {"B": b"\x00"}, "doc": {"M": {}}, "tags": {"SS": ["a"]}},
    ]
    added = evolve(schema, items)
    assert columns_of(added) == [
        ("zeta", PgType.TEXT, "zeta", False),
        ("alpha", PgType.NUMERIC, "alpha", False),
        ("mid", PgType.BOOLEAN, "mid", False),
        ("blob", PgType.BYTEA, "blob", False),
        ("doc", PgType.JSONB, "doc", False),
        ("tags", PgType.JSONB, "tags", False),
    ]
    # A delta: the schema itself is unchanged.
    assert schema.columns == before
    # Once added, the same items need nothing more.
    assert evolve(schema.with_columns(added), items) == []
    assert evolve(schema, []) == []


def test_null_never_decides_a_type() -> None:
    schema = initial_schema(make_spec())
    assert evolve(schema, [{"x": {"NULL": True}}]) == []
    added = evolve(schema, [{"x": {"NULL": True}}, {"x": {"N": "1"}}, {"x": {"NULL": True}}, {"x": {"S": "a"}}])
    assert columns_of(added) == [("x", PgType.NUMERIC, "x", False), ("x_text", PgType.TEXT, "x", True)]


def test_type_conflict_gives_a_variant_column() -> None:
    schema = initial_schema(make_spec())
    schema = grown(schema, {"amount": {"N": "1"}})
    added = evolve(schema, [{"amount": {"S": "one"}}, {"amount": {"N": "2"}}, {"amount": {"BOOL": False}}])
    assert columns_of(added) == [
        ("amount_text", PgType.TEXT, "amount", True),
        ("amount_boolean", PgType.BOOLEAN, "amount", True),
    ]
    # Within one batch too.
    fresh = initial_schema(make_spec())
    added = evolve(fresh, [{"amount": {"S": "one"}, "other": {"S": "x"}}, {"amount": {"N": "2"}}])
    assert columns_of(added) == [
        ("amount", PgType.TEXT, "amount", False),
        ("other", PgType.TEXT, "other", False),
        ("amount_numeric", PgType.NUMERIC, "amount", True),
    ]


def test_key_attribute_of_another_type_gets_a_variant() -> None:
    schema = initial_schema(make_spec())
    added = evolve(schema, [{"customer": {"N": "7"}}])
    assert columns_of(added) == [("customer_numeric", PgType.NUMERIC, "customer", True)]


@pytest.mark.parametrize(
    "values",
    [
        [{"M": {}}, {"L": []}],
        [{"L": []}, {"M": {"a": {"S": "b"}}}],
        [{"M": {}}, {"SS": ["a"]}, {"NS": ["1"]}, {"BS": [b"x"]}, {"L": []}],
    ],
    ids=repr,
)
def test_documents_share_the_jsonb_column(values: list[dict[str, Any]]) -> None:
    schema = initial_schema(make_spec())
    added = evolve(schema, [{"doc": v} for v in values])
    assert columns_of(added) == [("doc", PgType.JSONB, "doc", False)]


def test_jsonb_mode_never_evolves() -> None:
    schema = initial_schema(make_spec(mode=ConversionMode.JSONB))
    items = [{"id": {"S": "1"}, "ts": {"N": "1"}, "new": {"S": "x"}, "n": {"N": "1"}, "m": {"M": {}}}]
    assert evolve(schema, items) == []


@pytest.mark.parametrize(
    "bad",
    [
        "not an attribute value",
        None,
        1,
        [],
        {"S": "a", "N": "1"},
        {"X": "1"},
        {"s": "a"},
        {"NULL": True},
    ],
    ids=repr,
)
def test_evolve_passes_over_invalid_values(bad: Any) -> None:
    schema = initial_schema(make_spec())
    added = evolve(schema, [{"bad": bad, "good": {"S": "x"}}, {"bad": bad}])
    assert columns_of(added) == [("good", PgType.TEXT, "good", False)]


def test_evolve_names() -> None:
    schema = initial_schema(make_spec(lower_case=True))
    items = [{"Amount": {"N": "1"}, "amount": {"N": "2"}, "AMOUNT": {"S": "x"}, 'x"; DROP TABLE y; --': {"S": "x"}}]
    added = evolve(schema, items)
    names = [c.name for c in added]
    # The attribute already named like the column keeps it, whatever came first; the others are tagged.
    assert names[1] == "amount"
    assert names[0].startswith("amount_") and names[0] != "amount"
    assert names[2].startswith("amount_") and names[2] not in names[:2]
    assert names[3] == 'x"; drop table y; --'
    assert len(set(names) | set(schema.column_names)) == len(names) + len(schema.column_names)
    assert [c.attribute for c in added] == list(items[0])
    assert evolve(schema, items) == added  # deterministic


def test_evolve_avoids_reserved_and_existing_names() -> None:
    base = initial_schema(make_spec())
    schema = TableSchema(base.spec, base.columns, reserved=frozenset({"extra"}))
    added = evolve(schema, [{"extra": {"S": "x"}}, {"Id": {"S": "x"}}])
    assert added[0].name not in {"extra", "id", "ts", "customer"}
    assert added[0].attribute == "extra"
    assert added[1].name == "Id"
    lowered = initial_schema(make_spec(lower_case=True))
    (column,) = evolve(lowered, [{"Id": {"S": "x"}}])
    assert column.name not in lowered.column_names
    assert column.attribute == "Id"


def test_evolve_long_names() -> None:
    schema = initial_schema(make_spec())
    long_a, long_b = "a" * 70 + "1", "a" * 70 + "2"
    added = evolve(schema, [{long_a: {"S": "x"}, long_b: {"S": "y"}}, {long_a: {"N": "1"}}])
    names = [c.name for c in added]
    assert len(set(names)) == 3
    assert all(len(n.encode()) <= 63 for n in names)
    assert added[2].variant and added[2].type is PgType.NUMERIC


# --- RowBuilder: columns mode --------------------------------------------------------------------------------------


def full_schema() -> TableSchema:
    schema = initial_schema(make_spec())
    return grown(
        schema,
        {
            "price": {"N": "1"},
            "blob": {"B": b"x"},
            "flag": {"BOOL": True},
            "doc": {"M": {}},
            "tags": {"SS": ["a"]},
            "name": {"S": "x"},
        },
        {"price": {"S": "free"}},
    )


def test_build_in_column_order() -> None:
    schema = full_schema()
    assert schema.column_names == (
        "id",
        "ts",
        "customer",
        "price",
        "blob",
        "flag",
        "doc",
        "tags",
        "name",
        "price_text",
    )
    builder = RowBuilder(schema)
    item = {
        "tags": {"SS": ["b", "a"]},
        "name": {"S": "n"},
        "doc": {"M": {"n": {"N": BIG}, "l": {"L": [{"NULL": True}]}}},
        "flag": {"BOOL": False},
        "blob": {"B": "AAE="},
        "price": {"N": "-1.50"},
        "ts": {"N": "1E-130"},
        "id": {"S": "k"},
    }
    row = builder.build(item)
    assert len(row) == len(schema.columns)
    assert row[:6] == ["k", Decimal("1E-130"), None, Decimal("-1.50"), b"\x00\x01", False]
    assert type(row[1]) is Decimal and type(row[3]) is Decimal
    assert str(row[3]) == "-1.50"
    assert json.loads(row[6], parse_float=Decimal, parse_int=Decimal) == {"n": Decimal(BIG), "l": [None]}
    assert b'"n":' + BIG.encode() in row[6]
    assert orjson.loads(row[7]) == ["b", "a"]
    assert row[8:] == ["n", None]


def test_build_absent_and_null_attributes_are_none() -> None:
    builder = RowBuilder(full_schema())
    row = builder.build({"id": {"S": "k"}, "ts": {"N": "0"}, "price": {"NULL": True}, "name": {"NULL": True}})
    assert row == ["k", Decimal(0), None, None, None, None, None, None, None, None]


def test_build_variant_column() -> None:
    builder = RowBuilder(full_schema())
    row = builder.build({"id": {"S": "k"}, "ts": {"N": "0"}, "price": {"S": "free"}})
    assert row[3] is None
    assert row[9] == "free"


@pytest.mark.parametrize(
    ("item", "attribute"),
    [
        ({"id": {"S": "k"}, "ts": {"N": "0"}, "unknown": {"S": "x"}}, "unknown"),
        ({"id": {"S": "k"}, "ts": {"N": "0"}, "flag": {"S": "x"}}, "flag"),  # a type with no column yet
        ({"id": {"S": "k"}, "ts": {"N": "0"}, "name": {"L": []}}, "name"),
    ],
    ids=repr,
)
def test_build_missing_column(item: dict[str, Any], attribute: str) -> None:
    schema = full_schema()
    builder = RowBuilder(schema)
    with pytest.raises(MissingColumn) as info:
        builder.build(item)
    assert not isinstance(info.value, DataError)
    assert info.value.args[0] == attribute
    builder.check(item)  # every value converts: the item waits for its column, it is not rejected
    # Evolving then building again works.
    RowBuilder(grown(schema, item)).build(item)


@pytest.mark.parametrize(
    ("item", "attribute", "key"),
    [
        ({"id": {"S": "k1"}, "ts": {"N": "5"}, "price": {"N": "NaN"}}, "price", "id=k1, ts=5"),
        ({"id": {"S": "k1"}, "ts": {"N": "5"}, "price": {"N": 5}}, "price", "id=k1, ts=5"),
        ({"id": {"S": "k1"}, "ts": {"N": "5"}, "blob": {"B": "!!"}}, "blob", "id=k1, ts=5"),
        ({"id": {"S": "k1"}, "ts": {"N": "5"}, "flag": {"BOOL": "yes"}}, "flag", "id=k1, ts=5"),
        ({"id": {"S": "k1"}, "ts": {"N": "5"}, "name": {"S": 3}}, "name", "id=k1, ts=5"),
        ({"id": {"S": "k1"}, "ts": {"N": "5"}, "doc": {"M": {"a": {"N": "x"}}}}, "doc", "id=k1, ts=5"),
        ({"id": {"S": "k1"}, "ts": {"N": "5"}, "tags": {"SS": "a"}}, "tags", "id=k1, ts=5"),
        ({"id": {"S": "k1"}, "ts": {"N": "5"}, "name": "plain"}, "name", "id=k1, ts=5"),
        ({"id": {"S": "k1"}, "ts": {"N": "5"}, "name": {"S": "a", "N": "1"}}, "name", "id=k1, ts=5"),
        ({"id": {"S": "k1"}, "ts": {"N": "5"}, "name": {"Q": "a"}}, "name", "id=k1, ts=5"),
        ({"id": {"S": "k1"}, "ts": {"N": "5"}, "name": None}, "name", "id=k1, ts=5"),
        ({"id": {"S": "k1"}, "ts": {"N": "bad"}}, "ts", "id=k1, ts=bad"),
        ({"id": {"S": "k1"}}, "ts", "id=k1, ts=<missing>"),
        ({"ts": {"N": "5"}, "name": {"S": "x"}}, "id", "id=<missing>, ts=5"),
        ({}, "id", "id=<missing>, ts=<missing>"),
        # DynamoDB only ever stores {"NULL": true}.
        ({"id": {"S": "k1"}, "ts": {"N": "5"}, "name": {"NULL": False}}, "name", "id=k1, ts=5"),
        # A key attribute must have a value: a NULL key would make a row PostgreSQL rejects for the whole batch.
        ({"id": {"NULL": True}, "ts": {"N": "5"}}, "id", "ts=5"),
        # Nor a key attribute of another type than the table's key (it would leave the key column NULL).
        ({"id": {"N": "1"}, "ts": {"N": "5"}}, "id", "ts=5"),
        ({"id": {"S": "k1"}, "ts": {"S": "5"}}, "ts", "id=k1"),
    ],
    ids=repr,
)
@pytest.mark.parametrize("mode", [ConversionMode.COLUMNS, ConversionMode.JSONB])
def test_build_data_error_names_table_key_and_attribute(
    item: dict[str, Any], attribute: str, key: str, mode: ConversionMode
) -> None:
    schema = full_schema() if mode is ConversionMode.COLUMNS else initial_schema(make_spec(mode=mode))
    with pytest.raises(DataError) as info:
        RowBuilder(schema).build(item)
    error = info.value
    assert error.table == "Orders"
    assert isinstance(error.key, str) and key in error.key
    assert error.attribute == attribute
    assert "Orders" in str(error) and attribute in str(error)
    # check(), for items that need new columns, finds the same fault without a schema that holds the attribute.
    with pytest.raises(DataError) as checked:
        RowBuilder(initial_schema(make_spec(mode=mode))).check(item)
    assert (checked.value.table, checked.value.key, checked.value.attribute) == (error.table, error.key, attribute)


def test_nul_counts_columns_mode() -> None:
    builder = RowBuilder(full_schema())
    item = {
        "id": {"S": "k\x00"},
        "ts": {"N": "1"},
        "name": {"S": "a\x00b\x00"},
        "tags": {"SS": ["\x00", "x", "y\x00"]},
        "doc": {"M": {"k\x00": {"S": "v"}}},
        "price": {"S": "no nul"},
    }
    row = builder.build(item)
    assert row[0] == "k"
    assert row[8] == "ab"
    assert orjson.loads(row[7]) == ["", "x", "y"]
    assert orjson.loads(row[6]) == {"k": "v"}
    assert dict(builder.nul_counts) == {"id": 1, "name": 1, "tags": 1, "doc": 1}
    builder.build(item)
    builder.build({"id": {"S": "clean"}, "ts": {"N": "1"}, "name": {"S": "\x00"}})
    assert dict(builder.nul_counts) == {"id": 2, "name": 3, "tags": 2, "doc": 2}


# --- RowBuilder: jsonb mode ----------------------------------------------------------------------------------------


def test_build_jsonb() -> None:
    schema = initial_schema(make_spec(mode=ConversionMode.JSONB))
    builder = RowBuilder(schema)
    item = {
        "id": {"S": "k"},
        "ts": {"N": "+1.50"},
        "customer": {"S": "c"},
        "n": {"N": BIG},
        "neg": {"N": "-9.9999999999999999999999999999999999999E+125"},
        "b": {"B": b"\xff"},
        "m": {"M": {"l": {"L": [{"BOOL": True}, {"NULL": True}, {"NS": ["1", ".5"]}]}}},
        "bs": {"BS": ["AA=="]},
    }
    row = builder.build(item)
    assert len(row) == 4
    assert row[:3] == ["k", Decimal("1.50"), "c"]
    assert type(row[1]) is Decimal
    data = row[3]
    assert isinstance(data, bytes)
    # orjson reads numbers as doubles (fine for the structure); the digits are checked in the text below.
    assert orjson.loads(data) == {
        "id": "k",
        "ts": 1.5,
        "customer": "c",
        "n": float(BIG),
        "neg": -9.9999999999999999999999999999999999999e125,
        "b": "/w==",
        "m": {"l": [True, None, [1, 0.5]]},
        "bs": ["AA=="],
    }
    text = data.decode()
    assert f'"n":{BIG},' in text
    assert '"neg":-9.9999999999999999999999999999999999999E+125,' in text
    assert '"ts":1.50,' in text
    exact = json.loads(text, parse_float=Decimal, parse_int=Decimal)
    assert exact["n"] == Decimal(BIG)
    assert exact["neg"] == Decimal("-9.9999999999999999999999999999999999999E+125")


def test_build_jsonb_absent_index_key_and_data_key() -> None:
    builder = RowBuilder(initial_schema(make_spec(mode=ConversionMode.JSONB)))
    row = builder.build({"id": {"S": "k"}, "ts": {"N": "1"}})
    assert row[:3] == ["k", Decimal(1), None]
    assert orjson.loads(row[3]) == {"id": "k", "ts": 1}

    spec = make_spec(partition=KeyAttribute("data", "N"), sort=None, indexes=(), mode=ConversionMode.JSONB)
    schema = initial_schema(spec)
    row = RowBuilder(schema).build({"data": {"N": "7"}, "other": {"S": "x"}})
    key_position = schema.columns.index(schema.key_column(spec.partition_key))
    data_position = schema.column_names.index(DATA_COLUMN)
    assert row[key_position] == Decimal(7)
    assert orjson.loads(row[data_position]) == {"data": 7, "other": "x"}


def test_nul_counts_jsonb_mode() -> None:
    builder = RowBuilder(initial_schema(make_spec(mode=ConversionMode.JSONB)))
    row = builder.build({"id": {"S": "k"}, "ts": {"N": "1"}, "a\x00": {"S": "x"}})
    assert orjson.loads(row[3]) == {"id": "k", "ts": 1, "a": "x"}
    assert builder.nul_counts["data"] == 1
    row = builder.build({"id": {"S": "k"}, "ts": {"N": "1"}, "m": {"L": [{"S": "\x00"}]}})
    assert orjson.loads(row[3]) == {"id": "k", "ts": 1, "m": [""]}
    assert builder.nul_counts["data"] == 2
    builder.build({"id": {"S": "k"}, "ts": {"N": "1"}})
    assert builder.nul_counts["data"] == 2


def test_nul_counts_shared_across_builders() -> None:
    counts: Counter[str] = Counter()
    schema = full_schema()
    RowBuilder(schema, counts).build({"id": {"S": "k"}, "ts": {"N": "1"}, "name": {"S": "\x00"}})
    grown_schema = grown(schema, {"extra": {"S": "x"}})
    builder = RowBuilder(grown_schema, counts)
    builder.build({"id": {"S": "k"}, "ts": {"N": "1"}, "name": {"S": "\x00"}, "extra": {"S": "a\x00"}})
    assert builder.nul_counts is counts
    assert dict(counts) == {"name": 2, "extra": 1}
