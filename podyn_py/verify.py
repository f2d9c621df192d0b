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
from podyn_py.core.compare import Difference, Kind, compare
from podyn_py.core.keys import key_from_values, key_values
from podyn_py.core.ports import DataClient
from podyn_py.core.rows import RowBuilder
from podyn_py.core.schema import TableSchema, TableSpec
from podyn_py.core.selection import EVERYTHING, AttributeSelection
from podyn_py.core.values import key_text
from podyn_py.errors import ConfigError, PodynError
from podyn_py.progress import LoadProgress
from podyn_py.source import dynamodb
from podyn_py.source.scan import PageSizer, ReadCapacityLimiter
from podyn_py.target import postgres, state, verify_sql

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

    @property
    def sampled(self) -> bool:
        return self.segments_scanned < self.total_segments

    @property
    def equal(self) -> bool:
        return self.error is None and not self.interrupted and self.difference_count == 0


def verify(config: Config, options: VerifyOptions, *, stop: threading.Event | None = None) -> list[TableReport]:
    """Verify the config's tables (default: every table podyn loaded into ``config.pg_schema``)."""
    if config.postgres is None:
        raise ConfigError("--verify needs a PostgreSQL URL (-u)")
    stop = stop or threading.Event()
    client = dynamodb.make_client(config.aws, pool_size=config.connections, data=True)
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
            _verify_table(config.for_table(name), options, client, report, where, stop)
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
) -> None:
    started = time.monotonic()
    assert config.postgres is not None
    try:
        with verify_sql.connect(config.postgres) as conn:
            view = _read_view(conn, _loaded_spec(conn, where, report.source))
        check = _TableCheck(config, options, client, view, report, stop, config.exclusions.for_table(view.spec))
        try:
            check.run(config.scan_segments)
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
                wait(futures, return_when=FIRST_EXCEPTION)
                errors = [f.exception() for f in futures if f.done() and f.exception() is not None]
                if errors:
                    self.failed.set()
                    wait(futures)
                    raise errors[0]  # type: ignore[misc]
            if self.keys_conn is not None and not self.stopped():
                self._find_extra_rows()
        finally:
            self.rechecker.close(drop=self.stopped())
        self.report.interrupted = self.stop.is_set()

    def _scan_segment(self, segment: int, total: int) -> None:
        rate = self.config.scan_rate / max(1, min(self.config.connections, total)) if self.config.scan_rate else None
        sizer = PageSizer(rate, consistent_read=self.config.consistent_read)
        start: Item | None = None
        with verify_sql.connect(self.conninfo) as conn:
            while not self.stopped():
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
                self._check_page(conn, page.items)
                self.progress.add(len(page.items), page.consumed)
                with self.lock:
                    self.report.items += len(page.items)
                start = page.last_key
                del page  # not held while the next page is fetched
                if start is None:
                    return

    def _check_page(self, conn: psycopg.Connection[Any], items: list[Item]) -> None:
        spec = self.view.spec
        keys = [key_values(spec, item) for item in items]
        if self.keys_conn is not None:
            self._save_keys(keys)
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
        self._suspect([({k: item[k] for k in spec.key_names}, found) for item, found in suspects])

    def _refresh(self, conn: psycopg.Connection[Any]) -> None:
        view = _read_view(conn, self.view.spec)
        with self.lock:
            self.view = view

    def _suspect(self, suspects: list[tuple[Item, list[Difference]]]) -> None:
        """Hand keys that look wrong to the re-checker; beyond the re-check budget, record them as they are."""
        if not suspects:
            return
        with self.lock:
            budget = max(0, self.options.recheck_limit - self.rechecked) if self.options.rechecks else 0
            self.rechecked += min(budget, len(suspects))
            self.report.not_rechecked += max(0, len(suspects) - budget) if self.options.rechecks else 0
            first = not self.logged_suspects
            self.logged_suspects = True
        if self.rechecker is not None and budget:
            log.log(
                logging.INFO if first else logging.DEBUG,
                "table %s: %d keys look different; reading them again (changes may be in flight)",
                self.view.spec.source,
                min(budget, len(suspects)),
            )
            self.rechecker.add(suspects[:budget])
            suspects = suspects[budget:]
        self.record([found for _, found in suspects])

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

    def record(self, confirmed: list[list[Difference]]) -> None:
        report = self.report
        with self.lock:
            for found in confirmed:
                kind = found[0].kind
                if kind is Kind.MISSING:
                    report.missing += 1
                elif kind is Kind.EXTRA:
                    report.extra += 1
                elif kind is Kind.INVALID:
                    report.invalid += 1
                elif kind is not Kind.COLUMN:
                    report.differing += 1
                room = max(0, self.options.max_differences - len(report.differences))
                report.differences.extend(found[:room])
                report.difference_count += len(found)

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


@dataclass(frozen=True)
class _Suspect:
    key: Item
    found: list[Difference]
    due: float
    attempt: int = 0


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

    def add(self, suspects: list[tuple[Item, list[Difference]]]) -> None:
        due = time.monotonic() + self.check.options.recheck_delay
        with self.cond:
            self.pending.extend(_Suspect(key, found, due) for key, found in suspects)
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
        settled, again = [], []
        for suspect, found in zip(suspects, self.check.recheck(conn, [s.key for s in suspects]), strict=True):
            if not found:
                continue
            attempt = suspect.attempt + 1
            if attempt >= options.rechecks:
                settled.append(found)
            else:
                due = time.monotonic() + options.recheck_delay * 2**attempt
                again.append(_Suspect(suspect.key, found, due, attempt))
        self.check.record(settled)
        with self.cond:
            self.pending.extend(again)


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
    return "\n".join(lines)


def to_json(reports: list[TableReport]) -> list[dict[str, Any]]:
    return [asdict(r) | {"equal": r.equal, "sampled": r.sampled} for r in reports]
