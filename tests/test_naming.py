"""Attribute names → PostgreSQL identifiers (podyn_py.core.naming)."""

from __future__ import annotations

import hashlib
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from podyn_py.core.naming import (
    MAX_IDENTIFIER_BYTES,
    column_name,
    index_name,
    name_tag,
    truncate_utf8,
    unique_name,
    variant_name,
)

TAG = re.compile(r"_[0-9a-f]{8}(?:_\d+)?$")


def nbytes(text: str) -> int:
    return len(text.encode("utf-8"))


def sha_tag(*parts: str) -> str:
    return hashlib.sha1("\x1f".join(parts).encode()).hexdigest()[:8]


def assign(attributes: list[str], *, lower_case: bool, taken: set[str] | None = None) -> list[str]:
    """Name attributes one after the other, as schema evolution does."""
    names = set(taken or ())
    out = []
    for attribute in attributes:
        name = column_name(attribute, names, lower_case=lower_case)
        names.add(name)
        out.append(name)
    return out


# Names PostgreSQL takes as they are once quoted: they must come through untouched.
KEPT = [
    "id",
    "Name",
    "camelCase",
    "UPPER",
    "with space",
    " leading and trailing ",
    'he said "hi"',
    '"',
    '""',
    "it's",
    'x"; DROP TABLE y; --',
    "'); DELETE FROM t; --",
    "select",
    "from",
    "user",
    "order",
    "table",
    "primary key",
    "1starts_with_digit",
    "a.b",
    "a-b",
    "$dollar",
    "tab\there",
    "new\nline",
    "back\\slash",
    "%s",
    "{}",
    "caf\u00e9",
    "\u65e5\u672c\u8a9e",
    "\u0438\u043c\u044f",
    "emoji \U0001f389",
    "\u05e9\u05dc\u05d5\u05dd",  # right-to-left
    "e\u0301",  # combining accent
    "a" * 63,
    "\u00e9" * 31 + "a",  # 63 bytes exactly
    "\u65e5" * 21,  # 63 bytes exactly
    "\U0001f389" * 15 + "abc",  # 63 bytes exactly
]


@pytest.mark.parametrize("attribute", KEPT, ids=repr)
def test_names_kept_as_they_are(attribute: str) -> None:
    assert column_name(attribute, set(), lower_case=False) == attribute
    assert column_name(attribute, {"other", attribute + "x"}, lower_case=False) == attribute


@pytest.mark.parametrize("attribute", KEPT, ids=repr)
def test_lower_case(attribute: str) -> None:
    assert column_name(attribute, set(), lower_case=True) == attribute.lower()


@pytest.mark.parametrize(
    ("attribute", "lower_case", "expected"),
    [
        ("MixedCase", True, "mixedcase"),
        ("MixedCase", False, "MixedCase"),
        ("\u00c4\u00d6\u00dc", True, "\u00e4\u00f6\u00fc"),
        ("ID", True, "id"),
        ("a\x00b", False, "ab"),
        ("A\x00B", True, "ab"),
        ("\x00", False, "column"),
        ("\x00\x00", True, "column"),
        ("", False, "column"),
    ],
    ids=repr,
)
def test_name_changes(attribute: str, lower_case: bool, expected: str) -> None:
    assert column_name(attribute, set(), lower_case=lower_case) == expected


# Names over 63 bytes, with characters of 1, 2, 3 and 4 bytes placed so that a byte cut would split one.
LONG = [
    "a" * 64,
    "a" * 200,
    "A" * 64,
    *("a" * k + "\u00e9" * 40 for k in range(2)),
    *("a" * k + "\u65e5" * 30 for k in range(3)),
    *("a" * k + "\U0001f389" * 20 for k in range(4)),
    "\u00e9" * 32,  # 64 bytes
    "\u65e5" * 22,  # 66 bytes
    'x"; DROP TABLE y; --' * 4,
    "e\u0301" * 30,
]


@pytest.mark.parametrize("lower_case", [False, True])
@pytest.mark.parametrize("attribute", LONG, ids=lambda a: f"{a[:8]!r}x{nbytes(a)}")
def test_long_names_cut_at_a_character_and_tagged(attribute: str, lower_case: bool) -> None:
    wanted = attribute.lower() if lower_case else attribute
    name = column_name(attribute, set(), lower_case=lower_case)
    assert nbytes(name) <= MAX_IDENTIFIER_BYTES
    # Deterministic: the tag comes from the attribute name itself, nothing random.
    assert name == column_name(attribute, set(), lower_case=lower_case)
    assert name.endswith("_" + sha_tag(attribute))
    prefix = name[: -len("_" + sha_tag(attribute))]
    assert wanted.startswith(prefix)
    # Cut at a character boundary, as late as one allows (at most 3 bytes lost to a 4-byte character).
    assert "\ufffd" not in name
    assert MAX_IDENTIFIER_BYTES - 9 - 3 <= nbytes(prefix) <= MAX_IDENTIFIER_BYTES - 9


def test_long_name_exact() -> None:
    attribute = "a" * 64
    assert column_name(attribute, set(), lower_case=False) == "a" * 54 + "_" + sha_tag(attribute)
    assert name_tag(attribute) == sha_tag(attribute)


@pytest.mark.parametrize(
    ("text", "max_bytes", "expected"),
    [
        ("abc", 3, "abc"),
        ("abc", 2, "ab"),
        ("abc", 0, ""),
        ("\u00e9\u00e9", 3, "\u00e9"),
        ("\u00e9\u00e9", 4, "\u00e9\u00e9"),
        ("a\u65e5", 3, "a"),
        ("a\u65e5", 4, "a\u65e5"),
        ("\U0001f389", 3, ""),
        ("\U0001f389x", 4, "\U0001f389"),
    ],
    ids=repr,
)
def test_truncate_utf8(text: str, max_bytes: int, expected: str) -> None:
    assert truncate_utf8(text, max_bytes) == expected


@pytest.mark.parametrize(
    ("attributes", "lower_case"),
    [
        (["Name", "name", "NAME", "nAmE"], True),
        (["name", "Name"], True),
        (["a\x00", "a", "\x00a"], False),
        (["", "\x00", "column"], False),
        (["x" * 70 + "A", "x" * 70 + "B", "x" * 70 + "C"], False),
        (["x" * 60 + "A", "X" * 60 + "A", "x" * 60 + "a"], True),
        (["\u65e5" * 30 + "a", "\u65e5" * 30 + "b"], False),
        (["a" * 64, "a" * 65, "a" * 66], False),
    ],
    ids=repr,
)
def test_collisions_give_distinct_deterministic_names(attributes: list[str], lower_case: bool) -> None:
    names = assign(attributes, lower_case=lower_case)
    assert len(set(names)) == len(names)
    assert all(nbytes(n) <= MAX_IDENTIFIER_BYTES for n in names)
    assert names == assign(attributes, lower_case=lower_case)
    # The first one keeps the plain (lowercased, shortened) name; the others are tagged after their own name.
    assert names[0] == column_name(attributes[0], set(), lower_case=lower_case)
    for name in names[1:]:
        assert TAG.search(name), name


def test_collision_with_a_name_that_looks_tagged() -> None:
    long = "a" * 64
    tagged_form = column_name(long, set(), lower_case=False)
    # Another attribute is literally called like the shortened form, and was seen first.
    names = assign([tagged_form, long], lower_case=False)
    assert names[0] == tagged_form
    assert names[1] != tagged_form
    assert nbytes(names[1]) <= MAX_IDENTIFIER_BYTES


def test_unique_name_counter() -> None:
    first = unique_name("n", {"n"}, "n")
    assert first == "n_" + sha_tag("n")
    second = unique_name("n", {"n", first}, "n")
    assert second not in {"n", first}
    third = unique_name("n", {"n", first, second}, "n")
    assert third not in {"n", first, second}
    assert second == unique_name("n", {"n", first}, "n")


@pytest.mark.parametrize(
    ("table", "index", "expected"),
    [
        ("orders", "byCustomer", "orders_byCustomer"),
        ("t", "i", "t_i"),
        ('x"; DROP TABLE y; --', "idx", 'x"; DROP TABLE y; --_idx'),
        ("caf\u00e9", "\u65e5", "caf\u00e9_\u65e5"),
        ("t" * 31, "i" * 31, "t" * 31 + "_" + "i" * 31),  # 63 bytes
    ],
    ids=repr,
)
def test_index_name(table: str, index: str, expected: str) -> None:
    assert index_name(table, index) == expected


@pytest.mark.parametrize(
    ("table", "index"),
    [
        ("t" * 32, "i" * 31),
        ("t" * 63, "i"),
        ("t", "i" * 255),
        ("\u65e5" * 30, "\U0001f389" * 30),
        ("a" * 40 + "\u00e9" * 20, "idx"),
    ],
    ids=lambda v: f"{v[:4]!r}x{nbytes(v)}",
)
def test_long_index_name(table: str, index: str) -> None:
    name = index_name(table, index)
    assert nbytes(name) <= MAX_IDENTIFIER_BYTES
    assert "\ufffd" not in name
    assert name == index_name(table, index)
    assert name.endswith("_" + sha_tag(table, index))
    assert f"{table}_{index}".startswith(name[:-9])
    # Two indexes of the same table with the same long prefix stay apart.
    assert index_name(table, index + "2") != name


@pytest.mark.parametrize(
    ("column", "pg_type", "expected"),
    [
        ("amount", "text", "amount_text"),
        ("amount", "numeric", "amount_numeric"),
        ("price", "jsonb", "price_jsonb"),
        ("b", "bytea", "b_bytea"),
        ("flag", "boolean", "flag_boolean"),
        ('x"; DROP TABLE y; --', "text", 'x"; DROP TABLE y; --_text'),
        ("a" * 58, "text", "a" * 58 + "_text"),  # 63 bytes
    ],
)
def test_variant_name(column: str, pg_type: str, expected: str) -> None:
    assert variant_name(column, column, pg_type, set()) == expected


@pytest.mark.parametrize("column", ["a" * 63, "\u65e5" * 21, "\U0001f389" * 15 + "abc"], ids=nbytes)
@pytest.mark.parametrize("pg_type", ["text", "numeric", "boolean"])
def test_long_variant_name(column: str, pg_type: str) -> None:
    name = variant_name(column, column, pg_type, set())
    assert nbytes(name) <= MAX_IDENTIFIER_BYTES
    assert name.endswith("_" + pg_type)
    assert column.startswith(name[: -len(pg_type) - 1])


def test_variant_name_collision() -> None:
    taken = {"amount", "amount_text"}
    name = variant_name("amount", "amount", "text", taken)
    assert name not in taken
    assert name == variant_name("amount", "amount", "text", taken)
    assert name.startswith("amount_text_")
    # Two long columns sharing a prefix get distinct variants.
    first = variant_name("a" * 63, "a" * 63 + "1", "text", set())
    second = variant_name("a" * 63, "a" * 63 + "2", "text", {first})
    assert first != second
    assert nbytes(second) <= MAX_IDENTIFIER_BYTES


# Few characters and lengths around the limit, so that collisions after lowercasing and shortening are common.
colliding_names = st.text(alphabet="aA\u00e9\u00c9\u65e5\U0001f389\x00", min_size=0, max_size=70)


@given(st.lists(colliding_names | st.text(max_size=80), max_size=12, unique=True), st.booleans())
@settings(max_examples=300)
def test_assigned_names_are_distinct_valid_and_deterministic(attributes: list[str], lower_case: bool) -> None:
    names = assign(attributes, lower_case=lower_case, taken={"data"})
    assert len(set(names) | {"data"}) == len(names) + 1
    for attribute, name in zip(attributes, names, strict=True):
        assert name
        assert "\x00" not in name
        assert nbytes(name) <= MAX_IDENTIFIER_BYTES
        plain = attribute.replace("\x00", "")
        if lower_case:
            plain = plain.lower()
        if plain and nbytes(plain) <= MAX_IDENTIFIER_BYTES and plain not in names[: names.index(name)] + ["data"]:
            assert name == plain
    assert names == assign(attributes, lower_case=lower_case, taken={"data"})
