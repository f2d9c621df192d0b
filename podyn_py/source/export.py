"""An export of a DynamoDB table in S3 (DynamoDB's Export to S3) as a load's source: zero read capacity.

An export lives at ``s3://bucket/prefix/AWSDynamoDB/<ExportId>/``: ``manifest-summary.json`` (export time, item
count, format, table ARN), ``manifest-files.json`` (JSON lines: ``dataFileS3Key``, ``itemCount``, ``md5Checksum``)
and ``data/*.json.gz``, each line of which is one item: ``{"Item": {...}}`` in DynamoDB JSON, or ``$ion_1_0
{Item: {...}}`` in Amazon Ion text (sets annotated ``$dynamodb_SS``, ``$dynamodb_NS``, ``$dynamodb_BS``,
numbers as Ion decimals, binary as blobs).

Items come out in the wire shape the fast path gives the core for a Scan page (``{"N": "1.5"}``, binary as base64
text), so both sources give the same rows. A data file is read as a stream, gzip → lines → batches of at most
``batch_items`` items or ``batch_bytes`` bytes: memory stays bounded whatever the file's size. Its end is checked
before its last batch is handed out: the gzip trailer (a truncated or corrupt file), the manifest's item count and
MD5 (the documentation does not say what the MD5 covers: exports hold that of the gzip object as stored; the MD5 of
the decompressed lines is accepted too). A failed check is an error naming the file, and the file is not done.

Not here: where the batches go and how far a load has got (``export_load``, the target's ``podyn.export_files``).
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import io
import logging
import re
import threading
import zlib
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import boto3
import botocore.config
import botocore.exceptions
import orjson
from amazon.ion import simpleion
from amazon.ion.core import IonType, Timestamp
from amazon.ion.exceptions import IonException
from amazon.ion.simple_types import IonPyNull
from amazon.ion.simpleion import IonPyValueModel
from amazon.ion.symbols import SymbolToken

from podyn_py import retry
from podyn_py.config import AwsSettings
from podyn_py.core.exports import ExportBatch, ExportFile, ExportFileRecord, ExportFormat, ExportManifest
from podyn_py.errors import ConfigError, SourceError, TransientSourceError

log = logging.getLogger(__name__)

_EXPORT_URL = re.compile(r"s3://(?P<bucket>[^/]+)/(?P<dir>(?:[^?#]*/)?AWSDynamoDB/(?P<id>[^/?#]+))/?")
#: A line longer than this is no item (DynamoDB items are at most 400 KB; as JSON with base64 a few times that).
MAX_LINE_BYTES = 16 << 20
#: The summary manifest is one small JSON object.
_MAX_SUMMARY_BYTES = 1 << 20
_MANIFEST_VERSION = "2020-06-30"


def make_s3_client(settings: AwsSettings, *, pool_size: int = 10) -> Any:
    """A boto3 S3 client: region, profile and credentials as boto3 finds them, ``--s3-endpoint-url`` if given."""
    session = boto3.session.Session(
        profile_name=settings.profile,
        region_name=settings.region,
        aws_access_key_id=settings.access_key_id,
        aws_secret_access_key=settings.secret_access_key,
    )
    config = botocore.config.Config(
        retries={"mode": "standard", "max_attempts": settings.max_attempts},
        max_pool_connections=max(pool_size, 10),
        connect_timeout=10,
        read_timeout=70,
    )
    return session.client("s3", endpoint_url=settings.s3_endpoint_url, region_name=session.region_name, config=config)


def split_export_url(url: str) -> tuple[str, str, str]:
    """``s3://bucket/prefix/AWSDynamoDB/<ExportId>/`` → (bucket, the export's key prefix ending in ``/``, ExportId)."""
    found = _EXPORT_URL.fullmatch(url.strip())
    if found is None:
        raise ConfigError(
            f"--from-export {url!r} is not an export's folder: give s3://BUCKET/PREFIX/AWSDynamoDB/EXPORT_ID/"
            " (the folder that holds manifest-summary.json)"
        )
    return found["bucket"], found["dir"] + "/", found["id"]


def read_manifest(client: Any, url: str, *, incremental: bool = False) -> ExportManifest:
    """The export's summary and file list, checked: a full export (``incremental``: an incremental one, whose
    export time is the end of its window), a known format, counts that add up."""
    bucket, prefix, export_id = split_export_url(url)
    where = f"s3://{bucket}/{prefix}"
    summary_body = _get(client, bucket, prefix + "manifest-summary.json").read(_MAX_SUMMARY_BYTES + 1)
    try:
        summary = orjson.loads(summary_body)
        if not isinstance(summary, dict) or len(summary_body) > _MAX_SUMMARY_BYTES:
            raise ValueError("not one JSON object")
    except ValueError as exc:
        raise SourceError(f"{where}manifest-summary.json is not an export's summary manifest: {exc}") from exc
    if summary.get("version") != _MANIFEST_VERSION:
        log.warning("%smanifest-summary.json: version %r, podyn knows %s", where, summary["version"], _MANIFEST_VERSION)
    export_type = summary.get("exportType", "FULL_EXPORT")
    expected = "INCREMENTAL_EXPORT" if incremental else "FULL_EXPORT"
    if export_type != expected:
        raise ConfigError(
            f"{where} is an {export_type}, not {'an incremental' if incremental else 'a full'} export:"
            f" {'a bridge applies incremental exports' if incremental else 'only a full export can be loaded'}"
        )
    try:
        output_format = ExportFormat(summary.get("outputFormat", "DYNAMODB_JSON"))
    except ValueError:
        raise ConfigError(
            f"{where}: export format {summary.get('outputFormat')!r} is neither DYNAMODB_JSON nor ION"
        ) from None
    export_arn = summary.get("exportArn")
    if isinstance(export_arn, str) and not export_arn.endswith(f"/export/{export_id}"):
        raise SourceError(f"{where}manifest-summary.json describes export {export_arn}, not {export_id}")
    export_time = _time(
        summary.get("exportToTime") if incremental else summary.get("exportTime") or summary.get("startTime"),
        f"{where}manifest-summary.json",
    )
    files = tuple(_read_files(client, bucket, prefix, where))
    item_count = int(summary.get("itemCount", sum(f.item_count for f in files)))
    if item_count != sum(f.item_count for f in files):
        raise SourceError(
            f"{where}: manifest-summary.json counts {item_count} items, manifest-files.json"
            f" {sum(f.item_count for f in files)}: the export is incomplete or not one export"
        )
    billed = summary.get("billedSizeBytes")
    return ExportManifest(
        url=f"s3://{bucket}/{prefix}",
        export_id=export_id,
        export_arn=export_arn if isinstance(export_arn, str) else None,
        export_time=export_time,
        table_arn=summary.get("tableArn"),
        table_id=summary.get("tableId"),
        item_count=item_count,
        billed_size_bytes=int(billed) if isinstance(billed, int) else None,
        output_format=output_format,
        files=files,
    )


def _read_files(client: Any, bucket: str, prefix: str, where: str) -> Iterator[ExportFile]:
    body = _get(client, bucket, prefix + "manifest-files.json")
    for number, line in enumerate(body.iter_lines(), 1):
        if not line.strip():
            continue
        try:
            entry = orjson.loads(line)
            key, count, md5 = entry["dataFileS3Key"], int(entry["itemCount"]), entry.get("md5Checksum")
            if not isinstance(key, str):
                raise TypeError("dataFileS3Key is not a string")
        except (ValueError, KeyError, TypeError) as exc:
            raise SourceError(f"{where}manifest-files.json line {number} is not a data file's entry: {exc}") from exc
        yield ExportFile(key=key, item_count=count, md5=md5 if isinstance(md5, str) else None, ordinal=number - 1)


def _time(value: Any, where: str) -> datetime:
    try:
        parsed = datetime.fromisoformat(str(value))
    except ValueError:
        raise SourceError(f"{where}: no export time (exportTime {value!r})") from None
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


def _get(client: Any, bucket: str, key: str) -> Any:
    """GetObject's body, a stream; S3's errors mapped into podyn's tree with the object's URL."""
    try:
        return client.get_object(Bucket=bucket, Key=key)["Body"]
    except botocore.exceptions.ClientError as exc:
        message = f"s3://{bucket}/{key}: {retry.error_code(exc)}: {retry.error_message(exc)}"
        if retry.is_transient(exc):
            raise TransientSourceError(message) from exc
        raise SourceError(message) from exc
    except (botocore.exceptions.NoCredentialsError, botocore.exceptions.NoRegionError) as exc:
        raise ConfigError(f"s3://{bucket}/{key}: {exc}") from exc
    except botocore.exceptions.BotoCoreError as exc:
        raise TransientSourceError(f"s3://{bucket}/{key}: {exc}") from exc


class _Hashed(io.RawIOBase):
    """The S3 body as a raw stream for gzip, hashing the bytes as they pass (the MD5 of the object as stored)."""

    def __init__(self, body: Any) -> None:
        self.body = body
        self.md5 = hashlib.md5(usedforsecurity=False)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        data = self.body.read(len(buffer))
        size = len(data)
        buffer[:size] = data
        self.md5.update(data)
        return size


class ExportReader:
    """An export's data files read as batches of items (a load's source: :class:`podyn_py.core.ports.ExportSource`).

    Thread-safe: the workers of a load share it (boto3's clients are thread-safe), each reading its own file.
    """

    def __init__(
        self,
        client: Any,
        manifest: ExportManifest,
        *,
        batch_items: int = 1000,
        batch_bytes: int = 1 << 20,
        incremental: bool = False,
    ) -> None:
        self.client = client
        self.manifest = manifest
        self.batch_items = batch_items
        self.batch_bytes = batch_bytes
        self._bucket, self._prefix, _ = split_export_url(manifest.url)
        self._decode: Callable[[list[bytes], str, int], list[dict[str, Any]]] = (
            _decode_incremental
            if incremental
            else _decode_ion
            if manifest.output_format is ExportFormat.ION
            else _decode_json
        )

    def object_url(self, key: str) -> str:
        return f"s3://{self._bucket}/{self.object_key(key)}"

    def object_key(self, key: str) -> str:
        """The S3 key of a data file: ``dataFileS3Key`` is under the export's folder (with or without the prefix
        before ``AWSDynamoDB/``, which exports of either kind hold)."""
        marker = f"AWSDynamoDB/{self.manifest.export_id}/"
        if marker not in key:
            raise SourceError(f"{self.manifest.url}: data file {key!r} is not in the export's folder")
        return self._prefix + key.split(marker, 1)[1]

    def read_file(self, record: ExportFileRecord, *, stop: threading.Event | None = None) -> Iterator[ExportBatch]:
        """The file's batches after its first ``record.line`` lines (those are read again, for the MD5, and
        skipped). The last batch, ``done``, comes only once the file's end has been checked. Stops after any batch
        once ``stop`` is set. SourceError naming the file for a file that is not what the manifest says;
        TransientSourceError when reading failed (try again from the committed position)."""
        url = self.object_url(record.key)
        raw = _Hashed(_get(self.client, self._bucket, self.object_key(record.key)))
        content = hashlib.md5(usedforsecurity=False)
        line = 0
        items = 0
        try:
            with gzip.GzipFile(fileobj=raw, mode="rb") as lines:
                while line < record.line:
                    text = self._next_line(lines, url, line)
                    if not text:
                        raise SourceError(
                            f"{url} has {line} lines, fewer than the {record.line} already loaded from it: the file"
                            " changed since; load the table again with --reload"
                        )
                    content.update(text)
                    line += 1
                    items += bool(text.strip())
                while True:
                    batch: list[bytes] = []
                    size = 0
                    first = line + 1
                    ended = False
                    while len(batch) < self.batch_items and size < self.batch_bytes:
                        text = self._next_line(lines, url, line)
                        if not text:
                            ended = True
                            break
                        content.update(text)
                        line += 1
                        if text.strip():
                            batch.append(text)
                            size += len(text)
                    decoded = self._decode(batch, url, first) if batch else []
                    items += len(decoded)
                    if ended:
                        self._check_end(record, url, items, raw, content)
                        yield ExportBatch(record.key, decoded, line, True)
                        return
                    yield ExportBatch(record.key, decoded, line, False)
                    if stop is not None and stop.is_set():
                        return
        except (EOFError, gzip.BadGzipFile, zlib.error) as exc:
            raise SourceError(f"{url} is not a complete gzip file (line {line + 1}): {exc}") from exc
        except botocore.exceptions.BotoCoreError as exc:
            raise TransientSourceError(f"reading {url} (line {line + 1}): {exc}") from exc
        finally:
            raw.body.close()  # also when the caller stops early: the connection goes back to the pool, or away

    def _next_line(self, lines: gzip.GzipFile, url: str, line: int) -> bytes:
        text = lines.readline(MAX_LINE_BYTES + 1)
        if len(text) > MAX_LINE_BYTES:
            raise SourceError(f"{url} line {line + 1} is longer than {MAX_LINE_BYTES >> 20} MiB: not an export's item")
        return text

    def _check_end(self, record: ExportFileRecord, url: str, items: int, raw: _Hashed, content: Any) -> None:
        if items != record.item_count:
            raise SourceError(
                f"{url} holds {items} items, manifest-files.json says {record.item_count}: the file is not the one"
                " the export wrote"
            )
        if record.md5 is None:
            return
        digests = {base64.b64encode(h.digest()).decode("ascii") for h in (raw.md5, content)}
        if record.md5 not in digests:
            raise SourceError(
                f"{url}: its MD5 is {base64.b64encode(raw.md5.digest()).decode('ascii')}, manifest-files.json says"
                f" {record.md5}: the file is not the one the export wrote"
            )


def _decode_json(lines: list[bytes], url: str, first: int) -> list[dict[str, Any]]:
    """DynamoDB JSON lines, ``{"Item": {...}}``: already the wire shape."""
    decoded = []
    for number, text in enumerate(lines, first):
        try:
            item = orjson.loads(text)["Item"]
            if not isinstance(item, dict):
                raise TypeError("Item is not an object")
        except (ValueError, KeyError, TypeError) as exc:
            raise SourceError(f"{url} line {number} is not a DynamoDB JSON item: {exc}") from exc
        decoded.append(item)
    return decoded


def _decode_incremental(lines: list[bytes], url: str, first: int) -> list[dict[str, Any]]:
    """An incremental export's DynamoDB JSON lines, ``{"Metadata": {...}, "Keys": {...}, "NewImage": {...},
    "OldImage": {...}}``, whole: ``core.changes.from_incremental`` makes them changes."""
    decoded = []
    for number, text in enumerate(lines, first):
        try:
            line = orjson.loads(text)
            if not isinstance(line, dict) or not isinstance(line.get("Keys"), dict):
                raise TypeError("no Keys object")
        except (ValueError, TypeError) as exc:
            raise SourceError(f"{url} line {number} is not an incremental export's record: {exc}") from exc
        decoded.append(line)
    return decoded


def _decode_ion(lines: list[bytes], url: str, first: int) -> list[dict[str, Any]]:
    """Ion text lines, each ``$ion_1_0 {Item: {...}}``, parsed in one call (cheaper than one per line)."""
    try:
        values = simpleion.loads(b"".join(lines), single_value=False, value_model=_VALUE_MODEL)
    except (IonException, ValueError) as exc:
        values = None
        error: Exception = exc
    if values is None or len(values) != len(lines):
        for number, text in enumerate(lines, first):  # find the culprit
            try:
                if len(simpleion.loads(text, single_value=False, value_model=_VALUE_MODEL)) != 1:
                    raise ValueError("not one value")
            except (IonException, ValueError) as exc:
                raise SourceError(f"{url} line {number} is not an Ion item: {exc}") from exc
        raise SourceError(f"{url} lines {first}-{first + len(lines) - 1} are not Ion items: {error}")
    decoded = []
    for number, value in enumerate(values, first):
        item = value.get("Item") if isinstance(value, Mapping) else None
        if not isinstance(item, Mapping):
            raise SourceError(f"{url} line {number} is not an Ion item: no Item struct")
        decoded.append({name: ion_to_wire(v) for name, v in item.items()})
    return decoded


_SETS = {"$dynamodb_SS": "SS", "$dynamodb_NS": "NS", "$dynamodb_BS": "BS"}
#: Plain Python values, as amazon-ion gives them where no wrapper is needed (MAY_BE_BARE), and their Ion types.
_BARE = {
    str: IonType.STRING,
    bool: IonType.BOOL,
    int: IonType.INT,
    Decimal: IonType.DECIMAL,
    float: IonType.FLOAT,
    bytes: IonType.BLOB,
    dict: IonType.STRUCT,
    list: IonType.LIST,
    type(None): IonType.NULL,
    Timestamp: IonType.TIMESTAMP,
    SymbolToken: IonType.SYMBOL,
}
#: Plain values where amazon-ion can give them (4× cheaper than its wrappers); annotated values (sets) keep theirs.
_VALUE_MODEL = IonPyValueModel.MAY_BE_BARE | IonPyValueModel.STRUCT_AS_STD_DICT


def _kind(value: Any) -> IonType | None:
    if isinstance(value, IonPyNull):
        return IonType.NULL
    kind = getattr(value, "ion_type", None)
    return kind if isinstance(kind, IonType) else _BARE.get(type(value))


def ion_to_wire(value: Any) -> dict[str, Any]:
    """An Ion value of an export as a DynamoDB attribute value in wire form (what a Scan's JSON holds).

    Takes amazon-ion's wrapped values and its plain ones alike. Total: a value DynamoDB never writes (a timestamp,
    a float, a set member of the wrong type) becomes one the core rejects with the item's key (``{"Ion
    timestamp": ...}``: an unknown type tag), never an exception here.
    """
    kind = _kind(value)
    if kind is IonType.STRING:
        return {"S": str(value)}
    if kind is IonType.DECIMAL or kind is IonType.INT:
        return {"N": _number(value, kind)}
    if kind is IonType.NULL:
        return {"NULL": True}
    if kind is IonType.BOOL:
        return {"BOOL": bool(value)}
    if kind is IonType.BLOB:
        return {"B": base64.b64encode(bytes(value)).decode("ascii")}
    if kind is IonType.STRUCT:
        return {"M": {str(k): ion_to_wire(v) for k, v in value.items()}}
    if kind is IonType.LIST:
        annotations = [a.text for a in getattr(value, "ion_annotations", ())]
        tag = next((_SETS[a] for a in annotations if a in _SETS), None)
        if tag == "SS":
            return {"SS": [str(m) if _kind(m) is IonType.STRING else ion_to_wire(m) for m in value]}
        if tag == "NS":
            return {"NS": [_number(m, k) if (k := _kind(m)) in _NUMBERS else ion_to_wire(m) for m in value]}
        if tag == "BS":
            return {
                "BS": [
                    base64.b64encode(bytes(m)).decode("ascii") if _kind(m) is IonType.BLOB else ion_to_wire(m)
                    for m in value
                ]
            }
        return {"L": [ion_to_wire(m) for m in value]}
    name = kind.name.lower() if kind is not None else type(value).__name__
    return {f"Ion {name}": str(value)}


_NUMBERS = (IonType.DECIMAL, IonType.INT)


def _number(value: Any, kind: IonType | None) -> str:
    """An Ion decimal or int as DynamoDB's number text: every digit, the exponent as Decimal writes it."""
    return str(Decimal(value) if kind is IonType.DECIMAL else int(value))
