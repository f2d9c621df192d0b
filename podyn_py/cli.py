"""The ``podyn`` command: options → a frozen Config → the library; errors → one clear line and an exit code.

Exit codes: 0 done (or stopped on request, resumable); 1 error before any table was replicated (settings,
connections); 2 wrong usage; 3 one or more tables stopped with an error or were held by another process.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import sys
import threading
from collections.abc import Iterator
from types import FrameType
from typing import Any

import click

from podyn_py.config import Config, parse_postgres_url, redact
from podyn_py.core.schema import ConversionMode
from podyn_py.errors import PodynError
from podyn_py.source.dynamodb import AwsSettings

log = logging.getLogger("podyn_py")

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_TABLES_FAILED = 3

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
Exit codes: 0 done or stopped on request; 1 error before any table ran; 2 usage; 3 a table stopped with an error.
"""


@click.command(epilog=EPILOG, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.option("-t", "--table", "tables", help="DynamoDB tables, comma-separated (default: every table).")
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
@click.option("--segments", type=click.IntRange(1, 1_000_000), help="Parallel scan segments (default: -n).")
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
    progress: bool | None,
    verbose: int,
    log_level: str | None,
) -> None:
    """Replicate Amazon DynamoDB tables into PostgreSQL (or Citus).

    Run --schema --data once to create the tables and copy the items, then --changes as a service to apply every
    later change from DynamoDB Streams.
    """
    level = logging.DEBUG if verbose else getattr(logging, (log_level or "info").upper())
    _configure_logging(level)
    if not (schema or data or changes):
        raise click.UsageError("nothing to do: give --schema, --data and/or --changes")
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
            aws=AwsSettings(endpoint_url=endpoint_url, region=region, profile=profile, max_attempts=max_attempts),
        )
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
