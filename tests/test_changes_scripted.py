"""The real TableReplicator applying a scripted stream to a real PostgreSQL.

DynamoDB Local keeps one shard per table and never splits, closes, trims, expires iterators or deletes a stream
behind the reader's back, so these paths cannot be reached through it (``test_changes.py`` covers what it can,
through the CLI). Here the ``dynamodbstreams`` client is replaced at the API boundary by the scripted one in
``scripted_streams.py`` (boto3's response shapes, ``ClientError`` failures); everything from the
:class:`StreamReader` down to PostgreSQL is the real code, running in a thread as ``podyn --changes`` runs it.

No change applied twice is proven with more than the final state: a trigger logs every row version the target
table receives, and every scripted image carries a counter that grows per key, so a record applied twice, or out
of order, shows as a counter that does not increase.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import psycopg
import pytest
from psycopg import sql
from scripted_streams import (
    STREAM_ARN,
    TABLE,
    Clock,
    FakeShard,
    RecordMaker,
    ScriptedStreams,
    final_state,
    seqs,
    shard_id,
)

from podyn_py.changes import ChangeOptions, TableReplicator
from podyn_py.core.positions import ShardPosition
from podyn_py.core.schema import KeyAttribute, TableSchema, TableSpec
from podyn_py.errors import StreamGapError
from podyn_py.source import dynamodb
from podyn_py.source.streams import StreamReader
from podyn_py.target.postgres import PostgresTarget

SPEC = TableSpec(source=TABLE, schema="public", table="orders", partition_key=KeyAttribute("pk", "S"))
DESCRIPTION = dynamodb.TableDescription(SPEC, STREAM_ARN, "NEW_AND_OLD_IMAGES", item_count=0, size_bytes=0)
OTHER_ARN = STREAM_ARN.replace("2024-05-01T10:00:00.000", "2024-06-01T08:30:00.000")
OPTIONS = ChangeOptions(max_wait=0.05, max_backoff_seconds=0.2)
TIMEOUT = 10.0

P, C1, C2, G = (shard_id(n) for n in (1, 2, 3, 4))

# --- the table, the replicator, and what PostgreSQL holds ------------------------------------------------------


@dataclass
class Setup:
    url: str
    target: PostgresTarget
    schema: TableSchema
    clock: Clock


@pytest.fixture
def table(pg_url: str) -> Setup:
    target = PostgresTarget(pg_url)
    schema = target.prepare_table(SPEC, create=True, citus=False)
    with psycopg.connect(pg_url, autocommit=True) as conn:
        # to_jsonb: the counter column does not exist yet; replication adds it with the first image.
        conn.execute(
            sql.SQL(
                """CREATE TABLE audit (n bigserial PRIMARY KEY, pk text, counter numeric, op text);
                   CREATE FUNCTION audit_row() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN
                       INSERT INTO audit (pk, counter, op)
                       VALUES (NEW.pk, (to_jsonb(NEW) ->> 'counter')::numeric, TG_OP);
                       RETURN NEW;
                   END $$;
                   CREATE TRIGGER audit AFTER INSERT OR UPDATE ON {} FOR EACH ROW EXECUTE FUNCTION audit_row();"""
            ).format(sql.Identifier(SPEC.schema, SPEC.table))
        )
    return Setup(pg_url, target, schema, Clock())


def replicator(
    setup: Setup,
    streams: ScriptedStreams,
    *,
    max_records: int = 1000,
    description: dynamodb.TableDescription = DESCRIPTION,
    worker: str | None = None,
) -> TableReplicator:
    def reader(client: Any, stream_arn: str, positions: dict[str, ShardPosition], only: frozenset[str]) -> StreamReader:
        return StreamReader(
            client,
            stream_arn,
            positions,
            only=only,
            max_records=max_records,
            relist_seconds=0.2,
            idle_min=0.005,
            idle_max=0.02,
            retry_attempts=3,
            clock=setup.clock,
            sleep=setup.clock.sleep,
        )

    # The DynamoDB client is only for KEYS_ONLY refetches: none here.
    return TableReplicator(
        description, setup.schema, setup.target, None, streams, threading.Event(), OPTIONS, reader, worker=worker
    )


class Running:
    """``TableReplicator.run()`` in a thread, as ``podyn --changes`` runs one per table."""

    def __init__(self, replicator: TableReplicator) -> None:
        self.replicator = replicator
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="test-changes", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            self.replicator.run()
        except BaseException as exc:  # handed to the test
            self.error = exc

    def stop(self) -> None:
        """Ask it to stop, wait, and re-raise what it raised."""
        self.replicator.stop.set()
        self.thread.join(TIMEOUT)
        assert not self.thread.is_alive(), "run() did not return after stop was set"
        if self.error is not None:
            raise self.error

    def failure(self) -> BaseException:
        """The error run() ended with (it must end by itself)."""
        self.thread.join(TIMEOUT)
        if self.thread.is_alive():
            self.replicator.stop.set()
            self.thread.join(TIMEOUT)
            raise AssertionError("run() kept running; expected it to fail")
        assert self.error is not None, "run() returned without an error"
        return self.error


@pytest.fixture
def start() -> Iterator[Callable[[TableReplicator], Running]]:
    started: list[Running] = []

    def run(replicator: TableReplicator) -> Running:
        started.append(Running(replicator))
        return started[-1]

    yield run
    for each in started:  # before the database is dropped
        each.replicator.stop.set()
        each.thread.join(TIMEOUT)


def wait_until(condition: Callable[[], bool], what: str, running: Running | None = None) -> None:
    deadline = time.monotonic() + TIMEOUT
    while not condition():
        if running is not None and not running.thread.is_alive():
            raise AssertionError(f"run() ended before {what}: {running.error!r}") from running.error
        assert time.monotonic() < deadline, f"not {what} after {TIMEOUT} s"
        time.sleep(0.02)


def query(url: str, statement: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    with psycopg.connect(url, autocommit=True) as conn:
        return conn.execute(statement, params).fetchall()


def rows(url: str) -> dict[str, int]:
    """pk → counter of every row of the target table."""
    found = query(url, "SELECT pk, (to_jsonb(o) ->> 'counter')::numeric FROM public.orders o")
    return {pk: int(counter) for pk, counter in found}


@dataclass(frozen=True)
class Checkpoint:
    parent: str | None
    sequence_number: str | None
    finished: bool
    records_applied: int


def checkpoints(url: str) -> dict[str, Checkpoint]:
    found = query(
        url,
        """SELECT shard_id, parent_shard_id, sequence_number, finished, records_applied FROM podyn.shards
           WHERE target_schema = 'public' AND target_table = 'orders' AND stream_arn = %s""",
        (STREAM_ARN,),
    )
    return {shard: Checkpoint(*rest) for shard, *rest in found}


def at(url: str, shard: str, record: dict[str, Any]) -> Callable[[], bool]:
    """Whether ``shard``'s checkpoint has reached ``record``."""

    def reached() -> bool:
        checkpoint = checkpoints(url).get(shard)
        return checkpoint is not None and checkpoint.sequence_number == seqs([record])[0]

    return reached


def audit(url: str) -> list[tuple[str, int]]:
    return [(pk, int(counter)) for pk, counter in query(url, "SELECT pk, counter FROM audit ORDER BY n")]


def assert_applied_once_in_order(url: str) -> list[tuple[str, int]]:
    """Every row version PostgreSQL received has a larger counter than the key's previous one."""
    log = audit(url)
    last: dict[str, int] = {}
    for pk, counter in log:
        assert pk not in last or counter > last[pk], f"{pk}: counter {counter} applied after {last[pk]}: {log}"
        last[pk] = counter
    return log


def table_row(url: str, column: str) -> Any:
    return query(
        url,
        sql.SQL("SELECT {} FROM podyn.tables WHERE target_schema = 'public' AND target_table = 'orders'")
        .format(sql.Identifier(column))
        .as_string(),
    )[0][0]


def set_loaded(setup: Setup, stream_arn: str | None, *, started_hours_ago: float = 0.0) -> None:
    """Record a finished load, started with ``stream_arn`` on the table ``started_hours_ago``."""
    setup.target.begin_load(SPEC, 1, reload=False, stream_arn=stream_arn, stream_view_type="NEW_AND_OLD_IMAGES")
    with setup.target.connect() as conn:  # the load's only page, empty: its commit marks the table loaded
        assert setup.target.write_page(conn, setup.schema, [], [], 0, None, None)
    query(
        setup.url,
        "UPDATE podyn.tables SET load_started_at = now() - %s * interval '1 hour' WHERE target_table = 'orders'"
        " RETURNING 1",
        (started_hours_ago,),
    )


GAP_ADVICE = re.compile(r"re-run with --data", re.IGNORECASE)


# --- shard lineage ------------------------------------------------------------------------------------------------


def test_shard_split_children_are_applied_after_their_parent(table: Setup, start: Any) -> None:
    make = RecordMaker()
    parent = [
        make.put("a", 1, "INSERT"),
        make.put("b", 2, "INSERT"),
        make.put("c", 3, "INSERT"),
        make.put("a", 4),
        make.put("b", 5),
    ]
    child1 = [make.put("a", 6), make.remove("c"), make.put("a", 8)]
    child2 = [make.put("b", 7), make.remove("b")]
    grandchild = [make.put("b", 9, "INSERT")]
    # Listed children first, two to a DescribeStream page: reading in listing order would apply them first.
    streams = ScriptedStreams(
        [
            FakeShard(G, C2, grandchild, closed=False),
            FakeShard(C1, P, child1, closed=False),
            FakeShard(C2, P, child2, closed=True),
            FakeShard(P, None, parent, closed=True),
        ],
        table.clock,
    )
    running = start(replicator(table, streams, max_records=2))

    wait_until(lambda: at(table.url, G, grandchild[-1])() and at(table.url, C1, child1[-1])(), "caught up", running)
    running.stop()

    assert rows(table.url) == final_state(parent + child1 + child2 + grandchild) == {"a": 8, "b": 9}
    assert_applied_once_in_order(table.url)
    assert checkpoints(table.url) == {
        P: Checkpoint(None, seqs(parent)[-1], True, len(parent)),
        C1: Checkpoint(P, seqs(child1)[-1], False, len(child1)),
        C2: Checkpoint(P, seqs(child2)[-1], True, len(child2)),
        G: Checkpoint(C2, seqs(grandchild)[-1], False, len(grandchild)),
    }
    assert table_row(table.url, "changes_applied") == running.replicator.applied > 0


def test_shard_that_splits_while_replicating(table: Setup, start: Any) -> None:
    make = RecordMaker()
    parent = [make.put("a", 1, "INSERT"), make.put("b", 2, "INSERT")]
    streams = ScriptedStreams([FakeShard(P, None, parent, closed=False)], table.clock)
    running = start(replicator(table, streams))
    wait_until(at(table.url, P, parent[-1]), "parent applied", running)

    # The shard rolls over: last writes to the parent, which closes; later ones go to its children.
    last = [make.put("a", 3), make.put("b", 4)]
    child1 = [make.put("a", 5), make.remove("a")]
    child2 = [make.put("b", 6)]
    with streams.lock:
        streams.add(FakeShard(C1, P, child1, closed=False))
        streams.add(FakeShard(C2, P, child2, closed=False))
        parent.extend(last)
        streams.shards[P].closed = True
        # Time for a new listing: the reader sees the children before it reads the parent's last records.
        table.clock.jump(1.0)
    wait_until(lambda: at(table.url, C1, child1[-1])() and at(table.url, C2, child2[-1])(), "caught up", running)
    running.stop()

    assert rows(table.url) == final_state(parent + child1 + child2) == {"b": 6}
    assert_applied_once_in_order(table.url)
    assert checkpoints(table.url)[P] == Checkpoint(None, seqs(parent)[-1], True, 4)


# --- restart ----------------------------------------------------------------------------------------------------


def test_restart_applies_only_the_records_after_the_checkpoint(table: Setup, start: Any) -> None:
    make = RecordMaker()
    records = [make.put("a", 1, "INSERT"), make.put("b", 2, "INSERT"), make.put("a", 3), make.put("b", 4)]
    shards = [FakeShard(P, None, records, closed=False)]
    first = ScriptedStreams(shards, table.clock)
    running = start(replicator(table, first, max_records=1))
    wait_until(at(table.url, P, records[-1]), "first records applied", running)
    running.stop()
    assert audit(table.url) == [("a", 1), ("b", 2), ("a", 3), ("b", 4)]

    more = [make.put("a", 5), make.remove("b"), make.put("b", 7, "INSERT"), make.put("a", 8)]
    records.extend(more)
    second = ScriptedStreams(shards, table.clock)  # a new process: its own client
    running = start(replicator(table, second, max_records=1))
    wait_until(at(table.url, P, records[-1]), "new records applied", running)
    running.stop()

    # One row version per upsert record, each once, in order (max_records=1: no batch compacts two records).
    assert assert_applied_once_in_order(table.url) == [
        ("a", 1), ("b", 2), ("a", 3), ("b", 4), ("a", 5), ("b", 7), ("a", 8)
    ]  # fmt: skip
    assert rows(table.url) == {"a": 8, "b": 7}
    assert [(c["ShardIteratorType"], c.get("SequenceNumber")) for c in second.calls_of("GetShardIterator")][:1] == [
        ("AFTER_SEQUENCE_NUMBER", seqs(records)[3])
    ]
    assert all(c["ShardIteratorType"] != "TRIM_HORIZON" for c in second.calls_of("GetShardIterator"))
    assert checkpoints(table.url)[P] == Checkpoint(None, seqs(records)[-1], False, len(records))
    assert table_row(table.url, "changes_applied") == len(records)


# --- gaps ---------------------------------------------------------------------------------------------------------


def _trim_while_stopped(streams: ScriptedStreams, records: list[dict[str, Any]]) -> None:
    streams.shards[P].trim_horizon = 4  # records[3] is gone: nobody read the stream for 24 hours


def _delete_while_stopped(streams: ScriptedStreams, records: list[dict[str, Any]]) -> None:
    streams.deleted = True


@pytest.mark.parametrize(
    "lose", [_trim_while_stopped, _delete_while_stopped, None], ids=["trimmed", "stream deleted", "trimmed mid-read"]
)
def test_records_gone_after_the_checkpoint_stop_replication_with_the_checkpoint_kept(
    table: Setup, start: Any, lose: Callable[[ScriptedStreams, list[dict[str, Any]]], None] | None
) -> None:
    make = RecordMaker()
    records = [make.put("a", 1, "INSERT"), make.put("b", 2, "INSERT"), make.put("a", 3)]
    later = [make.put("b", 4), make.put("a", 5), make.remove("b")]
    shards = [FakeShard(P, None, records, closed=False)]
    if lose is None:
        # One run: after three records were read (one per call), the oldest four are trimmed before the next call.
        def trim(client: ScriptedStreams, operation: str, params: dict[str, Any], before: int) -> None:
            if operation == "GetRecords" and before == 3:
                client.shards[P].trim_horizon = 4

        records.extend(later)
        streams = ScriptedStreams(shards, table.clock, hooks=[trim])
        running = start(replicator(table, streams, max_records=1))
    else:
        first = ScriptedStreams(shards, table.clock)
        running = start(replicator(table, first, max_records=1))
        wait_until(at(table.url, P, records[-1]), "first records applied", running)
        running.stop()
        records.extend(later)
        streams = ScriptedStreams(shards, table.clock)
        lose(streams, records)
        running = start(replicator(table, streams, max_records=1))

    error = running.failure()

    assert isinstance(error, StreamGapError), repr(error)
    assert GAP_ADVICE.search(str(error)), str(error)
    assert error.table == TABLE
    assert streams.failures[-1] in ("TrimmedDataAccessException", "ResourceNotFoundException")
    # The checkpoint of the last record applied before the loss is kept, and nothing after it was applied.
    assert checkpoints(table.url) == {P: Checkpoint(None, seqs(records)[2], False, 3)}
    assert rows(table.url) == final_state(records[:3])
    assert audit(table.url) == [("a", 1), ("b", 2), ("a", 3)]


def test_expired_iterator_mid_read_is_refreshed_without_losing_or_doubling(table: Setup, start: Any) -> None:
    make = RecordMaker()
    records = [make.put(f"k{n}", n, "INSERT") for n in range(8)]

    def stall(client: ScriptedStreams, operation: str, params: dict[str, Any], before: int) -> None:
        if operation == "GetRecords" and before == 2:
            table.clock.jump(16 * 60)  # applying the last batch took longer than an iterator lives

    streams = ScriptedStreams([FakeShard(P, None, records, closed=False)], table.clock, hooks=[stall])
    running = start(replicator(table, streams, max_records=2))
    wait_until(at(table.url, P, records[-1]), "caught up", running)
    running.stop()

    assert streams.failures == ["ExpiredIteratorException"]
    assert [(c["ShardIteratorType"], c.get("SequenceNumber")) for c in streams.calls_of("GetShardIterator")] == [
        ("TRIM_HORIZON", None),
        ("AFTER_SEQUENCE_NUMBER", seqs(records)[3]),
    ]
    assert sorted(audit(table.url)) == sorted((f"k{n}", n) for n in range(8))  # each once
    assert rows(table.url) == final_state(records)
    assert checkpoints(table.url)[P] == Checkpoint(None, seqs(records)[-1], False, len(records))


def test_disabled_stream_is_drained_then_stops_with_a_gap(table: Setup, start: Any) -> None:
    make = RecordMaker()
    records = [make.put("a", 1, "INSERT"), make.put("b", 2, "INSERT")]
    streams = ScriptedStreams([FakeShard(P, None, records, closed=False)], table.clock)
    running = start(replicator(table, streams))
    wait_until(at(table.url, P, records[-1]), "first records applied", running)

    # The stream is disabled: its shard closes after the last writes, and no child follows.
    with streams.lock:
        records.extend([make.put("a", 3), make.remove("b")])
        streams.shards[P].closed = True
        streams.status = "DISABLED"
    error = running.failure()

    assert isinstance(error, StreamGapError), repr(error)
    assert "disabled" in str(error)
    assert GAP_ADVICE.search(str(error)), str(error)
    assert rows(table.url) == final_state(records) == {"a": 3}
    assert checkpoints(table.url) == {P: Checkpoint(None, seqs(records)[-1], True, len(records))}


# --- bad records --------------------------------------------------------------------------------------------------


def test_malformed_records_are_rejected_and_the_rest_of_the_batch_applies(table: Setup, start: Any) -> None:
    make = RecordMaker()
    records = [
        make.put("a", 1, "INSERT"),
        make.raw("INSERT", {"id": {"S": "x"}}, {"id": {"S": "x"}}),  # not this table's key
        make.put("b", 2, "INSERT"),
        make.raw("UPDATE", {"pk": {"S": "c"}}, {"pk": {"S": "c"}}),  # no such event
        make.put("d", 3, "INSERT", amount={"N": "12,5"}),  # an item whose value DynamoDB would not hold
        make.put("a", 4),
    ]
    streams = ScriptedStreams([FakeShard(P, None, records, closed=False)], table.clock)
    running = start(replicator(table, streams))
    wait_until(at(table.url, P, records[-1]), "caught up", running)
    running.stop()

    assert rows(table.url) == {"a": 4, "b": 2}
    rejected = query(
        table.url,
        """SELECT item_key, attribute_name, error, item FROM podyn.rejected
           WHERE target_schema = 'public' AND target_table = 'orders' ORDER BY id""",
    )
    by_error = {error: (key, attribute, item) for key, attribute, error, item in rejected}
    assert len(rejected) == 3, rejected
    key_error = next(e for e in by_error if "without the table's key" in e)
    assert by_error[key_error][2]["eventID"] == records[1]["eventID"]  # the record, kept whole
    event_error = next(e for e in by_error if "UPDATE" in e)
    assert by_error[event_error][0] == "pk=c" and by_error[event_error][2]["eventName"] == "UPDATE"
    value_error = next(e for e in by_error if "12,5" in e)
    assert by_error[value_error][:2] == ("pk=d", "amount")
    assert by_error[value_error][2]["pk"] == {"S": "d"}  # the item
    assert all(TABLE in e for e in by_error)
    assert checkpoints(table.url)[P] == Checkpoint(None, seqs(records)[-1], False, len(records))
    # The rejected value made no column: its tag (N) must not decide the type of a column no valid value has.
    columns = query(table.url, "SELECT attribute_name FROM podyn.columns WHERE target_table = 'orders'")
    assert ("amount",) not in columns, columns


@pytest.mark.parametrize(
    "bad_key", [{"S": None}, {"N": "5"}], ids=["string key that is not a string", "number for a string key"]
)
def test_remove_with_a_malformed_key_is_rejected_and_the_rest_applies(
    table: Setup, start: Any, bad_key: dict[str, Any]
) -> None:
    make = RecordMaker()
    records = [make.put("a", 1, "INSERT"), make.remove("x"), make.put("b", 2, "INSERT")]
    bad = records[1]
    bad["dynamodb"]["Keys"] = bad["dynamodb"]["OldImage"] = {"pk": bad_key}
    streams = ScriptedStreams([FakeShard(P, None, records, closed=False)], table.clock)
    running = start(replicator(table, streams))
    wait_until(at(table.url, P, records[-1]), "caught up", running)
    running.stop()

    assert rows(table.url) == {"a": 1, "b": 2}
    rejected = query(table.url, "SELECT error, item FROM podyn.rejected")
    assert [item["eventID"] for _, item in rejected] == [bad["eventID"]]


# --- two processes ------------------------------------------------------------------------------------------------


def test_two_replicators_on_one_table_apply_each_record_once(table: Setup, start: Any) -> None:
    """Two workers (as two processes would be) on a parent and its child: each shard is leased by one at a time, the
    child only once the parent is finished; every record applied once, in order."""
    make = RecordMaker()
    parent = [make.put("abc"[n % 3], n, "MODIFY") for n in range(1, 16)]
    child = [make.put("abc"[n % 3], n, "MODIFY") for n in range(16, 31)]
    shards = [FakeShard(C1, P, child, closed=False), FakeShard(P, None, parent, closed=True)]

    one = start(replicator(table, ScriptedStreams(shards, table.clock), max_records=1, worker="one"))
    two = start(replicator(table, ScriptedStreams(shards, table.clock), max_records=1, worker="two"))
    wait_until(at(table.url, C1, child[-1]), "caught up", one)
    one.stop()
    two.stop()

    log = assert_applied_once_in_order(table.url)
    assert len(log) == len(parent + child)  # one row version per record: none applied twice
    assert rows(table.url) == final_state(parent + child) == {"a": 30, "b": 28, "c": 29}
    assert one.replicator.applied + two.replicator.applied == len(parent + child)
    assert checkpoints(table.url) == {
        P: Checkpoint(None, seqs(parent)[-1], True, len(parent)),
        C1: Checkpoint(P, seqs(child)[-1], False, len(child)),
    }
    assert table_row(table.url, "changes_applied") == len(parent + child)


# --- where replication starts -------------------------------------------------------------------------------------


@pytest.mark.parametrize("loaded_with", [OTHER_ARN, None], ids=["another stream", "no stream"])
def test_table_loaded_with_another_stream_is_a_gap(table: Setup, start: Any, loaded_with: str | None) -> None:
    set_loaded(table, loaded_with)
    streams = ScriptedStreams([FakeShard(P, None, [RecordMaker().put("a", 1, "INSERT")], closed=False)], table.clock)

    error = start(replicator(table, streams)).failure()

    assert isinstance(error, StreamGapError), repr(error)
    assert str(loaded_with or "no stream") in str(error)
    assert GAP_ADVICE.search(str(error))
    assert streams.calls == []  # nothing was read
    assert table_row(table.url, "stream_arn") == loaded_with  # nor recorded


def test_load_older_than_the_stream_retention_without_checkpoints_is_a_gap(table: Setup, start: Any) -> None:
    set_loaded(table, STREAM_ARN, started_hours_ago=25)
    streams = ScriptedStreams([FakeShard(P, None, [], closed=False)], table.clock)

    error = start(replicator(table, streams)).failure()

    assert isinstance(error, StreamGapError), repr(error)
    assert "25.0 hours" in str(error)
    assert GAP_ADVICE.search(str(error))
    assert streams.calls == []


def test_old_load_with_checkpoints_resumes(table: Setup, start: Any) -> None:
    set_loaded(table, STREAM_ARN)
    make = RecordMaker()
    records = [make.put("a", 1, "INSERT")]
    shards = [FakeShard(P, None, records, closed=False)]
    running = start(replicator(table, ScriptedStreams(shards, table.clock)))
    wait_until(at(table.url, P, records[-1]), "applied", running)
    running.stop()

    # Two days later (replication ran all along, or stopped within the retention): the checkpoints count.
    query(table.url, "UPDATE podyn.tables SET load_started_at = now() - interval '48 hours' RETURNING 1")
    records.append(make.put("a", 2))
    running = start(replicator(table, ScriptedStreams(shards, table.clock)))
    wait_until(at(table.url, P, records[-1]), "applied after the restart", running)
    running.stop()

    assert rows(table.url) == {"a": 2}


def test_after_a_load_records_older_than_its_start_are_skipped(table: Setup, start: Any) -> None:
    set_loaded(table, STREAM_ARN)
    before_load = dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)
    old = RecordMaker(created_at=lambda: before_load)
    new = RecordMaker(first_sequence=old.first_sequence + 10**9)
    records = [old.put("a", 1, "INSERT"), old.put("b", 2, "INSERT"), new.put("a", 3), new.put("c", 4, "INSERT")]
    streams = ScriptedStreams([FakeShard(P, None, records, closed=False)], table.clock)
    running = start(replicator(table, streams))
    wait_until(at(table.url, P, records[-1]), "caught up", running)
    running.stop()

    # Their effect is in the loaded data (here: none, the table is empty).
    assert rows(table.url) == {"a": 3, "c": 4}
    assert streams.calls_of("GetShardIterator")[0]["ShardIteratorType"] == "TRIM_HORIZON"
    assert checkpoints(table.url)[P] == Checkpoint(None, seqs(records)[-1], False, len(records))
    replay_from = table_row(table.url, "replay_from")
    assert replay_from is not None and before_load < replay_from < dt.datetime.now(dt.UTC)


def test_never_loaded_table_starts_at_the_trim_horizon_with_a_warning(
    table: Setup, start: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="podyn_py.changes")
    make = RecordMaker()
    records = [make.put("a", 1, "INSERT"), make.put("b", 2, "INSERT"), make.put("a", 3), make.put("c", 4, "INSERT")]
    # The oldest record is already trimmed: the first one readable is where replication starts.
    streams = ScriptedStreams([FakeShard(P, None, records, closed=False, trim_horizon=1)], table.clock)
    running = start(replicator(table, streams))
    wait_until(at(table.url, P, records[-1]), "caught up", running)
    wait_until(lambda: table_row(table.url, "state") == "live", "live", running)
    running.stop()

    assert [c["ShardIteratorType"] for c in streams.calls_of("GetShardIterator")] == ["TRIM_HORIZON"]
    assert rows(table.url) == final_state(records[1:]) == {"a": 3, "b": 2, "c": 4}
    assert any(r.levelno == logging.WARNING and "never loaded" in r.getMessage() for r in caplog.records)
    assert table_row(table.url, "stream_arn") == STREAM_ARN
    assert table_row(table.url, "replay_from") is None
