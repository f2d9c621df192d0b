#!/usr/bin/env python
"""What one Scan of a whole table costs DynamoDB Local, by TotalSegments and Limit: a property of the emulator.

Run from the repository root, never as a test:

    .venv/bin/python bench/bench_scan_segments.py --items 100000 --segments 1,2,8,32 --limits 0,2000

It starts its own DynamoDB Local, fills a table with bench_load's ~300-byte items, then scans the whole table once
per (Limit, segment count), from ONE thread, segment after segment, parsing with orjson so that the client's cost
stays small. The wall time and the CPU seconds of DynamoDB Local's JVM are what each choice costs the server.

What it showed (bench/RESULTS.md): without a Limit, DynamoDB Local answers each page in time proportional to
what is left of the segment, so a whole scan costs it about items² / segments; with a Limit, each page costs about
Limit, and the scan is linear. The real DynamoDB has no such cost; a client that sends a Limit loses nothing.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from bench_load import (
    TABLE,
    boto_client,
    create_source_table,
    fill_source_table,
    java_pid,
    parse_scan_with_orjson,
    proc_cpu,
    scan_ceiling,
)

from podyn_py.demo_services import LocalDynamoDB


def scan_sequentially(client: Any, total_segments: int, limit: int | None) -> tuple[int, int]:
    """Every segment in turn from one thread: (items, pages)."""
    items = pages = 0
    for segment in range(total_segments):
        request: dict[str, Any] = {"TableName": TABLE, "Segment": segment, "TotalSegments": total_segments}
        if limit:
            request["Limit"] = limit
        while True:
            response = client.scan(**request)
            pages += 1
            items += len(response["Items"])
            if "LastEvaluatedKey" not in response:
                break
            request["ExclusiveStartKey"] = response["LastEvaluatedKey"]
    return items, pages


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--segments", default="1,2,8,32", help="comma-separated TotalSegments values")
    parser.add_argument(
        "--limits", default="0,2000", help="comma-separated Scan Limit values; 0: none, DynamoDB's 1 MB pages"
    )
    args = parser.parse_args()
    counts = [int(s) for s in args.segments.split(",")]
    limits = [int(s) or None for s in args.limits.split(",")]

    with LocalDynamoDB() as ddb:
        client = boto_client(ddb.endpoint_url, pool=8)
        try:
            create_source_table(client)
            fill_source_table(client, args.items, 8)
            jvm = java_pid(ddb.port)
            assert jvm is not None, "DynamoDB Local's JVM not found"
            scan_ceiling(client, 8, stop_after=min(args.items, 100_000) // 8 + 1)  # JIT warm-up
            raw = boto_client(ddb.endpoint_url)
            parse_scan_with_orjson(raw)
            for limit in limits:
                for total in counts:
                    cpu = proc_cpu(jvm)
                    started = time.perf_counter()
                    items, pages = scan_sequentially(raw, total, limit)
                    seconds = time.perf_counter() - started
                    print(
                        f"SEGMENTS {total:>3} Limit {limit or '1 MB':>5}: {items:,} items in {pages} pages,"
                        f" {seconds:6.1f} s wall, DynamoDB Local {proc_cpu(jvm) - cpu:6.1f} cpu-s"
                        f" ({items / seconds:,.0f} items/s)",
                        flush=True,
                    )
        finally:
            client.delete_table(TableName=TABLE)
            client.close()


if __name__ == "__main__":
    main()
