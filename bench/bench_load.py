#!/usr/bin/env python
"""Benchmark of podyn's initial load (``--schema --data``) against its two ceilings and a hand-written script.

Run from the repository root, never as a test:

    .venv/bin/python bench/bench_load.py --items 100000
    .venv/bin/python bench/bench_load.py --items 100000 --repeat 3 --explore --profile   # py-spy: pip install py-spy
    .venv/bin/python bench/bench_load.py --items 1000000 --json /tmp/1m.json
    .venv/bin/python bench/bench_load.py --items 100000 --variant 'n4:-n 4' --variant 'arenas2:MALLOC_ARENA_MAX=2'
    .venv/bin/python bench/bench_load.py --items 100000 --skip naive --skip postgres --processes 1,2 --repeat 2

Output: RUN lines (one per measurement), FIGURE lines (each figure's best run), TARGET lines (ratios against the
project's targets), and PROFILE lines; bench/RESULTS.md explains them and holds the measured results.

It starts its own DynamoDB Local and PostgreSQL (``podyn_py.demo_services``), fills a table of N items of about 300
bytes with BatchWriteItem from several threads (no stream), then measures in the same run:

  source ceiling   the parallel scan podyn does (same segments, threads and page Limit, boto3 client), items
                   thrown away
  source orjson    the same scan with each response body parsed by orjson instead of botocore's model-driven
                   parser: the ceiling for podyn's fast path (signed HTTP + orjson, its default since 37b6d32)
  naive            a single-threaded hand-written migration: Scan pages → TypeDeserializer → psycopg executemany
                   INSERT, a commit per page (on a sample of the table when N is large, extrapolated)
  postgres ceiling server-side ``COPY ... FROM '/tmp/file'`` of the same rows into a table with the same columns
  podyn            ``python -m podyn_py -s -d --scan-rate 0`` as a subprocess: items/s, peak RSS, CPU time, rows
  podyn -P N       with ``--processes N,...``: the same with ``-P N`` (N processes sharing the segments by lease),
                   each into its own database, in every round; its client CPU is the parent's and every child's
                   (wait4 counts the children it reaped); its peak RSS is the supervising parent's only

Every figure also carries the CPU seconds that podyn (or this script), DynamoDB Local and PostgreSQL spent on it,
since all three share the machine's cores. Every process this script starts is stopped before it exits, and the
tables it made are dropped.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import datetime
import functools
import json
import multiprocessing
import os
import platform
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import tracemalloc
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import boto3
import botocore
import botocore.config
import orjson
import psycopg
from boto3.dynamodb.types import TypeDeserializer
from psycopg import sql
from psycopg.types.json import Jsonb

from podyn_py.config import SEGMENTS_PER_CONNECTION
from podyn_py.demo_services import (
    LOCAL_ACCESS_KEY,
    LOCAL_REGION,
    LOCAL_SECRET_KEY,
    LocalDynamoDB,
    LocalPostgres,
    find_dynamodb_local,
)
from podyn_py.source.scan import MAX_PAGE_ITEMS

REPO = Path(__file__).resolve().parent.parent
TABLE = "bench_items"
MB = 1024 * 1024
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")

# Targets from the project brief.
TARGET_VS_SOURCE = 0.8
TARGET_VS_NAIVE = 5.0
TARGET_RSS_MB = 300
TARGET_RSS_AT_ITEMS = 1_000_000

# The columns podyn creates for these items (columns mode: one per attribute, sets and maps as jsonb).
COLUMNS = (
    ("id", "text"),
    ("seq", "numeric"),
    ("price", "numeric"),
    ("name", "text"),
    ("active", "boolean"),
    ("created", "text"),
    ("tags", "jsonb"),
    ("attrs", "jsonb"),
    ("note", "text"),
)


# -- the items ----------------------------------------------------------------------------------------------------

COLORS = ("red", "green", "blue", "black", "white", "orange", "purple")
WORDS = ("alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india", "juliet", "kilo")
FILLER = (
    "lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod tempor incididunt ut labore et"
    " dolore magna aliqua ut enim ad minim"
)


def plain_item(i: int) -> dict[str, Any]:
    """Item number i as Python values: a few scalars, a string set, a nested map holding a list. Deterministic."""
    h = (i * 2654435761) % 2**32  # cheap per-item scatter, so that values vary without a random generator
    return {
        "id": f"item-{i:09d}",
        "seq": i,
        "price": Decimal(h % 100_000) / 100,
        "name": f"Product {i} {WORDS[h % 11]} {COLORS[h % 7]}",
        "active": h % 3 == 0,
        "created": f"2024-{1 + h % 12:02d}-{1 + h % 28:02d}T{h % 24:02d}:{h % 60:02d}:{(h >> 8) % 60:02d}Z",
        "tags": {WORDS[h % 11], WORDS[(h >> 4) % 11] + "-x", COLORS[(h >> 8) % 7]},
        "attrs": {
            "color": COLORS[h % 7],
            "size": h % 50,
            "dims": [h % 100, (h >> 3) % 100, (h >> 6) % 100],
            "vendor": {"name": f"vendor-{h % 997}", "rating": (h >> 5) % 50},
        },
        "note": FILLER[: 90 + h % 25],
    }


def to_wire(value: Any) -> dict[str, Any]:
    """A Python value in DynamoDB's wire shape (enough for plain_item's values)."""
    if isinstance(value, bool):
        return {"BOOL": value}
    if isinstance(value, int | Decimal):
        return {"N": str(value)}
    if isinstance(value, str):
        return {"S": value}
    if isinstance(value, set):
        return {"SS": sorted(value)}
    if isinstance(value, dict):
        return {"M": {k: to_wire(v) for k, v in value.items()}}
    if isinstance(value, list):
        return {"L": [to_wire(v) for v in value]}
    raise TypeError(type(value))


def dynamodb_size(value: Any) -> int:
    """Approximate DynamoDB item size rules: names and strings in UTF-8, numbers ~1 byte per 2 digits, 3 bytes
    per map or list plus 1 per element."""
    if isinstance(value, bool):
        return 1
    if isinstance(value, int | Decimal):
        return 1 + (len(str(value).lstrip("-").replace(".", "")) + 1) // 2
    if isinstance(value, str):
        return len(value.encode())
    if isinstance(value, set):
        return sum(len(s.encode()) for s in value)
    if isinstance(value, dict):
        return 3 + sum(len(k.encode()) + dynamodb_size(v) + 1 for k, v in value.items())
    if isinstance(value, list):
        return 3 + sum(dynamodb_size(v) + 1 for v in value)
    raise TypeError(type(value))


def item_size(i: int) -> int:
    return sum(len(k) + dynamodb_size(v) for k, v in plain_item(i).items())


def copy_text_line(item: dict[str, Any]) -> str:
    """One row in COPY's text format, in COLUMNS order."""

    def field(value: Any) -> str:
        if isinstance(value, bool):
            text = "t" if value else "f"
        elif isinstance(value, set):
            text = orjson.dumps(sorted(value)).decode()
        elif isinstance(value, dict):
            text = orjson.dumps(value).decode()
        else:
            text = str(value)
        return text.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")

    return "\t".join(field(item[name]) for name, _ in COLUMNS) + "\n"


# -- measurements -------------------------------------------------------------------------------------------------


@dataclass
class Figure:
    name: str
    items: int
    seconds: float
    #: CPU seconds spent during the figure, by who spent them: client (this script or podyn), dynamodb, postgres.
    cpu: dict[str, float] = field(default_factory=dict)
    load_avg: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.items / self.seconds if self.seconds > 0 else 0.0


def proc_cpu(pid: int, *, children: bool = False) -> float:
    """CPU seconds (user + system) of a process; with ``children``, plus its reaped children and live ones."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return 0.0
    fields = stat[stat.rfind(")") + 2 :].split()
    # fields[11..14] are utime, stime, cutime, cstime (fields 14..17 of proc(5), counted from 1 with pid and comm)
    ticks = int(fields[11]) + int(fields[12])
    if children:
        ticks += int(fields[13]) + int(fields[14])
    total = ticks / CLOCK_TICKS
    if children:
        for child in child_pids(pid):
            total += proc_cpu(child)
    return total


def child_pids(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
        if int(stat[stat.rfind(")") + 2 :].split()[1]) == pid:
            found.append(int(entry.name))
    return found


def java_pid(port: int) -> int | None:
    """The DynamoDB Local JVM listening on ``port`` (found by its command line)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
        if argv and argv[0].endswith(b"java") and b"-port" in argv and str(port).encode() in argv:
            return int(entry.name)
    return None


class CpuMeter:
    """CPU seconds spent by DynamoDB Local and PostgreSQL (postmaster, live and ended backends)."""

    def __init__(self, ddb: LocalDynamoDB, pg: LocalPostgres) -> None:
        self.java = java_pid(ddb.port)
        try:
            self.postmaster: int | None = int((pg.datadir / "postmaster.pid").read_text().split("\n", 1)[0])
        except (OSError, ValueError):
            self.postmaster = None

    def read(self) -> dict[str, float]:
        return {
            "dynamodb": proc_cpu(self.java) if self.java else float("nan"),
            "postgres": proc_cpu(self.postmaster, children=True) if self.postmaster else float("nan"),
        }


@contextlib.contextmanager
def measured(meter: CpuMeter, figure: Figure, *, client_cpu: bool = True) -> Iterator[Figure]:
    """Time the block and charge the CPU spent meanwhile to the figure."""
    before = meter.read()
    own = time.process_time()
    started = time.perf_counter()
    yield figure
    figure.seconds = time.perf_counter() - started
    time.sleep(0.3)  # ended backends are reaped by the postmaster a moment later; their CPU then shows in cutime
    after = meter.read()
    if client_cpu:
        figure.cpu["client"] = time.process_time() - own
    for who in after:
        figure.cpu[who] = after[who] - before[who]
    figure.load_avg = os.getloadavg()[0]


def boto_client(endpoint: str, *, pool: int = 10) -> Any:
    """A client configured like podyn's (standard retries, a connection per thread)."""
    config = botocore.config.Config(
        retries={"mode": "standard", "max_attempts": 10},
        max_pool_connections=max(pool, 10),
        connect_timeout=10,
        read_timeout=70,
    )
    return boto3.client(
        "dynamodb",
        endpoint_url=endpoint,
        region_name=LOCAL_REGION,
        aws_access_key_id=LOCAL_ACCESS_KEY,
        aws_secret_access_key=LOCAL_SECRET_KEY,
        config=config,
    )


def create_source_table(client: Any) -> None:
    client.create_table(
        TableName=TABLE,
        KeySchema=[{"AttributeName": "id", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "id", "AttributeType": "S"}],
        BillingMode="PAY_PER_REQUEST",
    )
    client.get_waiter("table_exists").wait(TableName=TABLE)


def fill_source_table(client: Any, items: int, threads: int) -> None:
    """BatchWriteItem, 25 items a request, batches spread over threads; unprocessed items are sent again."""

    def write(first_batch: int) -> None:
        for batch in range(first_batch, (items + 24) // 25, threads):
            requests = [
                {"PutRequest": {"Item": to_wire(plain_item(i))["M"]}}
                for i in range(batch * 25, min(items, batch * 25 + 25))
            ]
            delay = 0.05
            while requests:
                response = client.batch_write_item(RequestItems={TABLE: requests})
                requests = response.get("UnprocessedItems", {}).get(TABLE, [])
                if requests:
                    time.sleep(delay)
                    delay = min(delay * 2, 2.0)

    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
        for future in [pool.submit(write, t) for t in range(threads)]:
            future.result()


def scan_ceiling(
    client: Any,
    threads: int,
    *,
    first: int = 0,
    count: int | None = None,
    total: int | None = None,
    stop_after: int = 0,
) -> int:
    """The parallel scan podyn does, items counted and thrown away: ``threads`` threads take the table's ``total``
    segments (podyn's default: SEGMENTS_PER_CONNECTION × threads) one after another, with podyn's page ``Limit``.

    Scans ``count`` segments from ``first`` (default: all); with ``stop_after``, each segment stops after that many
    items (a warm-up).
    """
    total = total or SEGMENTS_PER_CONNECTION * threads
    count = total if count is None else count

    def scan_segment(segment: int) -> int:
        scanned = 0
        request: dict[str, Any] = {
            "TableName": TABLE,
            "Segment": segment,
            "TotalSegments": total,
            "Limit": MAX_PAGE_ITEMS,
            "ReturnConsumedCapacity": "TOTAL",
        }
        while True:
            response = client.scan(**request)
            scanned += len(response.get("Items", []))
            last = response.get("LastEvaluatedKey")
            if not last or (stop_after and scanned >= stop_after):
                return scanned
            request["ExclusiveStartKey"] = last

    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
        return sum(pool.map(scan_segment, range(first, first + count)))


def parse_scan_with_orjson(client: Any) -> None:
    """Make ``client`` parse Scan responses with orjson instead of botocore's model-driven parser.

    botocore emits ``before-parse`` with the raw body; the handler parses it and leaves botocore an empty object to
    parse. Error responses are left alone. Binary values stay base64 text (podyn's values module accepts both).
    """

    def handler(response_dict: dict[str, Any], customized_response_dict: dict[str, Any], **_: Any) -> None:
        if response_dict["status_code"] < 300:
            customized_response_dict.update(orjson.loads(response_dict["body"]))
            response_dict["body"] = b"{}"

    client.meta.events.register("before-parse.dynamodb.Scan", handler)


def page_memory(endpoint: str) -> str:
    """Python memory a single full (1 MB) Scan page takes while parsed, and once parsed: botocore vs orjson."""
    parts = []
    for label in ("botocore", "orjson"):
        client = boto_client(endpoint)
        if label == "orjson":
            parse_scan_with_orjson(client)
        client.scan(TableName=TABLE, Limit=1)  # load the service model and build the parser first
        tracemalloc.start()
        response = client.scan(TableName=TABLE)
        kept, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        items = len(response["Items"])
        parts.append(f"{label}: {items} items, peak {peak / MB:.0f} MB while parsing, {kept / MB:.0f} MB kept")
        client.close()
        del response
    return "; ".join(parts)


def _scan_in_child(endpoint: str, threads: int, first: int, count: int, total: int) -> int:
    return scan_ceiling(boto_client(endpoint, pool=threads), threads, first=first, count=count, total=total)


def scan_in_processes(endpoint: str, threads: int, processes: int) -> int:
    """The same parallel scan split over processes (threads / processes threads each), to use more than one core."""
    per, total = threads // processes, SEGMENTS_PER_CONNECTION * threads
    step = total // processes
    context = multiprocessing.get_context("fork")
    with concurrent.futures.ProcessPoolExecutor(processes, mp_context=context) as pool:
        futures = [pool.submit(_scan_in_child, endpoint, per, p * step, step, total) for p in range(processes)]
        return sum(f.result() for f in futures)


def _naive_json_default(value: Any) -> Any:
    # What hand-written scripts do with TypeDeserializer's Decimals and sets.
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, set):
        return sorted(value)
    raise TypeError(type(value))


_naive_dumps = functools.partial(json.dumps, default=_naive_json_default)


def naive_copy(client: Any, pg_url: str, limit: int) -> int:
    """A single-threaded Scan → TypeDeserializer → executemany INSERT, committing each page; stops after
    ``limit`` items (at a page boundary)."""
    deserializer = TypeDeserializer()
    names = [name for name, _ in COLUMNS]
    insert = sql.SQL("INSERT INTO naive_items ({}) VALUES ({})").format(
        sql.SQL(", ").join(map(sql.Identifier, names)), sql.SQL(", ").join(sql.Placeholder() * len(names))
    )
    count = 0
    with psycopg.connect(pg_url) as conn:
        for page in client.get_paginator("scan").paginate(TableName=TABLE):
            rows = []
            for raw in page["Items"]:
                item = {k: deserializer.deserialize(v) for k, v in raw.items()}
                rows.append(
                    [
                        Jsonb(item[name], dumps=_naive_dumps) if kind == "jsonb" else item.get(name)
                        for name, kind in COLUMNS
                    ]
                )
            with conn.cursor() as cur:
                cur.executemany(insert, rows)
            conn.commit()
            count += len(rows)
            if count >= limit:
                break
    return count


def create_pg_table(pg_url: str, name: str) -> None:
    columns = sql.SQL(", ").join(sql.SQL("{} {}").format(sql.Identifier(c), sql.SQL(t)) for c, t in COLUMNS)
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE TABLE {} ({}, PRIMARY KEY (id))").format(sql.Identifier(name), columns))


def write_copy_file(path: Path, items: int) -> int:
    with path.open("w", encoding="utf-8") as out:
        for i in range(items):
            out.write(copy_text_line(plain_item(i)))
    path.chmod(0o644)  # the server reads it as the postgres OS user
    return path.stat().st_size


def server_copy(pg_url: str, path: Path) -> int:
    names = sql.SQL(", ").join(sql.Identifier(c) for c, _ in COLUMNS)
    with psycopg.connect(pg_url) as conn:
        cur = conn.execute(sql.SQL("COPY ceiling_items ({}) FROM {}").format(names, sql.Literal(str(path))))
        conn.commit()
        return cur.rowcount


def count_rows(pg_url: str, table: str) -> int:
    with psycopg.connect(pg_url) as conn:
        row = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(table))).fetchone()
        return int(row[0]) if row else -1


# -- podyn as a subprocess ----------------------------------------------------------------------------------------


def podyn_options(segments: int, extra: list[str]) -> list[str]:
    connections = [] if {"-n", "--num-connections"} & set(extra) else ["-n", str(segments)]
    return ["-s", "-d", "-t", TABLE, "--no-progress", "--scan-rate", "0", *connections, *extra]


def podyn_argv(endpoint: str, pg_url: str, segments: int, extra: list[str]) -> list[str]:
    argv = [sys.executable, "-m", "podyn_py", "--endpoint-url", endpoint, "-u", pg_url]
    return argv + podyn_options(segments, extra)


def podyn_env() -> dict[str, str]:
    """The children's environment: podyn_py from this checkout, unless a variant gives its own PYTHONPATH.

    Children run in the work directory, not here: ``python -m`` puts the current directory first on sys.path, ahead
    of PYTHONPATH, so a variant's ``PYTHONPATH=<another tree>`` ran this tree's podyn_py when they ran here.
    """
    env = dict(os.environ)
    env.update(
        AWS_ACCESS_KEY_ID=LOCAL_ACCESS_KEY, AWS_SECRET_ACCESS_KEY=LOCAL_SECRET_KEY, AWS_DEFAULT_REGION=LOCAL_REGION
    )
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN"):
        env.pop(name, None)
    return env


@dataclass
class ChildRun:
    code: int
    seconds: float
    peak_rss: int  # bytes
    cpu: float  # user + system seconds
    rss: list[tuple[float, int]]  # (seconds since start, VmRSS bytes), sampled


def run_child(argv: list[str], log_path: Path, *, timeout: float, env: dict[str, str] | None = None) -> ChildRun:
    """Run a child to completion, sampling its memory every 20 ms.

    Peak RSS is the kernel's high-water mark of the child's own address space (VmHWM), read until it exits; it only
    grows, so a sample can only miss the last 20 ms. Not ru_maxrss: Linux folds the forked, pre-exec copy of THIS
    process's address space into the child's ru_maxrss, so a child smaller than this script would report this
    script's size. Killed (with its process group) if it outlives ``timeout``.
    """
    peak = 0
    rss: list[tuple[float, int]] = []
    done = threading.Event()
    with log_path.open("wb") as log:
        started = time.perf_counter()
        proc = subprocess.Popen(
            argv, cwd=log_path.parent, env=env or podyn_env(), stdin=subprocess.DEVNULL, stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip

        def sample() -> None:
            nonlocal peak
            status = Path(f"/proc/{proc.pid}/status")
            while not done.wait(0.02):
                with contextlib.suppress(OSError):
                    text = status.read_text()
                    hwm = re.search(r"^VmHWM:\s+(\d+) kB", text, re.M)
                    now = re.search(r"^VmRSS:\s+(\d+) kB", text, re.M)
                    if hwm and now:
                        peak = max(peak, int(hwm.group(1)) * 1024)
                        rss.append((time.perf_counter() - started, int(now.group(1)) * 1024))

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        killer = threading.Timer(timeout, lambda: os.killpg(proc.pid, signal.SIGKILL))
        killer.start()
        try:
            # wait4 instead of proc.wait(): it returns this child's own CPU times.
            _, status, usage = os.wait4(proc.pid, 0)
            proc.returncode = os.waitstatus_to_exitcode(status)
        finally:
            killer.cancel()
            done.set()
            sampler.join()
            if proc.returncode is None:  # interrupted while waiting: take the child down with us
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        seconds = time.perf_counter() - started
    return ChildRun(proc.returncode, seconds, peak, usage.ru_utime + usage.ru_stime, rss)


def rss_trend(samples: list[tuple[float, int]], points: int = 5) -> str:
    """VmRSS at evenly spaced moments of the run, e.g. ``120 340 560 700 770`` (MB): growth or plateau."""
    if not samples:
        return "-"
    end = samples[-1][0]
    picked = []
    for k in range(1, points + 1):
        moment = end * k / points
        picked.append(next(r for t, r in samples if t >= moment - 1e-9))
    return " ".join(f"{r / MB:.0f}" for r in picked)


def podyn_load_seconds(pg_url: str) -> float | None:
    """The load's own duration as podyn recorded it (after schema creation, before the process exits)."""
    with psycopg.connect(pg_url) as conn:
        row = conn.execute(
            "SELECT extract(epoch FROM load_finished_at - load_started_at) FROM podyn.tables WHERE source_table = %s",
            (TABLE,),
        ).fetchone()
    return float(row[0]) if row and row[0] is not None else None


def run_podyn(
    meter: CpuMeter,
    endpoint: str,
    pg_url: str,
    items: int,
    segments: int,
    extra: list[str],
    log_path: Path,
    *,
    name: str = "podyn",
    env: dict[str, str] | None = None,
) -> Figure:
    shown = " ".join([*(f"{k}={v}" for k, v in (env or {}).items()), "podyn", *podyn_options(segments, extra)])
    figure = Figure(name, items, 0.0, extra={"argv": shown})
    with measured(meter, figure, client_cpu=False):
        child = run_child(
            podyn_argv(endpoint, pg_url, segments, extra), log_path, timeout=6 * 3600, env=podyn_env() | (env or {})
        )
    if child.code != 0:
        raise SystemExit(f"podyn exited with {child.code}; log:\n{log_path.read_text()[-4000:]}")
    figure.seconds = child.seconds
    figure.cpu["client"] = child.cpu
    figure.extra["peak_rss_mb"] = child.peak_rss / MB
    figure.extra["rss_trend_mb"] = rss_trend(child.rss)
    figure.extra["rows"] = count_rows(pg_url, TABLE)
    figure.extra["load_seconds"] = podyn_load_seconds(pg_url)
    # The tree changes while the benchmark runs: record what ran (a variant's PYTHONPATH names another tree).
    figure.extra["commit"] = podyn_commit(Path((env or {}).get("PYTHONPATH", str(REPO)).split(os.pathsep)[0]))
    return figure


def parse_variant(text: str) -> tuple[str, dict[str, str], list[str]]:
    """``label:ENV=value --arg value`` → (label, env, args): words with ``=`` before any option are environment."""
    label, _, rest = text.partition(":")
    env: dict[str, str] = {}
    args: list[str] = []
    for word in rest.split():
        if not args and "=" in word and not word.startswith("-"):
            key, _, value = word.partition("=")
            env[key] = value
        else:
            args.append(word)
    return label, env, args


# -- profile ------------------------------------------------------------------------------------------------------


def profile_podyn(
    endpoint: str, pg_url: str, segments: int, extra: list[str], workdir: Path, top: int, keep: Path | None
) -> list[str]:
    """Run podyn's load under py-spy (every thread, idle time excluded) and summarise the samples."""
    py_spy = Path(sys.executable).parent / "py-spy"
    if not py_spy.exists():
        return [f"py-spy not installed ({sys.executable} -m pip install py-spy)"]
    raw = workdir / "podyn.pyspy.txt"
    argv = [str(py_spy), "record", "--rate", "200", "--format", "raw", "--output", str(raw), "--"]
    argv += podyn_argv(endpoint, pg_url, segments, extra)
    child = run_child(argv, workdir / "pyspy.log", timeout=3600)
    if child.code != 0 or not raw.exists():
        return [f"py-spy failed ({child.code}): {(workdir / 'pyspy.log').read_text()[-2000:]}"]
    lines = summarise_stacks(raw.read_text(), top)
    if keep is not None:
        shutil.copy(raw, keep)
    kept = f"; raw samples (collapsed stacks) in {keep}" if keep else ""
    return [f"py-spy at 200 Hz, podyn took {child.seconds:.1f} s under the profiler{kept}", *lines]


def _frame_name(frame: str) -> str:
    # "scan_page (podyn_py/source/dynamodb.py:156)" → "scan_page (podyn_py/source/dynamodb.py)"
    name = re.sub(r":\d+\)$", ")", frame.strip())
    return re.sub(r"\(/.*?/site-packages/", "(", name).replace(f"({REPO}/", "(")


def _package(frame: str) -> str:
    match = re.search(r"\(([^)]*)\)", _frame_name(frame))
    path = match.group(1) if match else ""
    if path.startswith("podyn_py/"):
        return "/".join(path.split("/")[:2]).removesuffix(".py")
    return path.split("/")[0].removesuffix(".py") if "/" in path else f"stdlib:{path.removesuffix('.py')}"


def summarise_stacks(raw: str, top: int) -> list[str]:
    """py-spy's collapsed stacks → top functions by own time, by total time, and own time by package."""
    own: Counter[str] = Counter()
    total: Counter[str] = Counter()
    packages: Counter[str] = Counter()
    samples = 0
    for line in raw.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [f for f in stack.split(";") if "(" in f and not f.startswith(("process ", "thread "))]
        if not frames:
            continue
        samples += count
        own[_frame_name(frames[-1])] += count
        packages[_package(frames[-1])] += count
        # Thread start-up frames are on every worker's stack and say nothing.
        for name in {_frame_name(f) for f in frames if _package(f) not in ("stdlib:threading", "concurrent")}:
            total[name] += count
    if not samples:
        return ["no samples"]

    def table(title: str, counter: Counter[str]) -> list[str]:
        return [title] + [f"  {100 * n / samples:5.1f}%  {name}" for name, n in counter.most_common(top)]

    return [
        f"{samples} samples of non-idle threads",
        *table("own time by package:", packages),
        *table("own time (leaf function):", own),
        *table("total time (function on the stack):", total),
    ]


# -- report -------------------------------------------------------------------------------------------------------


def machine_context(pg_url: str) -> dict[str, Any]:
    with psycopg.connect(pg_url) as conn:
        row = conn.execute("SHOW server_version").fetchone()
    meminfo = Path("/proc/meminfo").read_text()
    mem_kb = int(re.search(r"MemTotal:\s+(\d+)", meminfo).group(1))  # type: ignore[union-attr]
    return {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%MZ"),
        "nproc": len(os.sched_getaffinity(0)),
        "memory_gib": round(mem_kb / 1024 / 1024, 1),
        "cpu": _cpu_model(),
        "python": platform.python_version(),
        "psycopg": psycopg.__version__,
        "libpq": psycopg.pq.version(),
        "boto3": boto3.__version__,
        "botocore": botocore.__version__,
        "orjson": orjson.__version__,
        "postgres": row[0] if row else "?",
        "dynamodb_local": find_dynamodb_local().name,
        "podyn_commit": podyn_commit(),
    }


def podyn_commit(tree: Path = REPO) -> str:
    """The commit of ``tree``'s podyn_py, marked when the working tree differs from it."""
    # Read-only git calls (GIT_OPTIONAL_LOCKS=0: not even an index refresh); others may be editing the tree.
    git_env = dict(os.environ, GIT_OPTIONAL_LOCKS="0")
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=tree, env=git_env, capture_output=True, text=True, check=False
    ).stdout.strip()
    dirty = subprocess.run(
        ["git", "diff", "--quiet", "HEAD", "--", "podyn_py"], cwd=tree, env=git_env, capture_output=True, check=False
    ).returncode
    return (commit or "?") + ("+uncommitted-changes" if dirty else "")


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.machine()


def short_context(ctx: dict[str, Any]) -> str:
    return (
        f"[{ctx['nproc']} cpu, {ctx['memory_gib']} GiB, {ctx['date']}, py {ctx['python']}, psycopg {ctx['psycopg']},"
        f" boto3 {ctx['boto3']}, pg {ctx['postgres'].split()[0]}, {ctx['dynamodb_local']}]"
    )


def figure_line(figure: Figure, items: int, ctx: dict[str, Any]) -> str:
    cpu = " ".join(f"{who} {figure.cpu[who]:.1f}" for who in ("client", "dynamodb", "postgres") if who in figure.cpu)
    per_100k = sum(v for v in figure.cpu.values() if v == v) * 100_000 / figure.items if figure.items else 0.0
    text = (
        f"{figure.name:<20} {figure.rate:>9,.0f} items/s  {figure.items:>9,} items in {figure.seconds:7.1f} s"
        f"  cpu-s {cpu} ({per_100k:.1f} cpu-s/100k items)  load {figure.load_avg:.1f}"
    )
    if figure.name.startswith("podyn"):
        load = figure.extra.get("load_seconds")
        text += f"  peak RSS {figure.extra['peak_rss_mb']:.0f} MB (RSS over the run {figure.extra['rss_trend_mb']})"
        text += f"  rows {figure.extra['rows']:,}"
        text += "" if figure.extra["rows"] == items else f" != {items:,} MISMATCH"
        if load:
            text += f"  (load alone {items / load:,.0f} items/s in {load:.1f} s)"
        text += f"  podyn {figure.extra['commit']}"
    if "note" in figure.extra:
        text += f"  ({figure.extra['note']})"
    if "runs" in figure.extra:
        text += f"  (best of {figure.extra['runs']} runs: {figure.extra['rates']} items/s)"
    if figure.name.startswith("podyn ["):
        text += f"  ({figure.extra['argv']})"
    return f"{text}  {short_context(ctx)}"


#: Issue 12's client-CPU target, and the bare scan's client CPU on the machine it was set on (2026-11-30: the orjson
#: scan of 100k items, bench/RESULTS.md): a machine whose CPU-second does less work scales both.
CLIENT_CPU_TARGET = 3.5
BARE_SCAN_CLIENT_CPU = 2.1


def process_lines(figures: dict[str, Figure], counts: list[int], items: int) -> list[str]:
    """One line per -P N (its best round): items/s, against -P 1's, and client CPU-seconds per 100k items (the
    parent and all its children), against issue 12's target of 3.5 as it stands and scaled to this machine by the
    bare scan measured in the same run (``source orjson``: CLIENT_CPU_TARGET / BARE_SCAN_CLIENT_CPU of its
    client CPU)."""
    lines = []
    base = figures.get("podyn -P 1")
    names = [("podyn", "no -P")] if "podyn" in figures else []
    names += [(f"podyn -P {count}", f"-P {count}") for count in counts]
    names += [(name, name.removeprefix("podyn ")) for name in figures if name.startswith("podyn [")]
    for name, label in names:
        figure = figures[name]
        client = figure.cpu.get("client", float("nan")) * 100_000 / items
        ratio = f", {figure.rate / base.rate:.2f}× -P 1" if base is not None and base.rate else ""
        total = sum(v for v in figure.cpu.values() if v == v) * 100_000 / items
        lines.append(
            f"PROCS   {label}: {figure.rate:,.0f} items/s{ratio}; client {client:.2f} CPU-s per 100k items"
            f" (target {CLIENT_CPU_TARGET}: {verdict(client, CLIENT_CPU_TARGET, at_least=False)}"
            f"{scaled_target(figures, client, items)}); client, DynamoDB Local and PostgreSQL together"
            f" {total:.1f} CPU-s per 100k"
        )
    return lines


def scaled_target(figures: dict[str, Figure], client: float, items: int) -> str:
    """The client-CPU target on this machine: the bare scan's client CPU in this run times the target's ratio to the
    bare scan where it was set."""
    bare = figures.get("source orjson")
    if bare is None or "client" not in bare.cpu:
        return ""
    scan = bare.cpu["client"] * 100_000 / items
    target = scan * CLIENT_CPU_TARGET / BARE_SCAN_CLIENT_CPU
    return (
        f"; scaled to this machine by the bare scan's {scan:.2f} here against {BARE_SCAN_CLIENT_CPU} there:"
        f" {target:.2f}, {verdict(client, target, at_least=False)}"
    )


def verdict(value: float, target: float, *, at_least: bool) -> str:
    met = value >= target if at_least else value < target
    return "MET" if met else "MISSED"


def target_lines(figures: dict[str, Figure], items: int) -> list[str]:
    podyn = figures["podyn"]
    lines = []
    for name in ("source ceiling", "source orjson"):
        if name not in figures:
            continue
        source = figures[name]
        ratio = podyn.rate / source.rate
        load = podyn.extra.get("load_seconds")
        alone = f"; load alone, without start-up and --schema: {items / load / source.rate:.2f}" if load else ""
        lines.append(
            f"TARGET podyn / {name} = {ratio:.2f} (target >= {TARGET_VS_SOURCE}{alone}):"
            f" {verdict(ratio, TARGET_VS_SOURCE, at_least=True)}"
        )
    if "naive" in figures:
        ratio = podyn.rate / figures["naive"].rate
        lines.append(
            f"TARGET podyn / naive = {ratio:.2f} (target >= {TARGET_VS_NAIVE}):"
            f" {verdict(ratio, TARGET_VS_NAIVE, at_least=True)}"
        )
    rss = podyn.extra["peak_rss_mb"]
    scope = "highest of the runs" + (
        "" if items >= TARGET_RSS_AT_ITEMS else f"; target for {TARGET_RSS_AT_ITEMS:,} items"
    )
    lines.append(
        f"TARGET podyn peak RSS = {rss:.0f} MB (target < {TARGET_RSS_MB} MB; {scope}):"
        f" {verdict(rss, TARGET_RSS_MB, at_least=False)}"
    )
    if "postgres ceiling" in figures:
        lines.append(f"INFO   podyn / postgres ceiling = {podyn.rate / figures['postgres ceiling'].rate:.2f}")
    return lines


# -- main ---------------------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=100_000, help="items in the table (default 100000)")
    parser.add_argument(
        "--segments", type=int, default=8, help="scan threads, podyn's -n (default 8); segments: 4 × that, as podyn"
    )
    parser.add_argument("--fill-threads", type=int, default=8, help="BatchWriteItem threads filling the table")
    parser.add_argument(
        "--naive-sample",
        type=int,
        default=100_000,
        help="the naive script stops after this many items and its rate is extrapolated (default 100000)",
    )
    parser.add_argument(
        "--repeat", type=int, default=1, help="rounds of the figures; each figure keeps its best round (default 1)"
    )
    parser.add_argument("--skip", action="append", default=[], choices=["naive", "postgres", "source"])
    parser.add_argument(
        "--explore",
        action="store_true",
        help="also measure the botocore-parsed scan split over 2 processes, and the memory one Scan page takes",
    )
    parser.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="LABEL:[ENV=V ...] [ARG ...]",
        help="also run podyn with this environment and these extra arguments, into its own database (repeatable),"
        " e.g. 'n4:-n 4' or 'arenas2:MALLOC_ARENA_MAX=2'",
    )
    parser.add_argument(
        "--processes",
        type=lambda text: [int(n) for n in text.split(",") if n.strip()],
        default=[],
        metavar="N,N,...",
        help="also run podyn with -P N for each N, side by side in every round, each into its own database"
        " (e.g. 1,2): items/s and client CPU-seconds per 100k items summed over the processes",
    )
    parser.add_argument("--profile", action="store_true", help="also run podyn under py-spy and print the top lines")
    parser.add_argument("--profile-top", type=int, default=20, help="lines per profile table (default 20)")
    parser.add_argument("--profile-raw", type=Path, help="keep py-spy's raw samples (collapsed stacks) in this file")
    parser.add_argument("--podyn-arg", action="append", default=[], help="extra argument for podyn (repeatable)")
    parser.add_argument("--json", type=Path, help="also write the figures and context to this JSON file")
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="podyn-bench-"))
    workdir.chmod(0o755)  # the COPY file inside must be readable by the postgres OS user
    try:
        with LocalDynamoDB() as ddb, LocalPostgres() as pg:
            run(args, ddb, pg, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def say(text: str) -> None:
    print(text, flush=True)


def run(args: argparse.Namespace, ddb: LocalDynamoDB, pg: LocalPostgres, workdir: Path) -> None:
    items, segments = args.items, args.segments
    pg_url = pg.create_database("bench")
    databases = ["bench"]
    ctx = machine_context(pg_url)
    say("CONTEXT " + " ".join(f"{k}={v}" for k, v in ctx.items()))
    sizes = [item_size(i) for i in range(0, items, max(1, items // 1000))]
    say(f"ITEMS   {items:,} items of ~{sum(sizes) / len(sizes):.0f} bytes (DynamoDB size rules), table {TABLE}")

    meter = CpuMeter(ddb, pg)
    client = boto_client(ddb.endpoint_url, pool=max(segments, args.fill_threads))
    raw_client = boto_client(ddb.endpoint_url, pool=segments)
    parse_scan_with_orjson(raw_client)
    runs: dict[str, list[Figure]] = {}
    copy_file = workdir / "ceiling.copy"

    def report(figure: Figure, tag: str = "RUN") -> None:
        runs.setdefault(figure.name, []).append(figure)
        say(f"{tag:<7} {figure_line(figure, items, ctx)}")

    def source_figure(name: str, note: str, scan: Callable[[], int]) -> Figure:
        figure = Figure(name, 0, 0.0, extra={"note": note})
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        with measured(meter, figure):
            figure.items = scan()
        after = resource.getrusage(resource.RUSAGE_CHILDREN)  # worker processes, when the scan used them
        figure.cpu["client"] += after.ru_utime + after.ru_stime - children.ru_utime - children.ru_stime
        return figure

    def new_database(name: str) -> str:
        databases.append(name)
        return pg.create_database(name)

    try:
        create_source_table(client)
        fill = Figure("fill (BatchWrite)", items, 0.0, extra={"note": f"{args.fill_threads} threads"})
        with measured(meter, fill):
            fill_source_table(client, items, args.fill_threads)
        report(fill, "SETUP")

        # DynamoDB Local's JIT has compiled the write path by now, not the scan path: warm it up, unmeasured.
        warm = min(items, 100_000) // (SEGMENTS_PER_CONNECTION * segments) + 1
        note = "not a figure: JIT warm-up"
        report(source_figure("warm-up scan", note, lambda: scan_ceiling(client, segments, stop_after=warm)), "SETUP")

        if "postgres" not in args.skip:
            copy_size = write_copy_file(copy_file, items)
            create_pg_table(pg_url, "ceiling_items")
        if "naive" not in args.skip:
            create_pg_table(pg_url, "naive_items")

        scan_shape = f"{SEGMENTS_PER_CONNECTION * segments} segments, {segments} threads, Limit {MAX_PAGE_ITEMS}"
        # Rounds interleave the figures, so that a burst of other load on the machine hits one run, not a figure.
        for round_ in range(args.repeat):
            if "source" not in args.skip:
                note = f"{scan_shape}, botocore parser"
                report(source_figure("source ceiling", note, lambda: scan_ceiling(client, segments)))
                note = f"{scan_shape}, orjson parse of the body"
                report(source_figure("source orjson", note, lambda: scan_ceiling(raw_client, segments)))

            if "naive" not in args.skip:
                with psycopg.connect(pg_url, autocommit=True) as conn:
                    conn.execute("TRUNCATE naive_items")
                figure = Figure("naive", 0, 0.0)
                with measured(meter, figure):
                    figure.items = naive_copy(boto_client(ddb.endpoint_url), pg_url, min(items, args.naive_sample))
                if figure.items < items:
                    figure.extra["note"] = (
                        f"first {figure.items:,} items only; extrapolated to {items:,}:"
                        f" {items / figure.rate / 60:.1f} min"
                    )
                report(figure)

            if "postgres" not in args.skip:
                with psycopg.connect(pg_url, autocommit=True) as conn:
                    conn.execute("TRUNCATE ceiling_items")
                note = f"server COPY FROM file, {copy_size / MB:.0f} MB"
                figure = Figure("postgres ceiling", 0, 0.0, extra={"note": note})
                with measured(meter, figure):
                    figure.items = server_copy(pg_url, copy_file)
                report(figure)

            url = new_database(f"bench_podyn_{round_}")
            log_path = workdir / f"podyn_{round_}.log"
            report(run_podyn(meter, ddb.endpoint_url, url, items, segments, args.podyn_arg, log_path))
            say("PODYN   " + _podyn_summary(log_path))

            for count in args.processes:
                url = new_database(f"bench_p{count}_{round_}")
                figure = run_podyn(
                    meter, ddb.endpoint_url, url, items, segments, [*args.podyn_arg, "-P", str(count)],
                    workdir / f"podyn_p{count}_{round_}.log", name=f"podyn -P {count}",
                )  # fmt: skip
                report(figure, "PROCS")
            for text in args.variant:  # in every round too, so that a variant meets the same bursts of load
                label, env, extra = parse_variant(text)
                database = f"bench_{re.sub(r'[^a-z0-9]+', '_', label.lower())}_{round_}"
                figure = run_podyn(
                    meter, ddb.endpoint_url, new_database(database), items, segments, [*args.podyn_arg, *extra],
                    workdir / f"{database}.log", name=f"podyn [{label}]", env=env,
                )  # fmt: skip
                report(figure, "VARIANT")

        if args.explore:
            note = f"{SEGMENTS_PER_CONNECTION * segments} segments over 2 processes, botocore parser"
            scan = functools.partial(scan_in_processes, ddb.endpoint_url, segments, 2)
            report(source_figure("source 2 processes", note, scan), "EXPLORE")
            say("EXPLORE one Scan page in Python (tracemalloc): " + page_memory(ddb.endpoint_url))

        figures = {name: best_of(found) for name, found in runs.items()}
        variants = [name for name in figures if name.startswith("podyn [")]
        for name in ("source ceiling", "source orjson", "naive", "postgres ceiling", "podyn", *variants):
            if name in figures:
                say(f"FIGURE  {figure_line(figures[name], items, ctx)}")
        for count in args.processes:
            say(f"FIGURE  {figure_line(figures[f'podyn -P {count}'], items, ctx)}")
        for line in process_lines(figures, args.processes, items):
            say(line)
        targets = target_lines(figures, items)
        for line in targets:
            say(line)

        profile: list[str] = []
        if args.profile:
            profile_url = new_database("bench_profile")
            profile = profile_podyn(
                ddb.endpoint_url, profile_url, segments, args.podyn_arg, workdir, args.profile_top, args.profile_raw
            )
            for line in profile:
                say("PROFILE " + line)

        if args.json:
            result = {
                "context": ctx,
                "items": items,
                "runs": [asdict(f) | {"rate": f.rate} for found in runs.values() for f in found],
                "figures": [asdict(f) | {"rate": f.rate} for f in figures.values()],
                "targets": targets,
                "profile": profile,
            }
            args.json.write_text(json.dumps(result, indent=2, default=str))
    finally:
        copy_file.unlink(missing_ok=True)
        drop_everything(client, pg, databases)
        client.close()
        raw_client.close()


def best_of(runs: list[Figure]) -> Figure:
    """The fastest run of a figure; the others only slowed down by other load on the machine."""
    best = max(runs, key=lambda f: f.rate)
    if len(runs) == 1:
        return best
    extra = best.extra | {"runs": len(runs), "rates": ", ".join(f"{f.rate:,.0f}" for f in runs)}
    if "peak_rss_mb" in extra:  # memory is judged by the worst run, not the fastest
        extra["peak_rss_mb"] = max(f.extra["peak_rss_mb"] for f in runs)
    return Figure(best.name, best.items, best.seconds, dict(best.cpu), best.load_avg, extra)


def _podyn_summary(log_path: Path) -> str:
    lines = [line for line in log_path.read_text(errors="replace").splitlines() if "loaded," in line]
    return lines[-1].split(": ", 1)[-1] if lines else "(no summary line in podyn's log)"


def drop_everything(client: Any, pg: LocalPostgres, databases: list[str]) -> None:
    """Drop what the run made (the servers are stopped afterwards anyway, but a slow DynamoDB Local shutdown with
    a million items is avoided by deleting the table first)."""
    with contextlib.suppress(Exception):
        client.delete_table(TableName=TABLE)
    with contextlib.suppress(Exception), psycopg.connect(pg.url, autocommit=True) as conn:
        for name in databases:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


if __name__ == "__main__":
    main()
