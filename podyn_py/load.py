"""The initial load of one table: parallel scan segments → rows → COPY, resumable page by page.

Each segment is a work unit: a worker thread claims one (a lease in ``podyn.leases``, see ``units.py``), scans it
with its own PostgreSQL connection, then claims the next. A page's rows are committed with the segment's new
LastEvaluatedKey and a check of the lease, so after a crash the next run (or another process, once the lease
expired) continues each segment after its last committed page, and a process that lost a lease commits nothing
more to it. Any number of processes, on any number of hosts, load one table together this way; the commit that
finishes the last segment marks the table loaded. Items that cannot be converted are kept whole in
``podyn.rejected`` (same transaction), never dropped.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from podyn_py import health, logs, metrics
from podyn_py.conversion import RowConverter
from podyn_py.core.keys import key_from_json, key_to_json
from podyn_py.core.ports import ScanClient, ScanSource, Target
from podyn_py.core.positions import Lease, SegmentRecord, UnitKind
from podyn_py.core.rows import Rejected
from podyn_py.core.schema import TableSchema
from podyn_py.core.selection import EVERYTHING, AttributeSelection
from podyn_py.errors import ConfigError, Interrupted, LeaseLost, MappingChanged, PodynError
from podyn_py.progress import LoadProgress
from podyn_py.retry import POSTGRES_RECONNECT, Retrier
from podyn_py.source import dynamodb
from podyn_py.source.scan import PageSizer, ReadCapacityLimiter
from podyn_py.target.state import HEARTBEAT_SECONDS
from podyn_py.units import LeaseTiming, UnitKeeper

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LoadOptions:
    segments: int
    connections: int
    scan_rate: float = 0.0
    consistent_read: bool = False
    reload: bool = False
    progress_bar: bool = False
    #: How long a lost PostgreSQL connection is retried before the load stops.
    reconnect_seconds: float = 600.0
    #: Leases on segments (shared with other processes loading the same table).
    leases: LeaseTiming = LeaseTiming()
    #: When this run started: a --reload joins a load of the same table started since (by another process).
    run_started: datetime | None = None


@dataclass(frozen=True)
class LoadResult:
    table: str
    items: int
    rejected: int
    skipped: bool
    seconds: float


_NOT_OPENED = object()


class Beside(Protocol):
    """Work that runs beside a table's load, from before its first page (the capture of its stream, spool.py)."""

    def start(self) -> None: ...

    def failure(self) -> PodynError | None:
        """The error that stopped it: the load stops with it too."""
        ...

    def end(self, loaded: bool) -> None:
        """The load ended: with the table loaded, or not (failed, interrupted)."""
        ...


class _TableLoad:
    """State shared by a table's segment workers: the growing schema, the capacity budget, progress."""

    def __init__(
        self,
        schema: TableSchema,
        target: Target,
        source: ScanSource,
        options: LoadOptions,
        progress: LoadProgress,
        stop: threading.Event,
        keeper: UnitKeeper,
        selection: AttributeSelection = EVERYTHING,
    ):
        self.rows = RowConverter(schema, target, selection)
        self.keeper = keeper
        #: Set when the run is asked to stop.
        self.stop = stop
        self.options = options
        self.progress = progress
        self.target = target
        self.source = source
        self.limiter = ReadCapacityLimiter(options.scan_rate)
        self.rejected = 0
        self.lock = threading.Lock()
        #: Worker threads between asking for a segment and holding its lease (guarded by ``lock``).
        self.claiming = 0
        #: Each worker thread's PostgreSQL connection, kept from one segment to the next.
        self._connection = threading.local()
        self._opened: list[Any] = []

    @property
    def schema(self) -> TableSchema:
        return self.rows.schema

    def connection(self) -> Any:
        """This worker thread's connection: opened on its first segment, kept for the next ones."""
        conn = getattr(self._connection, "conn", _NOT_OPENED)
        if conn is _NOT_OPENED:
            conn = self.connect()
            self.keep_connection(conn)
        return conn

    def connect(self) -> Any:
        """A new connection for a worker: a transaction of it left idle past the lease is ended by PostgreSQL."""
        return self.target.connect(lease_seconds=self.options.leases.lease_seconds)

    def keep_connection(self, conn: Any) -> None:
        """Remember the thread's connection (a new one after a reconnect) so that close_connections closes it."""
        if getattr(self._connection, "conn", _NOT_OPENED) is not conn:
            self._connection.conn = conn
            if conn is not None:
                with self.lock:
                    self._opened.append(conn)

    def close_connections(self) -> None:
        """After the workers are done: close every connection they opened (closing a closed one does nothing)."""
        for conn in self._opened:
            conn.close()

    def share_rate(self) -> None:
        """--scan-rate is for the table as a whole: this process spends its share among the table's loaders."""
        if self.options.scan_rate > 0:
            self.limiter.set_rate(self.options.scan_rate / self.keeper.workers)


def load_table(
    description: dynamodb.TableDescription,
    schema: TableSchema,
    target: Target,
    client: ScanClient,
    options: LoadOptions,
    *,
    stop: threading.Event | None = None,
    heartbeat: Callable[[], None] | None = None,
    selection: AttributeSelection = EVERYTHING,
    beside: Beside | None = None,
) -> LoadResult:
    """Copy every item of a table into its PostgreSQL table; resume an interrupted load; skip a finished one.

    ``heartbeat`` is called every HEARTBEAT_SECONDS while the segments load (the table's holder and heartbeat in
    podyn.tables), so that ``--status`` can tell a load that runs from one whose process is gone. ``selection``:
    the attributes left out of every item (``--exclude-attributes``, global tables' own attributes). ``beside`` is
    started once the load has begun, before its first page (not for a table already loaded), and told when the
    load ends; its failure stops the load.
    """
    spec = schema.spec
    started = time.monotonic()
    segments = target.begin_load(
        spec,
        options.segments,
        reload=options.reload,
        stream_arn=description.stream_arn,
        stream_view_type=description.stream_view_type,
        run_started=options.run_started,
    )
    if segments is None:
        log.info(
            "table %s: already loaded; skipping (use --reload to load it again)",
            spec.source,
            extra={"table": spec.source},
        )
        return LoadResult(spec.source, 0, 0, True, 0.0)
    remaining = [s for s in segments if not s.done]
    leased = sum(live for _, live in target.held_units(spec, UnitKind.SEGMENT).values())
    if leased:  # their owners run, or stopped less than a lease ago (killed: the lease is still theirs)
        log.info(
            "table %s: resuming the load, %d of %d segments unfinished, %d of them leased to other processes"
            " (running, or stopped less than a lease ago)",
            spec.source,
            len(remaining),
            len(segments),
            leased,
        )
    elif any(s.done or s.last_key is not None for s in segments):
        log.info(
            "table %s: resuming an interrupted load, %d of %d segments unfinished",
            spec.source,
            len(remaining),
            len(segments),
            extra={"table": spec.source, "segments_unfinished": len(remaining), "segments": len(segments)},
        )
    progress = LoadProgress(
        spec.source, description.item_count - sum(s.items_loaded for s in segments), bar=options.progress_bar
    )
    requested = stop or threading.Event()
    source = dynamodb.TableScan(client, spec.source, consistent_read=options.consistent_read)
    keeper = UnitKeeper(target, spec, "load", options.leases)
    load = _TableLoad(schema, target, source, options, progress, requested, keeper, selection)
    if beside is None:
        return _load(load, options, remaining, started, heartbeat, None)
    beside.start()
    try:
        result = _load(load, options, remaining, started, heartbeat, beside)
    except BaseException:
        beside.end(loaded=False)
        raise
    beside.end(loaded=True)
    return result


def _load(
    load: _TableLoad,
    options: LoadOptions,
    remaining: list[SegmentRecord],
    started: float,
    heartbeat: Callable[[], None] | None,
    beside: Beside | None,
) -> LoadResult:
    spec, target, keeper, progress, requested = load.schema.spec, load.target, load.keeper, load.progress, load.stop
    stopping = _Either(requested, beside)
    try:
        keeper.join()
        load.share_rate()
        workers = max(1, min(options.connections, len(remaining)))
        beat_every = min(HEARTBEAT_SECONDS, options.leases.heartbeat_seconds)
        with ThreadPoolExecutor(workers, thread_name_prefix=f"load-{spec.source}") as pool:
            futures = [pool.submit(_load_segments, load, stopping) for _ in range(workers)]
            while True:
                done, pending = wait(futures, timeout=beat_every, return_when=FIRST_EXCEPTION)
                if not pending or any(f.exception() is not None for f in done):
                    break
                refresh_heartbeat(heartbeat, spec.source)
                _renew(load)
                if beside is not None and beside.failure() is not None:
                    break
            failed = [f.exception() for f in futures if f.done() and f.exception() is not None]
            if not failed and beside is not None and (error := beside.failure()) is not None:
                failed = [error]
            if failed:
                stopping.set()  # the other segments stop at their next page; their committed pages stay
                wait(futures)
                raise failed[0]  # type: ignore[misc]
    finally:
        keeper.leave()  # on any stop: the segments go back at once, for another process to take over
        load.close_connections()
        progress.close()
    try:
        total = target.finish_load(spec)
    except ConfigError as exc:  # segments left: stopped on request, or they are other processes' now
        if requested.is_set():
            raise Interrupted(f"load of {spec.source} interrupted; the next run resumes it", table=spec.source) from exc
        raise
    seconds = time.monotonic() - started
    nuls = sum(load.rows.nul_counts.values())
    untagged = load.rows.untagged_map_counts.total()
    log.info(
        "table %s: loaded, %s%s%s%s",
        spec.source,
        progress.summary(),
        f", {load.rejected} items rejected (see podyn.rejected)" if load.rejected else "",
        f", U+0000 removed from {nuls} values" if nuls else "",
        f", {untagged} empty maps without their M type accepted" if untagged else "",
        extra={
            "table": spec.source,
            "items": progress.items,
            "seconds": round(seconds, 3),
            "read_capacity_units": progress.units,
            "rejected": load.rejected,
            "nul_removed": nuls,
            "untagged_empty_maps": untagged,
        },
    )
    return LoadResult(spec.source, total, load.rejected, False, seconds)


def refresh_heartbeat(heartbeat: Callable[[], None] | None, table: str, going_on: str = "the load goes on") -> None:
    """Call ``heartbeat`` (the table's holder and heartbeat in podyn.tables), logging a failure instead of raising:
    a failed heartbeat (PostgreSQL restarting, the lock taken over) must not stop a load that is safe anyway, as
    every page and batch commits by compare-and-set on its unit's position. ``going_on`` ends the warning."""
    if heartbeat is None:
        return
    try:
        heartbeat()
    except PodynError as exc:
        log.warning(
            "table %s: could not refresh the heartbeat (%s); %s",
            table,
            exc,
            going_on,
            extra={"table": table, "error": str(exc)},
        )


class _Either:
    """Stop when the run is asked to stop, or when another segment of this table failed (not other tables), or
    the work beside the load (its stream's capture)."""

    def __init__(self, requested: threading.Event, beside: Beside | None = None) -> None:
        self.requested = requested
        self.failed = threading.Event()
        self.beside = beside

    def is_set(self) -> bool:
        return (
            self.requested.is_set()
            or self.failed.is_set()
            or (self.beside is not None and self.beside.failure() is not None)
        )

    def set(self) -> None:
        self.failed.set()


def _renew(load: _TableLoad) -> None:
    """Renew this process's segment leases; like a heartbeat, a failure does not stop the load (a lost lease is
    noticed by the commit that checks it)."""
    try:
        load.keeper.renew()
        load.share_rate()
    except PodynError as exc:
        log.warning("table %s: could not renew the load's leases (%s); the load goes on", load.keeper.spec.source, exc)


def _load_segments(load: _TableLoad, stop: _Either) -> None:
    """One worker thread: claim a segment, scan it to its end, claim the next, until every segment is done.

    When the segments left are all leased by other processes, it waits: they finish them, or stop renewing their
    leases and this one takes over, after the lease expired, from the segment's last committed page.
    """
    spec = load.schema.spec
    with health.loop(f"load {spec.source} {threading.current_thread().name}", spec.source), logs.about(spec.source):
        _claim_and_load(load, stop)


def _claim_and_load(load: _TableLoad, stop: _Either) -> None:
    spec = load.schema.spec
    waiting = 0
    while not stop.is_set():
        health.beat()
        with load.lock:
            load.claiming += 1
        try:
            claimed, left = _claim_with_reconnect(load)
            if claimed:
                load.keeper.adopt([claimed[0][0]])
        finally:
            with load.lock:
                load.claiming -= 1
        if not claimed:
            with load.lock:  # a segment another thread has just claimed is this process's too
                own = len(load.keeper.leases) + load.claiming
            if left <= own:
                return  # the rest are this process's, in its other threads (one that loses its lease claims again)
            if waiting == 2:  # not just this process's other threads finishing theirs
                log.info("table %s: %d segments left, all held by other processes; waiting", spec.source, left)
            # Soon at first (this process's other threads may just have finished theirs: the count was read before
            # they committed), then up to the poll interval (other processes' segments).
            load.stop.wait(min(load.keeper.timing.poll_seconds, 0.1 * 2**waiting))
            waiting += 1
            continue
        waiting = 0
        lease, record = claimed[0]
        try:
            if record.done:
                continue
            if record.last_key is not None and record.items_loaded:
                log.info("table %s: segment %d continues after its last committed page", spec.source, record.segment)
            _load_segment(load, record, lease, stop)
        except LeaseLost as exc:
            log.warning("table %s: %s", spec.source, exc.message)
        finally:
            _release(load, lease)


def _release(load: _TableLoad, lease: Lease) -> None:
    """Give a segment's lease back (done, failed or stopped) on the worker's connection; if that fails the lease
    just expires."""
    try:
        load.keeper.release([lease], load.connection())
    except PodynError as exc:
        log.warning("table %s: could not give back segment %s (%s)", load.keeper.spec.source, lease.unit_id, exc)


def _claim_with_reconnect(load: _TableLoad) -> tuple[list[tuple[Lease, SegmentRecord]], int]:
    """Claim the next segment on the worker's connection; while PostgreSQL is unreachable, reconnect with
    back-off as a page write does."""
    spec = load.schema.spec
    retrier = Retrier(POSTGRES_RECONNECT, stop=load.stop, deadline=load.options.reconnect_seconds)
    while True:
        conn = None
        try:  # connecting is retried too: PostgreSQL may be restarting
            conn = load.connection() or load.connect()
            load.keep_connection(conn)
            return load.target.claim_segments(spec, load.keeper.worker, 1, load.keeper.timing.lease_seconds, conn)
        except PodynError as exc:
            delay = retrier.next_delay() if exc.transient else None
            if delay is None:
                raise
            log.warning("table %s: %s; reconnecting in %.1f s", spec.source, exc.message, delay)
            if conn is not None:
                conn.close()
            load.keep_connection(None)
            if retrier.wait(delay):
                raise Interrupted("stopped on request while PostgreSQL was unreachable", table=spec.source) from exc


def _load_segment(load: _TableLoad, record: SegmentRecord, lease: Lease, stop: _Either) -> None:
    sizer = PageSizer(
        load.options.scan_rate / max(1, min(load.options.connections, record.total_segments)) / load.keeper.workers
        if load.options.scan_rate > 0
        else None,
        consistent_read=load.options.consistent_read,
    )
    key = record.last_key
    while not stop.is_set():
        health.beat()
        if not load.keeper.held(lease):
            raise LeaseLost(
                f"segment {record.segment}: the lease was lost; leaving the segment to the process that took it",
                table=load.schema.spec.source,
            )
        conn, key = _load_page(load, load.connection(), record.segment, record.total_segments, key, sizer, lease)
        load.keep_connection(conn)
        if key is None:
            return


def _load_page(
    load: _TableLoad,
    conn: Any,
    segment: int,
    total_segments: int,
    key: dict[str, Any] | None,
    sizer: PageSizer,
    lease: Lease,
) -> tuple[Any, dict[str, Any] | None]:
    """Scan one page after ``key`` and commit its rows; returns the connection and the key to go on from.

    A function of its own so that the page, its rows and its rejects are freed before the next page is fetched:
    holding them across the next Scan doubled the load's memory (bench/RESULTS.md).
    """
    source = load.schema.spec.source
    load.limiter.wait()
    page = load.source.read_page(segment, total_segments, key_from_json(key), limit=sizer.limit(), stop=load.stop)
    load.limiter.charge(page.consumed)
    sizer.observe(len(page.items), page.consumed)
    new_key = key_to_json(page.last_key)
    while True:
        schema, rows, rejected = load.rows.convert(page.items)
        try:
            conn = _write_with_reconnect(load, conn, schema, rows, rejected, segment, key, new_key, lease)
            break
        except MappingChanged as exc:  # columns renamed by another worker: same page, new names
            log.info("table %s: %s", source, exc.message)
            load.rows.refresh(schema)
    with load.lock:
        load.rejected += len(rejected)
    load.progress.add(len(page.items), page.consumed)
    metrics.ITEMS_LOADED.labels(source).inc(len(rows))
    metrics.ITEMS_REJECTED.labels(source).inc(len(rejected))
    metrics.CAPACITY_CONSUMED.labels(source).inc(page.consumed)
    metrics.THROTTLES.labels(source).inc(page.throttled)
    metrics.BATCHES.labels(source).inc()
    return conn, new_key


def _write_with_reconnect(
    load: _TableLoad,
    conn: Any,
    schema: TableSchema,
    rows: list[list[Any]],
    rejected: list[Rejected],
    segment: int,
    key: dict[str, Any] | None,
    new_key: dict[str, Any] | None,
    lease: Lease,
) -> Any:
    """Write a page; on a lost connection, reconnect with back-off and write it again (the write is idempotent)."""
    retrier = Retrier(POSTGRES_RECONNECT, stop=load.stop, deadline=load.options.reconnect_seconds)
    while True:
        try:
            if conn is None:
                # Kept at once, not on success only: a reconnect that then meets a lost lease (or renamed columns)
                # left the worker on its closed connection and this one open, never closed.
                conn = load.connect()
                load.keep_connection(conn)
            if not load.target.write_page(conn, schema, rows, rejected, segment, key, new_key, lease):
                log.info(
                    "table %s segment %d: page already applied (by an earlier attempt or another process)",
                    schema.spec.source,
                    segment,
                    extra={"table": schema.spec.source, "segment": segment},
                )
            return conn
        except PodynError as exc:
            lost = isinstance(exc, MappingChanged | LeaseLost)
            delay = None if lost or not exc.transient else retrier.next_delay()
            if delay is None:
                raise
            log.warning(
                "table %s: %s; reconnecting in %.1f s",
                schema.spec.source,
                exc.message,
                delay,
                extra={"table": schema.spec.source, "error": exc.message, "retry_in_seconds": delay},
            )
            metrics.ERRORS.labels(schema.spec.source).inc()
            if conn is not None:
                conn.close()
            conn = None
            if retrier.wait(delay):
                raise Interrupted(
                    "stopped on request while PostgreSQL was unreachable", table=schema.spec.source
                ) from exc
