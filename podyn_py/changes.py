"""Continuous change replication for one table: stream batches → changes → one transaction with the checkpoints.

Exactly-once effect: each batch's rows and its shards' new checkpoints commit together, and each checkpoint moves
by compare-and-set from the position this process last committed. A crash loses nothing (the next run re-reads
from the checkpoint) and doubles nothing (a batch whose checkpoint already moved is not applied again), even with
two processes on one table.

Where replication starts:
- after a load: from the moment the load started, minus a safety margin (records older than that are skipped,
  their effect is in the scanned data); replaying further back would also be correct, only slower;
- on a table never loaded: from the oldest record the stream still holds (TRIM_HORIZON), with a warning;
- after a restart: from each shard's checkpoint.
While the table loads (``ChangeOptions.capture``), what is read goes to the table's spool instead, committed with the
checkpoints; once the table is loaded, the spool is applied, then replication goes on (see ``spool.py``).
A stream re-created since the load, or a load that started longer ago than the stream keeps records, means a gap:
the table stops with StreamGapError, telling the user to reload.
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

from podyn_py import metrics, spool
from podyn_py.conversion import RowConverter
from podyn_py.core.changes import (
    Change,
    Delete,
    Refetch,
    Upsert,
    compact,
    key_identity,
    to_change,
)
from podyn_py.core.keys import key_values
from podyn_py.core.ports import ChangeSource, Hold, ItemClient, StreamsClient, TableClient, Target
from podyn_py.core.positions import ShardBatch, ShardPosition
from podyn_py.core.rows import Rejected
from podyn_py.core.schema import TableSchema, TableSpec
from podyn_py.errors import (
    CaptureEnded,
    ConfigError,
    DataError,
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
    #: DynamoDB Streams keeps records for 24 hours.
    retention_seconds: float = 24 * 3600.0
    #: Longest wait between attempts after a transient failure (PostgreSQL restarting, DynamoDB throttling).
    max_backoff_seconds: float = 30.0
    #: How often the table's holder and heartbeat are written to podyn.tables (--status: is it running now?).
    heartbeat_seconds: float = HEARTBEAT_SECONDS
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


#: Builds a stream's reader from the committed checkpoints (tests script the stream or drive the reader's clock).
ReaderFactory = Callable[[StreamsClient, str, dict[str, ShardPosition]], ChangeSource]


def _default_reader(client: StreamsClient, stream_arn: str, positions: dict[str, ShardPosition]) -> ChangeSource:
    return StreamReader(client, stream_arn, positions)


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
        self._thread = threading.Thread(target=self._run, name=f"read-{table}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            while not self._halt.is_set():
                batches = self.reader.read(self.max_wait)
                ended = self.reader.ended
                self._put((batches, ended, None))
                if ended and not batches:
                    return
        except BaseException as exc:  # handed to the applying thread, which decides
            self._put(([], False, exc))

    def _put(self, entry: tuple[list[ShardBatch], bool, BaseException | None]) -> None:
        while not self._halt.is_set():
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
    ) -> None:
        self.description = description
        self.spec: TableSpec = schema.spec
        self.rows = RowConverter(schema, target)
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
        #: The table loads: batches go to its spool, not to the table (spool.py).
        self.spooling = False
        self._loaded_checked = 0.0
        #: When the stream was first found idle since the last change applied (None: not idle).
        self._idle_since: float | None = None

    # -- the loop -------------------------------------------------------------------------------------------------

    def run(self) -> None:
        stream_arn = self._start()
        reader: _ReadAhead | None = None
        conn: Any = None
        retrier = Retrier(replace(CHANGES_RESTART, cap=self.options.max_backoff_seconds), stop=self.stop)
        try:
            while not self.stop.is_set():
                try:
                    if reader is None:
                        assert self.streams_client is not None, "reading a stream needs a streams client"
                        self.positions = self.target.read_positions(self.spec, stream_arn)
                        reader = _ReadAhead(
                            self.reader_factory(self.streams_client, stream_arn, dict(self.positions)),
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
                    if isinstance(exc, _CheckpointMoved):
                        log.warning("table %s: %s", self.spec.source, exc.message)
                    else:
                        delay = retrier.advance()
                        log.warning("table %s: %s; retrying in %.1f s", self.spec.source, exc, delay)
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
        log.info("table %s: change replication stopped on request after %d changes", self.spec.source, self.applied)

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
        for batch in batches:
            for record in batch.records:
                try:
                    change = to_change(record, spec.key_names, table=spec.source, key_tags=self._key_tags)
                except DataError as exc:
                    bad.append(Rejected(record, str(exc.key or ""), exc.attribute, str(exc)))
                    log.error("rejected a stream record, kept in podyn.rejected: %s", exc)
                    continue
                created = change.created_at
                if created is not None:
                    newest = created if newest is None or created > newest else newest
                    oldest = created if oldest is None or created < oldest else oldest
                    if self.replay_from is not None and created < self.replay_from:
                        skipped += 1  # its effect is already in the loaded data
                        continue
                changes.append(change)
        changes = self._resolve(compact(changes))
        upserts = [c.item for c in changes if isinstance(c, Upsert)]
        lag = max(0.0, (datetime.now(UTC) - newest).total_seconds()) if newest is not None else None
        moves = self._moves(batches)
        while True:
            untagged_before = self.rows.untagged_map_counts.total()
            schema, rows, rejected = self.rows.convert(upserts)
            untagged = self.rows.untagged_map_counts.total() - untagged_before
            delete_keys = [key_values(schema.spec, c.key) for c in changes if isinstance(c, Delete)]
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
        if self._idle_since is not None and oldest is not None:
            self._first_after_idle(oldest)
        self.applied += len(rows) + len(delete_keys)
        records = sum(len(b.records) for b in batches)
        metrics.CHANGES_APPLIED.labels(spec.source, "upsert").inc(len(rows))
        metrics.CHANGES_APPLIED.labels(spec.source, "delete").inc(len(delete_keys))
        metrics.ITEMS_REJECTED.labels(spec.source).inc(len(rejected) + len(bad))
        metrics.BATCHES.labels(spec.source).inc()
        metrics.ACTIVE_SHARDS.labels(spec.source).set(sum(1 for p in self.positions.values() if not p.finished))
        if lag is not None:
            metrics.LAG_SECONDS.labels(spec.source).set(lag)
        if records or bad:
            log.info(
                "table %s: applied %d records (%d upserts, %d deletes%s%s%s), lag %s",
                spec.source,
                records,
                len(rows),
                len(delete_keys),
                f", {skipped} older than the load skipped" if skipped else "",
                f", {len(rejected) + len(bad)} rejected" if rejected or bad else "",
                f", {untagged} empty maps without their M type accepted" if untagged else "",
                "n/a" if lag is None else f"{lag:.1f} s",
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
        """Nothing new in the stream: the copy is caught up. Record it now and then, not on every empty poll."""
        if self.spooling:
            if not self._load_done():
                return
            assert self.description.stream_arn is not None
            self._end_capture(None, self.description.stream_arn)
        if self._idle_since is None:
            self._idle_since = time.monotonic()
        metrics.LAG_SECONDS.labels(self.spec.source).set(0.0)
        if self.state is not TableState.LIVE:
            self._become_live(0.0)
            return
        now = time.monotonic()
        if now - self._last_idle_update >= 10.0:
            self._last_idle_update = now
            self.target.record_lag(self.spec, 0.0)

    def _become_live(self, lag: float) -> None:
        if self.state is TableState.LIVE:
            return
        log.info(
            "table %s: live (lag %.1f s): PostgreSQL follows DynamoDB; once writes to DynamoDB stop and the lag"
            " stays at 0, the copy is complete",
            self.spec.source,
            lag,
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
                self.spec,
                stream_arn,
                batches,
                moves=moves,
                replay_from=self.replay_from,
                key_tags=self._key_tags,
                resolve=self._resolve,
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
