"""One run of podyn over a set of tables: schema, then data, (then changes), table by table.

A table that fails stops alone: its state becomes ``stopped`` with the error, and the other tables go on. The run's
summary tells the CLI which exit code to give.
"""

from __future__ import annotations

import logging
import sys
import threading
from dataclasses import dataclass, field, replace
from typing import TextIO

from podyn_py.changes import ChangeOptions, TableReplicator
from podyn_py.config import Config
from podyn_py.core.ports import DataClient, StreamsClient, TableClient, Target
from podyn_py.core.schema import ConversionMode, TableSpec
from podyn_py.errors import Interrupted, PodynError, TableHeldElsewhere
from podyn_py.load import LoadOptions, LoadResult, load_table
from podyn_py.retry import TABLE_RESTART, Retrier
from podyn_py.source import dynamodb
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
    names = list(config.tables) or dynamodb.list_tables(client)
    if not names:
        log.warning("no DynamoDB tables found")
    target.check_connection()  # a wrong URL is an error now, not ten minutes of retries per table
    target.ensure_metadata()
    summary = RunSummary()
    ready: list[dynamodb.TableDescription] = []
    for name in names:
        if stop.is_set():
            summary.interrupted = True
            break
        try:
            ready.append(_prepare_and_load(config, client, data, target, name, summary, stop))
        except Interrupted as exc:
            log.warning("%s", exc)
            summary.interrupted = True
        except TableHeldElsewhere as exc:
            log.warning("%s", exc)
            summary.held_elsewhere.append(name)
        except PodynError as exc:
            _fail_table(summary, target, config, name, exc)
    if config.changes and not stop.is_set():
        for name in summary.held_elsewhere:  # the service stands by for these instead
            ready.append(_describe(config, client, target, name))
        summary.held_elsewhere.clear()
        _replicate_changes(config, data, target, ready, summary, stop, table_client=client)
    return summary


def _describe(config: Config, client: TableClient, target: Target, name: str) -> dynamodb.TableDescription:
    description = dynamodb.describe_table(client, name, pg_schema=config.pg_schema)
    mode, lower_case = _choices(config, target, description.spec)
    return replace(description, spec=replace(description.spec, mode=mode, lower_case=lower_case))


def _prepare_and_load(
    config: Config,
    client: TableClient,
    data: DataClient,
    target: Target,
    name: str,
    summary: RunSummary,
    stop: threading.Event,
) -> dynamodb.TableDescription:
    description = _describe(config, client, target, name)
    with target.hold(description.spec) as hold:
        schema = target.prepare_table(
            description.spec,
            create=config.schema,
            citus=config.citus,
            source=description.source,
            reload=config.reload,
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
            summary.loaded.append(load_table(description, schema, target, data, options, stop=stop, heartbeat=beat))
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
            target=_follow_table,
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
        try:
            with target.hold(description.spec) as hold:
                if standing_by:
                    log.info("table %s: the other process let go; taking over", name)
                    standing_by = False
                schema = target.prepare_table(description.spec, create=False, citus=False, source=description.source)
                TableReplicator(
                    description,
                    schema,
                    target,
                    client,
                    streams_client,
                    stop,
                    ChangeOptions(leases=LeaseTiming(config.lease_seconds)),
                    hold=hold,
                    table_client=table_client,
                ).run()
            return
        except Interrupted:
            return
        except TableHeldElsewhere:
            if not standing_by:
                log.warning("table %s is replicated by another podyn process; standing by to take over", name)
                standing_by = True
            stop.wait(config.standby_seconds)
        except PodynError as exc:
            if not exc.transient:
                _fail_table(summary, target, config, name, exc)
                return
            delay = retrier.advance()
            log.warning("table %s: %s; retrying in %.0f s", name, exc, delay)
            retrier.wait(delay)
        except Exception as exc:  # a bug must stop this table loudly, not the whole service silently
            log.exception("table %s: unexpected error", name)
            _fail_table(summary, target, config, name, PodynError(f"unexpected error: {exc!r}", table=name))
            return


def _fail_table(summary: RunSummary, target: Target, config: Config, name: str, exc: PodynError) -> None:
    log.error("table %s stopped: %s", name, exc)
    summary.failed[name] = exc
    _record_failure(target, config, name, exc)


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


def _record_failure(target: Target, config: Config, name: str, exc: PodynError) -> None:
    try:
        target.record_failure(config.pg_schema, dynamodb.table_name(name), str(exc), source=name)
    except PodynError as second:
        log.warning("could not record the failure of %s in podyn.tables: %s", name, second)
