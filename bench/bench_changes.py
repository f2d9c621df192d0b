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

from podyn_py.demo_services import LocalDynamoDB, LocalPostgres, find_dynamodb_local  # noqa: E402

ENV = dict(os.environ, AWS_ACCESS_KEY_ID="podyn", AWS_SECRET_ACCESS_KEY="podyn", AWS_DEFAULT_REGION="us-east-1")
TABLE = "bench_changes"
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


def podyn(endpoint: str, url: str, *args: str, log: Path | None = None) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "podyn_py", "--endpoint-url", endpoint, "-u", url, "-t", TABLE, "--no-progress"]
    stderr = open(log, "w") if log else subprocess.DEVNULL  # noqa: SIM115 - lives as long as the process
    return subprocess.Popen([*command, *args], cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL, stderr=stderr)


def applied(url: str) -> int:
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT coalesce(sum(records_applied), 0) FROM podyn.shards").fetchone()
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backlog", type=int, default=20000)
    parser.add_argument("--rates", default="100,500,1000,max")
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument(
        "--single-writes", action="store_true", help="one request per put and delete (default: BatchWriteItem)"
    )
    args = parser.parse_args()
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
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(
                f"""CREATE TABLE bench_lag (written_at double precision, received_at double precision);
                    CREATE FUNCTION bench_lag() RETURNS trigger LANGUAGE plpgsql AS $$
                    BEGIN
                      IF NEW.written_at > 0 THEN
                        INSERT INTO bench_lag VALUES (NEW.written_at, extract(epoch FROM clock_timestamp()));
                      END IF;
                      RETURN NEW;
                    END $$;
                    CREATE TRIGGER bench_lag AFTER INSERT OR UPDATE ON {TABLE}
                    FOR EACH ROW EXECUTE FUNCTION bench_lag();"""
            )
        rng = random.Random(1)

        # 1. Drain a backlog: records already in the stream when podyn starts.
        with ThreadPoolExecutor(8) as pool:
            list(
                pool.map(
                    lambda i: client.update_item(
                        TableName=TABLE,
                        Key={"pk": {"S": f"k{i % KEYS}"}},
                        UpdateExpression="ADD n :one",
                        ExpressionAttributeValues={":one": {"N": "1"}},
                    ),
                    range(args.backlog),
                )
            )
        written = args.backlog
        before = applied(url)
        service = podyn(ddb.endpoint_url, url, "-c", log=logs / "backlog.log")
        samples: list[tuple[float, int]] = []
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            done = applied(url) - before
            samples.append((time.monotonic(), done))
            if done >= written:
                break
            time.sleep(0.05)
        service.send_signal(signal.SIGTERM)
        service.wait(30)
        # From the first sample that saw applied records to the last: what the first sample saw was applied before
        # the clock started, so it is not counted.
        first, seen_first = next((t, n) for t, n in samples if n > 0)
        last, total = samples[-1]
        print(
            f"backlog: {total} records applied, {total - seen_first} of them in {last - first:.2f} s ="
            f" {(total - seen_first) / max(last - first, 1e-9):,.0f} changes/s (target >= 5,000)",
            flush=True,
        )

        # 2. Lag at fixed rates.
        for rate_text in args.rates.split(","):
            rate = None if rate_text == "max" else float(rate_text)
            with psycopg.connect(url, autocommit=True) as conn:
                conn.execute("TRUNCATE bench_lag")
            service = podyn(ddb.endpoint_url, url, "-c", log=logs / f"rate-{rate_text}.log")
            time.sleep(3)  # let it start and go live
            started = time.monotonic()
            count = write_at_rate(client, rate, args.seconds, rng, batch=not args.single_writes)
            elapsed = time.monotonic() - started
            time.sleep(5)  # let the tail arrive
            service.send_signal(signal.SIGTERM)
            service.wait(30)
            with psycopg.connect(url) as conn:
                lags = sorted(r[0] for r in conn.execute("SELECT received_at - written_at FROM bench_lag"))
            if not lags:
                print(f"rate {rate_text}: no lag samples", flush=True)
                continue
            p50 = statistics.median(lags)
            p99 = lags[min(len(lags) - 1, int(len(lags) * 0.99))]
            print(
                f"rate {rate_text}: {count / elapsed:,.0f} writes/s for {elapsed:.0f} s, {len(lags)} rows received,"
                f" lag p50 {p50:.3f} s p99 {p99:.3f} s max {lags[-1]:.3f} s (target p99 < 2 s at 1,000 writes/s)",
                flush=True,
            )
        client.delete_table(TableName=TABLE)


if __name__ == "__main__":
    main()
