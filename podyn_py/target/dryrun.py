"""The dry run: what podyn would do to PostgreSQL, printed as SQL instead of run.

Used when no PostgreSQL URL is given. DynamoDB is still read (DescribeTable, and Scan with ``--data``, paced by
``--scan-rate``) so that the printed schema includes the columns the data needs; nothing is written anywhere.
It cannot follow a stream: every change method refuses with the ConfigError that ``--changes`` gets.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import Any, TextIO

from psycopg import sql

from podyn_py.core import ddl, naming
from podyn_py.core.changes import SpoolEntry, TtlCounts
from podyn_py.core.exports import BridgeRecord, ExportFileRecord, ExportManifest
from podyn_py.core.positions import Lease, SegmentRecord, ShardPosition, UnitKind
from podyn_py.core.rows import Rejected
from podyn_py.core.schema import SchemaChange, SourceIdentity, TableSchema, TableSpec, initial_schema
from podyn_py.core.targets import StoredTarget
from podyn_py.errors import ConfigError

#: Why the dry run asks DynamoDB for no export: one is billed, and lands in S3.
CANNOT_EXPORT = (
    "--export-to asks DynamoDB for an export (billed, written to S3): not in a dry run; give -u, or dry-run the"
    " load of an existing export with --from-export"
)
CANNOT_FOLLOW_CHANGES = "--changes needs a PostgreSQL URL (-u): a dry run cannot follow a stream"


class DryRunTarget:
    def __init__(self, out: TextIO, *, citus: bool) -> None:
        self.out = out
        self.citus = citus
        self._lock = threading.Lock()
        self._rows: dict[str, int] = {}
        #: Per table: the segments not handed out yet, and those not done. One process: no other owner.
        self._unclaimed: dict[str, list[SegmentRecord]] = {}
        self._left: dict[str, set[int]] = {}
        self._files: dict[str, list[ExportFileRecord]] = {}

    def _print(self, statement: sql.Composable | str, comment: str = "") -> None:
        text = statement if isinstance(statement, str) else statement.as_string()
        with self._lock:
            self.out.write(f"{text};{f'  -- {comment}' if comment else ''}\n")
            self.out.flush()

    def check_connection(self) -> None:
        """Nothing to connect to."""

    def ensure_metadata(self) -> None:
        """No ``podyn`` schema to make: the dry run prints the tables' DDL only."""

    @contextmanager
    def hold(self, spec: TableSpec) -> Iterator[None]:
        yield

    def stored_choices(self, schema: str, table: str) -> None:
        return None

    def stored_targets(self) -> list[StoredTarget]:
        return []  # nothing recorded: every table goes where the run says

    def record_failure(self, schema: str, table: str, error: str, *, source: str) -> None:
        """Nothing is recorded: the error is logged and the run's exit code says it."""

    def prepare_table(
        self,
        spec: TableSpec,
        *,
        create: bool,
        citus: bool,
        source: SourceIdentity | None = None,
        reload: bool = False,
        replaces: Sequence[tuple[str, str]] = (),
    ) -> TableSchema:
        schema = initial_schema(spec)
        if create:
            for statement in ddl.create_statements(schema, citus=citus):
                self._print(statement)
        return schema

    def add_columns(self, schema: TableSchema, evolve: Callable[[TableSchema], SchemaChange]) -> TableSchema:
        change = evolve(schema)
        for old, new in naming.rename_steps(change.renamed, set(schema.column_names)):
            self._print(ddl.rename_column(schema, old, new))
        if change.added:
            self._print(ddl.add_columns(schema, change.added))
        return schema.with_change(change)

    def current_schema(self, schema: TableSchema) -> TableSchema:
        return schema

    def begin_load(
        self,
        spec: TableSpec,
        total_segments: int,
        *,
        reload: bool,
        stream_arn: str | None = None,
        stream_view_type: str | None = None,
        run_started: datetime | None = None,
    ) -> list[SegmentRecord]:
        segments = [SegmentRecord(s, total_segments, None, 0, False) for s in range(total_segments)]
        with self._lock:
            self._unclaimed[spec.source] = list(segments)
            self._left[spec.source] = set(range(total_segments))
        return segments

    def claim_segments(
        self, spec: TableSpec, owner: str, limit: int, lease_seconds: float, conn: Any = None
    ) -> tuple[list[tuple[Lease, SegmentRecord]], int]:
        with self._lock:
            unclaimed = self._unclaimed.setdefault(spec.source, [])
            taken, unclaimed[:limit] = unclaimed[:limit], []
            left = len(self._left.get(spec.source, ()))
        return [(Lease(UnitKind.SEGMENT, str(s.segment), owner, 1), s) for s in taken], left

    def claim_export_files(
        self, spec: TableSpec, owner: str, limit: int, lease_seconds: float, conn: Any = None
    ) -> tuple[list[tuple[Lease, ExportFileRecord]], int]:
        with self._lock:
            files = self._files.setdefault(spec.source, [])
            taken, files[:limit] = files[:limit], []
        return [(Lease(UnitKind.EXPORT_FILE, f.key, owner, 1), f) for f in taken], len(taken) + len(files)

    def claim_units(
        self, spec: TableSpec, kind: str, candidates: Sequence[str], owner: str, limit: int, lease_seconds: float
    ) -> list[Lease]:
        return [Lease(kind, unit, owner, 1) for unit in list(candidates)[:limit]]

    def renew_leases(self, spec: TableSpec, leases: Sequence[Lease], lease_seconds: float, *, role: str) -> list[Lease]:
        return list(leases)

    def release_leases(self, spec: TableSpec, leases: Sequence[Lease], conn: Any = None) -> None:
        """Nothing is shared: no one else could take them."""

    def beat_worker(self, spec: TableSpec, role: str, worker: str, within_seconds: float) -> list[str]:
        return [worker]

    def leave_worker(self, spec: TableSpec, role: str, worker: str, leases: Sequence[Lease]) -> None:
        """No worker is recorded."""

    def held_units(self, spec: TableSpec, kind: str) -> dict[str, tuple[str, bool]]:
        return {}

    def begin_export_load(
        self,
        spec: TableSpec,
        manifest: ExportManifest,
        *,
        reload: bool,
        stream_arn: str | None = None,
        stream_view_type: str | None = None,
        run_started: datetime | None = None,
    ) -> list[ExportFileRecord]:
        files = [ExportFileRecord(f.key, f.ordinal, f.item_count, f.md5, 0, 0, False) for f in manifest.files]
        with self._lock:
            self._files[spec.source] = list(files)
        return files

    def read_export_files(self, spec: TableSpec) -> list[ExportFileRecord]:
        return []

    def write_export_batch(
        self,
        conn: Any,
        schema: TableSchema,
        rows: Sequence[Sequence[Any]],
        rejected: Sequence[Rejected],
        file_key: str,
        expected_line: int,
        new_line: int,
        done: bool,
        lease: Lease | None = None,
    ) -> bool:
        return self._write(schema, rows, rejected, f"{file_key} lines {expected_line + 1}-{new_line}")

    def finish_load(self, spec: TableSpec) -> int:
        rows = self._rows.get(spec.source, 0)
        with self._lock:
            self.out.write(f"-- {spec.source}: {rows} rows would be copied into {spec.schema}.{spec.table}\n")
        return rows

    def connect(self, *, lease_seconds: float | None = None) -> None:
        return None

    def write_page(
        self,
        conn: Any,
        schema: TableSchema,
        rows: Sequence[Sequence[Any]],
        rejected: Sequence[Rejected],
        segment: int,
        expected_key: dict[str, Any] | None,
        new_key: dict[str, Any] | None,
        lease: Lease | None = None,
    ) -> bool:
        if new_key is None:
            with self._lock:
                self._left.get(schema.spec.source, set()).discard(segment)
        return self._write(schema, rows, rejected, f"segment {segment}")

    def _write(
        self, schema: TableSchema, rows: Sequence[Sequence[Any]], rejected: Sequence[Rejected], unit: str
    ) -> bool:
        spec = schema.spec
        with self._lock:
            self._rows[spec.source] = self._rows.get(spec.source, 0) + len(rows)
        if rows:
            self._print(ddl.copy_rows(schema), f"{len(rows)} rows, {unit}")
        for item in rejected:
            with self._lock:
                self.out.write(f"-- would reject item {item.key}: {item.error}\n")
        return True

    # -- changes: refused ------------------------------------------------------------------------------------------

    def check_follows_changes(self) -> None:
        raise ConfigError(CANNOT_FOLLOW_CHANGES)

    def read_table(self, spec: TableSpec) -> None:
        raise ConfigError(CANNOT_FOLLOW_CHANGES, table=spec.source)

    def read_positions(self, spec: TableSpec, stream_arn: str) -> dict[str, ShardPosition]:
        raise ConfigError(CANNOT_FOLLOW_CHANGES, table=spec.source)

    def record_export_request(self, spec: TableSpec, export_arn: str, destination: str) -> None:
        raise ConfigError(CANNOT_EXPORT, table=spec.source)

    def plan_bridge(self, spec: TableSpec, records: Sequence[BridgeRecord]) -> None:
        raise ConfigError(CANNOT_EXPORT, table=spec.source)

    def read_bridge(self, spec: TableSpec) -> list[BridgeRecord]:
        return []  # the dry run asks for no export: it never has a bridge

    def record_bridge_export(self, spec: TableSpec, ordinal: int, export_arn: str) -> None:
        raise ConfigError(CANNOT_EXPORT, table=spec.source)

    def reset_bridge_export(self, spec: TableSpec, ordinal: int, client_token: str) -> None:
        raise ConfigError(CANNOT_EXPORT, table=spec.source)

    def apply_bridge(
        self,
        conn: Any,
        schema: TableSchema,
        ordinal: int,
        *,
        rows: Sequence[Sequence[Any]],
        delete_keys: Sequence[Sequence[Any]],
        rejected: Sequence[Any],
    ) -> bool:
        raise ConfigError(CANNOT_EXPORT, table=schema.spec.source)

    def start_catching_up(
        self, spec: TableSpec, *, stream_arn: str, stream_view_type: str | None, replay_from: datetime | None
    ) -> None:
        raise ConfigError(CANNOT_FOLLOW_CHANGES, table=spec.source)

    def apply_changes(
        self,
        conn: Any,
        schema: TableSchema,
        stream_arn: str,
        *,
        rows: Sequence[Sequence[Any]],
        delete_keys: Sequence[Sequence[Any]],
        rejected: Sequence[Rejected],
        moves: Sequence[tuple[ShardPosition | None, ShardPosition, int]],
        lag_seconds: float | None,
        leases: Mapping[str, Lease] | None = None,
        expire: Sequence[tuple[Sequence[Any], datetime | None]] = (),
        ttl: TtlCounts | None = None,
    ) -> bool:
        raise ConfigError(CANNOT_FOLLOW_CHANGES, table=schema.spec.source)

    def add_expired_column(self, schema: TableSchema) -> TableSchema:
        raise ConfigError(CANNOT_FOLLOW_CHANGES, table=schema.spec.source)

    def become_live(self, spec: TableSpec, lag_seconds: float) -> None:
        raise ConfigError(CANNOT_FOLLOW_CHANGES, table=spec.source)

    def record_lag(self, spec: TableSpec, lag_seconds: float) -> None:
        raise ConfigError(CANNOT_FOLLOW_CHANGES, table=spec.source)

    def spool_changes(
        self,
        conn: Any,
        spec: TableSpec,
        stream_arn: str,
        *,
        entries: Sequence[SpoolEntry],
        rejected: Sequence[Rejected],
        moves: Sequence[tuple[ShardPosition | None, ShardPosition, int]],
        captured: int,
        captured_until: datetime | None,
        leases: Mapping[str, Lease] | None = None,
        ttl: TtlCounts | None = None,
    ) -> int | None:
        raise ConfigError(CANNOT_FOLLOW_CHANGES, table=spec.source)

    def read_spool(self, spec: TableSpec, after: str | None, limit: int, conn: Any = None) -> list[SpoolEntry]:
        raise ConfigError(CANNOT_FOLLOW_CHANGES, table=spec.source)

    def apply_spool(
        self,
        conn: Any,
        schema: TableSchema,
        *,
        keys: Sequence[str],
        rows: Sequence[Sequence[Any]],
        delete_keys: Sequence[Sequence[Any]],
        rejected: Sequence[Rejected],
        expire: Sequence[tuple[Sequence[Any], datetime | None]] = (),
    ) -> int | None:
        raise ConfigError(CANNOT_FOLLOW_CHANGES, table=schema.spec.source)
