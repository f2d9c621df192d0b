"""Advisory-lock keys that cannot collide, and a ``--status`` that says ``live`` only while a process replicates.

Issue 10, cases 4 and 7. The lock key of a table was a 32-bit crc32 of ``schema.table``: ``orders_5088719`` and
``orders_20002006`` shared it in ``public``, so one of them was never replicated while podyn stood by, exit 0. And
``--status`` read ``live`` from podyn.tables after the service had been killed. Everything runs the real podyn (a
subprocess) against DynamoDB Local and PostgreSQL; the one situation that 64-bit keys make practically impossible, a
key held for another table, is made at the boundary: a test session takes the key and records itself as the other
table's holder, as a podyn process would.
"""

from __future__ import annotations

import os
import signal
import time
import zlib
from typing import Any

import psycopg
from helpers import STREAM, podyn, status_with_exit, wait_equal, wait_for_state, wait_for_status
from oracle import connect

from podyn_py.target.state import TableState

# The tests that need podyn's new names import them inside, so that the others run (and fail by behaviour) on the
# code before this change.

#: Two names whose crc32 keys collided in schema public (checked below, so the test says why these names).
COLLIDING = ("orders_5088719", "orders_20002006")


def short(prefix: str) -> str:
    return f"{prefix}_{os.urandom(4).hex()}"


def put_items(ddb: Any, table: str, count: int, prefix: str = "new") -> None:
    for i in range(count):
        ddb.put_item(TableName=table, Item={"pk": {"S": f"{prefix}{i}"}, "v": {"N": str(i)}})


def test_the_two_names_shared_a_crc32_key_and_have_distinct_lock_keys() -> None:
    from podyn_py.target.postgres import DDL_LOCK, REPLICATION_LOCK, table_lock_key

    first, second = (zlib.crc32(f"public.{name}".encode()) for name in COLLIDING)
    assert first == second, "these names were chosen because their crc32 lock keys collide"
    keys = {
        table_lock_key(namespace, "public", name) for namespace in (DDL_LOCK, REPLICATION_LOCK) for name in COLLIDING
    }
    assert len(keys) == 4, "two tables, or the DDL and replication locks of one table, share a key"
    assert all(-(2**63) <= key < 2**63 for key in keys)
    # NUL separates the parts: schema "a" with table "b.c" is not schema "a.b" with table "c".
    assert table_lock_key(REPLICATION_LOCK, "a", "b.c") != table_lock_key(REPLICATION_LOCK, "a.b", "c")


def test_two_tables_whose_crc32_keys_collided_both_replicate(
    ddb_server: Any, ddb: Any, pg_url: str, create_table: Any, services: Any
) -> None:
    for name in COLLIDING:
        create_table(name=name, stream_view_type=STREAM, items=[{"pk": {"S": f"k{i}"}} for i in range(3)])
    service = services(pg_url, ",".join(COLLIDING), "-s", "-d", "-c")
    for name in COLLIDING:
        wait_for_state(pg_url, name, "live", service=service)
    for name in COLLIDING:
        put_items(ddb, name, 5)
    for name in COLLIDING:
        wait_equal(ddb, pg_url, name)
    assert "standing by" not in service.text() and "another podyn process" not in service.text(), service.text()
    for name in COLLIDING:
        shown, code = status_with_exit(ddb_server, pg_url, name)
        assert shown["state"] == "live" and code == 0, shown
    assert service.stop() == 0, service.text()


def test_status_of_a_killed_service_is_not_running_and_fails(
    ddb_server: Any, ddb: Any, pg_url: str, create_table: Any, services: Any
) -> None:
    table = create_table(name=short("killed"), stream_view_type=STREAM, items=[{"pk": {"S": "k0"}}])
    service = services(pg_url, table, "-s", "-d", "-c")
    wait_for_state(pg_url, table, "live", service=service)
    shown, code = status_with_exit(ddb_server, pg_url, table)
    assert shown["state"] == "live" and code == 0, shown
    running = podyn(ddb_server, pg_url, "--status", "-t", table)
    assert running.returncode == 0 and f"{table} → public.{table}: live" in running.stdout, running.stdout

    service.stop(signal.SIGKILL)
    put_items(ddb, table, 100)
    shown, code = wait_for_status(ddb_server, pg_url, table, "not running", timeout=15)
    assert code == 3 and shown["stored_state"] == "live" and shown["last_seen"] is not None, shown
    assert shown["holder"].endswith(f":{service.process.pid}"), shown  # who it was, still recorded
    text = podyn(ddb_server, pg_url, "--status", "-t", table)
    assert text.returncode == 3, text.stdout + text.stderr
    assert f"{table} → public.{table}: not running (last seen " in text.stdout, text.stdout
    assert f"table {table} is not running" in text.stderr


def test_status_of_a_service_stopped_with_sigterm_is_not_running(
    ddb_server: Any, ddb: Any, pg_url: str, create_table: Any, services: Any
) -> None:
    table = create_table(name=short("stopped"), stream_view_type=STREAM, items=[{"pk": {"S": "k0"}}])
    service = services(pg_url, table, "-s", "-d", "-c")
    wait_for_state(pg_url, table, "live", service=service)
    shown, code = status_with_exit(ddb_server, pg_url, table)
    assert shown["state"] == "live" and code == 0, shown
    assert service.stop() == 0, service.text()
    shown, code = wait_for_status(ddb_server, pg_url, table, "not running", timeout=5)
    assert code == 3 and shown["stored_state"] == "live", shown


def test_a_service_that_holds_the_table_but_stopped_beating_is_stalled(
    ddb_server: Any, ddb: Any, pg_url: str, create_table: Any, services: Any
) -> None:
    # SIGSTOP freezes the process with its connections open: the lock stays held, the heartbeat (every 5 s) stops.
    from podyn_py.status import Activity, read_status

    table = create_table(name=short("frozen"), stream_view_type=STREAM, items=[{"pk": {"S": "k0"}}])
    service = services(pg_url, table, "-s", "-d", "-c")
    wait_for_state(pg_url, table, "live", service=service)
    service.process.send_signal(signal.SIGSTOP)
    deadline = time.monotonic() + 15
    while (shown := read_status(pg_url, (table,), stale_after_seconds=2.0).tables[0]).state is not Activity.STALLED:
        assert shown.state is TableState.LIVE, shown  # the lock is still held: never "not running"
        assert time.monotonic() < deadline, f"still {shown.state} 15 s after SIGSTOP"
        time.sleep(0.3)
    assert not read_status(pg_url, (table,), stale_after_seconds=2.0).ok
    service.process.send_signal(signal.SIGCONT)
    deadline = time.monotonic() + 10
    while read_status(pg_url, (table,), stale_after_seconds=2.0).tables[0].state is not TableState.LIVE:
        assert time.monotonic() < deadline, "the heartbeat did not resume after SIGCONT"
        time.sleep(0.2)
    assert service.stop() == 0, service.text()


def test_a_lock_key_held_for_another_table_is_a_loud_error_not_a_standby(
    ddb_server: Any, ddb: Any, pg_url: str, create_table: Any, services: Any
) -> None:
    # Made at the boundary: 64-bit keys do not collide in practice, so a test session holds `table`'s key and is
    # recorded as `other`'s holder, as a podyn process replicating `other` under a colliding key would be.
    from podyn_py.target.postgres import REPLICATION_LOCK, table_lock_key

    table = create_table(name=short("mine"), stream_view_type=STREAM, items=[{"pk": {"S": "k0"}}])
    other = create_table(name=short("other"), stream_view_type=STREAM, items=[{"pk": {"S": "k0"}}])
    loaded = podyn(ddb_server, pg_url, "-s", "-d", "-t", f"{table},{other}")
    assert loaded.returncode == 0, loaded.stderr
    with psycopg.connect(pg_url, autocommit=True) as squatter:
        squatter.execute("SELECT pg_advisory_lock(%s::bigint)", (table_lock_key(REPLICATION_LOCK, "public", table),))
        squatter.execute(
            "UPDATE podyn.tables SET holder = 'elsewhere:42', holder_pid = pg_backend_pid(), heartbeat_at = now()"
            " WHERE target_table = %s",
            (other,),
        )
        result = podyn(ddb_server, pg_url, "-c", "-t", table, timeout=60)
        assert result.returncode == 3, result.stderr
        assert "collide" in result.stderr and "standing by" not in result.stderr, result.stderr
        assert f"public.{table}" in result.stderr and f"public.{other}" in result.stderr, result.stderr
        assert "elsewhere:42" in result.stderr
        with connect(pg_url) as conn:
            row = conn.execute(
                "SELECT state, last_error FROM podyn.tables WHERE target_table = %s", (table,)
            ).fetchone()
        assert row is not None and row[0] == "stopped" and "collide" in row[1], row

        # The same lock held by the backend recorded as this table's holder is another podyn on it: stand by.
        squatter.execute(
            "UPDATE podyn.tables SET holder = 'elsewhere:42', holder_pid = pg_backend_pid(), heartbeat_at = now()"
            " WHERE target_table = %s",
            (table,),
        )
        standby = services(pg_url, table, "-c")
        standby.wait_for_log("standing by")
        assert "collide" not in standby.text(), standby.text()
        assert standby.stop() == 0, standby.text()
