#!/usr/bin/env python
"""One-off experiment behind two suggestions in bench/RESULTS.md: podyn's load with small patches applied in memory.

Run from the repository root, never as a test:

    .venv/bin/python bench/try_load_patches.py --items 100000

It starts its own DynamoDB Local and PostgreSQL, fills bench_load's table, then runs ``podyn -s -d`` (as a
subprocess, 8 connections, 8 segments, --scan-rate 0) into a fresh database once per patch set:

  none          podyn as it is in the working tree
  del           the segment loop drops the previous page (items, rows) before fetching the next one
  limit=N       every Scan carries Limit=N even without --scan-rate (DynamoDB Local then answers in time
                proportional to N instead of to the rest of the segment; the real DynamoDB pages at 1 MB anyway)
  del+limit=N   both

The patches are applied by this script's ``--child`` mode, which edits podyn_py.load in memory and then runs the
CLI; no file of the package is changed. They target the load loop as of commit 25d0f6b and stop with an error if
that code has moved on.
"""

from __future__ import annotations

import argparse
import inspect
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench_load import (
    MB,
    TABLE,
    boto_client,
    count_rows,
    create_source_table,
    fill_source_table,
    podyn_options,
    rss_trend,
    run_child,
    scan_ceiling,
)

from podyn_py.local import LocalDynamoDB, LocalPostgres

LOOP_END = "            key = new_key\n"


def _with_default_limit(original: Callable[[Any], int | None], fixed: int) -> Callable[[Any], int]:
    def limit(self: Any) -> int:
        return original(self) or fixed

    return limit


def patch_and_run(patches: str) -> None:
    """In the child: patch podyn_py.load, then run the CLI with the remaining arguments."""
    import podyn_py.load as load
    from podyn_py.cli import main
    from podyn_py.source.scan import PageSizer

    for patch in filter(None, patches.split("+")):
        if patch == "del":
            source = inspect.getsource(load._load_segment)
            if LOOP_END not in source or "page = dynamodb.scan_page(" not in source:
                raise SystemExit("podyn_py.load._load_segment has changed; update this experiment")
            source = source.replace(LOOP_END, LOOP_END + "            del page, rows, rejected, schema\n")
            exec(compile(source, load.__file__, "exec"), load.__dict__)
        elif patch.startswith("limit="):
            PageSizer.limit = _with_default_limit(PageSizer.limit, int(patch.removeprefix("limit=")))  # type: ignore[method-assign,assignment]
        elif patch != "none":
            raise SystemExit(f"unknown patch {patch!r}")
    main()


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "--child":
        patches = sys.argv[2]
        del sys.argv[1:3]
        sys.argv[0] = "podyn"
        patch_and_run(patches)
        return

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--segments", type=int, default=8)
    parser.add_argument("--patches", default="none,del,limit=1000,del+limit=1000", help="comma-separated patch sets")
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="podyn-patches-"))
    try:
        with LocalDynamoDB() as ddb, LocalPostgres() as pg:
            client = boto_client(ddb.endpoint_url, pool=8)
            try:
                create_source_table(client)
                fill_source_table(client, args.items, 8)
                scan_ceiling(client, args.segments, stop_after=min(args.items, 100_000) // args.segments + 1)
                for number, patches in enumerate(args.patches.split(",")):
                    url = pg.create_database(f"patches_{number}")
                    argv = [sys.executable, __file__, "--child", patches, "--endpoint-url", ddb.endpoint_url]
                    argv += ["-u", url, *podyn_options(args.segments, [])]
                    child = run_child(argv, workdir / f"{number}.log", timeout=3 * 3600)
                    if child.code != 0:
                        raise SystemExit(f"{patches}: exit {child.code}\n{(workdir / f'{number}.log').read_text()}")
                    rows = count_rows(url, TABLE)
                    print(
                        f"PATCH {patches:<16} {args.items / child.seconds:>8,.0f} items/s  {child.seconds:6.1f} s"
                        f"  cpu-s {child.cpu:5.1f}  peak RSS {child.peak_rss / MB:4.0f} MB"
                        f" (RSS over the run {rss_trend(child.rss)})  rows {rows:,}",
                        flush=True,
                    )
            finally:
                client.delete_table(TableName=TABLE)
                client.close()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
