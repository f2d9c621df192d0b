"""The stream reader against DynamoDB Local, through boto3's real ``dynamodbstreams`` client.

DynamoDB Local keeps one open shard per table, so this proves the happy path end to end (real response shapes,
real iterators, real sequence numbers, resuming from checkpoints); shard lineage and failures are covered with
scripted responses in ``test_stream_reader.py``.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from podyn_py.core.positions import ShardPosition
from podyn_py.source.streams import ShardBatch, StreamReader

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient
    from mypy_boto3_dynamodbstreams import DynamoDBStreamsClient

CreateTable = Callable[..., str]


def _stream_arn(ddb: DynamoDBClient, table: str) -> str:
    return ddb.describe_table(TableName=table)["Table"]["LatestStreamArn"]


def _read_records(reader: StreamReader, count: int, timeout: float = 30.0) -> list[ShardBatch]:
    batches: list[ShardBatch] = []
    deadline = time.monotonic() + timeout
    while sum(len(b.records) for b in batches) < count:
        assert time.monotonic() < deadline, f"only {sum(len(b.records) for b in batches)} of {count} records"
        batches.extend(reader.read(max_wait=0.5))
    return batches


def _changes(batches: list[ShardBatch]) -> list[tuple[str, str, Any]]:
    return [
        (r["eventName"], r["dynamodb"]["Keys"]["pk"]["S"], r["dynamodb"].get("NewImage", {}).get("qty"))
        for b in batches
        for r in b.records
    ]


def test_reads_changes_in_order_and_resumes_after_the_checkpoint(
    ddb: DynamoDBClient, ddb_streams: DynamoDBStreamsClient, create_table: CreateTable
) -> None:
    table = create_table((("pk", "S"),), stream_view_type="NEW_AND_OLD_IMAGES")
    arn = _stream_arn(ddb, table)
    ddb.put_item(TableName=table, Item={"pk": {"S": "a"}, "qty": {"N": "1"}, "tags": {"SS": ["x", "y"]}})
    ddb.put_item(TableName=table, Item={"pk": {"S": "b"}, "qty": {"N": "2"}})
    ddb.update_item(
        TableName=table,
        Key={"pk": {"S": "a"}},
        UpdateExpression="SET qty = :q",
        ExpressionAttributeValues={":q": {"N": "3"}},
    )
    ddb.delete_item(TableName=table, Key={"pk": {"S": "b"}})
    ddb.put_item(TableName=table, Item={"pk": {"S": "c"}, "qty": {"N": "12345678901234567890.5"}})

    reader = StreamReader(ddb_streams, arn, {}, idle_min=0.05, idle_max=0.2)
    batches = _read_records(reader, 5)

    assert _changes(batches) == [
        ("INSERT", "a", {"N": "1"}),
        ("INSERT", "b", {"N": "2"}),
        ("MODIFY", "a", {"N": "3"}),
        ("REMOVE", "b", None),
        ("INSERT", "c", {"N": "12345678901234567890.5"}),
    ]
    records = [r for b in batches for r in b.records]
    numbers = [int(r["dynamodb"]["SequenceNumber"]) for r in records]
    assert numbers == sorted(numbers) and len(set(numbers)) == 5
    assert records[2]["dynamodb"]["OldImage"]["qty"] == {"N": "1"}
    assert isinstance(records[0]["dynamodb"]["ApproximateCreationDateTime"], dt.datetime)
    # The shard was announced before its records, and the last batch carries the position to checkpoint.
    assert batches[0].records == [] and batches[0].position.sequence_number is None
    (shard,) = {b.shard_id for b in batches}
    checkpoint = {shard: batches[-1].position}
    assert checkpoint[shard] == ShardPosition(shard, None, records[-1]["dynamodb"]["SequenceNumber"], False)
    assert reader.positions() == checkpoint
    assert reader.read(max_wait=0.3) == []  # nothing new: no batch, not even an empty one
    assert not reader.ended

    ddb.put_item(TableName=table, Item={"pk": {"S": "d"}, "qty": {"N": "4"}})
    ddb.update_item(
        TableName=table,
        Key={"pk": {"S": "c"}},
        UpdateExpression="SET qty = :q",
        ExpressionAttributeValues={":q": {"N": "5"}},
    )
    resumed = StreamReader(ddb_streams, arn, checkpoint, idle_min=0.05, idle_max=0.2)
    new = _read_records(resumed, 2)

    assert _changes(new) == [("INSERT", "d", {"N": "4"}), ("MODIFY", "c", {"N": "5"})]
    assert all(b.records for b in new)  # a held shard is not announced again
    assert resumed.read(max_wait=0.3) == []
    assert int(new[-1].position.sequence_number or 0) > numbers[-1]
