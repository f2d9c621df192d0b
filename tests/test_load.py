"""``podyn --schema --data`` end to end: DynamoDB Local → the real CLI → PostgreSQL, checked by an independent
oracle (tests/oracle.py)."""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
import pytest
from helpers import REPO_ROOT, assert_exit, podyn, run_podyn
from oracle import connect, table_differences

DATA = Path(__file__).parent / "data" / "sample-tables"

SAMPLE_KEYS: dict[str, dict[str, Any]] = {
    "ProductCatalog": {"key": (("Id", "N"),)},
    "Forum": {"key": (("Name", "S"),)},
    "Thread": {"key": (("ForumName", "S"), ("Subject", "S"))},
    "Reply": {
        "key": (("Id", "S"), ("ReplyDateTime", "S")),
        "gsis": [{"name": "PostedBy-Message-Index", "key": (("PostedBy", "S"), ("Message", "S"))}],
    },
}


def sample_items(name: str) -> list[dict[str, Any]]:
    with open(DATA / f"{name}.json") as f:
        return [request["PutRequest"]["Item"] for request in json.load(f)[name]]


@pytest.fixture
def sample_tables(create_table: Any) -> dict[str, str]:
    """The Developer Guide's four sample tables, under unique names: sample name → DynamoDB table name."""
    names = {}
    for sample, shape in SAMPLE_KEYS.items():
        names[sample] = create_table(
            shape["key"], name=f"{sample}_{os.urandom(4).hex()}", gsis=shape.get("gsis", ()), items=sample_items(sample)
        )
    return names


@pytest.mark.parametrize(
    "flags",
    [(), ("-lc",), ("-m", "jsonb"), ("-m", "jsonb", "-lc")],
    ids=["columns", "columns-lc", "jsonb", "jsonb-lc"],
)
def test_sample_tables_load_exactly(
    ddb_server: Any, ddb: Any, pg_url: str, sample_tables: dict[str, str], flags: tuple[str, ...]
) -> None:
    assert_exit(podyn(ddb_server, pg_url, "--schema", "--data", "-t", ",".join(sample_tables.values()), *flags))
    for name in sample_tables.values():
        assert table_differences(ddb, pg_url, name) == []
    with connect(pg_url) as conn:
        reply = sample_tables["Reply"]
        index = conn.execute(
            "SELECT indexdef FROM pg_indexes WHERE tablename = %s AND indexname = %s",
            (reply, f"{reply}_PostedBy-Message-Index"),
        ).fetchone()
        assert index is not None, "the GSI became no index"
        expected_columns = '"postedby", "message"' if "-lc" in flags else '"PostedBy", "Message"'
        assert (
            expected_columns in index[0].replace("(", '"').replace(")", "")
            or expected_columns.replace('"', "") in index[0]
        )
        forum = conn.execute(
            "SELECT count(*) FROM podyn.tables WHERE source_table = %s AND state = 'loaded'", (sample_tables["Forum"],)
        ).fetchone()
        assert forum == (1,)
        if "-m" in flags:
            # Real JSON types inside data: numbers are numbers, lists are arrays, booleans are booleans.
            types = dict(
                conn.execute(
                    sql_text(
                        "SELECT key, jsonb_typeof(value) FROM {} t, jsonb_each(t.data)"
                        " WHERE (data->>'Id')::numeric = 101",
                        sample_tables["ProductCatalog"],
                    )
                ).fetchall()
            )
            assert types["Price"] == "number" and types["Authors"] == "array" and types["InPublication"] == "boolean"


def sql_text(template: str, table: str) -> Any:
    from psycopg import sql

    return sql.SQL(template).format(sql.Identifier(table))


EVERY_TYPE = {
    "pk": {"S": "every-type"},
    "s": {"S": "text with 'quotes' and \"double\" and ünïcödé ✓"},
    "empty_s": {"S": ""},
    "n": {"N": "12345678901234567890123456789012345678"},
    "b": {"B": b"\x00\x01\xffbinary"},
    "bool_t": {"BOOL": True},
    "bool_f": {"BOOL": False},
    "null": {"NULL": True},
    "m": {"M": {"inner": {"N": "1.5"}, "deep": {"M": {"b": {"B": b"\x10\x20"}}}, "empty": {"M": {}}}},
    "l": {"L": [{"S": "a"}, {"N": "-0.000000000000000000000000000000000001"}, {"BOOL": False}, {"NULL": True}]},
    "empty_m": {"M": {}},
    "empty_l": {"L": []},
    "ss": {"SS": ["x", "y", "z"]},
    "ns": {"NS": ["1", "99999999999999999999999999999999999999", "-1E-130"]},
    "bs": {"BS": [b"\x01", b"\x02\x03"]},
}

# Numbers at DynamoDB's limits: 38 significant digits, exponents from -130 to +125, signs and odd spellings.
LIMIT_NUMBERS = [
    "+3",
    ".123",
    "0e1000",
    "1E-130",
    "-1E-130",
    "9.9999999999999999999999999999999999999E+125",
    "-9.9999999999999999999999999999999999999E+125",
    "12345678901234567890123456789012345678",
    "0.00000000000000000000000000000000000001",
    "-0",
    "1.50",
    "100E-2",
]


@pytest.mark.parametrize("path", ["--fast-path", "--no-fast-path"])
def test_every_type_and_limit_numbers(ddb_server: Any, ddb: Any, pg_url: str, create_table: Any, path: str) -> None:
    numbers = [
        {"pk": {"S": f"num-{i}"}, "value": {"N": n}, "nested": {"M": {"v": {"N": n}}}}
        for i, n in enumerate(LIMIT_NUMBERS)
    ]
    table = create_table(items=[EVERY_TYPE, *numbers])
    assert_exit(podyn(ddb_server, pg_url, "-s", "-d", "-t", table, path))
    assert table_differences(ddb, pg_url, table) == []
    with connect(pg_url) as conn:
        types = dict(
            conn.execute(
                "SELECT column_name, data_type FROM information_schema.columns WHERE table_name = %s", (table,)
            ).fetchall()
        )
        assert types["s"] == "text" and types["n"] == "numeric" and types["b"] == "bytea"
        assert types["bool_t"] == "boolean" and types["m"] == "jsonb" and types["ss"] == "jsonb"
        assert "null" not in types, "a NULL decided a column's type"
        row = conn.execute(
            sql_text("SELECT n::text, b, m->'deep'->'b', jsonb_typeof(ns->1) FROM {} WHERE pk = 'every-type'", table)
        ).fetchone()
        assert row == (
            "12345678901234567890123456789012345678",
            b"\x00\x01\xffbinary",
            base64.b64encode(b"\x10\x20").decode(),
            "number",
        )
        exact = dict(conn.execute(sql_text("SELECT pk, value FROM {} WHERE pk LIKE 'num-%%'", table)).fetchall())
        for i, text in enumerate(LIMIT_NUMBERS):
            assert exact[f"num-{i}"] == Decimal(text)
        big = conn.execute(sql_text("SELECT (nested->>'v') FROM {} WHERE pk = 'num-5'", table)).fetchone()
        assert big is not None and Decimal(big[0]) == Decimal("9.9999999999999999999999999999999999999E+125")


HOSTILE_NAMES = [
    'quote"d',
    "single'quote",
    "with space",
    "Robert'); DROP TABLE students;--",
    "select",
    "ünïcödé ✓ 名前",
    "x" * 64,
    "y" * 200,
    "é" * 40,  # 80 bytes: must be cut at a character boundary
    "Name",
    "name",
    "NAME",
]


@pytest.mark.parametrize("lower_case", [False, True], ids=["as-is", "lc"])
def test_hostile_long_and_colliding_names(
    ddb_server: Any, ddb: Any, pg_url: str, create_table: Any, lower_case: bool
) -> None:
    item = {"pk": {"S": "k"}} | {name: {"S": f"value of {name}"} for name in HOSTILE_NAMES}
    long_prefix = "p" * 70
    item[long_prefix + "A"] = {"N": "1"}
    item[long_prefix + "B"] = {"N": "2"}  # equal to the above once cut to 63 bytes
    table = create_table(items=[item])
    assert_exit(podyn(ddb_server, pg_url, "-s", "-d", "-t", table, *(["-lc"] if lower_case else [])))
    assert table_differences(ddb, pg_url, table) == []
    with connect(pg_url) as conn:
        columns = [
            r[0] for r in conn.execute("SELECT column_name FROM podyn.columns WHERE target_table = %s", (table,))
        ]
    assert len(columns) == len(set(columns)) == len(item)
    assert all(len(c.encode()) <= 63 for c in columns)
    if lower_case:
        assert "name" in columns and sum(c.startswith("name_") for c in columns) == 2
    else:
        assert {"Name", "name", "NAME"} <= set(columns)


def test_index_names_that_meet_across_tables_stay_apart(
    ddb_server: Any, ddb: Any, pg_url: str, create_table: Any
) -> None:
    """Table x_gsi with index idx and table x with index gsi_idx both ask for the index name x_gsi_idx; a table
    named x_gsi_idx would meet that index too (PostgreSQL's relation names are shared by tables and indexes)."""
    base = f"ix{os.urandom(3).hex()}"
    first = create_table(name=f"{base}_gsi", gsis=[{"name": "idx", "key": (("o", "S"),)}], items=[])
    second = create_table(name=base, gsis=[{"name": "gsi_idx", "key": (("o", "S"),)}], items=[])
    for item in ({"pk": {"S": "a"}, "o": {"S": "x"}}, {"pk": {"S": "b"}, "o": {"S": "y"}}):
        ddb.put_item(TableName=first, Item=item)
        ddb.put_item(TableName=second, Item=item)

    def indexes() -> dict[str, list[str]]:
        with connect(pg_url) as conn:
            rows = conn.execute(
                "SELECT tablename, indexdef FROM pg_indexes WHERE schemaname = 'public' AND tablename = ANY(%s)",
                ([first, second],),
            ).fetchall()
        found: dict[str, list[str]] = {first: [], second: []}
        for table, definition in rows:
            found[table].append(definition)
        return found

    result = assert_exit(podyn(ddb_server, pg_url, "-s", "-d", "-t", f"{first},{second}"))
    assert "is taken by another relation" in result.stderr
    created = indexes()
    for table in (first, second):  # the primary key and the GSI's index, on o
        assert len(created[table]) == 2 and sum("(o)" in d for d in created[table]) == 1, created
        assert table_differences(ddb, pg_url, table) == []
    again = assert_exit(podyn(ddb_server, pg_url, "-s", "-t", f"{first},{second}"))
    assert indexes() == created, "a second --schema run made more indexes"
    assert "is taken by another relation" not in again.stderr, "the warning is for the run that names the index"

    clashing = create_table(name=f"{base}_gsi_idx", items=[{"pk": {"S": "a"}}])
    result = podyn(ddb_server, pg_url, "-s", "-d", "-t", clashing)
    assert result.returncode == 3, result.stderr
    assert f"public.{clashing} exists, but as an index, not a table" in result.stderr


def test_type_conflicts_go_to_variant_columns(ddb_server: Any, ddb: Any, pg_url: str, create_table: Any) -> None:
    items = [
        {"pk": {"S": "1"}, "amount": {"N": "10"}},
        {"pk": {"S": "2"}, "amount": {"S": "ten"}},
        {"pk": {"S": "3"}, "amount": {"BOOL": True}},
        {"pk": {"S": "4"}, "amount": {"M": {"value": {"N": "10"}}}},
        {"pk": {"S": "5"}, "amount": {"L": [{"N": "10"}]}},
        {"pk": {"S": "6"}, "amount": {"NULL": True}},
    ]
    table = create_table(items=items)
    assert_exit(podyn(ddb_server, pg_url, "-s", "-d", "-t", table, "-n", "1"))
    assert table_differences(ddb, pg_url, table) == []
    with connect(pg_url) as conn:
        columns = {
            r[0] for r in conn.execute("SELECT column_name FROM podyn.columns WHERE target_table = %s", (table,))
        }
    variants = columns - {"pk"}
    assert len(variants) == 4 and any(c in variants for c in ("amount",))
    assert {c.rsplit("_", 1)[-1] for c in variants - {"amount"}} <= {"text", "numeric", "boolean", "jsonb"}


def test_nul_bytes_are_removed_and_counted(ddb_server: Any, ddb: Any, pg_url: str, create_table: Any) -> None:
    items = [
        {"pk": {"S": "1"}, "t": {"S": "a\x00b"}, "m": {"M": {"k\x00ey": {"S": "v\x00"}}}},
        {"pk": {"S": "2"}, "t": {"S": "\x00\x00"}},
    ]
    table = create_table(items=items)
    result = assert_exit(podyn(ddb_server, pg_url, "-s", "-d", "-t", table))
    assert table_differences(ddb, pg_url, table) == []
    assert "U+0000" in result.stderr
    assert result.stderr.count("removed U+0000 from values of column t") == 1


def nested(depth: int) -> dict[str, Any]:
    value: dict[str, Any] = {"S": "bottom"}
    for level in range(depth - 1):
        value = {"M": {f"l{level}": value}} if level % 2 else {"L": [value]}
    return value


def test_big_items_deep_nesting_key_only_and_empty_values(
    ddb_server: Any, ddb: Any, pg_url: str, create_table: Any
) -> None:
    big = {"pk": {"S": "big"}, "blob": {"S": "x" * 390_000}}
    deep = {"pk": {"S": "deep"}, "tree": nested(32)}
    empties = {"pk": {"S": "empty"}, "s": {"S": ""}, "m": {"M": {}}, "l": {"L": []}}
    table = create_table(items=[big, deep, empties])
    key_only = create_table(
        name=f"keyonly_{os.urandom(4).hex()}",
        key=(("pk", "S"), ("sk", "N")),
        items=[{"pk": {"S": "a"}, "sk": {"N": str(i)}} for i in range(30)],
    )
    for mode in ("columns", "jsonb"):
        assert_exit(podyn(ddb_server, pg_url, "-s", "-d", "-t", f"{table},{key_only}", "-m", mode, "--pg-schema", mode))
        assert table_differences(ddb, pg_url, table, schema=mode) == []
        assert table_differences(ddb, pg_url, key_only, schema=mode) == []


def test_numeric_and_binary_keys(ddb_server: Any, ddb: Any, pg_url: str, create_table: Any) -> None:
    numeric = create_table(
        key=(("id", "N"), ("at", "N")),
        items=[{"id": {"N": str(i)}, "at": {"N": f"{i}.5E-3"}, "v": {"S": "x"}} for i in range(20)],
    )
    binary = create_table(
        name=f"binkey_{os.urandom(4).hex()}",
        key=(("id", "B"),),
        items=[{"id": {"B": bytes([i, 0, 255])}, "v": {"N": str(i)}} for i in range(20)],
    )
    assert_exit(podyn(ddb_server, pg_url, "-s", "-d", "-t", f"{numeric},{binary}", "--segments", "3"))
    assert table_differences(ddb, pg_url, numeric) == []
    assert table_differences(ddb, pg_url, binary) == []
    with connect(pg_url) as conn:
        key = conn.execute(
            "SELECT a.attname, format_type(a.atttypid, a.atttypmod) FROM pg_index i"
            " JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey)"
            " WHERE i.indrelid = %s::regclass AND i.indisprimary",
            (f'"{binary}"',),
        ).fetchall()
    assert key == [("id", "bytea")]


def test_citus_distributes_after_create_and_before_data(
    ddb_server: Any, ddb: Any, pg_url: str, create_table: Any
) -> None:
    # Citus cannot be installed here: a stub create_distributed_table(regclass, text) records each call with
    # what the table held at that moment, so the order of statements is checked on a real PostgreSQL.
    table = create_table(
        gsis=[{"name": "ByOwner", "key": (("owner", "S"),)}],
        items=[{"pk": {"S": str(i)}, "owner": {"S": "o"}} for i in range(10)],
    )
    with connect(pg_url) as conn:
        conn.execute(
            """CREATE TABLE citus_calls (tbl text, col text, nrows bigint, nindexes int);
               CREATE FUNCTION create_distributed_table(t regclass, c text) RETURNS void LANGUAGE plpgsql AS $$
               DECLARE n bigint;
               BEGIN
                 EXECUTE format('SELECT count(*) FROM %s', t) INTO n;
                 INSERT INTO citus_calls SELECT t::text, c, n, (SELECT count(*) FROM pg_index WHERE indrelid = t);
               END $$;"""
        )
    assert_exit(podyn(ddb_server, pg_url, "-s", "-d", "-t", table, "--citus"))
    assert table_differences(ddb, pg_url, table) == []
    with connect(pg_url) as conn:
        calls = conn.execute("SELECT * FROM citus_calls").fetchall()
    assert calls == [(table, "pk", 0, 1)]  # once, by partition key, empty table, before the GSI's index
    # A second run must not distribute again (Citus would refuse an already distributed table).
    assert_exit(podyn(ddb_server, pg_url, "-s", "-d", "-t", table, "--citus"))
    with connect(pg_url) as conn:
        assert conn.execute("SELECT count(*) FROM citus_calls").fetchone() == (1,)


def test_citus_without_the_extension_is_a_clear_error(ddb_server: Any, pg_url: str, create_table: Any) -> None:
    table = create_table(items=[{"pk": {"S": "a"}}])
    result = podyn(ddb_server, pg_url, "-s", "-t", table, "--citus")
    assert result.returncode == 3
    assert "create_distributed_table" in result.stderr and table in result.stderr


def test_dry_run_prints_sql_and_writes_nothing(ddb_server: Any, pg_url: str, create_table: Any) -> None:
    table = create_table(items=[{"pk": {"S": "a"}, "x y": {"N": "1"}}, {"pk": {"S": "b"}, "x y": {"S": "one"}}])
    result = assert_exit(podyn(ddb_server, None, "-s", "-d", "-t", table))
    assert f'CREATE TABLE IF NOT EXISTS "public"."{table}" ("pk" text, PRIMARY KEY ("pk"));' in result.stdout
    # Which type comes first depends on the scan order; either way one column and one variant.
    assert ('"x y" numeric' in result.stdout and '"x y_text" text' in result.stdout) or (
        '"x y" text' in result.stdout and '"x y_numeric" numeric' in result.stdout
    )
    assert "2 rows would be copied" in result.stdout
    with connect(pg_url) as conn:
        assert conn.execute("SELECT to_regclass('podyn.tables')").fetchone() == (None,)


def test_already_loaded_table_is_skipped_unless_reload(
    ddb_server: Any, ddb: Any, pg_url: str, create_table: Any
) -> None:
    table = create_table(items=[{"pk": {"S": str(i)}} for i in range(5)])
    assert_exit(podyn(ddb_server, pg_url, "-s", "-d", "-t", table))
    ddb.put_item(TableName=table, Item={"pk": {"S": "new"}})
    second = assert_exit(podyn(ddb_server, pg_url, "-s", "-d", "-t", table))
    assert "already loaded" in second.stderr
    with connect(pg_url) as conn:
        assert conn.execute(sql_text("SELECT count(*) FROM {}", table)).fetchone() == (5,)
    assert_exit(podyn(ddb_server, pg_url, "-d", "-t", table, "--reload"))
    assert table_differences(ddb, pg_url, table) == []


def test_existing_table_is_reused_and_incompatible_one_refused(
    ddb_server: Any, ddb: Any, pg_url: str, create_table: Any
) -> None:
    table = create_table(name=f"reuse_{os.urandom(4).hex()}", items=[{"pk": {"S": "a"}, "v": {"N": "1"}}])
    with connect(pg_url) as conn:
        conn.execute(sql_text("CREATE TABLE {} (pk text PRIMARY KEY, keep text)", table))
        conn.execute(sql_text("INSERT INTO {} VALUES ('old', 'kept')", table))
    assert_exit(podyn(ddb_server, pg_url, "-s", "-d", "-t", table))
    with connect(pg_url) as conn:
        assert conn.execute(sql_text("SELECT keep FROM {} WHERE pk = 'old'", table)).fetchone() == ("kept",)
        assert conn.execute(sql_text("SELECT v FROM {} WHERE pk = 'a'", table)).fetchone() == (Decimal(1),)
    other = create_table(name=f"incompatible_{os.urandom(4).hex()}", items=[{"pk": {"S": "a"}}])
    with connect(pg_url) as conn:
        conn.execute(sql_text("CREATE TABLE {} (pk integer PRIMARY KEY)", other))
    result = podyn(ddb_server, pg_url, "-s", "-d", "-t", other)
    assert result.returncode == 3 and "'pk' is integer, podyn needs text" in result.stderr


def test_throttling_is_waited_out(
    ddb_server: Any, ddb: Any, pg_url: str, create_table: Any, throttling_proxy: Any
) -> None:
    table = create_table(items=[{"pk": {"S": str(i)}, "v": {"N": str(i)}} for i in range(50)])
    throttling_proxy.throttle("Scan", 5)  # more than botocore's attempts below: podyn's own wait loop takes over
    result = run_podyn(
        "--endpoint-url",
        throttling_proxy.endpoint_url,
        "-u",
        pg_url,
        "-s",
        "-d",
        "-t",
        table,
        "-n",
        "1",
        "--no-progress",
        "--max-attempts",
        "2",
    )
    assert_exit(result)
    assert throttling_proxy.count("Scan") >= 6
    assert "throttled by DynamoDB" in result.stderr
    assert table_differences(ddb, pg_url, table) == []


def test_pages_are_bounded_and_segments_outnumber_connections(
    ddb_server: Any, ddb: Any, pg_url: str, create_table: Any, throttling_proxy: Any
) -> None:
    """Every Scan asks for at most MAX_PAGE_ITEMS items, even unpaced (these 2,500 small items would fit in one 1 MB
    page), on both client paths; by default a table is scanned in 4 × -n segments."""
    from podyn_py.source.scan import MAX_PAGE_ITEMS

    table = create_table(items=[{"pk": {"S": f"{i:05}"}, "v": {"N": str(i)}} for i in range(2500)])
    base = ["--endpoint-url", throttling_proxy.endpoint_url, "-u", pg_url, "-d", "-s", "--no-progress", "-n", "1"]
    for client_path in ("--no-fast-path", "--fast-path"):
        throttling_proxy.reset()
        assert_exit(run_podyn(*base, "-t", table, "--segments", "1", "--reload", client_path))
        assert MAX_PAGE_ITEMS == 1000 and throttling_proxy.count("Scan") == 3, client_path  # 1,000 + 1,000 + 500
        assert table_differences(ddb, pg_url, table) == []

    throttling_proxy.reset()
    assert_exit(run_podyn(*base, "-t", table, "--reload"))
    with connect(pg_url) as conn:
        done = conn.execute(
            """SELECT count(*), bool_and(s.done), sum(s.items_loaded) FROM podyn.segments s
               JOIN podyn.tables USING (target_schema, target_table) WHERE source_table = %s""",
            (table,),
        ).fetchone()
    assert done == (4, True, 2500)
    assert throttling_proxy.count("Scan") >= 4
    assert table_differences(ddb, pg_url, table) == []


def test_a_worker_keeps_its_connection_from_one_segment_to_the_next(ddb: Any, pg_url: str, create_table: Any) -> None:
    """Segments outnumber workers (4 × -n), so connections must follow workers: one each, not one per segment.
    In process, with the real PostgresTarget and DynamoDB Local; the target only counts what connect() opens."""
    from podyn_py.load import LoadOptions, load_table
    from podyn_py.source import dynamodb
    from podyn_py.target.postgres import PostgresTarget
    from podyn_py.target.state import HEARTBEAT_SECONDS

    class CountingTarget(PostgresTarget):
        opened: list[Any] = []

        def connect(self, *, autocommit: bool = False, lease_seconds: float | None = None) -> Any:
            conn = super().connect(autocommit=autocommit, lease_seconds=lease_seconds)
            self.opened.append(conn)
            return conn

    table = create_table(items=[{"pk": {"S": f"{i:04}"}} for i in range(400)])
    description = dynamodb.describe_table(ddb, table, pg_schema="public")
    target = CountingTarget(pg_url)
    schema = target.prepare_table(description.spec, create=True, citus=False)
    target.opened.clear()
    started = time.monotonic()
    result = load_table(description, schema, target, ddb, LoadOptions(segments=12, connections=2))
    beats = int((time.monotonic() - started) / HEARTBEAT_SECONDS) + 1
    assert result.items == 400 and table_differences(ddb, pg_url, table) == []
    # One per worker (its claims, pages and releases), plus one each for begin_load, reading the leases (segments
    # other processes hold), joining the table's workers, the worker's presence lock, leaving and finish_load, and
    # one per heartbeat's lease renewal (a slow machine beats more often during the load); one per segment would
    # make 12 more.
    opened = len(target.opened)
    assert opened <= 2 + 6 + beats, f"{opened} connections for 12 segments on 2 workers in {beats} heartbeats"
    assert all(conn.closed for conn in target.opened)


def test_kill_9_mid_load_then_resume_loses_and_doubles_nothing(
    ddb_server: Any, ddb: Any, pg_url: str, create_table: Any
) -> None:
    items = [{"pk": {"S": f"{i:05d}"}, "pad": {"S": "p" * 900}, "n": {"N": str(i)}} for i in range(3000)]
    table = create_table(items=items)
    command = [
        sys.executable,
        "-m",
        "podyn_py",
        "--endpoint-url",
        ddb_server.endpoint_url,
        "-u",
        pg_url,
        "-s",
        "-d",
        "-t",
        table,
        "--segments",
        "4",
        "-n",
        "4",
        "--scan-rate",
        "150",
        "--no-progress",
    ]
    process = subprocess.Popen(command, cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        loaded = 0
        while time.monotonic() < deadline:
            time.sleep(0.2)
            try:
                with psycopg.connect(pg_url) as conn:
                    loaded = conn.execute("SELECT coalesce(sum(items_loaded), 0) FROM podyn.segments").fetchone()[0]  # type: ignore[index]
            except psycopg.Error:
                continue
            if loaded >= 300:
                break
        assert 300 <= loaded < len(items), f"the load was not caught mid-way ({loaded} items)"
        process.send_signal(signal.SIGKILL)
    finally:
        process.wait(10)
    assert process.returncode == -signal.SIGKILL
    resumed = assert_exit(podyn(ddb_server, pg_url, "-s", "-d", "-t", table, "--segments", "4", "-n", "4"))
    assert "resuming" in resumed.stderr
    assert table_differences(ddb, pg_url, table) == []
    with connect(pg_url) as conn:
        counted = conn.execute("SELECT sum(items_loaded), bool_and(done) FROM podyn.segments").fetchone()
        state = conn.execute("SELECT state, items_loaded FROM podyn.tables").fetchone()
    assert counted == (len(items), True)  # every item counted exactly once across the two runs
    assert state == ("loaded", len(items))


def test_more_attributes_than_postgres_columns_overflow_into_jsonb(
    ddb_server: Any, ddb: Any, pg_url: str, create_table: Any
) -> None:
    # PostgreSQL allows 1,600 columns; podyn stops at MAX_COLUMNS and keeps the rest in one jsonb column.
    from podyn_py.core.schema import MAX_COLUMNS

    attributes = [f"attribute_{i:04d}" for i in range(MAX_COLUMNS + 300)]
    items = [
        {"pk": {"S": f"item{part}"}} | {name: {"N": str(i)} for i, name in enumerate(attributes[part::4])}
        for part in range(4)
    ]
    items[1]["attribute_0000"] = {"S": "a type conflict"}  # numeric in items[0]: a variant, or the overflow
    table = create_table(name=f"wide_{os.urandom(4).hex()}", items=items)
    assert_exit(podyn(ddb_server, pg_url, "-s", "-d", "-t", table, "-n", "1"))
    assert table_differences(ddb, pg_url, table) == []
    with connect(pg_url) as conn:
        count = conn.execute(
            "SELECT count(*) FROM information_schema.columns WHERE table_name = %s", (table,)
        ).fetchone()
        overflow = conn.execute(
            sql_text("SELECT sum((SELECT count(*) FROM jsonb_object_keys(podyn_overflow))) FROM {}", table)
        ).fetchone()
    assert count is not None and count[0] == MAX_COLUMNS
    assert overflow is not None and overflow[0] > 300
