"""``podyn --verify``: does each PostgreSQL table hold exactly its DynamoDB table, under podyn's own mapping?

DynamoDB is scanned in parallel segments paced by ``--scan-rate``, and each item is compared with its row. The
expected row is what :class:`RowBuilder` makes of the item under the stored mapping and conversion mode, so what
podyn changes on purpose (U+0000 removed) is no difference. Rows are fetched by key, one scan page at a time; the
scanned keys go to a temporary table, and an anti-join at the end finds rows that have no item (not in sampled mode).

Changes may still be flowing (``--changes`` running elsewhere), so a key that looks wrong is read again, the item
with a consistent read (BatchGetItem) and its row, a few times with growing pauses, by a thread of its own so that
the scan goes on meanwhile; only keys still wrong after that are reported.

Read-only, apart from its temporary table; it takes no lock, so it can run beside the service. It reports, it does
not repair: ``--data --reload`` does.

Several processes (``-P``, or the same ``--verify-run`` on several hosts) share a table's run instead: each segment
is a work unit claimed by lease (``units.py``, as a load's segments), its result committed with it under the lease
(``podyn.verify_segments``), its scanned keys kept in ``podyn.verify_keys`` under the lease generation; once every
segment is committed, one process (by lease too) looks for rows without items among the committed generations'
keys. Every process reports the whole run from the committed results, once they are all there (see ``_Shared``).

This module is the orchestration (segments, re-checks, the report) and its rendering. The comparison of an expected
row with a stored one is pure, in :mod:`podyn_py.core.compare`; the SQL is in :mod:`podyn_py.target.verify_sql`
(and :mod:`podyn_py.target.state` for ``podyn.*``).
"""

from __future__ import annotations

import logging
import math
import random
import threading
import time
from collections.abc import Sequence
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from typing import Any

import psycopg
from psycopg import sql

from podyn_py import metrics
from podyn_py.config import Config
from podyn_py.core import targets
from podyn_py.core.compare import Difference, Kind, Tally, add_up, compare, count
from podyn_py.core.keys import key_from_values, key_values
from podyn_py.core.ports import DataClient
from podyn_py.core.positions import Lease
from podyn_py.core.rows import RowBuilder
from podyn_py.core.schema import TableSchema, TableSpec
from podyn_py.core.selection import EVERYTHING, AttributeSelection
from podyn_py.core.values import key_text
from podyn_py.errors import ConfigError, PodynError
from podyn_py.progress import LoadProgress
from podyn_py.source import dynamodb
from podyn_py.source.scan import PageSizer, ReadCapacityLimiter
from podyn_py.target import postgres, state, verify_sql
from podyn_py.units import LeaseTiming, UnitKeeper

log = logging.getLogger(__name__)

Item = dict[str, Any]


@dataclass(frozen=True)
class VerifyOptions:
    #: How many differences per table are listed (all are counted).
    max_differences: int = 20
    #: The fraction of scan segments to scan; below 1, rows that have no item cannot be found.
    sample: float = 1.0
    #: How often a suspect key is read again before it is reported, and the first pause (doubling each time): 0.5,
    #: 1, 2 and 4 s, so a key is re-read 7.5 s after it first looked wrong, longer than an idle stream's polling
    #: back-off (5 s) plus a batch's apply.
    rechecks: int = 4
    recheck_delay: float = 0.5
    #: Suspect keys re-checked per table; beyond, they are counted as first seen, so that a table far off does not
    #: cost a BatchGetItem and several pauses per row.
    recheck_limit: int = 1000
    #: The run to share with the other processes given the same name (``--verify-run``, or the one ``-P`` gives
    #: its children); None: this process verifies each table alone, as one.
    run: str | None = None


@dataclass
class TableReport:
    source: str
    target: str
    items: int = 0
    segments_scanned: int = 0
    total_segments: int = 0
    missing: int = 0
    extra: int = 0
    differing: int = 0
    invalid: int = 0
    missing_columns: list[str] = field(default_factory=list)
    #: The first ``max_differences``, in the order found; ``difference_count`` counts them all.
    differences: list[Difference] = field(default_factory=list)
    difference_count: int = 0
    not_rechecked: int = 0
    error: str | None = None
    interrupted: bool = False
    seconds: float = 0.0
    #: A shared run: its name, the workers that committed its parts, and the parts not compared (interrupted).
    run: str | None = None
    workers: list[str] = field(default_factory=list)
    not_compared: list[str] = field(default_factory=list)

    @property
    def sampled(self) -> bool:
        return self.segments_scanned < self.total_segments

    @property
    def equal(self) -> bool:
        return self.error is None and not self.interrupted and not self.not_compared and self.difference_count == 0


def verify(config: Config, options: VerifyOptions, *, stop: threading.Event | None = None) -> list[TableReport]:
    """Verify the config's tables (default: every table podyn loaded into ``config.pg_schema``)."""
    if config.postgres is None:
        raise ConfigError("--verify needs a PostgreSQL URL (-u)")
    stop = stop or threading.Event()
    client = dynamodb.make_client(config.aws, pool_size=config.connections, data=True)
    # Leases, their renewal and the presence lock of a shared run go through the target, as a load's do.
    target = postgres.PostgresTarget(config.postgres, stop=stop) if options.run else None
    reports = []
    for name, where in _targets(config, config.postgres):
        if isinstance(where, str):  # which of its copies to verify is not known
            log.error("table %s: not verified: %s", name, where)
            reports.append(TableReport(name, "?", error=where))
            continue
        report = TableReport(name, ".".join(where))
        if stop.is_set():
            report.interrupted = True
        else:
            _verify_table(config.for_table(name), options, client, report, where, stop, target)
        reports.append(report)
    return reports


def _targets(config: Config, conninfo: str) -> list[tuple[str, tuple[str, str] | str]]:
    """Each table to verify with the PostgreSQL table it was loaded into (or why that cannot be known): the
    ``-t`` tables where podyn put them (as a write would find them), else every table podyn loaded into
    ``--pg-schema``."""
    with verify_sql.connect(conninfo) as conn:
        metadata = _has_metadata(conn)
        stored = state.recorded_targets(conn) if metadata else []
    if not config.tables:
        if not metadata:
            raise ConfigError("no podyn metadata in this database (schema podyn): nothing was loaded here")
        listed: list[tuple[str, tuple[str, str] | str]] = [
            (s.source, s.where) for s in sorted(stored, key=lambda s: s.source) if s.schema == config.pg_schema
        ]
        if not listed:
            raise ConfigError(f"podyn has loaded no table into schema {config.pg_schema!r}; nothing to verify")
        return listed
    found: list[tuple[str, tuple[str, str] | str]] = []
    for name in config.tables:
        try:
            found.append((name, targets.choose_target(name, config.target_request(name), stored, reading=True)))
        except ConfigError as exc:
            found.append((name, str(exc)))
    return found


def _verify_table(
    config: Config,
    options: VerifyOptions,
    client: DataClient,
    report: TableReport,
    where: tuple[str, str],
    stop: threading.Event,
    target: postgres.PostgresTarget | None = None,
) -> None:
    started = time.monotonic()
    assert config.postgres is not None
    try:
        with verify_sql.connect(config.postgres) as conn:
            view = _read_view(conn, _loaded_spec(conn, where, report.source))
        check = _TableCheck(config, options, client, view, report, stop, config.exclusions.for_table(view.spec))
        try:
            if target is None:
                check.run(config.scan_segments)
            else:
                check.run_shared(_Shared(check, target, config.scan_segments))
        finally:
            check.close()
    except psycopg.Error as exc:
        report.error = str(postgres.classify(exc, "verifying", table=report.source))
    except PodynError as exc:
        report.error = str(exc)
    report.seconds = time.monotonic() - started
    if report.error:
        log.error("table %s: not verified: %s", report.source, report.error)
    else:
        log.info("table %s: %s", report.source, summary(report))


def _loaded_spec(conn: psycopg.Connection[Any], where: tuple[str, str], source: str) -> TableSpec:
    pg_schema, name = where
    record = state.read_table(conn, pg_schema, name) if _has_metadata(conn) else None
    if record is None:
        raise ConfigError(
            f"{pg_schema}.{name} was never loaded by podyn (not in podyn.tables): run podyn --schema --data first",
            table=source,
        )
    if record.load_finished_at is None:
        raise ConfigError(
            f"the load of {pg_schema}.{name} has not finished (state {record.state.value}): verify after the load",
            table=source,
        )
    return record.spec


def _has_metadata(conn: psycopg.Connection[Any]) -> bool:
    """Is there podyn metadata here? An error when it is of another version than this podyn reads."""
    if state.read_schema_version(conn) is None:
        return False
    state.require_current_metadata(conn)
    return True


@dataclass(frozen=True)
class _View:
    """One version of a table's mapping: the builder of expected rows and the query for actual ones."""

    schema: TableSchema
    builder: RowBuilder
    select: sql.Composed
    missing_columns: tuple[str, ...]

    @property
    def spec(self) -> TableSpec:
        return self.schema.spec

    def fetch(self, conn: psycopg.Connection[Any], keys: Sequence[tuple[Any, ...]]) -> dict[tuple[Any, ...], Any]:
        """The rows of these keys (in primary key order), by key."""
        return verify_sql.fetch_rows(conn, self.schema, self.select, keys)


def _read_view(conn: psycopg.Connection[Any], spec: TableSpec) -> _View:
    schema = TableSchema(spec, state.read_columns(conn, spec))
    expired = state.read_expired_column(conn, spec)
    if expired is not None and expired in (postgres.existing_columns(conn, spec) or {}):
        schema = schema.with_expired_column(expired)  # rows marked expired have no item, on purpose
    missing = verify_sql.missing_columns(conn, schema)
    return _View(schema, RowBuilder(schema), verify_sql.rows_by_key_statement(schema, missing), missing)


class _TableCheck:
    """One table's verification, shared by its segment workers."""

    def __init__(
        self,
        config: Config,
        options: VerifyOptions,
        client: DataClient,
        view: _View,
        report: TableReport,
        stop: threading.Event,
        selection: AttributeSelection = EVERYTHING,
    ) -> None:
        assert config.postgres is not None
        self.conninfo = config.postgres
        #: Attributes the copy leaves out on purpose (``--exclude-attributes``): not expected in the rows.
        self.selection = selection
        self.config = config
        self.options = options
        self.client = client
        self.view = view
        self.report = report
        self.stop = stop
        self.failed = threading.Event()
        self.limiter = ReadCapacityLimiter(config.scan_rate)
        self.progress = LoadProgress(report.source, None, bar=config.progress)
        self.lock = threading.Lock()
        self.rechecked = 0
        self.logged_suspects = False
        self.rechecker: _Rechecker | None = None
        self.keys_conn: psycopg.Connection[Any] | None = None
        self.keys_lock = threading.Lock()
        #: A run shared with other processes (``run_shared``); None: this process verifies the table alone.
        self.shared: _Shared | None = None
        for name in view.missing_columns:
            self.record([[Difference(Kind.COLUMN, None, name, found="missing from the table")]])
            report.missing_columns.append(name)

    def close(self) -> None:
        self.progress.close()
        if self.keys_conn is not None:
            self.keys_conn.close()

    def stopped(self) -> bool:
        return self.stop.is_set() or self.failed.is_set()

    def run(self, total: int) -> None:
        count = total if self.options.sample >= 1 else max(1, math.ceil(total * self.options.sample))
        segments = sorted(random.sample(range(total), count))
        self.report.segments_scanned, self.report.total_segments = count, total
        if count == total:
            self._create_keys_table()
        self.rechecker = _Rechecker(self)
        try:
            with ThreadPoolExecutor(min(self.config.connections, count), thread_name_prefix="verify") as pool:
                futures = [pool.submit(self._scan_segment, segment, total) for segment in segments]
                self._wait(futures)
            if self.keys_conn is not None and not self.stopped():
                self._find_extra_rows()
        finally:
            self.rechecker.close(drop=self.stopped())
        self.report.interrupted = self.stop.is_set()

    def _wait(self, futures: list[Any]) -> None:
        """Wait for the workers; on the first one's failure, stop the others and raise it."""
        wait(futures, return_when=FIRST_EXCEPTION)
        errors = [f.exception() for f in futures if f.done() and f.exception() is not None]
        if errors:
            self.failed.set()
            wait(futures)
            raise errors[0]

    def run_shared(self, shared: _Shared) -> None:
        """Verify the table with the other processes of the run: claim its segments one at a time by lease,
        commit each one's result, then (one process, also by lease) look for rows without items; wait for the
        others' parts; report the whole run from the committed results."""
        self.shared = shared
        run = shared.run
        self.report.run = run.name
        self.report.segments_scanned, self.report.total_segments = len(run.segments), run.total_segments
        self.rechecker = _Rechecker(self)
        shared.start()
        try:
            threads = max(1, min(self.config.connections, len(run.segments)))
            with ThreadPoolExecutor(threads, thread_name_prefix="verify") as pool:
                self._wait([pool.submit(self._claim_segments) for _ in range(threads)])
            self._finish_run()
        finally:
            self.rechecker.close(drop=self.stopped())
            shared.end()
        self.report.interrupted = self.stop.is_set()
        shared.report_run(self.report)

    def _claim_segments(self) -> None:
        """One worker thread of a shared run: claim a segment, compare it, claim the next, until every segment of
        the run is committed (by any process): one whose process died is claimed once its lease expired, or at once
        when its presence lock went with it."""
        shared = self.shared
        assert shared is not None
        waiting = 0
        while not self.stopped():
            claimed, left = shared.claim(list(shared.run.segments))
            if claimed is None:
                if not left:
                    return
                if waiting == 2:
                    log.info(
                        "table %s: %d segments left, compared by other processes (or this one's other threads);"
                        " waiting",
                        self.view.spec.source,
                        left,
                    )
                self.stop.wait(min(shared.keeper.timing.poll_seconds, 0.1 * 2**waiting))
                waiting += 1
                continue
            waiting = 0
            unit = _Unit(*claimed)
            if self._scan_segment(unit.segment, shared.run.total_segments, unit):
                self.scanned(unit)

    def _finish_run(self) -> None:
        """Every segment is committed: look for rows without items if no other process does (or did), then wait
        until the whole run is committed."""
        shared = self.shared
        assert shared is not None
        waiting, claimed = 0, False
        while not self.stopped():
            if shared.finished():
                return
            if shared.run.rows_without_items and not claimed:
                taken, _ = shared.claim([state.EXTRA_ROWS])
                if taken is not None:
                    claimed = True
                    self._find_extra_rows_shared(_Unit(*taken))
                    continue
            if waiting == 2:
                log.info("table %s: waiting for the other processes of the run to commit theirs", self.view.spec.source)
            self.stop.wait(min(shared.keeper.timing.poll_seconds, 0.1 * 2**waiting))
            waiting += 1

    def _scan_segment(self, segment: int, total: int, unit: _Unit | None = None) -> bool:
        """Compare a segment's items; whether it was scanned to its end (not stopped, its lease not lost)."""
        rate = self.config.scan_rate / max(1, min(self.config.connections, total)) if self.config.scan_rate else None
        sizer = PageSizer(rate, consistent_read=self.config.consistent_read)
        start: Item | None = None
        counts: Tally | TableReport = self.report if unit is None else unit.tally
        with verify_sql.connect(self.conninfo) as conn:
            while not self.stopped():
                if unit is not None and not self._holds(unit):
                    return False
                self.limiter.wait()
                page = dynamodb.scan_page(
                    self.client,
                    self.view.spec.source,
                    segment=segment,
                    total_segments=total,
                    start_key=start,
                    limit=sizer.limit(),
                    consistent_read=self.config.consistent_read,
                )
                self.limiter.charge(page.consumed)
                sizer.observe(len(page.items), page.consumed)
                metrics.CAPACITY_CONSUMED.labels(self.view.spec.source).inc(page.consumed)
                metrics.THROTTLES.labels(self.view.spec.source).inc(page.throttled)
                self._check_page(conn, page.items, unit)
                self.progress.add(len(page.items), page.consumed)
                with self.lock:
                    counts.items += len(page.items)
                start = page.last_key
                del page  # not held while the next page is fetched
                if start is None:
                    return True
        return False

    def _holds(self, unit: _Unit) -> bool:
        assert self.shared is not None
        if self.shared.keeper.held(unit.lease):
            return True
        log.warning(
            "table %s: %s: the lease was lost; leaving it to the process that took it over",
            self.view.spec.source,
            _part_name(unit.segment),
        )
        return False

    def _check_page(self, conn: psycopg.Connection[Any], items: list[Item], unit: _Unit | None = None) -> None:
        spec = self.view.spec
        keys = [key_values(spec, item) for item in items]
        if self.keys_conn is not None:
            self._save_keys(keys)
        elif unit is not None and self.shared is not None and self.shared.run.rows_without_items:
            state.save_verify_keys(conn, self.shared.run.run_id, unit.segment, unit.lease.generation, keys)
        strip = self.selection.strip
        for attempt in range(2):
            view = self.view
            rows = view.fetch(conn, keys)
            suspects = [
                (item, found)
                for item, key in zip(items, keys, strict=True)
                if (found := compare(view.builder, strip(item), rows.get(key), key_text(item, spec.key_names)))
            ]
            if attempt or not any(d.kind is Kind.UNMAPPED for _, found in suspects for d in found):
                break
            self._refresh(conn)  # podyn may have added columns since the mapping was read
        self._suspect([({k: item[k] for k in spec.key_names}, found) for item, found in suspects], unit)

    def _refresh(self, conn: psycopg.Connection[Any]) -> None:
        view = _read_view(conn, self.view.spec)
        with self.lock:
            self.view = view

    def _suspect(self, suspects: list[tuple[Item, list[Difference]]], unit: _Unit | None = None) -> None:
        """Hand keys that look wrong to the re-checker; beyond the re-check budget, record them as they are."""
        if not suspects:
            return
        counts: Tally | TableReport = self.report if unit is None else unit.tally
        with self.lock:
            budget = max(0, self.options.recheck_limit - self.rechecked) if self.options.rechecks else 0
            self.rechecked += min(budget, len(suspects))
            counts.not_rechecked += max(0, len(suspects) - budget) if self.options.rechecks else 0
            first = not self.logged_suspects
            self.logged_suspects = True
        if self.rechecker is not None and budget:
            log.log(
                logging.INFO if first else logging.DEBUG,
                "table %s: %d keys look different; reading them again (changes may be in flight)",
                self.view.spec.source,
                min(budget, len(suspects)),
            )
            self.rechecker.add(suspects[:budget], unit)
            suspects = suspects[budget:]
        self.record([found for _, found in suspects], unit)

    def recheck(self, conn: psycopg.Connection[Any], keys: list[Item]) -> list[list[Difference]]:
        """Compare these keys again: the item read consistently, the row read again."""
        view = self.view
        pks = [key_values(view.spec, key) for key in keys]
        rows = view.fetch(conn, pks)
        unique = list({pk: key for pk, key in zip(pks, keys, strict=True)}.values())
        items = {
            key_values(view.spec, item): self.selection.strip(item)
            for item in dynamodb.batch_get_items(self.client, view.spec.source, unique)
        }
        return [
            compare(view.builder, items.get(pk), rows.get(pk), key_text(key, view.spec.key_names))
            for key, pk in zip(keys, pks, strict=True)
        ]

    def record(self, confirmed: list[list[Difference]], unit: _Unit | None = None) -> None:
        counts: Tally | TableReport = self.report if unit is None else unit.tally
        with self.lock:
            for found in confirmed:
                count(counts, found, self.options.max_differences)

    def scanned(self, unit: _Unit) -> None:
        """A part is scanned: commit it once its suspect keys are settled too."""
        with self.lock:
            unit.scanned = True
        self.settled(unit, 0)

    def settled(self, unit: _Unit | None, keys: int) -> None:
        """``keys`` suspect keys of ``unit`` were settled (read right, or recorded): commit the unit if it was the
        last of a scanned one. In the thread that settled it, so that no worker waits for the re-checks."""
        if unit is None:
            return
        with self.lock:
            unit.pending -= keys
            ready = unit.scanned and unit.pending == 0 and not unit.committed
            unit.committed = unit.committed or ready
        if ready:
            assert self.shared is not None
            self.shared.commit(unit)

    def _create_keys_table(self) -> None:
        self.keys_conn = verify_sql.connect(self.conninfo)
        verify_sql.create_keys_table(self.keys_conn, self.view.schema)

    def _save_keys(self, keys: list[tuple[Any, ...]]) -> None:
        assert self.keys_conn is not None
        with self.keys_lock:
            verify_sql.save_keys(self.keys_conn, self.view.schema, keys)

    def _find_extra_rows(self) -> None:
        """Rows whose key no scanned item had (see :func:`verify_sql.extra_row_keys`): suspects, read again."""
        assert self.keys_conn is not None
        spec = self.view.spec
        for batch in verify_sql.extra_row_keys(self.keys_conn, self.view.schema):
            keys = [key_from_values(spec, row) for row in batch]
            self._suspect([(k, [Difference(Kind.EXTRA, key_text(k, spec.key_names))]) for k in keys])

    def _find_extra_rows_shared(self, unit: _Unit) -> None:
        """A shared run's rows without items: the keys every committed segment scanned (under the generation of
        its committed lease: not those of a process that lost it) into this process's keys table, then the same
        anti-join as alone."""
        shared = self.shared
        assert shared is not None
        spec = self.view.spec
        types = [c.type.value for c in self.view.schema.primary_key_columns]
        with verify_sql.connect(self.conninfo) as conn:
            verify_sql.create_keys_table(conn, self.view.schema)
            state.copy_verify_keys(conn, shared.run.run_id, verify_sql.KEYS_TABLE, types)
            for batch in verify_sql.extra_row_keys(conn, self.view.schema):
                if self.stopped() or not self._holds(unit):
                    return
                keys = [key_from_values(spec, row) for row in batch]
                self._suspect([(k, [Difference(Kind.EXTRA, key_text(k, spec.key_names))]) for k in keys], unit)
        if not self.stopped() and self._holds(unit):
            self.scanned(unit)


@dataclass
class _Unit:
    """A part of a shared run this process claimed: what it found so far, and the suspect keys still pending."""

    segment: int
    lease: Lease
    tally: Tally = field(default_factory=Tally)
    pending: int = 0
    scanned: bool = False
    committed: bool = False


def _part_name(segment: int) -> str:
    return "rows without items" if segment == state.EXTRA_ROWS else f"segment {segment}"


class _Shared:
    """A table's run shared with other processes: the run they agreed on, this process's leases on its parts
    (renewed on a heartbeat, given back when it stops), and the committed results."""

    def __init__(self, check: _TableCheck, target: postgres.PostgresTarget, total: int) -> None:
        options, spec = check.options, check.view.spec
        assert options.run is not None
        self.check = check
        self.target = target
        self.spec = spec
        self.keeper = UnitKeeper(target, spec, "verify", LeaseTiming(check.config.lease_seconds))
        count = total if options.sample >= 1 else max(1, math.ceil(total * options.sample))
        name, timing = options.run, self.keeper.timing
        self.run = target.run(
            "joining the verify run",
            lambda conn: state.join_verify_run(
                conn,
                spec,
                name,
                total_segments=total,
                segments=sorted(random.sample(range(total), count)),
                sample=options.sample,
                rows_without_items=count == total,
                worker=self.keeper.worker,
                within_seconds=timing.lease_seconds,
            ),
            table=spec.source,
        )
        if self.run.total_segments != total or self.run.sample != options.sample:
            raise ConfigError(
                f"verify run {name!r} of {spec.source} compares {self.run.total_segments} segments"
                f" (sample {self.run.sample:g}); this process was given {total} (sample {options.sample:g}):"
                " give every process of a run the same --segments and --verify-sample, or another --verify-run",
                table=spec.source,
            )
        log.info(
            "table %s: %s verify run %r (%d segments%s)",
            spec.source,
            "started" if self.run.started else f"joined {self.run.started_by}'s",
            name,
            len(self.run.segments),
            f" of {total}" if len(self.run.segments) < total else "",
        )
        self._beats = threading.Event()
        self._beater: threading.Thread | None = None

    def start(self) -> None:
        self.keeper.join()
        self._share_rate()
        self._beater = threading.Thread(target=self._beat, name="verify-heartbeat", daemon=True)
        self._beater.start()

    def end(self) -> None:
        """Stop renewing; give back every lease still held (parts not committed: others take them at once)."""
        self._beats.set()
        if self._beater is not None:
            self._beater.join()
        self.keeper.leave()

    def _share_rate(self) -> None:
        """--scan-rate is for the table as a whole: this process spends its share among the run's processes."""
        if self.check.config.scan_rate > 0:
            self.check.limiter.set_rate(self.check.config.scan_rate / self.keeper.workers)

    def _beat(self) -> None:
        """Renew the leases and the run's heartbeat; a failure does not stop the run (a commit checks its lease)."""
        while not self._beats.wait(self.keeper.timing.heartbeat_seconds):
            try:
                self.keeper.renew()
                self.target.run(
                    "refreshing the verify run",
                    lambda conn: state.beat_verify_run(conn, self.run.run_id),
                    table=self.spec.source,
                )
                self._share_rate()
            except PodynError as exc:
                log.warning("table %s: could not renew the verify run's leases (%s); it goes on", self.spec.source, exc)

    def claim(self, parts: list[int]) -> tuple[tuple[int, Lease] | None, int]:
        """One of ``parts`` not committed yet, claimed; and how many of them are not committed."""
        claimed, left = self.target.run(
            "claiming a verify segment",
            lambda conn: state.claim_verify_part(
                conn, self.spec, self.run, parts, self.keeper.worker, self.keeper.timing.lease_seconds
            ),
            table=self.spec.source,
        )
        if claimed is not None:
            self.keeper.adopt([claimed[1]])
        return claimed, left

    def commit(self, unit: _Unit) -> None:
        committed, finished = self.target.run(
            "committing a verify segment",
            lambda conn: state.commit_verify_part(conn, self.spec, self.run, unit.segment, unit.lease, unit.tally),
            table=self.spec.source,
        )
        self.keeper.release([unit.lease])  # already given back by the commit: only forgotten here
        if not committed:
            log.warning(
                "table %s: %s: the lease was lost before its result was committed; the process that took it over"
                " compares it again",
                self.spec.source,
                _part_name(unit.segment),
            )
        elif finished:
            log.info("table %s: every part of verify run %r is committed", self.spec.source, self.run.name)

    def finished(self) -> bool:
        return self.target.run("reading the verify run", lambda conn: state.read_verify_finished(conn, self.run.run_id))

    def report_run(self, report: TableReport) -> None:
        """Add the committed results of every part of the run to ``report``, in segment order; name the parts that
        are not committed (the run was interrupted)."""
        results = self.target.run(
            "reading the verify run", lambda conn: state.read_verify_results(conn, self.run.run_id)
        )
        workers: set[str] = set()
        for part in self.run.parts:
            if part not in results:
                report.not_compared.append(_part_name(part))
                continue
            worker, tally = results[part]
            workers.add(worker)
            add_up(report, tally, self.check.options.max_differences)
        report.workers = sorted(workers)
        if report.not_compared:
            report.interrupted = True


@dataclass(frozen=True)
class _Suspect:
    key: Item
    found: list[Difference]
    due: float
    attempt: int = 0
    #: The part of a shared run it was found in (None: this process verifies alone).
    unit: _Unit | None = None


class _Rechecker:
    """Reads suspect keys again after growing pauses, in a thread of its own, so that the scan never waits for it.

    A key is settled when it reads right (dropped) or when its re-checks run out (recorded as last seen).
    """

    def __init__(self, check: _TableCheck) -> None:
        self.check = check
        self.pending: list[_Suspect] = []
        self.closing = False
        self.error: BaseException | None = None
        self.cond = threading.Condition()
        self.thread = threading.Thread(target=self._run, name="verify-recheck", daemon=True)
        self.thread.start()

    def add(self, suspects: list[tuple[Item, list[Difference]]], unit: _Unit | None = None) -> None:
        due = time.monotonic() + self.check.options.recheck_delay
        if unit is not None:
            with self.check.lock:
                unit.pending += len(suspects)
        with self.cond:
            self.pending.extend(_Suspect(key, found, due, unit=unit) for key, found in suspects)
            self.cond.notify()

    def close(self, *, drop: bool = False) -> None:
        """Wait until every suspect is settled (``drop``: forget those not yet); raise what the thread raised."""
        with self.cond:
            self.closing = True
            if drop:
                self.pending.clear()
            self.cond.notify()
        self.thread.join()
        if self.error is not None:
            raise self.error

    def _run(self) -> None:
        try:
            with verify_sql.connect(self.check.conninfo) as conn:
                while (due := self._wait_for_due()) is not None:
                    for start in range(0, len(due), 100):
                        self._settle(conn, due[start : start + 100])
        except BaseException as exc:  # raised again by close(); the scan stops meanwhile
            self.error = exc
            self.check.failed.set()

    def _wait_for_due(self) -> list[_Suspect] | None:
        with self.cond:
            while True:
                now = time.monotonic()
                due = [s for s in self.pending if s.due <= now]
                if due:
                    self.pending = [s for s in self.pending if s.due > now]
                    return due
                if self.closing and not self.pending:
                    return None
                self.cond.wait(min(s.due for s in self.pending) - now if self.pending else None)

    def _settle(self, conn: psycopg.Connection[Any], suspects: list[_Suspect]) -> None:
        options = self.check.options
        again: list[_Suspect] = []
        done: dict[int, tuple[_Unit | None, list[list[Difference]], int]] = {}
        for suspect, found in zip(suspects, self.check.recheck(conn, [s.key for s in suspects]), strict=True):
            unit, settled, keys = done.get(id(suspect.unit), (suspect.unit, [], 0))
            attempt = suspect.attempt + 1
            if found and attempt < options.rechecks:
                due = time.monotonic() + options.recheck_delay * 2**attempt
                again.append(_Suspect(suspect.key, found, due, attempt, suspect.unit))
                continue
            done[id(suspect.unit)] = (unit, [*settled, found] if found else settled, keys + 1)
        with self.cond:
            self.pending.extend(again)
        for unit, settled, keys in done.values():
            self.check.record(settled, unit)
            self.check.settled(unit, keys)


def summary(report: TableReport) -> str:
    """One line about a table's result."""
    if report.error:
        return f"not verified: {report.error}"
    scope = (
        f"{report.items:,} items, {report.segments_scanned} of {report.total_segments} segments (sampled)"
        if report.sampled
        else f"{report.items:,} items"
    )
    if report.interrupted:
        return f"interrupted after {scope}: not verified"
    if report.equal:
        return f"equal ({scope}, {report.seconds:.1f} s)"
    counts = [
        f"{n:,} {what}{'' if n == 1 else 's'}"
        for n, what in (
            (report.missing, "missing row"),
            (report.extra, "extra row"),
            (report.differing, "differing row"),
            (report.invalid, "unconvertible item"),
            (len(report.missing_columns), "missing column"),
        )
        if n
    ]
    return f"DIFFERENT: {', '.join(counts)} ({scope}, {report.seconds:.1f} s)"


def render(reports: list[TableReport]) -> str:
    """The human-readable report: a line per table, then its listed differences."""
    lines = []
    for report in reports:
        lines.append(f"{report.source} → {report.target}: {summary(report)}")
        for d in report.differences:
            where = "  ".join(x for x in (d.key, f"column {d.column}" if d.column else None) if x)
            values = (
                f": expected {d.expected}, found {d.found}"
                if d.kind is Kind.VALUE
                else f": {d.expected or d.found}"
                if d.expected or d.found
                else ""
            )
            lines.append(f"  {d.kind.value:<8} {where}{values}")
        if report.difference_count > len(report.differences):
            lines.append(
                f"  … {report.difference_count - len(report.differences):,} more differences (--verify-max-differences)"
            )
        if report.not_rechecked:
            lines.append(f"  ({report.not_rechecked:,} suspect keys beyond the first ones were not re-checked)")
        if report.sampled and not report.error:
            lines.append("  (sampled: rows that have no item in DynamoDB cannot be found in sampled mode)")
        if report.not_compared:
            lines.append(f"  (not compared yet: {', '.join(report.not_compared)})")
        if report.run is not None and report.workers and not report.error:
            count = len(report.workers)
            lines.append(f"  (verify run {report.run!r}: compared by {count} process{'' if count == 1 else 'es'})")
    return "\n".join(lines)


def to_json(reports: list[TableReport]) -> list[dict[str, Any]]:
    return [asdict(r) | {"equal": r.equal, "sampled": r.sampled} for r in reports]
