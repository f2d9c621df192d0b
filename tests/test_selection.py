"""``--exclude-attributes`` patterns and the global tables' attributes: what is left out of a table's items (pure)."""

from __future__ import annotations

from typing import Any

import pytest

from podyn_py.core.schema import IndexSpec, KeyAttribute, TableSpec
from podyn_py.core.selection import REPLICATION_ATTRIBUTES, Exclusions
from podyn_py.errors import ConfigError


def spec(table: str = "Users", *, indexes: tuple[IndexSpec, ...] = ()) -> TableSpec:
    return TableSpec(table, "public", table.lower(), KeyAttribute("pk", "S"), KeyAttribute("sk", "N"), indexes)


#: (patterns, table, attribute, left out?)
CASES = [
    ("Users.password_hash", "Users", "password_hash", True),
    ("Users.password_hash", "Users", "password_hash2", False),
    ("Users.password_hash", "Users", "Password_hash", False),  # names are case-sensitive, as in DynamoDB
    ("Users.password_hash", "Orders", "password_hash", False),
    ("Users.password_hash", "users", "password_hash", False),
    ("*.password_hash", "Orders", "password_hash", True),
    ("Users.x*", "Users", "x anything at all", True),
    ("Users.blob_*", "Users", "blob_", True),  # * matches none too
    ("Users.blob_*", "Users", "a_blob_x", False),
    ("Use*.x", "Users", "x", True),
    ("*ers.x", "Orders", "x", True),
    ("*.aws:rep:*", "Users", "aws:rep:anything", True),
    ("Users.a?c", "Users", "abc", False),  # only * is special: ? and [ stand for themselves
    ("Users.a?c", "Users", "a?c", True),
    ("Users.[ab]", "Users", "a", False),
    ("Users.[ab]", "Users", "[ab]", True),
    ("Users.profile.secret", "Users", "profile.secret", True),  # a dot inside the attribute's name
    ("my.table.secret", "my.table", "secret", True),  # a dot inside the table's name
    ("my.table.secret", "my", "table.secret", True),
    ("my.table.secret", "my.table", "table.secret", False),
    ("Users.a, Users.b ,, Orders.c", "Users", "b", True),  # commas, spaces and empty pieces
    ("Users.a, Users.b ,, Orders.c", "Users", "c", False),
    ("Users.a\nb", "Users", "a\nb", True),
]


@pytest.mark.parametrize(("patterns", "table", "attribute", "excluded"), CASES)
def test_patterns_match_table_and_attribute(patterns: str, table: str, attribute: str, excluded: bool) -> None:
    selection = Exclusions.parse(patterns).for_table(spec(table))
    assert selection.excluded(attribute) is excluded
    assert selection.excluded(attribute) is excluded  # the remembered answer is the same


@pytest.mark.parametrize("pattern", ["password_hash", "Users.", ".password_hash", ".", "Users"])
def test_a_pattern_without_table_and_attribute_is_an_error_naming_it(pattern: str) -> None:
    with pytest.raises(ConfigError) as refused:
        Exclusions.parse(f"Users.ok,{pattern}")
    assert repr(pattern) in str(refused.value) and "Table.attribute" in str(refused.value)


@pytest.mark.parametrize(
    ("pattern", "attribute", "what"),
    [
        ("Users.pk", "pk", "the table's key"),
        ("*.sk", "sk", "the table's key"),
        ("Users.*", "pk", "the table's key"),
        ("Users.owner", "owner", "the key of index ByOwner"),
    ],
)
def test_a_key_attribute_cannot_be_excluded(pattern: str, attribute: str, what: str) -> None:
    indexes = (IndexSpec("ByOwner", (KeyAttribute("owner", "S"),)),)
    with pytest.raises(ConfigError) as refused:
        Exclusions.parse(pattern).for_table(spec(indexes=indexes))
    error = refused.value
    assert error.table == "Users" and error.attribute == attribute
    assert f"--exclude-attributes {pattern}: attribute {attribute!r} is part of {what}" in str(error)
    orders = TableSpec("Orders", "public", "orders", KeyAttribute("id", "S"))
    Exclusions.parse(pattern).for_table(orders)  # another table, other keys: nothing to refuse there


def test_replication_attributes_are_left_out_by_default_and_kept_on_request() -> None:
    default = Exclusions().for_table(spec())
    kept = Exclusions(keep_replication_attributes=True).for_table(spec())
    for name in REPLICATION_ATTRIBUTES:
        assert default.excluded(name) and not kept.excluded(name)
        assert "--keep-replication-attributes" in (default.rule_for(name) or "")
    assert not default.excluded("aws:rep:other") and not default.excluded("v")
    assert not kept
    # Explicit patterns still apply with --keep-replication-attributes.
    assert Exclusions(("*.aws:rep:*",), keep_replication_attributes=True).for_table(spec()).excluded("aws:rep:x")


def test_strip_leaves_the_item_alone_when_nothing_is_excluded() -> None:
    selection = Exclusions.parse("Users.secret").for_table(spec())
    item = {"pk": {"S": "a"}, "sk": {"N": "1"}, "v": {"S": "x"}}
    assert selection.strip(item) is item
    with_secret = {**item, "secret": {"S": "hunter2"}, "aws:rep:updatetime": {"N": "1.5"}}
    assert selection.strip(with_secret) == item
    assert "secret" in with_secret  # the caller's item is not changed


def test_strip_record_removes_excluded_attributes_from_both_images() -> None:
    selection = Exclusions.parse("Users.secret").for_table(spec())
    key = {"pk": {"S": "a"}, "sk": {"N": "1"}}
    record: dict[str, Any] = {
        "eventName": "MODIFY",
        "dynamodb": {
            "Keys": key,
            "NewImage": {**key, "secret": {"S": "new"}, "v": {"N": "x"}},
            "OldImage": {**key, "secret": {"S": "old"}},
        },
    }
    stripped = selection.strip_record(record)
    assert stripped["dynamodb"]["NewImage"] == {**key, "v": {"N": "x"}}
    assert stripped["dynamodb"]["OldImage"] == key
    assert stripped["dynamodb"]["Keys"] == key and stripped["eventName"] == "MODIFY"
    assert record["dynamodb"]["NewImage"]["secret"] == {"S": "new"}
    clean = {"eventName": "REMOVE", "dynamodb": {"Keys": key}}
    assert selection.strip_record(clean) is clean
    assert selection.strip_record({"dynamodb": "not a map"}) == {"dynamodb": "not a map"}


def test_strip_images_removes_excluded_attributes_from_an_incremental_export_line() -> None:
    selection = Exclusions.parse("Users.secret").for_table(spec())
    key = {"pk": {"S": "a"}, "sk": {"N": "1"}}
    line: dict[str, Any] = {"Keys": key, "NewImage": {**key, "secret": {"S": "new"}}, "Metadata": {}}
    assert selection.strip_images(line) == {"Keys": key, "NewImage": key, "Metadata": {}}
    assert "secret" in line["NewImage"]  # the caller's line is not changed
    deleted = {"Keys": key, "OldImage": key}
    assert selection.strip_images(deleted) is deleted
