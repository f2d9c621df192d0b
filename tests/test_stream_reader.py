"""The stream reader against scripted DynamoDB Streams responses.

DynamoDB Local keeps one shard per table and never splits, closes, trims or throttles, so the shard lineage
and failure paths are exercised here by driving the REAL :class:`StreamReader` with a scripted stand-in for the
``dynamodbstreams`` client at the API boundary. The stand-in answers with boto3's response shapes (paginated
DescribeStream, opaque iterators that expire after 15 minutes, records built from real stream events in
``tests/data/stream-events``) and fails by raising ``botocore.exceptions.ClientError`` with the error bodies
the service sends. Time is simulated: the reader's clock and sleep are injected, so nothing waits.
``test_stream_reader_local.py`` covers the same reader against DynamoDB Local through boto3.
"""

from __future__ import annotations

import copy
import datetime as dt
import itertools
import json
import logging
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import EndpointConnectionError
from scripted_streams import (
    STREAM_ARN,
    TABLE,
    FakeShard,
    ScriptedStreams,
    client_error,
    limit_exceeded,
    seqs,
    shard_id,
)

from podyn_py.core.positions import ShardPosition
from podyn_py.errors import SourceError, StreamGapError, TransientSourceError
from podyn_py.source.streams import ShardBatch, StreamReader

DATA = Path(__file__).parent / "data" / "stream-events"


def _load_templates() -> list[dict[str, Any]]:
    templates = []
    for path in sorted(DATA.glob("*.json")):
        for record in json.loads(path.read_text())["Records"]:
            # GetRecords returns no eventSourceARN (Lambda adds it) and parses the timestamp into a datetime.
            record = {k: v for k, v in record.items() if k != "eventSourceARN"}
            image = record["dynamodb"]
            image["ApproximateCreationDateTime"] = dt.datetime.fromtimestamp(
                image["ApproximateCreationDateTime"], tz=dt.UTC
            )
            templates.append(record)
    return templates


TEMPLATES = _load_templates()
_record_counter = itertools.count()


def make_records(first: int, count: int, step: int = 100) -> list[dict[str, Any]]:
    """``count`` real stream records with increasing sequence numbers from ``first``."""
    records = []
    for k in range(count):
        n = next(_record_counter)
        record = copy.deepcopy(TEMPLATES[n % len(TEMPLATES)])
        record["eventID"] = f"{n:08x}a1b2c3d4e5f6a7b8c9d0e1f2"
        record["dynamodb"]["SequenceNumber"] = str(first + k * step)
        records.append(record)
    return records


# ---------------------------------------------------------------------------------------------------------------
# Simulated time and helpers


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        assert seconds >= 0
        self.sleeps.append(seconds)
        self.now += seconds


def make_reader(
    client: ScriptedStreams,
    clock: FakeClock,
    positions: dict[str, ShardPosition] | None = None,
    **options: Any,
) -> StreamReader:
    return StreamReader(client, STREAM_ARN, positions or {}, clock=clock, sleep=clock.sleep, **options)


def read_until(
    reader: StreamReader, done: Callable[[list[ShardBatch]], bool], *, max_reads: int = 500, max_wait: float = 1.0
) -> list[ShardBatch]:
    batches: list[ShardBatch] = []
    for _ in range(max_reads):
        batches.extend(reader.read(max_wait=max_wait))
        if done(batches):
            return batches
    raise AssertionError(f"not done after {max_reads} reads; got {len(batches)} batches")


def delivered(batches: Iterable[ShardBatch]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for batch in batches:
        if batch.records:
            out.setdefault(batch.shard_id, []).extend(seqs(batch.records))
    return out


def has_all(expected: dict[str, list[str]]) -> Callable[[list[ShardBatch]], bool]:
    def done(batches: list[ShardBatch]) -> bool:
        got = delivered(batches)
        return all(len(got.get(s, [])) >= len(v) for s, v in expected.items())

    return done


def first_index(batches: Sequence[ShardBatch], shard: str) -> int:
    return next(i for i, b in enumerate(batches) if b.shard_id == shard)


def finish_index(batches: Sequence[ShardBatch], shard: str) -> int:
    return next(i for i, b in enumerate(batches) if b.shard_id == shard and b.position.finished)


def latest_positions(batches: Iterable[ShardBatch]) -> dict[str, ShardPosition]:
    """What a caller that checkpoints every batch it applied has stored."""
    return {b.shard_id: b.position for b in batches}


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


# ---------------------------------------------------------------------------------------------------------------
# Shard lineage


A, B, C, D, Y, Y2, Z = (shard_id(n) for n in (1, 2, 3, 4, 5, 6, 7))


def lineage_topology() -> list[FakeShard]:
    """A closed parent A split into B (closed, itself parent of grandchild D) and open C; a shard Y whose parent Z
    was trimmed away, with an open child Y2. Listed children first, three to a DescribeStream page."""
    return [
        FakeShard(D, B, make_records(400_000_000_000_000_000_000, 2), closed=False),
        FakeShard(C, A, make_records(300_000_000_000_000_000_000, 3), closed=False),
        FakeShard(B, A, make_records(200_000_000_000_000_000_000, 5), closed=True),
        FakeShard(Y2, Y, make_records(600_000_000_000_000_000_000, 1), closed=False),
        FakeShard(A, None, make_records(100_000_000_000_000_000_000, 3), closed=True),
        FakeShard(Y, Z, make_records(500_000_000_000_000_000_000, 4), closed=True),
        FakeShard(Z, None, make_records(50_000_000_000_000_000_000, 2), closed=True, listed=False),
    ]


def test_children_are_read_only_after_their_parent_finished(clock: FakeClock) -> None:
    fake = ScriptedStreams(lineage_topology(), clock, page_size=2)
    expected = {s.shard_id: seqs(s.records) for s in fake.shards.values() if s.listed}
    reader = make_reader(fake, clock, max_records=2)

    batches = read_until(reader, has_all(expected))

    assert delivered(batches) == expected  # every record once, each shard in order
    for parent, child in [(A, B), (A, C), (B, D), (Y, Y2)]:
        # The child's first batch (its start, before any of its records) comes after the parent's last.
        assert finish_index(batches, parent) < first_index(batches, child)
        assert max(i for i, b in enumerate(batches) if b.shard_id == parent) < first_index(batches, child)
    assert Z not in delivered(batches)
    iterator_calls = {c["ShardId"]: c for c in fake.calls_of("GetShardIterator")}
    assert iterator_calls[Y]["ShardIteratorType"] == "TRIM_HORIZON"  # parent trimmed, nothing held: from the start
    assert Z not in iterator_calls
    # Six listed shards at two per page: three DescribeStream pages for the first listing.
    first_listing = fake.calls_of("DescribeStream")[:3]
    assert [c["ExclusiveStartShardId"] for c in first_listing] == [None, C, Y2]
    positions = reader.positions()
    assert {s: p.finished for s, p in positions.items()} == {A: True, B: True, Y: True, C: False, D: False, Y2: False}
    assert all(positions[s].sequence_number == expected[s][-1] for s in expected)
    assert positions[D] == ShardPosition(D, B, expected[D][-1], False)


def test_parent_and_child_in_one_read_keep_their_order(clock: FakeClock) -> None:
    fake = ScriptedStreams(
        [
            FakeShard(A, None, make_records(100_000, 1), closed=True),
            FakeShard(B, A, make_records(200_000, 1), closed=False),
        ],
        clock,
    )
    reader = make_reader(fake, clock)

    first = reader.read(max_wait=0)

    # A starts, delivers its record and finishes; B starts right after, in the same list (one commit).
    assert [(b.shard_id, len(b.records), b.position.finished, b.position.sequence_number) for b in first] == [
        (A, 0, False, None),
        (A, 1, True, seqs(fake.shards[A].records)[0]),
        (B, 0, False, None),
    ]
    assert fake.calls_of("GetRecords") and all(p[0] == A for p in fake.polls)
    second = reader.read(max_wait=0)
    assert [(b.shard_id, seqs(b.records)) for b in second] == [(B, seqs(fake.shards[B].records))]


def test_shard_that_closes_between_listings_makes_its_children_known_at_once(clock: FakeClock) -> None:
    fake = ScriptedStreams([FakeShard(A, None, make_records(100_000, 2), closed=False)], clock)
    reader = make_reader(fake, clock, relist_seconds=30.0)
    read_until(reader, has_all({A: seqs(fake.shards[A].records)}))
    assert len(fake.calls_of("DescribeStream")) == 1
    # The shard rolls over: A closes, B takes over; the reader learns it from GetRecords, not the listing.
    fake.shards[A].closed = True
    fake.add(FakeShard(B, A, make_records(200_000, 2), closed=False))

    batches = read_until(reader, has_all({B: seqs(fake.shards[B].records)}))

    assert clock.now < 30.0
    assert finish_index(batches, A) < first_index(batches, B)


def test_shard_without_records_that_finishes_yields_an_empty_finished_batch(clock: FakeClock) -> None:
    fake = ScriptedStreams(
        [FakeShard(A, None, [], closed=True, first_sequence=100_000), FakeShard(B, A, [], closed=False)], clock
    )
    reader = make_reader(fake, clock)

    batches = reader.read(max_wait=0)

    assert [(b.shard_id, b.records, b.position) for b in batches] == [
        (A, [], ShardPosition(A, None, None, False)),
        (A, [], ShardPosition(A, None, None, True)),
        (B, [], ShardPosition(B, A, None, False)),
    ]
    # Idle polls of the open child hand out nothing more.
    assert read_until(reader, lambda _: clock.now > 20) == []
    assert len([p for p in fake.polls if p[0] == B]) > 1


def test_many_shards_are_all_served_within_the_record_cap(clock: FakeClock) -> None:
    shards = [FakeShard(shard_id(100 + n), None, make_records(10**20 + n * 10**6, 7), closed=False) for n in range(40)]
    fake = ScriptedStreams(shards, clock, page_size=100)
    expected = {s.shard_id: seqs(s.records) for s in shards}
    reader = make_reader(fake, clock, max_records=10)

    per_read: list[int] = []
    got: list[ShardBatch] = []
    while not has_all(expected)(got):
        batches = reader.read(max_wait=1.0)
        per_read.append(sum(len(b.records) for b in batches))
        got.extend(batches)
        assert len(per_read) < 200

    assert delivered(got) == expected
    # The cap is soft: polling stops once 10 records are held, so one read holds fewer than 10 + one page.
    assert max(per_read) < 10 + 10
    assert len(fake.calls_of("DescribeStream")) == 1


# ---------------------------------------------------------------------------------------------------------------
# Resuming


def digit_crossing_topology() -> list[FakeShard]:
    # Sequence numbers that gain a digit mid-shard: compared as strings, "1000…" would sort before "999…".
    return [
        FakeShard(A, None, make_records(999_999_999_999_999_999_700, 6), closed=True),
        FakeShard(B, A, make_records(1_000_000_000_000_000_001_000, 4), closed=False),
    ]


def test_resume_from_checkpoints_continues_after_them_with_nothing_repeated(clock: FakeClock) -> None:
    fake = ScriptedStreams(digit_crossing_topology(), clock)
    expected = {s.shard_id: seqs(s.records) for s in fake.shards.values()}
    first = make_reader(fake, clock, max_records=2)
    batches = read_until(first, lambda got: len(delivered(got).get(A, [])) >= 4)
    assert delivered(batches) == {A: expected[A][:4]}
    stored = latest_positions(batches)
    assert stored[A].sequence_number == "1000000000000000000000"  # crossed the digit boundary

    second = make_reader(fake, clock, stored, max_records=2)
    rest = read_until(second, has_all({A: expected[A][4:], B: expected[B]}))

    assert delivered(rest) == {A: expected[A][4:], B: expected[B]}
    resumed = [c for c in fake.calls_of("GetShardIterator") if c["ShardId"] == A][-1]
    assert resumed["ShardIteratorType"] == "AFTER_SEQUENCE_NUMBER"
    assert resumed["SequenceNumber"] == "1000000000000000000000"
    # A held shard is not announced again; B had no position and is.
    assert rest[0].shard_id == A and rest[0].records
    assert [b.position for b in rest if b.shard_id == B][0] == ShardPosition(B, A, None, False)


def test_resume_after_a_failed_commit_redelivers_what_was_not_committed(clock: FakeClock) -> None:
    fake = ScriptedStreams([FakeShard(A, None, make_records(10**21, 6), closed=False)], clock)
    records = seqs(fake.shards[A].records)
    first = make_reader(fake, clock, max_records=2)
    handed_out = read_until(first, has_all({A: records[:4]}))
    committed = [b for b in handed_out if not b.records or seqs(b.records) == records[:2]]

    second = make_reader(fake, clock, latest_positions(committed), max_records=2)
    again = read_until(second, has_all({A: records[2:]}))

    assert delivered(again) == {A: records[2:]}


def test_finished_shards_are_not_read_again(clock: FakeClock) -> None:
    fake = ScriptedStreams(digit_crossing_topology(), clock)
    a_records = seqs(fake.shards[A].records)
    held = {A: ShardPosition(A, None, a_records[-1], True)}
    reader = make_reader(fake, clock, held)

    batches = read_until(reader, has_all({B: seqs(fake.shards[B].records)}))

    assert all(c["ShardId"] != A for c in fake.calls_of("GetShardIterator"))
    assert A not in delivered(batches)


def test_held_position_at_the_end_of_a_closed_shard_finishes_it_without_records(clock: FakeClock) -> None:
    fake = ScriptedStreams(digit_crossing_topology(), clock)
    a_records = seqs(fake.shards[A].records)
    reader = make_reader(fake, clock, {A: ShardPosition(A, None, a_records[-1], False)})

    batches = reader.read(max_wait=0)

    assert [(b.shard_id, b.records, b.position) for b in batches][:2] == [
        (A, [], ShardPosition(A, None, a_records[-1], True)),
        (B, [], ShardPosition(B, A, None, False)),
    ]


# ---------------------------------------------------------------------------------------------------------------
# Iterators and gaps


def test_expired_iterator_is_refreshed_from_the_last_delivered_record(clock: FakeClock) -> None:
    fake = ScriptedStreams([FakeShard(A, None, make_records(10**21, 5), closed=False)], clock)
    records = seqs(fake.shards[A].records)
    reader = make_reader(fake, clock, max_records=2)
    first = reader.read(max_wait=0)
    assert delivered(first) == {A: records[:2]}

    clock.now += 16 * 60  # the caller spent longer than an iterator lives applying the batch
    rest = read_until(reader, has_all({A: records[2:]}))

    assert delivered(rest) == {A: records[2:]}
    assert [(c["ShardIteratorType"], c.get("SequenceNumber")) for c in fake.calls_of("GetShardIterator")] == [
        ("TRIM_HORIZON", None),
        ("AFTER_SEQUENCE_NUMBER", records[1]),
    ]


def test_expired_iterator_before_anything_was_delivered_restarts_at_trim_horizon(clock: FakeClock) -> None:
    fake = ScriptedStreams([FakeShard(A, None, [], closed=False)], clock)
    reader = make_reader(fake, clock)
    assert [b.records for b in reader.read(max_wait=0)] == [[]]
    fake.shards[A].records.extend(make_records(10**21, 3))
    clock.now += 20 * 60

    batches = read_until(reader, has_all({A: seqs(fake.shards[A].records)}))

    assert delivered(batches) == {A: seqs(fake.shards[A].records)}
    assert [c["ShardIteratorType"] for c in fake.calls_of("GetShardIterator")] == ["TRIM_HORIZON", "TRIM_HORIZON"]


def test_trimmed_records_after_a_held_position_are_a_gap(clock: FakeClock) -> None:
    shard = FakeShard(A, None, make_records(10**21, 6), closed=False, trim_horizon=3)
    fake = ScriptedStreams([shard], clock)
    held = {A: ShardPosition(A, None, seqs(shard.records)[1], False)}

    with pytest.raises(StreamGapError) as raised:
        make_reader(fake, clock, held).read(max_wait=0)

    assert raised.value.table == TABLE
    assert "--data" in str(raised.value) and seqs(shard.records)[1] in str(raised.value)
    assert fake.calls_of("GetRecords") == []


def test_records_trimmed_while_reading_are_a_gap(clock: FakeClock) -> None:
    shard = FakeShard(A, None, make_records(10**21, 6), closed=False)
    fake = ScriptedStreams([shard], clock)
    reader = make_reader(fake, clock, max_records=2)
    assert delivered(reader.read(max_wait=0)) == {A: seqs(shard.records)[:2]}
    shard.trim_horizon = 4  # the reader fell more than 24 hours behind

    with pytest.raises(StreamGapError):
        reader.read(max_wait=0)


def test_trim_horizon_moving_before_the_first_read_of_a_new_shard_is_not_a_gap(clock: FakeClock) -> None:
    shard = FakeShard(A, None, make_records(10**21, 4), closed=True)
    fake = ScriptedStreams([shard], clock)
    fake.errors["GetRecords"] = [fake._trimmed("GetRecords")]
    reader = make_reader(fake, clock)

    batches = read_until(reader, lambda got: any(b.position.finished for b in got))

    assert delivered(batches) == {A: seqs(shard.records)}
    assert [c["ShardIteratorType"] for c in fake.calls_of("GetShardIterator")] == ["TRIM_HORIZON", "TRIM_HORIZON"]


def test_unfinished_held_shard_no_longer_listed_is_a_gap(clock: FakeClock) -> None:
    fake = ScriptedStreams(
        [
            FakeShard(A, None, make_records(10**20, 3), closed=True, listed=False),
            FakeShard(B, A, make_records(2 * 10**20, 3), closed=False),
        ],
        clock,
    )
    held = {A: ShardPosition(A, None, seqs(fake.shards[A].records)[0], False)}

    with pytest.raises(StreamGapError, match=A):
        make_reader(fake, clock, held).read(max_wait=0)
    assert fake.calls_of("GetRecords") == []


def test_started_shard_no_longer_listed_is_a_gap(clock: FakeClock) -> None:
    # A shard announced with no records yet (sequence number None) is held too: its records may be gone.
    fake = ScriptedStreams([FakeShard(B, A, make_records(2 * 10**20, 3), closed=True, listed=False)], clock)
    fake.add(FakeShard(D, B, [], closed=False))
    held = {B: ShardPosition(B, A, None, False)}

    with pytest.raises(StreamGapError, match=B):
        make_reader(fake, clock, held).read(max_wait=0)


def test_finished_shard_whose_children_were_all_trimmed_is_a_gap(clock: FakeClock) -> None:
    # A was read to its end; its child B and B's records were trimmed while podyn was stopped. D remains.
    fake = ScriptedStreams(
        [
            FakeShard(B, A, make_records(2 * 10**20, 3), closed=True, listed=False),
            FakeShard(D, B, make_records(4 * 10**20, 3), closed=False),
        ],
        clock,
    )
    held = {A: ShardPosition(A, None, "100000000000000000000", True)}

    with pytest.raises(StreamGapError, match=A):
        make_reader(fake, clock, held).read(max_wait=0)


def test_finished_shard_without_children_is_fine_when_the_stream_is_disabled(clock: FakeClock) -> None:
    fake = ScriptedStreams([FakeShard(C, None, make_records(3 * 10**20, 2), closed=True)], clock, status="DISABLED")
    held = {A: ShardPosition(A, None, "100000000000000000000", True)}
    reader = make_reader(fake, clock, held)

    batches = read_until(reader, lambda _: reader.ended)

    assert delivered(batches) == {C: seqs(fake.shards[C].records)}


def test_trimmed_parent_that_we_finished_lets_its_child_start_at_trim_horizon(clock: FakeClock) -> None:
    fake = ScriptedStreams([FakeShard(B, A, make_records(2 * 10**20, 3), closed=False)], clock)
    held = {A: ShardPosition(A, None, "100000000000000000000", True)}
    reader = make_reader(fake, clock, held)

    batches = read_until(reader, has_all({B: seqs(fake.shards[B].records)}))

    assert delivered(batches) == {B: seqs(fake.shards[B].records)}
    assert fake.calls_of("GetShardIterator")[0]["ShardIteratorType"] == "TRIM_HORIZON"


def test_unheld_shard_trimmed_away_before_reading_is_skipped(clock: FakeClock) -> None:
    # Listed by DescribeStream, gone by the time its iterator is asked for: older than replication, skipped.
    fake = ScriptedStreams(
        [
            FakeShard(A, None, make_records(10**20, 2), closed=True),
            FakeShard(B, A, make_records(2 * 10**20, 2), closed=False),
        ],
        clock,
    )
    fake.errors["GetShardIterator"] = [
        client_error(
            "GetShardIterator",
            "ResourceNotFoundException",
            f"Requested resource not found: Shard: {A} in Stream: {STREAM_ARN} not found",
        )
    ]
    reader = make_reader(fake, clock)

    batches = read_until(reader, has_all({B: seqs(fake.shards[B].records)}))

    assert delivered(batches) == {B: seqs(fake.shards[B].records)}
    assert reader.positions()[A] == ShardPosition(A, None, None, True)


# ---------------------------------------------------------------------------------------------------------------
# Polling cost


def test_idle_open_shards_are_polled_rarely_and_closed_shards_drained_without_sleeping(clock: FakeClock) -> None:
    closed = FakeShard(A, None, make_records(10**20, 3), closed=True, empty_pages_at=[0, 0, 0, 1, 1, 2])
    idle = FakeShard(C, None, [], closed=False)
    fake = ScriptedStreams([closed, idle], clock)
    reader = make_reader(fake, clock, max_records=1, idle_min=0.25, idle_max=5.0)

    drained = read_until(reader, lambda got: any(b.position.finished for b in got), max_wait=0)
    assert delivered(drained)[A] == seqs(closed.records)
    assert clock.now == 0.0 and clock.sleeps == []  # nine GetRecords calls on A, no waiting
    assert len([p for p in fake.polls if p[0] == A]) == 3 + 6

    while clock.now < 120.0:
        assert reader.read(max_wait=1.0) == []
    idle_polls = [t for s, t in fake.polls if s == C]
    gaps = [b - a for a, b in itertools.pairwise(idle_polls)]
    # 0.25, 0.5, 1, 2, 4, then every 5 s: about 28 calls in two minutes instead of 480 at 0.25 s.
    assert gaps[:5] == [0.25, 0.5, 1.0, 2.0, 4.0]
    assert set(gaps[5:]) == {5.0}
    assert len(idle_polls) <= 30

    # Records arrive: delivered within one back-off step, and polling is brisk again until the shard idles.
    idle.records.extend(make_records(10**21, 2))
    arrived_at = clock.now
    batches = read_until(reader, has_all({C: seqs(idle.records)}))
    assert clock.now - arrived_at <= 5.0
    assert delivered(batches) == {C: seqs(idle.records)}
    before = len(fake.polls)
    read_until(reader, lambda _: len(fake.polls) >= before + 3)
    # From the poll that returned the last record: at once, then the back-off starts again from 0.25 s.
    times = [t for _, t in fake.polls[before - 1 : before + 3]]
    assert [b - a for a, b in itertools.pairwise(times)] == [0.0, 0.25, 0.5]


def test_relisting_is_periodic_and_finds_new_shards(clock: FakeClock) -> None:
    fake = ScriptedStreams([FakeShard(A, None, [], closed=False)], clock)
    reader = make_reader(fake, clock, relist_seconds=30.0)
    read_until(reader, lambda _: clock.now >= 95.0)
    assert len(fake.calls_of("DescribeStream")) == 4  # at 0, 30, 60, 90
    fake.add(FakeShard(C, None, make_records(3 * 10**20, 1), closed=False))  # e.g. after a partition split

    batches = read_until(reader, has_all({C: seqs(fake.shards[C].records)}))

    assert clock.now <= 125.0
    assert delivered(batches) == {C: seqs(fake.shards[C].records)}


# ---------------------------------------------------------------------------------------------------------------
# Service errors


def test_throttling_and_server_errors_are_retried_with_growing_waits(clock: FakeClock) -> None:
    fake = ScriptedStreams([FakeShard(A, None, make_records(10**20, 3), closed=True)], clock)
    fake.errors = {
        "DescribeStream": [limit_exceeded("DescribeStream")],
        "GetShardIterator": [
            client_error("GetShardIterator", "InternalServerError", "Internal server error", status=500),
            EndpointConnectionError(endpoint_url="https://streams.dynamodb.us-east-1.amazonaws.com/"),
        ],
        "GetRecords": [
            limit_exceeded("GetRecords"),
            client_error("GetRecords", "ThrottlingException", "Rate exceeded"),
            client_error("GetRecords", "ProvisionedThroughputExceededException", "Throughput exceeded"),
        ],
    }
    reader = make_reader(fake, clock)

    batches = read_until(reader, lambda got: any(b.position.finished for b in got))

    assert delivered(batches) == {A: seqs(fake.shards[A].records)}
    assert Counter(op for op, _ in fake.calls) == {"DescribeStream": 2, "GetShardIterator": 3, "GetRecords": 4}
    assert clock.sleeps == [0.1, 0.1, 0.2, 0.1, 0.2, 0.4]


def test_persistent_throttling_ends_in_a_transient_error(clock: FakeClock) -> None:
    fake = ScriptedStreams([FakeShard(A, None, make_records(10**20, 3), closed=False)], clock)
    fake.errors["GetRecords"] = [limit_exceeded("GetRecords") for _ in range(50)]
    reader = make_reader(fake, clock, retry_attempts=6)

    with pytest.raises(TransientSourceError) as raised:
        reader.read(max_wait=0)

    assert raised.value.transient and raised.value.table == TABLE
    assert "LimitExceededException" in str(raised.value)
    assert len(fake.calls_of("GetRecords")) == 6
    assert clock.sleeps == [0.1, 0.2, 0.4, 0.8, 1.6]


def test_back_off_is_bounded(clock: FakeClock) -> None:
    fake = ScriptedStreams([FakeShard(A, None, [], closed=False)], clock)
    fake.errors["DescribeStream"] = [limit_exceeded("DescribeStream") for _ in range(12)]

    with pytest.raises(TransientSourceError):
        make_reader(fake, clock, retry_attempts=12).read(max_wait=0)

    assert max(clock.sleeps) == 10.0 and len(clock.sleeps) == 11


def test_other_client_errors_are_not_retried(clock: FakeClock) -> None:
    fake = ScriptedStreams([FakeShard(A, None, [], closed=False)], clock)
    fake.errors["GetShardIterator"] = [
        client_error(
            "GetShardIterator",
            "AccessDeniedException",
            "User: arn:aws:iam::123456789012:user/podyn is not authorized to perform: dynamodb:GetShardIterator",
        )
    ]

    with pytest.raises(SourceError, match="AccessDeniedException") as raised:
        make_reader(fake, clock).read(max_wait=0)

    assert not raised.value.transient
    assert len(fake.calls_of("GetShardIterator")) == 1 and clock.sleeps == []


# ---------------------------------------------------------------------------------------------------------------
# The stream's own life


def test_disabled_stream_is_read_to_the_end_then_ended(clock: FakeClock) -> None:
    fake = ScriptedStreams([FakeShard(A, None, make_records(10**20, 2), closed=False)], clock)
    reader = make_reader(fake, clock, relist_seconds=30.0)
    read_until(reader, has_all({A: seqs(fake.shards[A].records)}))
    assert not reader.ended
    # The stream is disabled: its shard closes after a last few writes, and no child is created.
    fake.shards[A].records.extend(make_records(10**21, 2))
    fake.shards[A].closed = True
    fake.status = "DISABLED"

    rest = read_until(reader, lambda _: reader.ended)

    assert delivered(rest) == {A: seqs(fake.shards[A].records)[2:]}
    assert rest[-1].position.finished
    calls = len(fake.calls)
    assert reader.read(max_wait=5.0) == [] and reader.ended
    assert len(fake.calls) == calls and clock.sleeps[-1:] != [5.0]


def test_deleted_stream_is_a_gap(clock: FakeClock) -> None:
    fake = ScriptedStreams([FakeShard(A, None, make_records(10**20, 2), closed=False)], clock)
    reader = make_reader(fake, clock, relist_seconds=30.0)
    read_until(reader, has_all({A: seqs(fake.shards[A].records)}))
    fake.deleted = True

    with pytest.raises(StreamGapError, match="--data") as raised:
        read_until(reader, lambda _: False)

    assert raised.value.table == TABLE
    assert "no longer exists" in str(raised.value)


def test_stream_deleted_under_an_open_iterator_is_named_as_such(clock: FakeClock) -> None:
    """GetRecords answers ResourceNotFoundException; DescribeStream then tells a deleted stream from a lost shard."""
    fake = ScriptedStreams([FakeShard(A, None, make_records(10**20, 2), closed=False)], clock)
    reader = make_reader(fake, clock, relist_seconds=3600.0)
    read_until(reader, has_all({A: seqs(fake.shards[A].records)}))
    fake.deleted = True
    fake.errors["GetRecords"] = [fake._stream_not_found("GetRecords")]

    with pytest.raises(StreamGapError, match="--data") as raised:
        read_until(reader, lambda _: False)

    assert "no longer exists" in str(raised.value) and "24-hour retention" not in str(raised.value)
    assert [op for op, _ in fake.calls[-2:]] == ["GetRecords", "DescribeStream"]


def test_logging_is_per_call_and_per_shard_never_per_record(clock: FakeClock, caplog: pytest.LogCaptureFixture) -> None:
    fake = ScriptedStreams([FakeShard(A, None, make_records(10**20, 50), closed=True)], clock)
    caplog.set_level(logging.DEBUG, logger="podyn_py.source.streams")

    batches = read_until(make_reader(fake, clock), lambda got: any(b.position.finished for b in got))

    assert len(delivered(batches)[A]) == 50
    assert len(caplog.records) <= 10
    info = [r.getMessage() for r in caplog.records if r.levelno >= logging.INFO]
    assert any("discovered" in m for m in info) and any("finished" in m for m in info)


def test_settings_are_validated() -> None:
    fake = ScriptedStreams([], FakeClock())
    with pytest.raises(ValueError, match="max_records"):
        StreamReader(fake, STREAM_ARN, {}, max_records=1001)
    with pytest.raises(ValueError, match="idle_min"):
        StreamReader(fake, STREAM_ARN, {}, idle_min=6.0, idle_max=5.0)
