"""``podyn --status``: what the ``podyn`` metadata schema says about each table, as a table or as JSON.

It reads only PostgreSQL, in a read-only transaction: no DynamoDB access, no lock, so it works while the service runs
in another process or on another host. It shows what podyn committed, which is at most a page or a batch behind;
a table stored as ``loading``, ``catching up`` or ``live`` shows so only while a process loads or replicates it now
(it holds the table's replication lock and its heartbeat is fresh), else ``not running`` or ``stalled``.
Never prints a password: the database is shown through :func:`podyn_py.config.redact`, errors through
:func:`podyn_py.config.redact_text`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from decimal import Decimal
from enum import StrEnum
from typing import Any

import psycopg

from podyn_py.config import redact, redact_text
from podyn_py.core.changes import TtlCounts
from podyn_py.core.exports import BridgeRecord
from podyn_py.core.positions import UnitKind
from podyn_py.target import postgres, state
from podyn_py.target.state import (
    HEARTBEAT_STALE_SECONDS,
    ExportFileProgress,
    SegmentProgress,
    ShardProgress,
    TableState,
    UnitProgress,
    require_current_metadata,
)
from podyn_py.units import LEASE_SECONDS

#: Above this many segments, the human-readable output lists only the unfinished ones.
_SEGMENTS_SHOWN = 32


class Activity(StrEnum):
    """Shown instead of a stored ``loading``, ``catching up`` or ``live`` when no process works on the table now."""

    #: No process holds the table's replication lock (killed, stopped, or never started here).
    NOT_RUNNING = "not running"
    #: Its process holds the lock but has not refreshed its heartbeat for HEARTBEAT_STALE_SECONDS (hung, stuck).
    STALLED = "stalled"
    #: Shown instead of any stored state: the PostgreSQL table podyn recorded was dropped (or dropped and made
    #: again) outside podyn, so whatever the state said about its rows no longer holds.
    TARGET_MISSING = "target missing"
    #: Shown instead of a stored state past ``created`` (but ``stopped``): columns of podyn's mapping were dropped
    #: (or renamed) outside podyn, so their values are gone from the table (``--reload`` loads it again).
    COLUMNS_MISSING = "columns missing"


#: Stored states that say a process works on the table now: shown only while one does.
_RUNNING = frozenset({TableState.LOADING, TableState.CATCHING_UP, TableState.LIVE})


@dataclass(frozen=True)
class TableStatus:
    source: str
    target: str
    mode: str
    #: The stored state, or an Activity when the stored one claims a replication no process is doing.
    state: TableState | Activity
    stored_state: TableState
    #: host:pid of the process that last held the table, and when it last said so (its heartbeat).
    holder: str | None
    last_seen: datetime | None
    last_error: str | None
    #: Columns of podyn's mapping that the target no longer has.
    missing_columns: tuple[str, ...]
    items_loaded: int
    load_started_at: datetime | None
    load_finished_at: datetime | None
    stream_arn: str | None
    stream_view_type: str | None
    changes_applied: int
    last_change_at: datetime | None
    replication_lag_seconds: float | None
    updated_at: datetime
    rejected: int
    segments: tuple[SegmentProgress, ...]
    shards: tuple[ShardProgress, ...]
    #: TTL deletes read from the stream and what became of them (``--ttl-deletes``), counted with each batch.
    ttl_deletes: TtlCounts = TtlCounts()
    #: Read capacity the load consumed from the DynamoDB table: 0 for a load from an export; None: not recorded.
    read_capacity_consumed: float | None = None
    #: The export in S3 the table was loaded from (None: a Scan load), with the load's position in each file.
    export: ExportStatus | None = None
    export_files: tuple[ExportFileProgress, ...] = ()
    #: The incremental exports that bridge that export to a stream enabled later, in order (none: no bridge).
    bridge: tuple[BridgeRecord, ...] = ()
    #: Every unit of the table's work (segments, shards) with its owner and lease (podyn.units).
    units: tuple[UnitProgress, ...] = ()
    #: The processes serving the table (podyn.workers), live or not.
    workers: tuple[WorkerStatus, ...] = ()

    #: The stream captured during the load (spool.py): records kept, the newest one's creation time, and the keys
    #: whose last change waits in the spool (applied once the load is done).
    captured_changes: int = 0
    captured_until: datetime | None = None
    spool_rows: int = 0


@dataclass(frozen=True)
class ExportStatus:
    id: str
    arn: str | None
    url: str | None
    #: The point in time the export is of.
    time: datetime | None
    item_count: int | None
    #: The table's size the export was billed for.
    size_bytes: int | None
    format: str | None


@dataclass(frozen=True)
class WorkerStatus:
    """A process serving a table: ``host:pid:tag`` (as lease owners are named), its role, its heartbeat."""

    worker: str
    role: str
    started_at: datetime
    heartbeat_at: datetime
    heartbeat_age_seconds: float
    #: It beat within the lease (``--lease-seconds`` given to --status, default 30 s): it can still hold units.
    live: bool


@dataclass(frozen=True)
class Status:
    database: str
    tables: tuple[TableStatus, ...]
    #: Tables asked for with -t that podyn has never recorded.
    unknown: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        failed = (
            TableState.STOPPED,
            Activity.NOT_RUNNING,
            Activity.STALLED,
            Activity.TARGET_MISSING,
            Activity.COLUMNS_MISSING,
        )
        return not self.unknown and all(t.state not in failed for t in self.tables)


def read_status(
    conninfo: str,
    tables: Sequence[str] = (),
    pg_schema: str | None = None,
    *,
    stale_after_seconds: float = HEARTBEAT_STALE_SECONDS,
    lease_seconds: float = LEASE_SECONDS,
) -> Status:
    """Every table podyn recorded (or those whose DynamoDB name is in ``tables``), optionally in one schema.

    A worker counts as live while its heartbeat is younger than ``lease_seconds`` (the lease its processes run
    with: they renew every third of it)."""
    with postgres.connect(conninfo) as conn:
        conn.read_only = True
        require_current_metadata(conn)
        statuses = tuple(
            _table_status(conn, progress, stale_after_seconds, lease_seconds)
            for progress in state.read_progress(conn, tables, pg_schema)
        )
    known = {t.source for t in statuses}
    return Status(redact(conninfo), statuses, tuple(t for t in tables if t not in known))


def _table_status(
    conn: psycopg.Connection[Any], progress: state.TableProgress, stale_after_seconds: float, lease_seconds: float
) -> TableStatus:
    schema, table = progress.target_schema, progress.target_table
    segments = tuple(state.read_segment_progress(conn, schema, table))
    files = tuple(state.read_export_file_progress(conn, schema, table))
    bridge = tuple(state.read_bridge_of(conn, schema, table))
    shards = tuple(state.read_shard_progress(conn, schema, table, progress.stream_arn))
    units = tuple(state.read_units(conn, schema, table))
    workers = tuple(
        WorkerStatus(
            w.worker,
            w.role,
            w.started_at,
            w.heartbeat_at,
            w.heartbeat_age_seconds,
            w.heartbeat_age_seconds < lease_seconds,
        )
        for w in state.read_workers(conn, schema, table)
    )
    stored = progress.state
    shown: TableState | Activity = stored
    if not progress.target_present:
        shown = Activity.TARGET_MISSING
    elif progress.missing_columns and stored not in (TableState.CREATED, TableState.STOPPED):  # a stop says more
        shown = Activity.COLUMNS_MISSING
    elif stored in _RUNNING:
        holders = postgres.lock_holder_pids(conn, postgres.table_lock_key(postgres.REPLICATION_LOCK, schema, table))
        if not holders:
            shown = Activity.NOT_RUNNING
        elif progress.heartbeat_age_seconds is None or progress.heartbeat_age_seconds > stale_after_seconds:
            shown = Activity.STALLED
    # While a load runs, only the segments know how far it got; the table's count is set when it finishes.
    items = (
        progress.items_loaded
        if progress.load_finished_at is not None
        else sum(s.items_loaded for s in segments) + sum(f.items_loaded for f in files)
    )
    export = (
        None
        if progress.export_id is None
        else ExportStatus(
            id=progress.export_id,
            arn=progress.export_arn,
            url=progress.export_url,
            time=progress.export_time,
            item_count=progress.export_item_count,
            size_bytes=progress.export_size_bytes,
            format=progress.export_format,
        )
    )
    return TableStatus(
        source=progress.source_table,
        target=f"{schema}.{table}",
        mode=progress.conversion_mode,
        state=shown,
        stored_state=stored,
        holder=progress.holder,
        last_seen=progress.heartbeat_at,
        last_error=None if progress.last_error is None else redact_text(progress.last_error),
        missing_columns=progress.missing_columns if progress.target_present else (),
        items_loaded=items,
        load_started_at=progress.load_started_at,
        load_finished_at=progress.load_finished_at,
        stream_arn=progress.stream_arn,
        stream_view_type=progress.stream_view_type,
        changes_applied=progress.changes_applied,
        last_change_at=progress.last_change_at,
        replication_lag_seconds=progress.replication_lag_seconds,
        updated_at=progress.updated_at,
        rejected=progress.rejected,
        segments=segments,
        shards=shards,
        ttl_deletes=progress.ttl_deletes,
        read_capacity_consumed=progress.read_capacity_consumed,
        export=export,
        export_files=files,
        bridge=bridge,
        units=units,
        workers=workers,
        captured_changes=progress.captured_changes,
        captured_until=progress.captured_until,
        spool_rows=progress.spool_rows,
    )


def to_json(status: Status) -> dict[str, Any]:
    """A JSON-ready dict: times in ISO 8601, the rest as in the dataclasses."""
    return _jsonable(asdict(status))  # type: ignore[no-any-return]


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, Decimal):
        return str(value)
    return value


def render(status: Status) -> str:
    """The human-readable form: an overview table, then each table's segments, shards and error."""
    lines = [f"database: {status.database}", "", *(_overview(status.tables) or ["no tables"])]
    for t in status.tables:
        seen = f" (last seen {_time(t.last_seen)}; stored state {t.stored_state.value})"
        lines += ["", f"{t.source} → {t.target}: {t.state.value}{seen if isinstance(t.state, Activity) else ''}"]
        if t.holder:
            lines.append(f"  holder: {t.holder}, last seen {_time(t.last_seen)}")
        if t.load_started_at:
            finished = f", finished {_time(t.load_finished_at)}" if t.load_finished_at else ""
            lines.append(f"  load: {t.items_loaded:,} items, started {_time(t.load_started_at)}{finished}")
        if t.export is not None:
            lines += _export_lines(t.export, t.export_files)
        if t.bridge:
            arns = ", ".join(b.export_arn.rsplit("/export/", 1)[-1] for b in t.bridge if b.export_arn)
            lines.append(
                f"  bridge: {sum(b.applied for b in t.bridge)}/{len(t.bridge)} incremental exports applied, from"
                f" {_time(t.bridge[0].window.start)} to {_time(t.bridge[-1].window.end)}"
                + (f" ({arns})" if arns else "")
            )
        if t.read_capacity_consumed is not None:
            lines.append(f"  read capacity consumed from the table: {t.read_capacity_consumed:,.0f} RCU")
        if t.captured_changes or t.spool_rows:
            lines.append(
                f"  capture: {t.captured_changes:,} changes captured during the load, newest written"
                f" {_time(t.captured_until)}; spool: {t.spool_rows:,} rows"
            )
        if t.rejected:
            lines.append(f"  rejected: {t.rejected:,} items (see podyn.rejected)")
        if t.stream_arn:
            lines.append(f"  stream: {t.stream_arn} ({t.stream_view_type})")
        if t.ttl_deletes:
            ttl = t.ttl_deletes
            lines.append(
                f"  TTL deletes: {ttl.seen:,} seen, {ttl.applied:,} applied as deletes, {ttl.kept:,} kept,"
                f" {ttl.marked:,} marked"
            )
        if t.last_error:
            lines.append(f"  last error: {t.last_error}")
        if t.missing_columns:
            lines.append(f"  columns dropped outside podyn: {', '.join(t.missing_columns)} (load it again: --reload)")
        leases = {(u.kind, u.unit_id): u for u in t.units}
        shown = [s for s in t.segments if len(t.segments) <= _SEGMENTS_SHOWN or not s.done]
        if shown:
            lines += _indent(
                _grid(
                    ("SEGMENT", "DONE", "ITEMS", "UPDATED", "OWNER", "LEASE"),
                    [
                        (
                            str(s.segment),
                            "yes" if s.done else "no",
                            f"{s.items_loaded:,}",
                            _time(s.updated_at),
                            *_lease(leases.get((UnitKind.SEGMENT, str(s.segment)))),
                        )
                        for s in shown
                    ],
                )
            )
        if len(shown) < len(t.segments):
            lines.append(f"  ({len(t.segments) - len(shown)} finished segments not listed; --json lists all)")
        if t.shards:
            lines += _indent(
                _grid(
                    ("SHARD", "PARENT", "CHECKPOINT", "FINISHED", "RECORDS", "UPDATED", "OWNER", "LEASE"),
                    [
                        (
                            s.shard_id,
                            s.parent_shard_id or "-",
                            s.sequence_number or "-",
                            "yes" if s.finished else "no",
                            f"{s.records_applied:,}",
                            _time(s.updated_at),
                            *_lease(leases.get((UnitKind.SHARD, s.shard_id))),
                        )
                        for s in t.shards
                    ],
                )
            )
        if t.workers:
            lines += _indent(
                _grid(
                    ("WORKER", "ROLE", "STARTED", "HEARTBEAT", "LIVE"),
                    [
                        (
                            w.worker,
                            w.role,
                            _time(w.started_at),
                            f"{w.heartbeat_age_seconds:.1f} s ago",
                            "yes" if w.live else "no",
                        )
                        for w in t.workers
                    ],
                )
            )
    for name in status.unknown:
        lines += ["", f"{name}: unknown (not in podyn.tables)"]
    return "\n".join(lines)


def _export_lines(export: ExportStatus, files: Sequence[ExportFileProgress]) -> list[str]:
    size = "-" if export.size_bytes is None else f"{export.size_bytes:,} bytes"
    items = "-" if export.item_count is None else f"{export.item_count:,} items"
    lines = [
        f"  export: {export.id} ({export.format}, of {_time(export.time)}, {items}, {size}), {export.url}",
        f"  export files: {sum(f.done for f in files)}/{len(files)} done",
    ]
    shown = [f for f in files if len(files) <= _SEGMENTS_SHOWN or not f.done]
    if shown:
        lines += _indent(
            _grid(
                ("FILE", "DONE", "LINE", "ITEMS", "UPDATED"),
                [
                    (
                        f.key.rsplit("/", 1)[-1],
                        "yes" if f.done else "no",
                        f"{f.line:,}",
                        f"{f.items_loaded:,}/{f.item_count:,}",
                        _time(f.updated_at),
                    )
                    for f in shown
                ],
            )
        )
    if len(shown) < len(files):
        lines.append(f"  ({len(files) - len(shown)} finished files not listed; --json lists all)")
    return lines


def _overview(tables: Sequence[TableStatus]) -> list[str]:
    if not tables:
        return []
    return _grid(
        ("TABLE", "TARGET", "MODE", "STATE", "ITEMS", "SCAN", "SHARDS", "CHANGES", "LAG", "LAST CHANGE"),
        [
            (
                t.source,
                t.target,
                t.mode,
                t.state.value,
                f"{t.items_loaded:,}",
                f"{sum(s.done for s in t.segments)}/{len(t.segments)} done"
                if t.segments
                else f"{sum(f.done for f in t.export_files)}/{len(t.export_files)} files"
                if t.export_files
                else "-",
                f"{sum(not s.finished for s in t.shards)} open/{len(t.shards)}" if t.shards else "-",
                f"{t.changes_applied:,}",
                "-" if t.replication_lag_seconds is None else f"{t.replication_lag_seconds:.1f} s",
                _time(t.last_change_at),
            )
            for t in tables
        ],
    )


def _lease(unit: UnitProgress | None) -> tuple[str, str]:
    """A unit's owner and lease for the grids: ``-`` when free; else who holds it and until when."""
    if unit is None or unit.owner is None or unit.lease_seconds_left is None:
        return "-", "-"
    left = unit.lease_seconds_left
    lease = f"expires in {left:.1f} s" if left >= 0 else f"expired {-left:.1f} s ago"
    return f"{unit.owner} (#{unit.generation})", lease


def _time(value: datetime | None) -> str:
    return "-" if value is None else value.isoformat(sep=" ", timespec="seconds")


def _grid(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [max([len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(headers)]
    return ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in [headers, *rows]]


def _indent(lines: list[str]) -> list[str]:
    return ["  " + line for line in lines]
