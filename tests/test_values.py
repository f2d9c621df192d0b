"""Attribute values → column values and JSON (podyn_py.core.values): tables of edge values, then round-trips."""

from __future__ import annotations

import base64
import json
from decimal import Decimal
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from podyn_py.core.values import (
    NULL_TAG,
    PG_TYPE_OF_TAG,
    PgType,
    decode_binary,
    decode_number,
    dump_json,
    encode_binary,
    json_number,
    key_text,
    split_value,
    to_column_value,
    to_json,
)
from podyn_py.errors import DataError, PodynError

# --- numbers -------------------------------------------------------------------------------------------------------

# (DynamoDB text, expected (sign, digits, exponent)): the exact decimal, trailing zeros included, never via a float.
VALID_NUMBERS: list[tuple[str, tuple[int, tuple[int, ...], int]]] = [
    ("0", (0, (0,), 0)),
    ("-0", (1, (0,), 0)),
    ("+0", (0, (0,), 0)),
    ("1", (0, (1,), 0)),
    ("+3", (0, (3,), 0)),
    ("-3", (1, (3,), 0)),
    ("007", (0, (7,), 0)),
    ("1.", (0, (1,), 0)),
    ("1.50", (0, (1, 5, 0), -2)),
    ("-1.50", (1, (1, 5, 0), -2)),
    (".123", (0, (1, 2, 3), -3)),
    ("-.5", (1, (5,), -1)),
    ("+.5", (0, (5,), -1)),
    ("0.1", (0, (1,), -1)),
    ("0e1000", (0, (0,), 1000)),
    ("0E-1000", (0, (0,), -1000)),
    ("1e2", (0, (1,), 2)),
    ("1E+2", (0, (1,), 2)),
    ("1e-2", (0, (1,), -2)),
    ("1.5e3", (0, (1, 5), 2)),
    ("1E-130", (0, (1,), -130)),
    ("-1E-130", (1, (1,), -130)),
    ("9.9999999999999999999999999999999999999E+125", (0, (9,) * 38, 125 - 37)),
    ("-9.9999999999999999999999999999999999999E+125", (1, (9,) * 38, 125 - 37)),
    ("12345678901234567890123456789012345678", (0, tuple(int(c) for c in "12345678901234567890123456789012345678"), 0)),
    ("-99999999999999999999999999999999999999", (1, (9,) * 38, 0)),
    ("0.00000000000000000000000000000000000001", (0, (1,), -38)),
    (
        "1234567890123456789012345678901234567.8",
        (0, tuple(int(c) for c in "12345678901234567890123456789012345678"), -1),
    ),
    # More than 38 characters is fine as long as the significant digits fit (leading and trailing zeros).
    ("000000000000000000000000000000000000000001", (0, (1,), 0)),
    ("1.0000000000000000000000000000000000000000", (0, (1,) + (0,) * 40, -40)),
]

INVALID_NUMBERS: list[Any] = [
    "NaN",
    "nan",
    "-NaN",
    "sNaN",
    "Infinity",
    "-Infinity",
    "inf",
    "Inf",
    "1_000",
    " 1",
    "1 ",
    "1\n",
    "\t1",
    "1e",
    "1e+",
    "e5",
    "E5",
    "abc",
    "",
    ".",
    "+",
    "-",
    "+-1",
    "--1",
    "1.2.3",
    "1e1.5",
    "1,5",
    "0x10",
    "1e 5",
    "1 000",
    # Decimal() accepts any Unicode decimal digit; DynamoDB accepts ASCII digits only.
    "\u0661\u0662",  # ARABIC-INDIC DIGIT ONE, TWO
    "\uff11",  # FULLWIDTH DIGIT ONE
    "1\u0663",  # ASCII then ARABIC-INDIC DIGIT THREE
    "\u096a",  # DEVANAGARI DIGIT FOUR
    # Not strings at all.
    1,
    1.5,
    Decimal("1"),
    True,
    None,
    b"1",
    ["1"],
]


@pytest.mark.parametrize(("text", "expected"), VALID_NUMBERS)
def test_decode_number_is_exact(text: str, expected: tuple[int, tuple[int, ...], int]) -> None:
    value = decode_number(text)
    assert type(value) is Decimal
    assert tuple(value.as_tuple()) == expected


@pytest.mark.parametrize("text", INVALID_NUMBERS, ids=repr)
def test_decode_number_rejects(text: Any) -> None:
    with pytest.raises(DataError):
        decode_number(text)


@pytest.mark.parametrize("text", INVALID_NUMBERS, ids=repr)
def test_invalid_number_rejected_everywhere(text: Any) -> None:
    with pytest.raises(DataError):
        to_column_value("N", text)
    with pytest.raises(DataError):
        to_json({"N": text})
    with pytest.raises(DataError):
        to_json({"NS": ["1", text]})
    with pytest.raises(DataError):
        to_json({"M": {"a": {"L": [{"N": text}]}}})


@pytest.mark.parametrize(("text", "expected"), VALID_NUMBERS)
def test_json_number_is_a_json_number_with_every_digit(text: str, expected: tuple[int, tuple[int, ...], int]) -> None:
    dumped = dump_json(json_number(text))
    # A JSON number, not a string, and parsed back digit for digit.
    assert not dumped.startswith(b'"')
    parsed = json.loads(dumped, parse_float=Decimal, parse_int=Decimal)
    assert isinstance(parsed, Decimal)
    assert parsed == Decimal(expected)
    # The significant digits appear verbatim in the text (nothing rounded through a double).
    digits = "".join(str(d) for d in expected[1]).lstrip("0") or "0"
    assert digits in dumped.decode().replace(".", "")
    # Valid JSON for strict parsers too (PostgreSQL's jsonb is strict: no "+3", no ".5", no "1.").
    orjson.loads(dumped)


@pytest.mark.parametrize(
    ("text", "json_text"),
    [
        ("+3", b"3"),
        (".5", b"0.5"),
        ("-.5", b"-0.5"),
        ("1.", b"1"),
        ("007", b"7"),
        ("-0", b"-0"),
        ("1.50", b"1.50"),
        ("12345678901234567890123456789012345678", b"12345678901234567890123456789012345678"),
        ("1E-130", b"1E-130"),
    ],
)
def test_json_number_text(text: str, json_text: bytes) -> None:
    assert dump_json(json_number(text)) == json_text


# --- binary --------------------------------------------------------------------------------------------------------

ALL_BYTES = bytes(range(256))

VALID_BINARY: list[tuple[Any, bytes]] = [
    (b"", b""),
    (b"\x00", b"\x00"),
    (ALL_BYTES, ALL_BYTES),
    (bytearray(b"abc"), b"abc"),
    ("", b""),
    ("QUJD", b"ABC"),
    ("AA==", b"\x00"),
    (base64.b64encode(ALL_BYTES).decode(), ALL_BYTES),
    ("+/+/", b"\xfb\xff\xbf"),
]

INVALID_BINARY: list[Any] = [
    "not base64!",
    "QUJ",
    "Q",
    "QUJD\n",
    " QUJD",
    "QU JD",
    "-_-_",  # urlsafe alphabet is not DynamoDB's
    "\u00e9\u00e9\u00e9\u00e9",
    123,
    1.5,
    None,
    True,
    ["QUJD"],
    {"B": "QUJD"},
]


@pytest.mark.parametrize(("raw", "expected"), VALID_BINARY, ids=repr)
def test_decode_binary(raw: Any, expected: bytes) -> None:
    value = decode_binary(raw)
    assert type(value) is bytes
    assert value == expected
    assert to_column_value("B", raw) == expected
    # Inside JSON, binary is its base64 text.
    assert base64.b64decode(encode_binary(raw), validate=True) == expected
    assert orjson.loads(dump_json(to_json({"B": raw}))) == base64.b64encode(expected).decode()


@pytest.mark.parametrize("raw", INVALID_BINARY, ids=repr)
def test_invalid_binary(raw: Any) -> None:
    with pytest.raises(DataError):
        decode_binary(raw)
    with pytest.raises(DataError):
        to_column_value("B", raw)
    with pytest.raises(DataError):
        to_json({"B": raw})
    with pytest.raises(DataError):
        to_json({"BS": ["QUJD", raw]})


# --- scalars -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("tag", "raw", "expected"),
    [
        ("S", "", ""),
        ("S", "hello", "hello"),
        ("S", "h\u00e9llo \u65e5\u672c \U0001f389", "h\u00e9llo \u65e5\u672c \U0001f389"),
        ("S", "12", "12"),
        ("S", "a\x00b", "ab"),
        ("S", "\x00", ""),
        ("S", "\x00\x00a\x00", "a"),
        ("N", "1.50", Decimal("1.50")),
        ("N", "-0", Decimal("-0")),
        ("BOOL", True, True),
        ("BOOL", False, False),
        ("NULL", True, None),
        ("B", b"\x00\xff", b"\x00\xff"),
    ],
    ids=repr,
)
def test_to_column_value_scalars(tag: str, raw: Any, expected: Any) -> None:
    value = to_column_value(tag, raw)
    assert type(value) is type(expected)
    assert value == expected
    if isinstance(expected, Decimal):
        assert value.as_tuple() == expected.as_tuple()


@pytest.mark.parametrize(
    ("tag", "raw"),
    [
        ("S", 1),
        ("S", None),
        ("S", b"bytes"),
        ("S", ["a"]),
        ("BOOL", "true"),
        ("BOOL", 1),
        ("BOOL", 0),
        ("BOOL", None),
        ("BOOL", "false"),
        # DynamoDB only ever stores {"NULL": true}; anything else is a malformed attribute value.
        ("NULL", False),
        ("NULL", "true"),
        ("NULL", 1),
        ("NULL", None),
        ("X", "1"),
        ("s", "a"),
        ("", "a"),
        ("Null", True),
        ("M", []),
        ("M", "x"),
        ("M", None),
        ("L", {}),
        ("L", "x"),
        ("SS", "a"),
        ("SS", [1]),
        ("SS", ["a", None]),
        ("NS", "1"),
        ("NS", [1]),
        ("NS", ["abc"]),
        ("BS", "QUJD"),
        ("BS", ["!!"]),
    ],
    ids=repr,
)
def test_malformed_column_values(tag: str, raw: Any) -> None:
    with pytest.raises(DataError):
        to_column_value(tag, raw)
    with pytest.raises(DataError):
        to_json({tag: raw})
    with pytest.raises(DataError):
        to_json({"M": {"nested": {tag: raw}}})


@pytest.mark.parametrize(
    "value",
    [  # {} is no longer here: an empty map without its "M" (DynamoDB Local), see test_empty_maps.py
        {"S": "a", "N": "1"},
        [],
        [{"S": "a"}],
        "S",
        "a",
        None,
        1,
        {"M": {"a": "not an attribute value"}},
        {"M": {"a": None}},
        {"L": ["a"]},
        {"L": [{"Q": 1}]},
        {"L": [{"S": "a"}, {"S": "b", "N": "1"}]},
        {"M": {"a": {"L": [{"M": {"b": {"N": "nan"}}}]}}},
    ],
    ids=repr,
)
def test_malformed_attribute_values(value: Any) -> None:
    with pytest.raises(DataError) as info:
        to_json(value)
    assert isinstance(info.value, PodynError)
    assert not info.value.transient


@pytest.mark.parametrize(
    ("tag", "pg_type"),
    [
        ("S", PgType.TEXT),
        ("N", PgType.NUMERIC),
        ("B", PgType.BYTEA),
        ("BOOL", PgType.BOOLEAN),
        ("M", PgType.JSONB),
        ("L", PgType.JSONB),
        ("SS", PgType.JSONB),
        ("NS", PgType.JSONB),
        ("BS", PgType.JSONB),
    ],
)
def test_pg_type_of_tag(tag: str, pg_type: PgType) -> None:
    assert PG_TYPE_OF_TAG[tag] is pg_type


def test_null_decides_no_type() -> None:
    assert NULL_TAG == "NULL"
    assert NULL_TAG not in PG_TYPE_OF_TAG
    assert set(PG_TYPE_OF_TAG) == {"S", "N", "B", "BOOL", "M", "L", "SS", "NS", "BS"}


@pytest.mark.parametrize("value", [{"S": "x"}, {"N": "1"}, {"NULL": True}, {"M": {}}])
def test_split_value(value: dict[str, Any]) -> None:
    ((tag, raw),) = value.items()
    assert split_value(value) == (tag, raw)


# --- jsonb values --------------------------------------------------------------------------------------------------

BIG = "12345678901234567890123456789012345678"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ({"M": {}}, {}),
        ({"L": []}, []),
        ({"SS": ["a", "b"]}, ["a", "b"]),
        ({"NS": ["1", "2.50"]}, [Decimal("1"), Decimal("2.50")]),
        ({"BS": [b"\x00", "AQ=="]}, ["AA==", "AQ=="]),
        ({"L": [{"NULL": True}, {"BOOL": False}, {"BOOL": True}]}, [None, False, True]),
        ({"L": [{"S": "1"}, {"N": "1"}]}, ["1", Decimal(1)]),
        (
            {"M": {"a": {"M": {"b": {"L": [{"N": BIG}, {"N": "-1E-130"}, {"B": b"\xff"}]}}}}},
            {"a": {"b": [Decimal(BIG), Decimal("-1E-130"), "/w=="]}},
        ),
        ({"M": {"": {"S": ""}, "q\"u'o\\te": {"S": "\n\t"}}}, {"": "", "q\"u'o\\te": "\n\t"}),
        ({"M": {"x": {"N": "0e1000"}}}, {"x": Decimal(0)}),
        ({"M": {"x": {"N": "9.9999999999999999999999999999999999999E+125"}}}, {"x": Decimal("9" * 38 + "E+88")}),
    ],
    ids=repr,
)
def test_jsonb_values(value: dict[str, Any], expected: Any) -> None:
    dumped = to_column_value(*split_value(value))
    assert isinstance(dumped, bytes)
    assert dumped == dump_json(to_json(value))
    assert_same(json.loads(dumped, parse_float=Decimal, parse_int=Decimal), expected)
    orjson.loads(dumped)  # strict JSON


def test_nested_numbers_keep_every_digit_in_the_json_text() -> None:
    value = {
        "M": {
            "big": {"N": BIG},
            "neg": {"N": "-" + BIG},
            "frac": {"N": "0." + BIG},
            "list": {"L": [{"N": BIG + "E+50"}]},
            "set": {"NS": [BIG, "1.50"]},
            "tiny": {"N": "-9.9999999999999999999999999999999999999E-120"},
        }
    }
    text = dump_json(to_json(value)).decode()
    assert text.count(BIG) == 4  # big, neg, frac, set
    assert "1.2345678901234567890123456789012345678E+87" in text  # the list member, normalised by Decimal
    assert '"neg":-' + BIG in text
    assert '"frac":0.' + BIG in text
    assert "1.50" in text
    assert "9.9999999999999999999999999999999999999E-120" in text
    parsed = json.loads(text, parse_float=Decimal, parse_int=Decimal)
    assert parsed["big"] == Decimal(BIG)
    assert parsed["list"] == [Decimal(BIG + "E+50")]
    assert parsed["tiny"] == Decimal("-9.9999999999999999999999999999999999999E-120")


def test_nul_removed_and_reported_everywhere() -> None:
    value = {
        "M": {
            "k\x00ey": {"S": "v\x00al"},
            "plain": {"S": "plain"},
            "list": {"L": [{"S": "\x00"}, {"M": {"\x00": {"S": "x"}}}]},
            "set": {"SS": ["a\x00", "b"]},
        }
    }
    nuls: list[int] = []
    tree = to_json(value, nuls)
    assert orjson.loads(dump_json(tree)) == {
        "key": "val",
        "plain": "plain",
        "list": ["", {"": "x"}],
        "set": ["a", "b"],
    }
    # key, value, "\x00" in the list, the nested key, the set member
    assert len(nuls) == 5
    assert b"\\u0000" not in dump_json(tree)


@pytest.mark.parametrize(
    ("value", "count"),
    [
        ({"S": "a\x00"}, 1),
        ({"S": "abc"}, 0),
        ({"SS": ["\x00", "\x00", "a"]}, 2),
        ({"M": {"\x00": {"S": "\x00"}}}, 2),
        ({"L": [{"N": "1"}, {"B": b"\x00"}]}, 0),  # NUL bytes in binary are data, not text
    ],
    ids=repr,
)
def test_nul_count(value: dict[str, Any], count: int) -> None:
    nuls: list[int] = []
    to_json(value, nuls)
    assert len(nuls) == count
    column_nuls: list[int] = []
    column_value = to_column_value(*split_value(value), column_nuls)
    assert len(column_nuls) == count
    if isinstance(column_value, str):
        assert "\x00" not in column_value
    # Without a list, the same value still converts the same way.
    assert dump_json(to_json(value)) == dump_json(to_json(value, []))


def test_key_text() -> None:
    item = {"id": {"S": "a"}, "ts": {"N": "1.5"}, "bin": {"B": b"\x00"}}
    assert key_text(item, ("id", "ts")) == "id=a, ts=1.5"
    assert key_text(item, ("bin",)) == "bin=AA=="
    assert key_text(item, ("missing",)) == "missing=<missing>"
    assert key_text({"id": "junk"}, ("id",)) == "id=<invalid>"


# --- round-trip property -------------------------------------------------------------------------------------------

# DynamoDB numbers: up to 38 significant digits, magnitude 1E-130 .. 9.99...E+125 (or zero).
_digits = st.lists(st.integers(0, 9), min_size=1, max_size=38).map(tuple)


def _in_range(d: Decimal) -> bool:
    return d.is_zero() or -130 <= d.adjusted() <= 125


ddb_decimals = st.builds(
    lambda sign, digits, exponent: Decimal((sign, digits, exponent)),
    st.integers(0, 1),
    _digits,
    st.integers(-130 - 37, 125),
).filter(_in_range)


def _format_number(d: Decimal, style: int, plus: bool) -> str:
    if style == 0:
        text = str(d)
    elif style == 1:
        text = format(d, "f")
    elif style == 2:
        text = format(d, "e")
    else:
        text = format(d, "E").replace("E+", "E")
    if text.startswith("0.") and style == 1:
        text = text[1:]  # ".5"
    if plus and not text.startswith("-"):
        text = "+" + text
    return text


ddb_numbers = st.builds(
    lambda d, style, plus: (_format_number(d, style, plus), d),
    ddb_decimals,
    st.integers(0, 3),
    st.booleans(),
)

# Map keys never carry U+0000 here: two keys that differ only by it would merge, which is another test's business.
keys = st.text(max_size=8).map(lambda s: s.replace("\x00", ""))
strings = st.text(alphabet=st.characters(exclude_categories=["Cs"]) | st.just("\x00"), max_size=12)

# (attribute value, expected JSON value with numbers as Decimal and binary as base64)
scalars = st.one_of(
    strings.map(lambda s: ({"S": s}, s.replace("\x00", ""))),
    ddb_numbers.map(lambda n: ({"N": n[0]}, n[1])),
    st.binary(max_size=16).map(lambda b: ({"B": b}, base64.b64encode(b).decode())),
    st.binary(max_size=16).map(lambda b: ({"B": base64.b64encode(b).decode()}, base64.b64encode(b).decode())),
    st.booleans().map(lambda b: ({"BOOL": b}, b)),
    st.just(({"NULL": True}, None)),
    st.lists(strings, min_size=1, max_size=4, unique=True).map(
        lambda ss: ({"SS": ss}, [s.replace("\x00", "") for s in ss])
    ),
    st.lists(ddb_numbers, min_size=1, max_size=4).map(lambda ns: ({"NS": [n[0] for n in ns]}, [n[1] for n in ns])),
    st.lists(st.binary(max_size=8), min_size=1, max_size=4, unique=True).map(
        lambda bs: ({"BS": bs}, [base64.b64encode(b).decode() for b in bs])
    ),
)


def _extend(children: st.SearchStrategy[tuple[Any, Any]]) -> st.SearchStrategy[tuple[Any, Any]]:
    return st.one_of(
        st.lists(children, max_size=4).map(lambda xs: ({"L": [x[0] for x in xs]}, [x[1] for x in xs])),
        st.dictionaries(keys, children, max_size=4).map(
            lambda d: ({"M": {k: v[0] for k, v in d.items()}}, {k: v[1] for k, v in d.items()})
        ),
    )


attribute_values = st.recursive(scalars, _extend, max_leaves=20)


def assert_same(actual: Any, expected: Any) -> None:
    """Equal, with types checked too: True == Decimal(1) and 1 == 1.0 must not pass."""
    if isinstance(expected, Decimal):
        assert type(actual) is Decimal, (actual, expected)
        assert actual == expected
    elif isinstance(expected, dict):
        assert type(actual) is dict, (actual, expected)
        assert list(actual) == list(expected)
        for key in expected:
            assert_same(actual[key], expected[key])
    elif isinstance(expected, list):
        assert type(actual) is list, (actual, expected)
        assert len(actual) == len(expected)
        for a, e in zip(actual, expected, strict=True):
            assert_same(a, e)
    else:
        assert type(actual) is type(expected), (actual, expected)
        assert actual == expected


@given(ddb_numbers)
@settings(max_examples=300)
def test_number_round_trip(number: tuple[str, Decimal]) -> None:
    text, expected = number
    assert decode_number(text) == expected
    dumped = dump_json(json_number(text))
    assert_same(json.loads(dumped, parse_float=Decimal, parse_int=Decimal), expected)
    orjson.loads(dumped)


@given(attribute_values)
@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
def test_json_round_trip(pair: tuple[Any, Any]) -> None:
    value, expected = pair
    dumped = dump_json(to_json(value))
    assert_same(json.loads(dumped, parse_float=Decimal, parse_int=Decimal), expected)
    # PostgreSQL's jsonb parser is strict; orjson is too.
    orjson.loads(dumped)
    tag, raw = split_value(value)
    column_value = to_column_value(tag, raw)
    if PG_TYPE_OF_TAG.get(tag) is PgType.JSONB:
        assert column_value == dumped
    elif tag == "B":
        assert column_value == base64.b64decode(expected)
    else:
        assert_same(column_value, expected)
