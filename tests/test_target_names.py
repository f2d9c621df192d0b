"""Target names without a database (issue 15, item 3): how ``-t Source:[schema.]table`` and a config file's
``target`` are read, what PostgreSQL cannot hold, and which table a run chooses given what podyn recorded.

The same rules run against DynamoDB Local and PostgreSQL in tests/test_target_names_cli.py.
"""

from __future__ import annotations

import re

import pytest

from podyn_py.config import Config, TableSettings
from podyn_py.core.targets import (
    StoredTarget,
    TargetName,
    TargetRequest,
    check_distinct,
    choose_target,
    parse_tables,
    parse_target,
    quote_name,
    replaced,
)
from podyn_py.errors import ConfigError


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("orders", TargetName(None, "orders")),
        ("app.user_profiles", TargetName("app", "user_profiles")),
        ("Orders", TargetName(None, "Orders")),  # case kept: every identifier is quoted
        (" app . orders ", TargetName("app", "orders")),
        ('"app.v2"."orders"', TargetName("app.v2", "orders")),
        ('"say ""hi"""', TargetName(None, 'say "hi"')),
        ('app."a.b"', TargetName("app", "a.b")),
        ('" padded "', TargetName(None, " padded ")),
        ("x; DROP TABLE y", TargetName(None, "x; DROP TABLE y")),
        ("é" * 31, TargetName(None, "é" * 31)),  # 62 bytes
        ("a" * 63, TargetName(None, "a" * 63)),
        ("a:b", TargetName(None, "a:b")),
    ],
)
def test_targets_are_read_as_written(text: str, expected: TargetName) -> None:
    assert parse_target(text) == expected
    assert parse_target(str(expected)) == expected  # what podyn shows can be given back


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "is empty"),
        ("app.", "is empty"),
        (".orders", "is empty"),
        ("a.b.c", "quote"),
        ('"a', "double quotes"),
        ('a"b', "double quotes"),
        ('"a"b', "double quotes"),
        ("a" * 64, "64 bytes long; PostgreSQL names hold at most 63"),
        ("é" * 32, "64 bytes long"),
        ("podyn.orders", "podyn's own metadata"),
        ("x\x00y", "U+0000"),
        (f"{'s' * 64}.t", "64 bytes long"),
    ],
)
def test_targets_postgresql_cannot_hold_are_refused(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        parse_target(text)


def test_the_table_list_maps_each_source() -> None:
    assert parse_tables('Orders:orders, UserProfiles:app.user_profiles ,Plain,My.Table-1:"a,b".c') == [
        ("Orders", TargetName(None, "orders")),
        ("UserProfiles", TargetName("app", "user_profiles")),
        ("Plain", None),
        ("My.Table-1", TargetName("a,b", "c")),  # a dot in a DynamoDB name; a comma inside quotes
    ]


@pytest.mark.parametrize(
    ("text", "message"),
    [("A,A:x", "twice"), (":x", "DYNAMODB_TABLE"), ('"A":x', "DYNAMODB_TABLE"), ("A:", "is empty")],
)
def test_wrong_table_lists_are_refused(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_tables(text)


@pytest.mark.parametrize("name", ["orders", "Orders", "a.b", 'a"b', "a,b", " a", "a:b", ""])
def test_names_are_quoted_only_when_they_need_it(name: str) -> None:
    quoted = quote_name(name)
    assert (quoted == name) == (name == "orders" or name == "Orders")
    if name:
        assert parse_target(quoted).table == name


def test_the_prefix_goes_before_every_name_and_long_default_names_are_cut() -> None:
    assert TargetRequest(prefix="ddb_").wanted("Orders") == ("public", "ddb_Orders")
    assert TargetRequest(TargetName("app", "o"), prefix="ddb_").wanted("Orders") == ("app", "ddb_o")
    assert TargetRequest(TargetName(None, "o"), schema="s").wanted("Orders") == ("s", "o")
    long_source = "T" * 200  # DynamoDB names go to 255: cut with a tag, as before
    schema, table = TargetRequest(prefix="p_").wanted(long_source)
    assert len(table.encode()) == 63 and table.startswith("p_TTT")
    with pytest.raises(ConfigError, match="64 bytes"):
        TargetRequest(TargetName(None, "x" * 60), prefix="ddb_").wanted("Orders")  # a name given is never cut


def live(source: str, schema: str, table: str) -> StoredTarget:
    return StoredTarget(source, schema, table, live=True)


def gone(source: str, schema: str, table: str) -> StoredTarget:
    return StoredTarget(source, schema, table, live=False)


UNSAID = TargetRequest(schema_given=False)  # no -t target, no --pg-schema, no --table-prefix


@pytest.mark.parametrize(
    ("request_", "stored", "expected"),
    [
        (UNSAID, [], ("public", "Orders")),
        (UNSAID, [live("Orders", "app", "orders")], ("app", "orders")),  # where podyn put it
        (UNSAID, [gone("Orders", "app", "orders")], ("app", "orders")),  # made again there
        (UNSAID, [live("Orders", "a", "x"), gone("Orders", "b", "y")], ("a", "x")),
        (UNSAID, [live("Orders", "public", "Orders"), live("Orders", "b", "Orders")], ("public", "Orders")),
        (UNSAID, [live("Other", "app", "orders")], ("public", "Orders")),
        (TargetRequest(schema="b"), [live("Orders", "a", "x")], ("b", "Orders")),  # a copy per --pg-schema
        (TargetRequest(schema="a"), [live("Orders", "a", "x")], ("a", "x")),
        (TargetRequest(TargetName(None, "x"), schema="a"), [live("Orders", "a", "x")], ("a", "x")),
        (TargetRequest(TargetName("a", "x")), [gone("Orders", "a", "old")], ("a", "x")),  # a stale record binds not
        (TargetRequest(prefix="p_"), [live("Orders", "b", "Orders")], ("public", "p_Orders")),
    ],
)
def test_which_table_a_run_chooses(
    request_: TargetRequest, stored: list[StoredTarget], expected: tuple[str, str]
) -> None:
    assert choose_target("Orders", request_, stored) == expected


@pytest.mark.parametrize(
    ("request_", "stored", "message"),
    [
        (
            TargetRequest(TargetName("app", "orders_v2")),
            [live("Orders", "app", "orders")],
            "replicated into app.orders \\(podyn.tables\\), but this run maps it to app.orders_v2"
            " \\(target app.orders_v2\\)",
        ),
        (TargetRequest(TargetName("b", "orders")), [live("Orders", "a", "orders")], "drop a.orders first"),
        (TargetRequest(prefix="p_"), [live("Orders", "public", "Orders")], "--table-prefix 'p_'"),
        (TargetRequest(TargetName(None, "shared")), [live("Other", "public", "shared")], "DynamoDB table Other"),
        (TargetRequest(TargetName(None, "shared")), [gone("Other", "public", "shared")], "delete its row"),
        (UNSAID, [live("Orders", "a", "x"), live("Orders", "b", "y")], "a.x, b.y: say which"),
    ],
)
def test_a_changed_mapping_is_refused(request_: TargetRequest, stored: list[StoredTarget], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        choose_target("Orders", request_, stored)


def test_a_new_mapping_replaces_the_records_of_dropped_tables() -> None:
    stored = [gone("Orders", "app", "orders"), gone("Orders", "b", "orders"), live("Orders", "c", "orders")]
    stored += [gone("Other", "app", "x")]
    assert replaced("Orders", ("app", "v2"), TargetRequest(TargetName("app", "v2")), stored) == [
        ("app", "orders"),
        ("b", "orders"),
    ]
    assert replaced("Orders", ("app", "v2"), TargetRequest(schema="app", prefix="p_"), stored) == [("app", "orders")]
    assert replaced("Orders", ("app", "orders"), UNSAID, stored) == []


def test_reading_finds_without_refusing() -> None:
    stored = [live("Orders", "app", "orders")]
    assert choose_target("Orders", TargetRequest(TargetName("app", "v2")), stored, reading=True) == ("app", "v2")
    assert choose_target("Orders", UNSAID, stored, reading=True) == ("app", "orders")


def test_two_tables_of_a_run_may_not_share_a_target() -> None:
    with pytest.raises(ConfigError, match="A and B would both go to public.x"):
        check_distinct([("A", TargetRequest(TargetName(None, "x"))), ("B", TargetRequest(TargetName(None, "x")))])
    with pytest.raises(ConfigError, match="A and B would both go to public.B"):
        check_distinct([("A", TargetRequest(TargetName(None, "B"))), ("B", TargetRequest())])
    check_distinct([("A", TargetRequest(TargetName("s", "x"))), ("B", TargetRequest(TargetName(None, "x")))])


def test_per_table_settings_replace_the_runs() -> None:
    config = Config(
        scan_rate=100.0,
        segments=8,
        table_prefix="p_",
        table_settings={"A": TableSettings(TargetName("app", "a"), lower_case=True, scan_rate=5.0)},
    )
    a = config.for_table("A")
    assert (a.scan_rate, a.segments, a.lower_case, a.mode) == (5.0, 8, True, None)
    assert config.for_table("B") is config
    assert config.target_request("A") == TargetRequest(TargetName("app", "a"), "public", True, "p_")
