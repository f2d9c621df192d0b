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
from podyn_py.target import postgres
from podyn_py.target.state import HEARTBEAT_STALE_SECONDS, TableState, require_current_metadata

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
class SegmentStatus:
    segment: int
    done: bool
    items_loaded: int
    updated_at: datetime


@dataclass(frozen=True)
class ShardStatus:
    shard_id: str
    parent_shard_id: str | None
    #: As text: sequence numbers have more digits than a float holds.
    sequence_number: str | None
    finished: bool
    records_applied: int
    updated_at: datetime


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
    segments: tuple[SegmentStatus, ...]
    shards: tuple[ShardStatus, ...]


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
) -> Status:
    """Every table podyn recorded (or those whose DynamoDB name is in ``tables``), optionally in one schema."""
    with postgres.connect(conninfo) as conn:
        conn.read_only = True
        require_current_metadata(conn)
        rows = conn.execute(
            """SELECT target_schema, target_table, source_table, conversion_mode, state, last_error, items_loaded,
                      load_started_at, load_finished_at, stream_arn, stream_view_type, changes_applied,
                      last_change_at, replication_lag_seconds, updated_at,
                      (SELECT count(*) FROM podyn.rejected r
                       WHERE r.target_schema = t.target_schema AND r.target_table = t.target_table),
                      holder, holder_pid, heartbeat_at,
                      extract(epoch FROM statement_timestamp() - heartbeat_at)::float8,
                      -- is the target the relation podyn recorded (or, recorded by an older podyn, there at all)?
                      coalesce(r.oid = coalesce(t.target_oid, r.oid), false),
                      -- the mapped columns the target no longer has (dropped or renamed by hand)
                      (SELECT array_agg(c.column_name ORDER BY c.ordinal) FROM podyn.columns c
                       WHERE c.target_schema = t.target_schema AND c.target_table = t.target_table
                         AND NOT EXISTS (SELECT FROM pg_attribute a WHERE a.attrelid = r.oid
                                         AND a.attname = c.column_name AND NOT a.attisdropped))
               FROM podyn.tables t
               LEFT JOIN LATERAL (SELECT to_regclass(format('%%I.%%I', t.target_schema, t.target_table))::oid) r(oid)
                   ON true
               WHERE (%(schema)s::text IS NULL OR target_schema = %(schema)s)
                 AND (cardinality(%(tables)s::text[]) = 0 OR source_table = ANY(%(tables)s))
               ORDER BY source_table, target_schema""",
            {"schema": pg_schema, "tables": list(tables)},
        ).fetchall()
        statuses = tuple(_table_status(conn, row, stale_after_seconds) for row in rows)
    known = {t.source for t in statuses}
    return Status(redact(conninfo), statuses, tuple(t for t in tables if t not in known))


def _table_status(conn: psycopg.Connection[Any], row: Sequence[Any], stale_after_seconds: float) -> TableStatus:
    schema, table = row[0], row[1]
    segments = tuple(
        SegmentStatus(*r)
        for r in conn.execute(
            """SELECT segment, done, items_loaded, updated_at FROM podyn.segments
               WHERE target_schema = %s AND target_table = %s ORDER BY segment""",
            (schema, table),
        )
    )
    shards = tuple(
        ShardStatus(shard_id, parent, None if sequence is None else str(sequence), finished, records, updated)
        for shard_id, parent, sequence, finished, records, updated in conn.execute(
            """SELECT shard_id, parent_shard_id, sequence_number, finished, records_applied, updated_at
               FROM podyn.shards WHERE target_schema = %s AND target_table = %s
                 AND (%s::text IS NULL OR stream_arn = %s)  -- the current stream's shards, not a replaced one's
               ORDER BY updated_at, shard_id""",
            (schema, table, row[9], row[9]),
        )
    )
    stored = TableState(row[4])
    state: TableState | Activity = stored
    if not row[20]:
        state = Activity.TARGET_MISSING
    elif row[21] and stored not in (TableState.CREATED, TableState.STOPPED):  # a stop's error says more
        state = Activity.COLUMNS_MISSING
    elif stored in _RUNNING:
        holder_pid, heartbeat_age = row[17], row[19]
        lock_pid = postgres.lock_holder_pid(conn, postgres.table_lock_key(postgres.REPLICATION_LOCK, schema, table))
        if lock_pid is None or lock_pid != holder_pid:
            state = Activity.NOT_RUNNING
        elif heartbeat_age is None or heartbeat_age > stale_after_seconds:
            state = Activity.STALLED
    # While a load runs, only the segments know how far it got; the table's count is set when it finishes.
    items = row[6] if row[8] is not None else sum(s.items_loaded for s in segments)
    return TableStatus(
        source=row[2],
        target=f"{schema}.{table}",
        mode=row[3],
        state=state,
        stored_state=stored,
        holder=row[16],
        last_seen=row[18],
        last_error=None if row[5] is None else redact_text(row[5]),
        missing_columns=tuple(row[21] or ()) if row[20] else (),
        items_loaded=items,
        load_started_at=row[7],
        load_finished_at=row[8],
        stream_arn=row[9],
        stream_view_type=row[10],
        changes_applied=row[11],
        last_change_at=row[12],
        replication_lag_seconds=row[13],
        updated_at=row[14],
        rejected=row[15],
        segments=segments,
        shards=shards,
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
        if t.rejected:
            lines.append(f"  rejected: {t.rejected:,} items (see podyn.rejected)")
        if t.stream_arn:
            lines.append(f"  stream: {t.stream_arn} ({t.stream_view_type})")
        if t.last_error:
            lines.append(f"  last error: {t.last_error}")
        if t.missing_columns:
            lines.append(f"  columns dropped outside podyn: {', '.join(t.missing_columns)} (load it again: --reload)")
        shown = [s for s in t.segments if len(t.segments) <= _SEGMENTS_SHOWN or not s.done]
        if shown:
            lines += _indent(
                _grid(
                    ("SEGMENT", "DONE", "ITEMS", "UPDATED"),
                    [
                        (str(s.segment), "yes" if s.done else "no", f"{s.items_loaded:,}", _time(s.updated_at))
                        for s in shown
                    ],
                )
            )
        if len(shown) < len(t.segments):
            lines.append(f"  ({len(t.segments) - len(shown)} finished segments not listed; --json lists all)")
        if t.shards:
            lines += _indent(
                _grid(
                    ("SHARD", "PARENT", "CHECKPOINT", "FINISHED", "RECORDS", "UPDATED"),
                    [
                        (
                            s.shard_id,
                            s.parent_shard_id or "-",
                            s.sequence_number or "-",
                            "yes" if s.finished else "no",
                            f"{s.records_applied:,}",
                            _time(s.updated_at),
                        )
                        for s in t.shards
                    ],
                )
            )
    for name in status.unknown:
        lines += ["", f"{name}: unknown (not in podyn.tables)"]
    return "\n".join(lines)


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
                f"{sum(s.done for s in t.segments)}/{len(t.segments)} done" if t.segments else "-",
                f"{sum(not s.finished for s in t.shards)} open/{len(t.shards)}" if t.shards else "-",
                f"{t.changes_applied:,}",
                "-" if t.replication_lag_seconds is None else f"{t.replication_lag_seconds:.1f} s",
                _time(t.last_change_at),
            )
            for t in tables
        ],
    )


def _time(value: datetime | None) -> str:
    return "-" if value is None else value.isoformat(sep=" ", timespec="seconds")


def _grid(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [max([len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(headers)]
    return ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in [headers, *rows]]


def _indent(lines: list[str]) -> list[str]:
    return ["  " + line for line in lines]
