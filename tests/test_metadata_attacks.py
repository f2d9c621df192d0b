"""Attacks on podyn's metadata, as an operator would make them (issue 10, an adversarial pass after the fixes).

Each test does to one end something the first round of fixes did not try (``--changes`` started on a table whose
rows came from a DynamoDB table that is gone, the target dropped under a running service, the target renamed by
hand), runs the real CLI against DynamoDB Local and PostgreSQL, and checks what podyn does and what it says.
"""

from __future__ import annotations

import json
import signal
import time
from typing import Any

import pytest
from helpers import STREAM, Service, assert_exit, fresh, items, podyn, recreate, row_count, wait_for_state
from oracle import connect, table_differences
from psycopg import sql


def wait_exit(service: Service, timeout: float = 30) -> int:
    """The service's exit code; fails if it is still running after ``timeout`` (e.g. replicating when it must not)."""
    deadline = time.monotonic() + timeout
    while service.process.poll() is None:
        if time.monotonic() > deadline:
            text = service.text()
            service.stop(signal.SIGKILL)
            raise AssertionError(f"still running after {timeout} s:\n{text}")
        time.sleep(0.1)
    return service.stop()


@pytest.mark.parametrize("lost", ["dynamodb table re-created", "podyn schema dropped"])
def test_changes_do_not_go_live_over_rows_podyn_must_empty_first(
    ddb_server: Any, ddb: Any, pg_url: str, create_table: Any, services: Any, lost: str
) -> None:
    table = create_table(name=fresh(), stream_view_type=STREAM, items=items(6, "old"))
    assert_exit(podyn(ddb_server, pg_url, "-s", "-d", "-t", table))
    if lost == "podyn schema dropped":
        with connect(pg_url) as conn:
            conn.execute("DROP SCHEMA podyn CASCADE")
        ddb.delete_item(TableName=table, Key={"pk": {"S": "old0"}})
    else:
        recreate(ddb, create_table, table, stream_view_type=STREAM, items=items(3, "new"))
    assert_exit(
        podyn(ddb_server, pg_url, "-s", "-t", table)
    )  # the state is forgotten; the rows are not known to be current
    service = services(pg_url, table, "-c")
    assert wait_exit(service) == 3, service.text()
    assert f"podyn -t {table} --data" in service.text(), service.text()
    assert_exit(podyn(ddb_server, pg_url, "-d", "-t", table))
    assert table_differences(ddb, pg_url, table) == []
    service = services(pg_url, table, "-c")
    wait_for_state(pg_url, table, "live", service=service)
    assert service.stop() == 0, service.text()


def test_a_target_dropped_under_a_running_service_stops_it_naming_the_repair(
    ddb_server: Any, ddb: Any, pg_url: str, create_table: Any, services: Any
) -> None:
    table = create_table(name=fresh(), stream_view_type=STREAM, items=items(4))
    service = services(pg_url, table, "-s", "-d", "-c")
    wait_for_state(pg_url, table, "live", service=service)
    with connect(pg_url) as conn:
        conn.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier(table)))
    ddb.put_item(TableName=table, Item={"pk": {"S": "after"}, "v": {"N": "1"}})
    assert wait_exit(service) == 3, service.text()
    assert "was dropped outside podyn" in service.text(), service.text()
    assert f"podyn -t {table} --schema --data" in service.text(), service.text()
    assert_exit(podyn(ddb_server, pg_url, "-s", "-d", "-t", table))
    assert row_count(pg_url, table) == 5
    assert table_differences(ddb, pg_url, table) == []


def test_a_target_renamed_by_hand_is_named_as_renamed(
    ddb_server: Any, ddb: Any, pg_url: str, create_table: Any
) -> None:
    table = create_table(name=fresh(), items=items(5))
    assert_exit(podyn(ddb_server, pg_url, "-s", "-d", "-t", table))
    with connect(pg_url) as conn:
        conn.execute(
            sql.SQL("ALTER TABLE {} RENAME TO {}").format(sql.Identifier(table), sql.Identifier(table + "_old"))
        )
    refused = podyn(ddb_server, pg_url, "-c", "-t", table, timeout=60)
    assert refused.returncode == 3
    assert f"public.{table} was renamed to public.{table}_old outside podyn" in refused.stderr, refused.stderr
    status = podyn(ddb_server, pg_url, "--status", "--json", "-t", table)
    assert status.returncode == 3 and json.loads(status.stdout)["tables"][0]["state"] == "target missing"
    result = assert_exit(podyn(ddb_server, pg_url, "-s", "-d", "-t", table))
    assert "renamed to" in result.stderr
    assert row_count(pg_url, table) == 5 and row_count(pg_url, table + "_old") == 5


def segments_part_done(url: str, table: str, timeout: float = 30) -> None:
    """Wait until the load has committed pages and has segments left."""
    deadline = time.monotonic() + timeout
    while True:
        with connect(url) as conn:
            row = conn.execute(
                """SELECT count(*) FILTER (WHERE done), count(*), coalesce(sum(items_loaded), 0)
                   FROM podyn.segments WHERE target_table = %s""",
                (table,),
            ).fetchone()
        assert row is not None
        if row[1] and row[2] > 0 and row[0] < row[1]:
            return
        assert time.monotonic() < deadline, f"no partial load within {timeout} s: {row}"
        time.sleep(0.05)


def test_a_load_killed_during_a_reload_into_a_new_mode_is_not_shown_loading(
    ddb_server: Any, ddb: Any, pg_url: str, create_table: Any, services: Any
) -> None:
    """kill -9 during ``--reload -m jsonb`` (the DROP and re-create, then the load): --status said 'loading', exit 0,
    with nothing loading; while the load runs it says so, and its heartbeat keeps it from being called stalled."""
    table = create_table(name=fresh(), items=[{"pk": {"S": f"k{i}"}, "pad": {"S": "p" * 200}} for i in range(1000)])
    assert_exit(podyn(ddb_server, pg_url, "-s", "-d", "-t", table))
    reload = ("-s", "-d", "--reload", "-m", "jsonb", "-n", "1", "--segments", "4", "-r", "1")
    service = services(pg_url, table, *reload)
    segments_part_done(pg_url, table)
    with connect(pg_url) as conn:  # as if the last heartbeat were old: a running load refreshes it within 5 s
        conn.execute(
            "UPDATE podyn.tables SET heartbeat_at = now() - interval '1 minute' WHERE target_table = %s", (table,)
        )
    deadline = time.monotonic() + 15
    while True:
        status = podyn(ddb_server, pg_url, "--status", "--json", "-t", table)
        shown = json.loads(status.stdout)["tables"][0]
        if shown["state"] == "loading":
            break
        assert time.monotonic() < deadline, shown
        time.sleep(0.5)
    assert status.returncode == 0 and service.process.poll() is None
    verify = podyn(ddb_server, pg_url, "--verify", "-t", table)
    assert verify.returncode == 3 and "has not finished" in verify.stdout, verify.stdout
    service.stop(signal.SIGKILL)
    status = podyn(ddb_server, pg_url, "--status", "--json", "-t", table)
    shown = json.loads(status.stdout)["tables"][0]
    assert (shown["state"], shown["stored_state"], status.returncode) == ("not running", "loading", 3), shown
    assert_exit(podyn(ddb_server, pg_url, "-s", "-d", "-t", table))  # resumes, in the new mode
    assert table_differences(ddb, pg_url, table) == []
    with connect(pg_url) as conn:
        mode = conn.execute("SELECT conversion_mode FROM podyn.tables WHERE target_table = %s", (table,)).fetchone()
    assert mode == ("jsonb",)
    assert status_state(ddb_server, pg_url, table) == "loaded"


def status_state(ddb_server: Any, url: str, table: str) -> str:
    status = podyn(ddb_server, url, "--status", "--json", "-t", table)
    state: str = json.loads(status.stdout)["tables"][0]["state"]
    return state


@pytest.mark.parametrize("mode", ["columns", "jsonb"])
def test_status_does_not_call_a_table_loaded_whose_column_was_dropped(
    ddb_server: Any, ddb: Any, pg_url: str, create_table: Any, mode: str
) -> None:
    """The next run refuses such a table (its values are gone: --reload); --status said 'loaded', exit 0."""
    table = create_table(name=fresh(), items=[{"pk": {"S": "a"}, 'o"dd %s n': {"S": "x"}}])
    assert_exit(podyn(ddb_server, pg_url, "-s", "-d", "-t", table, "-m", mode))
    dropped = 'o"dd %s n' if mode == "columns" else "data"
    with connect(pg_url) as conn:
        conn.execute(sql.SQL("ALTER TABLE {} DROP COLUMN {}").format(sql.Identifier(table), sql.Identifier(dropped)))
    status = podyn(ddb_server, pg_url, "--status", "--json", "-t", table)
    shown = json.loads(status.stdout)["tables"][0]
    assert (shown["state"], shown["stored_state"], status.returncode) == ("columns missing", "loaded", 3), shown
    assert shown["missing_columns"] == [dropped]
    text = podyn(ddb_server, pg_url, "--status", "-t", table)
    assert f"columns dropped outside podyn: {dropped}" in text.stdout, text.stdout
    assert_exit(podyn(ddb_server, pg_url, "-s", "-d", "--reload", "-t", table))
    assert status_state(ddb_server, pg_url, table) == "loaded"
    assert table_differences(ddb, pg_url, table) == []
