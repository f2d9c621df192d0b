"""The spool (issue 13) end to end, through the CLI, with DynamoDB Local and PostgreSQL.

A slow load (``--scan-rate``) with puts, updates and deletes throughout: its stream is captured into the spool from
the load's start, the spool is applied once the load is done, and replication goes on; kill -9 mid-load and during
the spool's apply lose and double nothing. A small table goes live while a slow one still loads. ``--data`` alone
captures too, and a later ``--changes`` applies the spool first.
"""

from __future__ import annotations

import random
import signal
import threading
import time
from typing import Any

from helpers import STREAM, assert_exit, fresh, podyn, status_record, wait_equal, wait_for, wait_for_state
from oracle import connect
from psycopg import sql

PAD = "x" * 1000


def loaded_items(count: int, prefix: str = "k") -> list[dict[str, Any]]:
    return [{"pk": {"S": f"{prefix}{i:04d}"}, "pad": {"S": PAD}, "counter": {"N": "0"}} for i in range(count)]


class Writer:
    """Puts, updates and deletes on a DynamoDB table from a thread of its own, at about ``rate`` a second."""

    def __init__(self, ddb: Any, table: str, keys: int, rate: float = 30.0, seed: int = 13) -> None:
        self.ddb = ddb
        self.table = table
        self.keys = [f"k{i:04d}" for i in range(keys)]
        self.rate = rate
        self.rng = random.Random(seed)
        self.writes = 0
        self.error: BaseException | None = None
        self._halt = threading.Event()
        self._thread = threading.Thread(target=self._run, name="writer", daemon=True)

    def start(self) -> Writer:
        self._thread.start()
        return self

    def _run(self) -> None:
        try:
            while not self._halt.wait(1.0 / self.rate):
                self.write()
        except BaseException as exc:  # seen by stop()
            self.error = exc

    def write(self) -> None:
        key = self.rng.choice(self.keys)
        action = self.rng.random()
        if action < 0.55:
            self.ddb.update_item(
                TableName=self.table,
                Key={"pk": {"S": key}},
                UpdateExpression="ADD #c :one SET touched = :n",
                ExpressionAttributeNames={"#c": "counter"},
                ExpressionAttributeValues={":one": {"N": "1"}, ":n": {"N": str(self.writes)}},
            )
        elif action < 0.75:
            self.ddb.delete_item(TableName=self.table, Key={"pk": {"S": key}})
        else:
            self.ddb.put_item(
                TableName=self.table, Item={"pk": {"S": f"{key}-new"}, "counter": {"N": str(self.writes)}}
            )
        self.writes += 1

    def stop(self) -> int:
        self._halt.set()
        self._thread.join(10)
        assert self.error is None, f"the writer failed: {self.error!r}"
        return self.writes


def table_row(url: str, table: str) -> dict[str, Any]:
    with connect(url) as conn:
        row = conn.execute(
            """SELECT state, load_finished_at, captured_changes, captured_until, spool_rows, items_loaded,
                      (SELECT count(*) FROM podyn.spool s WHERE s.target_table = t.target_table) AS spool,
                      (SELECT coalesce(sum(items_loaded), 0) FROM podyn.segments g
                       WHERE g.target_table = t.target_table) AS scanned
               FROM podyn.tables t WHERE source_table = %s""",
            (table,),
        ).fetchone()
    assert row is not None
    names = ("state", "load_finished_at", "captured_changes", "captured_until", "spool_rows", "items_loaded")
    return {**dict(zip(names, row[:6], strict=True)), "spool": row[6], "scanned": row[7]}


def slow_after_the_load(url: str, table: str) -> None:
    """Each row the table receives once its load is done takes 20 ms: the spool's apply takes seconds."""
    with connect(url) as conn:
        conn.execute(
            sql.SQL(
                """CREATE FUNCTION slow_after_load() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN
                       IF EXISTS (SELECT FROM podyn.tables WHERE target_table = TG_TABLE_NAME
                                  AND load_finished_at IS NOT NULL) THEN PERFORM pg_sleep(0.02); END IF;
                       RETURN NULL;
                   END $$;
                   CREATE TRIGGER slow AFTER INSERT OR UPDATE OR DELETE ON {}
                       FOR EACH ROW EXECUTE FUNCTION slow_after_load();"""
            ).format(sql.Identifier(table))
        )


def not_slow_any_more(url: str, table: str) -> None:
    with connect(url) as conn:
        conn.execute(sql.SQL("DROP TRIGGER slow ON {}").format(sql.Identifier(table)))


def test_kill_9_mid_load_and_during_the_spools_apply_then_changes_is_exact(
    ddb: Any, ddb_server: Any, pg_url: str, create_table: Any, services: Any
) -> None:
    # 800 items of 1 KB at 2.5 RCU/s: a load of about a minute (each 4 KB costs 0.5 RCU, and the writes add some).
    table = create_table(name=fresh(), stream_view_type=STREAM, items=loaded_items(800))
    slow = ("--scan-rate", "2.5", "-n", "2")
    first = services(pg_url, table, "-s", "-d", "-c", *slow)
    wait_for_state(pg_url, table, "loading", service=first)
    writer = Writer(ddb, table, 800).start()

    def captured_mid_load() -> bool:
        row = table_row(pg_url, table)
        return bool(row["spool_rows"] >= 30 and row["scanned"] > 0)

    wait_for(captured_mid_load, "changes captured while the table loads", timeout=60, service=first)
    shown = status_record(ddb_server, pg_url, table)
    assert shown["state"] == "loading" and shown["captured_changes"] >= 30 and shown["spool_rows"] >= 30
    assert shown["captured_until"] is not None
    assert first.stop(signal.SIGKILL) == -signal.SIGKILL
    killed = table_row(pg_url, table)
    assert killed["load_finished_at"] is None and killed["spool"] == killed["spool_rows"] > 0

    slow_after_the_load(pg_url, table)
    second = services(pg_url, table, "-d", "-c", *slow)

    def applying_the_spool() -> bool:
        row = table_row(pg_url, table)
        return row["load_finished_at"] is not None and row["state"] == "catching up" and row["spool_rows"] > 0

    wait_for(applying_the_spool, "the spool's apply begun", timeout=120, service=second)
    time.sleep(1.0)  # well inside its first transaction: each row takes 20 ms now
    assert table_row(pg_url, table)["spool_rows"] > 0
    assert second.stop(signal.SIGKILL) == -signal.SIGKILL
    applying = table_row(pg_url, table)
    assert applying["spool"] == applying["spool_rows"] > 0

    not_slow_any_more(pg_url, table)
    third = services(pg_url, table, "-c")
    wait_for(lambda: table_row(pg_url, table)["spool"] == 0, "the spool applied", timeout=60, service=third)
    time.sleep(2.0)  # writes go on while it replicates
    writes = writer.stop()
    wait_equal(ddb, pg_url, table, timeout=90, service=third)
    wait_for_state(pg_url, table, "live", service=third)
    done = table_row(pg_url, table)
    assert done["spool_rows"] == 0 and done["captured_changes"] > 0 and writes > 100
    assert third.stop() == 0


def test_a_small_table_is_live_while_a_slow_one_still_loads(
    ddb: Any, ddb_server: Any, pg_url: str, create_table: Any, services: Any
) -> None:
    small = create_table(name=fresh(), stream_view_type=STREAM, items=loaded_items(20))
    slow = create_table(name=fresh(), stream_view_type=STREAM, items=loaded_items(1000))
    service = services(pg_url, f"{small},{slow}", "-s", "-d", "-c", "--scan-rate", "2", "-n", "2")
    wait_for_state(pg_url, small, "live", service=service, timeout=60)
    wait_for_state(pg_url, slow, "loading", service=service)  # the next table's load has begun
    ddb.put_item(TableName=small, Item={"pk": {"S": "while-slow-loads"}, "counter": {"N": "1"}})
    ddb.delete_item(TableName=small, Key={"pk": {"S": "k0003"}})
    wait_equal(ddb, pg_url, small, service=service)
    assert table_row(pg_url, slow)["state"] == "loading"
    assert status_record(ddb_server, pg_url, small)["state"] == "live"
    assert status_record(ddb_server, pg_url, slow)["state"] == "loading"
    assert service.stop() == 0


def test_data_alone_captures_and_a_later_changes_applies_the_spool_first(
    ddb: Any, ddb_server: Any, pg_url: str, create_table: Any, services: Any
) -> None:
    table = create_table(name=fresh(), stream_view_type=STREAM, items=loaded_items(400))
    writer = Writer(ddb, table, 400, rate=20.0)
    started = threading.Timer(3.0, writer.start)  # once the load has begun
    started.start()
    result = podyn(ddb_server, pg_url, "-t", table, "-s", "-d", "--scan-rate", "5", "-n", "2", timeout=180)
    started.join()
    writes = writer.stop()
    assert_exit(result)
    loaded = table_row(pg_url, table)
    assert loaded["state"] == "loaded" and loaded["spool"] == loaded["spool_rows"] > 0
    # The writes, and the items' own INSERTs when DynamoDB Local dated them (to the minute) within the replay margin.
    assert 0 < loaded["captured_changes"] <= writes + 400
    assert "its spool and checkpoints wait for --changes" in result.stderr

    service = services(pg_url, table, "-c")
    wait_equal(ddb, pg_url, table, timeout=60, service=service)
    wait_for_state(pg_url, table, "live", service=service)
    assert table_row(pg_url, table)["spool"] == 0
    assert "applying the changes captured during it (the spool)" in service.text()
    assert service.stop() == 0


def test_data_alone_without_capture_leaves_the_stream_to_a_replay(
    ddb: Any, ddb_server: Any, pg_url: str, create_table: Any, services: Any
) -> None:
    table = create_table(name=fresh(), stream_view_type=STREAM, items=loaded_items(200))
    writer = Writer(ddb, table, 200, rate=20.0)
    started = threading.Timer(2.0, writer.start)
    started.start()
    result = podyn(ddb_server, pg_url, "-t", table, "-s", "-d", "--no-capture", "--scan-rate", "5", timeout=180)
    started.join()
    writer.stop()
    assert_exit(result)
    loaded = table_row(pg_url, table)
    assert (loaded["state"], loaded["captured_changes"], loaded["spool"]) == ("loaded", 0, 0)
    with connect(pg_url) as conn:
        shards = conn.execute("SELECT count(*) FROM podyn.shards").fetchone()
    assert shards == (0,)  # nothing read the stream

    service = services(pg_url, table, "-c")  # replays it from the load's start
    wait_equal(ddb, pg_url, table, timeout=60, service=service)
    assert service.stop() == 0
