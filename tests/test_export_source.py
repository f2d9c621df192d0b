"""The export source on its own: Ion values → DynamoDB wire values, export folders, when a stream can take over from
an export, and data files read from moto's real S3 API (positions, batches, the end's checks)."""

from __future__ import annotations

import base64
import gzip
import hashlib
import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from amazon.ion import simpleion
from amazon.ion.simpleion import IonPyValueModel
from exports import write_export

from podyn_py.core.exports import (
    ExportFileRecord,
    ExportFormat,
    ExportJob,
    ExportManifest,
    ExportStatus,
    destination_url,
    export_client_token,
    folder_is_under,
    replay_start,
    split_destination,
    stream_gap,
)
from podyn_py.core.rows import RowBuilder
from podyn_py.core.schema import ConversionMode, KeyAttribute, TableSpec, initial_schema, plan_evolution
from podyn_py.errors import ConfigError, SourceError
from podyn_py.source.dynamodb import export_job
from podyn_py.source.export import ExportReader, ion_to_wire, read_manifest, split_export_url

#: amazon-ion's two shapes of values: its wrappers, and plain Python values where no wrapper is needed (what the
#: source asks for, as they cost a quarter as much); sets are wrapped in both, for their annotation.
MODELS = [IonPyValueModel.ION_PY, IonPyValueModel.MAY_BE_BARE | IonPyValueModel.STRUCT_AS_STD_DICT]


def ion(text: str, model: IonPyValueModel = MODELS[1]) -> Any:
    return simpleion.loads(text, value_model=model)


@pytest.mark.parametrize(
    ("text", "wire"),
    [
        ('"x"', {"S": "x"}),
        ('""', {"S": ""}),
        ("6d2", {"N": "6E+2"}),
        ("103.", {"N": "103"}),
        ("-1d-130", {"N": "-1E-130"}),
        ("1d125", {"N": "1E+125"}),
        ("12345678901234567890123456789012345678.", {"N": "12345678901234567890123456789012345678"}),
        ("-0.5", {"N": "-0.5"}),
        ("42", {"N": "42"}),
        ("true", {"BOOL": True}),
        ("false", {"BOOL": False}),
        ("null", {"NULL": True}),
        ("null.string", {"NULL": True}),
        ("null.struct", {"NULL": True}),
        ("{{AP8=}}", {"B": "AP8="}),
        ("{{}}", {"B": ""}),
        ("{}", {"M": {}}),
        ("[]", {"L": []}),
        ("{a:1., 'b c':{d:[\"e\"]}}", {"M": {"a": {"N": "1"}, "b c": {"M": {"d": {"L": [{"S": "e"}]}}}}}),
        ('$dynamodb_SS::["a","b"]', {"SS": ["a", "b"]}),
        ("$dynamodb_NS::[1., 2.5, 3d10]", {"NS": ["1", "2.5", "3E+10"]}),
        ("$dynamodb_BS::[{{AA==}}, {{/w==}}]", {"BS": ["AA==", "/w=="]}),
        ('[1., "x", null, {{AQ==}}]', {"L": [{"N": "1"}, {"S": "x"}, {"NULL": True}, {"B": "AQ=="}]}),
    ],
)
@pytest.mark.parametrize("model", MODELS, ids=["wrapped", "plain"])
def test_ion_values_become_wire_values(text: str, wire: dict[str, Any], model: IonPyValueModel) -> None:
    assert ion_to_wire(ion(text, model)) == wire


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("2024-01-01T00:00:00Z", "unknown DynamoDB type tag 'Ion timestamp'"),
        ("1.5e0", "unknown DynamoDB type tag 'Ion float'"),
        ("sym", "unknown DynamoDB type tag 'Ion symbol'"),
        ('{{"a clob"}}', "unknown DynamoDB type tag 'Ion clob'"),
        ("(1 2)", "unknown DynamoDB type tag 'Ion sexp'"),
        ('$dynamodb_NS::["x"]', "not a DynamoDB number"),
        ("$dynamodb_SS::[1.]", "string value of unexpected type dict"),
        ('$dynamodb_BS::["x"]', "binary value of unexpected type dict"),
    ],
)
@pytest.mark.parametrize("model", MODELS, ids=["wrapped", "plain"])
def test_what_dynamodb_never_writes_is_rejected_with_the_key(text: str, error: str, model: IonPyValueModel) -> None:
    """Never an exception in the source: a value the core rejects, so the item goes to podyn.rejected."""
    spec = TableSpec("t", "public", "t", KeyAttribute("pk", "S"), mode=ConversionMode.COLUMNS)
    item = {"pk": {"S": "k1"}, "bad": ion_to_wire(ion(text, model))}
    json.dumps(item)  # what podyn.rejected keeps must be JSON
    schema = initial_schema(spec)
    with pytest.raises(Exception) as caught:
        schema = schema.with_change(plan_evolution(schema, [item]))
        RowBuilder(schema).build(item)
    assert error in str(caught.value)
    assert "k1" in str(caught.value)


def test_numbers_from_ion_are_the_numbers_dynamodb_json_gives() -> None:
    for ion_text, json_text in [("6d2", "600"), ("-1d-130", "-1E-130"), ("1d125", "1E+125"), ("25d-2", "0.25")]:
        assert Decimal(ion_to_wire(ion(ion_text))["N"]) == Decimal(json_text)


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("s3://b/AWSDynamoDB/0123-ab/", ("b", "AWSDynamoDB/0123-ab/", "0123-ab")),
        ("s3://b/x/y/AWSDynamoDB/0123-ab", ("b", "x/y/AWSDynamoDB/0123-ab/", "0123-ab")),
    ],
)
def test_export_folders(url: str, expected: tuple[str, str, str]) -> None:
    assert split_export_url(url) == expected


@pytest.mark.parametrize(
    "url", ["s3://b/x/", "https://b/AWSDynamoDB/1/", "s3://b/AWSDynamoDB/", "s3://b/AWSDynamoDB/1/data/x.json.gz"]
)
def test_not_an_export_folder(url: str) -> None:
    with pytest.raises(ConfigError, match="not an export's folder"):
        split_export_url(url)


NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
ARN = "arn:aws:dynamodb:eu-west-1:1:table/t/stream/x"


def test_a_stream_older_than_the_export_takes_over() -> None:
    exported = NOW - timedelta(hours=3)
    assert stream_gap(exported, stream_arn=ARN, stream_created_at=exported - timedelta(days=30), now=NOW) is None
    assert replay_start(exported) == exported - timedelta(minutes=5)


@pytest.mark.parametrize(
    ("exported", "created", "stream_arn", "reason"),
    [
        (NOW - timedelta(hours=1), None, None, "the table has no stream"),
        (NOW - timedelta(hours=1), NOW - timedelta(minutes=30), ARN, "was enabled at 2026-06-01 11:30:00+00:00"),
        (NOW - timedelta(hours=1), NOW - timedelta(minutes=61), ARN, "after 2026-06-01 10:58:00+00:00"),
        (NOW - timedelta(hours=23, minutes=56), NOW - timedelta(days=9), ARN, "24.0 hours before now"),
        (NOW - timedelta(days=3), NOW - timedelta(days=9), ARN, "a stream keeps records for 24 hours"),
    ],
)
def test_a_stream_that_cannot_reach_back(
    exported: datetime, created: datetime | None, stream_arn: str | None, reason: str
) -> None:
    gap = stream_gap(exported, stream_arn=stream_arn, stream_created_at=created, now=NOW)
    assert gap is not None and reason in gap


# -- data files from moto's S3 ---------------------------------------------------------------------------------------


def items(count: int) -> list[dict[str, Any]]:
    return [{"pk": {"S": f"k{i:04d}"}, "b": {"B": bytes([i % 256])}, "n": {"N": str(i * 100)}} for i in range(count)]


@pytest.fixture
def table(create_table: Any) -> str:
    name: str = create_table(items=items(50))
    return name


@pytest.mark.parametrize("output_format", ["DYNAMODB_JSON", "ION"])
def test_a_file_read_from_a_position_in_batches(
    s3: Any, ddb: Any, export_bucket: str, table: str, output_format: str
) -> None:
    written = write_export(s3, ddb, table, bucket=export_bucket, output_format=output_format, files=1)
    manifest = read_manifest(s3, written.url)
    assert manifest.export_id == written.export_id and manifest.item_count == 50
    assert manifest.table_name == table
    (entry,) = manifest.files
    reader = ExportReader(s3, manifest, batch_items=20)
    record = ExportFileRecord(entry.key, 0, entry.item_count, entry.md5, 0, 0, False)
    whole = list(reader.read_file(record))
    assert [(len(b.items), b.line, b.done) for b in whole] == [(20, 20, False), (20, 40, False), (10, 50, True)]
    resumed = list(reader.read_file(ExportFileRecord(entry.key, 0, 50, entry.md5, 40, 40, False)))
    assert [(len(b.items), b.line, b.done) for b in resumed] == [(10, 50, True)]
    assert resumed[0].items == whole[2].items
    first = whole[0].items[0]
    assert set(first) == {"pk", "b", "n"}
    assert isinstance(first["b"]["B"], str) and isinstance(first["n"]["N"], str)  # the fast path's wire shape


def test_the_end_of_a_file_is_checked_before_its_last_batch(s3: Any, ddb: Any, export_bucket: str, table: str) -> None:
    written = write_export(s3, ddb, table, bucket=export_bucket, files=1)
    manifest = read_manifest(s3, written.url)
    (entry,) = manifest.files
    reader = ExportReader(s3, manifest, batch_items=20)
    url = reader.object_url(entry.key)

    def read(record: ExportFileRecord) -> tuple[list[tuple[int, bool]], str]:
        """The (line, done) of each batch handed out before the error, and the error."""
        seen: list[tuple[int, bool]] = []
        with pytest.raises(SourceError) as caught:
            for batch in reader.read_file(record):
                seen.append((batch.line, batch.done))
        assert url in str(caught.value)
        return seen, str(caught.value)

    seen, error = read(ExportFileRecord(entry.key, 0, 51, entry.md5, 0, 0, False))
    assert seen == [(20, False), (40, False)] and "holds 50 items, manifest-files.json says 51" in error
    body = s3.get_object(Bucket=written.bucket, Key=written.data_keys[0])["Body"].read()
    content = gzip.decompress(body).replace(b"k0001", b"k9999")
    s3.put_object(Bucket=written.bucket, Key=written.data_keys[0], Body=gzip.compress(content))
    seen, error = read(ExportFileRecord(entry.key, 0, 50, entry.md5, 0, 0, False))
    assert seen == [(20, False), (40, False)] and f"manifest-files.json says {entry.md5}" in error
    # The MD5 of the content is accepted as well as the object's (the documentation does not say which it is).
    digest = base64.b64encode(hashlib.md5(content).digest()).decode()
    assert list(reader.read_file(ExportFileRecord(entry.key, 0, 50, digest, 0, 0, False)))[-1].done
    s3.put_object(Bucket=written.bucket, Key=written.data_keys[0], Body=body[: len(body) // 2])
    with pytest.raises(SourceError, match="not a complete gzip file") as caught:
        list(reader.read_file(ExportFileRecord(entry.key, 0, 50, entry.md5, 0, 0, False)))
    assert url in str(caught.value)


@pytest.mark.parametrize(
    "key",
    [
        "exports/AWSDynamoDB/0123-ab/data/f.json.gz",  # as exports hold it: under the prefix
        "AWSDynamoDB/0123-ab/data/f.json.gz",  # as the documentation's example shows it: without
    ],
)
def test_data_file_keys_with_or_without_the_prefix(key: str) -> None:
    manifest = ExportManifest(
        url="s3://b/exports/AWSDynamoDB/0123-ab/",
        export_id="0123-ab",
        export_arn=None,
        export_time=NOW,
        table_arn=None,
        table_id=None,
        item_count=0,
        billed_size_bytes=None,
        output_format=ExportFormat.DYNAMODB_JSON,
        files=(),
    )
    reader = ExportReader(None, manifest)
    assert reader.object_url(key) == "s3://b/exports/AWSDynamoDB/0123-ab/data/f.json.gz"
    with pytest.raises(SourceError, match="not in the export's folder"):
        reader.object_key("other/AWSDynamoDB/9999-zz/data/f.json.gz")


def put_summary(s3: Any, bucket: str, folder: str, **fields: Any) -> None:
    summary = {"version": "2020-06-30", "exportTime": "2026-06-01T12:00:00.000Z", "outputFormat": "ION", **fields}
    s3.put_object(Bucket=bucket, Key=f"{folder}manifest-summary.json", Body=json.dumps(summary))


def test_an_incremental_export_or_an_unknown_format_is_refused(s3: Any, export_bucket: str) -> None:
    folder = "x/AWSDynamoDB/0123-ab/"
    s3.put_object(Bucket=export_bucket, Key=f"{folder}manifest-files.json", Body=b"")
    put_summary(s3, export_bucket, folder, exportType="INCREMENTAL_EXPORT")
    with pytest.raises(ConfigError, match="INCREMENTAL_EXPORT, not a full export"):
        read_manifest(s3, f"s3://{export_bucket}/{folder}")
    put_summary(s3, export_bucket, folder, outputFormat="PARQUET")
    with pytest.raises(ConfigError, match="'PARQUET' is neither DYNAMODB_JSON nor ION"):
        read_manifest(s3, f"s3://{export_bucket}/{folder}")
    put_summary(s3, export_bucket, folder, itemCount=3)
    with pytest.raises(SourceError, match="counts 3 items, manifest-files.json 0"):
        read_manifest(s3, f"s3://{export_bucket}/{folder}")
    with pytest.raises(SourceError, match="NoSuchKey"):
        read_manifest(s3, f"s3://{export_bucket}/x/AWSDynamoDB/9999-zz/")


def test_an_empty_partition_file_holds_no_items(s3: Any, export_bucket: str) -> None:
    """An export writes a file for each partition, empty ones too: a 0-byte object or an empty gzip stream."""
    folder = "e/AWSDynamoDB/0123-ab/"
    empty_md5 = base64.b64encode(hashlib.md5(b"").digest()).decode()
    gzip_empty = gzip.compress(b"")
    entries = [
        {"dataFileS3Key": f"{folder}data/a.json.gz", "itemCount": 0, "md5Checksum": empty_md5},
        {
            "dataFileS3Key": f"{folder}data/b.json.gz",
            "itemCount": 0,
            "md5Checksum": base64.b64encode(hashlib.md5(gzip_empty).digest()).decode(),
        },
    ]
    s3.put_object(Bucket=export_bucket, Key=f"{folder}data/a.json.gz", Body=b"")
    s3.put_object(Bucket=export_bucket, Key=f"{folder}data/b.json.gz", Body=gzip_empty)
    s3.put_object(
        Bucket=export_bucket, Key=f"{folder}manifest-files.json", Body="\n".join(json.dumps(e) for e in entries)
    )
    put_summary(s3, export_bucket, folder, itemCount=0)
    manifest = read_manifest(s3, f"s3://{export_bucket}/{folder}")
    reader = ExportReader(s3, manifest)
    for entry in manifest.files:
        record = ExportFileRecord(entry.key, entry.ordinal, 0, entry.md5, 0, 0, False)
        assert [(b.items, b.line, b.done) for b in reader.read_file(record)] == [([], 0, True)]


# -- --export-to: destinations, export jobs, client tokens (pure) ------------------------------------------------


@pytest.mark.parametrize(
    ("url", "split"),
    [
        ("s3://bucket", ("bucket", None)),
        ("s3://bucket/", ("bucket", None)),
        ("s3://bucket/exports", ("bucket", "exports")),
        ("s3://bucket/exports/", ("bucket", "exports")),
        ("s3://my.bucket-1/a/b/c/", ("my.bucket-1", "a/b/c")),
    ],
)
def test_export_destinations(url: str, split: tuple[str, str | None]) -> None:
    assert split_destination(url) == split
    assert destination_url(*split) == url.rstrip("/")


@pytest.mark.parametrize("url", ["bucket/prefix", "https://bucket/x", "s3://", "s3://b/p/AWSDynamoDB/0123-ab/"])
def test_what_is_no_export_destination(url: str) -> None:
    with pytest.raises(ValueError, match="s3://BUCKET|--from-export"):
        split_destination(url)


ARN = "arn:aws:dynamodb:eu-west-1:123456789012:table/Orders/export/01700000000000-a1b2c3d4"


@pytest.mark.parametrize(
    ("prefix", "manifest", "folder"),
    [
        ("orders", "orders/AWSDynamoDB/01700000000000-a1b2c3d4/manifest-summary.json", "s3://b/orders/"),
        ("orders", "AWSDynamoDB/01700000000000-a1b2c3d4/manifest-summary.json", "s3://b/orders/"),
        ("orders/", None, "s3://b/orders/"),
        (None, "AWSDynamoDB/01700000000000-a1b2c3d4/manifest-summary.json", "s3://b/"),
        (None, None, "s3://b/"),
    ],
)
def test_an_export_jobs_folder(prefix: str | None, manifest: str | None, folder: str) -> None:
    job = ExportJob(ARN, ExportStatus.COMPLETED, "b", prefix, manifest)
    assert job.export_id == "01700000000000-a1b2c3d4"
    assert job.folder_url == f"{folder}AWSDynamoDB/01700000000000-a1b2c3d4/"
    assert split_export_url(job.folder_url)[2] == job.export_id
    assert folder_is_under(job.folder_url, "b", (prefix or "").strip("/") or None)
    assert not folder_is_under(job.folder_url, "b", "other")


def test_an_export_description_as_boto3_gives_it() -> None:
    when = datetime(2024, 5, 1, 10, 0, tzinfo=UTC)
    job = export_job(
        {
            "ExportArn": ARN,
            "ExportStatus": "FAILED",
            "S3Bucket": "b",
            "ExportTime": when,
            "StartTime": when,
            "FailureCode": "S3AccessDenied",
            "FailureMessage": "Access Denied",
            "ItemCount": 0,
        }
    )
    assert (job.status, job.export_time, job.failure_code, job.item_count, job.prefix) == (
        ExportStatus.FAILED,
        when,
        "S3AccessDenied",
        0,
        None,
    )
    with pytest.raises(SourceError, match="unknown status 'CANCELLED'"):
        export_job({"ExportArn": ARN, "ExportStatus": "CANCELLED"})


def test_client_tokens_tell_exports_apart() -> None:
    token = export_client_token("arn:t", "public.t", "s3://b/p")
    assert token == export_client_token("arn:t", "public.t", "s3://b/p"), "a restart asks with the same token"
    others = {
        export_client_token("arn:u", "public.t", "s3://b/p"),
        export_client_token("arn:t", "other.t", "s3://b/p"),
        export_client_token("arn:t", "public.t", "s3://b/q"),
        export_client_token("arn:t", "public.t", "s3://b/p", "2024-05-01T10:00:00+00:00"),
    }
    assert token not in others and len(others) == 4
    assert "$" not in token and len(token) <= 64  # DynamoDB's pattern ^[^$]+$
