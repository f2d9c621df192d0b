"""The ``podyn`` schema describes the tables that are there, or none (issue 10, cases 1, 2, 6 and 8).

Each test does to one end what an operator might (drop the PostgreSQL table or a column, lose the ``podyn``
schema, delete and re-create the DynamoDB table, change ``-m``), then runs the real CLI against DynamoDB Local and
PostgreSQL, and checks the rows with the independent oracle and what ``--status`` claims.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from helpers import assert_exit, column_names, fresh, items, podyn, recreate, row_count, status_record, wait_for_status
from oracle import connect, table_differences
from psycopg import sql

from podyn_py.target import state

V1_DDL = Path(__file__).parent / "data" / "metadata-v1.sql"


@pytest.mark.parametrize("drop", ["table", "schema"])
def test_a_target_dropped_by_hand_is_loaded_again(
    ddb_server: Any, ddb: Any, pg_url: str, create_table: Any, drop: str
) -> None:
    table = create_table(name=fresh(), items=items(20))
    assert_exit(podyn(ddb_server, pg_url, "-s", "-d", "-t", table, "--pg-schema", "app"))
    with connect(pg_url) as conn:
        if drop == "table":
            conn.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier("app", table)))
        else:
            conn.execute("DROP SCHEMA app CASCADE")
    status = podyn(ddb_server, pg_url, "--status", "--json", "-t", table, "--pg-schema", "app")
    assert status.returncode == 3  # a health check fails: the rows it called loaded are gone
    (record,) = json.loads(status.stdout)["tables"]
    assert record["state"] == "target missing" and record["stored_state"] == "loaded"
    replication = podyn(ddb_server, pg_url, "-c", "-t", table, "--pg-schema", "app", timeout=60)
    assert replication.returncode == 3
    assert f"podyn -t {table} --schema --data" in replication.stderr
    result = assert_exit(podyn(ddb_server, pg_url, "-s", "-d", "-t", table, "--pg-schema", "app"))
    assert "already loaded" not in result.stderr
    assert f"app.{table} was dropped outside podyn" in result.stderr
    assert row_count(pg_url, table, "app") == 20
    assert table_differences(ddb, pg_url, table, schema="app") == []
    status = podyn(ddb_server, pg_url, "--status", "--json", "-t", table, "--pg-schema", "app")
    (record,) = json.loads(status.stdout)["tables"]
    assert record["state"] == "loaded" and record["items_loaded"] == 20


def test_a_dropped_column_is_refused_until_reload(ddb_server: Any, ddb: Any, pg_url: str, create_table: Any) -> None:
    table = create_table(name=fresh(), items=items(10))
    assert_exit(podyn(ddb_server, pg_url, "-s", "-d", "-t", table))
    with connect(pg_url) as conn:
        conn.execute(sql.SQL("ALTER TABLE {} DROP COLUMN v").format(sql.Identifier(table)))
    for flags in (("-s", "-d"), ("-c",)):
        result = podyn(ddb_server, pg_url, *flags, "-t", table, timeout=60)
        assert result.returncode == 3, result.stderr
        assert "column(s) v of" in result.stderr and "--reload" in result.stderr
    assert "v" not in column_names(pg_url, table)  # refused means nothing re-added empty
    assert_exit(podyn(ddb_server, pg_url, "-s", "-d", "--reload", "-t", table))
    assert table_differences(ddb, pg_url, table) == []


@pytest.mark.parametrize(("first", "then"), [("columns", "jsonb"), ("jsonb", "columns")])
def test_a_new_conversion_mode_starts_the_table_over(
    ddb_server: Any, ddb: Any, pg_url: str, create_table: Any, first: str, then: str
) -> None:
    table = create_table(name=fresh(), items=items(15))
    assert_exit(podyn(ddb_server, pg_url, "-s", "-d", "-t", table, "-m", first))
    refused = podyn(ddb_server, pg_url, "-s", "-d", "-t", table, "-m", then)
    assert refused.returncode == 3
    assert f"podyn -t {table} --schema --data --reload -m {then}" in refused.stderr  # the advice names the way
    assert_exit(podyn(ddb_server, pg_url, "-s", "-d", "--reload", "-t", table, "-m", then))
    assert table_differences(ddb, pg_url, table) == []
    with connect(pg_url) as conn:
        mode = conn.execute("SELECT conversion_mode FROM podyn.tables WHERE source_table = %s", (table,)).fetchone()
    assert mode == (then,)
    assert ("data" in column_names(pg_url, table)) is (then == "jsonb")
    assert ("s" in column_names(pg_url, table)) is (then == "columns")


@pytest.mark.parametrize(("first", "then"), [("columns", "jsonb"), ("jsonb", "columns")])
def test_dropping_the_table_and_its_row_by_hand_starts_over_too(
    ddb_server: Any, ddb: Any, pg_url: str, create_table: Any, first: str, then: str
) -> None:
    """The old advice (drop the table and its row in podyn.tables) left segments, columns and shards behind: the
    next load 'resumed' with nothing to do, or crashed on the stale mapping."""
    table = create_table(name=fresh(), items=items(12))
    assert_exit(podyn(ddb_server, pg_url, "-s", "-d", "-t", table, "-m", first))
    with connect(pg_url) as conn:
        conn.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier(table)))
        conn.execute("DELETE FROM podyn.tables WHERE source_table = %s", (table,))
    assert_exit(podyn(ddb_server, pg_url, "-s", "-d", "-t", table, "-m", then))
    assert row_count(pg_url, table) == 12
    assert table_differences(ddb, pg_url, table) == []


def test_a_dynamodb_table_recreated_under_the_same_name_is_loaded_again(
    ddb_server: Any, ddb: Any, pg_url: str, create_table: Any
) -> None:
    table = create_table(name=fresh(), items=items(30, "old"))
    assert_exit(podyn(ddb_server, pg_url, "-s", "-d", "-t", table))
    recreate(ddb, create_table, table, items=items(10, "new", value=100))
    replication = podyn(ddb_server, pg_url, "-c", "-t", table, timeout=60)
    assert replication.returncode == 3
    assert "was deleted and created again" in replication.stderr
    assert f"podyn -t {table} --schema --data" in replication.stderr
    result = assert_exit(podyn(ddb_server, pg_url, "-s", "-d", "-t", table))
    assert "already loaded" not in result.stderr
    assert row_count(pg_url, table) == 10  # none of the 30 old rows stays
    assert table_differences(ddb, pg_url, table) == []
    assert status_record(ddb_server, pg_url, table)["items_loaded"] == 10


def test_an_interrupted_load_of_a_recreated_table_does_not_resume_its_old_positions(
    ddb_server: Any, ddb: Any, pg_url: str, create_table: Any
) -> None:
    table = create_table(name=fresh(), items=items(40, "old"))
    assert_exit(podyn(ddb_server, pg_url, "-s", "-d", "-t", table, "--segments", "4", "-n", "1"))
    with connect(pg_url) as conn:  # as after a kill -9 mid-load: two segments not done, one with a position
        conn.execute(
            "UPDATE podyn.tables SET state = 'loading', load_finished_at = NULL WHERE source_table = %s", (table,)
        )
        conn.execute(
            """UPDATE podyn.segments SET done = false, last_key = '{"pk": {"S": "old3"}}'
               WHERE target_table = %s AND segment IN (1, 2)""",
            (table,),
        )
    recreate(ddb, create_table, table, items=items(25, "new"))
    assert_exit(podyn(ddb_server, pg_url, "-s", "-d", "-t", table, "--segments", "4", "-n", "1"))
    assert row_count(pg_url, table) == 25
    assert table_differences(ddb, pg_url, table) == []


def test_a_recreated_table_whose_key_type_changed_gets_the_new_key(
    ddb_server: Any, ddb: Any, pg_url: str, create_table: Any
) -> None:
    table = create_table(name=fresh(), items=items(5))
    assert_exit(podyn(ddb_server, pg_url, "-s", "-d", "-t", table))
    numeric = [{"pk": {"N": str(i)}, "v": {"N": "1"}} for i in range(7)]
    recreate(ddb, create_table, table, key=(("pk", "N"),), items=numeric)
    assert_exit(podyn(ddb_server, pg_url, "-s", "-d", "-t", table))
    with connect(pg_url) as conn:
        key = conn.execute(
            "SELECT format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid = to_regclass(%s)"
            " AND attname = 'pk'",
            (sql.Identifier("public", table).as_string(conn),),
        ).fetchone()
    assert key == ("numeric",)
    assert not any(re.fullmatch(r"pk_[0-9a-f]{8}", name) for name in column_names(pg_url, table))
    assert row_count(pg_url, table) == 7
    assert table_differences(ddb, pg_url, table) == []


def test_a_table_found_without_its_metadata_is_adopted_and_loaded_again(
    ddb_server: Any, ddb: Any, pg_url: str, create_table: Any
) -> None:
    table = create_table(name=fresh(), items=items(10))
    assert_exit(podyn(ddb_server, pg_url, "-s", "-d", "-t", table))
    with connect(pg_url) as conn:
        conn.execute("DROP SCHEMA podyn CASCADE")
    for i in range(5):  # items change while podyn knows nothing: new values, and one item gone
        ddb.put_item(TableName=table, Item={"pk": {"S": f"k{i}"}, "v": {"N": str(1000 + i)}, "s": {"S": "changed"}})
    ddb.delete_item(TableName=table, Key={"pk": {"S": "k9"}})
    assert_exit(podyn(ddb_server, pg_url, "-s", "-d", "-t", table))
    columns = column_names(pg_url, table)
    assert {"v", "s"} <= columns
    assert not any(re.fullmatch(r"(v|s)_[0-9a-f]{8}", name) for name in columns), columns  # no second column
    assert row_count(pg_url, table) == 9
    assert table_differences(ddb, pg_url, table) == []
    verify = podyn(ddb_server, pg_url, "--verify", "-t", table)
    assert verify.returncode == 0, verify.stdout + verify.stderr


def test_a_table_made_by_hand_keeps_its_rows_and_lends_its_columns(
    ddb_server: Any, ddb: Any, pg_url: str, create_table: Any
) -> None:
    """Without podyn's mark the table is someone else's: its rows stay (upserted over), and a column of the right
    name and type holds the attribute instead of a tagged second one."""
    table = create_table(name=fresh(), items=items(3))
    with connect(pg_url) as conn:
        conn.execute(
            sql.SQL("CREATE TABLE {} (pk text PRIMARY KEY, v numeric, note text)").format(sql.Identifier(table))
        )
        conn.execute(sql.SQL("INSERT INTO {} VALUES ('mine', 7, 'kept')").format(sql.Identifier(table)))
    assert_exit(podyn(ddb_server, pg_url, "-s", "-d", "-t", table))
    with connect(pg_url) as conn:
        mine = conn.execute(sql.SQL("SELECT note FROM {} WHERE pk = 'mine'").format(sql.Identifier(table))).fetchone()
        mapped = conn.execute(
            "SELECT column_name FROM podyn.columns WHERE target_table = %s AND attribute_name = 'v'", (table,)
        ).fetchall()
    assert mine == ("kept",)
    assert mapped == [("v",)]
    assert row_count(pg_url, table) == 4


def test_metadata_of_the_previous_release_is_migrated_in_place(
    ddb_server: Any, ddb: Any, pg_url: str, create_table: Any
) -> None:
    """A database whose ``podyn`` schema has podyn_py 0.1's layout (no version, no identity columns) continues:
    the loaded table is not loaded again, and the identity podyn finds is recorded."""
    assert " ".join(V1_DDL.read_text().split("\n", 1)[1].split()) == " ".join(state._V1_DDL.split())
    table = create_table(name=fresh(), items=items(8))
    assert_exit(podyn(ddb_server, pg_url, "-s", "-d", "-t", table))
    downgrade_to_v1(pg_url)
    ddb.put_item(TableName=table, Item={"pk": {"S": "late"}, "v": {"N": "1"}})  # not loaded: the load was done
    result = assert_exit(podyn(ddb_server, pg_url, "-s", "-d", "-t", table))
    assert "already loaded" in result.stderr
    assert "migrated from version 1 to" in result.stderr
    assert row_count(pg_url, table) == 8
    with connect(pg_url) as conn:
        version = conn.execute("SELECT version FROM podyn.schema_version").fetchall()
        identity = conn.execute(
            "SELECT target_oid = to_regclass(quote_ident(target_table))::oid, source_created_at IS NOT NULL"
            " FROM podyn.tables WHERE source_table = %s",
            (table,),
        ).fetchone()
    assert version == [(state.SCHEMA_VERSION,)]
    assert identity == (True, True)


def test_a_newer_metadata_schema_is_refused(ddb_server: Any, pg_url: str, create_table: Any) -> None:
    table = create_table(name=fresh(), items=items(1))
    assert_exit(podyn(ddb_server, pg_url, "-s", "-t", table))
    with connect(pg_url) as conn:
        conn.execute("UPDATE podyn.schema_version SET version = version + 1")
    result = podyn(ddb_server, pg_url, "-s", "-d", "-t", table)
    assert result.returncode != 0
    assert "newer than this podyn" in result.stderr


@pytest.mark.parametrize("pg_schema", ['x"; DROP TABLE y; --', "Mixed Case", "50%"])
def test_starting_over_keeps_hostile_names_apart(
    ddb_server: Any, ddb: Any, pg_url: str, create_table: Any, pg_schema: str
) -> None:
    """Forgetting a table removes its rows only: a neighbour whose name differs by one character keeps its state."""
    table = create_table(name=fresh(), items=items(4))
    neighbour = create_table(name=table + "x", items=items(6))
    both = ("-t", f"{table},{neighbour}", "--pg-schema", pg_schema)
    assert_exit(podyn(ddb_server, pg_url, "-s", "-d", *both))
    with connect(pg_url) as conn:
        conn.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier(pg_schema, table)))
    assert_exit(podyn(ddb_server, pg_url, "-s", "-d", *both))
    assert row_count(pg_url, table, pg_schema) == 4 and row_count(pg_url, neighbour, pg_schema) == 6
    status = podyn(ddb_server, pg_url, "--status", "--json", *both)
    states = {t["source"]: t["state"] for t in json.loads(status.stdout)["tables"]}
    assert states == {table: "loaded", neighbour: "loaded"}


def downgrade_to_v1(url: str) -> None:
    """Back to podyn_py 0.1's layout exactly: its tables and columns (as tests/data/metadata-v1.sql makes them),
    nothing any migration added."""
    with connect(url) as conn:
        conn.execute("CREATE SCHEMA podyn_v1")
        conn.execute(V1_DDL.read_text().replace("podyn.", "podyn_v1."))
        v1 = {
            (str(table), str(column))
            for table, column in conn.execute(
                "SELECT table_name, column_name FROM information_schema.columns WHERE table_schema = 'podyn_v1'"
            ).fetchall()
        }
        conn.execute("DROP SCHEMA podyn_v1 CASCADE")
        for (view,) in conn.execute("SELECT viewname FROM pg_views WHERE schemaname = 'podyn'").fetchall():
            conn.execute(sql.SQL("DROP VIEW {}").format(sql.Identifier("podyn", view)))
        tables = {table for table, _ in v1}
        for (table,) in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'podyn'").fetchall():
            if table not in tables:
                conn.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier("podyn", table)))
        found = conn.execute(
            "SELECT table_name, column_name FROM information_schema.columns WHERE table_schema = 'podyn'"
        ).fetchall()
        for table, column in found:
            if (table, column) not in v1:
                conn.execute(
                    sql.SQL("ALTER TABLE {} DROP COLUMN {}").format(
                        sql.Identifier("podyn", table), sql.Identifier(column)
                    )
                )


def test_an_upgraded_table_keeps_its_column_names(ddb_server: Any, ddb: Any, pg_url: str, create_table: Any) -> None:
    """A table podyn_py 0.1 named (first come, first named: ``Id`` took ``id``) is not renamed under its users when
    ``id`` arrives after the upgrade: the newcomer gets the tagged name."""
    table = create_table(name=fresh(), items=[{"pk": {"S": f"k{i}"}, "Id": {"S": f"I{i}"}} for i in range(4)])
    assert_exit(podyn(ddb_server, pg_url, "-s", "-d", "-lc", "-t", table))
    downgrade_to_v1(pg_url)
    ddb.put_item(TableName=table, Item={"pk": {"S": "new"}, "Id": {"S": "I"}, "id": {"S": "i"}})
    assert_exit(podyn(ddb_server, pg_url, "-s", "-d", "--reload", "-lc", "-t", table))
    with connect(pg_url) as conn:
        mapping = dict(
            conn.execute(
                "SELECT attribute_name, column_name FROM podyn.columns WHERE target_table = %s", (table,)
            ).fetchall()
        )
        generation = conn.execute(
            "SELECT mapping_generation, naming_rule FROM podyn.tables WHERE target_table = %s", (table,)
        ).fetchone()
    assert mapping["Id"] == "id"
    assert re.fullmatch(r"id_[0-9a-f]{8}", mapping["id"]), mapping
    assert generation == (0, 1)
    assert table_differences(ddb, pg_url, table) == []


def test_concurrent_first_runs_create_and_migrate_the_metadata_once(
    ddb_server: Any, pg_url: str, create_table: Any
) -> None:
    """Four processes meeting a database without a ``podyn`` schema, then one of podyn_py 0.1's layout: each
    waits for the one that creates or migrates it, and none runs a step again."""
    table = create_table(name=fresh(), items=items(2))

    def four_at_once() -> None:
        runs = [
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "podyn_py",
                    "--endpoint-url",
                    ddb_server.endpoint_url,
                    "--no-progress",
                    "-u",
                    pg_url,
                    "-s",
                    "-t",
                    table,
                    "--pg-schema",
                    f"s{i}",
                ],  # fmt: skip
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for i in range(4)
        ]
        for run in runs:
            _, err = run.communicate(timeout=120)
            assert run.returncode == 0, err

    four_at_once()
    downgrade_to_v1(pg_url)
    four_at_once()
    with connect(pg_url) as conn:
        assert conn.execute("SELECT version FROM podyn.schema_version").fetchall() == [(state.SCHEMA_VERSION,)]


def test_a_killed_load_is_not_shown_as_loading(ddb_server: Any, pg_url: str, create_table: Any) -> None:
    """A load whose process is gone holds no lock: --status says not running, exit 3, not 'loading'."""
    table = create_table(name=fresh(), items=items(2000))
    load = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "podyn_py",
            "--endpoint-url",
            ddb_server.endpoint_url,
            "--no-progress",
            "-u",
            pg_url,
            "-s",
            "-d",
            "-t",
            table,
            "-r",
            "0.5",
            "-n",
            "1",
        ],  # fmt: skip
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_status(ddb_server, pg_url, table, "loading")
        assert podyn(ddb_server, pg_url, "--status", "-t", table).returncode == 0
    finally:
        load.kill()
        load.wait()
    record, _ = wait_for_status(ddb_server, pg_url, table, "not running")
    assert record["stored_state"] == "loading"
    assert podyn(ddb_server, pg_url, "--status", "-t", table).returncode == 3


def test_a_table_dropped_by_hand_is_made_again_with_its_recorded_choices(
    ddb_server: Any, ddb: Any, pg_url: str, create_table: Any
) -> None:
    """The record of a dropped table binds nothing (another -m is not refused), but without -m the table is made
    again as it was: a jsonb table stays jsonb."""
    table = create_table(name=fresh(), items=items(5))
    assert_exit(podyn(ddb_server, pg_url, "-s", "-d", "-m", "jsonb", "-t", table))
    with connect(pg_url) as conn:
        conn.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier(table)))
    assert_exit(podyn(ddb_server, pg_url, "-s", "-d", "-t", table))
    assert "data" in column_names(pg_url, table)
    assert table_differences(ddb, pg_url, table) == []
    with connect(pg_url) as conn:
        conn.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier(table)))
    assert_exit(podyn(ddb_server, pg_url, "-s", "-d", "-m", "columns", "-t", table))
    assert {"v", "s"} <= column_names(pg_url, table) and "data" not in column_names(pg_url, table)
    assert table_differences(ddb, pg_url, table) == []
