"""The DynamoDB edge: clients, table descriptions, scan pages and batched item reads.

Retries of throttling and transient errors are botocore's (``standard`` mode); on top of that, throttling that
outlasts botocore's attempts is waited out here, so a throttled load slows down but never fails.
"""

from __future__ import annotations

import functools
import logging
import os
import threading
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import boto3
import botocore.config
import botocore.exceptions
import botocore.httpsession
import botocore.utils

from podyn_py import retry
from podyn_py.config import AwsSettings
from podyn_py.core.exports import ExportFormat, ExportJob, ExportStatus, enable_pitr_hint
from podyn_py.core.naming import base_name
from podyn_py.core.ports import ExportClient, ItemClient, ScanClient, TableClient
from podyn_py.core.positions import ScanPage as ScanPage  # where it was before the core held it
from podyn_py.core.schema import ConversionMode, IndexSpec, KeyAttribute, SourceIdentity, TableSpec
from podyn_py.errors import ConfigError, Interrupted, SourceError, TransientSourceError
from podyn_py.source.fastpath import RawJsonClient

log = logging.getLogger(__name__)


def make_client(settings: AwsSettings, service: str = "dynamodb", *, pool_size: int = 10, data: bool = False) -> Any:
    """A boto3 client with botocore's standard retry mode; credentials from the standard AWS chain.

    With ``data``, the client for the calls that move items and records (Scan, BatchGetItem, the stream calls):
    the fast path built on the boto3 client (same endpoint, credentials and retries) unless ``settings`` turn it
    off. Both answer the same methods; the fast path gives binary values as base64 text and timestamps as epoch
    seconds, which the core accepts.
    """
    session = boto3.session.Session(
        profile_name=settings.profile,
        region_name=settings.region,
        aws_access_key_id=settings.access_key_id,
        aws_secret_access_key=settings.secret_access_key,
    )
    region = session.region_name or ("us-east-1" if settings.endpoint_url else None)
    if region is None:
        raise ConfigError("no AWS region: pass --region, set AWS_REGION, or configure a profile")
    config = botocore.config.Config(
        retries={"mode": "standard", "max_attempts": settings.max_attempts},
        max_pool_connections=max(pool_size, 10),
        connect_timeout=10,
        read_timeout=70,
    )
    client: Any = session.client(  # type: ignore[call-overload]
        service, endpoint_url=settings.endpoint_url, region_name=region, config=config
    )
    if data and settings.fast_path:
        # botocore's max_attempts counts retries after the first attempt; the fast path counts every attempt.
        return RawJsonClient(
            client,
            credentials=session.get_credentials(),
            pool_size=pool_size,
            max_attempts=settings.max_attempts + 1,
            proxy_url=_proxy_for(client),
            ca_bundle=_ca_bundle(session),
        )
    return client


def _proxy_for(client: Any) -> str | None:
    """The proxy boto3 uses for the client's endpoint: the config's ``proxies``, else HTTP(S)_PROXY and NO_PROXY."""
    endpoint = client.meta.endpoint_url
    proxies = client.meta.config.proxies or botocore.utils.get_environ_proxies(endpoint)
    proxy: str | None = proxies.get(urllib.parse.urlsplit(endpoint).scheme)
    return proxy


def _ca_bundle(session: boto3.session.Session) -> str | None:
    """The CA bundle boto3 verifies TLS with, in botocore's order: AWS_CA_BUNDLE or the profile's ``ca_bundle``,
    then REQUESTS_CA_BUNDLE, then botocore's default bundle."""
    # boto3 keeps its botocore session private; get_config_variable is botocore's public way to read the setting.
    configured = session._session.get_config_variable("ca_bundle")
    bundle: str | None = configured or os.environ.get("REQUESTS_CA_BUNDLE") or botocore.httpsession.get_cert_path(True)
    return bundle


@dataclass(frozen=True)
class TableDescription:
    spec: TableSpec
    stream_arn: str | None
    stream_view_type: str | None
    item_count: int
    size_bytes: int
    #: Which table of that name: a table deleted and created again is another one.
    source: SourceIdentity = SourceIdentity()
    #: When the table's current stream was enabled (its label, ``LatestStreamLabel``, is that time in UTC).
    stream_created_at: datetime | None = None
    #: ``TableArn``: what an export is asked of.
    table_arn: str | None = None


def list_tables(client: TableClient) -> list[str]:
    names: list[str] = []
    request: dict[str, Any] = {}
    while True:
        page = call(functools.partial(client.list_tables, **request), "listing tables")
        names.extend(page["TableNames"])
        if "LastEvaluatedTableName" not in page:
            return names
        request = {"ExclusiveStartTableName": page["LastEvaluatedTableName"]}


def describe_table(
    client: TableClient,
    name: str,
    *,
    pg_schema: str,
    mode: ConversionMode = ConversionMode.COLUMNS,
    lower_case: bool = False,
) -> TableDescription:
    response = call(lambda: client.describe_table(TableName=name), "describing the table", table=name)
    table = response["Table"]
    types = {a["AttributeName"]: a["AttributeType"] for a in table["AttributeDefinitions"]}

    def keys(schema: list[dict[str, str]]) -> tuple[KeyAttribute, ...]:
        ordered = sorted(schema, key=lambda k: k["KeyType"] != "HASH")
        return tuple(KeyAttribute(k["AttributeName"], types[k["AttributeName"]]) for k in ordered)

    primary = keys(table["KeySchema"])
    indexes = tuple(
        IndexSpec(ix["IndexName"], keys(ix["KeySchema"]), is_global)
        for field, is_global in (("GlobalSecondaryIndexes", True), ("LocalSecondaryIndexes", False))
        for ix in table.get(field, [])
    )
    spec = TableSpec(
        source=name,
        schema=pg_schema,
        table=table_name(name),
        partition_key=primary[0],
        sort_key=primary[1] if len(primary) > 1 else None,
        indexes=indexes,
        mode=mode,
        lower_case=lower_case,
    )
    stream = table.get("StreamSpecification") or {}
    enabled = bool(stream.get("StreamEnabled"))
    return TableDescription(
        spec=spec,
        stream_arn=table.get("LatestStreamArn") if enabled else None,
        stream_view_type=stream.get("StreamViewType") if enabled else None,
        item_count=int(table.get("ItemCount", 0)),
        size_bytes=int(table.get("TableSizeBytes", 0)),
        source=SourceIdentity(table.get("TableId"), _utc(table.get("CreationDateTime"))),
        stream_created_at=stream_label_time(table.get("LatestStreamLabel")) if enabled else None,
        table_arn=table.get("TableArn"),
    )


def stream_label_time(label: Any) -> datetime | None:
    """A stream's label (``2024-05-11T21:21:33.291``, the time it was enabled, UTC) as an aware datetime."""
    if not isinstance(label, str):
        return None
    try:
        parsed = datetime.fromisoformat(label)
    except ValueError:
        return None
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


def _utc(value: Any) -> datetime | None:
    """DescribeTable's CreationDateTime (boto3 gives a datetime in local time) as an aware UTC datetime."""
    if isinstance(value, datetime):
        return value.astimezone(UTC)
    if isinstance(value, int | float):
        return datetime.fromtimestamp(value, UTC)
    return None


def scan_page(
    client: ScanClient,
    table: str,
    *,
    segment: int,
    total_segments: int,
    start_key: dict[str, Any] | None,
    limit: int | None,
    consistent_read: bool,
    stop: threading.Event | None = None,
    clock: retry.Clock = retry.SYSTEM_CLOCK,
) -> ScanPage:
    """One page of one scan segment. Throttling is waited out (see :func:`call_waiting_out_throttling`) until
    ``stop`` is set."""
    request: dict[str, Any] = {
        "TableName": table,
        "Segment": segment,
        "TotalSegments": total_segments,
        "ReturnConsumedCapacity": "TOTAL",
        "ConsistentRead": consistent_read,
    }
    if start_key is not None:
        request["ExclusiveStartKey"] = start_key
    if limit is not None:
        request["Limit"] = limit
    response, throttled = call_waiting_out_throttling(
        lambda: client.scan(**request), "scanning", table=table, stop=stop, clock=clock
    )
    consumed = float((response.get("ConsumedCapacity") or {}).get("CapacityUnits") or 0.0)
    return ScanPage(response.get("Items", []), response.get("LastEvaluatedKey"), consumed, throttled)


@dataclass(frozen=True)
class TableScan:
    """A table's parallel scan as a load's source (:class:`podyn_py.core.ports.ScanSource`): pages of
    :func:`scan_page`, which also say what they cost."""

    client: ScanClient
    table: str
    consistent_read: bool = False

    def read_page(
        self,
        segment: int,
        total_segments: int,
        start_key: dict[str, Any] | None,
        *,
        limit: int | None,
        stop: threading.Event | None = None,
    ) -> ScanPage:
        return scan_page(
            self.client,
            self.table,
            segment=segment,
            total_segments=total_segments,
            start_key=start_key,
            limit=limit,
            consistent_read=self.consistent_read,
            stop=stop,
        )


def batch_get_items(
    client: ItemClient, table: str, keys: list[dict[str, Any]], *, clock: retry.Clock = retry.SYSTEM_CLOCK
) -> list[dict[str, Any]]:
    """The current items for ``keys`` (consistent reads, 100 keys a request); items that no longer exist are absent."""
    found: list[dict[str, Any]] = []
    for start in range(0, len(keys), 100):
        pending: list[dict[str, Any]] = keys[start : start + 100]
        retries = 0
        while pending:
            request = {table: {"Keys": pending, "ConsistentRead": True}}
            response, _ = call_waiting_out_throttling(
                lambda request=request: client.batch_get_item(RequestItems=request),  # type: ignore[misc]
                "reading items",
                table=table,
                clock=clock,
            )
            found.extend(response.get("Responses", {}).get(table, []))
            pending = response.get("UnprocessedKeys", {}).get(table, {}).get("Keys", [])
            if pending:  # unprocessed keys mean the table is busy: back off like throttling
                retries += 1
                clock.wait(retry.UNPROCESSED_KEYS.delay(retries, clock.random))
    return found


def call(fn: Callable[[], Any], what: str, *, table: str | None = None) -> Any:
    """Call boto3, mapping its errors into podyn's tree."""
    try:
        return fn()
    except botocore.exceptions.ClientError as exc:
        code = retry.error_code(exc)
        message = f"{what}: {code}: {retry.error_message(exc)}"
        if retry.is_transient(exc):
            raise TransientSourceError(message, table=table) from exc
        raise SourceError(message, table=table) from exc
    except (botocore.exceptions.NoCredentialsError, botocore.exceptions.NoRegionError) as exc:
        raise ConfigError(f"{what}: {exc}", table=table) from exc
    except botocore.exceptions.BotoCoreError as exc:
        # Connection errors and timeouts that outlasted botocore's retries.
        raise TransientSourceError(f"{what}: {exc}", table=table) from exc


def call_waiting_out_throttling(
    fn: Callable[[], Any],
    what: str,
    *,
    table: str | None = None,
    stop: threading.Event | None = None,
    clock: retry.Clock = retry.SYSTEM_CLOCK,
) -> tuple[Any, int]:
    """Call boto3; when throttling outlasts botocore's retries, wait (``retry.DYNAMODB_THROTTLED``) and call again,
    forever.

    Returns the response and how many times this level waited. Other transient errors are retried
    ``retry.DYNAMODB_FAILED_RETRIES`` times (``retry.DYNAMODB_FAILED``), then raised. A set ``stop`` ends a
    wait at once with :class:`~podyn_py.errors.Interrupted`: throttling can last longer than a SIGTERM may wait.
    """
    throttled = 0
    failures = 0
    while True:
        try:
            return call(fn, what, table=table), throttled
        except TransientSourceError as exc:
            cause = exc.__cause__
            if isinstance(cause, botocore.exceptions.ClientError) and retry.is_throttling(cause):
                throttled += 1
                delay = retry.DYNAMODB_THROTTLED.delay(throttled, clock.random)
                if throttled == 1 or throttled % 10 == 0:
                    log.warning(
                        "%s: throttled by DynamoDB (%d times); waiting %.1f s",
                        table or what,
                        throttled,
                        delay,
                    )
            else:
                failures += 1
                if failures > retry.DYNAMODB_FAILED_RETRIES:
                    raise
                delay = retry.DYNAMODB_FAILED.delay(failures, clock.random)
                log.warning("%s: %s; retrying in %.1f s", table or what, exc.message, delay)
            if clock.wait(delay, stop):
                raise Interrupted(f"stopped on request while {what}", table=table) from exc


# -- exports to S3 (``--export-to``) ----------------------------------------------------------------------------


def point_in_time_recovery(client: ExportClient, name: str, *, stop: threading.Event | None = None) -> bool | None:
    """Whether the table has point-in-time recovery on (DescribeContinuousBackups), which an export needs; None
    when podyn may not ask (AccessDenied): the export's own refusal says it then."""
    try:
        response, _ = call_waiting_out_throttling(
            lambda: client.describe_continuous_backups(TableName=name),
            "reading the table's point-in-time recovery",
            table=name,
            stop=stop,
        )
    except SourceError as exc:
        cause = exc.__cause__
        if isinstance(cause, botocore.exceptions.ClientError) and "AccessDenied" in retry.error_code(cause):
            log.info("table %s: %s; asking for the export all the same", name, exc.message)
            return None
        raise
    description = response.get("ContinuousBackupsDescription") or {}
    pitr = description.get("PointInTimeRecoveryDescription") or {}
    return bool(pitr.get("PointInTimeRecoveryStatus") == "ENABLED")


def point_in_time_window(
    client: ExportClient, name: str, *, stop: threading.Event | None = None
) -> tuple[bool | None, datetime | None, datetime | None]:
    """Point-in-time recovery: on or not (None: podyn may not ask), and its earliest and latest restorable times,
    between which incremental exports can be asked for."""
    enabled = point_in_time_recovery(client, name, stop=stop)
    if not enabled:
        return enabled, None, None
    response, _ = call_waiting_out_throttling(
        lambda: client.describe_continuous_backups(TableName=name),
        "reading the table's point-in-time recovery",
        table=name,
        stop=stop,
    )
    pitr = (response.get("ContinuousBackupsDescription") or {}).get("PointInTimeRecoveryDescription") or {}
    return True, _utc(pitr.get("EarliestRestorableDateTime")), _utc(pitr.get("LatestRestorableDateTime"))


def start_export(
    client: ExportClient,
    table: str,
    table_arn: str,
    *,
    bucket: str,
    prefix: str | None,
    client_token: str,
    export_format: ExportFormat = ExportFormat.DYNAMODB_JSON,
    incremental: tuple[datetime, datetime] | None = None,
    stop: threading.Event | None = None,
) -> ExportJob:
    """ExportTableToPointInTime: a full export of the table as it is now, to ``s3://bucket/prefix``; with
    ``incremental`` (from, to), an incremental export of the changes in that window (NEW_AND_OLD_IMAGES). The same
    ``client_token`` gives back the export it started before (for 8 hours after that one ended).
    A table without point-in-time recovery: ConfigError saying how to enable it."""
    request: dict[str, Any] = {
        "TableArn": table_arn,
        "ClientToken": client_token,
        "S3Bucket": bucket,
        "ExportFormat": export_format.value,
        "ExportType": "FULL_EXPORT",
    }
    if incremental is not None:
        request["ExportType"] = "INCREMENTAL_EXPORT"
        request["IncrementalExportSpecification"] = {
            "ExportFromTime": incremental[0],
            "ExportToTime": incremental[1],
            "ExportViewType": "NEW_AND_OLD_IMAGES",
        }
    if prefix:
        request["S3Prefix"] = prefix
    try:
        response, _ = call_waiting_out_throttling(
            lambda: client.export_table_to_point_in_time(**request), "asking for an export", table=table, stop=stop
        )
    except SourceError as exc:
        cause = exc.__cause__
        if (
            isinstance(cause, botocore.exceptions.ClientError)
            and retry.error_code(cause) == "PointInTimeRecoveryUnavailableException"
        ):
            raise ConfigError(
                f"DynamoDB cannot export table {table}: point-in-time recovery is not enabled"
                f" ({retry.error_message(cause)}); {enable_pitr_hint(table)}. Nothing was exported or loaded",
                table=table,
            ) from exc
        raise
    return export_job(response["ExportDescription"])


def describe_export(
    client: ExportClient, table: str, export_arn: str, *, stop: threading.Event | None = None
) -> ExportJob:
    """DescribeExport: where the export is (IN_PROGRESS, COMPLETED, FAILED) and, once done, what it holds."""
    response, _ = call_waiting_out_throttling(
        lambda: client.describe_export(ExportArn=export_arn), f"describing export {export_arn}", table=table, stop=stop
    )
    return export_job(response["ExportDescription"])


def export_job(description: dict[str, Any]) -> ExportJob:
    """An ``ExportDescription`` (boto3's: timestamps as datetimes; numbers as the JSON gives them) as a value."""
    try:
        status = ExportStatus(description.get("ExportStatus", "IN_PROGRESS"))
    except ValueError:
        unknown = description["ExportStatus"]
        raise SourceError(f"export {description.get('ExportArn')}: unknown status {unknown!r}") from None

    def count(name: str) -> int | None:
        value = description.get(name)
        return int(value) if isinstance(value, int | float) else None

    return ExportJob(
        arn=str(description["ExportArn"]),
        status=status,
        bucket=str(description.get("S3Bucket", "")),
        prefix=description.get("S3Prefix") or None,
        manifest_key=description.get("ExportManifest") or None,
        export_time=_utc(description.get("ExportTime")),
        start_time=_utc(description.get("StartTime")),
        end_time=_utc(description.get("EndTime")),
        item_count=count("ItemCount"),
        billed_size_bytes=count("BilledSizeBytes"),
        failure_code=description.get("FailureCode"),
        failure_message=description.get("FailureMessage"),
        client_token=description.get("ClientToken"),
    )


def table_name(source: str) -> str:
    """The PostgreSQL table name for a DynamoDB table: the same, cut to 63 bytes with a tag when longer."""
    return base_name(source, lower_case=False)
