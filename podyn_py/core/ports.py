"""What the orchestration needs of each edge, as protocols: the sources it reads, the target it writes, the clients.

The orchestration (``load``, ``changes``, ``replicate``, ``verify``) speaks only these; the edges satisfy them
structurally and need not import them: PostgreSQL (``target.postgres.PostgresTarget``) and the dry run
(``target.dryrun.DryRunTarget``) are targets; a table's parallel scan (``source.dynamodb.TableScan``, paced by
``source.scan``), an export's data files in S3 (``source.export.ExportReader``) and a stream's reader
(``source.streams.StreamReader``) are sources. A new source or target is a new class of the same shape, with no
``isinstance`` to add anywhere. The client protocols name
the calls made of boto3's clients; the fast path's ``RawJsonClient`` answers the data calls too. Results stay
``Any`` where boto3's stubs and the fast path differ (it gives binary values as base64 text).

Not here: how anything is done. This module defines no behaviour and imports nothing but the core's values.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from datetime import datetime
from typing import Any, Protocol, runtime_checkable

from podyn_py.core.changes import SpoolEntry, TtlCounts
from podyn_py.core.exports import BridgeRecord, ExportBatch, ExportFileRecord, ExportManifest
from podyn_py.core.positions import Lease, ScanPage, SegmentRecord, ShardBatch, ShardPosition
from podyn_py.core.rows import Rejected
from podyn_py.core.schema import SchemaChange, SourceIdentity, StoredChoices, TableSchema, TableSpec
from podyn_py.core.targets import StoredTarget

# -- clients: the calls made of DynamoDB ------------------------------------------------------------------------
# ``*args: Any, **kwargs: Any`` accepts boto3's keyword-only signatures; the method names are what is checked.


@runtime_checkable
class ScanClient(Protocol):
    """Scan: what a load and ``--verify`` read items with."""

    def scan(self, *args: Any, **kwargs: Any) -> Any: ...


@runtime_checkable
class ItemClient(Protocol):
    """BatchGetItem: the current items for keys (refetches of KEYS_ONLY streams, ``--verify``'s rechecks)."""

    def batch_get_item(self, *args: Any, **kwargs: Any) -> Any: ...


@runtime_checkable
class DataClient(ScanClient, ItemClient, Protocol):
    """The client that moves items: boto3's ``dynamodb`` client, or the fast path on top of it."""


@runtime_checkable
class StreamsClient(Protocol):
    """The three calls of boto3's ``dynamodbstreams`` client that the stream reader makes."""

    def describe_stream(self, *args: Any, **kwargs: Any) -> Any: ...

    def get_shard_iterator(self, *args: Any, **kwargs: Any) -> Any: ...

    def get_records(self, *args: Any, **kwargs: Any) -> Any: ...


@runtime_checkable
class TableClient(Protocol):
    """The control-plane calls: which tables there are and what each is (the fast path has none of them)."""

    def describe_table(self, *args: Any, **kwargs: Any) -> Any: ...

    def list_tables(self, *args: Any, **kwargs: Any) -> Any: ...


@runtime_checkable
class ExportClient(Protocol):
    """The calls ``--export-to`` makes: is point-in-time recovery on, start an export, how far it is."""

    def describe_continuous_backups(self, *args: Any, **kwargs: Any) -> Any: ...

    def export_table_to_point_in_time(self, *args: Any, **kwargs: Any) -> Any: ...

    def describe_export(self, *args: Any, **kwargs: Any) -> Any: ...


# -- sources: units of work, each read from a position, at a cost ---------------------------------------------


@runtime_checkable
class ScanSource(Protocol):
    """A load's source: one table read as ``total_segments`` parallel segments, the units of work.

    Each segment is read a page at a time from its position (the last key committed, None at its start); a page
    says where the segment continues and what it cost in read capacity units, which the load paces by
    (``--scan-rate``). Throttling is waited out inside, until ``stop`` is set.
    """

    def read_page(
        self,
        segment: int,
        total_segments: int,
        start_key: dict[str, Any] | None,
        *,
        limit: int | None,
        stop: threading.Event | None = None,
    ) -> ScanPage: ...


@runtime_checkable
class ExportSource(Protocol):
    """A load's source that reads no table: an export's data files in S3, the units of work.

    Each file is read from its position (lines committed) in batches, each with the position to commit with it;
    the last one (``done``) comes once the file's end was checked against the manifest. It costs no read capacity.
    """

    @property
    def manifest(self) -> ExportManifest: ...

    def object_url(self, key: str) -> str: ...

    def read_file(self, record: ExportFileRecord, *, stop: threading.Event | None = None) -> Iterator[ExportBatch]: ...


@runtime_checkable
class ChangeSource(Protocol):
    """A change feed's source: one stream's shards, the units of work, each read on from its checkpoint.

    Built from the stored checkpoints (see ``changes.ReaderFactory``); each :meth:`read` returns the shards'
    next batches with their new positions, to be committed with their rows. After a failure the caller throws it
    away and builds a new one from what was committed. Reading a stream costs no read capacity of the table.
    """

    #: Shard id → parent id of every shard in the latest listing (None before the first): the lineage from which
    #: the caller decides which shards to lease.
    listed: dict[str, str | None] | None

    @property
    def ended(self) -> bool: ...

    def positions(self) -> dict[str, ShardPosition]:
        """Each shard (a unit of work) and how far it has been handed out."""
        ...

    def read(self, max_wait: float = 1.0) -> list[ShardBatch]: ...

    def relist(self) -> None:
        """Refresh :attr:`listed` at the next :meth:`read` (may be called from another thread)."""
        ...


# -- the target -------------------------------------------------------------------------------------------------


@runtime_checkable
class Hold(Protocol):
    """A table held by this process (PostgreSQL: a session advisory lock); beating also checks it is still held."""

    def heartbeat(self) -> None: ...


class StoredTable(Protocol):
    """What the change feed reads of a table's stored state (``target.state.TableRecord``) before it starts."""

    @property
    def load_started_at(self) -> datetime | None: ...

    @property
    def load_finished_at(self) -> datetime | None: ...

    @property
    def stream_arn(self) -> str | None: ...

    @property
    def truncate_before_load(self) -> bool: ...

    @property
    def state(self) -> str:
        """As ``podyn.tables.state`` says (``live``, ``loading``, …)."""
        ...

    @property
    def export_id(self) -> str | None: ...

    @property
    def export_time(self) -> datetime | None:
        """The point in time of the export the table was loaded from (None: loaded by a Scan, or not loaded)."""
        ...

    @property
    def bridge_to(self) -> datetime | None:
        """The end of the bridge of incremental exports from that export to the stream (None: none)."""
        ...

    @property
    def bridge_left(self) -> int:
        """The bridge's incremental exports not applied yet."""
        ...

    @property
    def export_url(self) -> str | None:
        """The folder of the export the table is (being) loaded from."""
        ...

    @property
    def export_request_arn(self) -> str | None:
        """The export podyn asked for (``--export-to``) that no load has started from yet."""
        ...

    @property
    def export_request_to(self) -> str | None:
        """Where that export writes (``s3://bucket/prefix``)."""
        ...


@runtime_checkable
class Target(Protocol):
    """Where tables are written: prepare a table, write a load's page with its segment's position, apply a
    stream's changes with their shards' checkpoints, hold a table.

    ``conn`` is the target's own connection, from :meth:`connect` (None for the dry run); callers only hand it
    back and close it. A target that cannot follow a stream (the dry run) refuses in
    :meth:`check_follows_changes` and in every change method with a ConfigError that says why.
    """

    # -- a run and its tables

    def check_connection(self) -> None: ...

    def ensure_metadata(self) -> None: ...

    def hold(self, spec: TableSpec) -> AbstractContextManager[Hold | None]: ...

    def stored_choices(self, schema: str, table: str) -> StoredChoices | None: ...

    def stored_targets(self) -> Sequence[StoredTarget]: ...

    def prepare_table(
        self,
        spec: TableSpec,
        *,
        create: bool,
        citus: bool,
        source: SourceIdentity | None = None,
        reload: bool = False,
        replaces: Sequence[tuple[str, str]] = (),
    ) -> TableSchema: ...

    def add_columns(self, schema: TableSchema, evolve: Callable[[TableSchema], SchemaChange]) -> TableSchema: ...

    def current_schema(self, schema: TableSchema) -> TableSchema: ...

    def add_expired_column(self, schema: TableSchema) -> TableSchema: ...

    def record_failure(self, schema: str, table: str, error: str, *, source: str) -> None: ...

    def connect(self, *, lease_seconds: float | None = None) -> Any: ...

    # -- a load: pages committed with their segment's position

    def begin_load(
        self,
        spec: TableSpec,
        total_segments: int,
        *,
        reload: bool,
        stream_arn: str | None = None,
        stream_view_type: str | None = None,
        run_started: datetime | None = None,
    ) -> list[SegmentRecord] | None: ...

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
    ) -> bool: ...

    # -- a load from an export: batches committed with their data file's position

    def begin_export_load(
        self,
        spec: TableSpec,
        manifest: ExportManifest,
        *,
        reload: bool,
        stream_arn: str | None = None,
        stream_view_type: str | None = None,
        run_started: datetime | None = None,
    ) -> list[ExportFileRecord] | None: ...

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
    ) -> bool: ...

    def read_export_files(self, spec: TableSpec) -> list[ExportFileRecord]: ...

    def finish_load(self, spec: TableSpec) -> int: ...

    # -- work units shared by processes: leases (see podyn_py/units.py)

    def claim_segments(
        self, spec: TableSpec, owner: str, limit: int, lease_seconds: float, conn: Any = None
    ) -> tuple[list[tuple[Lease, SegmentRecord]], int]: ...

    def claim_export_files(
        self, spec: TableSpec, owner: str, limit: int, lease_seconds: float, conn: Any = None
    ) -> tuple[list[tuple[Lease, ExportFileRecord]], int]: ...

    def claim_units(
        self, spec: TableSpec, kind: str, candidates: Sequence[str], owner: str, limit: int, lease_seconds: float
    ) -> list[Lease]: ...

    def renew_leases(
        self, spec: TableSpec, leases: Sequence[Lease], lease_seconds: float, *, role: str
    ) -> list[Lease]: ...

    def release_leases(self, spec: TableSpec, leases: Sequence[Lease], conn: Any = None) -> None: ...

    def beat_worker(self, spec: TableSpec, role: str, worker: str, within_seconds: float) -> list[str]: ...

    def leave_worker(self, spec: TableSpec, role: str, worker: str, leases: Sequence[Lease]) -> None: ...

    def held_units(self, spec: TableSpec, kind: str) -> dict[str, tuple[str, bool]]: ...

    # -- changes: batches committed with their shards' checkpoints

    def check_follows_changes(self) -> None: ...

    def read_table(self, spec: TableSpec) -> StoredTable | None: ...

    def record_export_request(self, spec: TableSpec, export_arn: str, destination: str) -> None: ...

    # -- the bridge of incremental exports from an export to the stream (export_load, bridge)

    def plan_bridge(self, spec: TableSpec, records: Sequence[BridgeRecord]) -> None: ...

    def read_bridge(self, spec: TableSpec) -> list[BridgeRecord]: ...

    def record_bridge_export(self, spec: TableSpec, ordinal: int, export_arn: str) -> None: ...

    def reset_bridge_export(self, spec: TableSpec, ordinal: int, client_token: str) -> None: ...

    def apply_bridge(
        self,
        conn: Any,
        schema: TableSchema,
        ordinal: int,
        *,
        rows: Sequence[Sequence[Any]],
        delete_keys: Sequence[Sequence[Any]],
        rejected: Sequence[Any],
    ) -> bool: ...

    def read_positions(self, spec: TableSpec, stream_arn: str) -> dict[str, ShardPosition]: ...

    def start_catching_up(
        self, spec: TableSpec, *, stream_arn: str, stream_view_type: str | None, replay_from: datetime | None
    ) -> None: ...

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
    ) -> bool: ...

    def become_live(self, spec: TableSpec, lag_seconds: float) -> None: ...

    def record_lag(self, spec: TableSpec, lag_seconds: float) -> None: ...

    # -- the spool: changes captured while a table loads, committed with their shards' checkpoints (spool.py)

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
    ) -> int | None: ...

    def read_spool(self, spec: TableSpec, after: str | None, limit: int, conn: Any = None) -> list[SpoolEntry]: ...

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
    ) -> int | None: ...
