"""The raw JSON fast path: same answers as boto3 in wire shapes, botocore's errors and retries, SigV4 on the wire.

Signing is checked against a scripted local HTTP server that records what arrives (DynamoDB Local ignores
signatures), with an independent SigV4 computation; answers are checked against boto3's client on DynamoDB Local;
retries through the throttling proxy and the scripted server, with sleeping recorded instead of done.
"""

from __future__ import annotations

import base64
import collections
import concurrent.futures
import contextlib
import datetime as dt
import hashlib
import hmac
import re
import threading
import time
from collections.abc import Callable, Iterator
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

import boto3
import botocore.config
import orjson
import psycopg
import pytest
from botocore.credentials import RefreshableCredentials
from botocore.exceptions import ClientError, EndpointConnectionError, ReadTimeoutError
from helpers import run_podyn
from proxy import ThrottlingProxy
from psycopg import sql

from podyn_py.config import AwsSettings
from podyn_py.core.changes import Delete, Upsert, to_change
from podyn_py.core.values import decode_binary
from podyn_py.demo_services import LOCAL_ACCESS_KEY, LOCAL_SECRET_KEY, LocalDynamoDB, free_port, local_client
from podyn_py.source.dynamodb import make_client
from podyn_py.source.fastpath import RawJsonClient
from podyn_py.source.streams import StreamReader

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient
    from mypy_boto3_dynamodbstreams import DynamoDBStreamsClient

CreateTable = Callable[..., str]


# -- helpers ---------------------------------------------------------------------------------------------------------


def as_wire(value: Any) -> Any:
    """A boto3-parsed response in the shapes the wire carries: bytes as base64 text, datetimes as epoch seconds."""
    if isinstance(value, dict):
        return {k: as_wire(v) for k, v in value.items() if k != "ResponseMetadata"}
    if isinstance(value, list):
        return [as_wire(v) for v in value]
    if isinstance(value, bytes):
        return base64.b64encode(value).decode("ascii")
    if isinstance(value, dt.datetime):
        return value.timestamp()
    return value


class Sleeps(list[float]):
    """Records the delays a client asks for instead of sleeping them."""

    def __call__(self, seconds: float) -> None:
        self.append(seconds)


def fast(client: Any, **kwargs: Any) -> RawJsonClient:
    """A fast client that never really sleeps and whose jitter always picks the largest delay."""
    kwargs.setdefault("sleep", Sleeps())
    return RawJsonClient(client, random=lambda: 1.0, **kwargs)


Reply = tuple[int, dict[str, str], bytes, float]  # status, headers, body, seconds to wait before answering


class ScriptedServer:
    """A local HTTP server that records each request and answers from a script (then ``200 {}``)."""

    def __init__(self) -> None:
        self.requests: list[tuple[dict[str, str], bytes]] = []
        self.replies: collections.deque[Reply] = collections.deque()
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with server._lock:
                    server.requests.append((dict(self.headers.items()), body))
                    status, headers, reply, delay = (
                        server.replies.popleft() if server.replies else (200, {}, b"{}", 0.0)
                    )
                time.sleep(delay)
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # the client timed out
                    self.wfile.write(reply)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"

    def reply(self, status: int, body: Any, *, headers: dict[str, str] | None = None, delay: float = 0.0) -> None:
        data = body if isinstance(body, bytes) else orjson.dumps(body)
        self.replies.append((status, headers or {"Content-Type": "application/x-amz-json-1.0"}, data, delay))

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()


@pytest.fixture
def scripted() -> Iterator[ScriptedServer]:
    server = ScriptedServer()
    yield server
    server.close()


def boto_client(
    endpoint: str, service: str = "dynamodb", *, region: str = "us-east-1", **kwargs: Any
) -> Any:  # a plain boto3 client with fixed credentials, for endpoints that are not DynamoDB Local
    kwargs.setdefault("aws_access_key_id", LOCAL_ACCESS_KEY)
    kwargs.setdefault("aws_secret_access_key", LOCAL_SECRET_KEY)
    return boto3.client(service, endpoint_url=endpoint, region_name=region, **kwargs)  # type: ignore[call-overload]


# -- signing ---------------------------------------------------------------------------------------------------------


def _hmac(key: bytes, text: str) -> bytes:
    return hmac.new(key, text.encode(), hashlib.sha256).digest()


def expected_signature(headers: dict[str, str], body: bytes, secret: str) -> str:
    """SigV4 computed from what arrived, independently of botocore: a request signed for other headers (say, a
    Host the HTTP library did not send) fails this."""
    auth = re.fullmatch(
        r"AWS4-HMAC-SHA256 Credential=[^/]+/(\d{8})/([^/]+)/([^/]+)/aws4_request, SignedHeaders=([a-z0-9;-]+), "
        r"Signature=[0-9a-f]{64}",
        headers["Authorization"],
    )
    assert auth is not None, headers["Authorization"]
    date, region, service, signed = auth.groups()
    lower = {k.lower(): v for k, v in headers.items()}
    canonical = "\n".join(
        [
            "POST",
            "/",
            "",
            "".join(f"{name}:{' '.join(lower[name].split())}\n" for name in signed.split(";")),
            signed,
            hashlib.sha256(body).hexdigest(),
        ]
    )
    to_sign = "\n".join(
        [
            "AWS4-HMAC-SHA256",
            lower["x-amz-date"],
            f"{date}/{region}/{service}/aws4_request",
            hashlib.sha256(canonical.encode()).hexdigest(),
        ]
    )
    key = ("AWS4" + secret).encode()
    for part in (date, region, service, "aws4_request"):
        key = _hmac(key, part)
    return hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()


@pytest.mark.parametrize(
    ("service", "target"),
    [("dynamodb", "DynamoDB_20120810.Scan"), ("dynamodbstreams", "DynamoDBStreams_20120810.GetRecords")],
)
def test_requests_are_signed_with_sigv4_and_carry_the_target(
    scripted: ScriptedServer, service: str, target: str
) -> None:
    client = boto_client(
        scripted.url,
        service,
        region="eu-west-3",
        aws_access_key_id="AKIDEXAMPLE",
        aws_secret_access_key="wJalrXUtnFEMI/K7MDENG",
        aws_session_token="session-token",
    )
    with fast(client) as raw:
        assert raw.call(target.rpartition(".")[2], {"TableName": "t", "Key": {"k": {"B": b"\x00\xff"}}}) == {}
    client.close()
    [(headers, body)] = scripted.requests
    amz_date = headers["X-Amz-Date"]
    assert re.fullmatch(r"\d{8}T\d{6}Z", amz_date)
    assert headers["Authorization"].startswith(
        f"AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/{amz_date[:8]}/eu-west-3/dynamodb/aws4_request, "
    )
    signed = re.search(r"SignedHeaders=([^,]+)", headers["Authorization"])
    assert signed is not None
    assert {"host", "x-amz-date", "x-amz-target", "x-amz-security-token"} <= set(signed.group(1).split(";"))
    assert headers["Authorization"].endswith(f"Signature={expected_signature(headers, body, 'wJalrXUtnFEMI/K7MDENG')}")
    assert headers["X-Amz-Security-Token"] == "session-token"
    assert headers["X-Amz-Target"] == target
    assert headers["Content-Type"] == "application/x-amz-json-1.0"
    # Binary given as bytes (boto3's shape) goes out as base64 text.
    assert orjson.loads(body) == {"TableName": "t", "Key": {"k": {"B": "AP8="}}}


def test_credentials_are_frozen_per_request_so_refreshed_ones_are_used(scripted: ScriptedServer) -> None:
    issued = 0

    def refresh() -> dict[str, str]:
        nonlocal issued
        issued += 1
        # Expiring within botocore's mandatory refresh window: every freeze fetches new credentials.
        expiry = dt.datetime.now(dt.UTC) + dt.timedelta(minutes=5)
        return {
            "access_key": f"AKID{issued}",
            "secret_key": f"s{issued}",
            "token": "",
            "expiry_time": expiry.isoformat(),
        }

    credentials = RefreshableCredentials.create_from_metadata(refresh(), refresh, "test")
    client = boto_client(scripted.url)
    with fast(client, credentials=credentials) as raw:
        raw.call("Scan", {"TableName": "t"})
        raw.call("Scan", {"TableName": "t"})
    client.close()
    keys = [h["Authorization"].split("Credential=")[1].split("/")[0] for h, _ in scripted.requests]
    assert keys[0] != keys[1]
    assert keys == [f"AKID{issued - 1}", f"AKID{issued}"]
    # Each was signed with its own secret.
    for (headers, body), key in zip(scripted.requests, keys, strict=True):
        assert headers["Authorization"].endswith(expected_signature(headers, body, "s" + key.removeprefix("AKID")))


# -- errors and retries, scripted ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "body", "headers", "code", "message"),
    [
        (
            400,
            {"__type": "com.amazonaws.dynamodb.v20120810#ResourceNotFoundException", "message": "no table"},
            {},
            "ResourceNotFoundException",
            "no table",
        ),
        (400, {"__type": "ValidationException", "Message": "capital M"}, {}, "ValidationException", "capital M"),
        (
            400,
            {"message": "code in a header"},
            {"x-amzn-ErrorType": "AccessDeniedException:http://x/"},
            "AccessDeniedException",
            "code in a header",
        ),
        (403, b"<html>not JSON</html>", {}, "403", "Forbidden"),
        (413, b"", {}, "413", "Request Entity Too Large"),
    ],
    ids=["type-with-namespace", "capital-message", "header-code", "not-json", "empty"],
)
def test_errors_are_client_errors_shaped_like_botocores(
    scripted: ScriptedServer, status: int, body: Any, headers: dict[str, str], code: str, message: str
) -> None:
    scripted.reply(status, body, headers={"x-amzn-RequestId": "req-1", **headers})
    client = boto_client(scripted.url)
    with fast(client) as raw, pytest.raises(ClientError) as raised:
        raw.call("Scan", {"TableName": "t"})
    client.close()
    assert raised.value.operation_name == "Scan"
    assert raised.value.response["Error"] == {"Code": code, "Message": message}
    metadata = raised.value.response["ResponseMetadata"]
    assert (metadata["HTTPStatusCode"], metadata["RetryAttempts"], metadata["RequestId"]) == (status, 0, "req-1")
    assert len(scripted.requests) == 1  # client errors are not retried


def test_modeled_error_fields_sit_next_to_error_as_in_botocore(scripted: ScriptedServer) -> None:
    reasons = [{"Code": "ConditionalCheckFailed", "Message": "no"}]
    scripted.reply(400, {"__type": "x#TransactionCanceledException", "Message": "m", "CancellationReasons": reasons})
    client = boto_client(scripted.url)
    with fast(client) as raw, pytest.raises(ClientError) as raised:
        raw.call("TransactWriteItems", {})
    client.close()
    assert raised.value.response["CancellationReasons"] == reasons


def test_throttling_and_server_errors_back_off_like_botocores_standard_mode(scripted: ScriptedServer) -> None:
    throttled = {"__type": "x#ThrottlingException", "message": "slow down"}
    for _ in range(6):
        scripted.reply(400, throttled)
    scripted.reply(500, {"__type": "InternalServerError", "message": "oops"})
    scripted.reply(503, b"")
    scripted.reply(200, {"Items": []})
    sleeps = Sleeps()
    client = boto_client(scripted.url)
    with fast(client, sleep=sleeps, max_backoff=20.0) as raw:
        assert raw.call("Scan", {"TableName": "t"}) == {"Items": []}
    client.close()
    # Throttling from 1 s, doubling, capped; other transient failures from DynamoDB's 25 ms.
    assert sleeps == [1.0, 2.0, 4.0, 8.0, 16.0, 20.0, 0.025 * 2**6, 0.025 * 2**7]
    assert len(scripted.requests) == 9


def test_retry_after_header_raises_the_delay_by_at_most_five_seconds(scripted: ScriptedServer) -> None:
    scripted.reply(400, {"__type": "x#ThrottlingException"}, headers={"x-amz-retry-after": "3500"})
    scripted.reply(400, {"__type": "x#ThrottlingException"}, headers={"x-amz-retry-after": "60000"})
    sleeps = Sleeps()
    client = boto_client(scripted.url)
    with RawJsonClient(client, sleep=sleeps, random=lambda: 0.5) as raw:
        raw.call("Scan", {})
    client.close()
    assert sleeps == [3.5, 1.0 + 5.0]


def test_retries_stop_after_max_attempts_with_botocores_markers(scripted: ScriptedServer) -> None:
    for _ in range(3):
        scripted.reply(500, {"__type": "InternalServerError", "message": "still broken"})
    client = boto_client(scripted.url)
    with fast(client, max_attempts=3) as raw, pytest.raises(ClientError) as raised:
        raw.call("GetRecords", {})
    client.close()
    assert raised.value.response["Error"]["Code"] == "InternalServerError"
    assert raised.value.response["ResponseMetadata"]["RetryAttempts"] == 2
    assert raised.value.response["ResponseMetadata"]["MaxAttemptsReached"] is True  # type: ignore[typeddict-item]
    assert "reached max retries: 2" in str(raised.value)
    assert len(scripted.requests) == 3


def test_read_timeouts_are_retried(scripted: ScriptedServer) -> None:
    scripted.reply(200, {"late": True}, delay=1.0)
    scripted.reply(200, {"Count": 1})
    client = boto_client(scripted.url, config=botocore.config.Config(read_timeout=0.2))
    sleeps = Sleeps()
    with fast(client, sleep=sleeps) as raw:
        assert raw.call("Scan", {}) == {"Count": 1}
    client.close()
    assert sleeps == [0.025]

    scripted.reply(200, {}, delay=1.0)
    client = boto_client(scripted.url, config=botocore.config.Config(read_timeout=0.2))
    with fast(client, max_attempts=1) as raw, pytest.raises(ReadTimeoutError):
        raw.call("Scan", {})
    client.close()


def test_refused_connections_end_in_botocores_endpoint_connection_error() -> None:
    client = boto_client(f"http://127.0.0.1:{free_port()}")
    sleeps = Sleeps()
    with fast(client, max_attempts=3, sleep=sleeps) as raw, pytest.raises(EndpointConnectionError):
        raw.call("Scan", {})
    client.close()
    assert sleeps == [0.025, 0.05]


def test_settings_come_from_the_boto3_client() -> None:
    client = boto_client("http://127.0.0.1:1/", "dynamodbstreams", region="ap-south-2")
    with RawJsonClient(client) as raw:
        assert (raw.endpoint_url, raw.region, raw.signing_name, raw.target_prefix) == (
            "http://127.0.0.1:1/",
            "ap-south-2",
            "dynamodb",
            "DynamoDBStreams_20120810",
        )
    client.close()
    s3 = boto3.client("s3", region_name="us-east-1")
    with pytest.raises(ValueError, match="JSON protocol"):
        RawJsonClient(s3)
    s3.close()


# -- against DynamoDB Local ------------------------------------------------------------------------------------------

EVERY_TYPE: list[dict[str, Any]] = [
    {
        "pk": {"S": f"p{i % 3}"},
        "sk": {"B": bytes([i, 0, 255 - i])},
        "s": {"S": f"text {i} ü \u2603"},
        "n": {"N": "12345678901234567890123456789012345678" if i % 2 else f"-{i}.5"},
        "small": {"N": "1E-130"},
        "b": {"B": bytes(range(i, i + 20))},
        "empty_b": {"B": b""},
        "t": {"BOOL": i % 2 == 0},
        "nothing": {"NULL": True},
        "m": {"M": {"inner": {"B": b"\x00\x01"}, "list": {"L": [{"N": "1"}, {"S": "x"}, {"BS": [b"y", b"z"]}]}}},
        "l": {"L": [{"B": b"\xfe"}, {"NULL": True}, {"M": {}}]},
        "ss": {"SS": ["a", "b", f"c{i}"]},
        "ns": {"NS": ["1", "99999999999999999999999999999999999999", "-0.001"]},
        "bs": {"BS": [b"\x00", b"\x01\x02", bytes([i, 7])]},
    }
    for i in range(12)
]


def test_podyn_uses_the_http_proxy_boto3_uses(
    ddb_server: LocalDynamoDB, pg_url: str, create_table: CreateTable, throttling_proxy: ThrottlingProxy
) -> None:
    """HTTP_PROXY, with credentials in it, carries the fast path's Scan as it carries boto3's calls."""
    table = create_table(items=[{"pk": {"S": f"k{i}"}, "n": {"N": str(i)}} for i in range(20)])
    proxy_url = throttling_proxy.endpoint_url.replace("http://", "http://scott:ti%40ger@")
    env = {"HTTP_PROXY": proxy_url, "http_proxy": proxy_url, "NO_PROXY": "", "no_proxy": ""}
    command = ["--endpoint-url", ddb_server.endpoint_url, "-u", pg_url, "-s", "-d", "-t", table, "--no-progress"]
    result = run_podyn(*command, env=env)
    assert result.returncode == 0, result.stderr
    credentials = {"Basic " + base64.b64encode(b"scott:ti@ger").decode()}
    assert throttling_proxy.proxy_authorization["Scan"] == credentials  # the fast path
    assert throttling_proxy.proxy_authorization["DescribeTable"] == credentials  # boto3
    with psycopg.connect(pg_url) as conn:
        loaded = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(table))).fetchone()
    assert loaded == (20,)


def test_the_fast_path_verifies_tls_with_the_ca_bundle_boto3_uses(monkeypatch: pytest.MonkeyPatch) -> None:
    """AWS_CA_BUNDLE, as botocore reads it, is the bundle the fast path's pool verifies with (no TLS server here)."""
    settings = AwsSettings(endpoint_url="https://dynamodb.example.test", region="eu-west-1")
    for variable, bundle in (("AWS_CA_BUNDLE", "/etc/podyn-test/aws.pem"), ("REQUESTS_CA_BUNDLE", "/tmp/req.pem")):
        monkeypatch.delenv("AWS_CA_BUNDLE", raising=False)
        monkeypatch.setenv(variable, bundle)
        with make_client(settings, data=True) as raw:
            assert isinstance(raw, RawJsonClient)
            assert raw._pool.connection_pool_kw["ca_certs"] == bundle


def _scan_pages(call: Callable[[dict[str, Any]], dict[str, Any]], request: dict[str, Any]) -> list[dict[str, Any]]:
    pages = []
    request = dict(request)
    while True:
        page = call(request)
        pages.append(page)
        if "LastEvaluatedKey" not in page:
            return pages
        request["ExclusiveStartKey"] = page["LastEvaluatedKey"]


def test_scan_returns_what_boto3_returns_in_wire_shapes(ddb: DynamoDBClient, create_table: CreateTable) -> None:
    table = create_table((("pk", "S"), ("sk", "B")), items=EVERY_TYPE)
    with RawJsonClient(ddb) as raw:
        for total in (1, 2, 3):
            pages = []
            for segment in range(total):
                request = {
                    "TableName": table,
                    "Segment": segment,
                    "TotalSegments": total,
                    "ReturnConsumedCapacity": "TOTAL",
                    "Limit": 2,
                }
                slow = _scan_pages(lambda r: dict(ddb.scan(**r)), request)
                quick = _scan_pages(lambda r: raw.call("Scan", r), request)
                assert quick == as_wire(slow)
                pages.extend(quick)
            assert sum(page["Count"] for page in pages) == len(EVERY_TYPE)
            assert len(pages) > total  # pages were followed with ExclusiveStartKey
        # A start key straight from boto3 (binary as bytes) is accepted and means the same.
        first = ddb.scan(TableName=table, Limit=4)
        after_boto3_key = raw.call("Scan", {"TableName": table, "ExclusiveStartKey": first["LastEvaluatedKey"]})
        assert after_boto3_key == as_wire(ddb.scan(TableName=table, ExclusiveStartKey=first["LastEvaluatedKey"]))
        everything = raw.scan(TableName=table)
    assert everything["Count"] == len(EVERY_TYPE)
    # Binary really is base64 of boto3's bytes, down to sets nested in lists.
    by_key = {(i["pk"]["S"], decode_binary(i["sk"]["B"])): i for i in everything["Items"]}
    for item in EVERY_TYPE:
        got = by_key[(item["pk"]["S"], item["sk"]["B"])]
        assert decode_binary(got["b"]["B"]) == item["b"]["B"]
        assert decode_binary(got["empty_b"]["B"]) == b""
        assert sorted(map(decode_binary, got["bs"]["BS"])) == sorted(item["bs"]["BS"])
        assert [decode_binary(v) for v in got["m"]["M"]["list"]["L"][2]["BS"]] == [b"y", b"z"]
        assert got["n"] == item["n"]
        assert sorted(map(Decimal, got["ns"]["NS"])) == sorted(map(Decimal, item["ns"]["NS"]))


def test_dynamodb_errors_are_the_same_client_errors(ddb: DynamoDBClient, create_table: CreateTable) -> None:
    table = create_table()
    with RawJsonClient(ddb) as raw:
        with pytest.raises(ClientError) as missing:
            raw.call("Scan", {"TableName": "no_such_table_here"})
        with pytest.raises(ClientError) as invalid:
            raw.call("Scan", {"TableName": table, "Segment": 3, "TotalSegments": 2})
    with pytest.raises(ClientError) as boto3_missing:
        ddb.scan(TableName="no_such_table_here")
    with pytest.raises(ClientError) as boto3_invalid:
        ddb.scan(TableName=table, Segment=3, TotalSegments=2)
    assert missing.value.response["Error"] == boto3_missing.value.response["Error"]
    assert missing.value.response["Error"]["Code"] == "ResourceNotFoundException"
    assert missing.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400
    assert invalid.value.response["Error"] == boto3_invalid.value.response["Error"]
    assert invalid.value.response["Error"]["Code"] == "ValidationException"
    assert "segment" in invalid.value.response["Error"]["Message"]


def test_stream_calls_return_what_boto3_returns_in_wire_shapes(
    ddb: DynamoDBClient, ddb_streams: DynamoDBStreamsClient, create_table: CreateTable
) -> None:
    table = create_table((("pk", "S"), ("sk", "B")), stream_view_type="NEW_AND_OLD_IMAGES")
    for item in EVERY_TYPE[:4]:
        ddb.put_item(TableName=table, Item=item)
    ddb.delete_item(TableName=table, Key={"pk": EVERY_TYPE[0]["pk"], "sk": EVERY_TYPE[0]["sk"]})
    arn = ddb.describe_table(TableName=table)["Table"]["LatestStreamArn"]
    with RawJsonClient(ddb_streams) as raw:
        described = raw.describe_stream(StreamArn=arn)
        assert described == as_wire(ddb_streams.describe_stream(StreamArn=arn))
        shard = described["StreamDescription"]["Shards"][0]["ShardId"]
        where = {"StreamArn": arn, "ShardId": shard, "ShardIteratorType": "TRIM_HORIZON"}
        quick = raw.get_records(ShardIterator=raw.get_shard_iterator(**where)["ShardIterator"], Limit=100)
    slow = ddb_streams.get_records(
        ShardIterator=ddb_streams.get_shard_iterator(**where)["ShardIterator"],
        Limit=100,
    )
    assert [r["eventName"] for r in quick["Records"]] == ["INSERT"] * 4 + ["REMOVE"]
    assert {k: v for k, v in quick.items() if k != "NextShardIterator"} == as_wire(
        {k: v for k, v in slow.items() if k != "NextShardIterator"}
    )
    for fast_record, boto3_record in zip(quick["Records"], slow["Records"], strict=True):
        created = fast_record["dynamodb"]["ApproximateCreationDateTime"]
        assert isinstance(created, int | float)
        assert created == boto3_record["dynamodb"]["ApproximateCreationDateTime"].timestamp()
        # podyn's core reads either shape into the same change.
        assert to_change(fast_record, ["pk", "sk"]).created_at == to_change(boto3_record, ["pk", "sk"]).created_at


def test_stream_reader_runs_on_the_fast_client(
    ddb: DynamoDBClient, ddb_streams: DynamoDBStreamsClient, create_table: CreateTable
) -> None:
    table = create_table((("pk", "S"), ("sk", "B")), stream_view_type="NEW_IMAGE")
    ddb.put_item(TableName=table, Item=EVERY_TYPE[1])
    ddb.delete_item(TableName=table, Key={"pk": EVERY_TYPE[1]["pk"], "sk": EVERY_TYPE[1]["sk"]})
    arn = ddb.describe_table(TableName=table)["Table"]["LatestStreamArn"]

    def read_two(client: Any) -> list[dict[str, Any]]:
        reader = StreamReader(client, arn)
        records: list[dict[str, Any]] = []
        deadline = time.monotonic() + 30
        while len(records) < 2:
            assert time.monotonic() < deadline
            records.extend(r for batch in reader.read(max_wait=0.5) for r in batch.records)
        return records

    with RawJsonClient(ddb_streams) as raw:
        quick = read_two(raw)
    slow = read_two(ddb_streams)
    upsert, delete = (to_change(r, ["pk", "sk"]) for r in quick)
    assert isinstance(upsert, Upsert) and isinstance(delete, Delete)
    assert decode_binary(upsert.key["sk"]["B"]) == EVERY_TYPE[1]["sk"]["B"]
    assert decode_binary(upsert.item["b"]["B"]) == EVERY_TYPE[1]["b"]["B"]
    for fast_change, boto3_change in zip((upsert, delete), (to_change(r, ["pk", "sk"]) for r in slow), strict=True):
        assert type(fast_change) is type(boto3_change)
        assert fast_change.key == as_wire(boto3_change.key)
        assert fast_change.created_at == boto3_change.created_at
    assert upsert.item == as_wire(to_change(slow[0], ["pk", "sk"]).item)  # type: ignore[union-attr]


# -- throttling through the proxy ------------------------------------------------------------------------------------


def test_throttled_scans_are_retried_until_they_succeed(
    throttling_proxy: ThrottlingProxy, create_table: CreateTable
) -> None:
    table = create_table(items=[{"pk": {"S": "x"}}, {"pk": {"S": "y"}}])
    throttling_proxy.throttle("Scan", 3)
    client = local_client("dynamodb", throttling_proxy.endpoint_url)
    sleeps = Sleeps()
    with fast(client, max_attempts=5, sleep=sleeps) as raw:
        page = raw.call("Scan", {"TableName": table})
    client.close()
    assert page["Count"] == 2
    assert throttling_proxy.count("Scan") == 4
    assert sleeps == [1.0, 2.0, 4.0]


def test_throttling_beyond_max_attempts_raises_the_throttling_error(
    throttling_proxy: ThrottlingProxy, create_table: CreateTable
) -> None:
    table = create_table(items=[{"pk": {"S": "x"}}])
    throttling_proxy.throttle("Scan", 6)
    client = local_client("dynamodb", throttling_proxy.endpoint_url)
    with fast(client, max_attempts=5) as raw, pytest.raises(ClientError) as raised:
        raw.call("Scan", {"TableName": table})
    client.close()
    assert raised.value.response["Error"]["Code"] == "ProvisionedThroughputExceededException"
    assert raised.value.response["ResponseMetadata"]["RetryAttempts"] == 4
    assert throttling_proxy.count("Scan") == 5
    assert throttling_proxy.pending_faults("Scan") == 1


def test_one_client_serves_parallel_segments(ddb: DynamoDBClient, create_table: CreateTable) -> None:
    table = create_table((("pk", "S"), ("sk", "B")), items=EVERY_TYPE)

    def segment(raw: RawJsonClient, number: int) -> list[Any]:
        request = {"TableName": table, "Segment": number, "TotalSegments": 4, "Limit": 1}
        return [i["sk"]["B"] for page in _scan_pages(lambda r: raw.call("Scan", r), request) for i in page["Items"]]

    with RawJsonClient(ddb, pool_size=2) as raw, concurrent.futures.ThreadPoolExecutor(4) as pool:
        keys = [k for found in pool.map(lambda n: segment(raw, n), range(4)) for k in found]
    assert sorted(map(decode_binary, keys)) == sorted(i["sk"]["B"] for i in EVERY_TYPE)
