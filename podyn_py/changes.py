"""Continuous change replication for one table: stream batches → changes → one transaction with the checkpoints.

Exactly-once effect: each batch's rows and its shards' new checkpoints commit together, and each checkpoint moves
by compare-and-set from the position this process last committed. A crash loses nothing (the next run re-reads
from the checkpoint) and doubles nothing (a batch whose checkpoint already moved is not applied again), even with
two processes on one table.

Where replication starts:
- after a load: from the moment the load started, minus a safety margin (records older than that are skipped,
  their effect is in the scanned data); replaying further back would also be correct, only slower;
- after a load from an export in S3: from the export's time minus its margin (``core.exports``), refused when the
  stream does not reach back that far (enabled later, or more than 24 hours ago);
- on a table never loaded: from the oldest record the stream still holds (TRIM_HORIZON), with a warning;
- after a restart: from each shard's checkpoint.
While the table loads (``ChangeOptions.capture``), what is read goes to the table's spool instead, committed with the
checkpoints; once the table is loaded, the spool is applied, then replication goes on (see ``spool.py``).
A stream re-created since the load, or a load that started longer ago than the stream keeps records, means a gap:
the table stops with StreamGapError, telling the user to reload.

Many processes: each shard is a work unit leased by one process (``units.py``). A process claims its fair share of
the shards that are readable (not finished, parents finished: so each key's changes still apply in order), reads
only those, gives back what is over its share when another process joins, and releases a shard once it finished
it, so that its children can be claimed. Every batch commits only under the leases of its shards.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from podyn_py import health, logs, metrics, spool
from podyn_py.conversion import RowConverter
from podyn_py.core.changes import (
    Change,
    Delete,
    Expire,
    Refetch,
    TtlCounts,
    TtlPolicy,
    Upsert,
    compact,
    key_identity,
    to_change,
)
from podyn_py.core.exports import EXPORT_REPLAY_MARGIN_SECONDS, NO_BRIDGE, stream_gap
from podyn_py.core.keys import key_values
from podyn_py.core.ports import ChangeSource, Hold, ItemClient, StreamsClient, TableClient, Target
from podyn_py.core.positions import Lease, ShardBatch, ShardPosition, UnitKind
from podyn_py.core.rows import Rejected
from podyn_py.core.schema import TableSchema, TableSpec
from podyn_py.core.selection import EVERYTHING, AttributeSelection
from podyn_py.errors import (
    CaptureEnded,
    ConfigError,
    DataError,
    LeaseLost,
    MappingChanged,
    PodynError,
    SpoolClosed,
    SpoolNotEmpty,
    StreamGapError,
    TableHeldElsewhere,
)
from podyn_py.retry import CHANGES_RESTART, Retrier
from podyn_py.source import dynamodb
from podyn_py.source.streams import StreamReader
from podyn_py.target.state import HEARTBEAT_SECONDS, TableState
from podyn_py.units import LeaseTiming, UnitKeeper

log = logging.getLogger(__name__)


def _utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class ChangeOptions:
    #: How long one read waits for records before the loop checks for a stop request.
    max_wait: float = 1.0
    #: A table is "live" once the newest applied record is younger than this (or the stream has nothing new).
    live_lag_seconds: float = 5.0
    #: Replay starts this long before the load started, for clock differences between DynamoDB and PostgreSQL.
    replay_margin_seconds: float = 120.0
    #: After a load from an export: this long before the export's time (see core.exports for why 5 minutes).
    export_replay_margin_seconds: float = EXPORT_REPLAY_MARGIN_SECONDS
    #: DynamoDB Streams keeps records for 24 hours.
    retention_seconds: float = 24 * 3600.0
    #: Longest wait between attempts after a transient failure (PostgreSQL restarting, DynamoDB throttling).
    max_backoff_seconds: float = 30.0
    #: How often the table's holder and heartbeat are written to podyn.tables (--status: is it running now?).
    heartbeat_seconds: float = HEARTBEAT_SECONDS
    #: Leases on shards (shared with the other processes replicating the table).
    leases: LeaseTiming = LeaseTiming()
    #: What becomes of the deletes DynamoDB's TTL makes (``--ttl-deletes``).
    ttl_deletes: TtlPolicy = TtlPolicy.DELETE
    #: A table still loading has its stream captured into its spool (beside its load) instead of being refused;
    #: once it is loaded, the spool is applied and replication goes on from the shard checkpoints (spool.py).
    capture: bool = False
    #: Stop once the table is loaded, leaving the spool to a later --changes (--data without --changes).
    capture_only: bool = False
    #: The wall clock that tells whether a load started longer ago than the stream keeps records (tests simulate it).
    now: Callable[[], datetime] = _utc_now


class _CheckpointMoved(PodynError):
    """A checkpoint was no longer where this process left it: re-read checkpoints and continue from there."""

    transient = True


#: Builds a stream's reader from the committed checkpoints, for the shards this process leases (tests script the
#: stream or drive the reader's clock).
ReaderFactory = Callable[[StreamsClient, str, dict[str, ShardPosition], frozenset[str]], ChangeSource]


def _default_reader(
    client: StreamsClient, stream_arn: str, positions: dict[str, ShardPosition], only: frozenset[str]
) -> ChangeSource:
    return StreamReader(client, stream_arn, positions, only=only)


class _ReadAhead:
    """Reads the next batches in a thread of its own while the current ones are applied.

    Reading (an HTTP call and parsing) and applying (a PostgreSQL transaction) then overlap. Batches come out in
    the reader's order; an error in the reader comes out of :meth:`next` in its turn. After any failure the
    caller closes this and builds a new reader from the committed checkpoints.
    """

    def __init__(self, reader: ChangeSource, max_wait: float, table: str) -> None:
        self.reader = reader
        self.max_wait = max_wait
        self._queue: queue.Queue[tuple[list[ShardBatch], bool, BaseException | None]] = queue.Queue(maxsize=2)
        self._halt = threading.Event()
        self._table = table
        self._thread = threading.Thread(target=self._watched, name=f"read-{table}", daemon=True)
        self._thread.start()

    def _watched(self) -> None:
        with health.loop(f"stream reader {self._table}", self._table), logs.about(self._table):
            self._run()

    def _run(self) -> None:
        try:
            while not self._halt.is_set():
                health.beat()
                batches = self.reader.read(self.max_wait)
                ended = self.reader.ended
                self._put((batches, ended, None))
                if ended and not batches:
                    return
        except BaseException as exc:  # handed to the applying thread, which decides
            self._put(([], False, exc))

    def _put(self, entry: tuple[list[ShardBatch], bool, BaseException | None]) -> None:
        while not self._halt.is_set():
            health.beat()  # waiting for the applying thread: that one is watched on its own
            try:
                self._queue.put(entry, timeout=0.2)
                return
            except queue.Full:
                continue

    def next(self) -> tuple[list[ShardBatch], bool] | None:
        """The next batches (possibly none: the stream had nothing new) and whether the stream ended; None when
        the reader has not answered within about ``max_wait`` (a slow or throttled call is still under way)."""
        try:
            batches, ended, error = self._queue.get(timeout=self.max_wait + 1.0)
        except queue.Empty:
            return None
        if error is not None:
            raise error
        return batches, ended

    def close(self) -> None:
        self._halt.set()
        self._thread.join(timeout=self.max_wait + 5.0)


class TableReplicator:
    """Applies one table's stream to its PostgreSQL table until ``stop`` is set or an error retries cannot fix."""

    def __init__(
        self,
        description: dynamodb.TableDescription,
        schema: TableSchema,
        target: Target,
        client: ItemClient | None,
        streams_client: StreamsClient | None,
        stop: threading.Event,
        options: ChangeOptions | None = None,
        reader_factory: ReaderFactory = _default_reader,
        hold: Hold | None = None,
        table_client: TableClient | None = None,
        worker: str | None = None,
        selection: AttributeSelection = EVERYTHING,
    ) -> None:
        self.description = description
        self.spec: TableSpec = schema.spec
        self.rows = RowConverter(schema, target, selection)
        self.target = target
        self.client = client
        self.streams_client = streams_client
        self.stop = stop
        self.options = options or ChangeOptions()
        self.reader_factory = reader_factory
        #: The table's advisory lock; checked now and then, since a lost connection loses it.
        self.hold = hold
        #: A DynamoDB client for DescribeTable (``client`` may be the fast path's, which has only data calls): after
        #: a stream gap, what the table says of its stream now is added to the error. None: not asked.
        self.table_client = table_client
        self._hold_checked = time.monotonic()
        self.positions: dict[str, ShardPosition] = {}
        self._key_tags = tuple(k.tag for k in self.spec.primary_key)
        self.replay_from: datetime | None = None
        self.state = TableState.CATCHING_UP
        self.applied = 0
        self._last_idle_update = 0.0
        self.keeper = UnitKeeper(target, self.spec, "changes", self.options.leases, worker=worker)
        #: Shard id → this process's lease on it: the shards it reads.
        self.owned: dict[str, Lease] = {}
        #: The latest shard listing (shard id → parent id) any of this process's readers saw.
        self._listed: dict[str, str | None] | None = None
        self._rebalance_due = 0.0
        #: The table loads: batches go to its spool, not to the table (spool.py).
        self.spooling = False
        self._loaded_checked = 0.0
        #: When the stream was first found idle since the last change applied (None: not idle).
        self._idle_since: float | None = None

    # -- the loop -------------------------------------------------------------------------------------------------

    def run(self) -> None:
        self.keeper.join()
        try:
            self._run(self._start())
        finally:
            self.keeper.leave()  # SIGTERM or an error: the shards go back at once, for another process

    def _run(self, stream_arn: str) -> None:
        reader: _ReadAhead | None = None
        conn: Any = None
        retrier = Retrier(replace(CHANGES_RESTART, cap=self.options.max_backoff_seconds), stop=self.stop)
        try:
            while not self.stop.is_set():
                health.beat()
                try:
                    if reader is not None and self._rebalance_now(reader, stream_arn):
                        reader.close()  # another set of shards: a reader for them, from their checkpoints
                        reader = None
                    if reader is None:
                        assert self.streams_client is not None, "reading a stream needs a streams client"
                        self.positions = self.target.read_positions(self.spec, stream_arn)
                        self._rebalance(stream_arn)
                        reader = _ReadAhead(
                            self.reader_factory(
                                self.streams_client, stream_arn, dict(self.positions), frozenset(self.owned)
                            ),
                            self.options.max_wait,
                            self.spec.source,
                        )
                    if conn is None:
                        conn = self.target.connect()
                    self._check_hold(force=False)
                    try:
                        answer = reader.next()
                    except StreamGapError as exc:
                        raise self._with_table_stream(exc, stream_arn) from exc
                    if answer is None:  # no answer from the stream yet (slow or throttled): not idle
                        continue
                    batches, ended = answer
                    if batches:
                        self._apply(conn, stream_arn, batches)
                    elif ended:
                        gap = StreamGapError(
                            f"DescribeStream reports stream {stream_arn} as DISABLED: the stream was disabled, and"
                            " podyn has read every shard to its end; changes made from now on are not recorded in"
                            " it: enable the stream and re-run with --data --reload",
                            table=self.spec.source,
                        )
                        raise self._with_table_stream(gap, stream_arn)
                    else:
                        self._idle()
                    retrier.reset()
                except PodynError as exc:
                    if not exc.transient or isinstance(exc, TableHeldElsewhere):
                        raise
                    metrics.ERRORS.labels(self.spec.source).inc()
                    if isinstance(exc, _CheckpointMoved | LeaseLost):
                        log.warning("table %s: %s", self.spec.source, exc.message, extra={"table": self.spec.source})
                        self._rebalance_due = 0.0  # find out which shards are still this process's
                    else:
                        delay = retrier.advance()
                        log.warning(
                            "table %s: %s; retrying in %.1f s",
                            self.spec.source,
                            exc,
                            delay,
                            extra={"table": self.spec.source, "error": str(exc), "retry_in_seconds": delay},
                        )
                        self._pause(delay)
                    if reader is not None:
                        reader.close()  # its in-memory positions may be ahead of what was committed
                        reader = None
                    if conn is not None:
                        conn.close()
                        conn = None
                    self._hold_checked = 0.0  # check the lock's connection before the next batch
        finally:
            if reader is not None:
                reader.close()
            if conn is not None:
                conn.close()
        log.info(
            "table %s: change replication stopped on request after %d changes",
            self.spec.source,
            self.applied,
            extra={"table": self.spec.source, "changes": self.applied},
        )

    def _with_table_stream(self, gap: StreamGapError, stream_arn: str) -> StreamGapError:
        """The gap's error, plus what DescribeTable says of the table's stream now (when it answers)."""
        observed = self._table_stream_now(stream_arn)
        if observed is None:
            return gap
        return StreamGapError(f"{gap.message}. {observed}", table=gap.table)

    def _table_stream_now(self, stream_arn: str) -> str | None:
        client = self.table_client
        if client is None:
            return None
        name = self.spec.source
        try:
            table = dynamodb.call(lambda: client.describe_table(TableName=name), "describing the table")["Table"]
        except PodynError as exc:
            if "ResourceNotFoundException" in exc.message:
                return "DescribeTable: the table no longer exists"
            log.debug("table %s: DescribeTable after a stream gap failed: %s", name, exc)
            return None
        latest = table.get("LatestStreamArn")
        enabled = bool((table.get("StreamSpecification") or {}).get("StreamEnabled"))
        if latest is None:
            return "DescribeTable: the table has no stream now"
        if latest != stream_arn:
            return (
                f"DescribeTable: the table's current stream is {latest} ({'enabled' if enabled else 'disabled'}),"
                f" not {stream_arn}"
            )
        return f"DescribeTable: the table's stream is still {stream_arn}, {'enabled' if enabled else 'disabled'}"

    # -- shards as leased units ----------------------------------------------------------------------------------

    def _rebalance_now(self, reader: _ReadAhead, stream_arn: str) -> bool:
        """On the lease heartbeat (and as soon as a new listing or a finished shard calls for it): renew the leases,
        then take this process's share of the readable shards. True when the shards it reads changed.

        A shard another process finished has children this process may have to read, but its reader lists the
        shards only every ``relist_seconds``: when the checkpoints show a finished shard without known children,
        it lists them again now, and the listing that brings them in rebalances at once."""
        listed = reader.reader.listed
        new_listing = listed is not None and (self._listed is None or listed.keys() != self._listed.keys())
        if listed is not None:
            self._listed = listed
        if not new_listing and time.monotonic() < self._rebalance_due:
            return False
        before = set(self.owned)
        for lease in self.keeper.renew():
            self.owned.pop(lease.unit_id, None)
        self.positions = self.target.read_positions(self.spec, stream_arn)
        if self._children_unknown():
            reader.reader.relist()
        self._rebalance(stream_arn)
        return set(self.owned) != before

    def _children_unknown(self) -> bool:
        """Whether a listed shard is finished by the checkpoints while the listing holds none of its children."""
        listed = self._listed
        if listed is None:
            return False
        parents = set(listed.values())
        return any(p.finished and shard in listed and shard not in parents for shard, p in self.positions.items())

    def _rebalance(self, stream_arn: str) -> None:
        """Claim this process's fair share of the readable shards; give back finished ones and any over the share.

        Readable: listed, not finished, and its parent finished (or gone before podyn knew it), by the committed
        checkpoints (``self.positions``) of every process. The shares are the same for every process: the live
        workers in the order they joined, the first ``readable % workers`` of them taking one more.
        """
        self._rebalance_due = time.monotonic() + self.options.leases.heartbeat_seconds
        before = bool(self.owned)
        listed = self._listed
        if listed is None:
            return  # no listing yet: the first reader lists the shards, then this runs again at once
        positions = self.positions
        finished = {shard for shard, p in positions.items() if p.finished}
        done = [lease for shard, lease in self.owned.items() if shard in finished or shard not in listed]
        readable = [
            shard
            for shard in sorted(listed)
            if shard not in finished and _parent_done(listed.get(shard), listed, positions)
        ]
        workers = self.keeper.worker_list or [self.keeper.worker]
        index = workers.index(self.keeper.worker) if self.keeper.worker in workers else len(workers) - 1
        share = len(readable) // len(workers) + (1 if index < len(readable) % len(workers) else 0)
        mine = [shard for shard in readable if shard in self.owned]
        over = [self.owned[shard] for shard in mine[share:]]
        if done or over:
            self.keeper.release([*done, *over])
            for lease in (*done, *over):
                self.owned.pop(lease.unit_id, None)
            if over:
                log.info(
                    "table %s: gave back %d shards for other processes to read (fair share %d)",
                    self.spec.source,
                    len(over),
                    share,
                )
        wanted = share - len(mine[:share])
        if wanted > 0:
            free = [shard for shard in readable if shard not in self.owned]
            for lease in self.keeper.claim(UnitKind.SHARD, free, wanted):
                self.owned[lease.unit_id] = lease
                log.info("table %s: reading shard %s (lease %d)", self.spec.source, lease.unit_id, lease.generation)
        metrics.ACTIVE_SHARDS.labels(self.spec.source).set(len(self.owned))
        if not self.owned:
            # Every readable shard is another process's: this one stands by to take over (ready, for the probes).
            health.set_state(self.spec.source, health.STANDING_BY)
        elif not before:
            health.set_state(self.spec.source, self.state.value)

    def _check_hold(self, *, force: bool) -> None:
        """Refresh the heartbeat every ``heartbeat_seconds``, which also checks the lock's connection."""
        if self.hold is None:
            return
        now = time.monotonic()
        if force or now - self._hold_checked >= self.options.heartbeat_seconds:
            self.hold.heartbeat()
            self._hold_checked = now

    def _pause(self, seconds: float) -> None:
        """Wait before a retry, still beating: the process is alive and the table still its own."""
        deadline = time.monotonic() + seconds
        while not self.stop.wait(max(0.0, min(self.options.heartbeat_seconds, deadline - time.monotonic()))):
            health.beat()
            if time.monotonic() >= deadline:
                return
            try:
                self._check_hold(force=False)
            except PodynError as exc:
                if not exc.transient or isinstance(exc, TableHeldElsewhere):
                    raise

    def _start(self) -> str:
        """Check that replication can start without a gap; return the stream ARN; mark the table catching up."""
        spec = self.spec
        stream_arn = self.description.stream_arn
        if stream_arn is None:
            raise ConfigError(
                "the table has no stream: enable DynamoDB Streams on it (NEW_AND_OLD_IMAGES is cheapest for podyn)",
                table=spec.source,
            )
        record = self.target.read_table(spec)
        if record is None:
            raise ConfigError("the table has not been created by podyn: run with --schema", table=spec.source)
        if record.load_started_at is not None and record.load_finished_at is None:
            if not self.options.capture:
                raise ConfigError("the table's load has not finished: run with --data (it resumes)", table=spec.source)
            self.spooling = True  # its changes go to its spool until it is loaded (spool.py)
        elif self.options.capture_only:
            raise CaptureEnded("the table is loaded: nothing to capture beside its load", table=spec.source)
        if record.truncate_before_load:
            # Changes applied onto these rows would go live over a copy of a DynamoDB table that is gone.
            raise ConfigError(
                f"{spec.schema}.{spec.table} still holds rows podyn copied before its state was lost or the DynamoDB"
                " table was created again; they are not known to be current, so no change is applied onto them."
                f" Load the table first (it is emptied, then copied): podyn -t {spec.source} --data",
                table=spec.source,
            )
        positions = self.target.read_positions(spec, stream_arn)
        if record.stream_arn != stream_arn and (record.stream_arn is not None or record.load_started_at is not None):
            raise StreamGapError(
                f"the table's stream changed since podyn started from it (was {record.stream_arn or 'no stream'},"
                f" now {stream_arn}); changes in between cannot be read: re-run with --data --reload",
                table=spec.source,
            )
        if record.load_started_at is None:
            if not positions:
                log.warning(
                    "table %s was never loaded: replicating from the oldest record the stream holds; a stream holds"
                    " only the last 24 hours, run with --data to copy older items",
                    spec.source,
                )
        elif record.export_time is not None:
            if record.bridge_left:
                raise ConfigError(
                    f"the table was loaded from export {record.export_id}, but {record.bridge_left} of the"
                    " incremental exports that bridge it to the stream are not applied yet: run with --data"
                    " --from-export (or --export-to) as before, which finishes the bridge",
                    table=spec.source,
                )
            margin = self.options.export_replay_margin_seconds
            # After a bridge of incremental exports, the stream takes over from the bridge's end (core.exports).
            taken_over = record.bridge_to or record.export_time
            self.replay_from = taken_over - timedelta(seconds=margin)
            gap = stream_gap(
                taken_over,
                stream_arn=stream_arn,
                stream_created_at=self.description.stream_created_at,
                now=datetime.now(UTC),
                margin_seconds=margin,
                retention_seconds=self.options.retention_seconds,
            )
            if not positions and gap is not None:
                raise StreamGapError(
                    f"the table was loaded from export {record.export_id}, and {gap}; re-run with --data --reload"
                    f" from a newer export (or by a Scan). {NO_BRIDGE}",
                    table=spec.source,
                )
        else:
            self.replay_from = record.load_started_at - timedelta(seconds=self.options.replay_margin_seconds)
            age = (self.options.now() - record.load_started_at).total_seconds()
            if not positions and age > self.options.retention_seconds - self.options.replay_margin_seconds:
                raise StreamGapError(
                    f"the load started {age / 3600:.1f} hours ago, longer than the stream keeps records: changes"
                    " made during the load are gone; re-run with --data --reload --changes",
                    table=spec.source,
                )
        if self.spooling:
            log.info("table %s: capturing its stream into the spool while it loads", spec.source)
            return stream_arn
        others = [w for w in self.keeper.worker_list if w != self.keeper.worker]
        if others and record.state == TableState.LIVE and record.stream_arn == stream_arn:
            # Joining processes that keep the table live: it stays live (they read its shards until this one takes
            # a share), rather than this one marking it catching up until one of them says live again.
            log.info("table %s: joining %d other podyn processes replicating it", spec.source, len(others))
            return stream_arn
        self.target.start_catching_up(
            spec,
            stream_arn=stream_arn,
            stream_view_type=self.description.stream_view_type,
            replay_from=self.replay_from,
        )
        self._apply_spool(None)  # what a capture left (--data without --changes) goes before any later change
        return stream_arn

    # -- one batch ------------------------------------------------------------------------------------------------

    def _apply(self, conn: Any, stream_arn: str, batches: Sequence[ShardBatch]) -> None:
        if self.spooling and self._capture(conn, stream_arn, batches):  # the table loads: into its spool
            return
        spec = self.spec
        changes: list[Change] = []
        bad: list[Rejected] = []
        newest: datetime | None = None
        oldest: datetime | None = None
        skipped = 0
        ttl_seen = ttl_counted = 0
        for batch in batches:
            for record in batch.records:
                try:
                    change = to_change(record, spec.key_names, table=spec.source, key_tags=self._key_tags)
                except DataError as exc:
                    kept = self.rows.selection.strip_record(record)  # excluded attributes never reach PostgreSQL
                    bad.append(Rejected(kept, str(exc.key or ""), exc.attribute, str(exc)))
                    log.error(
                        "rejected a stream record, kept in podyn.rejected: %s",
                        exc,
                        extra={"table": spec.source, "key": exc.key, "attribute": exc.attribute},
                    )
                    continue
                expired = isinstance(change, Delete) and change.expired
                ttl_seen += expired
                created = change.created_at
                if created is not None:
                    newest = created if newest is None or created > newest else newest
                    oldest = created if oldest is None or created < oldest else oldest
                    if self.replay_from is not None and created < self.replay_from:
                        skipped += 1  # its effect is already in the loaded data
                        continue
                ttl_counted += expired
                changes.append(change)
        policy = self.options.ttl_deletes
        ttl = TtlCounts.of(ttl_seen, ttl_counted, policy)
        changes = self._resolve(compact(changes, policy))
        upserts = [c.item for c in changes if isinstance(c, Upsert)]
        upserts += [c.item for c in changes if isinstance(c, Expire) and c.item is not None]
        expiring = [c for c in changes if isinstance(c, Expire)]
        if expiring and self.rows.schema.expired_column is None:
            self.rows.add_expired_column()
        lag = max(0.0, (datetime.now(UTC) - newest).total_seconds()) if newest is not None else None
        moves = self._moves(batches)
        while True:
            untagged_before = self.rows.untagged_map_counts.total()
            schema, rows, rejected = self.rows.convert(upserts)
            untagged = self.rows.untagged_map_counts.total() - untagged_before
            delete_keys = [key_values(schema.spec, c.key) for c in changes if isinstance(c, Delete)]
            expire = [(key_values(schema.spec, c.key), c.created_at) for c in expiring]
            try:
                applied = self.target.apply_changes(
                    conn,
                    schema,
                    stream_arn,
                    rows=rows,
                    delete_keys=delete_keys,
                    rejected=rejected + bad,
                    moves=moves,
                    lag_seconds=lag,
                    leases=self.owned,
                    expire=expire,
                    ttl=ttl or None,
                )
                break
            except MappingChanged as exc:  # columns renamed by another process: same batch, new names
                log.info("table %s: %s", spec.source, exc.message)
                self.rows.refresh(schema)
            except SpoolNotEmpty:  # changes captured during the load go first (another process's capture)
                self._apply_spool(conn)
        if not applied:
            raise _CheckpointMoved(
                "a shard checkpoint moved under this process (another podyn applied these records); continuing"
                " from the stored checkpoints",
                table=spec.source,
            )
        for _, new, _ in moves:
            self.positions[new.shard_id] = new
            if new.finished:
                self._rebalance_due = 0.0  # its lease goes back, its children become claimable
        if self._idle_since is not None and oldest is not None:
            self._first_after_idle(oldest)
        self.applied += len(rows) + len(delete_keys) + len(expire)
        records = sum(len(b.records) for b in batches)
        metrics.CHANGES_APPLIED.labels(spec.source, "upsert").inc(len(rows))
        metrics.CHANGES_APPLIED.labels(spec.source, "delete").inc(len(delete_keys))
        if expire:
            metrics.CHANGES_APPLIED.labels(spec.source, "mark").inc(len(expire))
        spool.count_ttl_deletes(spec.source, ttl)
        metrics.ITEMS_REJECTED.labels(spec.source).inc(len(rejected) + len(bad))
        metrics.BATCHES.labels(spec.source).inc()
        if lag is not None:
            metrics.LAG_SECONDS.labels(spec.source).set(lag)
            health.set_lag(spec.source, lag)
        if records or bad:
            log.info(
                "table %s: applied %d records (%d upserts, %d deletes%s%s%s%s), lag %s",
                spec.source,
                records,
                len(rows),
                len(delete_keys),
                ttl.text(policy),
                f", {skipped} older than the load skipped" if skipped else "",
                f", {len(rejected) + len(bad)} rejected" if rejected or bad else "",
                f", {untagged} empty maps without their M type accepted" if untagged else "",
                "n/a" if lag is None else f"{lag:.1f} s",
                extra={
                    "table": spec.source,
                    "records": records,
                    "upserts": len(rows),
                    "deletes": len(delete_keys),
                    "skipped": skipped,
                    "rejected": len(rejected) + len(bad),
                    "untagged_empty_maps": untagged,
                    "lag_seconds": lag,
                },
            )
        if lag is not None and lag < self.options.live_lag_seconds:
            self._become_live(lag)

    def _moves(self, batches: Sequence[ShardBatch]) -> list[tuple[ShardPosition | None, ShardPosition, int]]:
        """Per shard: the checkpoint this process last committed, the new one, and the records in between."""
        last: dict[str, ShardPosition] = {}
        counts: dict[str, int] = {}
        for batch in batches:
            last[batch.shard_id] = batch.position
            counts[batch.shard_id] = counts.get(batch.shard_id, 0) + len(batch.records)
        return [(self.positions.get(shard), position, counts[shard]) for shard, position in last.items()]

    def _resolve(self, changes: list[Change]) -> list[Change]:
        """Replace each Refetch (KEYS_ONLY and OLD_IMAGE streams) by the item as it is now, or a Delete if gone."""
        refetch = [c for c in changes if isinstance(c, Refetch)]
        if not refetch:
            return changes
        assert self.client is not None, "a KEYS_ONLY or OLD_IMAGE stream needs an item client to refetch with"
        items = dynamodb.batch_get_items(self.client, self.spec.source, [c.key for c in refetch])
        current = {key_identity({k: item[k] for k in self.spec.key_names}): item for item in items}
        resolved: list[Change] = []
        for change in changes:
            if isinstance(change, Refetch):
                item = current.get(key_identity(change.key))
                resolved.append(
                    Upsert(change.key, item, change.created_at)
                    if item is not None
                    else Delete(change.key, change.created_at)
                )
            else:
                resolved.append(change)
        return resolved

    # -- states ---------------------------------------------------------------------------------------------------

    def _idle(self) -> None:
        """Nothing new in this process's shards: caught up. Record it now and then, not on every empty poll.

        A process that reads no shard (all of them are other processes') says nothing about the table."""
        if self.spooling:
            if not self._load_done():
                return
            assert self.description.stream_arn is not None
            self._end_capture(None, self.description.stream_arn)
        if not self.owned:
            return
        if self._idle_since is None:
            self._idle_since = time.monotonic()
        metrics.LAG_SECONDS.labels(self.spec.source).set(0.0)
        health.set_lag(self.spec.source, 0.0)
        if self.state is not TableState.LIVE:
            self._become_live(0.0)
            return
        now = time.monotonic()
        if now - self._last_idle_update >= 10.0:
            self._last_idle_update = now
            # Also live again if a process that joined since marked the table catching up.
            self.target.become_live(self.spec, 0.0)

    def _become_live(self, lag: float) -> None:
        if self.state is TableState.LIVE:
            return
        log.info(
            "table %s: live (lag %.1f s): PostgreSQL follows DynamoDB; once writes to DynamoDB stop and the lag"
            " stays at 0, the copy is complete",
            self.spec.source,
            lag,
            extra={"table": self.spec.source, "lag_seconds": lag},
        )
        self.state = TableState.LIVE
        self._last_idle_update = time.monotonic()
        self.target.become_live(self.spec, lag)

    def _first_after_idle(self, written: datetime) -> None:
        """Measure the first change after an idle stream: idle shards are polled ever less often (up to
        ``--idle-poll-max``), so this is the change that waits longest."""
        idle = time.monotonic() - (self._idle_since or time.monotonic())
        self._idle_since = None
        delay = max(0.0, (datetime.now(UTC) - written).total_seconds())
        metrics.FIRST_CHANGE_DELAY.labels(self.spec.source).observe(delay)
        log.debug("table %s: first change after %.1f s idle, committed %.1f s after it was written", self.spec.source,
                  idle, delay)  # fmt: skip

    # -- the spool, while the table loads (spool.py) -------------------------------------------------------------

    def _capture(self, conn: Any, stream_arn: str, batches: Sequence[ShardBatch]) -> bool:
        """Keep the batches in the table's spool with their checkpoints; False once the table is loaded: its spool
        has been applied, and the batches go to the table."""
        moves = self._moves(batches)
        try:
            captured = spool.capture(
                self.target,
                conn,
                self.rows,
                stream_arn,
                batches,
                moves=moves,
                replay_from=self.replay_from,
                key_tags=self._key_tags,
                resolve=self._resolve,
                ttl=self.options.ttl_deletes,
                leases=self.owned,
            )
        except SpoolClosed:
            self._end_capture(conn, stream_arn)
            return False
        if captured is None:
            raise _CheckpointMoved(
                "a shard checkpoint moved under this process (another podyn captured these records); continuing"
                " from the stored checkpoints",
                table=self.spec.source,
            )
        for _, new, _ in moves:
            self.positions[new.shard_id] = new
        metrics.ACTIVE_SHARDS.labels(self.spec.source).set(sum(1 for p in self.positions.values() if not p.finished))
        spool.log_captured(self.spec, captured)
        return True

    def _load_done(self) -> bool:
        """While the stream is idle: whether the table is loaded now (by this process or another), looked up at
        most every ``spool.LOADED_CHECK_SECONDS``."""
        now = time.monotonic()
        if now - self._loaded_checked < spool.LOADED_CHECK_SECONDS:
            return False
        self._loaded_checked = now
        return not spool.loading(self.target, self.spec)

    def _end_capture(self, conn: Any, stream_arn: str) -> None:
        """The table is loaded: apply its spool, then replicate from the checkpoints (or stop, when this capture
        only ran beside the load)."""
        if self.options.capture_only:
            raise CaptureEnded(
                "the table is loaded; its spool and checkpoints wait for --changes", table=self.spec.source
            )
        self.spooling = False
        self.target.start_catching_up(
            self.spec,
            stream_arn=stream_arn,
            stream_view_type=self.description.stream_view_type,
            replay_from=self.replay_from,
        )
        self._apply_spool(conn)

    def _apply_spool(self, conn: Any) -> None:
        """Apply the table's spool, on ``conn`` (None: a connection of its own)."""
        own = conn is None
        if own:
            conn = self.target.connect()
        try:
            self.applied += spool.apply_spool(self.target, conn, self.rows, self.stop)
        finally:
            if own and conn is not None:
                conn.close()


def _parent_done(parent: str | None, listed: dict[str, str | None], positions: dict[str, ShardPosition]) -> bool:
    """Whether a shard's parent no longer holds it back: none, finished by any process, or gone before podyn knew
    it (not listed, no checkpoint: trimmed, like the parents a first run skips)."""
    if parent is None:
        return True
    known = positions.get(parent)
    if known is not None:
        return known.finished
    return parent not in listed
