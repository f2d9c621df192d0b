#!/usr/bin/env python
"""Benchmark of a load from an export in S3 (``--data --from-export``) against the Scan load of the same table, in
the same run.

Run from the repository root, never as a test (needs moto[server], the test extra):

    .venv/bin/python bench/bench_export.py --items 100000 --repeat 3
    .venv/bin/python bench/bench_export.py --items 100000 --files 1,8 --formats DYNAMODB_JSON,ION

It starts its own DynamoDB Local, PostgreSQL and moto's S3 (``podyn_py.demo_services``), fills a table with
bench_load's ~300-byte items (BatchWriteItem, no stream), and writes exports of the same items to S3 in the
documented layout (tests/exports.py describes it): one per format and file count. Then, in interleaved rounds,
each into a fresh database:

  podyn scan                 ``podyn -s -d -n N``: the parallel Scan load (fast path), from DynamoDB Local
  podyn export FORMAT xF     ``podyn -s -d -n N --from-export ...``: the same items from an export of F files

For each: items/s over the subprocess's wall time (and over the load alone, from podyn.tables), client CPU-seconds
per 100k items (podyn's own), the CPU DynamoDB Local, PostgreSQL and moto spent, and podyn's peak RSS (VmHWM).
An export of 1 file against one of many shows that memory does not follow the size of the files. Every process it
starts is stopped before it exits.
"""

from __future__ import annotations

import argparse
import base64
import gzip
import hashlib
import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Context, Decimal
from pathlib import Path
from typing import Any

import psycopg
from amazon.ion import simpleion
from amazon.ion.core import IonType
from amazon.ion.simple_types import IonPyList
from bench_load import (
    MB,
    TABLE,
    CpuMeter,
    Figure,
    boto_client,
    create_source_table,
    fill_source_table,
    machine_context,
    measured,
    plain_item,
    podyn_commit,
    podyn_env,
    proc_cpu,
    rss_trend,
    run_child,
    short_context,
    to_wire,
)

from podyn_py.demo_services import LocalDynamoDB, LocalPostgres, LocalS3

BUCKET = "bench-exports"
TARGET_VS_SCAN = 1.5
_DECIMALS = Context(prec=60)


@dataclass(frozen=True)
class Export:
    label: str
    url: str
    files: int
    compressed_bytes: int


def ion_value(value: dict[str, Any]) -> Any:
    """A wire value as the Ion DynamoDB writes (numbers as decimals, 600 as 6d2; sets annotated)."""
    ((tag, raw),) = value.items()
    if tag == "N":
        return Decimal(raw).normalize(_DECIMALS)
    if tag == "M":
        return {k: ion_value(v) for k, v in raw.items()}
    if tag == "L":
        return [ion_value(v) for v in raw]
    if tag == "SS":
        return IonPyList.from_value(IonType.LIST, list(raw), annotations=("$dynamodb_SS",))
    return raw  # S, BOOL


def write_export(s3: Any, items: int, output_format: str, files: int, table_arn: str) -> Export:
    """An export of bench_load's items 0..items-1 in ``files`` data files, as DynamoDB lays it out."""
    export_id = f"{int(time.time() * 1000):014d}-{os.urandom(4).hex()}"
    folder = f"bench/AWSDynamoDB/{export_id}/"
    entries = []
    compressed = 0
    for number in range(files):
        lines = []
        for i in range(number, items, files):
            wire = to_wire(plain_item(i))["M"]
            if output_format == "ION":
                text = simpleion.dumps({"Item": {k: ion_value(v) for k, v in wire.items()}}, binary=False)
                lines.append(text.encode() + b"\n")
            else:
                lines.append(json.dumps({"Item": wire}).encode() + b"\n")
        body = gzip.compress(b"".join(lines), compresslevel=6)
        compressed += len(body)
        key = f"{folder}data/{os.urandom(13).hex()}.json.gz"
        s3.put_object(Bucket=BUCKET, Key=key, Body=body)
        entries.append(
            {
                "itemCount": len(lines),
                "md5Checksum": base64.b64encode(hashlib.md5(body).digest()).decode(),
                "etag": hashlib.md5(body).hexdigest() + "-1",
                "dataFileS3Key": key,
            }
        )
    s3.put_object(
        Bucket=BUCKET, Key=f"{folder}manifest-files.json", Body="".join(json.dumps(e) + "\n" for e in entries)
    )
    when = datetime.now(UTC) + timedelta(minutes=3)
    summary = {
        "version": "2020-06-30",
        "exportArn": f"{table_arn}/export/{export_id}",
        "tableArn": table_arn,
        "exportTime": when.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "itemCount": items,
        "billedSizeBytes": compressed,
        "outputFormat": output_format,
        "exportType": "FULL_EXPORT",
    }
    s3.put_object(Bucket=BUCKET, Key=f"{folder}manifest-summary.json", Body=json.dumps(summary))
    label = f"export {output_format} x{files}"
    return Export(label, f"s3://{BUCKET}/{folder}", files, compressed)


def run_podyn(meter: CpuMeter, s3: LocalS3, name: str, argv: list[str], pg_url: str, items: int, log: Path) -> Figure:
    figure = Figure(name, items, 0.0, extra={"argv": " ".join(argv[3:])})
    moto_before = proc_cpu(s3.pid)
    with measured(meter, figure, client_cpu=False):
        child = run_child(argv, log, timeout=6 * 3600, env=podyn_env())
    if child.code != 0:
        raise SystemExit(f"podyn exited with {child.code}; log:\n{log.read_text()[-4000:]}")
    figure.seconds = child.seconds
    figure.cpu["client"] = child.cpu
    figure.cpu["s3"] = proc_cpu(s3.pid) - moto_before
    figure.extra["peak_rss_mb"] = child.peak_rss / MB
    figure.extra["rss_trend_mb"] = rss_trend(child.rss)
    with psycopg.connect(pg_url) as conn:
        count = conn.execute(f'SELECT count(*) FROM "{TABLE}"').fetchone()
        load = conn.execute(
            "SELECT extract(epoch FROM load_finished_at - load_started_at) FROM podyn.tables WHERE source_table = %s",
            (TABLE,),
        ).fetchone()
    figure.extra["rows"] = count[0] if count else -1
    figure.extra["load_seconds"] = float(load[0]) if load and load[0] is not None else None
    figure.extra["commit"] = podyn_commit()
    return figure


def line(figure: Figure, items: int, ctx: dict[str, Any]) -> str:
    cpu = " ".join(
        f"{who} {figure.cpu[who]:.1f}" for who in ("client", "dynamodb", "postgres", "s3") if who in figure.cpu
    )
    client = figure.cpu["client"] * 100_000 / items
    load = figure.extra.get("load_seconds")
    alone = f"  (load alone {items / load:,.0f} items/s in {load:.1f} s)" if load else ""
    rows = figure.extra["rows"]
    return (
        f"{figure.name:<26} {figure.rate:>8,.0f} items/s  {items:,} items in {figure.seconds:6.1f} s{alone}"
        f"  client {client:.2f} cpu-s/100k items  cpu-s {cpu}  peak RSS {figure.extra['peak_rss_mb']:.0f} MB"
        f" (over the run {figure.extra['rss_trend_mb']})  rows {rows:,}{'' if rows == items else ' MISMATCH'}"
        f"  load {figure.load_avg:.1f}  podyn {figure.extra['commit']}  {short_context(ctx)}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--connections", type=int, default=8, help="podyn's -n (default 8)")
    parser.add_argument("--files", default="8", help="data files per export, comma-separated (default 8)")
    parser.add_argument("--formats", default="DYNAMODB_JSON,ION", help="export formats, comma-separated")
    parser.add_argument("--repeat", type=int, default=1, help="interleaved rounds; each figure keeps its best")
    args = parser.parse_args()
    with LocalDynamoDB() as ddb, LocalPostgres() as pg, LocalS3() as s3, tempfile.TemporaryDirectory() as work:
        run(args, ddb, pg, s3, Path(work))


def run(args: argparse.Namespace, ddb: LocalDynamoDB, pg: LocalPostgres, s3: LocalS3, work: Path) -> None:
    items = args.items
    ctx = machine_context(pg.create_database("bench_context"))
    print("CONTEXT " + " ".join(f"{k}={v}" for k, v in ctx.items()), flush=True)
    client = boto_client(ddb.endpoint_url, pool=8)
    create_source_table(client)
    started = time.perf_counter()
    fill_source_table(client, items, 8)
    print(f"FILL    {items:,} items in {time.perf_counter() - started:.1f} s", flush=True)
    table_arn = client.describe_table(TableName=TABLE)["Table"]["TableArn"]
    s3_client = s3.client()
    s3_client.create_bucket(Bucket=BUCKET)
    exports = []
    for output_format in args.formats.split(","):
        for files in (int(f) for f in args.files.split(",")):
            started = time.perf_counter()
            exports.append(write_export(s3_client, items, output_format, files, table_arn))
            print(
                f"EXPORT  {exports[-1].label}: {exports[-1].compressed_bytes / MB:.1f} MB gzip in {files} files,"
                f" written in {time.perf_counter() - started:.1f} s",
                flush=True,
            )
    meter = CpuMeter(ddb, pg)
    base = [
        sys.executable, "-m", "podyn_py", "--endpoint-url", ddb.endpoint_url, "--no-progress",
        "-t", TABLE, "-s", "-d", "-n", str(args.connections),
    ]  # fmt: skip
    best: dict[str, Figure] = {}
    runs: dict[str, list[float]] = {}
    number = 0
    for round_ in range(args.repeat):
        loads: list[tuple[str, list[str]]] = [("podyn scan", [])]
        loads += [(e.label, ["--from-export", e.url, "--s3-endpoint-url", s3.endpoint_url]) for e in exports]
        for name, extra in loads:
            number += 1
            url = pg.create_database(f"bench_{number}")
            argv = [*base[:6], "-u", url, *base[6:], *extra]
            figure = run_podyn(meter, s3, name, argv, url, items, work / f"{number}.log")
            print(f"RUN {round_ + 1}   {line(figure, items, ctx)}", flush=True)
            runs.setdefault(name, []).append(figure.rate)
            if name not in best or figure.rate > best[name].rate:
                best[name] = figure
    for name, figure in best.items():
        rates = ", ".join(f"{r:,.0f}" for r in runs[name])
        print(f"FIGURE  {line(figure, items, ctx)}  (best of {len(runs[name])}: {rates})", flush=True)
    scan = best["podyn scan"]
    for export in exports:
        figure = best[export.label]
        ratio = figure.rate / scan.rate
        load, scan_load = figure.extra.get("load_seconds"), scan.extra.get("load_seconds")
        alone = f"; load alone {scan_load / load:.2f}" if load and scan_load else ""
        verdict = "MET" if ratio >= TARGET_VS_SCAN else "MISSED"
        print(
            f"TARGET  {export.label} / podyn scan = {ratio:.2f} (target >= {TARGET_VS_SCAN}{alone}): {verdict};"
            f" client cpu-s per 100k items {figure.cpu['client'] * 1e5 / items:.2f} vs"
            f" {scan.cpu['client'] * 1e5 / items:.2f}; peak RSS {figure.extra['peak_rss_mb']:.0f} vs"
            f" {scan.extra['peak_rss_mb']:.0f} MB",
            flush=True,
        )


if __name__ == "__main__":
    main()
