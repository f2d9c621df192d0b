"""Exports of DynamoDB tables in S3, written by the tests in the documented layout, and a slow S3 in front of moto.

DynamoDB Local has no ExportTableToPointInTime, so :func:`write_export` makes what an export would be: it scans
the table (boto3, consistent reads) and writes ``AWSDynamoDB/<ExportId>/manifest-summary.json``,
``manifest-files.json`` (JSON lines with ``dataFileS3Key``, ``itemCount``, ``md5Checksum``: base64 MD5 of the gzip
object, ``etag``) and ``data/<name>.json.gz`` files, in DYNAMODB_JSON (``{"Item": {...}}`` lines) or ION
(``$ion_1_0 {Item: {...}}`` lines, sets annotated ``$dynamodb_SS``/``NS``/``BS``, numbers as Ion decimals written
as DynamoDB does: ``600`` as ``6d2``), to the real S3 API of moto's server. The layout is the one the DynamoDB
Developer Guide documents ("DynamoDB table export output format").

:class:`SlowS3` is an HTTP proxy in front of it that sends object bodies slowly, so that a test can kill podyn in
the middle of a data file.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import http.client
import json
import os
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Context, Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Self
from urllib.parse import urlsplit

from amazon.ion import simpleion
from amazon.ion.core import IonType
from amazon.ion.simple_types import IonPyBytes, IonPyList, IonPyNull

#: How far ahead of now a test export's time is set: as if the export had been made a little more than two minutes
#: after the table (and its stream) were created, which podyn requires of an export a stream takes over from.
AFTER_STREAM = timedelta(seconds=125)

_DECIMALS = Context(prec=60)


@dataclass(frozen=True)
class WrittenExport:
    url: str
    export_id: str
    bucket: str
    #: S3 keys of the data files, in manifest order.
    data_keys: tuple[str, ...]
    items: int
    #: The export time its summary gives (milliseconds, as DynamoDB writes it).
    export_time: datetime


def scan_all(ddb: Any, table: str) -> list[dict[str, Any]]:
    """Every item of a table (boto3's shape: binary as bytes), in scan order."""
    found: list[dict[str, Any]] = []
    request: dict[str, Any] = {"TableName": table, "ConsistentRead": True}
    while True:
        page = ddb.scan(**request)
        found.extend(page["Items"])
        if "LastEvaluatedKey" not in page:
            return found
        request["ExclusiveStartKey"] = page["LastEvaluatedKey"]


def write_export(
    s3: Any,
    ddb: Any,
    table: str,
    *,
    bucket: str,
    output_format: str = "DYNAMODB_JSON",
    files: int = 3,
    prefix: str = "exports",
    export_time: datetime | None = None,
    items: list[dict[str, Any]] | None = None,
    export_id: str | None = None,
) -> WrittenExport:
    """Write an export of ``table`` (its items now, or ``items``) to ``s3://bucket/prefix/AWSDynamoDB/<id>/``.

    ``export_time`` defaults to now plus :data:`AFTER_STREAM`; ``export_id`` to one made from it, as DynamoDB's
    are. Items are dealt to ``files`` data files in turn (a file may end up empty, as a real export's empty
    partitions do).
    """
    description = ddb.describe_table(TableName=table)["Table"]
    when = export_time or datetime.now(UTC) + AFTER_STREAM
    when = when.replace(microsecond=when.microsecond // 1000 * 1000)
    export_id = export_id or f"{int(when.timestamp() * 1000):014d}-{os.urandom(4).hex()}"
    folder = f"{prefix}/AWSDynamoDB/{export_id}/" if prefix else f"AWSDynamoDB/{export_id}/"
    rows = scan_all(ddb, table) if items is None else items
    encode = _ion_line if output_format == "ION" else _json_line
    entries = []
    keys = []
    for number in range(files):
        name = f"{os.urandom(13).hex()}.json.gz"
        body = gzip.compress(b"".join(encode(item) for item in rows[number::files]))
        key = f"{folder}data/{name}"
        s3.put_object(Bucket=bucket, Key=key, Body=body)
        keys.append(key)
        entries.append(
            {
                "itemCount": len(rows[number::files]),
                "md5Checksum": base64.b64encode(hashlib.md5(body).digest()).decode(),
                "etag": hashlib.md5(body).hexdigest() + "-1",
                "dataFileS3Key": key,
            }
        )
    manifest_files = "".join(json.dumps(entry) + "\n" for entry in entries).encode()
    s3.put_object(Bucket=bucket, Key=f"{folder}manifest-files.json", Body=manifest_files)
    summary = {
        "version": "2020-06-30",
        "exportArn": f"{description['TableArn']}/export/{export_id}",
        "startTime": _iso(when),
        "endTime": _iso(when + timedelta(minutes=5)),
        "tableArn": description["TableArn"],
        "tableId": description.get("TableId") or "00000000-0000-0000-0000-000000000000",
        "exportTime": _iso(when),
        "s3Bucket": bucket,
        "s3Prefix": prefix or None,
        "s3SseAlgorithm": "AES256",
        "s3SseKmsKeyId": None,
        "manifestFilesS3Key": f"{folder}manifest-files.json",
        "billedSizeBytes": int(description.get("TableSizeBytes") or sum(len(json.dumps(_wire(i))) for i in rows)),
        "itemCount": len(rows),
        "outputFormat": output_format,
        "exportType": "FULL_EXPORT",
    }
    s3.put_object(Bucket=bucket, Key=f"{folder}manifest-summary.json", Body=json.dumps(summary).encode())
    for name in ("manifest-summary", "manifest-files"):
        s3.put_object(Bucket=bucket, Key=f"{folder}{name}.checksum", Body=b"")
    s3.put_object(Bucket=bucket, Key=f"{folder}_started", Body=b"")
    return WrittenExport(f"s3://{bucket}/{folder}", export_id, bucket, tuple(keys), len(rows), when)


def incremental_line(
    keys: dict[str, Any], new: dict[str, Any] | None, old: dict[str, Any] | None, when: datetime
) -> dict[str, Any]:
    """One line of an incremental export (NEW_AND_OLD_IMAGES), in the wire shape: the item's state at the end of
    the window (no NewImage: deleted), its state at the start, the time of its last write in microseconds."""
    line: dict[str, Any] = {"Metadata": {"WriteTimestampMicros": {"N": str(int(when.timestamp() * 1_000_000))}}}
    line["Keys"] = keys
    if new is not None:
        line["NewImage"] = new
    if old is not None:
        line["OldImage"] = old
    return line


def write_incremental_export(
    s3: Any,
    *,
    table_arn: str,
    table_id: str | None,
    bucket: str,
    prefix: str,
    export_id: str,
    start: datetime,
    end: datetime,
    lines: list[dict[str, Any]],
    files: int = 2,
) -> int:
    """Write an incremental export of the ``lines`` (:func:`incremental_line`) whose write time is in [start, end)
    to ``s3://bucket/prefix/AWSDynamoDB/<export_id>/``, as the Developer Guide lays one out ("Incremental export
    output"): a summary with exportType INCREMENTAL_EXPORT, exportFromTime, exportToTime and outputView, the file
    list, gzip data files of DynamoDB JSON lines. The number of lines written."""
    folder = f"{prefix}/AWSDynamoDB/{export_id}/" if prefix else f"AWSDynamoDB/{export_id}/"

    def written_at(line: dict[str, Any]) -> datetime:
        return datetime.fromtimestamp(int(line["Metadata"]["WriteTimestampMicros"]["N"]) / 1e6, UTC)

    rows = [line for line in lines if start <= written_at(line) < end]
    entries = []
    for number in range(files):
        body = gzip.compress(b"".join(json.dumps(line).encode() + b"\n" for line in rows[number::files]))
        key = f"{folder}data/{os.urandom(13).hex()}.json.gz"
        s3.put_object(Bucket=bucket, Key=key, Body=body)
        entries.append(
            {
                "itemCount": len(rows[number::files]),
                "md5Checksum": base64.b64encode(hashlib.md5(body).digest()).decode(),
                "etag": hashlib.md5(body).hexdigest() + "-1",
                "dataFileS3Key": key,
            }
        )
    manifest_files = "".join(json.dumps(entry) + "\n" for entry in entries).encode()
    s3.put_object(Bucket=bucket, Key=f"{folder}manifest-files.json", Body=manifest_files)
    summary = {
        "version": "2020-06-30",
        "exportArn": f"{table_arn}/export/{export_id}",
        "startTime": _iso(end),
        "endTime": _iso(end + timedelta(minutes=5)),
        "tableArn": table_arn,
        "tableId": table_id or "00000000-0000-0000-0000-000000000000",
        "exportFromTime": _iso(start),
        "exportToTime": _iso(end),
        "s3Bucket": bucket,
        "s3Prefix": prefix or None,
        "s3SseAlgorithm": "AES256",
        "s3SseKmsKeyId": None,
        "manifestFilesS3Key": f"{folder}manifest-files.json",
        "billedSizeBytes": sum(len(json.dumps(line)) for line in rows),
        "itemCount": len(rows),
        "outputFormat": "DYNAMODB_JSON",
        "outputView": "NEW_AND_OLD_IMAGES",
        "exportType": "INCREMENTAL_EXPORT",
    }
    s3.put_object(Bucket=bucket, Key=f"{folder}manifest-summary.json", Body=json.dumps(summary).encode())
    s3.put_object(Bucket=bucket, Key=f"{folder}_started", Body=b"")
    return len(rows)


def _iso(when: datetime) -> str:
    return when.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _wire(value: Any) -> Any:
    """boto3's item (binary as bytes) in wire JSON form (binary as base64), as DynamoDB JSON exports hold it."""
    if isinstance(value, bytes | bytearray):
        return base64.b64encode(value).decode()
    if isinstance(value, dict):
        return {k: _wire(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_wire(v) for v in value]
    return value


def _json_line(item: dict[str, Any]) -> bytes:
    return json.dumps({"Item": _wire(item)}, ensure_ascii=False).encode() + b"\n"


def _ion_line(item: dict[str, Any]) -> bytes:
    text: str = simpleion.dumps({"Item": {name: _ion(value) for name, value in item.items()}}, binary=False)
    assert "\n" not in text
    return text.encode() + b"\n"


def _number(text: str) -> Decimal:
    """As DynamoDB writes numbers in Ion: trailing zeros folded into the exponent (600 → 6d2)."""
    return Decimal(text).normalize(_DECIMALS)


def _ion(value: dict[str, Any]) -> Any:
    ((tag, raw),) = value.items()
    if tag == "S":
        return raw
    if tag == "N":
        return _number(raw)
    if tag == "B":
        return IonPyBytes.from_value(IonType.BLOB, bytes(raw))
    if tag == "BOOL":
        return raw
    if tag == "NULL":
        return IonPyNull.from_value(IonType.NULL, None)
    if tag == "M":
        return {k: _ion(v) for k, v in raw.items()}
    if tag == "L":
        return [_ion(v) for v in raw]
    members: list[Any]
    if tag == "SS":
        members = list(raw)
    elif tag == "NS":
        members = [_number(n) for n in raw]
    elif tag == "BS":
        members = [IonPyBytes.from_value(IonType.BLOB, bytes(b)) for b in raw]
    else:
        raise ValueError(f"unknown tag {tag}")
    return IonPyList.from_value(IonType.LIST, members, annotations=(f"$dynamodb_{tag}",))


class SlowS3:
    """An HTTP proxy in front of an S3 endpoint that relays requests as they are and sends each response body in
    ``chunk`` bytes every ``pause`` seconds: a slow S3, for tests that must stop podyn in the middle of a file.

    Test code only, stdlib only (as tests/proxy.py). The Host header is forwarded as sent: it is signed.
    """

    def __init__(self, upstream_url: str, *, chunk: int = 8192, pause: float = 0.05) -> None:
        upstream = urlsplit(upstream_url)
        assert upstream.hostname is not None
        self._upstream = (upstream.hostname, upstream.port or 80)
        self.chunk = chunk
        self.pause = pause
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def endpoint_url(self) -> str:
        assert self._server is not None, "not started"
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def __enter__(self) -> Self:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                self._relay()

            def do_HEAD(self) -> None:
                self._relay()

            def do_PUT(self) -> None:
                self._relay()

            def _relay(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                upstream = http.client.HTTPConnection(*proxy._upstream, timeout=60)
                try:
                    upstream.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
                    for name, value in self.headers.items():
                        if name.lower() not in ("connection", "content-length", "transfer-encoding"):
                            upstream.putheader(name, value)
                    upstream.putheader("Content-Length", str(len(body)))
                    upstream.endheaders(body)
                    response = upstream.getresponse()
                    data = response.read()
                    self.send_response(response.status)
                    for name, value in response.getheaders():
                        if name.lower() not in ("connection", "content-length", "transfer-encoding", "server", "date"):
                            self.send_header(name, value)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    if self.command == "HEAD":
                        return
                    for start in range(0, len(data), proxy.chunk):
                        self.wfile.write(data[start : start + proxy.chunk])
                        self.wfile.flush()
                        time.sleep(proxy.pause)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client went away (killed): nothing to send to
                finally:
                    upstream.close()

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="slow-s3", daemon=True)
        self._thread.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join()


#: Every attribute type, numbers at DynamoDB's limits, binary, and the empty values DynamoDB allows (empty strings,
#: binary, maps and lists; it forbids empty sets).
EDGE_ITEMS: list[dict[str, Any]] = [
    {
        "pk": {"S": "all-types"},
        "s": {"S": 'text with "quotes", a\nnewline, é and 🦆'},
        "n": {"N": "600"},
        "b": {"B": bytes(range(256))},
        "bool": {"BOOL": True},
        "null": {"NULL": True},
        "m": {"M": {"nested": {"M": {"n": {"N": "-0.5"}, "l": {"L": [{"S": "x"}, {"N": "1e2"}]}}}}},
        "l": {"L": [{"N": "1"}, {"S": "two"}, {"BOOL": False}, {"NULL": True}, {"B": b"\x00\x01"}, {"M": {}}]},
        "ss": {"SS": ["a", "b", ""]},
        "ns": {"NS": ["1", "2.5", "-3E+10"]},
        "bs": {"BS": [b"\x00", b"\xff\xfe"]},
        "name with spaces": {"S": "v"},
        "ünï": {"N": "7"},
    },
    {
        "pk": {"S": "limits"},
        "digits38": {"N": "12345678901234567890123456789012345678"},
        "neg38": {"N": "-0.12345678901234567890123456789012345678"},
        "big": {"N": "1E+125"},
        "max": {"N": "9.9999999999999999999999999999999999999E+125"},
        "tiny": {"N": "-1E-130"},
        "small": {"N": "1E-130"},
        "zero": {"N": "0"},
        "nested": {
            "M": {
                "big": {"N": "1E+125"},
                "tiny": {"N": "-1E-130"},
                "d": {"N": "12345678901234567890123456789012345678"},
            }
        },
        "nums": {"NS": ["1E+125", "-1E-130", "12345678901234567890123456789012345678"]},
    },
    {
        "pk": {"S": "empties"},
        "empty_s": {"S": ""},
        "empty_b": {"B": b""},
        "empty_m": {"M": {}},
        "empty_l": {"L": []},
        "deep_empty": {"M": {"m": {"M": {}}, "l": {"L": [{"L": []}, {"M": {}}]}}},
    },
    {"pk": {"S": "key-only"}},
]


def many_items(count: int) -> list[dict[str, Any]]:
    return [
        {"pk": {"S": f"k{i:05d}"}, "v": {"N": str(i * 10)}, "s": {"S": f"x{i}"}, "f": {"N": f"{i}.25"}}
        for i in range(count)
    ]
