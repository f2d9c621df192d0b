"""One run of podyn over a set of tables: schema, then data, (then changes), table by table.

A table that fails stops alone: its state becomes ``stopped`` with the error, and the other tables go on. The run's
summary tells the CLI which exit code to give.
"""

from __future__ import annotations

import logging
import sys
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import TextIO

from podyn_py import health, logs
from podyn_py.changes import ChangeOptions, TableReplicator
from podyn_py.config import Config
from podyn_py.core.ports import DataClient, ExportSource, StreamsClient, TableClient, Target
from podyn_py.core.schema import ConversionMode, TableSpec
from podyn_py.core.targets import StoredTarget, choose_target, replaced
from podyn_py.errors import ConfigError, Interrupted, PodynError, TableHeldElsewhere
from podyn_py.export_load import load_from_export
from podyn_py.load import LoadOptions, LoadResult, load_table
from podyn_py.retry import TABLE_RESTART, Retrier
from podyn_py.source import dynamodb, export
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

    Schema and data go table by table; then, with ``changes``, every table replicates its stream in a thread of
    its own until ``stop`` is set (or all of them stopped with errors).
    """
    out = out or sys.stdout
    stop = stop or threading.Event()
    target = make_target(config, out, stop)
    if config.changes:
        target.check_follows_changes()  # the dry run refuses here, before anything is read
    client: TableClient = dynamodb.make_client(config.aws, pool_size=config.connections)
    data: DataClient = dynamodb.make_client(config.aws, pool_size=config.connections, data=True)
    exported = _open_export(config)
    names = list(config.tables) or (_exported_table(exported) if exported else dynamodb.list_tables(client))
    if not names:
        log.warning("no DynamoDB tables found")
    health.expect(names)
    target.check_connection()  # a wrong URL is an error now, not ten minutes of retries per table
    target.ensure_metadata()
    summary = RunSummary()
    ready: list[dynamodb.TableDescription] = []
    for name in names:
        if stop.is_set():
            summary.interrupted = True
            break
        try:
            with logs.about(name):
                ready.append(_prepare_and_load(config, client, data, target, name, summary, stop, exported))
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
            ready.append(_describe(config, client, target, name, summary))
        summary.held_elsewhere.clear()
        _replicate_changes(config, data, target, ready, summary, stop, table_client=client)
    return summary


def _open_export(config: Config) -> ExportSource | None:
    """``--from-export``: the export's manifest read and checked, its files ready to be read; None without it."""
    if config.from_export is None:
        return None
    s3 = export.make_s3_client(config.aws, pool_size=config.connections)
    return export.ExportReader(s3, export.read_manifest(s3, config.from_export))


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
                )
            else:
                result = load_table(
                    description, schema, target, data, options, stop=stop, heartbeat=beat, selection=selection
                )
            summary.loaded.append(result)
    return description


def _replicate_changes(
    config: Config,
    client: DataClient,
    target: Target,
    descriptions: list[dynamodb.TableDescription],
    summary: RunSummary,
    stop: threading.Event,
    *,
    table_client: TableClient | None = None,
) -> None:
    streams_client: StreamsClient = dynamodb.make_client(
        config.aws, "dynamodbstreams", pool_size=len(descriptions), data=True
    )
    threads = [
        threading.Thread(
            target=_follow_table_watched,
            args=(config, client, streams_client, target, description, summary, stop, table_client),
            name=f"changes-{description.spec.source}",
            daemon=True,
        )
        for description in descriptions
    ]
    for thread in threads:
        thread.start()
    while any(t.is_alive() for t in threads):
        for thread in threads:
            thread.join(timeout=0.5)
    if stop.is_set():
        summary.interrupted = True


def _follow_table_watched(
    config: Config,
    client: DataClient,
    streams_client: StreamsClient,
    target: Target,
    description: dynamodb.TableDescription,
    summary: RunSummary,
    stop: threading.Event,
    table_client: TableClient | None = None,
) -> None:
    """:func:`_follow_table`, watched by the health probes, its log records about its table."""
    name = description.spec.source
    with health.loop(f"changes {name}", name), logs.about(name):
        _follow_table(config, client, streams_client, target, description, summary, stop, table_client)


def _follow_table(
    config: Config,
    client: DataClient,
    streams_client: StreamsClient,
    target: Target,
    description: dynamodb.TableDescription,
    summary: RunSummary,
    stop: threading.Event,
    table_client: TableClient | None = None,
) -> None:
    """One table's change replication, standing by while another process holds the table."""
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
                    ChangeOptions(
                        ttl_deletes=config.for_table(name).ttl_deletes, leases=LeaseTiming(config.lease_seconds)
                    ),
                    hold=hold,
                    table_client=table_client,
                    selection=config.exclusions.for_table(description.spec),
                ).run()
            return
        except Interrupted:
            return
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
                return
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
            _fail_table(summary, target, name, PodynError(f"unexpected error: {exc!r}", table=name))
            return


def _fail_table(summary: RunSummary, target: Target, name: str, exc: PodynError) -> None:
    log.error("table %s stopped: %s", name, exc, extra={"table": name, "state": "stopped", "error": str(exc)})
    summary.failed[name] = exc
    health.set_state(name, "stopped", str(exc))  # this process stopped it, whether or not recording it succeeds
    _record_failure(target, summary, name, exc)


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
