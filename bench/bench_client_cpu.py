#!/usr/bin/env python
"""What podyn's own hot path costs in CPU, without DynamoDB: parse a Scan page, convert its items, COPY the rows.

Run from the repository root, never as a test:

    .venv/bin/python bench/bench_client_cpu.py --items 100000
    PYTHONPATH=/tmp/before .venv/bin/python bench/bench_client_cpu.py --items 100000   # another tree, same bench
    .venv/bin/python bench/bench_client_cpu.py --items 100000 --mode jsonb --profile   # cProfile, one thread

bench_load.py measures the whole load, but DynamoDB Local shares the machine's cores and costs more CPU than podyn,
so a few percent of podyn's CPU drown in its noise. This replays the Scan response bodies of bench_load's items
(recorded in memory, as JSON bytes, 1,000 items a page) through the code the load runs for each page:
``fastpath._parse`` (orjson), ``RowConverter.convert`` and ``copy_rows`` (binary COPY, one transaction a page),
from ``--threads`` threads as podyn's segment workers do, into a fresh table of a LocalPostgres it starts. It
reports this process's CPU seconds per 100k items (every thread; PostgreSQL's backends are not counted), split
into the parse alone (measured apart) and the rest. HTTP, signing and the metadata statements of a page are not
in it: bench_load.py's ``source orjson`` figure is their ceiling.

Every figure line carries the tree it ran (``podyn_py.__file__``), so runs of two trees can be compared.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import functools
import gc
import importlib
import io
import pstats
import statistics
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import orjson
from bench_load import TABLE, plain_item, to_wire

import podyn_py
from podyn_py.conversion import RowConverter
from podyn_py.core.schema import ConversionMode, KeyAttribute, TableSpec
from podyn_py.demo_services import LocalPostgres
from podyn_py.source.fastpath import _parse
from podyn_py.target.postgres import PostgresTarget, copy_rows

PAGE_ITEMS = 1000


def scan_bodies(items: int) -> list[bytes]:
    """Scan response bodies as DynamoDB sends them (wire-shaped items, JSON), PAGE_ITEMS items each."""
    bodies = []
    for start in range(0, items, PAGE_ITEMS):
        page = [
            {name: to_wire(value) for name, value in plain_item(i).items()}
            for i in range(start, min(items, start + PAGE_ITEMS))
        ]
        bodies.append(orjson.dumps({"Items": page, "Count": len(page), "ScannedCount": len(page)}))
    return bodies


def cpu_of(work: Callable[[], None]) -> tuple[float, float]:
    """(CPU seconds of this process, wall seconds) spent in ``work``."""
    gc.collect()
    cpu, wall = time.process_time(), time.perf_counter()
    work()
    return time.process_time() - cpu, time.perf_counter() - wall


def parse_all(bodies: list[bytes], threads: int) -> None:
    with ThreadPoolExecutor(threads) as pool:
        for _ in pool.map(lambda body: len(_parse(body)["Items"]), bodies):
            pass


def load_all(bodies: list[bytes], threads: int, target: PostgresTarget, converter: RowConverter) -> None:
    """Each thread takes pages in turn on its own connection, as the load's segment workers do."""
    local = threading.local()
    opened: list[Any] = []
    lock = threading.Lock()

    def page(body: bytes) -> None:
        conn = getattr(local, "conn", None)
        if conn is None:
            conn = local.conn = target.connect()
            with lock:
                opened.append(conn)
        schema, rows, rejected = converter.convert(_parse(body)["Items"])
        assert not rejected
        with conn.transaction():
            copy_rows(conn, schema, rows)

    try:
        if threads == 1:  # in this thread, for cProfile
            for body in bodies:
                page(body)
            return
        with ThreadPoolExecutor(threads) as pool:
            for _ in pool.map(page, bodies):
                pass
    finally:
        for conn in opened:
            conn.close()


def fresh_table(target: PostgresTarget, mode: ConversionMode) -> RowConverter:
    spec = TableSpec(TABLE, "public", TABLE, KeyAttribute("id", "S"), mode=mode)
    with target.connect(autocommit=True) as conn:
        conn.execute(f"DROP TABLE IF EXISTS public.{TABLE}")
        conn.execute("DROP SCHEMA IF EXISTS podyn CASCADE")
    target.ensure_metadata()
    schema = target.prepare_table(spec, create=True, citus=False)
    return RowConverter(schema, target)


def count_rows(target: PostgresTarget) -> int:
    with target.connect() as conn:
        row = conn.execute(f"SELECT count(*) FROM public.{TABLE}").fetchone()
    assert row is not None
    return int(row[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--threads", type=int, default=8, help="worker threads, as podyn's -n (default 8)")
    parser.add_argument("--mode", action="append", choices=[m.value for m in ConversionMode])
    parser.add_argument("--repeat", type=int, default=3, help="rounds; each figure keeps its median (default 3)")
    parser.add_argument("--profile", action="store_true", help="print cProfile's top functions (one thread)")
    parser.add_argument(
        "--gc", help="garbage collector thresholds, e.g. 700,10,10 (default: what podyn's CLI sets, if the tree does)"
    )
    parser.add_argument("--gc-freeze", action="store_true", help="gc.freeze() before measuring")
    args = parser.parse_args()
    if args.gc:
        gc.set_threshold(*(int(t) for t in args.gc.split(",")))
    else:
        with contextlib.suppress(ImportError):  # trees before issue 12 leave the collector alone
            importlib.import_module("podyn_py.collector").tune_for_bulk_work()
    modes = [ConversionMode(m) for m in args.mode or [m.value for m in ConversionMode]]
    tree = Path(podyn_py.__file__).resolve().parent.parent
    bodies = scan_bodies(args.items)
    per = 100_000 / args.items
    print(f"TREE    {tree}  items {args.items:,}  threads {args.threads}  {len(bodies)} pages  gc {gc.get_threshold()}")
    with LocalPostgres() as pg:
        target = PostgresTarget(pg.url)
        if args.gc_freeze:
            gc.freeze()
        parse = [cpu_of(lambda: parse_all(bodies, args.threads))[0] for _ in range(args.repeat)]
        print(f"FIGURE  parse alone           {statistics.median(parse) * per:5.2f} CPU-s/100k  (runs {parse})")
        for mode in modes:
            runs = []
            for _ in range(args.repeat):
                converter = fresh_table(target, mode)
                converter.convert(_parse(bodies[0])["Items"])  # the columns, made before the clock starts
                runs.append(cpu_of(functools.partial(load_all, bodies, args.threads, target, converter)))
                if count_rows(target) != args.items:
                    raise SystemExit(f"{mode}: {count_rows(target)} rows, not {args.items}")
            cpu = statistics.median(r[0] for r in runs)
            wall = statistics.median(r[1] for r in runs)
            print(
                f"FIGURE  {mode.value:7} parse+convert+COPY {cpu * per:5.2f} CPU-s/100k  "
                f"({args.items / wall:,.0f} items/s; cpu runs {[round(r[0], 2) for r in runs]})  tree {tree}"
            )
            if args.profile:
                converter = fresh_table(target, mode)
                profile = cProfile.Profile()
                profile.runcall(load_all, bodies, 1, target, converter)
                out = io.StringIO()
                pstats.Stats(profile, stream=out).sort_stats("tottime").print_stats(25)
                print(out.getvalue())


if __name__ == "__main__":
    main()
