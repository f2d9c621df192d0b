"""The spool: a table's stream captured while the table loads, then applied to the table once it is loaded.

A stream keeps records for 24 hours and a load can take a week (500 GB at the 100 RCU/s production can spare).
So from the moment a table's load begins, its stream is read beside the load (a ``TableReplicator`` in capture
mode, see ``changes.py``), and what is read is kept in ``podyn.spool``, committed with the shard checkpoints:
for each key only its last change in stream order, the new image or a delete. The spool holds at most one row per
key changed during the load, however long the load and however many times a key changes. Once the table is
loaded, the spool is applied to it, in key order, a batch at a time, each batch in one transaction with the spool
rows it consumes; then replication goes on from the shard checkpoints. A kill -9 anywhere loses and doubles
nothing: each batch into the spool moves its checkpoints by compare-and-set, each batch out of it removes its rows.

TTL deletes (``--ttl-deletes``) are made what the stream path makes them, when they are captured: each batch is
compacted under the policy (``core.changes.compact``), and each entry is composed with the key's entry before it
(``state.spool_changes``) as applying the two in turn would; so the table ends as if the stream path had applied
the same batches after the load, and the TTL counts are those it would have counted. Attributes the table's
selection leaves out are stripped before anything enters the spool.

Why the table ends exact, key by key:

- While the table loads nothing but the scan writes to it: the stream's changes go to the spool. Every change
  since the load's start is either in the spool (its key's last one up to the checkpoints) or after the
  checkpoints, where replication reads it later, in order.
- No batch enters the spool once the table is loaded: its transaction ends by counting it in ``podyn.tables``
  only while the load is unfinished, under the row lock that the commit finishing the load takes first, so the
  two are serialised and whichever commits second sees the other (``state.record_capture``). All of the scan's
  writes and all of the spool are committed before the spool's apply begins.
- No change reaches the table from the stream while its spool still holds changes (``apply_changes`` checks, in
  its transaction): a key's change in a child shard can never be overwritten by an older one from the spool.
- So each key is written in this order: by the scan (its state at some moment after the load began), by the
  spool (its last change up to the checkpoints), by replication (its later changes, in stream order). The last
  write is the key's last change; for a key that did not change since the load began, the scan's, its state.
  Between those writes a key may show an older state than the scan's (the spool's change came before the scan
  read the key): ``catching up`` until replication reaches the present, as with any replay.
- Records older than the load's start (minus ``ChangeOptions.replay_margin_seconds``) are skipped: the scan began
  after them and read their effect or a later one. Keeping them would be correct too, since only a key's last
  change counts, and it is either one of them (then it is what the scan read) or a later one; skipping only
  keeps the spool smaller.

Gaps: the capture goes on from its checkpoints after any restart. If no process captured the table for longer than
the stream keeps records, the reader meets trimmed records and the table stops with StreamGapError, as
replication does; a first capture (no checkpoint yet) of a load that started more than 24 hours ago stops the same
way (``TableReplicator._start``). ``--data`` without ``--changes`` captures too and stops when the load ends: the
spool and the checkpoints wait for a later ``--changes``, which applies the spool first, and which must start
within 24 hours of the capture's last checkpoint.

Not here: reading the stream (``source/streams.py``), the replication loop (``changes.py``), the SQL
(``target/state.py``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from podyn_py import metrics
from podyn_py.conversion import RowConverter
from podyn_py.core.changes import (
    Change,
    Delete,
    Expire,
    Item,
    KeyIdentity,
    SpoolEntry,
    TtlCounts,
    TtlPolicy,
    Upsert,
    compact,
    from_spool_entry,
    key_identity,
    spool_upsert,
    to_change,
    to_spool_entry,
)
from podyn_py.core.keys import key_values
from podyn_py.core.ports import Target
from podyn_py.core.positions import Lease, ShardBatch, ShardPosition
from podyn_py.core.rows import Rejected
from podyn_py.core.schema import TableSchema, TableSpec
from podyn_py.errors import DataError, Interrupted, MappingChanged, PodynError

log = logging.getLogger(__name__)

#: Spool entries applied per transaction once the table is loaded.
APPLY_BATCH = 2000
#: While the table loads and its stream is idle, how often the capture looks whether the load is done.
LOADED_CHECK_SECONDS = 1.0


@dataclass(frozen=True)
class Captured:
    """What one batch into the spool held: records read, changes captured (before each key's last was kept),
    records skipped (older than the load), rejected, the spool's rows after it, and its TTL deletes."""

    records: int
    captured: int
    skipped: int
    rejected: int
    spool_rows: int
    newest: datetime | None
    ttl: TtlCounts = TtlCounts()
    policy: TtlPolicy = TtlPolicy.DELETE


def capture(
    target: Target,
    conn: Any,
    rows: RowConverter,
    stream_arn: str,
    batches: Sequence[ShardBatch],
    *,
    moves: Sequence[tuple[ShardPosition | None, ShardPosition, int]],
    replay_from: datetime | None,
    key_tags: Sequence[str],
    resolve: Callable[[list[Change]], list[Change]],
    ttl: TtlPolicy = TtlPolicy.DELETE,
    leases: Mapping[str, Lease] | None = None,
) -> Captured | None:
    """Keep the batches' changes in the table's spool, with their shards' new checkpoints, in one transaction.

    None, with nothing written, when a checkpoint had moved (another process captured these records). SpoolClosed,
    with nothing written, when the table is no longer loading: the caller applies the spool, then these batches.
    ``resolve`` turns the Refetch of KEYS_ONLY and OLD_IMAGE streams into the item as it is now (or a delete).
    ``leases``: this process's shards, each batch committed only under its shard's lease (as ``apply_changes``).

    As the stream path does with a batch it applies: ``compact`` keeps each key's last change with TTL deletes as
    ``ttl`` says (a kept one an Upsert of its old image, or nothing; a marked one an Expire), the TTL deletes are
    counted, the column for expired rows is added with the first batch that marks one, and the attributes
    ``rows.selection`` leaves out are stripped (from rejected records too): they never reach ``podyn.spool``.
    ``state.spool_changes`` then composes each entry with the key's entry before it, as applying both would.
    """
    spec = rows.schema.spec
    selection = rows.selection
    changes: list[Change] = []
    #: Key → the shard and sequence number of its last record captured.
    where: dict[KeyIdentity, tuple[str, str]] = {}
    bad: list[Rejected] = []
    newest: datetime | None = None
    skipped = captured = records = 0
    ttl_seen = ttl_counted = 0
    for batch in batches:
        for record in batch.records:
            records += 1
            try:
                change = to_change(record, spec.key_names, table=spec.source, key_tags=key_tags)
            except DataError as exc:
                kept_record = selection.strip_record(record)  # excluded attributes never reach PostgreSQL
                bad.append(Rejected(kept_record, str(exc.key or ""), exc.attribute, str(exc)))
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
                if replay_from is not None and created < replay_from:
                    skipped += 1  # its effect is in the scan (see the module's docstring)
                    continue
            ttl_counted += expired
            changes.append(change)
            where[key_identity(change.key)] = (batch.shard_id, str(record["dynamodb"]["SequenceNumber"]))
            captured += 1
    kept = compact(changes, ttl)
    if rows.schema.expired_column is None and any(isinstance(c, Expire) for c in kept):
        rows.add_expired_column()  # with the batch that marks, as the stream path: the tables end alike
    entries = []
    for change in resolve(kept):
        assert isinstance(change, Upsert | Delete | Expire), "resolve leaves no Refetch"
        if selection and isinstance(change, Upsert | Expire) and change.item is not None:
            change = replace(change, item=selection.strip(change.item))
        entries.append(to_spool_entry(change, *where[key_identity(change.key)]))
    counts = TtlCounts.of(ttl_seen, ttl_counted, ttl)
    spool_rows = target.spool_changes(
        conn,
        spec,
        stream_arn,
        entries=entries,
        rejected=bad,
        moves=moves,
        captured=captured,
        captured_until=newest,
        leases=leases,
        ttl=counts or None,
    )
    if spool_rows is None:
        return None
    metrics.CHANGES_CAPTURED.labels(spec.source).inc(captured)
    metrics.ITEMS_REJECTED.labels(spec.source).inc(len(bad))
    metrics.SPOOL_ROWS.labels(spec.source).set(spool_rows)
    metrics.BATCHES.labels(spec.source).inc()
    count_ttl_deletes(spec.source, counts)
    if newest is not None:
        metrics.CAPTURED_UNTIL.labels(spec.source).set(newest.timestamp())
    return Captured(records, captured, skipped, len(bad), spool_rows, newest, counts, ttl)


def count_ttl_deletes(table: str, ttl: TtlCounts) -> None:
    """A committed batch's TTL deletes in the metrics (into the table or into its spool)."""
    if not ttl:
        return
    metrics.TTL_DELETES_SEEN.labels(table).inc(ttl.seen)
    for outcome, count in (("applied", ttl.applied), ("kept", ttl.kept), ("marked", ttl.marked)):
        metrics.TTL_DELETES.labels(table, outcome).inc(count)


def log_captured(spec: TableSpec, captured: Captured) -> None:
    if not captured.records:
        return
    log.info(
        "table %s: captured %d records into the spool (%d changes%s%s%s), spool %d rows, newest written %s",
        spec.source,
        captured.records,
        captured.captured,
        captured.ttl.text(captured.policy),
        f", {captured.skipped} older than the load skipped" if captured.skipped else "",
        f", {captured.rejected} rejected" if captured.rejected else "",
        captured.spool_rows,
        "-" if captured.newest is None else captured.newest.isoformat(timespec="seconds"),
    )


@dataclass
class _SpoolBatch:
    """A batch of spool entries read after key ``after``: its changes sorted out and its upserts converted."""

    after: str | None
    entries: list[SpoolEntry]
    upserts: list[Item]
    delete_keys: list[tuple[Any, ...]]
    expire: list[tuple[tuple[Any, ...], datetime | None]]
    schema: TableSchema
    converted: list[list[Any]]
    rejected: list[Rejected]


def _prepare_batch(rows: RowConverter, after: str | None, entries: list[SpoolEntry]) -> _SpoolBatch:
    spec = rows.schema.spec
    images = [spool_upsert(e) for e in entries]
    upserts = [image for image in images if image is not None]
    others = [from_spool_entry(e) for e, image in zip(entries, images, strict=True) if image is None]
    expiring = [c for c in others if isinstance(c, Expire)]
    if expiring and rows.schema.expired_column is None:
        rows.add_expired_column()  # the capture added it; this process's schema may predate that
    upserts += [c.item for c in expiring if c.item is not None]
    schema, converted, rejected = rows.convert(upserts)
    return _SpoolBatch(
        after,
        entries,
        upserts,
        [key_values(spec, c.key) for c in others if isinstance(c, Delete)],
        [(key_values(spec, c.key), c.created_at) for c in expiring],
        schema,
        converted,
        rejected,
    )


def _write_batch(target: Target, conn: Any, rows: RowConverter, batch: _SpoolBatch) -> int | None:
    """Apply a prepared batch (see Target.apply_spool): the spool rows left, None if another process applied part
    of it first. Columns renamed by another process meanwhile: the same entries again, under the new names."""
    while True:
        try:
            return target.apply_spool(
                conn,
                batch.schema,
                keys=[entry.key for entry in batch.entries],
                rows=batch.converted,
                delete_keys=batch.delete_keys,
                rejected=batch.rejected,
                expire=batch.expire,
            )
        except MappingChanged as exc:
            log.info("table %s: %s", batch.schema.spec.source, exc.message)
            rows.refresh(batch.schema)
            batch.schema, batch.converted, batch.rejected = rows.convert(batch.upserts)


def apply_spool(
    target: Target, conn: Any, rows: RowConverter, stop: threading.Event, *, batch: int = APPLY_BATCH
) -> int:
    """Apply the table's spool to the table, in key order, ``batch`` entries a transaction, each with the spool rows
    it consumes; how many changes were applied. Once the table is loaded, before any later change.

    An entry is applied as the stream path applies a change: an upsert, a delete, or (``--ttl-deletes mark``) an
    Expire, its image (if any) upserted, then its row marked. The policy was applied when the entry was captured
    (``capture``): what is in the spool is what the capturing run's ``--ttl-deletes`` made of each TTL delete.

    Two stages: while one batch is written (a thread of its own, on a connection of its own), the next is read on
    ``conn`` and converted, so that PostgreSQL's work on one overlaps the Python work on the other (each key is in
    the spool once, so batches touch different rows). Several processes may apply one spool at once: an entry
    another one applied first makes its batch roll back, and the spool is read again from that batch on.
    Interrupted when ``stop`` is set before the spool is empty (the batch being written commits; the next run goes
    on).
    """
    spec = rows.schema.spec
    started = time.monotonic()
    upserted = deleted = marked = 0
    after: str | None = None
    writing: tuple[_SpoolBatch, Future[int | None]] | None = None
    writer_conn = None
    try:
        with ThreadPoolExecutor(1, thread_name_prefix="podyn-spool-writer") as writer:
            while True:
                entries = target.read_spool(spec, after, batch, conn)
                if entries and after is None and writing is None and not upserted + deleted + marked:
                    log.info(
                        "table %s: the load is done; applying the changes captured during it (the spool)", spec.source
                    )
                prepared = _prepare_batch(rows, after, entries) if entries else None
                if writing is not None:
                    written, future = writing
                    writing = None
                    left = future.result()
                    if left is None:
                        log.info("table %s: another process applied part of the spool; reading it again", spec.source)
                        after = written.after  # the batch read meanwhile is read again too
                        continue
                    upserted += len(written.converted)
                    deleted += len(written.delete_keys)
                    marked += len(written.expire)
                    _count_batch(spec, written, left)
                if prepared is None:
                    break
                if stop.is_set():  # the batch written before has committed
                    raise Interrupted(
                        "stopped on request while applying the spool; the next run goes on", table=spec.source
                    )
                if writer_conn is None:
                    writer_conn = target.connect()
                writing = (prepared, writer.submit(_write_batch, target, writer_conn, rows, prepared))
                after = entries[-1].key
    finally:
        if writer_conn is not None:
            writer_conn.close()
    applied = upserted + deleted + marked
    if applied:
        seconds = time.monotonic() - started
        log.info(
            "table %s: applied the spool: %d changes (%d upserts, %d deletes%s) in %.1f s (%.0f changes/s)",
            spec.source,
            applied,
            upserted,
            deleted,
            f", {marked} rows marked expired" if marked else "",
            seconds,
            applied / seconds if seconds > 0 else 0.0,
        )
    metrics.SPOOL_ROWS.labels(spec.source).set(0)
    return applied


def _count_batch(spec: TableSpec, batch: _SpoolBatch, left: int) -> None:
    metrics.CHANGES_APPLIED.labels(spec.source, "upsert").inc(len(batch.converted))
    metrics.CHANGES_APPLIED.labels(spec.source, "delete").inc(len(batch.delete_keys))
    if batch.expire:
        metrics.CHANGES_APPLIED.labels(spec.source, "mark").inc(len(batch.expire))
    metrics.ITEMS_REJECTED.labels(spec.source).inc(len(batch.rejected))
    metrics.BATCHES.labels(spec.source).inc()
    metrics.SPOOL_ROWS.labels(spec.source).set(left)
    log.debug("table %s: applied %d spool entries, %d left", spec.source, len(batch.entries), left)


def loading(target: Target, spec: TableSpec) -> bool:
    """Whether the table's load is still unfinished, as committed (by this process or another)."""
    record = target.read_table(spec)
    return record is not None and record.load_started_at is not None and record.load_finished_at is None


class LinkedStop(threading.Event):
    """A stop event set on its own or with ``parent``: one table's work beside its load stops alone (the load
    failed) or with the whole run (SIGTERM)."""

    def __init__(self, parent: threading.Event) -> None:
        super().__init__()
        self.parent = parent

    def is_set(self) -> bool:
        return super().is_set() or self.parent.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self.is_set():
            step = 0.1 if deadline is None else min(0.1, deadline - time.monotonic())
            if step <= 0:
                return False
            super().wait(step)
        return True


class BesideLoad:
    """Work in a thread of its own beside a table's load (``load.Beside``): the capture of the table's stream.

    ``work`` runs from before the load's first page, with its own stop event, and returns the error that stopped
    the table (None: it ended or was stopped). ``after_load``: it goes on once the table is loaded (``--changes``:
    it applies the spool and replicates); else it ends by itself soon after (``--data`` alone), and the load waits
    for it. A load that fails stops it.
    """

    #: How long the end of a load waits for a capture to notice it and commit what it has in hand.
    END_SECONDS = 60.0

    def __init__(
        self,
        table: str,
        work: Callable[[threading.Event], PodynError | None],
        parent_stop: threading.Event,
        *,
        after_load: bool,
        on_start: Callable[[BesideLoad], None] | None = None,
    ) -> None:
        self.table = table
        self.work = work
        self.stop = LinkedStop(parent_stop)
        self.after_load = after_load
        self.on_start = on_start
        self.error: PodynError | None = None
        self.thread = threading.Thread(target=self._run, name=f"changes-{table}", daemon=True)

    def _run(self) -> None:
        try:
            self.error = self.work(self.stop)
        except Exception as exc:  # a bug must stop this table loudly, not vanish with its thread
            log.exception("table %s: unexpected error beside the load", self.table)
            self.error = PodynError(f"unexpected error capturing the stream: {exc!r}", table=self.table)

    @property
    def started(self) -> bool:
        return self.thread.ident is not None

    def start(self) -> None:
        if self.on_start is not None:
            self.on_start(self)
        self.thread.start()

    def failure(self) -> PodynError | None:
        return self.error

    def end(self, loaded: bool) -> None:
        if not self.started:
            return
        if not loaded:
            self.stop.set()
        elif self.after_load:
            return
        self.thread.join(self.END_SECONDS)
        if self.thread.is_alive():
            log.warning("table %s: the capture did not end with the load; stopping it", self.table)
            self.stop.set()
            self.thread.join(self.END_SECONDS)
        if loaded and self.error is not None:
            log.error("table %s: the capture beside the load failed: %s", self.table, self.error)

    def join(self, timeout: float | None = None) -> None:
        if self.started:
            self.thread.join(timeout)

    def is_alive(self) -> bool:
        return self.thread.is_alive()
