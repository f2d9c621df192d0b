"""An HTTP endpoint that is DynamoDB (relayed to DynamoDB Local) with a DynamoDB Streams API answered from a script.

DynamoDB Local keeps one shard per stream and never splits it, so several podyn processes sharing a stream's
shards cannot be tested on it alone. Real ``podyn`` processes are pointed at this server with ``--endpoint-url``:

* DynamoDB calls (``X-Amz-Target: DynamoDB_20120810.*``) are relayed to DynamoDB Local unchanged, except that
  DescribeTable of the scripted table names the scripted stream as its ``LatestStreamArn`` (so podyn reads it);
* DynamoDB calls a ``dynamodb`` script answers (``answer(operation, params)`` gives a response, or None to relay;
  tests/scripted_exports.py answers the export API that DynamoDB Local lacks) are answered from it instead;
* DynamoDB Streams calls (``DynamoDBStreams_20120810.DescribeStream``, ``GetShardIterator``, ``GetRecords``,
  ``ListStreams``) are answered from a :class:`StreamScript`, in the service's wire format (JSON 1.0; timestamps as
  seconds since the epoch; errors as ``__type`` and ``message`` with status 400), which boto3 and podyn's fast path
  both parse. Records look like those of ``scripted_streams.RecordMaker``, as they come over the wire.

The test holds the script in its own process and changes it while podyn runs: it appends records to open shards,
splits a shard (the parent closes, two children open), and reads back every call the processes made (which shard
they opened an iterator on, and when). Test code only, stdlib only.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import sys
import threading
import time
from collections.abc import Callable, Iterable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Protocol, Self
from urllib.parse import urlsplit

from proxy import HOP_BY_HOP, JSON_CONTENT_TYPE, forward, operation_of

STREAMS_PREFIX = "DynamoDBStreams_20120810."
STREAM_LABEL = "2024-05-01T10:00:00.000"
#: Sequence numbers grow across the whole stream (a child's come after its parent's, as the service's do).
FIRST_SEQUENCE = 4_421_584_500_000_000_017_450_000_000


@dataclasses.dataclass
class ScriptShard:
    shard_id: str
    parent_id: str | None
    starting_sequence: int
    records: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    closed: bool = False

    def description(self) -> dict[str, Any]:
        numbers = [int(r["dynamodb"]["SequenceNumber"]) for r in self.records]
        seq_range: dict[str, str] = {"StartingSequenceNumber": str(self.starting_sequence)}
        if self.closed:
            seq_range["EndingSequenceNumber"] = str(numbers[-1] if numbers else self.starting_sequence)
        out: dict[str, Any] = {"ShardId": self.shard_id, "SequenceNumberRange": seq_range}
        if self.parent_id is not None:
            out["ParentShardId"] = self.parent_id
        return out


@dataclasses.dataclass(frozen=True)
class IteratorCall:
    """One GetShardIterator a process made: on which shard, of which parent, and what the script's ``on_iterator``
    hook said at that moment (e.g. whether the parent's checkpoint was committed as finished)."""

    shard_id: str
    parent_id: str | None
    iterator_type: str
    at: float
    seen: object


class StreamError(Exception):
    """An error the service (DynamoDB Streams, or a scripted DynamoDB call) answers: ``code`` as its ``__type``."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class StreamScript:
    """One table's stream: its shards, their records, and the calls podyn made. Thread-safe.

    ``page_limit`` caps the records one GetRecords returns (below the caller's Limit), so that a backlog is read
    in many batches; ``listing_page`` is DescribeStream's page size (the caller's Limit caps it too); each
    GetRecords is answered ``latency`` seconds late (the time a call takes in a region, which costs podyn no CPU).
    """

    def __init__(
        self,
        table: str,
        *,
        view_type: str = "NEW_AND_OLD_IMAGES",
        page_limit: int = 1000,
        listing_page: int = 100,
        on_iterator: Callable[[ScriptShard], object] | None = None,
        latency: float = 0.0,
        label: str = STREAM_LABEL,
    ) -> None:
        self.table = table
        self.latency = latency
        self.view_type = view_type
        #: The stream's label, the time it was enabled (UTC), as DescribeTable's LatestStreamLabel gives it.
        self.label = label
        self.arn = f"arn:aws:dynamodb:ddblocal:000000000000:table/{table}/stream/{label}"
        self.page_limit = page_limit
        self.listing_page = listing_page
        self.on_iterator = on_iterator
        self.lock = threading.RLock()
        self.shards: dict[str, ScriptShard] = {}
        self.iterator_calls: list[IteratorCall] = []
        #: (shard id, records returned) of every GetRecords answered.
        self.reads: list[tuple[str, int]] = []
        self._sequence = itertools.count()
        self._event = itertools.count()
        self._shard_numbers = itertools.count(1)
        self._iterators: dict[str, tuple[str, int]] = {}
        self._tokens = itertools.count(1)

    # -- the script --------------------------------------------------------------------------------------------

    def _next_sequence(self) -> int:
        return FIRST_SEQUENCE + next(self._sequence) * 100

    def open_shard(self, parent: str | None = None) -> str:
        with self.lock:
            n = next(self._shard_numbers)
            shard_id = f"shardId-00000001714560000000-{n:08x}"
            self.shards[shard_id] = ScriptShard(shard_id, parent, self._next_sequence())
            return shard_id

    def close(self, shard_id: str) -> None:
        with self.lock:
            self.shards[shard_id].closed = True

    def split(self, parent: str, children: int = 2) -> list[str]:
        """Close ``parent`` and open ``children`` shards under it, as the service does when a partition splits."""
        with self.lock:
            self.close(parent)
            return [self.open_shard(parent) for _ in range(children)]

    def put(self, shard_id: str, pk: str, counter: int, **attributes: dict[str, Any]) -> dict[str, Any]:
        """Append a MODIFY whose new image is ``pk``, ``counter`` and ``attributes`` to an open shard."""
        image = {"pk": {"S": pk}, "counter": {"N": str(counter)}, **attributes}
        return self._append(shard_id, "MODIFY", {"pk": {"S": pk}}, {"NewImage": image})

    def remove(self, shard_id: str, pk: str) -> dict[str, Any]:
        return self._append(shard_id, "REMOVE", {"pk": {"S": pk}}, {"OldImage": {"pk": {"S": pk}}})

    def _append(self, shard_id: str, event: str, keys: dict[str, Any], images: dict[str, Any]) -> dict[str, Any]:
        with self.lock:
            shard = self.shards[shard_id]
            if shard.closed:
                raise ValueError(f"shard {shard_id} is closed: nothing can be appended to it")
            n = next(self._event)
            record = {
                "eventID": f"{n:08x}c4ca4238a0b923820dcc509a",
                "eventName": event,
                "eventVersion": "1.1",
                "eventSource": "aws:dynamodb",
                "awsRegion": "ddblocal",
                "dynamodb": {
                    "ApproximateCreationDateTime": round(time.time(), 3),
                    "Keys": keys,
                    **images,
                    "SequenceNumber": str(self._next_sequence()),
                    "SizeBytes": 60,
                    "StreamViewType": self.view_type,
                },
            }
            shard.records.append(record)
            return record

    def all_records(self) -> list[dict[str, Any]]:
        """Every record, in the order they were written (sequence numbers grow across the stream)."""
        with self.lock:
            records = [r for s in self.shards.values() for r in s.records]
        return sorted(records, key=lambda r: int(r["dynamodb"]["SequenceNumber"]))

    def final_state(self) -> dict[str, int]:
        """pk → counter once every record is applied in order: what the target table must hold."""
        state: dict[str, int] = {}
        for record in self.all_records():
            pk = record["dynamodb"]["Keys"]["pk"]["S"]
            if record["eventName"] == "REMOVE":
                state.pop(pk, None)
            else:
                state[pk] = int(record["dynamodb"]["NewImage"]["counter"]["N"])
        return state

    def last_sequence(self, shard_id: str) -> str | None:
        with self.lock:
            records = self.shards[shard_id].records
            return records[-1]["dynamodb"]["SequenceNumber"] if records else None

    def iterators_on(self, shard_id: str) -> list[IteratorCall]:
        with self.lock:
            return [c for c in self.iterator_calls if c.shard_id == shard_id]

    # -- the API -----------------------------------------------------------------------------------------------

    def answer(self, operation: str, params: dict[str, Any]) -> dict[str, Any]:
        handler = {
            "DescribeStream": self._describe_stream,
            "GetShardIterator": self._get_shard_iterator,
            "GetRecords": self._get_records,
            "ListStreams": self._list_streams,
        }.get(operation)
        if handler is None:
            raise StreamError("UnknownOperationException", f"DynamoDB Streams has no operation {operation}")
        return handler(params)

    def _check_arn(self, params: dict[str, Any]) -> None:
        if params.get("StreamArn") != self.arn:
            raise StreamError(
                "ResourceNotFoundException", f"Requested resource not found: Stream: {params.get('StreamArn')}"
            )

    def _list_streams(self, params: dict[str, Any]) -> dict[str, Any]:
        if params.get("TableName") not in (None, self.table):
            return {"Streams": []}
        return {"Streams": [{"StreamArn": self.arn, "StreamLabel": self.label, "TableName": self.table}]}

    def _describe_stream(self, params: dict[str, Any]) -> dict[str, Any]:
        self._check_arn(params)
        with self.lock:
            shards = list(self.shards.values())
            start = 0
            after = params.get("ExclusiveStartShardId")
            if after is not None:
                start = [s.shard_id for s in shards].index(after) + 1
            size = min(self.listing_page, int(params.get("Limit") or 100))
            page = shards[start : start + size]
            description: dict[str, Any] = {
                "StreamArn": self.arn,
                "StreamLabel": self.label,
                "StreamStatus": "ENABLED",
                "StreamViewType": self.view_type,
                "CreationRequestDateTime": 1714557600.0,
                "TableName": self.table,
                "KeySchema": [{"AttributeName": "pk", "KeyType": "HASH"}],
                "Shards": [s.description() for s in page],
            }
            if start + size < len(shards):
                description["LastEvaluatedShardId"] = page[-1].shard_id
            return {"StreamDescription": description}

    def _get_shard_iterator(self, params: dict[str, Any]) -> dict[str, Any]:
        self._check_arn(params)
        shard_id = str(params.get("ShardId"))
        kind = str(params.get("ShardIteratorType"))
        with self.lock:
            shard = self.shards.get(shard_id)
            if shard is None:
                raise StreamError(
                    "ResourceNotFoundException", f"Requested resource not found: Shard: {shard_id} in {self.arn}"
                )
            numbers = [int(r["dynamodb"]["SequenceNumber"]) for r in shard.records]
            if kind == "TRIM_HORIZON":
                index = 0
            elif kind == "LATEST":
                index = len(numbers)
            elif kind in ("AFTER_SEQUENCE_NUMBER", "AT_SEQUENCE_NUMBER"):
                number = int(params["SequenceNumber"])
                index = sum(1 for n in numbers if n < number or (kind == "AFTER_SEQUENCE_NUMBER" and n == number))
            else:
                raise StreamError("ValidationException", f"Invalid ShardIteratorType: {kind}")
            seen = self.on_iterator(shard) if self.on_iterator is not None else None
            self.iterator_calls.append(IteratorCall(shard_id, shard.parent_id, kind, time.monotonic(), seen))
            return {"ShardIterator": self._issue(shard_id, index)}

    def _issue(self, shard_id: str, index: int) -> str:
        token = f"{self.arn}|1|AAAAAAAAAAH{next(self._tokens):012d}QwE2sSxLCd8Ue7Kmbl0eOQ=="
        self._iterators[token] = (shard_id, index)
        return token

    def _get_records(self, params: dict[str, Any]) -> dict[str, Any]:
        with self.lock:
            token = str(params.get("ShardIterator"))
            if token not in self._iterators:
                raise StreamError("ValidationException", "Invalid ShardIterator")
            shard_id, index = self._iterators[token]  # reusable, as the service's are (a retried call)
            shard = self.shards[shard_id]
            limit = min(self.page_limit, int(params.get("Limit") or 1000))
            page = shard.records[index : index + limit]
            end = index + len(page)
            self.reads.append((shard_id, len(page)))
            response: dict[str, Any] = {"Records": page}
            if not (shard.closed and end >= len(shard.records)):
                response["NextShardIterator"] = self._issue(shard_id, end)
            return response


class DynamoDBScript(Protocol):
    """DynamoDB calls answered from a script: a response, None to relay the call, or StreamError to refuse it."""

    def answer(self, operation: str, params: dict[str, Any]) -> dict[str, Any] | None: ...


class ScriptedStreamServer:
    """The HTTP endpoint: DynamoDB relayed to ``upstream_url`` (DynamoDB Local), DynamoDB Streams from ``script``."""

    def __init__(
        self, upstream_url: str, scripts: Iterable[StreamScript] = (), *, dynamodb: DynamoDBScript | None = None
    ) -> None:
        upstream = urlsplit(upstream_url)
        if upstream.scheme != "http" or upstream.hostname is None:
            raise ValueError(f"upstream must be http://host:port, not {upstream_url!r}")
        self._upstream = (upstream.hostname, upstream.port or 80)
        self.scripts: dict[str, StreamScript] = {s.table: s for s in scripts}
        self.dynamodb = dynamodb
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def add(self, script: StreamScript) -> StreamScript:
        self.scripts[script.table] = script
        return script

    @property
    def endpoint_url(self) -> str:
        if self._server is None:
            raise RuntimeError("server is not started")
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def _script_of_arn(self, arn: object) -> StreamScript | None:
        return next((s for s in self.scripts.values() if s.arn == arn), None)

    def _streams(self, operation: str, body: bytes) -> tuple[int, bytes]:
        try:
            params = json.loads(body or b"{}")
            if operation == "ListStreams":
                script = self.scripts.get(params.get("TableName")) or next(iter(self.scripts.values()), None)
            elif operation == "GetRecords":
                arn = str(params.get("ShardIterator", "")).partition("|")[0]
                script = self._script_of_arn(arn)
            else:
                script = self._script_of_arn(params.get("StreamArn"))
            if script is None:
                raise StreamError("ResourceNotFoundException", "Requested resource not found: Stream not found")
            answer = script.answer(operation, params)
            if operation == "GetRecords" and script.latency:
                time.sleep(script.latency)  # outside the script's lock: calls on other shards go on meanwhile
        except StreamError as error:
            return 400, _dumps({"__type": f"com.amazonaws.dynamodb.v20120810#{error.code}", "message": error.message})
        return 200, _dumps(answer)

    def _scripted_dynamodb(self, operation: str, body: bytes) -> tuple[int, bytes] | None:
        """The ``dynamodb`` script's answer to a DynamoDB call, or None: relay it to DynamoDB Local."""
        if self.dynamodb is None:
            return None
        try:
            answer = self.dynamodb.answer(operation, json.loads(body or b"{}"))
        except StreamError as error:
            return 400, _dumps({"__type": f"com.amazonaws.dynamodb.v20120810#{error.code}", "message": error.message})
        return None if answer is None else (200, _dumps(answer))

    def _describe_table(self, status: int, body: bytes) -> bytes:
        """DescribeTable of a scripted table names the scripted stream."""
        if status != 200:
            return body
        answer = json.loads(body)
        table = answer.get("Table", {})
        script = self.scripts.get(table.get("TableName"))
        if script is None or "LatestStreamArn" not in table:
            return body
        table["LatestStreamArn"] = script.arn
        table["LatestStreamLabel"] = script.label
        return _dumps(answer)

    def start(self) -> Self:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                target = self.headers.get("X-Amz-Target") or ""
                operation = operation_of(target)
                if target.startswith(STREAMS_PREFIX):
                    status, answer = server._streams(operation, body)
                    self._reply(status, [("Content-Type", JSON_CONTENT_TYPE)], answer)
                    return
                scripted = server._scripted_dynamodb(operation, body)
                if scripted is not None:
                    self._reply(scripted[0], [("Content-Type", JSON_CONTENT_TYPE)], scripted[1])
                    return
                status, headers, answer = forward(server._upstream, self, body)
                if operation == "DescribeTable":
                    answer = server._describe_table(status, answer)
                    headers = [(n, v) for n, v in headers if n.lower() != "x-amz-crc32"]  # the body changed
                self._reply(status, headers, answer)

            def log_message(self, format: str, *args: object) -> None:
                pass

            def _reply(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
                self.send_response(status)
                for name, value in headers:
                    if name.lower() not in HOP_BY_HOP and name.lower() not in ("server", "date"):
                        self.send_header(name, value)
                self.send_header("x-amzn-RequestId", "SCRIPTED0000000000000000000000000000000000000000000")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self._server = _QuietServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, name="scripted-streams", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def __enter__(self) -> Self:
        if self._server is None:
            self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client killed mid-request (the tests kill podyn with SIGKILL) resets its connection: not an error."""
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


def _dumps(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()
