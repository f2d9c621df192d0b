"""The initial load of one table from an export in S3 (``--data --from-export``): data files → rows → COPY, resumable
batch by batch, reading nothing from the table (zero read capacity).

Each data file is a unit of work, read by one worker thread with its own PostgreSQL connection: a batch's rows are
committed with the file's new position (the lines read, compare-and-set from the position the worker read from),
so after a crash the next run reads each file again from its start, skips the lines committed, and goes on. A file
is done only once its end was checked against the manifest (item count, MD5, gzip trailer): a file that fails the
check stops the table with an error naming it, and the table is not marked loaded.

Change replication after such a load replays the stream from the export time minus a margin (``core.exports``).
When the stream cannot reach back that far, the load is followed by a bridge of incremental exports
(``bridge``), planned and recorded before the first file is read; when no bridge can be built either and
``--changes`` follows in the same run, the load is refused here, before anything is loaded.
"""

from __future__ import annotations

import gc
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from podyn_py import bridge, metrics
from podyn_py.conversion import RowConverter
from podyn_py.core.exports import (
    NO_BRIDGE,
    BridgeImpossible,
    BridgePlan,
    ExportBatch,
    ExportFileRecord,
    ExportManifest,
)
from podyn_py.core.ports import ExportSource, Target
from podyn_py.core.positions import Lease
from podyn_py.core.rows import Rejected
from podyn_py.core.schema import TableSchema
from podyn_py.core.selection import EVERYTHING, AttributeSelection
from podyn_py.errors import (
    ConfigError,
    Interrupted,
    LeaseLost,
    MappingChanged,
    PodynError,
    StreamGapError,
    TransientSourceError,
)
from podyn_py.export_request import Exporter
from podyn_py.load import LoadOptions, LoadResult, refresh_heartbeat
from podyn_py.progress import LoadProgress
from podyn_py.retry import POSTGRES_RECONNECT, S3_FAILED, S3_FAILED_RETRIES, Retrier
from podyn_py.source import dynamodb
from podyn_py.target.state import HEARTBEAT_SECONDS
from podyn_py.units import UnitKeeper

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ExportLoadResult(LoadResult):
    """A load's result, with the export it came from and the read capacity it took from the table (none)."""

    export_id: str = ""
    export_time: datetime | None = None
    export_size_bytes: int | None = None
    read_capacity: float = 0.0


_NOT_OPENED = object()


class _Workers:
    """What a table's file workers share: the growing schema, progress, each thread's connection."""

    def __init__(
        self,
        schema: TableSchema,
        target: Target,
        source: ExportSource,
        options: LoadOptions,
        progress: LoadProgress,
        stop: threading.Event,
        selection: AttributeSelection = EVERYTHING,
    ) -> None:
        self.rows = RowConverter(schema, target, selection)
        self.target = target
        self.source = source
        self.options = options
        self.progress = progress
        self.stop = stop
        #: Set when a file failed: the other workers stop at their next batch (their commits stay).
        self.failed = threading.Event()
        self.rejected = 0
        self.lock = threading.Lock()
        self._local = threading.local()
        self._opened: list[Any] = []
        #: This process's leases on the export's data files (shared with other processes loading the table).
        self.keeper = UnitKeeper(target, schema.spec, "load", options.leases)

    def stopping(self) -> bool:
        return self.stop.is_set() or self.failed.is_set()

    def connection(self) -> Any:
        """This thread's connection, opened on its first file and kept for the next ones (None: the dry run)."""
        conn = getattr(self._local, "conn", _NOT_OPENED)
        if conn is _NOT_OPENED:
            conn = self.target.connect()
            self.keep(conn)
        return conn

    def keep(self, conn: Any) -> None:
        if getattr(self._local, "conn", _NOT_OPENED) is not conn:
            self._local.conn = conn
            if conn is not None:
                with self.lock:
                    self._opened.append(conn)

    def close(self) -> None:
        for conn in self._opened:
            conn.close()


def check_export(manifest: ExportManifest, description: dynamodb.TableDescription) -> None:
    """The export must be of this DynamoDB table: same name, and the same table (its id) where both say it."""
    spec = description.spec
    name = manifest.table_name
    if name is not None and name != spec.source:
        raise ConfigError(
            f"export {manifest.export_id} ({manifest.url}) is of table {name}, not {spec.source}", table=spec.source
        )
    table_id = description.source.table_id
    if manifest.table_id and table_id and manifest.table_id != table_id:
        raise ConfigError(
            f"export {manifest.export_id} is of an earlier table {spec.source} (TableId {manifest.table_id}; the"
            f" table now is {table_id}): it was deleted and created again since",
            table=spec.source,
        )


def load_from_export(
    description: dynamodb.TableDescription,
    schema: TableSchema,
    target: Target,
    source: ExportSource,
    options: LoadOptions,
    *,
    changes_follow: bool = False,
    stop: threading.Event | None = None,
    heartbeat: Callable[[], None] | None = None,
    exporter: Exporter | None = None,
    selection: AttributeSelection = EVERYTHING,
) -> LoadResult:
    """Copy every item of the export into the table's PostgreSQL table; resume an interrupted load of the same
    export; skip a table already loaded (``options.reload``: load it again).

    When the table's stream does not reach back to the export's time, the load is followed by a bridge of
    incremental exports (``bridge``), asked for with ``exporter``'s client and written to its destination; when no
    bridge can be built either, ``changes_follow`` (change replication follows in this run) refuses before
    anything is loaded, and without it the load goes ahead with a warning. A table already loaded is not checked
    again: its replication knows where it is (and an unfinished bridge is finished here). ``selection``: the
    attributes left out of the copy (``--exclude-attributes``), as the Scan load leaves them out.
    """
    spec = schema.spec
    manifest = source.manifest
    started = time.monotonic()
    requested = stop or threading.Event()
    check_export(manifest, description)
    record = target.read_table(spec) if changes_follow or exporter is not None else None
    starting = options.reload or record is None or record.load_finished_at is None
    planned = (
        record is not None
        and not options.reload
        and record.load_finished_at is None
        and record.export_id == manifest.export_id
        and record.bridge_to is not None
    )
    way: BridgePlan | None = None
    if starting and not planned:
        try:
            way = bridge.plan(description, manifest.export_time, exporter, stop=requested)
        except BridgeImpossible as exc:
            if changes_follow:
                raise StreamGapError(
                    f"--changes cannot follow a load from export {manifest.export_id}: {exc}. Nothing was loaded."
                    f" {NO_BRIDGE}",
                    table=spec.source,
                ) from None
            log.warning("table %s: %s; --changes will refuse to follow this load. %s", spec.source, exc, NO_BRIDGE)
    files = target.begin_export_load(
        spec,
        manifest,
        reload=options.reload,
        stream_arn=description.stream_arn,
        stream_view_type=description.stream_view_type,
        run_started=options.run_started,
    )
    if files is None:
        if exporter is not None and record is not None and record.bridge_left:
            bridge.build(
                description, schema, target, exporter, stop=requested, heartbeat=heartbeat, selection=selection
            )
            return LoadResult(spec.source, 0, 0, False, time.monotonic() - started)
        log.info("table %s: already loaded; skipping (use --reload to load it again)", spec.source)
        return LoadResult(spec.source, 0, 0, True, 0.0)
    if way is not None and way.windows:
        bridge.record_plan(description, target, way, manifest.export_id)
    _export_metrics(spec.source, manifest)
    # Every batch allocates tens of thousands of containers, which set off the cyclic GC's collections; its full
    # ones walk every object of the process, boto3's service models included (hundreds of thousands of dicts).
    # Frozen, the objects made so far are left out: half the CPU of reading a file (bench/RESULTS.md).
    gc.freeze()
    remaining = [f for f in files if not f.done]
    if any(f.done or f.line for f in files):
        log.info(
            "table %s: resuming an interrupted load from export %s, %d of %d files unfinished",
            spec.source,
            manifest.export_id,
            len(remaining),
            len(files),
        )
    else:
        log.info(
            "table %s: loading export %s (%s, of %s, %d items in %d files); no read capacity used",
            spec.source,
            manifest.export_id,
            manifest.output_format.value,
            manifest.export_time.isoformat(timespec="seconds"),
            manifest.item_count,
            len(files),
        )
    progress = LoadProgress(
        spec.source, manifest.item_count - sum(f.items_loaded for f in files), bar=options.progress_bar
    )
    workers = _Workers(schema, target, source, options, progress, requested, selection)
    keeper = workers.keeper
    try:
        keeper.join()
        count = max(1, min(options.connections, len(remaining)))
        beat_every = min(HEARTBEAT_SECONDS, options.leases.heartbeat_seconds)
        with ThreadPoolExecutor(count, thread_name_prefix=f"export-{spec.source}") as pool:
            futures = [pool.submit(_load_files, workers) for _ in range(count)]
            while True:
                done, pending = wait(futures, timeout=beat_every, return_when=FIRST_EXCEPTION)
                if not pending or any(f.exception() is not None for f in done):
                    break
                refresh_heartbeat(heartbeat, spec.source)
                try:
                    keeper.renew()
                except PodynError as exc:
                    log.warning("table %s: could not renew the load's leases (%s); the load goes on", spec.source, exc)
            failed = [f.exception() for f in futures if f.done() and f.exception() is not None]
            if failed:
                workers.failed.set()
                wait(futures)
                raise failed[0]  # type: ignore[misc]
    finally:
        keeper.leave()  # on any stop: the files go back at once, for another process to take over
        workers.close()
        progress.close()
    if requested.is_set():
        raise Interrupted(f"load of {spec.source} interrupted; the next run resumes it", table=spec.source)
    total = target.finish_load(spec)
    if exporter is not None and target.read_bridge(spec):
        bridge.build(description, schema, target, exporter, stop=requested, heartbeat=heartbeat, selection=selection)
    metrics.CAPACITY_CONSUMED.labels(spec.source).inc(0)  # the series exists, and says none
    nuls = sum(workers.rows.nul_counts.values())
    log.info(
        "table %s: loaded from export %s (of %s, %s), %s; 0 read capacity units consumed from the table%s%s",
        spec.source,
        manifest.export_id,
        manifest.export_time.isoformat(timespec="seconds"),
        _size(manifest.billed_size_bytes),
        progress.summary(),
        f", {workers.rejected} items rejected (see podyn.rejected)" if workers.rejected else "",
        f", U+0000 removed from {nuls} values" if nuls else "",
    )
    return ExportLoadResult(
        spec.source,
        total,
        workers.rejected,
        False,
        time.monotonic() - started,
        export_id=manifest.export_id,
        export_time=manifest.export_time,
        export_size_bytes=manifest.billed_size_bytes,
    )


def _export_metrics(table: str, manifest: ExportManifest) -> None:
    metrics.EXPORT.labels(table).info(
        {"export_id": manifest.export_id, "format": manifest.output_format.value, "url": manifest.url}
    )
    metrics.EXPORT_TIME.labels(table).set(manifest.export_time.timestamp())
    metrics.EXPORT_ITEMS.labels(table).set(manifest.item_count)
    if manifest.billed_size_bytes is not None:
        metrics.EXPORT_SIZE.labels(table).set(manifest.billed_size_bytes)


def _size(size: int | None) -> str:
    return "size unknown" if size is None else f"{size:,} bytes"


def _load_files(workers: _Workers) -> None:
    """One worker thread: claim a data file, load it to its checked end, claim the next, until all are done; when
    the files left are other processes', wait for them to finish or for their leases to expire (as segments)."""
    spec = workers.rows.schema.spec
    waiting = False
    while not workers.stopping():
        claimed, left = workers.target.claim_export_files(
            spec, workers.keeper.worker, 1, workers.keeper.timing.lease_seconds, workers.connection()
        )
        if not claimed:
            if left <= len(workers.keeper.leases):
                return
            if not waiting:
                log.info("table %s: %d export files left, all held by other processes; waiting", spec.source, left)
                waiting = True
            workers.stop.wait(workers.keeper.timing.poll_seconds)
            continue
        waiting = False
        lease, record = claimed[0]
        workers.keeper.adopt([lease])
        try:
            if not record.done:
                _load_file(workers, record, lease)
        except LeaseLost as exc:
            log.warning("table %s: %s", spec.source, exc.message)
        finally:
            try:
                workers.keeper.release([lease], workers.connection())
            except PodynError as exc:
                log.warning("table %s: could not give back %s (%s)", spec.source, lease.unit_id, exc)


def _load_file(workers: _Workers, record: ExportFileRecord, lease: Lease | None = None) -> None:
    """Load one data file from its committed position to its checked end; S3 failures are retried from there."""
    spec = workers.rows.schema.spec
    retrier = Retrier(S3_FAILED, stop=workers.stop, max_retries=S3_FAILED_RETRIES)
    while not workers.stopping():
        try:
            for batch in workers.source.read_file(record, stop=workers.stop):
                moved = _load_batch(workers, record, batch, lease)
                if moved is None:  # the position moved under this worker: go on from where it is now
                    record = _stored(workers, record)
                    break
                record = moved
                retrier.reset()
                if record.done or workers.stopping():
                    return
            else:
                return  # stopped on request after a batch
            if record.done:
                return
        except TransientSourceError as exc:
            delay = retrier.next_delay()
            if delay is None:
                raise
            log.warning(
                "table %s: %s; reading the file again from line %d in %.1f s", spec.source, exc, record.line + 1, delay
            )
            metrics.ERRORS.labels(spec.source).inc()
            if retrier.wait(delay):
                raise Interrupted("stopped on request while S3 failed", table=spec.source) from exc


def _stored(workers: _Workers, record: ExportFileRecord) -> ExportFileRecord:
    spec = workers.rows.schema.spec
    for stored in workers.target.read_export_files(spec):
        if stored.key == record.key:
            log.info(
                "table %s: %s was at line %d already (an earlier attempt or another process); going on from there",
                spec.source,
                workers.source.object_url(record.key),
                stored.line,
            )
            return stored
    raise ConfigError(f"{record.key} is no longer a unit of the table's load: it was started again", table=spec.source)


def _load_batch(
    workers: _Workers, record: ExportFileRecord, batch: ExportBatch, lease: Lease | None = None
) -> ExportFileRecord | None:
    """Convert and commit one batch with the file's new position; the record after it, None if already applied."""
    source = workers.rows.schema.spec.source
    while True:
        schema, rows, rejected = workers.rows.convert(batch.items)
        try:
            written = _write_with_reconnect(workers, schema, rows, rejected, record, batch, lease)
            break
        except MappingChanged as exc:  # columns renamed by another worker: same batch, new names
            log.info("table %s: %s", source, exc.message)
            workers.rows.refresh(schema)
    if not written:
        return None
    with workers.lock:
        workers.rejected += len(rejected)
    workers.progress.add(len(batch.items), 0.0)
    metrics.ITEMS_LOADED.labels(source).inc(len(rows))
    metrics.ITEMS_REJECTED.labels(source).inc(len(rejected))
    metrics.BATCHES.labels(source).inc()
    return replace(record, line=batch.line, items_loaded=record.items_loaded + len(rows), done=batch.done)


def _write_with_reconnect(
    workers: _Workers,
    schema: TableSchema,
    rows: list[list[Any]],
    rejected: list[Rejected],
    record: ExportFileRecord,
    batch: ExportBatch,
    lease: Lease | None = None,
) -> bool:
    """Write a batch; on a lost connection, reconnect with back-off and write it again (the write is idempotent)."""
    retrier = Retrier(POSTGRES_RECONNECT, stop=workers.stop, deadline=workers.options.reconnect_seconds)
    conn = workers.connection()
    while True:
        try:
            if conn is None:
                conn = workers.target.connect()
                workers.keep(conn)
            return workers.target.write_export_batch(
                conn, schema, rows, rejected, record.key, record.line, batch.line, batch.done, lease
            )
        except PodynError as exc:
            delay = None if isinstance(exc, MappingChanged | LeaseLost) or not exc.transient else retrier.next_delay()
            if delay is None:
                raise
            log.warning("table %s: %s; reconnecting in %.1f s", schema.spec.source, exc.message, delay)
            metrics.ERRORS.labels(schema.spec.source).inc()
            if conn is not None:
                conn.close()
            conn = None
            if retrier.wait(delay):
                raise Interrupted(
                    "stopped on request while PostgreSQL was unreachable", table=schema.spec.source
                ) from exc
