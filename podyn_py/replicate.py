"""One run of podyn over a set of tables: schema, then data, (then changes), table by table.

Each table's stream is captured from the moment its load begins, in a thread beside the load (see ``spool.py``):
with ``--changes`` that thread goes on to apply the table's spool and replicate it as soon as its load is done,
while the next tables load; with ``--data`` alone it stops with the load, leaving the spool to a later run.

A table that fails stops alone: its state becomes ``stopped`` with the error, and the other tables go on. The run's
summary tells the CLI which exit code to give.
"""

from __future__ import annotations

import functools
import logging
import sys
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, TextIO

from podyn_py import bridge, health, logs
from podyn_py.changes import ChangeOptions, ReaderFactory, TableReplicator
from podyn_py.config import Config
from podyn_py.core.ports import ChangeSource, DataClient, ExportSource, StreamsClient, TableClient, Target
from podyn_py.core.positions import ShardPosition
from podyn_py.core.schema import ConversionMode, TableSchema, TableSpec
from podyn_py.core.targets import StoredTarget, choose_target, replaced
from podyn_py.errors import CaptureEnded, ConfigError, Interrupted, PodynError, StreamGapError, TableHeldElsewhere
from podyn_py.export_load import load_from_export
from podyn_py.export_request import Exporter, obtain_export
from podyn_py.load import LoadOptions, LoadResult, load_table
from podyn_py.retry import TABLE_RESTART, Retrier
from podyn_py.source import dynamodb, export
from podyn_py.source.streams import StreamReader
from podyn_py.spool import BesideLoad
from podyn_py.target.dryrun import DryRunTarget
from podyn_py.target.postgres import PostgresTarget, refuse_other_choices
from podyn_py.units import LeaseTiming

log = logging.getLogger(__name__)


@dataclass
class RunSummary:
    loaded: list[LoadResult] = field(default_factory=list)
    #: Table name → the error that stopped it.
    failed: dict[str, PodynError] = field(default_factory=dict)
    held_elsewhere: list[str] = field(default_factory=list)
    interrupted: bool = False
    #: Table name → the PostgreSQL (schema, table) it goes to, once known.
    targets: dict[str, tuple[str, str]] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.failed and not self.held_elsewhere


def make_target(config: Config, out: TextIO, stop: threading.Event | None = None) -> Target:
    if config.postgres is None:
        return DryRunTarget(out, citus=config.citus)
    return PostgresTarget(config.postgres, stop=stop)


def replicate(config: Config, *, out: TextIO | None = None, stop: threading.Event | None = None) -> RunSummary:
    """Run the steps the config asks for over its tables (every table when none is named).

    Schema and data go table by table, each table's stream captured beside its load; with ``changes``, each table
    then replicates its stream in a thread of its own, from the end of its load (while later tables load) until
    ``stop`` is set (or all of them stopped with errors).
    """
    out = out or sys.stdout
    stop = stop or threading.Event()
    target = make_target(config, out, stop)
    if config.changes:
        target.check_follows_changes()  # the dry run refuses here, before anything is read
    client: TableClient = dynamodb.make_client(config.aws, pool_size=config.connections)
    data: DataClient = dynamodb.make_client(config.aws, pool_size=config.connections, data=True)
    exported = _open_export(config)
    exporter = _exporter(config)
    # What asks for a bridge of incremental exports where a stream cannot take over from an export: the dry run
    # asks DynamoDB for nothing.
    bridger = (exporter or _bridger(config, exported)) if _follows_changes(target) else None
    names = list(config.tables) or (_exported_table(exported) if exported else dynamodb.list_tables(client))
    if not names:
        log.warning("no DynamoDB tables found")
    health.expect(names)
    target.check_connection()  # a wrong URL is an error now, not ten minutes of retries per table
    target.ensure_metadata()
    summary = RunSummary()
    streams = _Streams(config, data, target, summary, stop, client, len(names))
    for name in names:
        if stop.is_set():
            summary.interrupted = True
            break
        try:
            with logs.about(name):
                description = _prepare_and_load(
                    config,
                    client,
                    data,
                    target,
                    name,
                    summary,
                    stop,
                    streams=streams,
                    exported=exported,
                    exporter=exporter,
                    bridger=bridger,
                )
            if config.changes:
                streams.follow(description)  # unless it already does, since its load began
        except Interrupted as exc:
            log.warning("%s", exc)
            summary.interrupted = True
        except TableHeldElsewhere as exc:
            log.warning("%s", exc)
            summary.held_elsewhere.append(name)
            health.set_state(name, health.HELD_ELSEWHERE)
        except PodynError as exc:
            _fail_table(summary, target, name, exc)
    if config.changes and not stop.is_set():
        for name in summary.held_elsewhere:  # the service stands by for these instead
            streams.follow(_describe(config, client, target, name, summary))
        summary.held_elsewhere.clear()
    if config.changes:
        streams.wait()
    return summary


class _Streams:
    """The run's work on streams: a thread per table, started beside its load or once it is prepared."""

    def __init__(
        self,
        config: Config,
        data: DataClient,
        target: Target,
        summary: RunSummary,
        stop: threading.Event,
        table_client: TableClient,
        tables: int,
    ) -> None:
        self.config = config
        self.data = data
        self.target = target
        self.summary = summary
        self.stop = stop
        self.table_client = table_client
        #: Capture beside each load: the target can follow a stream (not the dry run) and it was not turned off.
        self.capture = config.capture and _follows_changes(target)
        self.client: StreamsClient | None = (
            dynamodb.make_client(config.aws, "dynamodbstreams", pool_size=max(1, tables), data=True)
            if self.capture or config.changes
            else None
        )
        self.readers = reader_factory(config.idle_poll_max)
        self.threads: dict[str, BesideLoad] = {}

    def beside_load(self, description: dynamodb.TableDescription, schema: TableSchema) -> BesideLoad | None:
        """What runs beside the table's load: its replication (``--changes``: it captures while the table loads),
        or a capture that ends with the load (``--data`` alone); None when there is nothing to capture."""
        if not self.capture or description.stream_arn is None or self.client is None:
            return None
        if self.config.changes:
            return self._follower(description)
        client = self.client
        return BesideLoad(
            description.spec.source,
            lambda stop: self._capture(description, schema, client, stop),
            self.stop,
            after_load=False,
        )

    def _follower(self, description: dynamodb.TableDescription) -> BesideLoad:
        def started(thread: BesideLoad) -> None:
            self.threads[thread.table] = thread

        work = functools.partial(self._follow, description)
        return BesideLoad(description.spec.source, work, self.stop, after_load=True, on_start=started)

    def follow(self, description: dynamodb.TableDescription) -> None:
        """Replicate the table from now on, in a thread of its own (unless one does already)."""
        if description.spec.source not in self.threads and not self.stop.is_set():
            self._follower(description).start()

    def _follow(self, description: dynamodb.TableDescription, stop: threading.Event) -> PodynError | None:
        """:func:`_follow_table`, watched by the health probes, its log records about its table."""
        assert self.client is not None
        name = description.spec.source
        with health.loop(f"changes {name}", name), logs.about(name):
            return _follow_table(
                self.config,
                self.data,
                self.client,
                self.target,
                description,
                self.summary,
                stop,
                self.table_client,
                readers=self.readers,
            )

    def _capture(
        self, description: dynamodb.TableDescription, schema: TableSchema, client: StreamsClient, stop: threading.Event
    ) -> PodynError | None:
        config = self.config.for_table(description.spec.source)
        options = ChangeOptions(
            capture=True,
            capture_only=True,
            ttl_deletes=config.ttl_deletes,
            leases=LeaseTiming(config.lease_seconds),
        )

        def replicator() -> TableReplicator:
            return TableReplicator(
                description,
                schema,
                self.target,
                self.data,
                client,
                stop,
                options,
                self.readers,
                table_client=self.table_client,
                selection=config.exclusions.for_table(description.spec),
            )

        name = description.spec.source
        with health.loop(f"capture {name}", name), logs.about(name):
            return capture_beside_load(replicator, name, stop)

    def wait(self) -> None:
        """Until every table's replication ended (stopped on request, or each with its error)."""
        while any(t.is_alive() for t in list(self.threads.values())):
            for thread in list(self.threads.values()):
                thread.join(timeout=0.5)
        if self.stop.is_set():
            self.summary.interrupted = True


def capture_beside_load(
    replicator: Callable[[], TableReplicator], table: str, stop: threading.Event
) -> PodynError | None:
    """``--data`` alone: capture the table's stream into its spool until its load is done (``replicator`` makes a
    TableReplicator with ``ChangeOptions(capture_only=True)``, again after a transient failure). The error that
    stopped the capture (the load stops with it); None when it ended with the load or on request.

    A gap (records trimmed before they were captured) does not stop the load: its copy is still worth having, and a
    later ``--changes`` refuses the table with the same gap."""
    retrier = Retrier(TABLE_RESTART, stop=stop)
    while not stop.is_set():
        try:
            replicator().run()
            return None
        except CaptureEnded as exc:
            log.info("table %s: capture beside the load ended: %s", table, exc.message)
            return None
        except Interrupted:
            return None
        except StreamGapError as exc:
            log.error(
                "table %s: %s. The load goes on, but not all changes made during it were captured: --changes will"
                " refuse this table; to replicate it, load it again with --data --reload",
                table,
                exc,
            )
            return None
        except PodynError as exc:
            if not exc.transient:
                return exc
            delay = retrier.advance()
            log.warning("table %s: capturing the stream: %s; retrying in %.0f s", table, exc, delay)
            retrier.wait(delay)
    return None


def _follows_changes(target: Target) -> bool:
    try:
        target.check_follows_changes()
    except ConfigError:
        return False
    return True


def reader_factory(idle_poll_max: float, **options: Any) -> ReaderFactory:
    """Stream readers whose idle shards are polled at most every ``idle_poll_max`` seconds (--idle-poll-max);
    ``options`` go to each :class:`StreamReader` too (tests give it a clock)."""

    def reader(
        client: StreamsClient, stream_arn: str, positions: dict[str, ShardPosition], only: frozenset[str]
    ) -> ChangeSource:
        return StreamReader(client, stream_arn, positions, idle_max=idle_poll_max, only=only, **options)

    return reader


def _open_export(config: Config) -> ExportSource | None:
    """``--from-export``: the export's manifest read and checked, its files ready to be read; None without it."""
    if config.from_export is None:
        return None
    s3 = export.make_s3_client(config.aws, pool_size=config.connections)
    return export.ExportReader(s3, export.read_manifest(s3, config.from_export))


def _exporter(config: Config) -> Exporter | None:
    """``--export-to``: the clients that ask DynamoDB for each table's export and read it; None without it."""
    if config.export_to is None:
        return None
    return Exporter(
        dynamodb.make_client(config.aws, pool_size=1),
        export.make_s3_client(config.aws, pool_size=config.connections),
        config.export_to,
        config.export_poll_seconds,
    )


def _bridger(config: Config, exported: ExportSource | None) -> Exporter | None:
    """``--from-export``: the clients that ask for a bridge's incremental exports, written beside the export."""
    if exported is None:
        return None
    return Exporter(
        dynamodb.make_client(config.aws, pool_size=1),
        export.make_s3_client(config.aws, pool_size=config.connections),
        bridge.destination_of(exported.manifest.url),
        config.export_poll_seconds,
    )


def _exported_table(exported: ExportSource) -> list[str]:
    name = exported.manifest.table_name
    if name is None:
        raise ConfigError(f"export {exported.manifest.export_id} does not say which table it is of: give -t TABLE")
    return [name]


def _describe(
    config: Config,
    client: TableClient,
    target: Target,
    name: str,
    summary: RunSummary,
    stored: Sequence[StoredTarget] | None = None,
) -> dynamodb.TableDescription:
    config = config.for_table(name)
    # Where the table goes is settled before DynamoDB is asked, so that a failure there is recorded in its place.
    stored = target.stored_targets() if stored is None else stored
    schema, table = summary.targets[name] = choose_target(name, config.target_request(name), stored)
    description = dynamodb.describe_table(client, name, pg_schema=schema)
    spec = replace(description.spec, table=table)
    mode, lower_case = _choices(config, target, spec)
    return replace(description, spec=replace(spec, mode=mode, lower_case=lower_case))


def _prepare_and_load(
    config: Config,
    client: TableClient,
    data: DataClient,
    target: Target,
    name: str,
    summary: RunSummary,
    stop: threading.Event,
    exported: ExportSource | None = None,
    streams: _Streams | None = None,
    exporter: Exporter | None = None,
    bridger: Exporter | None = None,
) -> dynamodb.TableDescription:
    stored = target.stored_targets()
    description = _describe(config, client, target, name, summary, stored)
    config = config.for_table(name)  # its mode and lower case are in the description already; its scan here
    selection = config.exclusions.for_table(description.spec)  # a key attribute excluded: refused before anything
    with target.hold(description.spec) as hold:
        schema = target.prepare_table(
            description.spec,
            create=config.schema,
            citus=config.citus,
            source=description.source,
            reload=config.reload,
            replaces=replaced(name, summary.targets[name], config.target_request(name), stored),
        )
        if hold is not None:
            hold.heartbeat()  # a table podyn has just recorded could not say who holds it before
        if config.data:
            options = LoadOptions(
                segments=config.scan_segments,
                connections=config.connections,
                scan_rate=config.scan_rate,
                consistent_read=config.consistent_read,
                reload=config.reload,
                progress_bar=config.progress,
                leases=LeaseTiming(config.lease_seconds),
                run_started=config.run_started,
            )
            beat = hold.heartbeat if hold is not None else None
            if exporter is not None:
                exported = obtain_export(
                    description,
                    target,
                    exporter,
                    reload=config.reload,
                    changes_follow=config.changes,
                    stop=stop,
                    heartbeat=beat,
                )
                if exported is None:
                    if bridger is not None and bridge.pending(target, description.spec):
                        bridge.build(
                            description, schema, target, bridger, stop=stop, heartbeat=beat, selection=selection
                        )
                    log.info("table %s: already loaded; skipping (use --reload to load it again)", name)
                    summary.loaded.append(LoadResult(name, 0, 0, True, 0.0))
                    return description
            if exported is not None:
                result = load_from_export(
                    description,
                    schema,
                    target,
                    exported,
                    options,
                    changes_follow=config.changes,
                    stop=stop,
                    heartbeat=beat,
                    exporter=bridger,
                    selection=selection,
                )
            else:
                beside = streams.beside_load(description, schema) if streams is not None else None
                result = load_table(
                    description,
                    schema,
                    target,
                    data,
                    options,
                    stop=stop,
                    heartbeat=beat,
                    selection=selection,
                    beside=beside,
                )
            summary.loaded.append(result)
    return description


def _follow_table(
    config: Config,
    client: DataClient,
    streams_client: StreamsClient,
    target: Target,
    description: dynamodb.TableDescription,
    summary: RunSummary,
    stop: threading.Event,
    table_client: TableClient | None = None,
    *,
    readers: ReaderFactory | None = None,
) -> PodynError | None:
    """One table's change replication, standing by while another process holds the table; the error that stopped
    it (None: stopped on request). A table still loading is captured into its spool until it is loaded, when this
    run loads it too (``--data``)."""
    table_config = config.for_table(description.spec.source)
    options = ChangeOptions(
        capture=config.data, ttl_deletes=table_config.ttl_deletes, leases=LeaseTiming(config.lease_seconds)
    )
    name = description.spec.source
    standing_by = False
    retrier = Retrier(TABLE_RESTART, stop=stop)
    while not stop.is_set():
        health.beat()
        try:
            with target.hold(description.spec) as hold:
                if standing_by:
                    log.info("table %s: the other process let go; taking over", name, extra={"table": name})
                    health.set_state(name, health.STARTING)  # until replication shows its state
                    standing_by = False
                schema = target.prepare_table(description.spec, create=False, citus=False, source=description.source)
                TableReplicator(
                    description,
                    schema,
                    target,
                    client,
                    streams_client,
                    stop,
                    options,
                    readers or reader_factory(config.idle_poll_max),
                    hold=hold,
                    table_client=table_client,
                    selection=config.exclusions.for_table(description.spec),
                ).run()
            return None
        except Interrupted:
            return None
        except TableHeldElsewhere:
            if not standing_by:
                log.warning(
                    "table %s is replicated by another podyn process; standing by to take over",
                    name,
                    extra={"table": name, "state": health.STANDING_BY},
                )
                standing_by = True
            health.set_state(name, health.STANDING_BY)
            stop.wait(config.standby_seconds)
        except PodynError as exc:
            if not exc.transient:
                _fail_table(summary, target, name, exc)
                return exc
            delay = retrier.advance()
            log.warning(
                "table %s: %s; retrying in %.0f s",
                name,
                exc,
                delay,
                extra={"table": name, "error": str(exc), "retry_in_seconds": delay},
            )
            retrier.wait(delay)
        except Exception as exc:  # a bug must stop this table loudly, not the whole service silently
            log.exception("table %s: unexpected error", name)
            error = PodynError(f"unexpected error: {exc!r}", table=name)
            _fail_table(summary, target, name, error)
            return error
    return None


def _fail_table(summary: RunSummary, target: Target, name: str, exc: PodynError) -> None:
    if summary.failed.get(name) is not exc:  # else said already, by its replication, which stopped its load too
        log.error("table %s stopped: %s", name, exc, extra={"table": name, "state": "stopped", "error": str(exc)})
        summary.failed[name] = exc
    health.set_state(name, "stopped", str(exc))  # this process stopped it, whether or not recording it succeeds
    _record_failure(target, summary, name, exc)  # again then: the load's last commit may have marked it loaded


def _choices(config: Config, target: Target, spec: TableSpec) -> tuple[ConversionMode, bool]:
    """The conversion mode and lowercasing: as stored for a table podyn already made, else the flags' or defaults."""
    stored = target.stored_choices(spec.schema, spec.table)
    if stored is None:
        return config.mode or ConversionMode.COLUMNS, bool(config.lower_case)
    mode, lower_case = stored.mode, stored.lower_case
    wanted = replace(
        spec, mode=config.mode or mode, lower_case=lower_case if config.lower_case is None else config.lower_case
    )
    if not stored.binding or (config.reload and config.data):
        return wanted.mode, wanted.lower_case  # the table is made again with these choices (see prepare_table)
    refuse_other_choices(replace(spec, mode=mode, lower_case=lower_case), wanted)
    return mode, lower_case


def _record_failure(target: Target, summary: RunSummary, name: str, exc: PodynError) -> None:
    if name not in summary.targets:
        return  # refused before podyn knew where the table goes (a changed mapping): nothing of it to mark
    schema, table = summary.targets[name]
    try:
        target.record_failure(schema, table, str(exc), source=name)
    except PodynError as second:
        log.warning("could not record the failure of %s in podyn.tables: %s", name, second)
