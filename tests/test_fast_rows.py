"""The hot path's shortcuts (issue 12) give what the general path gives: the same trees, rows, counts and errors.

``to_json`` takes the common shapes itself and hands the rest to ``to_json_general``; ``RowBuilder.build`` tries a
fast path per item and lets the general path (``build_general``) build anything it does not handle alone. Both
pairs are run on the same values, hostile ones included (38-digit numbers, NaN-like strings, U+0000 in values, keys
and names, empty maps without their "M", binary as bytes and as base64, malformed values), and must agree exactly:
Decimals digit for digit and exponent for exponent, JSON byte for byte, errors word for word. Then the binary COPY's
jsonb dumper against psycopg's own, on a real PostgreSQL.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from psycopg import sql

from podyn_py.conversion import RowConverter
from podyn_py.core import ddl
from podyn_py.core.rows import MissingColumn, RowBuilder
from podyn_py.core.schema import (
    OVERFLOW_COLUMN,
    Column,
    ConversionMode,
    KeyAttribute,
    TableSchema,
    TableSpec,
    initial_schema,
    plan_evolution,
)
from podyn_py.core.values import NUMBER, PgType, dump_json, is_plain_number, to_json, to_json_general
from podyn_py.errors import DataError
from podyn_py.target.postgres import PostgresTarget, copy_rows, upsert_rows

SETTINGS = settings(max_examples=300, deadline=None, derandomize=True, database=None)
#: Items are slower to draw than values: fewer of them (the hostile tables below cover the cases one by one).
ITEM_SETTINGS = settings(SETTINGS, max_examples=120, suppress_health_check=[HealthCheck.too_slow])

BIG = "12345678901234567890123456789012345678"  # 38 digits, DynamoDB's most
NUMBERS = [
    "0", "-0", "+0", "00", "007", "1", "-1", "1.", ".5", "-.5", "+3", "1.50", "-1.50", "0.10", "0.05", "0.5",
    "0.0000001", "0.000000", "0.0", "1E+2", "1e2", "1e-2", "0e1000", "0E-1000", "1E-130", BIG, "-" + BIG,
    BIG + ".5", "9.9999999999999999999999999999999999999E+125", "123.450", "10", "100000000000000000000",
]  # fmt: skip
NOT_NUMBERS = [
    "NaN", "nan", "-NaN", "sNaN", "NaN123", "Infinity", "-Infinity", "inf", "Inf", "1_000", " 1", "1 ", "\t1", "",
    "1e", "e1", ".", "-", "+", "0x10", "\u0661\u0662", "\u00b2", "\uff11", "1.2.3", "--1", "1e+", "1,5",
    5, 1.5, None, True, ["1"], {"N": "1"},
]  # fmt: skip
TEXTS = ["", "plain", "NaN", "Infinity", "null", "true", "1e5", "a\x00b", "\x00", "\x00\x00", "é✓名", "\u2028", '"\\']


def number_texts() -> st.SearchStrategy[Any]:
    return st.one_of(
        st.sampled_from(NUMBERS + NOT_NUMBERS),
        st.text("0123456789.-+eE", max_size=14),
        st.text("0123456789", min_size=1, max_size=40),
    )


def texts() -> st.SearchStrategy[str]:
    return st.one_of(st.sampled_from(TEXTS), st.text(max_size=12))  # st.text: any character but surrogates


binary = st.one_of(
    st.binary(max_size=8),
    st.binary(max_size=8).map(lambda b: base64.b64encode(b).decode()),
    st.sampled_from(["not base64!", "QUJD", "QUJ", 7]),
)

scalars: st.SearchStrategy[Any] = st.one_of(
    texts().map(lambda s: {"S": s}),
    number_texts().map(lambda n: {"N": n}),
    binary.map(lambda b: {"B": b}),
    st.sampled_from([True, False, 1, "true", None]).map(lambda b: {"BOOL": b}),
    st.sampled_from([True, False, 1]).map(lambda b: {"NULL": b}),
    st.lists(texts(), max_size=3).map(lambda ss: {"SS": ss}),
    st.lists(number_texts(), max_size=3).map(lambda ns: {"NS": ns}),
    st.lists(binary, max_size=3).map(lambda bs: {"BS": bs}),
    st.sampled_from(
        [
            {},  # an empty map without its "M" (DynamoDB Local's stream images)
            {"M": {}},
            {"L": []},
            {"SS": "a"},
            {"SS": [1]},
            {"NS": "1"},
            {"M": []},
            {"L": {}},
            {"S": 5},
            {"X": "unknown tag"},
            {"S": "a", "N": "1"},
            "not a value",
            5,
            None,
            [{"S": "x"}],
            {"S": "\ud800"},  # a lone surrogate: not writable as JSON
        ]
    ),
)

values: st.SearchStrategy[Any] = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=3).map(lambda items: {"L": items}),
        st.dictionaries(texts(), children, max_size=3).map(lambda m: {"M": m}),
    ),
    max_leaves=10,
)

ATTRIBUTE_NAMES = ["a", "b", "name", "data", "price", "n\x00ul", "\x00", "é✓", "podyn_overflow", "id_text"]
attribute_names = st.one_of(st.sampled_from(ATTRIBUTE_NAMES), st.text(max_size=6))
ID = KeyAttribute("id", "S")


@st.composite
def items(draw: st.DrawFn) -> dict[str, Any]:
    """An item whose key is (nearly always) valid, so that the paths get as far as its other attributes."""
    item: dict[str, Any] = draw(st.dictionaries(attribute_names, values, max_size=6))
    key = draw(st.one_of(texts().map(lambda s: {"S": s}), st.sampled_from([{"N": "1"}, {"S": 1}, None])))
    item.pop("id", None)
    if key is not None or draw(st.integers(0, 9)) == 0:
        item["id"] = key
    return item


def spec(mode: ConversionMode) -> TableSpec:
    return TableSpec("Things", "public", "things", ID, mode=mode)


# -- comparing outcomes ---------------------------------------------------------------------------------------------


def cell(value: Any) -> Any:
    """A row cell with its type, Decimals by their exact text (1.50 is not 1.5 here, nor 1E+2 100)."""
    if isinstance(value, Decimal):
        return ("Decimal", str(value), value.as_tuple())
    return (type(value).__name__, value)


def outcome(call: Callable[[], Any]) -> Any:
    try:
        result = call()
    except (DataError, MissingColumn) as exc:
        if isinstance(exc, DataError):
            return ("DataError", exc.message, exc.table, exc.key, exc.attribute)
        return ("MissingColumn", str(exc))
    return [cell(c) for c in result]


def json_outcome(convert: Callable[..., Any], value: Any) -> Any:
    nuls: list[int] = []
    untagged: list[int] = []
    try:
        dumped = dump_json(convert(value, nuls, untagged))
    except DataError as exc:
        return ("DataError", exc.message)  # the counts of a rejected value are not kept
    return (dumped, len(nuls), len(untagged))


def assert_same_rows(schema: TableSchema, item: dict[str, Any]) -> RowBuilder:
    """Build ``item`` both ways with two builders; the same row or error, the same counts. Returns the fast one."""
    fast, general = RowBuilder(schema), RowBuilder(schema)
    assert outcome(lambda: fast.build(item)) == outcome(lambda: general.build_general(item))
    assert fast.nul_counts == general.nul_counts
    assert fast.untagged_map_counts == general.untagged_map_counts
    return fast


def holding(schema: TableSchema, *items: dict[str, Any]) -> TableSchema:
    return schema.with_change(plan_evolution(schema, items))


# -- to_json ---------------------------------------------------------------------------------------------------------


@SETTINGS
@given(values)
def test_to_json_agrees_with_the_general_path(value: Any) -> None:
    assert json_outcome(to_json, value) == json_outcome(to_json_general, value)


@pytest.mark.parametrize(
    "value",
    [
        {"N": BIG},
        {"N": "-" + BIG},
        {"N": "0.0000001"},  # str(Decimal) writes 1E-7
        {"N": "1.50"},
        {"N": "+3"},
        {"N": "007"},
        {"N": "-0"},
        {"N": "NaN"},
        {"N": "\u00b2"},
        {"S": "NaN"},
        {"S": "a\x00b"},
        {"M": {"k\x00": {"S": "v"}}},
        {"M": {"k": {"S": "v\x00"}, "n": {"N": "1E+2"}}},
        {"M": {"e": {}}},
        {"L": [{}, {"M": {}}, {"NULL": True}]},
        {"SS": ["a", "b\x00"]},
        {"SS": ["a", 1]},
        {"NS": ["1", "1.50", ".5", "1e2"]},
        {"NS": ["1", "NaN"]},
        {"BS": ["QUJD", b"\x00\xff"]},
        {"B": b"\x00"},
        {"M": {"m": {"S": "\ud800"}}},
    ],
    ids=repr,
)
def test_to_json_agrees_on_hostile_values(value: Any) -> None:
    assert json_outcome(to_json, value) == json_outcome(to_json_general, value)


@SETTINGS
@given(number_texts())
def test_a_plain_number_is_written_as_it_came(text: Any) -> None:
    """is_plain_number lets a number's own text into the JSON: only where str(Decimal(text)) is that text."""
    if isinstance(text, str) and is_plain_number(text):
        assert NUMBER.fullmatch(text)
        assert str(Decimal(text)) == text


@pytest.mark.parametrize(
    ("text", "plain"),
    [
        ("0", True),
        ("-0", True),
        ("12", True),
        (BIG, True),
        ("1.50", True),
        ("0.5", True),
        ("-0.25", True),
        ("007", False),
        ("+3", False),
        (".5", False),
        ("1.", False),
        ("0.05", False),  # plain in str() too, but left to Decimal: the shortcut stays simple
        ("0.0000001", False),
        ("1e2", False),
        ("\u00b2", False),
        ("\u0661", False),
        ("", False),
    ],
)
def test_is_plain_number(text: str, plain: bool) -> None:
    assert is_plain_number(text) is plain


# -- rows ------------------------------------------------------------------------------------------------------------


@ITEM_SETTINGS
@given(item=items(), grow=st.booleans())
@pytest.mark.parametrize("mode", list(ConversionMode))
def test_fast_rows_agree_with_the_general_path(mode: ConversionMode, item: dict[str, Any], grow: bool) -> None:
    """With the schema grown for the item (a row, or the item's DataError) and without (MissingColumn first)."""
    schema = initial_schema(spec(mode))
    assert_same_rows(holding(schema, item) if grow else schema, item)


@settings(ITEM_SETTINGS, max_examples=40)
@given(st.lists(items(), min_size=2, max_size=4))
def test_fast_rows_agree_when_the_table_is_full(batch: list[dict[str, Any]]) -> None:
    """Attributes without a column go to podyn_overflow (general path); the others to their columns."""
    schema = holding(initial_schema(spec(ConversionMode.COLUMNS)), batch[0])
    full = schema.with_columns([Column(OVERFLOW_COLUMN, PgType.JSONB, None)])
    assert full.overflow_position == len(full.columns) - 1
    for item in batch:
        assert_same_rows(full, item)


COMMON_ITEM: dict[str, Any] = {
    "id": {"S": "item-000000042"},
    "seq": {"N": "42"},
    "price": {"N": "123.45"},
    "big": {"N": BIG},
    "tiny": {"N": "1E-130"},
    "name": {"S": "NaN"},
    "active": {"BOOL": False},
    "gone": {"NULL": True},
    "blob": {"B": base64.b64encode(b"\x00\x01\xff").decode()},
    "tags": {"SS": ["a", "b"]},
    "nums": {"NS": ["1", "1.50", "-0"]},
    "bins": {"BS": ["QUJD"]},
    "empty": {"M": {}},
    "attrs": {
        "M": {
            "color": {"S": "teal"},
            "dims": {"L": [{"N": "1"}, {"N": "0.0000001"}, {"NULL": True}]},
            "vendor": {"M": {"name": {"S": "v"}, "rating": {"N": "+3"}}},
        }
    },
}


@pytest.mark.parametrize("mode", list(ConversionMode))
def test_the_fast_path_builds_common_items(mode: ConversionMode) -> None:
    """What a load meets most must not fall back (that would only be slow): the fast path builds it, the same row."""
    schema = holding(initial_schema(spec(mode)), COMMON_ITEM)
    builder = assert_same_rows(schema, COMMON_ITEM)
    fast = builder.fast_row(COMMON_ITEM)
    assert fast is not None
    assert [cell(c) for c in fast] == outcome(lambda: RowBuilder(schema).build_general(COMMON_ITEM))


HOSTILE: list[tuple[str, Any]] = [
    ("n", {"S": "a\x00b"}),  # U+0000 in a value: counted by the general path, per column
    ("n", {"M": {"k\x00": {"S": "v"}}}),
    ("n", {"L": [{"S": "\x00"}]}),
    ("n", {"M": {"e": {}}}),  # an empty map without "M", nested: counted per attribute
    ("n", {}),  # ... and at the top
    ("n", {"NULL": False}),
    ("n", {"N": "NaN"}),
    ("n", {"N": " 1"}),
    ("n", {"N": "\u00b2"}),
    ("n", {"B": "not base64!"}),
    ("n", {"BOOL": 1}),
    ("n", {"X": "1"}),
    ("n", {"S": "a", "N": "1"}),
    ("n", "text"),
    ("n\x00ame", {"S": "x"}),  # a NUL in a name (jsonb counts it)
]


@pytest.mark.parametrize(("name", "value"), HOSTILE, ids=repr)
@pytest.mark.parametrize("mode", list(ConversionMode))
def test_hostile_values_go_to_the_general_path(mode: ConversionMode, name: str, value: Any) -> None:
    item = {"id": {"S": "k"}, "ok": {"N": "1"}, name: value}
    schema = holding(initial_schema(spec(mode)), item)
    builder = assert_same_rows(schema, item)
    row = builder.fast_row(item)
    if mode is ConversionMode.JSONB or name != "n\x00ame":  # columns mode keeps a NUL in a name's column
        assert row is None


@pytest.mark.parametrize("mode", list(ConversionMode))
def test_a_new_attribute_goes_to_the_general_path(mode: ConversionMode) -> None:
    schema = initial_schema(spec(mode))
    item = {"id": {"S": "k"}, "new": {"S": "x"}}
    assert_same_rows(schema, item)
    if mode is ConversionMode.COLUMNS:
        assert RowBuilder(schema).fast_row(item) is None
        with pytest.raises(MissingColumn):
            RowBuilder(schema).build(item)


def test_counts_add_up_across_fast_and_general_items() -> None:
    """A page mixes items of both paths: the converter's counters count the general ones, once each."""
    schema = holding(initial_schema(spec(ConversionMode.COLUMNS)), COMMON_ITEM, {"n": {"S": "x"}})
    builder = RowBuilder(schema)
    page = [
        COMMON_ITEM,
        {"id": {"S": "a"}, "n": {"S": "x\x00"}},
        COMMON_ITEM,
        {"id": {"S": "b"}, "attrs": {"M": {"e": {}}}},
    ]
    rows = [builder.build(item) for item in page]
    assert rows[0] == rows[2]
    assert rows[1][schema.position("n", PgType.TEXT) or 0] == "x"
    assert builder.nul_counts == {"n": 1}
    assert builder.untagged_map_counts == {"attrs": 1}


# -- the converter and the COPY, on a real PostgreSQL ---------------------------------------------------------------


def test_a_refreshed_converter_keeps_counting_untagged_maps(pg_url: str) -> None:
    """After a rename elsewhere the converter reads the mapping again; its new builder shares both counters."""
    target = PostgresTarget(pg_url)
    target.ensure_metadata()
    schema = target.prepare_table(spec(ConversionMode.JSONB), create=True, citus=False)
    converter = RowConverter(schema, target)
    converter.refresh(schema)
    converter.convert([{"id": {"S": "k"}, "doc": {"M": {"e": {}}}}])
    assert converter.builder.untagged_map_counts is converter.untagged_map_counts
    assert converter.untagged_map_counts == {"doc": 1}


def as_text(schema: TableSchema) -> sql.Composed:
    """Every column of the table as PostgreSQL writes it, rows by key."""
    columns = sql.SQL(", ").join(sql.SQL("{}::text").format(sql.Identifier(c.name)) for c in schema.columns)
    return sql.SQL("SELECT {} FROM {} ORDER BY 1").format(columns, ddl.qualified(schema.spec.schema, schema.spec.table))


JSON_ITEMS: list[dict[str, Any]] = [
    {"id": {"S": "a"}, "doc": {"M": {"n": {"N": BIG}, "x": {"N": "1.50"}, "t": {"N": "0.0000001"}}}},
    {"id": {"S": "b"}, "doc": {"L": [{"S": 'é✓名\u2028"\\'}, {"M": {}}, {"NULL": True}, {"BOOL": True}]}},
    {"id": {"S": "c"}, "doc": {"SS": ["NaN", "Infinity"]}, "tags": {"NS": ["-0", "1E+2"]}},
    {"id": {"S": "d"}, "doc": {"BS": ["QUJD"]}},
    {"id": {"S": "e"}},  # NULL in the jsonb columns
]


@pytest.mark.parametrize("mode", list(ConversionMode))
def test_copy_writes_jsonb_as_psycopg_and_upsert_do(pg_url: str, mode: ConversionMode) -> None:
    """copy_rows' own jsonb dumper stores what psycopg's JsonbBinaryDumper stores, and what upsert_rows stores."""
    target = PostgresTarget(pg_url)
    target.ensure_metadata()
    schemas = []
    for name in ("by_copy", "by_psycopg", "by_upsert"):
        created = target.prepare_table(TableSpec(name, "public", name, ID, mode=mode), create=True, citus=False)
        schemas.append(target.add_columns(created, lambda current: plan_evolution(current, JSON_ITEMS)))
    assert [s.column_names for s in schemas] == [schemas[0].column_names] * 3
    with target.connect() as conn:
        rows = [RowBuilder(schemas[0]).build(item) for item in JSON_ITEMS]
        with conn.transaction():
            copy_rows(conn, schemas[0], rows)
            with conn.cursor() as cur, cur.copy(ddl.copy_rows(schemas[1])) as copy:  # psycopg's dumpers
                copy.set_types([c.type.value for c in schemas[1].columns])
                for row in rows:
                    copy.write_row(row)
            upsert_rows(conn, schemas[2], rows)
        stored = [conn.execute(as_text(s)).fetchall() for s in schemas]
    assert stored[0] == stored[1] == stored[2]
    assert len(stored[0]) == len(JSON_ITEMS)
    assert any(BIG in str(row) for row in stored[0])
