#!/usr/bin/env python
"""podyn's load with ``-P 1``, ``-P 2``, ... against a DynamoDB stand-in that costs little CPU (issue 12).

Run from the repository root, never as a test:

    .venv/bin/python bench/bench_replay_scan.py --items 100000 --processes 1,2 --rounds 2

bench_load.py's ``-P N`` figures are capped by DynamoDB Local, which shares the machine's cores and spends more CPU
than podyn does. Here the source is a small HTTP server (``--serve``, a separate process started by this script)
that answers DescribeTable and Scan as DynamoDB does, from response bodies prepared in memory before the runs: N
items of about 300 bytes (bench_load's ``plain_item``), dealt to the segments of a parallel scan round-robin, cut
into pages of the request's ``Limit``; a page's ``LastEvaluatedKey`` is its last item's key, and the next request's
``ExclusiveStartKey`` finds the next page in a dict. The pages of the expected ``TotalSegments`` (4 x ``-n``, podyn's
default) and ``Limit`` (1,000) are built at start; any other split is built once, when first asked for. Signatures
are not checked. An operation the server does not know is answered 400 ``UnknownOperationException`` and named on its
stderr (the log under the work directory), so a call podyn starts making shows up.

Each run is ``python -m podyn_py -s -d -t bench_items --endpoint-url <server> -u <fresh database> --no-progress -n 8
-P N``; the process counts alternate within each round. Per run it prints: items/s over the whole run (process start
to exit), items/s of the load alone (``podyn.tables.load_finished_at - load_started_at``), podyn's client CPU
seconds per 100k items (the parent and every child it reaped: ``getrusage(RUSAGE_CHILDREN)`` before and after;
``wait4``'s figure is printed beside it), the server's and PostgreSQL's CPU seconds (``/proc``, postmaster plus its
backends), the 1-minute load average at the end, and the row count, which must equal N.
"""

from __future__ import annotations

import argparse
import http.server
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from bench_load import (
    REPO,
    TABLE,
    count_rows,
    item_size,
    plain_item,
    podyn_commit,
    podyn_env,
    podyn_load_seconds,
    proc_cpu,
    run_child,
    to_wire,
)

from podyn_py.config import SEGMENTS_PER_CONNECTION
from podyn_py.demo_services import LocalPostgres
from podyn_py.source.scan import MAX_PAGE_ITEMS

CONTENT_TYPE = "application/x-amz-json-1.0"
TABLE_ARN = f"arn:aws:dynamodb:us-east-1:000000000000:table/{TABLE}"


# -- the server ---------------------------------------------------------------------------------------------------


class ScanPages:
    """Scan response bodies, keyed by (TotalSegments, Segment, Limit, ExclusiveStartKey's id or None)."""

    def __init__(self, items: int) -> None:
        self.items = items
        self.ids = [f"item-{i:09d}" for i in range(items)]
        self.wire = [orjson.dumps({k: to_wire(v) for k, v in plain_item(i).items()}) for i in range(items)]
        self.size = sum(item_size(i) for i in range(items))
        self._pages: dict[tuple[int, int, int, str | None], bytes] = {}
        self._built: set[tuple[int, int]] = set()
        self._lock = threading.Lock()

    def build(self, total: int, limit: int) -> None:
        with self._lock:
            if (total, limit) in self._built:
                return
            for segment in range(total):
                mine = range(segment, self.items, total)
                start: str | None = None
                for first in range(0, len(mine), limit):
                    chunk = mine[first : first + limit]
                    last = self.ids[chunk[-1]]
                    more = first + limit < len(mine)
                    self._pages[total, segment, limit, start] = self._body(chunk, last if more else None)
                    start = last
                if not mine:
                    self._pages[total, segment, limit, None] = self._body(range(0), None)
            self._built.add((total, limit))

    def _body(self, chunk: range, last_key: str | None) -> bytes:
        count = str(len(chunk)).encode()
        parts = [b'{"Items":[', b",".join(self.wire[i] for i in chunk), b'],"Count":', count, b',"ScannedCount":']
        parts.append(count)
        units = sum(len(self.wire[i]) for i in chunk) / 8192  # eventually consistent: half a unit per 4 KB
        parts.append(b',"ConsumedCapacity":' + orjson.dumps({"TableName": TABLE, "CapacityUnits": units}))
        if last_key is not None:
            parts.append(b',"LastEvaluatedKey":' + orjson.dumps({"id": {"S": last_key}}))
        parts.append(b"}")
        return b"".join(parts)

    def page(self, total: int, segment: int, limit: int, start: str | None) -> bytes | None:
        self.build(total, limit)
        return self._pages.get((total, segment, limit, start))

    def describe_table(self) -> bytes:
        return orjson.dumps(
            {
                "Table": {
                    "TableName": TABLE,
                    "TableStatus": "ACTIVE",
                    "TableArn": TABLE_ARN,
                    "TableId": "00000000-0000-4000-8000-000000000012",
                    "CreationDateTime": 1_700_000_000.0,
                    "AttributeDefinitions": [{"AttributeName": "id", "AttributeType": "S"}],
                    "KeySchema": [{"AttributeName": "id", "KeyType": "HASH"}],
                    "ItemCount": self.items,
                    "TableSizeBytes": self.size,
                    "BillingModeSummary": {"BillingMode": "PAY_PER_REQUEST"},
                    "ProvisionedThroughput": {"ReadCapacityUnits": 0, "WriteCapacityUnits": 0},
                }
            }
        )


def error_body(code: str, message: str) -> bytes:
    return orjson.dumps({"__type": f"com.amazonaws.dynamodb.v20120810#{code}", "message": message})


def make_handler(pages: ScanPages) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as podyn's connection pool expects

        def do_POST(self) -> None:  # noqa: N802 (http.server's spelling)
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            operation = (self.headers.get("X-Amz-Target") or "").rpartition(".")[2]
            request = orjson.loads(body) if body else {}
            if request.get("TableName", TABLE) != TABLE:
                name = request["TableName"]
                return self.answer(
                    400, error_body("ResourceNotFoundException", f"Requested resource not found: {name}")
                )
            if operation == "DescribeTable":
                return self.answer(200, pages.describe_table())
            if operation == "Scan":
                start = request.get("ExclusiveStartKey")
                page = pages.page(
                    int(request.get("TotalSegments", 1)),
                    int(request.get("Segment", 0)),
                    int(request.get("Limit", MAX_PAGE_ITEMS)),
                    start["id"]["S"] if start else None,
                )
                if page is None:
                    return self.answer(400, error_body("ValidationException", f"no page starts at {start}"))
                return self.answer(200, page)
            sys.stderr.write(f"unknown operation {operation!r}: {body[:300]!r}\n")
            sys.stderr.flush()
            self.answer(400, error_body("UnknownOperationException", f"not served here: {operation}"))

        def answer(self, status: int, body: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Type", CONTENT_TYPE)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("x-amzn-RequestId", "replay")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (http.server's spelling)
            pass

    return Handler


def serve(items: int, total: int) -> None:
    """Build the pages, print the port on stdout, answer until killed."""
    pages = ScanPages(items)
    pages.build(total, MAX_PAGE_ITEMS)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), make_handler(pages))
    server.daemon_threads = True
    print(server.server_address[1], flush=True)
    server.serve_forever()


# -- the runs -----------------------------------------------------------------------------------------------------


@dataclass
class Run:
    processes: int
    round: int
    seconds: float
    load_seconds: float | None
    client_cpu: float  # RUSAGE_CHILDREN delta
    wait4_cpu: float
    server_cpu: float
    postgres_cpu: float
    load_avg: float
    rows: int

    def line(self, items: int) -> str:
        per = 100_000 / items
        load = f"{items / self.load_seconds:7,.0f}" if self.load_seconds else "      ?"
        return (
            f"RUN  -P {self.processes}  round {self.round}  {items / self.seconds:7,.0f} items/s wall"
            f"  {load} items/s load  client {self.client_cpu * per:5.2f} CPU-s/100k (wait4 {self.wait4_cpu * per:5.2f})"
            f"  server {self.server_cpu * per:4.2f}  postgres {self.postgres_cpu * per:5.2f} CPU-s/100k"
            f"  load avg {self.load_avg:4.2f}  rows {self.rows:,}  wall {self.seconds:.1f} s"
        )


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def postmaster_pid(pg: LocalPostgres) -> int:
    return int((pg.datadir / "postmaster.pid").read_text().split("\n", 1)[0])


def run_once(
    pg: LocalPostgres, endpoint: str, server_pid: int, processes: int, round_: int, connections: int, workdir: Path
) -> Run:
    database = f"replay_p{processes}_r{round_}"
    url = pg.create_database(database)
    argv = [sys.executable, "-m", "podyn_py", "-s", "-d", "-t", TABLE, "--endpoint-url", endpoint, "-u", url]
    argv += ["--no-progress", "-n", str(connections), "-P", str(processes)]
    postmaster = postmaster_pid(pg)
    server_before, pg_before, own_before = proc_cpu(server_pid), proc_cpu(postmaster, children=True), children_cpu()
    log = workdir / f"{database}.log"
    child = run_child(argv, log, timeout=3600, env=podyn_env())
    client = children_cpu() - own_before
    time.sleep(0.3)  # ended backends are reaped by the postmaster a moment later; their CPU then shows in cutime
    server, postgres = proc_cpu(server_pid) - server_before, proc_cpu(postmaster, children=True) - pg_before
    if child.code != 0:
        raise SystemExit(f"podyn exited with {child.code}; log:\n{log.read_text()[-4000:]}")
    return Run(
        processes, round_, child.seconds, podyn_load_seconds(url), client, child.cpu, server, postgres,
        os.getloadavg()[0], count_rows(url, TABLE),
    )  # fmt: skip


def start_server(items: int, total: int, workdir: Path) -> tuple[subprocess.Popen[str], str]:
    argv = [sys.executable, __file__, "--serve", "--items", str(items), "--segments", str(total)]
    stderr = (workdir / "server.log").open("w")
    server = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=stderr, text=True, cwd=REPO)
    assert server.stdout is not None
    port = server.stdout.readline().strip()
    if not port:
        server.wait()
        raise SystemExit(f"the replay server did not start:\n{(workdir / 'server.log').read_text()}")
    return server, f"http://127.0.0.1:{port}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--processes", default="1,2", help="comma-separated -P values (default 1,2)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("-n", "--connections", type=int, default=8)
    parser.add_argument("--segments", type=int, help="--serve: TotalSegments to prepare (default 4 x -n)")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    total = args.segments or SEGMENTS_PER_CONNECTION * args.connections
    if args.serve:
        serve(args.items, total)
        return
    counts = [int(p) for p in args.processes.split(",")]
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="replay-scan-") as tmp, LocalPostgres() as pg:
        workdir = Path(tmp)
        server, endpoint = start_server(args.items, total, workdir)
        try:
            print(
                f"SETUP  {args.items:,} items  -n {args.connections}  segments {total}  processes {counts}"
                f"  rounds {args.rounds}  {len(os.sched_getaffinity(0))} cpu  podyn {podyn_commit()}"
                f"  server ready in {time.perf_counter() - started:.1f} s  load avg {os.getloadavg()}",
                flush=True,
            )
            runs: list[Run] = []
            for round_ in range(1, args.rounds + 1):
                for processes in counts:
                    run = run_once(pg, endpoint, server.pid, processes, round_, args.connections, workdir)
                    runs.append(run)
                    print(run.line(args.items), flush=True)
                    if run.rows != args.items:
                        raise SystemExit(f"-P {processes}: {run.rows:,} rows, not {args.items:,}")
            unknown = (workdir / "server.log").read_text().strip()
            print(f"SERVER  unknown operations: {unknown or 'none'}")
        finally:
            server.kill()
            server.wait()
    per = 100_000 / args.items
    for processes in counts:
        mine = [r for r in runs if r.processes == processes]
        wall = statistics.mean(args.items / r.seconds for r in mine)
        load = statistics.mean(args.items / r.load_seconds for r in mine if r.load_seconds)
        print(
            f"MEAN  -P {processes}  {wall:7,.0f} items/s wall  {load:7,.0f} items/s load"
            f"  client {statistics.mean(r.client_cpu for r in mine) * per:5.2f}"
            f"  server {statistics.mean(r.server_cpu for r in mine) * per:4.2f}"
            f"  postgres {statistics.mean(r.postgres_cpu for r in mine) * per:5.2f} CPU-s/100k"
            f"  load avg {statistics.mean(r.load_avg for r in mine):4.2f}  ({len(mine)} runs)"
        )


if __name__ == "__main__":
    main()
