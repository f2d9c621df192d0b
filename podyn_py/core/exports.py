"""An export of a DynamoDB table in S3 as values: what its manifest says, how far a load has got in each data
file, and whether a stream can take over from it without a gap.

The source (``source.export``) reads an export into these; the target (``target.state``) keeps them in the
``podyn`` schema; the orchestration (``export_load``, ``changes``) decides with them. No I/O here.

Each data file of an export is a unit of work whose position is the number of lines of the decompressed file read
and committed (``line``): a resumed load reads the file again from its start and skips that many lines, since a
gzip stream cannot be entered in its middle.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

#: How far the items of an export may be from its export time: it is accurate to about a minute, and an export is
#: not transactionally consistent (items are read around that time). Twice that, to be safe. The stream must have
#: been enabled at least this long before the export time: the changes before it are then all in the export.
EXPORT_TIME_ACCURACY_SECONDS = 120.0
#: How long before the export time change replication starts reading the stream: the export time's accuracy
#: (2 minutes), stream records' creation times rounded down to the minute (DynamoDB Local; real DynamoDB rounds to
#: the second or better) and clock differences (2 minutes, as for a Scan load). Replaying from earlier is always
#: correct (each record is a full image or a delete, applied in stream order), only a little slower.
EXPORT_REPLAY_MARGIN_SECONDS = 300.0
#: DynamoDB Streams keeps records for 24 hours.
STREAM_RETENTION_SECONDS = 24 * 3600.0


class ExportFormat(StrEnum):
    DYNAMODB_JSON = "DYNAMODB_JSON"
    ION = "ION"


class ExportStatus(StrEnum):
    """An export task's ``ExportStatus``, as DescribeExport gives it."""

    IN_PROGRESS = "IN_PROGRESS"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"


@dataclass(frozen=True)
class ExportJob:
    """An export task as DescribeExport (or ExportTableToPointInTime) describes it: ``ExportDescription``."""

    arn: str
    status: ExportStatus
    #: Where it writes: ``S3Bucket`` and ``S3Prefix`` (None: the bucket's root).
    bucket: str
    prefix: str | None
    #: ``ExportManifest``: the key of its ``manifest-summary.json`` (once known).
    manifest_key: str | None = None
    #: ``ExportTime``: the point in time the export is of (aware, UTC).
    export_time: datetime | None = None
    start_time: datetime | None = None
    end_time: datetime | None = None
    item_count: int | None = None
    billed_size_bytes: int | None = None
    failure_code: str | None = None
    failure_message: str | None = None
    client_token: str | None = None

    @property
    def export_id(self) -> str:
        """The ExportId: the last part of the ARN (``arn:aws:dynamodb:…:table/T/export/<ExportId>``)."""
        return self.arn.rsplit("/export/", 1)[-1]

    @property
    def folder_url(self) -> str:
        """``s3://bucket/prefix/AWSDynamoDB/<ExportId>/``: the folder ``--from-export`` takes.

        From ``ExportManifest`` when given (with the prefix before it, or without: both are seen), else from the
        bucket, the prefix and the ExportId, as DynamoDB lays an export out."""
        prefix = (self.prefix or "").strip("/")
        key = self.manifest_key
        if key and f"AWSDynamoDB/{self.export_id}/" in key:
            if prefix and not key.startswith(prefix + "/"):
                key = f"{prefix}/{key}"
            return f"s3://{self.bucket}/{key.rsplit('/', 1)[0]}/"
        return f"s3://{self.bucket}/{prefix + '/' if prefix else ''}AWSDynamoDB/{self.export_id}/"


_DESTINATION = re.compile(r"s3://(?P<bucket>[^/?#\s]+)(?:/(?P<prefix>[^?#]*))?")


def split_destination(url: str) -> tuple[str, str | None]:
    """``--export-to s3://bucket/prefix`` → (bucket, prefix without its slashes at either end; None: none)."""
    found = _DESTINATION.fullmatch(url.strip())
    if found is None:
        raise ValueError(f"{url!r} is not s3://BUCKET or s3://BUCKET/PREFIX")
    prefix = (found["prefix"] or "").strip("/")
    if "AWSDynamoDB/" in prefix + "/":
        raise ValueError(
            f"{url!r} is an export's folder: --export-to takes where DynamoDB is to write a new one"
            " (s3://BUCKET/PREFIX); an existing export is loaded with --from-export"
        )
    return found["bucket"], prefix or None


def destination_url(bucket: str, prefix: str | None) -> str:
    """The normal form of a destination, as recorded and as the client token covers it."""
    return f"s3://{bucket}/{prefix}" if prefix else f"s3://{bucket}"


def export_client_token(table_arn: str, target: str, destination: str, after: str = "") -> str:
    """The ``ClientToken`` of the export podyn asks for: the same for the same table, target table and S3
    destination, so that a restart (or a second process) asking again gets the export already started, not a
    second one. ``after`` tells a later export apart: the end of the load a ``--reload`` replaces, or the export
    that failed."""
    basis = "\n".join(("podyn export", table_arn, target, destination, after))
    return "podyn-" + hashlib.sha256(basis.encode()).hexdigest()[:48]


def folder_is_under(folder_url: str, bucket: str, prefix: str | None) -> bool:
    """Whether an export's folder (``s3://bucket/prefix/AWSDynamoDB/<id>/``) is one made at this destination."""
    base = f"s3://{bucket}/{prefix + '/' if prefix else ''}AWSDynamoDB/"
    rest = folder_url[len(base) :] if folder_url.startswith(base) else ""
    return rest.count("/") == 1 and rest.endswith("/") and len(rest) > 1


def enable_pitr_hint(table: str) -> str:
    """How point-in-time recovery is turned on: said with every refusal of an export for want of it."""
    return (
        "enable it with: aws dynamodb update-continuous-backups --table-name"
        f" {table} --point-in-time-recovery-specification PointInTimeRecoveryEnabled=true"
    )


@dataclass(frozen=True)
class ExportFile:
    """One data file, as ``manifest-files.json`` lists it: its S3 key, its items, the MD5 of its object."""

    key: str
    item_count: int
    #: Base64 MD5 (as S3's Content-MD5): of the gzip object as stored (what exports hold), or of its content.
    md5: str | None
    ordinal: int = 0


@dataclass(frozen=True)
class ExportManifest:
    """What ``manifest-summary.json`` and ``manifest-files.json`` say of an export."""

    #: ``s3://bucket/prefix/AWSDynamoDB/<ExportId>/``, as given (normalised with a trailing slash).
    url: str
    export_id: str
    export_arn: str | None
    #: The point in time the export is of (``exportTime``), aware, UTC.
    export_time: datetime
    table_arn: str | None
    table_id: str | None
    item_count: int
    #: The table's size the export was billed for (``billedSizeBytes``).
    billed_size_bytes: int | None
    output_format: ExportFormat
    files: tuple[ExportFile, ...]

    @property
    def table_name(self) -> str | None:
        """The DynamoDB table's name, from its ARN (``arn:aws:dynamodb:REGION:ACCOUNT:table/NAME``)."""
        if not self.table_arn or ":table/" not in self.table_arn:
            return None
        return self.table_arn.split(":table/", 1)[1].split("/", 1)[0] or None


@dataclass(frozen=True)
class ExportFileRecord:
    """How far a load has got in one data file: lines read and committed, items loaded from them, done or not.

    ``done`` is set only by the batch that reached the file's end with its item count and MD5 checked.
    """

    key: str
    ordinal: int
    item_count: int
    md5: str | None
    line: int
    items_loaded: int
    done: bool


@dataclass(frozen=True)
class ExportBatch:
    """Items of one data file and the position to commit with them: lines read up to and including this batch.

    ``done``: the file's end was reached and checked (item count, MD5, gzip trailer); the last batch of a file may
    hold no items.
    """

    key: str
    items: list[dict[str, Any]]
    line: int
    done: bool


def replay_start(export_time: datetime, margin_seconds: float = EXPORT_REPLAY_MARGIN_SECONDS) -> datetime:
    """Where change replication starts reading the stream after a load from an export made at ``export_time``."""
    return export_time - timedelta(seconds=margin_seconds)


def stream_gap(
    manifest_time: datetime,
    *,
    stream_arn: str | None,
    stream_created_at: datetime | None,
    now: datetime,
    margin_seconds: float = EXPORT_REPLAY_MARGIN_SECONDS,
    accuracy_seconds: float = EXPORT_TIME_ACCURACY_SECONDS,
    retention_seconds: float = STREAM_RETENTION_SECONDS,
) -> str | None:
    """Why the table's stream cannot take over from an export made at ``manifest_time``; None when it can.

    It can when the stream was enabled before the export's items were read (the export time minus its accuracy:
    every change before the stream is then in the export, every one after in the stream) and still holds the
    records from the replay start on (the export time minus the margin; a stream keeps 24 hours).
    """
    start = replay_start(manifest_time, margin_seconds)
    if stream_arn is None:
        return "the table has no stream: enable DynamoDB Streams (NEW_AND_OLD_IMAGES) before making the export"
    earliest = manifest_time - timedelta(seconds=accuracy_seconds)
    if stream_created_at is not None and stream_created_at > earliest:
        return (
            f"the table's stream was enabled at {_utc(stream_created_at)}, after {_utc(earliest)} (the export time"
            f" {_utc(manifest_time)} minus the {accuracy_seconds / 60:.0f} minutes it may be off by): changes made"
            " before the stream may be in neither the export nor the stream"
        )
    age = (now - start).total_seconds()
    if age > retention_seconds:
        return (
            f"the export was made at {_utc(manifest_time)}, {age / 3600:.1f} hours before now counting the"
            f" {margin_seconds / 60:.0f}-minute margin, and a stream keeps records for"
            f" {retention_seconds / 3600:.0f} hours: the changes made since the export are no longer all in it"
        )
    return None


#: What to do when the stream cannot take over from an export; said with every such refusal.
NO_BRIDGE = (
    "When no bridge of incremental exports can cover the gap either (as said), make a new export of the table with"
    " its stream enabled and load it within a day, or load by a Scan (--data without --from-export)"
)

# -- the bridge: incremental exports from the export time to a time the stream still holds --------------------

#: DynamoDB takes incremental exports of at least 15 minutes and at most 24 hours.
BRIDGE_WINDOW_MIN_SECONDS = 15 * 60.0
BRIDGE_WINDOW_MAX_SECONDS = 24 * 3600.0
#: How far past the start of what the stream holds the bridge ends when the stream's start moves (an export older
#: than the stream's 24 hours): the time the bridge may take (its exports, their load) before the stream's replay
#: begins, which must then still find its start in the stream.
BRIDGE_SLACK_SECONDS = 3600.0


@dataclass(frozen=True)
class BridgeWindow:
    """One incremental export of the bridge: the changes from ``start`` (inclusive) to ``end`` (exclusive)."""

    ordinal: int
    start: datetime
    end: datetime


@dataclass(frozen=True)
class BridgePlan:
    """How a load from an export made at ``export_time`` reaches the stream: the incremental exports to apply in
    order (none: the stream reaches back itself), and where the stream's replay starts after them."""

    windows: tuple[BridgeWindow, ...]
    replay_from: datetime

    @property
    def end(self) -> datetime | None:
        return self.windows[-1].end if self.windows else None


class BridgeImpossible(ValueError):
    """Why neither the stream nor a bridge of incremental exports can take over from an export."""


def chain_windows(
    start: datetime,
    end: datetime,
    *,
    max_seconds: float = BRIDGE_WINDOW_MAX_SECONDS,
    min_seconds: float = BRIDGE_WINDOW_MIN_SECONDS,
) -> tuple[BridgeWindow, ...]:
    """``start`` to ``end`` (at least ``min_seconds`` long) cut into the fewest windows of at most ``max_seconds``,
    of equal lengths (to the second), each starting where the one before ends: none shorter than the minimum."""
    end = max(end, start + timedelta(seconds=min_seconds))
    total = (end - start).total_seconds()
    count = max(1, -int(-total // max_seconds))
    cuts = [start + timedelta(seconds=round(total * i / count)) for i in range(count)] + [end]
    return tuple(BridgeWindow(i, cuts[i], cuts[i + 1]) for i in range(count))


def plan_bridge(
    export_time: datetime,
    *,
    stream_arn: str | None,
    stream_created_at: datetime | None,
    now: datetime,
    pitr_enabled: bool | None,
    pitr_earliest: datetime | None,
    margin_seconds: float = EXPORT_REPLAY_MARGIN_SECONDS,
    accuracy_seconds: float = EXPORT_TIME_ACCURACY_SECONDS,
    retention_seconds: float = STREAM_RETENTION_SECONDS,
    slack_seconds: float = BRIDGE_SLACK_SECONDS,
) -> BridgePlan:
    """The way from an export made at ``export_time`` to the table's stream: no bridge when the stream reaches back
    (:func:`stream_gap`), else incremental exports from the export time minus the replay margin (the export's
    items may be that far from its time) to a time the stream holds with a margin, after which the stream's replay
    starts (the bridge's end minus the margin: what both hold is applied twice, each a full image or a delete).
    BridgeImpossible when neither can: no stream, point-in-time recovery off or not reaching back that far.

    The stream holds from its creation (plus the export time's accuracy, as :func:`stream_gap` requires) or, for
    a stream older than its retention, from ``now`` minus the retention: that start moves on, so the bridge ends
    ``slack_seconds`` after it, time for the bridge to be built before the replay starts.
    """
    gap = stream_gap(
        export_time,
        stream_arn=stream_arn,
        stream_created_at=stream_created_at,
        now=now,
        margin_seconds=margin_seconds,
        accuracy_seconds=accuracy_seconds,
        retention_seconds=retention_seconds,
    )
    if gap is None:
        return BridgePlan((), replay_start(export_time, margin_seconds))
    if stream_arn is None:
        raise BridgeImpossible(gap)
    start = export_time - timedelta(seconds=margin_seconds)
    if pitr_enabled is False:
        raise BridgeImpossible(f"{gap}; point-in-time recovery, which incremental exports read, is disabled")
    if pitr_earliest is not None and pitr_earliest > start:
        raise BridgeImpossible(
            f"{gap}; point-in-time recovery reaches back to {_utc(pitr_earliest)} only, after {_utc(start)} (the"
            f" export time minus {margin_seconds / 60:.0f} minutes) where incremental exports would have to start"
        )
    holds_from = now - timedelta(seconds=retention_seconds - slack_seconds)
    if stream_created_at is not None:
        holds_from = max(holds_from, stream_created_at + timedelta(seconds=accuracy_seconds))
    windows = chain_windows(start, holds_from + timedelta(seconds=margin_seconds))
    return BridgePlan(windows, replay_start(windows[-1].end, margin_seconds))


@dataclass(frozen=True)
class BridgeRecord:
    """One incremental export of a table's bridge as ``podyn.bridge_exports`` keeps it: its window, its client
    token, the export DynamoDB started for it (once asked), and whether its changes are applied."""

    window: BridgeWindow
    client_token: str
    export_arn: str | None
    applied: bool


def bridge_client_token(table_arn: str, target: str, export_id: str, window: BridgeWindow, after: str = "") -> str:
    """The ``ClientToken`` of one incremental export of the bridge: the same for the same table, target, full
    export and window, so that a restart asking again gets the export already started. ``after``: the window's
    export that failed, so that the next one asked for is a new export."""
    parts = ("podyn bridge", table_arn, target, export_id, window.start.isoformat(), window.end.isoformat())
    basis = "\n".join((*parts, after) if after else parts)
    return "podyn-" + hashlib.sha256(basis.encode()).hexdigest()[:48]


def _utc(value: datetime) -> str:
    return value.isoformat(sep=" ", timespec="seconds")
