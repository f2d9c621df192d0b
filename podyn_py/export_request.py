"""Asking DynamoDB for an export of a table to S3 (``--data --export-to s3://bucket/prefix``) and waiting for it:
the export that ``export_load`` then loads as ``--from-export`` would.

One export per table and load, whoever asks: the request's ``ClientToken`` is a function of the table's ARN, the
target table and the destination (``core.exports.export_client_token``), so a second process, or a restart
before the request was recorded, gets back the export already started; once DynamoDB has answered, the export's
ARN is recorded in ``podyn.tables`` (``export_request_arn``) and a restart waits for that one without asking
again. When a load from it starts, the load's own columns say which export the table is loaded from, and an
interrupted load resumes from it. A ``--reload`` asks for a new export (its token covers the end of the load it
replaces); so does a run after one that failed (its token covers the failed export).

Not here: reading an export (``source.export``) or loading it (``export_load``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from podyn_py import health
from podyn_py.core.exports import (
    NO_BRIDGE,
    ExportJob,
    ExportStatus,
    destination_url,
    enable_pitr_hint,
    export_client_token,
    folder_is_under,
    split_destination,
    stream_gap,
)
from podyn_py.core.ports import ExportClient, ExportSource, Target
from podyn_py.errors import ConfigError, Interrupted, SourceError, StreamGapError
from podyn_py.load import refresh_heartbeat
from podyn_py.source import dynamodb, export

log = logging.getLogger(__name__)

#: How often DescribeExport is called while an export runs (``--export-poll``): an export takes minutes at least.
DEFAULT_POLL_SECONDS = 20.0
#: A line about a running export at most this often (DynamoDB says nothing of its progress before it ends).
_LOG_EVERY_SECONDS = 60.0


@dataclass(frozen=True)
class Exporter:
    """What ``--export-to`` needs: the DynamoDB client that asks, the S3 client that reads, where, how often."""

    client: ExportClient
    s3: Any
    destination: str
    poll_seconds: float = DEFAULT_POLL_SECONDS


def obtain_export(
    description: dynamodb.TableDescription,
    target: Target,
    exporter: Exporter,
    *,
    reload: bool,
    changes_follow: bool,
    stop: threading.Event,
    heartbeat: Callable[[], None] | None = None,
) -> ExportSource | None:
    """The export to load the table from, complete in S3: the one an interrupted load was reading, the one asked
    for earlier, or a new one; None when the table is loaded already (and not ``reload``): nothing is asked."""
    spec = description.spec
    bucket, prefix = split_destination(exporter.destination)
    destination = destination_url(bucket, prefix)
    record = target.read_table(spec)
    if record is not None and record.load_finished_at is None and record.load_started_at is not None:
        if record.export_url and folder_is_under(record.export_url, bucket, prefix):
            log.info(
                "table %s: the load from export %s has not finished; going on with it", spec.source, record.export_id
            )
            return _reader(exporter, record.export_url)
        if not reload:
            started = f"export {record.export_id} ({record.export_url})" if record.export_url else "a Scan"
            raise ConfigError(
                f"the load of {spec.source} from {started} has not finished: resume it as it was started, or start"
                " over with --reload. No export was asked for",
                table=spec.source,
            )
    elif record is not None and record.load_finished_at is not None and not reload:
        return None
    if changes_follow:
        gap = stream_gap(
            datetime.now(UTC),
            stream_arn=description.stream_arn,
            stream_created_at=description.stream_created_at,
            now=datetime.now(UTC),
        )
        if gap is not None:
            raise StreamGapError(
                f"--changes could not follow a load from an export made now: {gap}. No export was asked for."
                f" {NO_BRIDGE}",
                table=spec.source,
            )
    job: ExportJob | None = None
    after = ""
    if record is not None and record.export_request_arn and record.export_request_to == destination:
        job = dynamodb.describe_export(exporter.client, spec.source, record.export_request_arn, stop=stop)
        if job.status is ExportStatus.FAILED:
            log.warning(
                "table %s: export %s, asked for by an earlier run, failed (%s); asking for a new one",
                spec.source,
                job.arn,
                _failure(job),
            )
            after, job = job.arn, None
        else:
            log.info(
                "table %s: export %s was asked for by an earlier run (or another process): waiting for it",
                spec.source,
                job.export_id,
            )
    if job is None:
        if reload and record is not None and record.load_finished_at is not None and not after:
            after = record.load_finished_at.isoformat()
        job = _start(description, exporter, bucket, prefix, destination, after, stop)
        target.record_export_request(spec, job.arn, destination)
    job = wait_for_export(exporter, spec.source, job, stop, heartbeat)
    return _reader(exporter, job.folder_url)


def _start(
    description: dynamodb.TableDescription,
    exporter: Exporter,
    bucket: str,
    prefix: str | None,
    destination: str,
    after: str,
    stop: threading.Event,
) -> ExportJob:
    spec = description.spec
    if description.table_arn is None:
        raise SourceError("DescribeTable gave no TableArn: an export cannot be asked for", table=spec.source)
    if dynamodb.point_in_time_recovery(exporter.client, spec.source, stop=stop) is False:
        raise ConfigError(
            f"table {spec.source} has point-in-time recovery disabled (DescribeContinuousBackups), and DynamoDB"
            f" exports only from it; {enable_pitr_hint(spec.source)}. Nothing was exported or loaded",
            table=spec.source,
        )
    token = export_client_token(description.table_arn, f"{spec.schema}.{spec.table}", destination, after)
    job = dynamodb.start_export(
        exporter.client, spec.source, description.table_arn, bucket=bucket, prefix=prefix, client_token=token, stop=stop
    )
    log.info(
        "table %s: DynamoDB exports the table as of %s to %s as export %s (client token %s); no read capacity used",
        spec.source,
        _when(job.export_time),
        destination,
        job.export_id,
        token,
        extra={"table": spec.source, "export_arn": job.arn},
    )
    return job


def wait_for_export(
    exporter: Exporter, table: str, job: ExportJob, stop: threading.Event, heartbeat: Callable[[], None] | None
) -> ExportJob:
    """Poll DescribeExport until the export is no longer IN_PROGRESS; FAILED is an error with DynamoDB's reason."""
    began = time.monotonic()
    said = began
    with health.loop(f"export {table}", table):
        while job.status is ExportStatus.IN_PROGRESS:
            health.beat()
            refresh_heartbeat(heartbeat, table, "waiting for the export all the same")
            if stop.wait(exporter.poll_seconds):
                raise Interrupted(
                    f"stopped on request while waiting for export {job.export_id}; the next run waits for the same"
                    " export",
                    table=table,
                )
            job = dynamodb.describe_export(exporter.client, table, job.arn, stop=stop)
            now = time.monotonic()
            if job.status is ExportStatus.IN_PROGRESS and now - said >= _LOG_EVERY_SECONDS:
                said = now
                log.info(
                    "table %s: export %s in progress for %s (started %s; DynamoDB tells no progress before it ends)",
                    table,
                    job.export_id,
                    _duration(_since(job.start_time, now - began)),
                    _when(job.start_time),
                )
    if job.status is ExportStatus.FAILED:
        raise SourceError(
            f"export {job.arn} of table {table} failed: {_failure(job)}. Nothing was loaded; the next run asks for a"
            " new export",
            table=table,
        )
    log.info(
        "table %s: export %s completed (%s items, %s bytes, as of %s) at %s",
        table,
        job.export_id,
        "?" if job.item_count is None else f"{job.item_count:,}",
        "?" if job.billed_size_bytes is None else f"{job.billed_size_bytes:,}",
        _when(job.export_time),
        job.folder_url,
    )
    return job


def _reader(exporter: Exporter, url: str) -> ExportSource:
    return export.ExportReader(exporter.s3, export.read_manifest(exporter.s3, url))


def _failure(job: ExportJob) -> str:
    return f"{job.failure_code or 'no FailureCode'}: {job.failure_message or 'no FailureMessage'}"


def _since(start: datetime | None, fallback: float) -> float:
    return (datetime.now(UTC) - start).total_seconds() if start is not None else fallback


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.0f} min"


def _when(value: datetime | None) -> str:
    return "now" if value is None else value.isoformat(sep=" ", timespec="seconds")
