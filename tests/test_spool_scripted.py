"""The spool (issue 13) against a real PostgreSQL, with DynamoDB and its stream scripted in simulated time.

A stream keeps records for 24 hours, and DynamoDB Local never trims, so a load longer than that cannot be run
against it. Here both DynamoDB calls a load makes are answered at the API boundary: Scan by a table held in memory
(:class:`World`), the stream by ``scripted_streams.ScriptedStreams``, whose records carry the world's simulated
creation times and are trimmed once they are 24 simulated hours old. Each Scan page moves the simulated clock on
and writes to the world (updates, deletes, new and re-created keys), so a load of 24 pages lasts 30 simulated hours
with writes throughout. Everything from ``load_table``, the ``TableReplicator`` and the ``StreamReader`` down to
PostgreSQL is the real code; the replicator's wall clock (``ChangeOptions.now``) is the simulated one. The
simulation runs in the past, from 30 hours ago to about now, so that the times PostgreSQL writes (the load's end)
fall among the records' times; the load's start is set to the simulated one as it begins.

TTL deletes captured during a load (``--ttl-deletes``) are compared with what the stream path makes of the same
records: DynamoDB Local never expires an item, so its stream never carries a TTL delete; the records, with the
userIdentity of DynamoDB's TTL process, are scripted here too.

The other tests here exercise the spool's transactions one by one (state.py and postgres.py).
"""

from __future__ import annotations

import copy
import datetime as dt
import hashlib
import io
import random
import re
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
import psycopg
import pytest
from helpers import run_podyn
from scripted_streams import STREAM_ARN, TABLE, Clock, FakeShard, RecordMaker, ScriptedStreams, seqs, shard_id

from podyn_py import metrics, status
from podyn_py.changes import ChangeOptions, TableReplicator
from podyn_py.core.changes import (
    VIEW_TYPES_WITH_NEW_IMAGE,
    Delete,
    Expire,
    TtlPolicy,
    Upsert,
    from_spool_entry,
    spool_key,
    to_spool_entry,
)
from podyn_py.core.positions import ShardPosition, UnitKind
from podyn_py.core.schema import KeyAttribute, TableSchema, TableSpec
from podyn_py.core.selection import Exclusions
from podyn_py.errors import ConfigError, Interrupted, LeaseLost, SpoolClosed, SpoolNotEmpty, StreamGapError
from podyn_py.load import LoadOptions, load_table
from podyn_py.replicate import capture_beside_load
from podyn_py.replicate import reader_factory as readers_polling_at_most
from podyn_py.source import dynamodb
from podyn_py.source.streams import StreamReader
from podyn_py.spool import BesideLoad, apply_spool
from podyn_py.target import state
from podyn_py.target.dryrun import CANNOT_FOLLOW_CHANGES, DryRunTarget
from podyn_py.target.postgres import PostgresTarget

SPEC = TableSpec(source=TABLE, schema="public", table="orders", partition_key=KeyAttribute("pk", "S"))
P = shard_id(1)
TIMEOUT = 20.0
OPTIONS = ChangeOptions(max_wait=0.05, max_backoff_seconds=0.2, capture=True)


def options(world: World | None, *, capture: bool = True) -> ChangeOptions:
    """The replicator's options, its wall clock the world's simulated one."""
    if world is None:
        return ChangeOptions(max_wait=0.05, max_backoff_seconds=0.2, capture=capture)
    return ChangeOptions(max_wait=0.05, max_backoff_seconds=0.2, capture=capture, now=lambda: world.now)


RETENTION = dt.timedelta(hours=24)


def description(item_count: int = 0) -> dynamodb.TableDescription:
    return dynamodb.TableDescription(SPEC, STREAM_ARN, "NEW_AND_OLD_IMAGES", item_count=item_count, size_bytes=0)


def query(url: str, statement: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    with psycopg.connect(url, autocommit=True) as conn:
        return conn.execute(statement, params).fetchall()


def rows(url: str) -> dict[str, int]:
    found = query(url, "SELECT pk, (to_jsonb(o) ->> 'counter')::numeric FROM public.orders o")
    return {pk: int(counter) for pk, counter in found}


def tables_row(url: str, *columns: str) -> tuple[Any, ...]:
    return query(url, f"SELECT {', '.join(columns)} FROM podyn.tables WHERE target_table = 'orders'")[0]


def spool_count(url: str) -> int:
    return int(query(url, "SELECT count(*) FROM podyn.spool")[0][0])


def checkpoint(url: str) -> str | None:
    found = query(url, "SELECT sequence_number FROM podyn.shards WHERE shard_id = %s", (P,))
    return str(found[0][0]) if found and found[0][0] is not None else None


def wait_until(condition: Callable[[], bool], what: str, timeout: float = TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"not {what} after {timeout} s"
        time.sleep(0.02)


def reader_factory(polls: Clock) -> Callable[[Any, str, dict[str, ShardPosition], frozenset[str]], StreamReader]:
    def reader(client: Any, stream_arn: str, positions: dict[str, ShardPosition], only: frozenset[str]) -> StreamReader:
        return StreamReader(
            client, stream_arn, positions, relist_seconds=0.2, idle_min=0.005, idle_max=0.02, retry_attempts=3,
            clock=polls, sleep=polls.sleep, only=only,
        )  # fmt: skip

    return reader


# --- a DynamoDB table and its stream in simulated time -----------------------------------------------------------


class World:
    """A table keyed by ``pk`` (S) with a ``counter`` (N) that grows with every write, and its stream: one shard
    whose records carry the simulated time they were written at, trimmed once 24 simulated hours old."""

    def __init__(self, start: dt.datetime, keys: int, seed: int = 13) -> None:
        self.now = start
        self.rng = random.Random(seed)
        self.make = RecordMaker(created_at=lambda: self.now)
        self.records: list[dict[str, Any]] = []
        self.shard = FakeShard(P, None, self.records, closed=False)
        self.streams = ScriptedStreams([self.shard], Clock(), hooks=[self._trim])
        self.items: dict[str, int] = {}
        self.counter = 0
        self.deleted: list[str] = []
        for n in range(keys):
            self._put(f"k{n:04d}", "INSERT")

    def _trim(self, client: ScriptedStreams, operation: str, params: dict[str, Any], before: int) -> None:
        horizon = self.now - RETENTION
        while self.shard.trim_horizon < len(self.records) and self.created(self.shard.trim_horizon) < horizon:
            self.shard.trim_horizon += 1

    def created(self, index: int) -> dt.datetime:
        created: dt.datetime = self.records[index]["dynamodb"]["ApproximateCreationDateTime"]
        return created

    def _put(self, pk: str, event: str = "MODIFY") -> None:
        self.counter += 1
        self.items[pk] = self.counter
        self.records.append(self.make.put(pk, self.counter, event))

    def write(self, count: int) -> None:
        """``count`` writes at the current simulated time: updates, deletes, new keys, deleted keys put back."""
        with self.streams.lock:
            for _ in range(count):
                action = self.rng.random()
                if action < 0.5 and self.items:
                    self._put(self.rng.choice(sorted(self.items)))
                elif action < 0.7 and self.items:
                    pk = self.rng.choice(sorted(self.items))
                    del self.items[pk]
                    self.deleted.append(pk)
                    self.records.append(self.make.remove(pk))
                elif action < 0.8 and self.deleted:
                    self._put(self.deleted.pop(self.rng.randrange(len(self.deleted))), "INSERT")
                else:
                    self._put(f"new{self.counter:05d}", "INSERT")

    def last_sequence(self) -> str | None:
        with self.streams.lock:
            return seqs(self.records[-1:])[0] if self.records else None

    def page(self, segment: int, total: int, after: str | None, limit: int) -> tuple[list[str], str | None]:
        """The keys of a Scan page as DynamoDB reads it now: the segment's keys after ``after``, in key order."""
        with self.streams.lock:
            keys = sorted(k for k in self.items if _segment_of(k, total) == segment and (after is None or k > after))
        page = keys[:limit]
        return page, page[-1] if len(keys) > limit else None

    def item(self, pk: str) -> dict[str, Any]:
        return {"pk": {"S": pk}, "counter": {"N": str(self.items[pk])}}


def _segment_of(pk: str, total: int) -> int:
    return int.from_bytes(hashlib.sha256(pk.encode()).digest()[:4], "big") % total


class SimulatedScan:
    """Scan as DynamoDB answers it, over the world: before each page the simulated clock moves on by ``step``, the
    world takes ``writes`` writes, and (unless ``capture_stalled`` says the capture is not running now) the page
    waits until the capture has committed every record written so far, as a capture that keeps up would have."""

    PAGE = 8

    def __init__(self, world: World, url: str, step: dt.timedelta, writes: int) -> None:
        self.world = world
        self.url = url
        self.step = step
        self.writes = writes
        self.pages = 0
        self.capture_running: Callable[[], bool] = lambda: False
        #: Called with the page's number before it is read.
        self.on_page: Callable[[int], None] = lambda n: None
        self._lock = threading.Lock()

    def scan(self, **request: Any) -> dict[str, Any]:
        with self._lock:  # one simulated clock: pages take their turns
            self.pages += 1
            self.on_page(self.pages)
            if self.capture_running():
                last = self.world.last_sequence()
                wait_until(lambda: checkpoint(self.url) == last, f"captured up to {last}")
            self.world.now += self.step
            self.world.write(self.writes)
            start = request.get("ExclusiveStartKey")
            keys, last_key = self.world.page(
                request["Segment"],
                request["TotalSegments"],
                start["pk"]["S"] if start else None,
                min(request.get("Limit") or self.PAGE, self.PAGE),
            )
            with self.world.streams.lock:
                response: dict[str, Any] = {
                    "Items": [self.world.item(k) for k in keys],
                    "ConsumedCapacity": {"TableName": TABLE, "CapacityUnits": 0.5 * max(1, len(keys))},
                }
            if last_key is not None:
                response["LastEvaluatedKey"] = {"pk": {"S": last_key}}
            return response


class Capture:
    """The capture beside the load (``load.Beside``), as ``podyn --data --changes`` runs it: a TableReplicator in
    capture mode in a thread, which applies the spool once the table is loaded and replicates on. It can be stopped
    mid-load (its process killed) and started again (a new process, reading on from the checkpoints)."""

    def __init__(self, setup: Setup, world: World, load_started: dt.datetime) -> None:
        self.setup = setup
        self.world = world
        self.load_started = load_started
        self.replicator: TableReplicator | None = None
        self.thread: threading.Thread | None = None
        self.error: BaseException | None = None
        self.stop_event = threading.Event()

    def start(self) -> None:
        # The load began now by PostgreSQL's clock; in the simulation it began 30 hours ago.
        query(self.setup.url, "UPDATE podyn.tables SET load_started_at = %s RETURNING 1", (self.load_started,))
        self.resume()

    def resume(self) -> None:
        self.stop_event = threading.Event()
        self.error = None
        self.replicator = TableReplicator(
            description(), self.setup.schema, self.setup.target, None, self.world.streams, self.stop_event,
            options(self.world), reader_factory(Clock()),
        )  # fmt: skip
        self.thread = threading.Thread(target=self._run, name="test-capture", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        assert self.replicator is not None
        try:
            self.replicator.run()
        except BaseException as exc:  # handed to the load, or to the test
            self.error = exc

    @property
    def running(self) -> bool:
        return self.thread is not None and self.thread.is_alive()

    def halt(self) -> None:
        self.stop_event.set()
        if self.thread is not None:
            self.thread.join(TIMEOUT)
            assert not self.thread.is_alive()

    def failure(self) -> Any:
        return self.error

    def end(self, loaded: bool) -> None:
        if not loaded:
            self.halt()


class Setup:
    def __init__(self, url: str) -> None:
        self.url = url
        self.target = PostgresTarget(url)
        self.schema: TableSchema = self.target.prepare_table(SPEC, create=True, citus=False)


@pytest.fixture
def setup(pg_url: str) -> Iterator[Setup]:
    made = Setup(pg_url)
    yield made


def captured_metric() -> float:
    return metrics.REGISTRY.get_sample_value("podyn_changes_captured_total", {"table": TABLE}) or 0.0


def simulation(setup: Setup, *, writes: int = 6) -> tuple[World, SimulatedScan, dt.datetime]:
    """A world of 120 keys written an hour before a load that starts 30 hours ago and takes 30 simulated hours
    or a few more: the table grows as it is written to, each page is 2 hours, and there are at least 15 pages."""
    started = dt.datetime.now(dt.UTC) - dt.timedelta(hours=30, minutes=5)
    world = World(started - dt.timedelta(hours=1), keys=120)
    world.now = started
    return world, SimulatedScan(world, setup.url, dt.timedelta(hours=2), writes), started


def load(setup: Setup, scan: SimulatedScan, beside: Any = None) -> int:
    options = LoadOptions(segments=4, connections=1)
    return load_table(description(120), setup.schema, setup.target, scan, options, beside=beside).items


# --- a load longer than the stream keeps records -------------------------------------------------------------------


def test_a_load_of_30_simulated_hours_with_writes_throughout_ends_equal_to_the_source(setup: Setup) -> None:
    world, scan, started = simulation(setup)
    capture = Capture(setup, world, started)
    scan.capture_running = lambda: capture.running
    counted_before = captured_metric()
    load(setup, scan, capture)

    assert world.now - started >= dt.timedelta(hours=30), "the load lasted 30 simulated hours"
    assert world.shard.trim_horizon > 0, "the stream trimmed the records of the load's first hours"
    # The capture goes on as replication: the spool is applied, then the stream from the checkpoints.
    wait_until(lambda: rows(setup.url) == world.items, "equal to the source")
    assert capture.error is None and capture.running
    world.write(20)  # after the load, while live
    wait_until(lambda: rows(setup.url) == world.items, "equal to the source after later writes")
    capture.halt()
    assert capture.error is None
    assert spool_count(setup.url) == 0
    captured, until, spool_rows, state = tables_row(
        setup.url, "captured_changes", "captured_until", "spool_rows", "state"
    )
    writes_during_load = scan.pages * scan.writes
    # Every write after the load began (the last page's may have come after the load's end), none of the 120 before.
    assert writes_during_load - scan.writes <= captured <= writes_during_load
    assert dt.timedelta(hours=28) < until - started <= world.now - started and spool_rows == 0
    assert state == "live"
    assert captured_metric() - counted_before == captured
    assert metrics.REGISTRY.get_sample_value("podyn_spool_rows", {"table": TABLE}) == 0


def test_the_same_load_without_capture_stops_with_the_clear_error(setup: Setup) -> None:
    world, scan, started = simulation(setup)
    load(setup, scan)  # --no-capture: nothing reads the stream while the table loads
    query(setup.url, "UPDATE podyn.tables SET load_started_at = %s RETURNING 1", (started,))
    replicator = TableReplicator(
        description(), setup.schema, setup.target, None, world.streams, threading.Event(),
        options(world, capture=False), reader_factory(Clock()),
    )  # fmt: skip

    with pytest.raises(StreamGapError) as gap:
        replicator.run()

    assert re.search(r"the load started 3\d\.\d hours ago, longer than the stream keeps records", str(gap.value))
    assert "--reload" in str(gap.value) and gap.value.table == TABLE
    assert world.streams.calls == []  # nothing was read: the error is certain before
    assert rows(setup.url) != world.items  # the writes during the load are not there, and never will be


def test_a_capture_stopped_for_25_simulated_hours_stops_the_load_with_the_clear_error(setup: Setup) -> None:
    world, scan, started = simulation(setup)
    capture = Capture(setup, world, started)
    stalled: list[dt.datetime] = []

    def on_page(n: int) -> None:
        if n == 3:  # the capturing process dies; for 25 hours only the load goes on (another process's), and writes
            capture.halt()
            stalled.append(world.now)
            for _ in range(25):
                world.now += dt.timedelta(hours=1)
                world.write(2)
        elif n == 4:  # a process captures again, from the checkpoint
            capture.resume()
            wait_until(lambda: capture.error is not None, "the capture failed")

    scan.on_page = on_page
    scan.capture_running = lambda: capture.running and not stalled
    with pytest.raises(StreamGapError) as gap:
        load(setup, scan, capture)

    message = str(gap.value)
    assert f"records of shard {P} after sequence number" in message
    assert "DynamoDB Streams trimmed them (it keeps records for 24 hours after they are written)" in message
    assert "Re-run with --data to reload the table" in message and gap.value.table == TABLE
    assert world.streams.failures[-1] == "TrimmedDataAccessException"
    assert scan.pages < 8 and tables_row(setup.url, "load_finished_at") == (None,)  # the load stopped with it
    assert spool_count(setup.url) > 0  # what was captured before stays, with its checkpoint


class CaptureOnly:
    """The capture beside the load of ``podyn --data`` alone (``replicate.capture_beside_load`` in a
    ``spool.BesideLoad``), which can be stopped mid-load and started again, as :class:`Capture`."""

    def __init__(self, setup: Setup, world: World, load_started: dt.datetime) -> None:
        self.setup = setup
        self.world = world
        self.load_started = load_started
        self.current: BesideLoad | None = None

    def _replicator(self, stop: threading.Event) -> TableReplicator:
        only = ChangeOptions(
            max_wait=0.05, max_backoff_seconds=0.2, capture=True, capture_only=True, now=lambda: self.world.now
        )
        return TableReplicator(
            description(), self.setup.schema, self.setup.target, None, self.world.streams, stop, only,
            reader_factory(Clock()),
        )  # fmt: skip

    def start(self) -> None:
        query(self.setup.url, "UPDATE podyn.tables SET load_started_at = %s RETURNING 1", (self.load_started,))
        self.resume()

    def resume(self) -> None:
        def work(stop: threading.Event) -> Any:
            return capture_beside_load(lambda: self._replicator(stop), TABLE, stop)

        self.current = BesideLoad(TABLE, work, threading.Event(), after_load=False)
        self.current.start()

    def halt(self) -> None:
        assert self.current is not None
        self.current.end(loaded=False)

    @property
    def running(self) -> bool:
        return self.current is not None and self.current.is_alive()

    def failure(self) -> Any:
        return None if self.current is None else self.current.failure()

    def end(self, loaded: bool) -> None:
        if self.current is not None:
            self.current.end(loaded)


def test_with_data_alone_a_capture_gap_lets_the_load_finish_and_changes_refuses_the_table(
    setup: Setup, caplog: pytest.LogCaptureFixture
) -> None:
    world, scan, started = simulation(setup)
    capture = CaptureOnly(setup, world, started)
    stalled: list[int] = []

    def on_page(n: int) -> None:
        if n == 3:
            capture.halt()
            stalled.append(n)
            for _ in range(25):
                world.now += dt.timedelta(hours=1)
                world.write(2)
        elif n == 4:
            capture.resume()
            wait_until(lambda: not capture.running, "the capture ended")

    scan.on_page = on_page
    scan.capture_running = lambda: capture.running and not stalled
    load(setup, scan, capture)  # the load goes on and ends

    assert tables_row(setup.url, "state") == ("loaded",)
    assert any(
        "DynamoDB Streams trimmed them" in r.getMessage() and "--changes will refuse this table" in r.getMessage()
        for r in caplog.records
        if r.levelname == "ERROR"
    )
    later = TableReplicator(
        description(), setup.schema, setup.target, None, world.streams, threading.Event(),
        options(world, capture=False), reader_factory(Clock()),
    )  # fmt: skip
    with pytest.raises(StreamGapError, match="DynamoDB Streams trimmed them"):
        later.run()


# --- the spool's transactions --------------------------------------------------------------------------------------


def begin(setup: Setup) -> None:
    assert setup.target.begin_load(SPEC, 1, reload=False, stream_arn=STREAM_ARN) is not None


def finish(setup: Setup) -> None:
    """The load's segments are done (as its pages committed them) and it is finished."""
    query(setup.url, "UPDATE podyn.segments SET done = true RETURNING 1")
    setup.target.finish_load(SPEC)


def spool(
    setup: Setup, conn: Any, changes: Sequence[Upsert | Delete | Expire], old: ShardPosition | None, new: ShardPosition
) -> int | None:
    entries = [to_spool_entry(c, P, str(n)) for n, c in enumerate(changes)]
    return setup.target.spool_changes(
        conn, SPEC, STREAM_ARN, entries=entries, rejected=[], moves=[(old, new, len(changes))], captured=len(changes),
        captured_until=None,
    )  # fmt: skip


def key(pk: str) -> dict[str, Any]:
    return {"pk": {"S": pk}}


def test_the_spool_keeps_each_keys_last_change_and_applies_them_in_key_order(setup: Setup) -> None:
    begin(setup)
    one, two, three = (ShardPosition(P, None, str(n), False) for n in (1, 2, 3))
    with setup.target.connect() as conn:
        assert spool(setup, conn, [Upsert(key("b"), {"pk": {"S": "b"}, "counter": {"N": "1"}})], None, one) == 1
        later: list[Upsert | Delete] = [Upsert(key("a"), {"pk": {"S": "a"}, "counter": {"N": "2"}}), Delete(key("b"))]
        assert spool(setup, conn, later, one, two) == 2
        # The same records again (a lost commit answer, another process): nothing is written.
        assert spool(setup, conn, later, one, two) is None
        assert spool(setup, conn, [Upsert(key("a"), {"pk": {"S": "a"}, "counter": {"N": "3"}})], two, three) == 2
    assert query(setup.url, "SELECT item_key, deleted, image::text FROM podyn.spool ORDER BY item_key") == [
        ('{"pk":{"S":"a"}}', False, '{"pk":{"S":"a"},"counter":{"N":"3"}}'),
        ('{"pk":{"S":"b"}}', True, None),
    ]
    assert tables_row(setup.url, "captured_changes", "spool_rows") == (4, 2)
    (shown,) = status.read_status(setup.url).tables
    assert (shown.captured_changes, shown.spool_rows) == (4, 2)
    assert "capture: 4 changes captured during the load, newest written -; spool: 2 rows" in status.render(
        status.read_status(setup.url)
    )
    assert {"captured_changes": 4, "captured_until": None, "spool_rows": 2}.items() <= status.to_json(
        status.read_status(setup.url)
    )["tables"][0].items()
    query(setup.url, "INSERT INTO public.orders (pk) VALUES ('b') RETURNING 1")  # as the scan copied it

    # Once loaded, no batch enters the spool any more: nothing of it is written, the checkpoint stays.
    finish(setup)
    four = ShardPosition(P, None, "4", False)
    with setup.target.connect() as conn, pytest.raises(SpoolClosed):
        spool(setup, conn, [Upsert(key("c"), {"pk": {"S": "c"}, "counter": {"N": "4"}})], three, four)
    assert checkpoint(setup.url) == "3" and spool_count(setup.url) == 2

    # A batch from the stream waits for the spool: refused, with nothing written.
    schema = setup.target.prepare_table(SPEC, create=False, citus=False)
    with setup.target.connect() as conn, pytest.raises(SpoolNotEmpty):
        setup.target.apply_changes(
            conn, schema, STREAM_ARN, rows=[], delete_keys=[("b",)], rejected=[], moves=[(three, four, 1)],
            lag_seconds=None,
        )  # fmt: skip
    assert checkpoint(setup.url) == "3"

    replicator = TableReplicator(description(), schema, setup.target, None, None, threading.Event(), OPTIONS)
    with setup.target.connect() as conn:
        assert apply_spool(setup.target, conn, replicator.rows, threading.Event(), batch=1) == 2
    assert rows(setup.url) == {"a": 3}
    assert spool_count(setup.url) == 0 and tables_row(setup.url, "spool_rows", "changes_applied") == (0, 2)


def test_a_spool_batch_another_process_applied_first_writes_nothing(setup: Setup) -> None:
    begin(setup)
    with setup.target.connect() as conn:
        spool(setup, conn, [Upsert(key("a"), {"pk": {"S": "a"}})], None, ShardPosition(P, None, "1", False))
    finish(setup)
    schema = setup.target.prepare_table(SPEC, create=False, citus=False)
    with setup.target.connect() as conn:
        keys = [spool_key(key("a")), spool_key(key("z"))]  # z was applied (and removed) by another process
        assert setup.target.apply_spool(conn, schema, keys=keys, rows=[["a"]], delete_keys=[], rejected=[]) is None
    assert rows(setup.url) == {} and spool_count(setup.url) == 1


def spool_of(setup: Setup, count: int) -> list[str]:
    """A loaded table whose spool holds ``count`` upserts (k000, k001, ...) and one delete of a row there is."""
    begin(setup)
    query(setup.url, "INSERT INTO public.orders (pk) VALUES ('gone') RETURNING 1")
    changes: list[Upsert | Delete] = [
        Upsert(key(f"k{i:03d}"), {"pk": {"S": f"k{i:03d}"}, "counter": {"N": str(i)}}) for i in range(count)
    ]
    changes.append(Delete(key("gone")))
    with setup.target.connect() as conn:
        assert spool(setup, conn, changes, None, ShardPosition(P, None, "1", False)) == count + 1
    finish(setup)
    return [f"k{i:03d}" for i in range(count)]


class ApplyingFirst(PostgresTarget):
    """The real target, where another process applies part of the ``at``-th batch (its first entry) just before
    this process writes it: that batch finds an entry gone, rolls back and is read again."""

    def __init__(self, url: str, at: int) -> None:
        super().__init__(url)
        self.other_url = url
        self.at = at
        self.writes = 0
        self.taken: str | None = None

    def apply_spool(self, conn: Any, schema: TableSchema, **batch: Any) -> int | None:
        self.writes += 1
        if self.writes == self.at:
            first = batch["keys"][0]
            self.taken = pk = orjson.loads(first)["pk"]["S"]
            row = [pk if name == "pk" else Decimal(pk[1:]) for name in schema.column_names]  # the entry's row
            with PostgresTarget(self.other_url).connect() as other:
                assert super().apply_spool(other, schema, keys=[first], rows=[row], delete_keys=[], rejected=[])
        return super().apply_spool(conn, schema, **batch)


def test_the_spool_applied_in_two_stages_reads_a_batch_another_process_took_part_of_again(setup: Setup) -> None:
    """While one batch is written the next is read and converted: when the written one rolls back (another process
    applied one of its entries), both are read again, and every entry is applied exactly once."""
    keys = spool_of(setup, 25)
    target = ApplyingFirst(setup.url, at=3)  # the 3rd batch: the 4th has been read and converted meanwhile
    replicator = TableReplicator(description(), setup.schema, target, None, None, threading.Event(), OPTIONS)
    with target.connect() as conn:
        applied = apply_spool(target, conn, replicator.rows, threading.Event(), batch=4)
    assert target.taken == "k007"  # the 3rd batch: k007 to k010 (the delete of "gone" sorts first)
    assert applied == 25 + 1 - 1  # the entry the other process applied is in its count, not this one's
    assert target.writes == 8  # 2 batches, the 3rd rolled back, then 17 entries in 5 batches
    assert rows(setup.url) == {k: int(k[1:]) for k in keys}
    assert spool_count(setup.url) == 0 and tables_row(setup.url, "spool_rows") == (0,)


def test_the_spool_stopped_while_a_batch_is_written_commits_it_and_the_next_run_applies_the_rest(
    setup: Setup,
) -> None:
    keys = spool_of(setup, 30)
    stop = threading.Event()

    class StopDuring(PostgresTarget):
        writes = 0

        def apply_spool(self, conn: Any, schema: TableSchema, **batch: Any) -> int | None:
            self.writes += 1
            if self.writes == 2:
                stop.set()  # SIGTERM arrives while the 2nd batch is being written
            return super().apply_spool(conn, schema, **batch)

    target = StopDuring(setup.url)
    replicator = TableReplicator(description(), setup.schema, target, None, None, threading.Event(), OPTIONS)
    with target.connect() as conn, pytest.raises(Interrupted):
        apply_spool(target, conn, replicator.rows, stop, batch=10)
    assert len(rows(setup.url)) == 19  # both batches: the delete and k000 to k008, then k009 to k018
    assert spool_count(setup.url) == 11 and tables_row(setup.url, "spool_rows") == (11,)
    with target.connect() as conn:
        assert apply_spool(target, conn, replicator.rows, threading.Event(), batch=10) == 11
    assert rows(setup.url) == {k: int(k[1:]) for k in keys} and spool_count(setup.url) == 0


def test_a_spool_batch_under_a_shard_lease_another_process_took_writes_nothing(setup: Setup) -> None:
    """A capturing process paused past its shard's lease: the process that took the shard over owns its records;
    the paused one's batch, committed late, must neither enter the spool nor move the checkpoint."""
    begin(setup)
    (mine,) = setup.target.claim_units(SPEC, UnitKind.SHARD, [P], "paused:1:aa", 1, 30.0)
    query(setup.url, "UPDATE podyn.leases SET expires_at = now() - interval '1 minute' RETURNING 1")
    (theirs,) = setup.target.claim_units(SPEC, UnitKind.SHARD, [P], "other:2:bb", 1, 30.0)
    one = ShardPosition(P, None, "1", False)
    change: list[Upsert | Delete] = [Upsert(key("a"), {"pk": {"S": "a"}})]
    with setup.target.connect() as conn, pytest.raises(LeaseLost):
        setup.target.spool_changes(
            conn, SPEC, STREAM_ARN, entries=[to_spool_entry(change[0], P, "1")], rejected=[], moves=[(None, one, 1)],
            captured=1, captured_until=None, leases={P: mine},
        )  # fmt: skip
    assert spool_count(setup.url) == 0 and checkpoint(setup.url) is None
    with setup.target.connect() as conn:  # the owner's batch goes in
        assert setup.target.spool_changes(
            conn, SPEC, STREAM_ARN, entries=[to_spool_entry(change[0], P, "1")], rejected=[], moves=[(None, one, 1)],
            captured=1, captured_until=None, leases={P: theirs},
        ) == 1  # fmt: skip
    assert spool_count(setup.url) == 1 and checkpoint(setup.url) == "1"


def test_a_new_load_starts_with_an_empty_spool(setup: Setup) -> None:
    begin(setup)
    with setup.target.connect() as conn:
        spool(setup, conn, [Delete(key("a"))], None, ShardPosition(P, None, "1", False))
    assert setup.target.begin_load(SPEC, 1, reload=True, stream_arn=STREAM_ARN) is not None
    assert spool_count(setup.url) == 0
    assert tables_row(setup.url, "captured_changes", "captured_until", "spool_rows") == (0, None, 0)


@pytest.mark.parametrize(
    ("one", "other"),
    [
        ({"pk": {"S": "a"}, "sk": {"N": "1"}}, {"sk": {"N": "1"}, "pk": {"S": "a"}}),
        ({"pk": {"B": b"\x00\xff"}}, {"pk": {"B": "AP8="}}),  # boto3's bytes, the fast path's base64
    ],
    ids=["attribute order", "binary as bytes or base64"],
)
def test_a_key_has_one_spool_key_however_it_arrives(one: dict[str, Any], other: dict[str, Any]) -> None:
    assert spool_key(one) == spool_key(other)


def test_a_spool_entry_keeps_the_image_whole() -> None:
    image = {"pk": {"S": "a\x00b"}, "n": {"N": "1.50"}, "b": {"B": b"\x01"}, "m": {"M": {"l": {"L": [{"NULL": True}]}}}}
    back = from_spool_entry(to_spool_entry(Upsert({"pk": {"S": "a\x00b"}}, image), P, "1"))
    assert isinstance(back, Upsert)
    assert back.item == {**image, "b": {"B": "AQ=="}}  # binary as base64 text, which the rows accept
    assert back.key == {"pk": {"S": "a\x00b"}}


@pytest.mark.parametrize("image", [None, {"pk": {"S": "a"}, "n": {"N": "1"}}], ids=["without image", "with image"])
def test_a_spool_entry_keeps_an_expire(image: dict[str, Any] | None) -> None:
    when = dt.datetime(2024, 5, 1, 10, tzinfo=dt.UTC)
    entry = to_spool_entry(Expire(key("a"), when, image), P, "1")
    assert entry.expired and not entry.deleted
    assert from_spool_entry(entry) == Expire(key("a"), when, image)


def test_an_expire_without_image_in_the_spool_marks_what_the_keys_entry_before_it_leaves(setup: Setup) -> None:
    """Each entry is composed with the key's entry before it, as applying the two in turn would: an Expire without
    image (``--ttl-deletes mark``, a stream without old images) marks the row the entry before writes, leaves a
    delete a delete, and is replaced whole by a later change."""
    begin(setup)
    t1, t2 = dt.datetime(2024, 5, 1, 10, tzinfo=dt.UTC), dt.datetime(2024, 5, 1, 11, tzinfo=dt.UTC)
    one, two, three = (ShardPosition(P, None, str(n), False) for n in (1, 2, 3))
    image = {"pk": {"S": "a"}, "counter": {"N": "1"}}
    with setup.target.connect() as conn:
        spool(setup, conn, [Upsert(key("a"), image), Delete(key("b")), Expire(key("d"), t1, {"pk": {"S": "d"}})],
              None, one)  # fmt: skip
        spool(setup, conn, [Expire(key(pk), t2) for pk in "abcd"], one, two)
    entries = {entry.key: from_spool_entry(entry) for entry in setup.target.read_spool(SPEC, None, 10)}
    assert entries == {
        spool_key(key("a")): Expire(key("a"), t2, image),  # written, then marked
        spool_key(key("b")): Delete(key("b"), t2),  # deleted: no row to mark
        spool_key(key("c")): Expire(key("c"), t2),  # marks the row the scan copied, if any
        spool_key(key("d")): Expire(key("d"), t2, {"pk": {"S": "d"}}),  # marked again, later
    }
    with setup.target.connect() as conn:
        spool(setup, conn, [Upsert(key("a"), image)], two, three)  # created again: no mark
    assert from_spool_entry(setup.target.read_spool(SPEC, None, 1)[0]) == Upsert(key("a"), image)

    query(setup.url, "INSERT INTO public.orders (pk) VALUES ('b'), ('c') RETURNING 1")  # as the scan copied them
    finish(setup)
    schema = setup.target.prepare_table(SPEC, create=False, citus=False)
    assert schema.expired_column is None  # the capture adds it; here the spool's apply has to
    replicator = TableReplicator(description(), schema, setup.target, None, None, threading.Event(), OPTIONS)
    with setup.target.connect() as conn:
        assert apply_spool(setup.target, conn, replicator.rows, threading.Event()) == 1 + 1 + 1 + 2
    marked = query(setup.url, "SELECT pk, (podyn_expired_at = %s) FROM public.orders ORDER BY pk", (t2,))
    assert marked == [("a", None), ("c", True), ("d", True)]
    assert tables_row(setup.url, "expired_column", "changes_applied") == ("podyn_expired_at", 5)


def test_a_spool_of_the_version_before_is_applied_after_the_migration(setup: Setup) -> None:
    """A spool written before the migration that let it hold TTL marks (a load captured by the release before, a
    later --changes by this one): migrated in place, its entries are the upserts and deletes they were."""
    begin(setup)
    before = 1 + next(i for i, step in enumerate(state._MIGRATIONS) if "podyn.spool ADD COLUMN" in step)
    with psycopg.connect(setup.url, autocommit=True) as conn:
        conn.execute("ALTER TABLE podyn.spool DROP COLUMN expired")
        conn.execute("UPDATE podyn.schema_version SET version = %s", (before,))
        conn.execute(  # as version 6 wrote them
            """INSERT INTO podyn.spool (target_schema, target_table, item_key, deleted, image, shard_id,
                                        sequence_number, created_at)
               VALUES ('public', 'orders', %s, false, '{"pk":{"S":"a"},"counter":{"N":"5"}}', %s, '1', NULL),
                      ('public', 'orders', %s, true, NULL, %s, '2', NULL)""",
            (spool_key(key("a")), P, spool_key(key("b")), P),
        )
        conn.execute("UPDATE podyn.tables SET spool_rows = 2")
    setup.target.ensure_metadata()
    assert query(setup.url, "SELECT version FROM podyn.schema_version") == [(state.SCHEMA_VERSION,)]
    entries = setup.target.read_spool(SPEC, None, 10)
    assert [from_spool_entry(e) for e in entries] == [
        Upsert(key("a"), {"pk": {"S": "a"}, "counter": {"N": "5"}}),
        Delete(key("b")),
    ]
    query(setup.url, "INSERT INTO public.orders (pk) VALUES ('b') RETURNING 1")
    finish(setup)
    schema = setup.target.prepare_table(SPEC, create=False, citus=False)
    replicator = TableReplicator(description(), schema, setup.target, None, None, threading.Event(), OPTIONS)
    with setup.target.connect() as conn:
        assert apply_spool(setup.target, conn, replicator.rows, threading.Event()) == 2
    assert rows(setup.url) == {"a": 5} and spool_count(setup.url) == 0


def test_a_value_with_u0000_survives_the_spool(setup: Setup) -> None:
    begin(setup)
    image = {"pk": {"S": "a"}, "note": {"S": "x\x00y"}}
    with setup.target.connect() as conn:
        spool(setup, conn, [Upsert(key("a"), image)], None, ShardPosition(P, None, "1", False))
    (entry,) = setup.target.read_spool(SPEC, None, 10)
    assert from_spool_entry(entry) == Upsert(key("a"), image)


def test_the_dry_run_refuses_the_spool() -> None:
    dry = DryRunTarget(io.StringIO(), citus=False)
    for call in (
        lambda: dry.read_spool(SPEC, None, 1),
        lambda: dry.spool_changes(
            None, SPEC, "arn", entries=[], rejected=[], moves=[], captured=0, captured_until=None
        ),
        lambda: dry.apply_spool(None, TableSchema(SPEC, ()), keys=[], rows=[], delete_keys=[], rejected=[]),
    ):
        with pytest.raises(ConfigError, match=re.escape(CANNOT_FOLLOW_CHANGES)):
            call()


# --- polling an idle stream -----------------------------------------------------------------------------------------


def test_idle_poll_max_caps_the_pause_between_polls_of_an_idle_shard() -> None:
    now = [0.0]  # simulated time: sleeping moves it on

    def sleep(seconds: float) -> None:
        now[0] += seconds

    streams = ScriptedStreams([FakeShard(P, None, [], closed=False)], lambda: now[0])
    reader = readers_polling_at_most(7.0, clock=lambda: now[0], sleep=sleep)(streams, STREAM_ARN, {}, frozenset({P}))
    while now[0] < 600.0:  # the first read hands out the new shard's start; the others find nothing
        reader.read(600.0 - now[0])
    polls = [t for _, t in streams.polls]
    gaps = [later - earlier for earlier, later in zip(polls, polls[1:], strict=False)]
    assert len(gaps) > 50 and max(gaps) == pytest.approx(7.0)
    assert gaps[0] < 1.0  # it starts fast and backs off to the cap


def test_the_first_change_after_an_idle_stream_is_measured(setup: Setup) -> None:
    begin(setup)
    finish(setup)
    records: list[dict[str, Any]] = []
    streams = ScriptedStreams([FakeShard(P, None, records, closed=False)], Clock())
    replicator = TableReplicator(
        description(), setup.schema, setup.target, None, streams, threading.Event(), OPTIONS, reader_factory(Clock())
    )
    before = metrics.REGISTRY.get_sample_value("podyn_first_change_after_idle_seconds_count", {"table": TABLE}) or 0
    thread = threading.Thread(target=replicator.run, daemon=True)
    thread.start()
    try:
        wait_until(lambda: tables_row(setup.url, "state") == ("live",), "live (idle)")
        with streams.lock:
            records.append(
                RecordMaker(created_at=lambda: dt.datetime.now(dt.UTC) - dt.timedelta(seconds=3)).put("a", 1)
            )
        wait_until(lambda: rows(setup.url) == {"a": 1}, "the change applied")
    finally:
        replicator.stop.set()
        thread.join(TIMEOUT)
    after = metrics.REGISTRY.get_sample_value("podyn_first_change_after_idle_seconds_count", {"table": TABLE})
    total = metrics.REGISTRY.get_sample_value("podyn_first_change_after_idle_seconds_sum", {"table": TABLE})
    assert after == before + 1
    assert total is not None and total >= 3.0  # written 3 s before it was read


def test_idle_poll_max_below_the_first_pause_is_a_usage_error() -> None:
    result = run_podyn("--changes", "-u", "postgresql://", "--idle-poll-max", "0.1", timeout=60)
    assert result.returncode == 2, result.stderr
    assert "--idle-poll-max" in result.stderr and "0.25" in result.stderr


# --- TTL deletes captured during a load (--ttl-deletes) ------------------------------------------------------------

#: A TTL delete's userIdentity as GetRecords returns it (tests/data/ttl: DynamoDB's service principal).
TTL_IDENTITY = orjson.loads((Path(__file__).parent / "data" / "ttl" / "ttl-delete-events.json").read_bytes())[
    "Records"
][1]["userIdentity"]
#: The same stream applied by the stream path, to a table loaded before it: what the spooled table must equal.
STREAMED = TableSpec(
    source="OrdersStreamed", schema="public", table="orders_streamed", partition_key=KeyAttribute("pk", "S")
)
#: Items as DynamoDB holds them before the load; the scan copies all but ``missing`` (it read that key after the
#: item expired, so only the TTL delete's old image knows it).
BEFORE_LOAD = ("again", "expired", "marked_later", "missing", "plain", "recreated", "steady", "updated")


class Items:
    """BatchGetItem as DynamoDB answers it, from the items it holds now (KEYS_ONLY streams refetch their keys)."""

    def __init__(self) -> None:
        self.items: dict[str, dict[str, Any]] = {}

    def batch_get_item(self, *, RequestItems: dict[str, Any]) -> dict[str, Any]:
        ((table, request),) = RequestItems.items()
        found = [self.items[k["pk"]["S"]] for k in request["Keys"] if k["pk"]["S"] in self.items]
        return {"Responses": {table: copy.deepcopy(found)}, "UnprocessedKeys": {}}


class TtlStream:
    """The records of a table's stream in phases (each read as one batch), with their effect on the items.

    TTL deletes carry DynamoDB's service userIdentity and, on NEW_AND_OLD_IMAGES streams, the old image; INSERT and
    MODIFY carry their new image on NEW_AND_OLD_IMAGES and NEW_IMAGE streams only. Every image holds an excluded
    attribute (``secret``) and one of the legacy global tables' (``aws:rep:updateregion``)."""

    def __init__(self, view: str, load_starts: dt.datetime) -> None:
        self.view = view
        self.make = RecordMaker()
        self.items = Items()
        self.values: dict[str, int] = {}
        self.load_starts = load_starts
        for pk in BEFORE_LOAD:
            self.values[pk] = 1
            self.items.items[pk] = self.image(pk, 1)

    def image(self, pk: str, v: int) -> dict[str, Any]:
        return {
            "pk": {"S": pk},
            "v": {"N": str(v)},
            "secret": {"S": f"s3cr3t-{pk}"},
            "aws:rep:updateregion": {"S": "eu-west-1"},
        }

    def _record(self, record: dict[str, Any]) -> dict[str, Any]:
        body = record["dynamodb"]
        body["StreamViewType"] = self.view
        if self.view != "NEW_AND_OLD_IMAGES":
            body.pop("OldImage", None)
        if self.view not in VIEW_TYPES_WITH_NEW_IMAGE:
            body.pop("NewImage", None)
        return record

    def put(self, pk: str, v: int, event: str = "MODIFY") -> dict[str, Any]:
        self.values[pk] = v
        self.items.items[pk] = self.image(pk, v)
        return self._record(self.make.raw(event, {"pk": {"S": pk}}, self.image(pk, v)))

    def expire(self, pk: str, *, created_at: dt.datetime | None = None) -> dict[str, Any]:
        """The REMOVE DynamoDB's TTL makes (the item's old image where the stream carries one)."""
        record = self.make.remove(pk)
        record["userIdentity"] = copy.deepcopy(TTL_IDENTITY)
        record["dynamodb"]["OldImage"] = self.image(pk, self.values.pop(pk, 1))
        self.items.items.pop(pk, None)
        if created_at is not None:
            record["dynamodb"]["ApproximateCreationDateTime"] = created_at
        return self._record(record)

    def remove(self, pk: str) -> dict[str, Any]:
        """An application's delete."""
        self.values.pop(pk, None)
        self.items.items.pop(pk, None)
        record = self.make.remove(pk)
        record["dynamodb"]["OldImage"] = self.image(pk, 1)
        return self._record(record)

    def phases(self) -> Iterator[list[dict[str, Any]]]:
        """Each phase's records, the items changed as they say once the phase is taken."""
        yield [
            # Older than the load: seen, skipped (the scan read its effect).
            self.expire("ancient", created_at=self.load_starts - dt.timedelta(hours=2)),
            self.put("updated", 2),
            self.put("marked_later", 2),
            self.put("fresh", 1, "INSERT"),
            # A number key in a table keyed by a string: rejected, kept whole (but for `secret`).
            self._record(self.make.raw("INSERT", {"pk": {"N": "7"}}, {"pk": {"N": "7"}, "secret": {"S": "s3cr3t"}})),
        ]
        yield [
            self.expire("expired"),
            self.expire("missing"),  # the scan did not copy it: only its old image holds it
            self.put("updated", 3),
            self.expire("updated"),  # updated, then expired, in one batch
            self.expire("marked_later"),  # its last change was in the batch before
            self.expire("recreated"),
            self.remove("plain"),
        ]
        yield [
            self.put("recreated", 2, "INSERT"),  # created again after it expired
            self.expire("again"),
            self.put("again", 2, "INSERT"),  # expired and created again in one batch
            self.put("steady", 2),
        ]


class OneScan:
    """Scan as DynamoDB answers it: one page, the items ``scanned``; ``during`` runs before the page is read."""

    def __init__(self, scanned: list[dict[str, Any]], during: Callable[[], None] = lambda: None) -> None:
        self.scanned = scanned
        self.during = during

    def scan(self, **request: Any) -> dict[str, Any]:
        self.during()
        return {
            "Items": copy.deepcopy(self.scanned),
            "ConsumedCapacity": {"TableName": request["TableName"], "CapacityUnits": 1.0},
        }


class Follower:
    """A TableReplicator in a thread, as ``podyn --changes`` runs it; beside a load (``load.Beside``) it captures
    the table's stream into its spool, applies the spool once the table is loaded, and replicates on."""

    def __init__(self, replicator: TableReplicator) -> None:
        self.replicator = replicator
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name=f"test-{replicator.spec.table}", daemon=True)

    def _run(self) -> None:
        try:
            self.replicator.run()
        except BaseException as exc:  # handed to the test
            self.error = exc

    def start(self) -> None:
        self.thread.start()

    def failure(self) -> Any:
        return self.error

    def end(self, loaded: bool) -> None:
        if not loaded:
            self.halt()

    def halt(self) -> None:
        self.replicator.stop.set()
        self.thread.join(TIMEOUT)
        assert not self.thread.is_alive()


def table_json(url: str, spec: TableSpec) -> dict[str, dict[str, Any]]:
    """Every row whole (every column, the mark included), by key."""
    found = query(url, f"SELECT pk, to_jsonb(t) FROM public.{spec.table} t")
    return {pk: row for pk, row in found}


def columns_of(url: str, spec: TableSpec) -> list[tuple[str, str]]:
    found = query(
        url,
        """SELECT column_name, data_type FROM information_schema.columns
           WHERE table_schema = %s AND table_name = %s ORDER BY column_name""",
        (spec.schema, spec.table),
    )
    return [(str(name), str(kind)) for name, kind in found]


TTL_COUNTS = ("ttl_deletes_seen", "ttl_deletes_applied", "ttl_deletes_kept", "ttl_deletes_marked", "expired_column")


def ttl_counts(url: str, spec: TableSpec) -> tuple[Any, ...]:
    return query(url, f"SELECT {', '.join(TTL_COUNTS)} FROM podyn.tables WHERE target_table = %s", (spec.table,))[0]


def rejected_items(url: str, spec: TableSpec) -> list[tuple[Any, ...]]:
    return query(url, "SELECT attribute_name, item FROM podyn.rejected WHERE target_table = %s", (spec.table,))


def sequence(records: list[dict[str, Any]]) -> str:
    return str(records[-1]["dynamodb"]["SequenceNumber"])


def shard_checkpoint(url: str, spec: TableSpec) -> str | None:
    found = query(url, "SELECT sequence_number FROM podyn.shards WHERE target_table = %s", (spec.table,))
    return str(found[0][0]) if found and found[0][0] is not None else None


@pytest.mark.parametrize("view", ["NEW_AND_OLD_IMAGES", "NEW_IMAGE", "KEYS_ONLY"])
@pytest.mark.parametrize("policy", list(TtlPolicy), ids=[p.value for p in TtlPolicy])
def test_ttl_deletes_captured_during_a_load_end_as_the_stream_path_applies_them(
    setup: Setup, policy: TtlPolicy, view: str
) -> None:
    """The same records, in the same batches, reach two tables loaded with the same items: ``orders`` while it
    loads (captured into its spool, which is applied once the load is done), ``orders_streamed`` after its load
    (the stream path). Both end alike, row for row and column for column, with the same TTL counts.

    Real TTL deletes come from DynamoDB's TTL process (userIdentity: type Service, principal
    dynamodb.amazonaws.com); DynamoDB Local never expires an item, so the stream is scripted
    (``scripted_streams``), as are Scan and BatchGetItem (the refetch of a KEYS_ONLY stream), answered from the
    items the script changes. Loads, replicators, the spool and PostgreSQL are the real code."""
    url = setup.url
    keep_replication = policy is TtlPolicy.KEEP  # --keep-replication-attributes: in one policy's runs
    exclusions = Exclusions.parse("*.secret", keep_replication_attributes=keep_replication)
    stream = TtlStream(view, dt.datetime.now(dt.UTC))
    scanned = [stream.image(pk, 1) for pk in BEFORE_LOAD if pk != "missing"]
    shards = {spec.table: FakeShard(P, None, [], closed=False) for spec in (SPEC, STREAMED)}
    scripted = {table: ScriptedStreams([shard], Clock()) for table, shard in shards.items()}
    spooled: list[str] = []

    def replicator(spec: TableSpec, schema: TableSchema) -> TableReplicator:
        described = dynamodb.TableDescription(spec, STREAM_ARN, view, item_count=len(scanned), size_bytes=0)
        return TableReplicator(
            described, schema, setup.target, stream.items, scripted[spec.table], threading.Event(),
            ChangeOptions(max_wait=0.05, max_backoff_seconds=0.2, capture=True, ttl_deletes=policy),
            reader_factory(Clock()), selection=exclusions.for_table(spec),
        )  # fmt: skip

    def loaded(spec: TableSpec, schema: TableSchema, scan: OneScan, beside: Any = None) -> None:
        described = dynamodb.TableDescription(spec, STREAM_ARN, view, item_count=len(scanned), size_bytes=0)
        options = LoadOptions(segments=1, connections=1)
        selection = exclusions.for_table(spec)
        load_table(described, schema, setup.target, scan, options, selection=selection, beside=beside)

    def during_the_load() -> None:
        """Each phase to both streams at once, read by both before the next: the same batches on both paths."""
        for records in stream.phases():
            for table, shard in shards.items():
                with scripted[table].lock:
                    shard.records.extend(copy.deepcopy(records))
            last = sequence(records)
            for spec in (SPEC, STREAMED):

                def read(spec: TableSpec = spec, last: str = last) -> bool:
                    return shard_checkpoint(url, spec) == last

                wait_until(read, f"{spec.table} read up to {last}")
        spooled.extend(str(image) for (image,) in query(url, "SELECT image::text FROM podyn.spool"))
        assert tables_row(url, "state") == ("loading",) and spooled

    streamed_schema = setup.target.prepare_table(STREAMED, create=True, citus=False)
    loaded(STREAMED, streamed_schema, OneScan(scanned))
    streamed = Follower(replicator(STREAMED, streamed_schema))
    streamed.start()
    wait_until(lambda: query(url, "SELECT state FROM podyn.tables WHERE target_table = %s", (STREAMED.table,))
               == [("live",)], "the streamed table live")  # fmt: skip
    capture = Follower(replicator(SPEC, setup.schema))
    try:
        loaded(SPEC, setup.schema, OneScan(scanned, during_the_load), capture)
        wait_until(lambda: tables_row(url, "state") == ("live",) and spool_count(url) == 0, "the spool applied")
    finally:
        capture.halt()
        streamed.halt()
    assert capture.error is None and streamed.error is None

    # The spooled table ends as the streamed one: every row, every column, the same TTL counts and rejects.
    expected = table_json(url, STREAMED)
    assert table_json(url, SPEC) == expected
    assert columns_of(url, SPEC) == columns_of(url, STREAMED)
    assert ttl_counts(url, SPEC) == ttl_counts(url, STREAMED)
    assert rejected_items(url, SPEC) == rejected_items(url, STREAMED) != []
    # Excluded attributes never reached the spool; global tables' attributes only with --keep-replication-attributes.
    assert not any("s3cr3t" in image for image in spooled)
    assert any("aws:rep:updateregion" in image for image in spooled) is keep_replication
    assert "s3cr3t" not in str(rejected_items(url, SPEC))

    # And what the stream path made of the records is what the policy says.
    seen, applied, kept, marked, mark_column = ttl_counts(url, SPEC)
    assert (seen, applied + kept + marked) == (7, 6)  # the one older than the load is seen and skipped
    assert {TtlPolicy.DELETE: applied, TtlPolicy.KEEP: kept, TtlPolicy.MARK: marked}[policy] == 6
    assert (mark_column is not None) is (policy is TtlPolicy.MARK)
    assert ("aws:rep:updateregion" in dict(columns_of(url, SPEC))) is keep_replication
    assert int(expected["recreated"]["v"]) == int(expected["again"]["v"]) == 2
    if policy is TtlPolicy.DELETE:
        assert not {"expired", "missing", "updated", "marked_later"} & expected.keys()
    else:
        assert int(expected["expired"]["v"]) == 1  # kept as the item was when it expired
        assert ("missing" in expected) is (view == "NEW_AND_OLD_IMAGES")  # only its old image knew it
        assert int(expected["marked_later"]["v"]) == 2  # its change in the batch before, not the scan's value
    if policy is TtlPolicy.MARK:
        assert expected["expired"][mark_column] is not None and expected["marked_later"][mark_column] is not None
        assert expected["recreated"][mark_column] is None and expected["steady"][mark_column] is None
