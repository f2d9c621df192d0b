"""Target names through the real CLI against DynamoDB Local and PostgreSQL (issue 15, item 3).

``-t Source:[schema.]table`` maps a DynamoDB table to a PostgreSQL table; the mapping is stored in
``podyn.tables`` and later runs follow it (``--verify``, ``--status``, ``--changes`` without a target), while a run
that maps the table elsewhere is refused, naming both tables. ``--table-prefix`` goes before every table's name.
Checked with the independent oracle and the catalog, not podyn's own report.
"""

from __future__ import annotations

import json
from typing import Any

from helpers import STREAM, assert_exit, fresh, items, podyn, row_count, run_podyn, wait_equal, wait_for_state
from oracle import connect, table_differences


def relations(url: str, schema: str) -> set[str]:
    with connect(url) as conn:
        rows = conn.execute(
            "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = %s",
            (schema,),
        ).fetchall()
    return {r[0] for r in rows}


def recorded(url: str, source: str) -> list[tuple[str, str, str, str | None]]:
    with connect(url) as conn:
        rows = conn.execute(
            "SELECT target_schema, target_table, state, last_error FROM podyn.tables WHERE source_table = %s",
            (source,),
        ).fetchall()
    return [tuple(r) for r in rows]


def test_a_table_mapped_to_another_schema_and_name(
    ddb_server: Any, ddb: Any, pg_url: str, create_table: Any, services: Any
) -> None:
    orders = create_table(
        name=fresh(), items=items(12), gsis=[{"name": "ByS", "key": (("s", "S"),)}], stream_view_type=STREAM
    )
    profiles = create_table(name=fresh(), items=items(5))
    mapping = f"{orders}:app.orders,{profiles}:user_profiles"
    assert_exit(podyn(ddb_server, pg_url, "-s", "-d", "-t", mapping))
    assert {"orders", "orders_ByS"} <= relations(pg_url, "app")  # the index is named after the PostgreSQL table
    assert "user_profiles" in relations(pg_url, "public")
    assert orders not in relations(pg_url, "public") and profiles not in relations(pg_url, "public")
    assert recorded(pg_url, orders) == [("app", "orders", "loaded", None)]
    assert table_differences(ddb, pg_url, orders, schema="app") == []
    assert table_differences(ddb, pg_url, profiles) == []

    # Later runs that name no target follow the stored mapping: no second copy under the DynamoDB name.
    again = assert_exit(podyn(ddb_server, pg_url, "-s", "-d", "-t", f"{orders},{profiles}"))
    assert again.stderr.count("already loaded") == 2
    assert orders not in relations(pg_url, "public")
    status = assert_exit(podyn(ddb_server, pg_url, "--status", "--json", "-t", orders))
    (record,) = json.loads(status.stdout)["tables"]
    assert (record["target"], record["state"]) == ("app.orders", "loaded")
    for names in ([orders], [f"{orders}:app.orders"]):
        verify = assert_exit(podyn(ddb_server, pg_url, "--verify", "--json", "-t", *names))
        (report,) = json.loads(verify.stdout)
        assert report["target"] == "app.orders" and report["equal"] and report["items"] == 12
    listed = assert_exit(podyn(ddb_server, pg_url, "--verify", "--json", "--pg-schema", "app"))
    assert [r["source"] for r in json.loads(listed.stdout)] == [orders]

    # --changes without a target replicates into the mapped table.
    service = services(pg_url, orders, "--changes")
    wait_for_state(pg_url, orders, "live", service=service)
    ddb.put_item(TableName=orders, Item={"pk": {"S": "new"}, "v": {"N": "1"}, "s": {"S": "y"}})
    wait_equal(ddb, pg_url, orders, schema="app", service=service)
    assert row_count(pg_url, "orders", "app") == 13 and orders not in relations(pg_url, "public")


def test_a_changed_mapping_is_refused_until_the_old_table_is_dropped(
    ddb_server: Any, ddb: Any, pg_url: str, create_table: Any
) -> None:
    table = create_table(name=fresh(), items=items(6))
    assert_exit(podyn(ddb_server, pg_url, "-s", "-d", "-t", f"{table}:app.orders"))
    for args in (
        ("-t", f"{table}:app.orders_v2"),
        ("-t", f"{table}:orders"),  # another schema, named explicitly
        ("-t", f"{table}:orders", "--pg-schema", "app", "--table-prefix", "p_"),
    ):
        refused = podyn(ddb_server, pg_url, "-s", "-d", *args)
        assert_exit(refused, 3)
        assert f"DynamoDB table {table} is replicated into app.orders (podyn.tables), but this run maps it" in (
            refused.stderr
        )
        assert "drop app.orders first" in refused.stderr and "run this command again" in refused.stderr
    assert {"orders_v2", "p_orders"}.isdisjoint(relations(pg_url, "app")) and "orders" not in relations(
        pg_url, "public"
    )
    # The refusal is the run's, not the table's: the copy podyn keeps is not marked stopped.
    assert recorded(pg_url, table) == [("app", "orders", "loaded", None)]
    with connect(pg_url) as conn:
        conn.execute("DROP TABLE app.orders")
    moved = assert_exit(podyn(ddb_server, pg_url, "-s", "-d", "-t", f"{table}:app.orders_v2"))
    assert "already loaded" not in moved.stderr
    assert "forgot podyn's record of app.orders (dropped outside podyn)" in moved.stderr
    assert recorded(pg_url, table) == [("app", "orders_v2", "loaded", None)]  # the old record went with the move
    assert row_count(pg_url, "orders_v2", "app") == 6
    assert table_differences(ddb, pg_url, table, schema="app") == []


def test_the_prefix_names_every_table_of_the_run(ddb_server: Any, ddb: Any, pg_url: str, create_table: Any) -> None:
    first, second = create_table(name=fresh(), items=items(3)), create_table(name=fresh(), items=items(4))
    assert_exit(podyn(ddb_server, pg_url, "-s", "-d", "-t", f"{first},{second}:Second", "--table-prefix", "ddb_"))
    assert {f"ddb_{first}", "ddb_Second"} <= relations(pg_url, "public")
    assert {first, second, "Second"}.isdisjoint(relations(pg_url, "public"))
    assert row_count(pg_url, f"ddb_{first}") == 3 and row_count(pg_url, "ddb_Second") == 4
    for prefix in (("--table-prefix", "ddb_"), ()):  # found by the prefix, or by what podyn stored
        verify = assert_exit(podyn(ddb_server, pg_url, "--verify", "--json", "-t", first, *prefix))
        assert json.loads(verify.stdout)[0]["target"] == f"public.ddb_{first}"
    dry = assert_exit(podyn(ddb_server, None, "-s", "-t", f"{first}:app.x", "--table-prefix", "p_"))
    assert 'CREATE TABLE IF NOT EXISTS "app"."p_x"' in dry.stdout and "CREATE INDEX" not in dry.stdout
    # Adding a prefix later is a changed mapping.
    refused = assert_exit(podyn(ddb_server, pg_url, "-d", "-t", first, "--table-prefix", "v2_"), 3)
    assert f"this run maps it to public.v2_{first} (--table-prefix 'v2_')" in refused.stderr


def test_hostile_names(ddb_server: Any, ddb: Any, pg_url: str, create_table: Any) -> None:
    dotted = create_table(name=f"My.Table-{fresh()}", items=items(3))  # dots and upper case in DynamoDB names
    assert_exit(podyn(ddb_server, pg_url, "-s", "-d", "-t", dotted))
    assert dotted in relations(pg_url, "public")
    target = '"we.ird"."Quote""d; DROP TABLE x"'
    other = create_table(name=fresh(), items=items(2))
    assert_exit(podyn(ddb_server, pg_url, "-s", "-d", "-t", f"{other}:{target}"))
    assert 'Quote"d; DROP TABLE x' in relations(pg_url, "we.ird")
    assert table_differences(ddb, pg_url, other, schema="we.ird") == []
    status = assert_exit(podyn(ddb_server, pg_url, "--status", "--json", "-t", other))
    assert json.loads(status.stdout)["tables"][0]["target"] == 'we.ird.Quote"d; DROP TABLE x'
    assert json.loads(assert_exit(podyn(ddb_server, pg_url, "--verify", "--json", "-t", other)).stdout)[0]["equal"]

    # A table that holds another DynamoDB table's copy is not taken over.
    taken = assert_exit(podyn(ddb_server, pg_url, "-s", "-d", "-t", f'{fresh()}:"{dotted}"'), 3)  # quoted: a dot
    assert f"is where podyn replicates DynamoDB table {dotted}" in taken.stderr
    assert recorded(pg_url, dotted) == [("public", dotted, "loaded", None)]


def test_names_postgresql_cannot_hold_are_usage_errors() -> None:
    """Refused before any connection (the endpoint and the database do not exist)."""
    base = ("--endpoint-url", "http://127.0.0.1:9", "-u", "postgresql://nobody@127.0.0.1:9/none", "-s", "-d")
    for args, message in [
        (("-t", f"A:{'x' * 64}"), "is 64 bytes long; PostgreSQL names hold at most 63"),
        (("-t", "A:podyn.a"), "schema 'podyn' holds podyn's own metadata"),
        (("-t", "A:x,B:x"), "DynamoDB tables A and B would both go to public.x"),
        (("-t", "A:a.b.c"), "a name that holds a dot goes in double quotes"),
        (("-t", "A", "--table-prefix", "p" * 60), "--table-prefix"),
        (("-t", "A", "--pg-schema", "s" * 64), "is 64 bytes long"),
    ]:
        result = assert_exit(run_podyn(*base, *args), 2)
        assert message in result.stderr, result.stderr
