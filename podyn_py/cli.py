"""The ``podyn`` command: options → a frozen Config → the library; errors → one clear line and an exit code.

Exit codes: 0 done (or stopped on request, resumable); 1 error before any table was replicated (settings,
connections); 2 wrong usage; 3 one or more tables stopped with an error or were held by another process.
``--verify``: 0 every table equal; 4 differences found; 3 a table could not be verified (never loaded, an error,
interrupted), which wins over 4. ``--status``: 0, or 3 when a table is stopped, unknown to podyn, or
``catching up``/``live`` with no process replicating it now (shown as ``not running`` or ``stalled``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import sys
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from types import FrameType
from typing import Any

import click
import psycopg
from click.core import ParameterSource
from psycopg.conninfo import conninfo_to_dict

from podyn_py import collector, config_file, health, logs, metrics
from podyn_py.config import AwsSettings, Config, TableSettings, parse_postgres_url, redact, redact_text
from podyn_py.config_file import FileSettings
from podyn_py.core import targets
from podyn_py.core.changes import TtlPolicy
from podyn_py.core.exports import split_destination
from podyn_py.core.schema import ConversionMode
from podyn_py.core.selection import Exclusions
from podyn_py.errors import ConfigError, PodynError
from podyn_py.processes import PROCESS_INDEX_ENV, RUN_NAME_ENV, RUN_STARTED_ENV, run_processes
from podyn_py.target.dryrun import CANNOT_EXPORT
from podyn_py.verify import VerifyOptions

log = logging.getLogger("podyn_py")

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_TABLES_FAILED = 3
EXIT_DIFFERENCES = 4

EPILOG = """\b
Examples:
  # print the SQL podyn would run (no PostgreSQL URL: dry run)
  podyn --schema --data --endpoint-url http://127.0.0.1:8000
\b
  # create the tables and copy every item, 8 connections, at most 500 RCU/s per table
  podyn -u postgresql://app@db/app --schema --data -n 8 -r 500
\b
  # podyn's JDBC form, two tables, jsonb mode, lowercase column names
  podyn -u 'jdbc:postgresql://db:5432/app?user=app&password=secret' -t Orders,Users -s -d -m jsonb -lc
\b
  # Orders into table orders, UserProfiles into app.user_profiles; later runs follow this mapping
  podyn -u postgresql://app@db/app -t Orders:orders,UserProfiles:app.user_profiles -s -d
\b
  # a service's tables and their settings in a file (see the README's "Running many tables")
  podyn -u postgresql://app@db/app --config podyn.toml --schema --data --changes
\b
  # load a table from an export to S3 (no read capacity), then follow its stream from the export's time
  podyn -u postgresql://app@db/app -t Orders -s -d -c --from-export s3://bucket/exports/AWSDynamoDB/01700000000000-abcd1234/
\b
  # ask DynamoDB for that export (point-in-time recovery on), wait for it, load it, then follow the stream
  podyn -u postgresql://app@db/app -t Orders -s -d -c --export-to s3://bucket/exports
\b
  # compare every item with its row (exit 4 on differences); a quick look at a quarter of the segments
  podyn -u postgresql://app@db/app --verify
  podyn -u postgresql://app@db/app --verify --verify-sample 0.25 --segments 16
\b
  # where each table stands, from the podyn schema alone (also while the service runs elsewhere)
  podyn -u postgresql://app@db/app --status [--json]
\b
  # keep the rows of items DynamoDB's TTL expires, marked; leave a secret out of the copy
  podyn -u postgresql://app@db/app --changes --ttl-deletes mark --exclude-attributes Users.password_hash
\b
  # serve Prometheus metrics (and the probes /healthz, /readyz) while the changes are replicated; JSON logs
  podyn -u postgresql://app@db/app --changes --metrics-port 9464 --log-format json
\b
Exit codes: 0 done or stopped on request; 1 error before any table ran; 2 usage; 3 a table stopped with an error
(--verify: could not be verified; --status: is stopped, unknown, or not running/stalled); 4 --verify found
differences.
"""


@click.command(epilog=EPILOG, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.option(
    "-t",
    "--table",
    "tables",
    help="DynamoDB tables, comma-separated, each as TABLE or TABLE:[SCHEMA.]PG_TABLE to name its PostgreSQL table"
    " (default: the config file's tables, else every table; --verify, --status: every table podyn recorded).",
)
@click.option(
    "--config",
    "config_file",
    type=click.Path(exists=True, dir_okay=False),
    is_eager=True,
    callback=lambda ctx, param, path: _read_config_file(ctx, path),
    help="A TOML file of defaults and [tables.NAME] sections (see the README); flags win over it.",
)
@click.option(
    "-u",
    "--postgres-jdbc-url",
    "--postgres-url",
    "postgres_url",
    envvar="PODYN_POSTGRES_URL",
    help="PostgreSQL to write to: jdbc:postgresql://..., postgresql://... or a libpq DSN "
    "(env PODYN_POSTGRES_URL). Without it: dry run, printing the SQL.",
)
@click.option("-s", "--schema", is_flag=True, help="Create the PostgreSQL tables (reuse compatible existing ones).")
@click.option("-d", "--data", is_flag=True, help="Copy the existing items (parallel scan, resumable).")
@click.option(
    "--from-export",
    metavar="S3_URL",
    help="--data: load the table from this DynamoDB export in S3 (s3://BUCKET/PREFIX/AWSDynamoDB/EXPORT_ID/) instead of"
    " a Scan: no read capacity used; --changes then replays the stream from the export's time.",
)
@click.option(
    "--export-to",
    metavar="S3_URL",
    help="--data: ask DynamoDB for an export of each table to s3://BUCKET/PREFIX (point-in-time recovery must be on),"
    " wait for it, and load it as --from-export does: no read capacity used; a restart waits for the same export.",
)
@click.option(
    "--export-poll",
    type=click.FloatRange(0.05, 120.0),
    default=20.0,
    show_default=True,
    metavar="SECONDS",
    help="--export-to: seconds between DescribeExport calls while DynamoDB makes the export.",
)
@click.option("-c", "--changes", is_flag=True, help="Replicate changes continuously from DynamoDB Streams.")
@click.option(
    "--ttl-deletes",
    type=click.Choice([p.value for p in TtlPolicy]),
    default=TtlPolicy.DELETE.value,
    show_default=True,
    help="--changes: deletes made by DynamoDB's TTL: delete the row (mirror DynamoDB), keep it, or keep it and mark"
    " it (column podyn_expired_at).",
)
@click.option("-x", "--citus", is_flag=True, help="Distribute tables with Citus create_distributed_table().")
@click.option(
    "-m",
    "--conversion-mode",
    type=click.Choice([m.value for m in ConversionMode]),
    help="columns: a column per attribute (default); jsonb: key columns plus the whole item in 'data'.",
)
@click.option(
    "-lc",
    "--lower-case-column-names",
    "lower_case",
    is_flag=True,
    default=None,
    help="Lowercase column names.",
)
@click.option(
    "--exclude-attributes",
    metavar="PATTERNS",
    help="Attributes kept out of PostgreSQL, comma-separated Table.attribute with * in either part"
    " (e.g. Users.password_hash,*.blob_*); never a key attribute.",
)
@click.option(
    "--keep-replication-attributes",
    is_flag=True,
    help="Copy the aws:rep:* attributes of legacy global tables (2017.11.29), left out by default.",
)
@click.option(
    "-n",
    "--num-connections",
    "connections",
    type=click.IntRange(1, 256),
    default=8,
    show_default=True,
    help="PostgreSQL connections (and scan workers) per table.",
)
@click.option(
    "-r",
    "--scan-rate",
    type=click.FloatRange(0),
    default=0.0,
    show_default=True,
    help="Read capacity units per second per table for the scan; 0 = unlimited.",
)
@click.option("--segments", type=click.IntRange(1, 1_000_000), help="Parallel scan segments (default: 4 × -n).")
@click.option("--consistent-read", is_flag=True, help="Strongly consistent scan reads (twice the read cost).")
@click.option("--reload", is_flag=True, help="Empty and load again tables that were already loaded.")
@click.option(
    "-P",
    "--processes",
    type=click.IntRange(1, 256),
    default=1,
    show_default=True,
    help="Run this many podyn processes from this one command; they share each table's segments and shards as"
    " processes on separate hosts do.",
)
@click.option(
    "--lease-seconds",
    type=click.FloatRange(1.0, 3600.0),
    default=30.0,
    show_default=True,
    help="A lease on a segment or shard lasts this long unless renewed (every third of it); then another process"
    " takes the unit over.",
)
@click.option(
    "--capture/--no-capture",
    default=True,
    show_default=True,
    help="Read each table's stream from the start of its load, keeping each key's last change in the podyn"
    " schema (the spool) until the load is done, so a load may last longer than the stream keeps records (24 h);"
    " --no-capture replays the stream after the load instead.",
)
@click.option(
    "--idle-poll-max",
    type=click.FloatRange(0.25, 3600.0),
    default=5.0,
    show_default=True,
    metavar="SECONDS",
    help="Longest pause between GetRecords calls on an idle stream shard: a change after a quiet spell waits up to"
    " this long; every call is billed.",
)
@click.option("--pg-schema", default="public", show_default=True, help="PostgreSQL schema for the tables.")
@click.option("--table-prefix", default="", help="Put this before the PostgreSQL name of every table of the run.")
@click.option("--endpoint-url", help="DynamoDB endpoint (e.g. DynamoDB Local: http://127.0.0.1:8000).")
@click.option(
    "--s3-endpoint-url", help="S3 endpoint for --from-export and --export-to (an S3-compatible store); default: AWS's."
)
@click.option("--region", help="AWS region (default: the standard AWS configuration chain).")
@click.option("--profile", help="AWS profile (default: the standard AWS credentials chain).")
@click.option(
    "--max-attempts",
    type=click.IntRange(1, 100),
    default=10,
    show_default=True,
    envvar="AWS_MAX_ATTEMPTS",
    help="Attempts per DynamoDB request in botocore's standard retry mode (env AWS_MAX_ATTEMPTS); throttling"
    " that outlasts them is waited out, never fatal.",
)
@click.option(
    "--fast-path/--no-fast-path",
    default=True,
    show_default=True,
    help="Scan and read streams with signed HTTP parsed by orjson (2-4x less CPU), through the proxy and CA bundle"
    " boto3 would use; --no-fast-path uses boto3 for everything.",
)
@click.option(
    "--verify", is_flag=True, help="Compare every DynamoDB item with its PostgreSQL row; exit 4 on differences."
)
@click.option(
    "--verify-sample",
    type=click.FloatRange(0, 1, min_open=True),
    default=1.0,
    show_default=True,
    metavar="FRACTION",
    help="--verify: scan only this fraction of the segments (then rows without an item cannot be found).",
)
@click.option(
    "--verify-max-differences",
    type=click.IntRange(0),
    default=20,
    show_default=True,
    help="--verify: list at most this many differences per table (all are counted).",
)
@click.option(
    "--verify-run",
    metavar="NAME",
    help="--verify: share each table's segments with the other processes given the same NAME (on this host or"
    " others), each reporting the whole table; -P shares them among its processes without it.",
)
@click.option("--status", is_flag=True, help="Show each table's state and progress from the podyn schema; no AWS.")
@click.option("--json", "as_json", is_flag=True, help="--status, --verify: print JSON instead of text.")
@click.option(
    "--metrics-port",
    type=click.IntRange(0, 65535),
    help="Serve Prometheus metrics on this port at /metrics while podyn runs, and the probes /healthz, /readyz.",
)
@click.option(
    "--metrics-address",
    default="127.0.0.1",
    show_default=True,
    help="Address for --metrics-port (0.0.0.0: every interface).",
)
@click.option(
    "--ready-max-lag",
    type=click.FloatRange(0),
    default=health.DEFAULT_MAX_LAG_SECONDS,
    show_default=True,
    metavar="SECONDS",
    help="/readyz on the metrics port: 200 once every table is live at most this far behind its stream.",
)
@click.option(
    "--health-max-stall",
    type=click.FloatRange(0, min_open=True),
    default=health.DEFAULT_MAX_STALL_SECONDS,
    show_default=True,
    metavar="SECONDS",
    help="/healthz on the metrics port: 503 once a table's loop has not come round for this long.",
)
@click.option("--progress/--no-progress", default=None, help="Progress bars (default: on a terminal).")
@click.option("-v", "--verbose", count=True, help="More logging (-v: debug and tracebacks).")
@click.option(
    "--log-level",
    type=click.Choice(["debug", "info", "warning", "error"], case_sensitive=False),
    help="Log level (default info).",
)
@click.option(
    "--log-format",
    type=click.Choice(["text", "json"]),
    default="text",
    show_default=True,
    help="json: one JSON object per line (time, level, logger, table, message, fields); no progress bars.",
)
def main(
    tables: str | None,
    config_file: FileSettings | None,
    postgres_url: str | None,
    schema: bool,
    data: bool,
    from_export: str | None,
    export_to: str | None,
    export_poll: float,
    changes: bool,
    ttl_deletes: str,
    citus: bool,
    conversion_mode: str | None,
    lower_case: bool | None,
    exclude_attributes: str | None,
    keep_replication_attributes: bool,
    connections: int,
    scan_rate: float,
    segments: int | None,
    consistent_read: bool,
    reload: bool,
    processes: int,
    lease_seconds: float,
    capture: bool,
    idle_poll_max: float,
    pg_schema: str,
    table_prefix: str,
    endpoint_url: str | None,
    s3_endpoint_url: str | None,
    region: str | None,
    profile: str | None,
    max_attempts: int,
    fast_path: bool,
    verify: bool,
    verify_sample: float,
    verify_max_differences: int,
    verify_run: str | None,
    status: bool,
    as_json: bool,
    metrics_port: int | None,
    metrics_address: str,
    ready_max_lag: float,
    health_max_stall: float,
    progress: bool | None,
    verbose: int,
    log_level: str | None,
    log_format: str,
) -> None:
    """Replicate Amazon DynamoDB tables into PostgreSQL (or Citus).

    Run --schema --data once to create the tables and copy the items, then --changes as a service to apply every
    later change from DynamoDB Streams. --verify compares the copy with DynamoDB; --status shows where each table
    stands.
    """
    level = logging.DEBUG if verbose else getattr(logging, (log_level or "info").upper())
    _configure_logging(level, log_format, _secrets(postgres_url))
    if log_format == "json" and progress:
        raise click.UsageError("--progress draws bars on stderr: not with --log-format json")
    collector.tune_for_bulk_work()  # a third of a load's CPU went to the garbage collector (podyn_py/collector.py)
    checks = [flag for flag, on in (("--verify", verify), ("--status", status)) if on]
    if len(checks) > 1 or (checks and (schema or data or changes)):
        raise click.UsageError("--verify and --status run alone: not with --schema, --data, --changes or each other")
    if not (schema or data or changes or checks):
        raise click.UsageError("nothing to do: give --schema, --data, --changes, --verify or --status")
    if as_json and not checks:
        raise click.UsageError("--json goes with --verify or --status")
    if from_export is not None and not data:
        raise click.UsageError("--from-export goes with --data: it says where the data is loaded from")
    if from_export is not None and tables and len([t for t in tables.split(",") if t.strip()]) > 1:
        raise click.UsageError("--from-export loads one table: give at most one -t")
    if export_to is not None:
        _check_export_to(export_to, data=data, from_export=from_export, postgres_url=postgres_url)
    if checks and not postgres_url:
        raise click.UsageError(f"{checks[0]} needs a PostgreSQL URL (-u)")
    if processes > 1 and (status or not postgres_url):
        raise click.UsageError(
            "-P/--processes goes with --schema, --data, --changes or --verify and a PostgreSQL URL (-u)"
        )
    if verify_run is not None and not verify:
        raise click.UsageError("--verify-run goes with --verify")
    if processes > 1:
        sys.exit(run_processes(processes, sys.argv[1:], one_report=verify))
    context = click.get_current_context()
    schema_given = context.get_parameter_source("pg_schema") is not ParameterSource.DEFAULT
    sources, table_settings = _table_settings(context, tables, config_file)
    try:
        exclusions = Exclusions.parse(exclude_attributes, keep_replication_attributes=keep_replication_attributes)
    except ConfigError as exc:
        raise click.BadParameter(exc.message, param_hint="--exclude-attributes") from None
    try:
        config = Config(
            tables=sources,
            postgres=parse_postgres_url(postgres_url) if postgres_url else None,
            schema=schema,
            data=data,
            changes=changes,
            citus=citus,
            mode=ConversionMode(conversion_mode) if conversion_mode else None,
            lower_case=lower_case,
            connections=connections,
            scan_rate=scan_rate,
            segments=segments,
            consistent_read=consistent_read,
            pg_schema=pg_schema,
            pg_schema_given=schema_given,
            table_prefix=table_prefix,
            table_settings=table_settings,
            reload=reload,
            lease_seconds=lease_seconds,
            capture=capture,
            idle_poll_max=idle_poll_max,
            run_started=_run_started(),
            progress=(sys.stderr.isatty() and log_format == "text") if progress is None else progress,
            exclusions=exclusions,
            ttl_deletes=TtlPolicy(ttl_deletes),
            from_export=from_export,
            export_to=export_to,
            export_poll_seconds=export_poll,
            aws=AwsSettings(
                endpoint_url=endpoint_url,
                region=region,
                profile=profile,
                max_attempts=max_attempts,
                fast_path=fast_path,
                s3_endpoint_url=s3_endpoint_url,
            ),
        )
        _check_targets(config)
        if metrics_port is not None:
            serve_metrics(
                metrics_port + int(os.environ.get(PROCESS_INDEX_ENV, "0")),
                metrics_address,
                max_stall=health_max_stall,
                max_lag=ready_max_lag,
            )
        if verify:
            options = VerifyOptions(
                max_differences=verify_max_differences,
                sample=verify_sample,
                run=verify_run or os.environ.get(RUN_NAME_ENV) or None,
            )
            sys.exit(run_verify(config, options, as_json=as_json))
        if status:
            sys.exit(run_status(config, config.pg_schema if schema_given else None, as_json=as_json))
        sys.exit(run(config, debug=bool(verbose)))
    except PodynError as exc:
        _fail(exc, debug=bool(verbose))


def _check_export_to(export_to: str, *, data: bool, from_export: str | None, postgres_url: str | None) -> None:
    if not data:
        raise click.UsageError("--export-to goes with --data: it says where the data is loaded from")
    if from_export is not None:
        raise click.UsageError("--export-to asks for a new export, --from-export loads one made before: give one")
    if not postgres_url:
        raise click.UsageError(CANNOT_EXPORT)
    try:
        split_destination(export_to)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--export-to") from None


def _read_config_file(ctx: click.Context, path: str | None) -> FileSettings | None:
    """``--config``: check the file, convert its values with the options' own types, and make its top-level keys
    the options' defaults (click's ``default_map``: what is given on the command line or in the environment wins).
    """
    if path is None:
        return None
    try:
        settings = config_file.load(path)
    except ConfigError as exc:
        raise click.UsageError(str(exc), ctx) from None
    defaults = {}
    for value in settings.defaults:
        option = config_file.KEYS[value.key].option
        assert option is not None
        defaults[option] = _convert(ctx, option, value)
    for values in settings.tables.values():
        for value in values:
            _table_value(ctx, value)  # wrong values are usage errors now, before anything else is looked at
    ctx.default_map = {**(ctx.default_map or {}), **defaults}
    return settings


def _option(ctx: click.Context, name: str) -> click.Parameter:
    return next(p for p in ctx.command.params if p.name == name)


def _convert(ctx: click.Context, option: str, value: config_file.Value) -> Any:
    """A value of the file, converted (ranges, choices) as the option converts what is typed on the command line."""
    param = _option(ctx, option)
    try:
        return param.type.convert(value.value, param, ctx)
    except click.BadParameter as exc:
        raise click.UsageError(f"{value.where}: {value.key}: {exc.message}", ctx) from None


def _table_value(ctx: click.Context, value: config_file.Value) -> tuple[str, Any]:
    """A value of a table's section: the TableSettings field it sets, and what it sets it to."""
    key = config_file.KEYS[value.key]
    assert key.per_table is not None
    converted = value.value if key.option is None else _convert(ctx, key.option, value)
    try:
        return key.per_table, converted if key.parse is None else key.parse(converted)
    except ConfigError as exc:
        raise click.UsageError(f"{value.where}: {exc}", ctx) from None


def _table_settings(
    ctx: click.Context, tables: str | None, file: FileSettings | None
) -> tuple[tuple[str, ...], dict[str, TableSettings]]:
    """The tables of the run (``-t``, else the file's sections) and each one's own settings: the file's section,
    less what a flag sets for every table, and the target ``-t`` names."""
    try:
        named = targets.parse_tables(tables) if tables else []
    except ConfigError as exc:
        raise click.UsageError(str(exc), ctx) from None
    sections = file.tables if file is not None else {}
    flagged = {ParameterSource.COMMANDLINE, ParameterSource.ENVIRONMENT}
    settings = {}
    for source in {*sections, *(s for s, _ in named)}:
        own: dict[str, Any] = {}
        for value in sections.get(source, ()):
            option = config_file.KEYS[value.key].option
            if option is None or ctx.get_parameter_source(option) not in flagged:  # a flag sets it for every table
                name, setting = _table_value(ctx, value)
                own[name] = setting
        if (target := dict(named).get(source)) is not None:
            own["target"] = target  # -t wins over the file
        settings[source] = TableSettings(**own)
    return tuple(s for s, _ in named) or tuple(sections), settings


def _check_targets(config: Config) -> None:
    """Names PostgreSQL cannot hold, and two tables of the run sent to one, are usage errors before anything runs."""
    try:
        targets.check_schema(config.pg_schema)
        targets.check_prefix(config.table_prefix)
        targets.check_distinct((source, config.target_request(source)) for source in config.tables)
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from None


def run(config: Config, *, debug: bool = False) -> int:
    from podyn_py.replicate import replicate

    if config.dry_run:
        log.info("no PostgreSQL URL: dry run, printing the SQL instead of running it")
    else:
        log.info("writing to %s", redact(config.postgres or ""))
    stop = threading.Event()
    with _stop_on_signals(stop), _quiet_progress(config.progress):
        summary = replicate(config, stop=stop)
    if summary.interrupted:
        log.warning("stopped on request after committing the work in flight; the next run resumes")
    if summary.failed or summary.held_elsewhere:
        for name, exc in summary.failed.items():
            _say(f"table {name} stopped: {exc}", table=name)
        return EXIT_TABLES_FAILED
    return EXIT_OK


def run_verify(config: Config, options: VerifyOptions, *, as_json: bool = False) -> int:
    from podyn_py import verify

    stop = threading.Event()
    with _stop_on_signals(stop), _quiet_progress(config.progress):
        reports = verify.verify(config, options, stop=stop)
    click.echo(json.dumps(verify.to_json(reports), indent=2) if as_json else verify.render(reports))
    if any(r.error or r.interrupted for r in reports):
        return EXIT_TABLES_FAILED
    return EXIT_OK if all(r.equal for r in reports) else EXIT_DIFFERENCES


def run_status(config: Config, pg_schema: str | None, *, as_json: bool = False) -> int:
    from podyn_py import status

    assert config.postgres is not None
    result = status.read_status(config.postgres, config.tables, pg_schema, lease_seconds=config.lease_seconds)
    click.echo(json.dumps(status.to_json(result), indent=2) if as_json else status.render(result))
    for name in result.unknown:
        _say(f"table {name} is not known to podyn in this database", table=name)
    for table in result.tables:
        if isinstance(table.state, status.Activity):
            seen = "never" if table.last_seen is None else table.last_seen.isoformat(sep=" ", timespec="seconds")
            _say(f"table {table.source} is {table.state.value} (last seen {seen})", table=table.source)
    return EXIT_OK if result.ok else EXIT_TABLES_FAILED


def serve_metrics(
    port: int,
    address: str,
    *,
    max_stall: float = health.DEFAULT_MAX_STALL_SECONDS,
    max_lag: float = health.DEFAULT_MAX_LAG_SECONDS,
) -> None:
    routes = health.HEALTH.probes(max_stall=max_stall, max_lag=max_lag)
    try:
        server = metrics.serve(port, address, routes)
    except OSError as exc:
        raise ConfigError(f"cannot serve metrics on {address}:{port}: {exc}") from exc
    log.info(
        "serving Prometheus metrics at http://%s:%d/metrics, health at /healthz and /readyz",
        address,
        server.server_port,
    )


def _fail(exc: PodynError, *, debug: bool) -> None:
    if logs.json_mode():
        log.error("%s", exc, exc_info=exc if debug else None)
    else:
        if debug:
            log.exception("podyn failed")
        click.echo(f"podyn: {exc}", err=True)
    sys.exit(EXIT_ERROR)


def _say(message: str, *, table: str | None = None) -> None:
    """A line for the operator on stderr: ``podyn: message``, or an error record when the logs are JSON."""
    if logs.json_mode():
        log.error(message, extra={"table": table})
    else:
        click.echo(f"podyn: {message}", err=True)


def _secrets(postgres_url: str | None) -> list[str]:
    """What no log line may show: the PostgreSQL password (from the URL, or PGPASSWORD) and the AWS secrets in the
    environment; the patterns of redact_text hide passwords in URLs and DSNs besides."""
    found = [os.environ.get(name, "") for name in ("PGPASSWORD", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")]
    if postgres_url:
        with contextlib.suppress(PodynError, psycopg.Error):  # a URL that does not parse is reported later
            found.append(str(conninfo_to_dict(parse_postgres_url(postgres_url)).get("password") or ""))
    return [s for s in found if s]


def _configure_logging(level: int, log_format: str = "text", secrets: list[str] | None = None) -> None:
    logs.configure(level, json=log_format == "json", redact=logs.Redactor(redact_text, secrets or ()))
    if level > logging.DEBUG:
        for noisy in ("botocore", "boto3", "urllib3", "psycopg"):
            logging.getLogger(noisy).setLevel(logging.WARNING)


def _run_started() -> datetime:
    """When this command started: given by the parent of a process started by -P, else now."""
    given = os.environ.get(RUN_STARTED_ENV)
    return datetime.fromisoformat(given) if given else datetime.now(UTC)


@contextlib.contextmanager
def _stop_on_signals(stop: threading.Event) -> Iterator[None]:
    """First SIGINT/SIGTERM: finish and commit what is in flight, then stop. A second SIGINT: stop at once."""

    def handle(signum: int, frame: FrameType | None) -> None:
        if stop.is_set() and signum == signal.SIGINT:
            raise KeyboardInterrupt
        log.warning("received %s: finishing the work in flight, then stopping", signal.Signals(signum).name)
        stop.set()

    previous = {s: signal.signal(s, handle) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


@contextlib.contextmanager
def _quiet_progress(progress: bool) -> Iterator[Any]:
    """Route log lines around tqdm's bars so they do not tear them."""
    if not progress:
        yield None
        return
    from tqdm.contrib.logging import logging_redirect_tqdm

    with logging_redirect_tqdm():
        yield None
