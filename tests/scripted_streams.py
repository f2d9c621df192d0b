"""A scripted stand-in for boto3's ``dynamodbstreams`` client: DynamoDB Local keeps one shard per table and never
splits, closes, trims or throttles, so tests drive the real reader and replicator with this at the API boundary.

Responses have boto3's shapes (paginated DescribeStream, opaque iterators that expire after 15 minutes) and failures
are ``botocore.exceptions.ClientError`` with the service's error bodies. The clock is injected: ``test_stream_reader``
runs one reader in simulated time; the replicator tests use :class:`Clock`, real time plus an offset that a test can
jump (to expire iterators). Calls are serialised by a lock so several threads may share a script, and hooks run at
the start of each call so that a test can change the stream at an exact point (trim it, jump the clock, make two
readers meet); ``errors`` queues the failures the next calls of an operation answer.
"""

from __future__ import annotations

import copy
import datetime as dt
import itertools
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from botocore.exceptions import ClientError

TABLE = "Orders"
STREAM_LABEL = "2024-05-01T10:00:00.000"
STREAM_ARN = f"arn:aws:dynamodb:us-east-1:123456789012:table/{TABLE}/stream/{STREAM_LABEL}"
ITERATOR_LIFETIME = 15 * 60.0

#: Called at the start of every call with the client, the operation, its parameters and how many calls of that
#: operation came before; it may change the script, or raise the error the service would answer.
Hook = Callable[["ScriptedStreams", str, dict[str, Any], int], None]


class Clock:
    """``time.monotonic()`` plus an offset that only grows: time can be made to pass at once."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.monotonic() + self.offset

    def jump(self, seconds: float) -> None:
        self.offset += seconds

    def sleep(self, seconds: float) -> None:
        time.sleep(max(0.0, seconds))


def seqs(records: Iterable[dict[str, Any]]) -> list[str]:
    return [r["dynamodb"]["SequenceNumber"] for r in records]


def shard_id(n: int) -> str:
    return f"shardId-00000017145{n:08d}-{n:08x}"


@dataclass
class FakeShard:
    shard_id: str
    parent: str | None
    records: list[dict[str, Any]]
    closed: bool
    listed: bool = True
    #: Index of the oldest record not yet trimmed.
    trim_horizon: int = 0
    #: Record indexes at which the next GetRecords returns one empty page, keeping its iterator.
    empty_pages_at: list[int] = field(default_factory=list)
    first_sequence: int = 0

    def description(self) -> dict[str, Any]:
        numbers = seqs(self.records)
        seq_range = {"StartingSequenceNumber": numbers[0] if numbers else str(self.first_sequence)}
        if self.closed:
            seq_range["EndingSequenceNumber"] = numbers[-1] if numbers else str(self.first_sequence)
        description: dict[str, Any] = {"ShardId": self.shard_id, "SequenceNumberRange": seq_range}
        if self.parent is not None:
            description["ParentShardId"] = self.parent
        return description


def client_error(operation: str, code: str, message: str, status: int = 400) -> ClientError:
    return ClientError(
        {
            "Error": {"Code": code, "Message": message},
            "ResponseMetadata": {
                "RequestId": "4KBNVRGD25RG4ERFB8Q1U9JG0BVV4KQNSO5AEMVJF66Q9ASUAAJG",
                "HTTPStatusCode": status,
                "HTTPHeaders": {"x-amzn-requestid": "4KBNVRGD25RG4ERFB8Q1U9JG0BVV4KQNSO5AEMVJF66Q9ASUAAJG"},
                "RetryAttempts": 0,
                "HostId": "",
            },
        },
        operation,
    )


def limit_exceeded(operation: str) -> ClientError:
    return client_error(operation, "LimitExceededException", "Rate exceeded for shard")


class ScriptedStreams:
    """Answers DescribeStream, GetShardIterator and GetRecords the way DynamoDB Streams does, from a script.

    Several clients may share one list of :class:`FakeShard` (two processes reading one stream); each has its
    own iterators and call log.
    """

    def __init__(
        self,
        shards: Sequence[FakeShard],
        clock: Callable[[], float],
        *,
        status: str = "ENABLED",
        view_type: str = "NEW_AND_OLD_IMAGES",
        page_size: int = 2,
        hooks: Sequence[Hook] = (),
    ) -> None:
        self.shards = {s.shard_id: s for s in shards}
        self.clock = clock
        self.status = status
        self.view_type = view_type
        self.page_size = page_size
        self.deleted = False
        self.hooks = list(hooks)
        self.calls: list[tuple[str, dict[str, Any]]] = []
        #: Error codes answered, in order.
        self.failures: list[str] = []
        #: Errors to raise, per operation, at the next calls (after the hooks).
        self.errors: dict[str, list[Exception]] = {}
        #: (shard id, clock) of every GetRecords call that reached a shard.
        self.polls: list[tuple[str, float]] = []
        self._iterators: dict[str, tuple[str, int, float]] = {}
        self._tokens = itertools.count(1)
        #: Held during each call; a test holds it to change the script between two calls.
        self.lock = threading.RLock()

    def add(self, shard: FakeShard) -> None:
        with self.lock:
            self.shards[shard.shard_id] = shard

    def calls_of(self, operation: str) -> list[dict[str, Any]]:
        with self.lock:
            return [params for op, params in self.calls if op == operation]

    def _begin(self, operation: str, params: dict[str, Any]) -> None:
        before = sum(1 for op, _ in self.calls if op == operation)
        self.calls.append((operation, params))
        for hook in self.hooks:
            hook(self, operation, params, before)
        queued = self.errors.get(operation)
        if queued:
            raise queued.pop(0)

    def _fail(self, operation: str, code: str, message: str) -> ClientError:
        self.failures.append(code)
        return client_error(operation, code, message)

    @staticmethod
    def _meta() -> dict[str, Any]:
        return {"RequestId": "R3A9PBP8QUJ3IHD6O0DBF0S8T7VV4KQNSO5AEMVJF66Q9ASUAAJG", "HTTPStatusCode": 200,
                "HTTPHeaders": {"content-type": "application/x-amz-json-1.0"}, "RetryAttempts": 0}  # fmt: skip

    def _stream_not_found(self, operation: str) -> ClientError:
        return self._fail(
            operation, "ResourceNotFoundException", f"Requested resource not found: Stream: {STREAM_ARN} not found"
        )

    def describe_stream(
        self, *, StreamArn: str, Limit: int | None = None, ExclusiveStartShardId: str | None = None
    ) -> dict[str, Any]:
        with self.lock:
            params = {"StreamArn": StreamArn, "Limit": Limit, "ExclusiveStartShardId": ExclusiveStartShardId}
            self._begin("DescribeStream", params)
            if self.deleted or StreamArn != STREAM_ARN:
                raise self._stream_not_found("DescribeStream")
            listed = [s for s in self.shards.values() if s.listed]
            start = 0
            if ExclusiveStartShardId is not None:
                start = [s.shard_id for s in listed].index(ExclusiveStartShardId) + 1
            size = min(self.page_size, Limit or 100)
            page = listed[start : start + size]
            description: dict[str, Any] = {
                "StreamArn": STREAM_ARN,
                "StreamLabel": STREAM_LABEL,
                "StreamStatus": self.status,
                "StreamViewType": self.view_type,
                "CreationRequestDateTime": dt.datetime(2024, 5, 1, 10, 0, tzinfo=dt.UTC),
                "TableName": TABLE,
                "KeySchema": [{"AttributeName": "pk", "KeyType": "HASH"}],
                "Shards": [s.description() for s in page],
            }
            if start + size < len(listed):
                description["LastEvaluatedShardId"] = page[-1].shard_id
            return {"StreamDescription": description, "ResponseMetadata": self._meta()}

    def get_shard_iterator(
        self, *, StreamArn: str, ShardId: str, ShardIteratorType: str, SequenceNumber: str | None = None
    ) -> dict[str, Any]:
        with self.lock:
            params = {"StreamArn": StreamArn, "ShardId": ShardId, "ShardIteratorType": ShardIteratorType}
            if SequenceNumber is not None:
                params["SequenceNumber"] = SequenceNumber
            self._begin("GetShardIterator", params)
            if self.deleted:
                raise self._stream_not_found("GetShardIterator")
            shard = self.shards.get(ShardId)
            if shard is None or not shard.listed:
                raise self._fail(
                    "GetShardIterator",
                    "ResourceNotFoundException",
                    f"Requested resource not found: Shard: {ShardId} in Stream: {STREAM_ARN} not found",
                )
            if ShardIteratorType == "TRIM_HORIZON":
                index = shard.trim_horizon
            elif ShardIteratorType == "AFTER_SEQUENCE_NUMBER":
                assert SequenceNumber is not None
                index = sum(1 for n in seqs(shard.records) if int(n) <= int(SequenceNumber))
                if index < shard.trim_horizon:
                    raise self._trimmed("GetShardIterator")
            else:
                raise AssertionError(f"the reader should not use {ShardIteratorType}")
            return {"ShardIterator": self._issue(ShardId, index), "ResponseMetadata": self._meta()}

    def _trimmed(self, operation: str) -> ClientError:
        return self._fail(
            operation,
            "TrimmedDataAccessException",
            "The operation attempted to read past the oldest stream record in a shard.",
        )

    def _issue(self, shard: str, index: int) -> str:
        token = f"{STREAM_ARN}|1|AAAAAAAAAAH{next(self._tokens):012d}QwE2sSxLCd8Ue7Kmbl0eOQ=="
        self._iterators[token] = (shard, index, self.clock())
        return token

    def get_records(self, *, ShardIterator: str, Limit: int | None = None) -> dict[str, Any]:
        with self.lock:
            self._begin("GetRecords", {"ShardIterator": ShardIterator, "Limit": Limit})
            if ShardIterator not in self._iterators:
                raise self._fail("GetRecords", "ValidationException", "Invalid ShardIterator")
            shard_id_, index, issued = self._iterators[ShardIterator]
            if self.clock() - issued > ITERATOR_LIFETIME:
                raise self._fail(
                    "GetRecords",
                    "ExpiredIteratorException",
                    "Iterator expired. The iterator was created at time Wed May 01 10:00:00 UTC 2024 while right "
                    "now it is Wed May 01 10:16:00 UTC 2024 which is further in the future than the tolerated "
                    "delay of 900000 milliseconds.",
                )
            shard = self.shards[shard_id_]
            if not shard.listed:  # a deleted stream is noticed by the next DescribeStream or GetShardIterator
                raise self._fail(
                    "GetRecords",
                    "ResourceNotFoundException",
                    f"Requested resource not found: Shard: {shard_id_} in Stream: {STREAM_ARN} not found",
                )
            if index < shard.trim_horizon:
                raise self._trimmed("GetRecords")
            self.polls.append((shard_id_, self.clock()))
            if index in shard.empty_pages_at:
                shard.empty_pages_at.remove(index)
                return {
                    "Records": [],
                    "NextShardIterator": self._issue(shard_id_, index),
                    "ResponseMetadata": self._meta(),
                }
            page = shard.records[index : index + (Limit or 1000)]
            end = index + len(page)
            response: dict[str, Any] = {"Records": copy.deepcopy(page), "ResponseMetadata": self._meta()}
            if not (shard.closed and end >= len(shard.records)):
                response["NextShardIterator"] = self._issue(shard_id_, end)
            return response


# ---------------------------------------------------------------------------------------------------------------
# Records


@dataclass
class RecordMaker:
    """Stream records as boto3's GetRecords returns them, for a table keyed by ``pk`` (S), numbered in order."""

    first_sequence: int = 4_421_584_500_000_000_017_450_439_091
    step: int = 1_000
    created_at: Callable[[], dt.datetime] = field(default=lambda: dt.datetime.now(dt.UTC))
    _count: itertools.count[int] = field(default_factory=itertools.count)

    def _record(self, event: str, keys: dict[str, Any], body: dict[str, Any]) -> dict[str, Any]:
        n = next(self._count)
        images = {k: v for k, v in body.items() if v is not None}
        return {
            "eventID": f"{n:08x}c4ca4238a0b923820dcc509a",
            "eventName": event,
            "eventVersion": "1.1",
            "eventSource": "aws:dynamodb",
            "awsRegion": "us-east-1",
            "dynamodb": {
                "ApproximateCreationDateTime": self.created_at(),
                "Keys": keys,
                **images,
                "SequenceNumber": str(self.first_sequence + n * self.step),
                "SizeBytes": 60,
                "StreamViewType": "NEW_AND_OLD_IMAGES",
            },
        }

    def put(self, pk: str, counter: int, event: str = "MODIFY", **attributes: dict[str, Any]) -> dict[str, Any]:
        """An INSERT or MODIFY whose new image is ``pk``, ``counter`` and ``attributes``."""
        image = {"pk": {"S": pk}, "counter": {"N": str(counter)}, **attributes}
        return self._record(event, {"pk": {"S": pk}}, {"NewImage": image})

    def remove(self, pk: str) -> dict[str, Any]:
        return self._record("REMOVE", {"pk": {"S": pk}}, {"OldImage": {"pk": {"S": pk}}})

    def raw(self, event: str, keys: dict[str, Any], new_image: Any = None) -> dict[str, Any]:
        return self._record(event, keys, {"NewImage": new_image})


def final_state(records: Iterable[dict[str, Any]]) -> dict[str, int]:
    """pk → counter after applying ``records`` in order: what the target table must hold."""
    state: dict[str, int] = {}
    for record in records:
        pk = record["dynamodb"]["Keys"]["pk"]["S"]
        if record["eventName"] == "REMOVE":
            state.pop(pk, None)
        else:
            state[pk] = int(record["dynamodb"]["NewImage"]["counter"]["N"])
    return state
