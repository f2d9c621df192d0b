"""Change replication benchmark: applied changes/s from a backlog, and write-to-visible lag at fixed write rates.

    .venv/bin/python bench/bench_changes.py [--backlog 20000] [--rates 100,500,1000,max] [--seconds 60]

Starts its own DynamoDB Local and PostgreSQL (nothing else should run: they share the 2 cores with podyn), creates
a stream-enabled table, loads it with ``podyn -s -d``, then:

1. backlog: with podyn stopped, makes N updates; starts ``podyn --changes`` and measures how fast the backlog drains
   (records applied per second, from podyn.shards, between the first and the last applied batch);
2. lag: for each write rate, a writer makes puts, updates and deletes at that rate for ``--seconds`` while
   ``podyn --changes`` runs; every put/update carries ``written_at`` (client clock), and a trigger on the target
   table records when PostgreSQL received the row: lag = received - written (same machine, same clock). ``max``
   writes as fast as DynamoDB Local accepts from 8 threads. Puts and deletes go in BatchWriteItem requests of up to
   25 (``--single-writes``: one request each), since one client cannot send 1,000 requests/s here.

With ``--processes 1,2``, each figure is measured for each count of podyn processes (``podyn -c -P N``), one
after the other in the same run. DynamoDB Local keeps one shard per stream, so a second process has nothing to
read there; ``--scripted-shards K`` adds the same figures on a stream of K shards scripted at the HTTP boundary
(``tests/scripted_stream_server.py``: DynamoDB calls relayed to DynamoDB Local, DynamoDB Streams answered from a
script this process writes): a backlog of ``--scripted-backlog`` records spread over the shards, then records
appended at ``--scripted-rate`` per second, each carrying ``written_at``; ``--scripted-calls`` sets how long each
GetRecords takes and how many records it returns at most (a reader bound by call latency rather than CPU).

Prints one line per figure, with the machine, date and versions.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import random
import signal
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import boto3
import psycopg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

sys.path.insert(0, str(ROOT / "tests"))

from scripted_stream_server import ScriptedStreamServer, StreamScript  # noqa: E402

from podyn_py.demo_services import LocalDynamoDB, LocalPostgres, find_dynamodb_local  # noqa: E402

ENV = dict(os.environ, AWS_ACCESS_KEY_ID="podyn", AWS_SECRET_ACCESS_KEY="podyn", AWS_DEFAULT_REGION="us-east-1")
TABLE = "bench_changes"
SCRIPTED_TABLE = "bench_scripted"
KEYS = 2000


def header(pg_url: str) -> str:
    with psycopg.connect(pg_url) as conn:
        server = conn.execute("SHOW server_version").fetchone()[0]  # type: ignore[index]
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return (
        f"# {datetime.date.today()} {platform.node()} nproc={os.cpu_count()} mem={memory:.0f}GiB"
        f" python={platform.python_version()} psycopg={psycopg.__version__} boto3={boto3.__version__}"
        f" postgresql={server} dynamodb-local={find_dynamodb_local().name}"
    )


def podyn(endpoint: str, url: str, *args: str, log: Path | None = None, table: str = TABLE) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "podyn_py", "--endpoint-url", endpoint, "-u", url, "-t", table, "--no-progress"]
    stderr = open(log, "w") if log else subprocess.DEVNULL  # noqa: SIM115 - lives as long as the process
    return subprocess.Popen([*command, *args], cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL, stderr=stderr)


def applied(url: str, table: str = TABLE) -> int:
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT coalesce(sum(records_applied), 0) FROM podyn.shards WHERE target_table = %s", (table,)
        ).fetchone()
    return int(row[0]) if row else 0


def write_at_rate(client: Any, rate: float | None, seconds: float, rng: random.Random, *, batch: bool) -> int:
    """Puts, updates and deletes at ``rate`` per second (None: as fast as possible) for ``seconds``.

    Half are UpdateItem (one request each); the rest are puts (4 in 10) and deletes (1 in 10), one request each, or
    with ``batch`` grouped into BatchWriteItem requests of up to 25, sent at least every 50 ms: a single client
    cannot make 1,000 requests/s against DynamoDB Local on 2 shared cores, but 1,000 writes/s this way. Each item's
    ``written_at`` is the time its request is sent.
    """
    stop = time.monotonic() + seconds
    count = 0
    pending: dict[str, str] = {}  # key → "put" or "delete", for the next BatchWriteItem
    pending_since = time.monotonic()

    def update(key: dict[str, Any]) -> None:
        client.update_item(
            TableName=TABLE,
            Key=key,
            UpdateExpression="ADD n :one SET written_at = :now",
            ExpressionAttributeValues={":one": {"N": "1"}, ":now": {"N": repr(time.time())}},
        )

    def put(key: dict[str, Any]) -> dict[str, Any]:
        return key | {"written_at": {"N": repr(time.time())}, "payload": {"S": "x" * 200}}

    def single(key: dict[str, Any], kind: str) -> None:
        if kind == "put":
            client.put_item(TableName=TABLE, Item=put(key))
        else:
            client.delete_item(TableName=TABLE, Key=key)

    def batch_write(writes: dict[str, str]) -> None:
        requests = [
            {"PutRequest": {"Item": put({"pk": {"S": k}})}}
            if kind == "put"
            else {"DeleteRequest": {"Key": {"pk": {"S": k}}}}
            for k, kind in writes.items()
        ]
        while requests:
            unprocessed = client.batch_write_item(RequestItems={TABLE: requests}).get("UnprocessedItems", {})
            requests = unprocessed.get(TABLE, [])

    with ThreadPoolExecutor(8) as pool:
        started = time.monotonic()
        futures = []

        def flush() -> None:
            nonlocal pending, pending_since
            if pending:
                futures.append(pool.submit(batch_write, pending))
            pending, pending_since = {}, time.monotonic()

        while time.monotonic() < stop:
            if rate is not None:
                due = started + count / rate
                delay = due - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
            name = f"k{rng.randrange(KEYS)}"
            choice = rng.random()
            if choice < 0.5:
                futures.append(pool.submit(update, {"pk": {"S": name}}))
            elif not batch:
                futures.append(pool.submit(single, {"pk": {"S": name}}, "put" if choice < 0.9 else "delete"))
            else:
                if name in pending:  # one request may not write a key twice
                    flush()
                pending[name] = "put" if choice < 0.9 else "delete"
                if len(pending) == 25:
                    flush()
            if batch and time.monotonic() - pending_since > 0.05:
                flush()
            count += 1
            if len(futures) > 64:
                futures.pop(0).result()
        flush()
        for f in futures:
            f.result()
    return count


def add_lag_trigger(url: str, table: str) -> None:
    """Record, for every row version with a ``written_at``, when PostgreSQL received it."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            f"""CREATE TABLE IF NOT EXISTS bench_lag (written_at double precision, received_at double precision);
                CREATE OR REPLACE FUNCTION bench_lag() RETURNS trigger LANGUAGE plpgsql AS $$
                BEGIN
                  IF NEW.written_at > 0 THEN
                    INSERT INTO bench_lag VALUES (NEW.written_at, extract(epoch FROM clock_timestamp()));
                  END IF;
                  RETURN NEW;
                END $$;
                CREATE TRIGGER bench_lag AFTER INSERT OR UPDATE ON {table}
                FOR EACH ROW EXECUTE FUNCTION bench_lag();"""
        )


def start_changes(endpoint: str, url: str, processes: int, log: Path, table: str = TABLE) -> subprocess.Popen[bytes]:
    """``podyn -c -P N``: one command, N processes sharing the table's shards (no -P for one: releases before
    issue 12 have no such option, and the same script measures them)."""
    return podyn(endpoint, url, "-c", *(["-P", str(processes)] if processes > 1 else []), log=log, table=table)


def stop(service: subprocess.Popen[bytes]) -> None:
    service.send_signal(signal.SIGTERM)  # -P passes it on to every process
    service.wait(60)


def wait_ready(url: str, table: str, processes: int, shards: int, timeout: float = 180) -> None:
    """Until the ``processes`` workers have joined and hold fair shares of the ``shards`` shards."""
    deadline = time.monotonic() + timeout
    most = -(-shards // processes)
    while time.monotonic() < deadline:
        with psycopg.connect(url) as conn:
            workers = conn.execute(
                """SELECT count(*) FROM podyn.workers WHERE target_table = %s AND role = 'changes'
                   AND heartbeat_at > now() - interval '60 seconds'""",
                (table,),
            ).fetchone()
            held = conn.execute(
                """SELECT owner, count(*) FROM podyn.leases WHERE target_table = %s AND kind = 'stream shard'
                   AND owner IS NOT NULL AND expires_at > now() GROUP BY owner""",
                (table,),
            ).fetchall()
        counts = [int(n) for _, n in held]
        if workers and workers[0] == processes and sum(counts) >= shards and max(counts) <= most:
            return
        time.sleep(0.2)
    raise TimeoutError(f"{processes} processes did not share {shards} shards of {table} within {timeout} s")


def label(processes: int) -> str:
    return f"{processes} process{'es' if processes > 1 else ''}"


def load_now() -> str:
    return f"load {os.getloadavg()[0]:.1f}"


def podyn_cpu(service: subprocess.Popen[bytes]) -> dict[int, float]:
    """CPU-seconds used so far by each podyn process of a command: itself, or the processes -P started."""
    ticks = os.sysconf("SC_CLK_TCK")

    def cpu(pid: int) -> float:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return 0.0
        return (int(fields[11]) + int(fields[12])) / ticks  # utime, stime

    try:
        children = [int(p) for p in Path(f"/proc/{service.pid}/task/{service.pid}/children").read_text().split()]
    except OSError:
        children = []
    return {pid: cpu(pid) for pid in children or [service.pid]}


def drain(endpoint: str, url: str, processes: int, written: int, log: Path, table: str = TABLE) -> str:
    """Start ``processes`` podyn processes on a backlog of ``written`` records; the drain rate and the CPU-seconds
    each process spent meanwhile, as a line."""
    before = applied(url, table)
    service = start_changes(endpoint, url, processes, log, table)
    samples: list[tuple[float, int, dict[int, float]]] = []
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        done = applied(url, table) - before
        samples.append((time.monotonic(), done, podyn_cpu(service)))
        if done >= written:
            break
        time.sleep(0.05)
    load = load_now()
    stop(service)
    # From the first sample that saw applied records to the last: what the first sample saw was applied before
    # the clock started, so it is not counted (nor the CPU spent until then: start-up, imports).
    first, seen_first, cpu_first = next(s for s in samples if s[1] > 0)
    last, total, cpu_last = samples[-1]
    counted = total - seen_first
    spent = [cpu_last[pid] - cpu_first.get(pid, 0.0) for pid in sorted(cpu_last)]
    return (
        f"{total} records applied, {counted} of them in {last - first:.2f} s ="
        f" {counted / max(last - first, 1e-9):,.0f} changes/s, podyn CPU {' + '.join(f'{c:.2f}' for c in spent)} s"
        f" = {sum(spent) / max(counted, 1) * 10_000:.2f} CPU-s per 10k ({load})"
    )


def lags(url: str) -> str:
    with psycopg.connect(url) as conn:
        received = sorted(r[0] for r in conn.execute("SELECT received_at - written_at FROM bench_lag"))
    if not received:
        return "no lag samples"
    p50 = statistics.median(received)
    p99 = received[min(len(received) - 1, int(len(received) * 0.99))]
    return f"{len(received)} rows received, lag p50 {p50:.3f} s p99 {p99:.3f} s max {received[-1]:.3f} s"


def truncate_lags(url: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("TRUNCATE bench_lag")


def update_backlog(client: Any, count: int) -> None:
    with ThreadPoolExecutor(8) as pool:
        list(
            pool.map(
                lambda i: client.update_item(
                    TableName=TABLE,
                    Key={"pk": {"S": f"k{i % KEYS}"}},
                    UpdateExpression="ADD n :one",
                    ExpressionAttributeValues={":one": {"N": "1"}},
                ),
                range(count),
            )
        )


class ScriptWriter:
    """Appends records to a scripted stream: each key always to the same shard (no split here), counters per key."""

    def __init__(self, script: StreamScript, shards: int) -> None:
        self.script = script
        self.shards = [script.open_shard() for _ in range(shards)]
        self.counters = [0] * KEYS
        self.written = 0

    def put(self, key: int, *, written_at: float | None = None) -> None:
        self.counters[key] += 1
        self.written += 1
        extra = {"payload": {"S": "x" * 200}}
        if written_at is not None:
            extra["written_at"] = {"N": repr(written_at)}
        self.script.put(self.shards[key % len(self.shards)], f"k{key}", self.counters[key], **extra)

    def at_rate(self, rate: float, seconds: float, rng: random.Random) -> int:
        started = time.monotonic()
        count = 0
        while (now := time.monotonic()) < started + seconds:
            due = started + count / rate
            if due > now:
                time.sleep(due - now)
            self.put(rng.randrange(KEYS), written_at=time.time())
            count += 1
        return count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backlog", type=int, default=20000)
    parser.add_argument("--rates", default="100,500,1000,max")
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument(
        "--single-writes", action="store_true", help="one request per put and delete (default: BatchWriteItem)"
    )
    parser.add_argument("--processes", default="1", help="podyn processes (-P), one figure each: e.g. 1,2")
    parser.add_argument("--scripted-shards", type=int, default=0, help="also on a scripted stream of K shards")
    parser.add_argument("--scripted-backlog", type=int, default=40000)
    parser.add_argument(
        "--scripted-calls",
        default="0:1000:1000",
        help="one set of scripted figures each: SECONDS:RECORDS:RATE, how long a GetRecords takes, the most records it"
        " returns, and the records appended per second for the lag figures; e.g. 0:1000:1000,0.1:100:500",
    )
    parser.add_argument("--skip-local", action="store_true", help="only the scripted stream")
    args = parser.parse_args()
    counts = [int(n) for n in args.processes.split(",")]
    logs = Path("/tmp/podyn-bench-changes")
    logs.mkdir(exist_ok=True)
    with LocalDynamoDB() as ddb, LocalPostgres() as pg:
        url = pg.url
        print(header(url), flush=True)
        client = ddb.client("dynamodb")
        client.create_table(
            TableName=TABLE,
            KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
            AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}],
            BillingMode="PAY_PER_REQUEST",
            StreamSpecification={"StreamEnabled": True, "StreamViewType": "NEW_AND_OLD_IMAGES"},
        )
        for start in range(0, KEYS, 25):
            client.batch_write_item(
                RequestItems={
                    TABLE: [
                        {"PutRequest": {"Item": {"pk": {"S": f"k{i}"}, "n": {"N": "0"}, "written_at": {"N": "0"}}}}
                        for i in range(start, min(start + 25, KEYS))
                    ]
                }
            )
        load = podyn(ddb.endpoint_url, url, "-s", "-d")
        assert load.wait() == 0, "load failed"
        add_lag_trigger(url, TABLE)
        rng = random.Random(1)
        if args.skip_local:
            args.rates = ""
            counts_local: list[int] = []
        else:
            counts_local = counts

        # 1. Drain a backlog: records already in the stream when podyn starts.
        for processes in counts_local:
            update_backlog(client, args.backlog)
            line = drain(ddb.endpoint_url, url, processes, args.backlog, logs / f"backlog-{processes}.log")
            print(f"backlog, {label(processes)}: {line} (target >= 5,000)", flush=True)

        # 2. Lag at fixed rates.
        for rate_text in filter(None, args.rates.split(",")):
            rate = None if rate_text == "max" else float(rate_text)
            for processes in counts:
                truncate_lags(url)
                service = start_changes(ddb.endpoint_url, url, processes, logs / f"rate-{rate_text}-{processes}.log")
                wait_ready(url, TABLE, processes, 1)  # DynamoDB Local: one shard
                started = time.monotonic()
                count = write_at_rate(client, rate, args.seconds, rng, batch=not args.single_writes)
                elapsed = time.monotonic() - started
                time.sleep(5)  # let the tail arrive
                load_text = load_now()
                stop(service)
                print(
                    f"rate {rate_text}, {label(processes)}: {count / elapsed:,.0f} writes/s for {elapsed:.0f} s,"
                    f" {lags(url)} ({load_text}) (target p99 < 2 s at 1,000 writes/s)",
                    flush=True,
                )
        client.delete_table(TableName=TABLE)

        # 3. The same on a stream of several shards, scripted at the HTTP boundary (DynamoDB Local keeps one).
        if args.scripted_shards:
            scripted(args, ddb, url, counts, logs, rng)


def scripted(
    args: argparse.Namespace, ddb: LocalDynamoDB, url: str, counts: list[int], logs: Path, rng: random.Random
) -> None:
    client = ddb.client("dynamodb")
    client.create_table(
        TableName=SCRIPTED_TABLE,
        KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}],
        BillingMode="PAY_PER_REQUEST",
        StreamSpecification={"StreamEnabled": True, "StreamViewType": "NEW_AND_OLD_IMAGES"},
    )
    script = StreamScript(SCRIPTED_TABLE)
    writer = ScriptWriter(script, args.scripted_shards)
    with ScriptedStreamServer(ddb.endpoint_url, [script]) as server:
        endpoint = server.endpoint_url
        load = podyn(endpoint, url, "-s", "-d", table=SCRIPTED_TABLE)
        assert load.wait() == 0, "load failed"
        for key in range(KEYS):  # every column exists before the lag trigger is made
            writer.put(key, written_at=0.0)
        service = start_changes(endpoint, url, 1, logs / "scripted-first.log", table=SCRIPTED_TABLE)
        deadline = time.monotonic() + 120
        while applied(url, SCRIPTED_TABLE) < KEYS and time.monotonic() < deadline:
            time.sleep(0.2)
        stop(service)
        add_lag_trigger(url, SCRIPTED_TABLE)
        for calls in args.scripted_calls.split(","):
            latency, page, rate = float(calls.split(":")[0]), int(calls.split(":")[1]), float(calls.split(":")[2])
            script.latency, script.page_limit = latency, page
            shards = f"{args.scripted_shards} scripted shards, GetRecords {latency * 1000:.0f} ms for up to {page}"
            for processes in counts:
                for _ in range(args.scripted_backlog):
                    writer.put(rng.randrange(KEYS))
                log = logs / f"scripted-backlog-{processes}-{calls}.log"
                line = drain(endpoint, url, processes, args.scripted_backlog, log, SCRIPTED_TABLE)
                print(f"backlog, {shards}, {label(processes)}: {line}", flush=True)
            lag_at_rate(args, writer, endpoint, url, counts, logs, rng, shards, rate)
    client.delete_table(TableName=SCRIPTED_TABLE)


def lag_at_rate(
    args: argparse.Namespace,
    writer: ScriptWriter,
    endpoint: str,
    url: str,
    counts: list[int],
    logs: Path,
    rng: random.Random,
    shards: str,
    rate: float,
) -> None:
    """Records appended to the scripted stream at ``rate`` while 1, 2... processes replicate, each count starting
    with nothing left to apply."""
    for processes in counts:
        service = start_changes(endpoint, url, processes, logs / f"scripted-rate-{processes}.log", SCRIPTED_TABLE)
        wait_ready(url, SCRIPTED_TABLE, processes, args.scripted_shards)
        deadline = time.monotonic() + 600
        while applied(url, SCRIPTED_TABLE) < writer.written and time.monotonic() < deadline:
            time.sleep(0.2)
        truncate_lags(url)
        started = time.monotonic()
        count = writer.at_rate(rate, args.seconds, rng)
        elapsed = time.monotonic() - started
        time.sleep(5)
        load_text = load_now()
        stop(service)
        print(
            f"rate {rate:.0f}, {shards}, {label(processes)}: {count / elapsed:,.0f} records/s for"
            f" {elapsed:.0f} s, {lags(url)} ({load_text})",
            flush=True,
        )


if __name__ == "__main__":
    main()
