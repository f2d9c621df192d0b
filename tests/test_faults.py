"""Faults against the real services: PostgreSQL killed, connections dropped, locks held, DynamoDB throttling, the
source table or its stream gone, PostgreSQL out of disk. Each test runs the real podyn (a subprocess, or the library
in-process where a setting must be shortened) against DynamoDB Local and a real PostgreSQL, and checks the outcome
with the independent oracle (tests/oracle.py).

Where the fault cannot be produced for real here, it is made at the boundary and the test says so: throttling comes
from the HTTP proxy in front of DynamoDB Local (tests/proxy.py), a full disk from a trigger that raises SQLSTATE
53100 (disk_full), the error PostgreSQL raises when it cannot extend a file.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest
from helpers import (
    REPO_ROOT,
    STREAM,
    Service,
    add_audit,
    assert_counters_strictly_increase,
    increment,
    podyn,
    wait_equal,
    wait_for,
    wait_for_state,
)
from oracle import connect, table_differences
from psycopg import sql

import podyn_py.replicate
from podyn_py.config import AwsSettings, Config
from podyn_py.demo_services import LocalPostgres
from podyn_py.replicate import RunSummary, replicate
from podyn_py.target.postgres import REPLICATION_LOCK, PostgresTarget, lock_key_oids, table_lock_key


def short(prefix: str) -> str:
    """A table name that fits PostgreSQL's 63 bytes, so the target table has the same name."""
    return f"{prefix}_{os.urandom(4).hex()}"


def exit_code(service: Service, timeout: float) -> int:
    """Wait for a service to exit by itself; fail with its log if it does not."""
    try:
        return service.process.wait(timeout)
    except subprocess.TimeoutExpired:
        pytest.fail(f"podyn still running after {timeout} s:\n{service.text()[-4000:]}")


def table_row(url: str, table: str) -> dict[str, Any]:
    with connect(url) as conn:
        cur = conn.execute("SELECT * FROM podyn.tables WHERE source_table = %s", (table,))
        names = [d.name for d in cur.description or []]
        row = cur.fetchone()
    assert row is not None, f"{table} not in podyn.tables"
    return dict(zip(names, row, strict=True))


def checkpoints(url: str, table: str) -> list[tuple[str, str | None, int]]:
    with connect(url) as conn:
        return [
            (r[0], r[1], int(r[2]))
            for r in conn.execute(
                "SELECT shard_id, sequence_number, records_applied FROM podyn.shards WHERE target_table = %s"
                " ORDER BY shard_id",
                (table,),
            )
        ]


def add_disk_full_trigger(url: str, table: str, *, from_rows: int = 0) -> None:
    """Simulate PostgreSQL out of disk at the boundary: a BEFORE trigger raising SQLSTATE 53100 (disk_full), the
    error PostgreSQL gives when it cannot extend a file, once the table holds ``from_rows`` rows."""
    with connect(url) as conn:
        conn.execute(
            sql.SQL(
                """CREATE FUNCTION test_disk_full() RETURNS trigger LANGUAGE plpgsql AS $$
                   DECLARE n bigint;
                   BEGIN
                     EXECUTE format('SELECT count(*) FROM %I.%I', TG_TABLE_SCHEMA, TG_TABLE_NAME) INTO n;
                     IF n >= TG_ARGV[0]::bigint THEN
                       RAISE EXCEPTION 'could not extend file "base/16384/16385": No space left on device'
                         USING ERRCODE = 'disk_full';
                     END IF;
                     RETURN CASE WHEN TG_OP = 'DELETE' THEN OLD ELSE NEW END;
                   END $$;
                   CREATE TRIGGER test_disk_full BEFORE INSERT OR UPDATE OR DELETE ON {} FOR EACH ROW
                   EXECUTE FUNCTION test_disk_full({});"""
            ).format(sql.Identifier(table), sql.Literal(str(from_rows)))
        )


def drop_disk_full_trigger(url: str, table: str) -> None:
    with connect(url) as conn:
        conn.execute(sql.SQL("DROP TRIGGER test_disk_full ON {}").format(sql.Identifier(table)))


def count_rows(url: str, table: str) -> int:
    with connect(url) as conn:
        row = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(table))).fetchone()
    assert row is not None
    return int(row[0])


# -- PostgreSQL ------------------------------------------------------------------------------------------------------


def test_postgres_killed_and_restarted_mid_load_the_load_finishes_by_itself(
    ddb_server: Any, ddb: Any, create_table: Any, tmp_path: Path
) -> None:
    count = 3000
    table = create_table(items=[{"pk": {"S": f"k{i:04d}"}, "pad": {"S": "x" * 1000}} for i in range(count)])
    # A PostgreSQL of its own: killing the shared one would disturb other tests.
    with LocalPostgres() as pg:
        url = pg.create_database("faults")
        log = tmp_path / "load.log"
        with log.open("w") as err:
            command = [sys.executable, "-m", "podyn_py", "--endpoint-url", ddb_server.endpoint_url, "-u", url]
            command += ["--no-progress", "-s", "-d", "-t", table, "--scan-rate", "150", "-n", "2"]
            process = subprocess.Popen(command, cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=err)
        try:
            committed = 0
            deadline = time.monotonic() + 30
            while committed == 0:
                assert process.poll() is None, log.read_text()
                assert time.monotonic() < deadline, f"no page committed in 30 s:\n{log.read_text()}"
                time.sleep(0.1)
                try:
                    with psycopg.connect(url) as conn:
                        row = conn.execute("SELECT coalesce(sum(items_loaded), 0) FROM podyn.segments").fetchone()
                        committed = int(row[0]) if row else 0
                except psycopg.errors.UndefinedTable:
                    continue
            assert committed < count, "the load finished before PostgreSQL could be killed"
            pg.kill()
            time.sleep(2)
            pg.restart()
            code = process.wait(90)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
        text = log.read_text()
        assert code == 0, text[-4000:]
        assert "reconnecting" in text, "PostgreSQL was killed but podyn never noticed"
        assert table_differences(ddb, url, table) == []
        loaded = table_row(url, table)
        assert loaded["state"] == "loaded" and loaded["items_loaded"] == count, "pages counted twice or lost"


def test_dropped_connections_mid_stream_are_reopened(
    ddb_server: Any, ddb: Any, pg_url: str, create_table: Any, services: Any
) -> None:
    table = create_table(
        stream_view_type=STREAM, items=[{"pk": {"S": f"k{i}"}, "counter": {"N": "0"}} for i in range(5)]
    )
    service = services(pg_url, table, "-s", "-d", "-c")
    wait_for_state(pg_url, table, "live", service=service)
    for i in range(5):
        increment(ddb, table, f"k{i}")
    wait_equal(ddb, pg_url, table)
    # One lock once the load has returned: its replication, started beside the load, may go live before that.
    wait_for(lambda: replication_locks(pg_url, table) == 1, "one session holding the table's lock", service=service)
    with connect(pg_url) as conn:
        killed = conn.execute(
            "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity"
            " WHERE application_name = 'podyn' AND datname = current_database()"
        ).fetchone()
    assert killed is not None and killed[0] >= 1, "no podyn connection to drop"
    for i in range(5):
        increment(ddb, table, f"k{i}")
    ddb.put_item(TableName=table, Item={"pk": {"S": "after-drop"}, "counter": {"N": "1"}, "fresh": {"BOOL": True}})
    wait_equal(ddb, pg_url, table)
    assert service.process.poll() is None, f"the service died with its connection:\n{service.text()}"
    assert table_row(pg_url, table)["state"] == "live"
    # The table is guarded against a second process by a session advisory lock (README, "another podyn process
    # replicates the same table"). Dropping the connection that held it drops the lock: the service must take it
    # again, or a second process would not stand by.
    deadline = time.monotonic() + 5
    while replication_locks(pg_url, table) == 0:
        assert time.monotonic() < deadline, (
            "after its connections were dropped the service replicates without holding the table's advisory lock"
        )
        time.sleep(0.5)
    assert service.stop() == 0


def replication_locks(url: str, table: str) -> int:
    """How many podyn sessions of this database hold the table's replication advisory lock."""
    target = table_row(url, table)
    classid, objid = lock_key_oids(table_lock_key(REPLICATION_LOCK, target["target_schema"], target["target_table"]))
    with connect(url) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid"
            " WHERE l.locktype = 'advisory' AND l.granted AND a.application_name = 'podyn'"
            " AND a.datname = current_database() AND l.objsubid = 1 AND l.classid = %s::oid AND l.objid = %s::oid",
            (classid, objid),
        ).fetchone()
    return int(row[0]) if row else 0


def test_ddl_waiting_for_a_table_lock_retries_and_applies_once_released(
    ddb_server: Any,
    ddb: Any,
    pg_url: str,
    create_table: Any,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # In-process, with the DDL lock timeout cut from 10 s to 0.3 s so the test does not wait 10 s per attempt.
    monkeypatch.setattr(
        podyn_py.replicate,
        "make_target",
        lambda config, out, stop=None: PostgresTarget(config.postgres, lock_timeout_ms=300, stop=stop),
    )
    table = create_table(
        name=short("locked"),
        stream_view_type=STREAM,
        items=[{"pk": {"S": f"k{i}"}, "v": {"N": str(i)}} for i in range(3)],
    )
    config = Config(
        tables=(table,),
        postgres=pg_url,
        schema=True,
        data=True,
        changes=True,
        connections=1,
        aws=AwsSettings(endpoint_url=ddb_server.endpoint_url),
    )
    stop = threading.Event()
    summaries: list[RunSummary] = []
    thread = threading.Thread(target=lambda: summaries.append(replicate(config, stop=stop)), daemon=True)
    caplog.set_level(logging.INFO)
    thread.start()
    try:
        wait_for_state(pg_url, table, "live")
        with psycopg.connect(pg_url) as locker:
            locker.execute(sql.SQL("LOCK TABLE {} IN ACCESS EXCLUSIVE MODE").format(sql.Identifier(table)))
            ddb.put_item(TableName=table, Item={"pk": {"S": "new"}, "fresh": {"S": "a new column"}})
            ddb.update_item(
                TableName=table,
                Key={"pk": {"S": "k1"}},
                UpdateExpression="SET #o = :o",
                ExpressionAttributeNames={"#o": "other"},
                ExpressionAttributeValues={":o": {"L": [{"N": "1"}]}},
            )
            deadline = time.monotonic() + 20
            while sum("lock timeout" in r.getMessage() and "retrying" in r.getMessage() for r in caplog.records) < 2:
                assert thread.is_alive(), "replication stopped while the table was locked"
                assert time.monotonic() < deadline, "podyn never logged that it waits for the lock and retries"
                time.sleep(0.1)
            assert thread.is_alive()
            locker.rollback()  # releases the lock
        wait_equal(ddb, pg_url, table)
        with connect(pg_url) as conn:
            columns = {
                r[0] for r in conn.execute("SELECT column_name FROM podyn.columns WHERE target_table = %s", (table,))
            }
        assert {"fresh", "other"} <= columns
        assert thread.is_alive()
    finally:
        stop.set()
        thread.join(30)
    assert not thread.is_alive() and summaries and summaries[0].ok, summaries


def test_postgres_out_of_disk_mid_load_stops_the_table_and_a_rerun_resumes(
    ddb_server: Any, ddb: Any, pg_url: str, create_table: Any
) -> None:
    count = 40
    # 100 KB items: DynamoDB's 1 MB pages hold about ten, so the load has several pages in one segment.
    table = create_table(
        name=short("diskfull"), items=[{"pk": {"S": f"k{i:02d}"}, "pad": {"S": "x" * 100_000}} for i in range(count)]
    )
    endpoint = ddb_server.endpoint_url
    result = podyn(endpoint, pg_url, "-s", "-t", table)
    assert result.returncode == 0, result.stderr
    add_disk_full_trigger(pg_url, table, from_rows=15)
    failed = podyn(endpoint, pg_url, "-d", "-t", table, "-n", "1", "--segments", "1")
    assert failed.returncode == 3, failed.stderr
    assert f"table {table} stopped" in failed.stderr and "No space left on device" in failed.stderr
    assert "Traceback" not in failed.stderr
    row = table_row(pg_url, table)
    assert row["state"] == "stopped" and "No space left on device" in row["last_error"]
    kept = count_rows(pg_url, table)
    assert 0 < kept < count, f"expected the pages before the full disk to be committed, found {kept} rows"
    with connect(pg_url) as conn:
        segment = conn.execute("SELECT items_loaded, done FROM podyn.segments WHERE target_table = %s", (table,))
        assert segment.fetchall() == [(kept, False)], "the segment's position does not match its committed rows"

    drop_disk_full_trigger(pg_url, table)  # disk space freed
    resumed = podyn(endpoint, pg_url, "-d", "-t", table, "-n", "1")
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming an interrupted load" in resumed.stderr
    assert table_differences(ddb, pg_url, table) == []
    row = table_row(pg_url, table)
    assert row["state"] == "loaded" and row["items_loaded"] == count and row["last_error"] is None


def test_postgres_out_of_disk_during_changes_stops_with_the_checkpoint_kept(
    ddb_server: Any, ddb: Any, pg_url: str, create_table: Any, services: Any
) -> None:
    keys = [f"k{i}" for i in range(5)]
    table = create_table(
        name=short("diskfull"), stream_view_type=STREAM, items=[{"pk": {"S": k}, "counter": {"N": "0"}} for k in keys]
    )
    first = services(pg_url, table, "-s", "-d", "-c")
    wait_for_state(pg_url, table, "live", service=first)
    for key in keys:
        increment(ddb, table, key)
    wait_equal(ddb, pg_url, table)
    before = checkpoints(pg_url, table)
    assert before and all(sequence is not None for _, sequence, _ in before)

    add_audit(pg_url, table)
    add_disk_full_trigger(pg_url, table)
    for key in keys:
        increment(ddb, table, key)
    assert exit_code(first, 30) == 3, first.text()
    assert f"table {table} stopped" in first.text() and "No space left on device" in first.text()
    row = table_row(pg_url, table)
    assert row["state"] == "stopped" and "No space left on device" in row["last_error"]
    assert checkpoints(pg_url, table) == before, "the checkpoint moved past a batch that was not applied"

    drop_disk_full_trigger(pg_url, table)  # disk space freed
    second = services(pg_url, table, "-c")
    wait_equal(ddb, pg_url, table)  # the batch that failed, applied now
    for key in keys:
        increment(ddb, table, key)
    wait_equal(ddb, pg_url, table)
    # Each key's counter went 1 → 2 → 3 in DynamoDB: exactly one row version per write reached PostgreSQL.
    assert assert_counters_strictly_increase(pg_url) == 2 * len(keys)
    assert table_row(pg_url, table)["last_error"] is None
    assert second.stop() == 0


def test_unreachable_postgres_is_an_error_before_any_table(ddb_server: Any, pg_url: str, create_table: Any) -> None:
    """README: exit 1 for "an error before any table ran (settings, connections)"; not ten minutes of retries."""
    table = create_table(items=[{"pk": {"S": "a"}}])
    wrong_port = pg_url.rsplit(":", 1)[0] + ":1/db"
    wrong_database = pg_url.rsplit("/", 1)[0] + "/no_such_database"
    processes = {
        url: subprocess.Popen(
            [sys.executable, "-m", "podyn_py", "--endpoint-url", ddb_server.endpoint_url, "--no-progress"]
            + ["-u", url, "-s", "-d", "-t", table],
            cwd=REPO_ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for url in (wrong_port, wrong_database)
    }
    try:
        deadline = time.monotonic() + 15
        for url, process in processes.items():
            try:
                process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                _, err = process.communicate()
                pytest.fail(f"{url}: still retrying after 15 s instead of exiting 1:\n{err[-1500:]}")
            err = process.communicate()[1]
            assert process.returncode == 1, err
            assert "cannot connect to PostgreSQL" in err and "Traceback" not in err
    finally:
        for process in processes.values():
            if process.poll() is None:
                process.kill()
                process.communicate()


def test_sigterm_while_postgres_is_down_stops_within_seconds(
    ddb_server: Any, ddb: Any, create_table: Any, services: Any
) -> None:
    """README: SIGTERM → exit 0 within a few seconds; also while PostgreSQL is down and podyn waits to reconnect."""
    table = create_table(stream_view_type=STREAM, items=[{"pk": {"S": "k"}, "counter": {"N": "0"}}])
    with LocalPostgres() as pg:
        url = pg.create_database("down")
        service = services(url, table, "-s", "-d", "-c")
        wait_for_state(url, table, "live", service=service)
        pg.kill()
        increment(ddb, table, "k")  # a batch that cannot be applied now
        service.wait_for_log("retrying", timeout=20)
        time.sleep(1)
        service.process.send_signal(signal.SIGTERM)
        code = exit_code(service, 10)
        assert code == 0, service.text()


# -- DynamoDB --------------------------------------------------------------------------------------------------------


def test_throttling_storm_slows_load_and_replication_but_both_complete(
    ddb: Any, pg_url: str, create_table: Any, throttling_proxy: Any, services: Any
) -> None:
    """Throttling from the proxy in front of DynamoDB Local (DynamoDB Local never throttles)."""
    table = create_table(
        stream_view_type=STREAM, items=[{"pk": {"S": f"k{i}"}, "counter": {"N": "0"}} for i in range(50)]
    )
    proxy = throttling_proxy
    # --max-attempts 2: botocore gives up after 2 tries, so podyn's own waiting is what carries the load through.
    proxy.throttle("Scan", 6)
    proxy.throttle("DescribeStream", 4)
    proxy.throttle("GetShardIterator", 4)
    service = services(pg_url, table, "-s", "-d", "-c", "-n", "1", "--max-attempts", "2", endpoint=proxy.endpoint_url)
    wait_for_state(pg_url, table, "live", service=service, timeout=60)
    assert "throttled by DynamoDB" in service.text(), "podyn's own wait for throttled scans was not exercised"
    proxy.throttle("GetRecords", 8)
    for i in range(10):
        increment(ddb, table, f"k{i}")
    ddb.put_item(TableName=table, Item={"pk": {"S": "new"}, "counter": {"N": "1"}})
    wait_equal(ddb, pg_url, table, timeout=60)
    for operation in ("Scan", "DescribeStream", "GetShardIterator", "GetRecords"):
        assert proxy.pending_faults(operation) == 0, f"{operation}: injected throttles never reached"
    assert service.process.poll() is None
    assert service.stop() == 0
    # "live" means the stream has nothing newer (README): the 50 puts that created the table are in the stream
    # and are replayed (they are newer than the load's start minus its margin), so they must be read first. A
    # throttled, slow first read is not an empty stream.
    lines = service.text().splitlines()
    live = next(i for i, line in enumerate(lines) if f"table {table}: live" in line)
    applied = [i for i, line in enumerate(lines) if f"table {table}: applied" in line]
    assert applied and applied[0] < live, "declared live before the stream was read:\n" + "\n".join(lines[: live + 1])


def test_table_deleted_or_stream_disabled_stops_that_table_telling_to_reload(
    ddb_server: Any, ddb: Any, pg_url: str, create_table: Any, services: Any
) -> None:
    """DynamoDB Local, as checked: after DeleteTable or disabling the stream, DescribeStream still answers, with
    StreamStatus DISABLED and every shard closed, and GetRecords reads to the end of the shard. So podyn finds the
    stream ended, as it would on AWS once the last records are read."""
    deleted = create_table(name=short("deleted"), stream_view_type=STREAM, items=[{"pk": {"S": "a"}}])
    disabled = create_table(name=short("disabled"), stream_view_type=STREAM, items=[{"pk": {"S": "a"}}])
    service = services(pg_url, f"{deleted},{disabled}", "-s", "-d", "-c")
    wait_for_state(pg_url, deleted, "live", service=service)
    wait_for_state(pg_url, disabled, "live", service=service)
    ddb.put_item(TableName=deleted, Item={"pk": {"S": "b"}})
    ddb.put_item(TableName=disabled, Item={"pk": {"S": "b"}})
    wait_equal(ddb, pg_url, deleted)
    wait_equal(ddb, pg_url, disabled)
    ddb.delete_table(TableName=deleted)
    ddb.update_table(TableName=disabled, StreamSpecification={"StreamEnabled": False})
    assert exit_code(service, 40) == 3
    text = service.text()
    assert "Traceback" not in text
    for table in (deleted, disabled):
        stopped = [line for line in text.splitlines() if line.startswith(f"podyn: table {table} stopped")]
        assert stopped and "--data" in stopped[0], f"{table}: no error telling to re-run with --data:\n{text}"
        row = table_row(pg_url, table)
        assert row["state"] == "stopped" and "--data" in row["last_error"], row
