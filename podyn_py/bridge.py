"""The bridge from a load from an export to the table's stream, when the stream does not reach back to the
export's time (an export older than the stream's 24 hours, or a stream enabled after it): incremental exports
(INCREMENTAL_EXPORT, NEW_AND_OLD_IMAGES) of windows of at most 24 hours, chained from the export time minus the
margin to a time the stream holds (``core.exports.plan_bridge``), applied in order after the export's load and
before the stream's replay, which then starts from the bridge's end minus the margin.

Each window's export is asked for with a client token of the table, the target, the full export and the window
(``core.exports.bridge_client_token``) and recorded in ``podyn.bridge_exports`` once DynamoDB answered, so a
restart waits for the export already started instead of asking again. An incremental export holds each changed
item once, as it was at the end of its window (no NewImage: deleted); its changes are applied, through the same
conversion as stream records, in one transaction with the window's mark (``PostgresTarget.apply_bridge``), so a
window is applied once, and only after the windows before it.

Not here: the decision (``core.exports``), the API calls and S3 reads (``source``), the metadata (``target.state``).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from datetime import UTC, datetime

from podyn_py import health
from podyn_py.conversion import RowConverter
from podyn_py.core.changes import Change, Delete, Upsert, compact, from_incremental
from podyn_py.core.exports import (
    BridgeImpossible,
    BridgePlan,
    BridgeRecord,
    BridgeWindow,
    ExportFileRecord,
    ExportJob,
    ExportStatus,
    bridge_client_token,
    plan_bridge,
    replay_start,
    split_destination,
    stream_gap,
)
from podyn_py.core.keys import key_values
from podyn_py.core.ports import Target
from podyn_py.core.rows import Rejected
from podyn_py.core.schema import TableSchema, TableSpec
from podyn_py.core.selection import EVERYTHING, AttributeSelection
from podyn_py.errors import DataError, Interrupted, MappingChanged, SourceError
from podyn_py.export_request import Exporter, wait_for_export
from podyn_py.source import dynamodb, export

log = logging.getLogger(__name__)


def destination_of(export_url: str) -> str:
    """Where the bridge's incremental exports go by default: beside the full export (``s3://bucket/prefix`` of
    its ``s3://bucket/prefix/AWSDynamoDB/<ExportId>/``)."""
    bucket, prefix, _ = export.split_export_url(export_url)
    base = prefix.rsplit("AWSDynamoDB/", 1)[0].strip("/")
    return f"s3://{bucket}/{base}" if base else f"s3://{bucket}"


def plan(
    description: dynamodb.TableDescription,
    export_time: datetime,
    exporter: Exporter | None,
    *,
    stop: threading.Event | None = None,
    now: datetime | None = None,
) -> BridgePlan:
    """The way from an export made at ``export_time`` to the table's stream (BridgeImpossible when there is none);
    point-in-time recovery is asked about only when the stream does not reach back by itself. Without
    ``exporter`` (the dry run), no incremental export can be asked for."""
    now = now or datetime.now(UTC)
    gap = stream_gap(
        export_time, stream_arn=description.stream_arn, stream_created_at=description.stream_created_at, now=now
    )
    if gap is None:
        return BridgePlan((), replay_start(export_time))
    if exporter is None and description.stream_arn is not None:
        raise BridgeImpossible(f"{gap}; and podyn asks for no incremental export in a dry run")
    enabled, earliest = None, None
    if exporter is not None and description.stream_arn is not None:
        enabled, earliest, _ = dynamodb.point_in_time_window(exporter.client, description.spec.source, stop=stop)
    return plan_bridge(
        export_time,
        stream_arn=description.stream_arn,
        stream_created_at=description.stream_created_at,
        now=now,
        pitr_enabled=enabled,
        pitr_earliest=earliest,
    )


def record_plan(
    description: dynamodb.TableDescription, target: Target, bridge: BridgePlan, export_id: str
) -> list[BridgeRecord]:
    """Record the bridge's windows with their client tokens, before any is asked for."""
    spec = description.spec
    table_arn = description.table_arn or spec.source
    records = [
        BridgeRecord(w, bridge_client_token(table_arn, f"{spec.schema}.{spec.table}", export_id, w), None, False)
        for w in bridge.windows
    ]
    target.plan_bridge(spec, records)
    log.info(
        "table %s: its stream does not reach back to export %s: bridging with %d incremental export(s) from %s to"
        " %s (billed per GB of changes scanned); the stream's replay starts from %s",
        spec.source,
        export_id,
        len(records),
        _when(bridge.windows[0].start),
        _when(bridge.windows[-1].end),
        _when(bridge.replay_from),
    )
    return records


def pending(target: Target, spec: TableSpec) -> bool:
    """Whether the table's bridge has windows not applied yet."""
    return any(not r.applied for r in target.read_bridge(spec))


def build(
    description: dynamodb.TableDescription,
    schema: TableSchema,
    target: Target,
    exporter: Exporter,
    *,
    stop: threading.Event,
    heartbeat: Callable[[], None] | None = None,
    selection: AttributeSelection = EVERYTHING,
) -> int:
    """Ask for, wait for and apply every window of the table's recorded bridge not applied yet, in order; the
    changes applied. ``selection``: the attributes left out of the copy, left out of the images too."""
    spec = description.spec
    if description.table_arn is None:
        raise SourceError("DescribeTable gave no TableArn: no incremental export can be asked for", table=spec.source)
    table_arn = description.table_arn
    bucket, prefix = split_destination(exporter.destination)
    rows = RowConverter(schema, target, selection)
    applied = 0
    for record in target.read_bridge(spec):
        if record.applied:
            continue
        if stop.is_set():
            raise Interrupted("stopped on request during the bridge; the next run goes on with it", table=spec.source)
        window = record.window
        job: ExportJob | None = None
        token = record.client_token
        if record.export_arn is not None:
            job = dynamodb.describe_export(exporter.client, spec.source, record.export_arn, stop=stop)
            if job.status is ExportStatus.FAILED:
                log.warning(
                    "table %s: incremental export %s, asked for by an earlier run, failed (%s: %s); asking for a"
                    " new one",
                    spec.source,
                    job.arn,
                    job.failure_code,
                    job.failure_message,
                )
                token = _retry_token(description, target, window, job.arn, table_arn)
                job = None
            else:
                log.info("table %s: waiting for incremental export %s, asked for earlier", spec.source, job.export_id)
        if job is None:
            _wait_restorable(exporter, spec.source, window.end, stop)
            job = dynamodb.start_export(
                exporter.client,
                spec.source,
                table_arn,
                bucket=bucket,
                prefix=prefix,
                client_token=token,
                incremental=(window.start, window.end),
                stop=stop,
            )
            target.record_bridge_export(spec, window.ordinal, job.arn)
            log.info(
                "table %s: DynamoDB exports the changes from %s to %s as incremental export %s",
                spec.source,
                _when(window.start),
                _when(window.end),
                job.export_id,
            )
        try:
            job = wait_for_export(exporter, spec.source, job, stop, heartbeat)
        except SourceError:
            failed = dynamodb.describe_export(exporter.client, spec.source, job.arn, stop=stop)
            if failed.status is not ExportStatus.FAILED:
                raise
            _retry_token(description, target, window, failed.arn, table_arn)
            raise SourceError(
                f"incremental export {failed.arn} of table {spec.source} failed: {failed.failure_code}:"
                f" {failed.failure_message}. Nothing of it was applied; the next run asks for a new one",
                table=spec.source,
            ) from None
        applied += _apply(rows, target, exporter, schema, window.ordinal, job.folder_url, stop)
    return applied


def _retry_token(
    description: dynamodb.TableDescription, target: Target, window: BridgeWindow, failed: str, table_arn: str
) -> str:
    """A new client token for a window whose export failed (the same one would give the failed export back)."""
    spec = description.spec
    token = bridge_client_token(table_arn, f"{spec.schema}.{spec.table}", _export_id(target, spec), window, failed)
    target.reset_bridge_export(spec, window.ordinal, token)
    return token


def _export_id(target: Target, spec: TableSpec) -> str:
    record = target.read_table(spec)
    return (record.export_id if record is not None else None) or ""


def _apply(
    rows: RowConverter,
    target: Target,
    exporter: Exporter,
    schema: TableSchema,
    ordinal: int,
    folder_url: str,
    stop: threading.Event,
) -> int:
    """Read one incremental export whole and apply it with its window's mark; the changes applied (0: it was
    applied already)."""
    spec = schema.spec
    manifest = export.read_manifest(exporter.s3, folder_url, incremental=True)
    reader = export.ExportReader(exporter.s3, manifest, incremental=True)
    changes: list[Change] = []
    bad: list[Rejected] = []
    for file in manifest.files:
        unit = ExportFileRecord(file.key, file.ordinal, file.item_count, file.md5, 0, 0, False)
        for batch in reader.read_file(unit, stop=stop):
            for line in batch.items:
                try:
                    changes.append(from_incremental(line, spec.key_names, table=spec.source))
                except DataError as exc:  # kept whole in podyn.rejected, but for the attributes left out
                    kept = rows.selection.strip_images(line) if isinstance(line, Mapping) else line
                    bad.append(Rejected(kept, str(exc.key or ""), exc.attribute, str(exc)))
        if stop.is_set():
            raise Interrupted("stopped on request during the bridge; the next run goes on with it", table=spec.source)
    # Each item is in an incremental export once; in write order all the same, should one hold a key twice.
    changes = compact(sorted(changes, key=_written))
    upserts = [c.item for c in changes if isinstance(c, Upsert)]
    while True:
        converted, values, rejected = rows.convert(upserts)
        deletes = [key_values(converted.spec, c.key) for c in changes if isinstance(c, Delete)]
        conn = target.connect()
        try:
            done = target.apply_bridge(
                conn, converted, ordinal, rows=values, delete_keys=deletes, rejected=rejected + bad
            )
            break
        except MappingChanged as exc:
            log.info("table %s: %s", spec.source, exc.message)
            rows.refresh(converted)
        finally:
            if conn is not None:
                conn.close()
    if not done:
        log.info("table %s: incremental export %s was applied already", spec.source, manifest.export_id)
        return 0
    log.info(
        "table %s: applied incremental export %s (%s): %d upserts, %d deletes",
        spec.source,
        manifest.export_id,
        _when(manifest.export_time),
        len(values),
        len(deletes),
    )
    return len(values) + len(deletes)


def _written(change: Change) -> datetime:
    return change.created_at or datetime.min.replace(tzinfo=UTC)


def _wait_restorable(exporter: Exporter, table: str, end: datetime, stop: threading.Event) -> None:
    """An incremental export can end no later than point-in-time recovery's latest restorable time (about five
    minutes before now): wait for it to pass the window's end."""
    said = False
    with health.loop(f"bridge {table}", table):
        while True:
            _, _, latest = dynamodb.point_in_time_window(exporter.client, table, stop=stop)
            if latest is None or latest >= end:
                return
            if not said:
                log.info(
                    "table %s: waiting until %s is restorable (now %s) to ask for the incremental export ending then",
                    table,
                    _when(end),
                    _when(latest),
                )
                said = True
            health.beat()
            if stop.wait(exporter.poll_seconds):
                raise Interrupted("stopped on request during the bridge; the next run goes on with it", table=table)


def _when(value: datetime | None) -> str:
    return "?" if value is None else value.isoformat(sep=" ", timespec="seconds")
