"""``podyn --changes`` as a service against DynamoDB Local and PostgreSQL: the real CLI in a subprocess.

No change applied twice is proven with more than the final state: a trigger on the target table logs every row
version PostgreSQL receives, and each write to DynamoDB increments a counter attribute, so a change applied twice
(or out of order) shows as a counter that does not increase.
"""

from __future__ import annotations

import os
import random
import signal
import threading
import time
from typing import Any

import pytest
from helpers import (
    STREAM,
    add_audit,
    assert_counters_strictly_increase,
    assert_exit,
    audited_rows,
    increment,
    podyn,
    wait_equal,
    wait_for,
    wait_for_state,
)
from oracle import connect

from podyn_py.demo_services import LocalPostgres


def test_puts_updates_deletes_replicate_and_sigterm_is_clean(
    ddb_server: Any, ddb: Any, pg_url: str, create_table: Any, services: Any
) -> None:
    table = create_table(
        stream_view_type=STREAM, items=[{"pk": {"S": f"k{i}"}, "amount": {"N": str(i)}} for i in range(10)]
    )
    service = services(pg_url, table, "-s", "-d", "-c")
    wait_for_state(pg_url, table, "live", service=service)
    ddb.put_item(
        TableName=table, Item={"pk": {"S": "new"}, "amount": {"S": "ten"}, "flag": {"BOOL": True}}
    )  # type conflict, new attribute
    ddb.update_item(
        TableName=table,
        Key={"pk": {"S": "k1"}},
        UpdateExpression="REMOVE amount SET tags = :t",
        ExpressionAttributeValues={":t": {"SS": ["a", "b"]}},
    )
    ddb.update_item(
        TableName=table,
        Key={"pk": {"S": "k2"}},
        UpdateExpression="SET amount = :v",
        ExpressionAttributeValues={":v": {"N": "12345678901234567890123456789012345678"}},
    )
    ddb.delete_item(TableName=table, Key={"pk": {"S": "k3"}})
    ddb.put_item(TableName=table, Item={"pk": {"S": "k4"}, "blob": {"B": b"\x00\xff"}})  # replaced whole: amount gone
    wait_equal(ddb, pg_url, table)
    with connect(pg_url) as conn:
        state = conn.execute("SELECT state, changes_applied FROM podyn.tables").fetchone()
        columns = {r[0] for r in conn.execute("SELECT column_name FROM podyn.columns")}
    assert state is not None and state[0] == "live" and state[1] >= 15
    assert {"amount_text", "flag", "tags", "blob"} <= columns
    started = time.monotonic()
    assert service.stop(signal.SIGTERM) == 0
    assert time.monotonic() - started < 5
    assert "stopped on request" in service.text()


def test_data_and_changes_in_one_run_with_writes_during_the_scan(
    ddb_server: Any, ddb: Any, pg_url: str, create_table: Any, services: Any
) -> None:
    table = create_table(
        stream_view_type=STREAM,
        items=[{"pk": {"S": f"k{i:04d}"}, "pad": {"S": "x" * 1000}, "counter": {"N": "0"}} for i in range(3000)],
    )
    service = services(pg_url, table, "-s", "-d", "-c", "--scan-rate", "50", "-n", "2")
    wait_for_state(pg_url, table, "loading", service=service)
    rng = random.Random(7)
    writes = 0
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:  # while the (slowed) scan runs
        key = f"k{rng.randrange(3000):04d}"
        action = rng.random()
        if action < 0.6:
            increment(ddb, table, key)
        elif action < 0.8:
            ddb.delete_item(TableName=table, Key={"pk": {"S": key}})
        else:
            ddb.put_item(TableName=table, Item={"pk": {"S": f"new{writes}"}, "counter": {"N": "1"}})
        writes += 1
    with connect(pg_url) as conn:
        loading = conn.execute("SELECT state FROM podyn.tables").fetchone()
    assert loading == ("loading",), "the writes were meant to happen during the scan"
    wait_for_state(pg_url, table, "live", service=service, timeout=90)
    wait_equal(ddb, pg_url, table, timeout=60)
    assert service.stop() == 0


def test_kill_9_mid_stream_then_restart_applies_every_change_once(
    ddb_server: Any, ddb: Any, pg_url: str, create_table: Any, services: Any
) -> None:
    keys = [f"k{i}" for i in range(20)]
    table = create_table(
        name=f"kill9_{os.urandom(4).hex()}",
        stream_view_type=STREAM,
        items=[{"pk": {"S": k}, "counter": {"N": "0"}} for k in keys],
    )
    assert_exit(podyn(ddb_server, pg_url, "-s", "-d", "-t", table))
    add_audit(pg_url, table)
    stop_writing = threading.Event()

    def writer() -> None:
        rng = random.Random(1)
        while not stop_writing.is_set():
            increment(ddb, table, rng.choice(keys))

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        first = services(pg_url, table, "-c")
        wait_for(lambda: audited_rows(pg_url) >= 20, "20 changes applied by the first process", service=first)
        assert first.stop(signal.SIGKILL) == -signal.SIGKILL
        time.sleep(0.5)  # writes go on while no process replicates
        applied_before = audited_rows(pg_url)
        second = services(pg_url, table, "-c")
        wait_for(
            lambda: audited_rows(pg_url) >= applied_before + 20, "20 changes applied by the second", service=second
        )
    finally:
        stop_writing.set()
        thread.join()
    wait_equal(ddb, pg_url, table)
    assert assert_counters_strictly_increase(pg_url) > 20
    assert second.stop() == 0


def test_postgres_restart_mid_stream_is_survived(ddb_server: Any, ddb: Any, create_table: Any, services: Any) -> None:
    # A PostgreSQL of its own: killing the shared one would disturb other tests.
    with LocalPostgres() as pg:
        url = pg.create_database("restart")
        table = create_table(
            stream_view_type=STREAM, items=[{"pk": {"S": f"k{i}"}, "counter": {"N": "0"}} for i in range(5)]
        )
        service = services(url, table, "-s", "-d", "-c")
        wait_for_state(url, table, "live", service=service)
        for i in range(5):
            increment(ddb, table, f"k{i}")
        wait_equal(ddb, url, table)
        pg.kill()
        for i in range(5):
            increment(ddb, table, f"k{i}")
        ddb.put_item(TableName=table, Item={"pk": {"S": "during-outage"}, "counter": {"N": "1"}})
        time.sleep(2)
        assert service.process.poll() is None, "the service died with PostgreSQL"
        pg.restart()
        wait_equal(ddb, url, table, timeout=60)
        assert "retrying" in service.text()
        assert service.stop() == 0


@pytest.mark.parametrize("path", ["--fast-path", "--no-fast-path"])
def test_keys_only_stream_reads_current_items(
    ddb_server: Any, ddb: Any, pg_url: str, create_table: Any, services: Any, path: str
) -> None:
    table = create_table(
        stream_view_type="KEYS_ONLY", items=[{"pk": {"S": f"k{i}"}, "v": {"N": str(i)}} for i in range(5)]
    )
    service = services(pg_url, table, "-s", "-d", "-c", path)
    wait_for_state(pg_url, table, "live", service=service)
    ddb.put_item(TableName=table, Item={"pk": {"S": "new"}, "v": {"S": "text"}})
    ddb.update_item(
        TableName=table,
        Key={"pk": {"S": "k1"}},
        UpdateExpression="SET v = :v",
        ExpressionAttributeValues={":v": {"N": "100"}},
    )
    ddb.delete_item(TableName=table, Key={"pk": {"S": "k2"}})
    ddb.put_item(TableName=table, Item={"pk": {"S": "gone"}})
    ddb.delete_item(TableName=table, Key={"pk": {"S": "gone"}})
    wait_equal(ddb, pg_url, table)
    assert service.stop() == 0


def test_two_processes_on_one_table_do_not_double_apply(
    ddb_server: Any, ddb: Any, pg_url: str, create_table: Any, services: Any
) -> None:
    keys = [f"k{i}" for i in range(10)]
    table = create_table(
        name=f"twoproc_{os.urandom(4).hex()}",
        stream_view_type=STREAM,
        items=[{"pk": {"S": k}, "counter": {"N": "0"}} for k in keys],
    )
    assert_exit(podyn(ddb_server, pg_url, "-s", "-d", "-t", table))
    add_audit(pg_url, table)
    first = services(pg_url, table, "-c", "--lease-seconds", "3")
    wait_for_state(pg_url, table, "live", service=first)
    second = services(pg_url, table, "-c", "--lease-seconds", "3")
    wait_for(lambda: "second" if len(lease_owners(pg_url, "changes")) == 2 else None, "the second worker joined")
    for round_ in range(5):
        for key in keys:
            increment(ddb, table, key)
        if round_ == 2:
            assert first.stop(signal.SIGKILL) == -signal.SIGKILL  # the second takes the shard once its lease expires
    wait_equal(ddb, pg_url, table, timeout=60)
    assert assert_counters_strictly_increase(pg_url) >= 10
    assert "reading shard" in second.text()  # it took the shard over
    assert second.stop() == 0


def lease_owners(url: str, role: str) -> list[str]:
    """The workers recorded in podyn.workers for a role."""
    with connect(url) as conn:
        return [r[0] for r in conn.execute("SELECT worker FROM podyn.workers WHERE role = %s", (role,)).fetchall()]


def test_changes_on_a_table_without_stream_is_a_clear_error(ddb_server: Any, pg_url: str, create_table: Any) -> None:
    table = create_table(items=[{"pk": {"S": "a"}}])
    result = podyn(ddb_server, pg_url, "-s", "-c", "-t", table)
    assert result.returncode == 3
    assert "has no stream" in result.stderr and table in result.stderr


@pytest.mark.parametrize("path", ["--fast-path", "--no-fast-path"])
def test_binary_keys_replicate_on_both_paths(
    ddb_server: Any, ddb: Any, pg_url: str, create_table: Any, services: Any, path: str
) -> None:
    # Binary is bytes on boto3's path and base64 text on the fast path: keys must match either way (KEYS_ONLY
    # refetches by key; a batch keeps each key's last change).
    table = create_table(
        key=(("id", "B"),), stream_view_type="KEYS_ONLY", items=[{"id": {"B": bytes([i, 0])}} for i in range(3)]
    )
    service = services(pg_url, table, "-s", "-d", "-c", path)
    wait_for_state(pg_url, table, "live", service=service)
    for i in range(3):
        ddb.put_item(TableName=table, Item={"id": {"B": bytes([i, 0])}, "v": {"N": str(i)}})
        ddb.put_item(TableName=table, Item={"id": {"B": bytes([i, 0])}, "v": {"N": str(i + 10)}})
    ddb.delete_item(TableName=table, Key={"id": {"B": bytes([0, 0])}})
    wait_equal(ddb, pg_url, table)
    assert service.stop() == 0
