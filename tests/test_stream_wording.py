"""What podyn says when stream records are gone: what it observed (DescribeStream's answer, the table's current
stream, TrimmedDataAccessException and when the last record read was written), never a guess such as "over 24
hours ago". The scripted Streams client stands in where DynamoDB Local cannot trim or delete a stream; a stream
disabled by UpdateTable runs against DynamoDB Local."""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from helpers import REPO_ROOT
from oracle import connect
from scripted_streams import STREAM_ARN, Clock, FakeShard, RecordMaker, ScriptedStreams, shard_id

from podyn_py.core.positions import ShardPosition
from podyn_py.errors import StreamGapError
from podyn_py.source.streams import StreamReader

A = shard_id(1)


def _reader(fake: ScriptedStreams, clock: Clock, positions: dict[str, ShardPosition] | None = None) -> StreamReader:
    return StreamReader(fake, STREAM_ARN, positions or {}, max_records=2, clock=clock, sleep=clock.sleep)


def _read_until_gap(reader: StreamReader) -> str:
    with pytest.raises(StreamGapError) as raised:
        for _ in range(50):
            reader.read(max_wait=0)
    return str(raised.value)


def test_a_deleted_stream_is_named_by_what_describestream_answered() -> None:
    clock = Clock()
    records = RecordMaker()
    fake = ScriptedStreams([FakeShard(A, None, [records.put("a", 1)], closed=False)], clock)
    reader = _reader(fake, clock)
    reader.read(max_wait=0)
    fake.deleted = True  # deleted a moment ago: nothing says it happened more than a day ago
    clock.jump(60.0)  # the next listing

    message = _read_until_gap(reader)

    assert f"stream {STREAM_ARN} no longer exists (DescribeStream answered ResourceNotFoundException:" in message
    assert "24 hours" not in message and "ago" not in message
    assert "--data" in message


def test_trimmed_records_say_when_the_last_record_read_was_written() -> None:
    clock = Clock()
    written = dt.datetime(2024, 5, 1, 10, 0, 5, tzinfo=dt.UTC)
    records = RecordMaker(created_at=lambda: written)
    shard = FakeShard(A, None, [records.put(f"k{i}", i) for i in range(6)], closed=False)
    fake = ScriptedStreams([shard], clock)
    reader = _reader(fake, clock)
    reader.read(max_wait=0)  # two records delivered
    shard.trim_horizon = 4

    message = _read_until_gap(reader)

    assert "TrimmedDataAccessException" in message
    assert "DynamoDB Streams trimmed them (it keeps records for 24 hours after they are written)" in message
    assert "the last record podyn read from it was written at 2024-05-01T10:00:05+00:00 (" in message
    assert "hours ago): the lost records were written after that" in message


def test_trimmed_records_after_a_checkpoint_say_that_their_time_is_unknown() -> None:
    clock = Clock()
    records = RecordMaker()
    shard = FakeShard(A, None, [records.put(f"k{i}", i) for i in range(6)], closed=False)
    shard.trim_horizon = 4
    fake = ScriptedStreams([shard], clock)
    checkpoint = ShardPosition(A, None, shard.records[1]["dynamodb"]["SequenceNumber"], False)
    reader = _reader(fake, clock, {A: checkpoint})

    message = _read_until_gap(reader)

    assert "TrimmedDataAccessException" in message
    assert "podyn read no record of this shard since it started, so it does not know when" in message
    assert "ago" not in message


def test_a_shard_missing_from_a_live_stream_says_the_stream_still_exists() -> None:
    clock = Clock()
    records = RecordMaker()
    shard = FakeShard(A, None, [records.put(f"k{i}", i) for i in range(4)], closed=False)
    fake = ScriptedStreams([shard], clock)
    checkpoint = ShardPosition(A, None, shard.records[1]["dynamodb"]["SequenceNumber"], False)
    reader = StreamReader(fake, STREAM_ARN, {A: checkpoint}, relist_seconds=3600.0, clock=clock, sleep=clock.sleep)
    reader.read(max_wait=0)
    shard.listed = False  # GetShardIterator answers ResourceNotFoundException; DescribeStream still answers
    fake.errors["GetRecords"] = [
        fake._fail("GetRecords", "ResourceNotFoundException", f"Requested resource not found: Shard: {A} not found")
    ]

    message = _read_until_gap(reader)

    assert "ResourceNotFoundException" in message
    assert "the shard no longer exists, although the stream does" in message
    assert "over 24 hours" not in message


@pytest.mark.slow  # replicates until the stream is disabled under it: about 6 s
def test_a_stream_disabled_while_changes_run_is_reported_as_observed(
    ddb_server: Any, ddb: Any, pg_url: str, create_table: Any, tmp_path: Path
) -> None:
    table = create_table(stream_view_type="NEW_AND_OLD_IMAGES", items=[{"pk": {"S": "a"}}])
    stream_arn = ddb.describe_table(TableName=table)["Table"]["LatestStreamArn"]
    log_path = tmp_path / "service.log"
    command = [sys.executable, "-m", "podyn_py", "--endpoint-url", ddb_server.endpoint_url, "-u", pg_url]
    command += ["-t", table, "-s", "-d", "-c", "--no-progress"]
    with open(log_path, "w") as log_file:
        process = subprocess.Popen(command, cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=log_file)
        try:
            with connect(pg_url) as conn:
                deadline = time.monotonic() + 60
                while _state(conn, table) != "live":
                    assert process.poll() is None, log_path.read_text()
                    assert time.monotonic() < deadline, log_path.read_text()
                    time.sleep(0.1)
            ddb.update_table(TableName=table, StreamSpecification={"StreamEnabled": False})
            status = process.wait(90)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
    log = log_path.read_text()
    assert status == 3, log
    stopped = [line for line in log.splitlines() if "podyn: table" in line and "stopped" in line]
    assert stopped, log
    message = stopped[-1]
    assert "24 hours ago" not in message and "over 24 hours" not in message
    # DynamoDB Local keeps a disabled stream readable (as DynamoDB does for 24 hours): podyn reads it to its end and
    # says so, and adds what DescribeTable says of the table's stream now.
    assert f"DescribeStream reports stream {stream_arn} as DISABLED: the stream was disabled, and podyn has read" in (
        message
    )
    assert f"DescribeTable: the table's stream is still {stream_arn}, disabled" in message, message


def _state(conn: Any, table: str) -> str | None:
    exists = conn.execute("SELECT to_regclass('podyn.tables') IS NOT NULL").fetchone()
    if not (exists and exists[0]):
        return None
    row = conn.execute("SELECT state FROM podyn.tables WHERE source_table = %s", (table,)).fetchone()
    return None if row is None else str(row[0])
