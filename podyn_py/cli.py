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
import signal
import sys
import threading
from collections.abc import Iterator
from types import FrameType
from typing import Any

import click
from click.core import ParameterSource

from podyn_py import collector, metrics
from podyn_py.config import AwsSettings, Config, parse_postgres_url, redact
from podyn_py.core.schema import ConversionMode
from podyn_py.errors import ConfigError, PodynError
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
  # compare every item with its row (exit 4 on differences); a quick look at a quarter of the segments
  podyn -u postgresql://app@db/app --verify
  podyn -u postgresql://app@db/app --verify --verify-sample 0.25 --segments 16
\b
  # where each table stands, from the podyn schema alone (also while the service runs elsewhere)
  podyn -u postgresql://app@db/app --status [--json]
\b
  # serve Prometheus metrics while the changes are replicated
  podyn -u postgresql://app@db/app --changes --metrics-port 9464
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
    help="DynamoDB tables, comma-separated (default: every table; --verify, --status: every table podyn recorded).",
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
@click.option("-c", "--changes", is_flag=True, help="Replicate changes continuously from DynamoDB Streams.")
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
@click.option("--pg-schema", default="public", show_default=True, help="PostgreSQL schema for the tables.")
@click.option("--endpoint-url", help="DynamoDB endpoint (e.g. DynamoDB Local: http://127.0.0.1:8000).")
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
@click.option("--status", is_flag=True, help="Show each table's state and progress from the podyn schema; no AWS.")
@click.option("--json", "as_json", is_flag=True, help="--status, --verify: print JSON instead of text.")
@click.option(
    "--metrics-port",
    type=click.IntRange(0, 65535),
    help="Serve Prometheus metrics on this port at /metrics while podyn runs.",
)
@click.option(
    "--metrics-address",
    default="127.0.0.1",
    show_default=True,
    help="Address for --metrics-port (0.0.0.0: every interface).",
)
@click.option("--progress/--no-progress", default=None, help="Progress bars (default: on a terminal).")
@click.option("-v", "--verbose", count=True, help="More logging (-v: debug and tracebacks).")
@click.option(
    "--log-level",
    type=click.Choice(["debug", "info", "warning", "error"], case_sensitive=False),
    help="Log level (default info).",
)
def main(
    tables: str | None,
    postgres_url: str | None,
    schema: bool,
    data: bool,
    changes: bool,
    citus: bool,
    conversion_mode: str | None,
    lower_case: bool | None,
    connections: int,
    scan_rate: float,
    segments: int | None,
    consistent_read: bool,
    reload: bool,
    pg_schema: str,
    endpoint_url: str | None,
    region: str | None,
    profile: str | None,
    max_attempts: int,
    fast_path: bool,
    verify: bool,
    verify_sample: float,
    verify_max_differences: int,
    status: bool,
    as_json: bool,
    metrics_port: int | None,
    metrics_address: str,
    progress: bool | None,
    verbose: int,
    log_level: str | None,
) -> None:
    """Replicate Amazon DynamoDB tables into PostgreSQL (or Citus).

    Run --schema --data once to create the tables and copy the items, then --changes as a service to apply every
    later change from DynamoDB Streams. --verify compares the copy with DynamoDB; --status shows where each table
    stands.
    """
    level = logging.DEBUG if verbose else getattr(logging, (log_level or "info").upper())
    _configure_logging(level)
    collector.tune_for_bulk_work()  # a third of a load's CPU went to the garbage collector (podyn_py/collector.py)
    checks = [flag for flag, on in (("--verify", verify), ("--status", status)) if on]
    if len(checks) > 1 or (checks and (schema or data or changes)):
        raise click.UsageError("--verify and --status run alone: not with --schema, --data, --changes or each other")
    if not (schema or data or changes or checks):
        raise click.UsageError("nothing to do: give --schema, --data, --changes, --verify or --status")
    if as_json and not checks:
        raise click.UsageError("--json goes with --verify or --status")
    if checks and not postgres_url:
        raise click.UsageError(f"{checks[0]} needs a PostgreSQL URL (-u)")
    schema_given = click.get_current_context().get_parameter_source("pg_schema") is not ParameterSource.DEFAULT
    try:
        config = Config(
            tables=tuple(t.strip() for t in tables.split(",") if t.strip()) if tables else (),
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
            reload=reload,
            progress=sys.stderr.isatty() if progress is None else progress,
            aws=AwsSettings(
                endpoint_url=endpoint_url,
                region=region,
                profile=profile,
                max_attempts=max_attempts,
                fast_path=fast_path,
            ),
        )
        if metrics_port is not None:
            serve_metrics(metrics_port, metrics_address)
        if verify:
            options = VerifyOptions(max_differences=verify_max_differences, sample=verify_sample)
            sys.exit(run_verify(config, options, as_json=as_json))
        if status:
            sys.exit(run_status(config, config.pg_schema if schema_given else None, as_json=as_json))
        sys.exit(run(config, debug=bool(verbose)))
    except PodynError as exc:
        _fail(exc, debug=bool(verbose))


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
            click.echo(f"podyn: table {name} stopped: {exc}", err=True)
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
    result = status.read_status(config.postgres, config.tables, pg_schema)
    click.echo(json.dumps(status.to_json(result), indent=2) if as_json else status.render(result))
    for name in result.unknown:
        click.echo(f"podyn: table {name} is not known to podyn in this database", err=True)
    for table in result.tables:
        if isinstance(table.state, status.Activity):
            seen = "never" if table.last_seen is None else table.last_seen.isoformat(sep=" ", timespec="seconds")
            click.echo(f"podyn: table {table.source} is {table.state.value} (last seen {seen})", err=True)
    return EXIT_OK if result.ok else EXIT_TABLES_FAILED


def serve_metrics(port: int, address: str) -> None:
    try:
        server = metrics.serve(port, address)
    except OSError as exc:
        raise ConfigError(f"cannot serve metrics on {address}:{port}: {exc}") from exc
    log.info("serving Prometheus metrics at http://%s:%d/metrics", address, server.server_port)


def _fail(exc: PodynError, *, debug: bool) -> None:
    if debug:
        log.exception("podyn failed")
    click.echo(f"podyn: {exc}", err=True)
    sys.exit(EXIT_ERROR)


def _configure_logging(level: int) -> None:
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    if level > logging.DEBUG:
        for noisy in ("botocore", "boto3", "urllib3", "psycopg"):
            logging.getLogger(noisy).setLevel(logging.WARNING)


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
