"""The spool (issue 13): a load's throughput with its stream captured under a write load, the spool's apply rate,
the spool's compaction, and the first change after an idle stream.

    .venv/bin/python bench/bench_spool.py [--items 100000] [--rounds 2] [--write-rate 200] [--apply-keys 100000]

Starts its own DynamoDB Local and PostgreSQL (nothing else should run: they share the cores with podyn). Each run
gets a fresh table, filled with BatchWriteItem before its stream is enabled (so that the stream holds only what
is written during the load), and a fresh database. Figures:

1. load: ``podyn -s -d`` (capture on, the default) with no writes, and with ``--write-rate`` UpdateItem/s on
   1,000 keys throughout the load; and ``-s -d --no-capture`` with no writes (the load as before the spool).
   Items/s of the load alone (``podyn.tables``: load_finished_at - load_started_at); ``--rounds`` interleaved
   rounds, the best of each. Target: with writes at least 0.9 x without.
2. compaction: a load slowed to about ``--compaction-seconds`` by ``--scan-rate``, while 8 threads update the same
   1,000 keys as fast as DynamoDB Local takes it: changes captured against the spool's rows.
3. apply: a slowed load while 8 threads put ``--apply-keys`` new keys (BatchWriteItem), ``-s -d`` alone, so the
   spool keeps one row per key; then ``podyn -c`` on a copy of that database (``CREATE DATABASE ... TEMPLATE``),
   ``--apply-rounds`` times (and as often with each ``--apply-variant LABEL=TREE``, the podyn of another
   checkout, interleaved): the spool's apply rate (its log line) and the time until ``podyn.tables.spool_rows`` is
   0, and the median rate. Target: at least 15,000 changes/s.
4. idle: for each ``--idle-caps`` value, ``podyn -c --idle-poll-max CAP`` on a quiet table; after 2 x CAP + 2 s of
   silence, one put; the time from the put to the row in PostgreSQL (a trigger stamps it), ``--idle-samples`` times.

Prints one line per figure, with the machine, date, versions and podyn's commit.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import re
import signal
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import boto3
import psycopg
from psycopg import sql

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from podyn_py.demo_services import LocalDynamoDB, LocalPostgres, find_dynamodb_local  # noqa: E402

ENV = dict(os.environ, AWS_ACCESS_KEY_ID="podyn", AWS_SECRET_ACCESS_KEY="podyn", AWS_DEFAULT_REGION="us-east-1")
LOGS = Path("/tmp/podyn-bench-spool")
HOT_KEYS = 1000
FILLER = "lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod tempor incididunt ut labore " * 2


def header(pg_url: str) -> str:
    with psycopg.connect(pg_url) as conn:
        server = conn.execute("SHOW server_version").fetchone()[0]  # type: ignore[index]
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return (
        f"# {datetime.date.today()} {platform.node()} nproc={os.cpu_count()} mem={memory:.0f}GiB"
        f" python={platform.python_version()} psycopg={psycopg.__version__} boto3={boto3.__version__}"
        f" postgresql={server} dynamodb-local={find_dynamodb_local().name} podyn={commit.strip()}"
    )


def item(i: int, prefix: str = "k") -> dict[str, Any]:
    """An item of about 300 bytes: a string key, numbers, strings, a boolean, a string set, a map with a list."""
    h = (i * 2654435761) % 2**32
    return {
        "pk": {"S": f"{prefix}{i:07d}"},
        "n": {"N": "0"},
        "price": {"N": f"{h % 100_000 / 100:.2f}"},
        "name": {"S": f"Product {i} {h % 97}"},
        "active": {"BOOL": h % 3 == 0},
        "tags": {"SS": sorted({f"t{h % 11}", f"u{(h >> 4) % 11}"})},
        "attrs": {"M": {"size": {"N": str(h % 50)}, "dims": {"L": [{"N": str(h % 100)}, {"N": str(h % 7)}]}}},
        "note": {"S": FILLER[: 90 + h % 25]},
    }


def batch_write(client: Any, table: str, requests: list[dict[str, Any]]) -> None:
    while requests:
        requests = client.batch_write_item(RequestItems={table: requests}).get("UnprocessedItems", {}).get(table, [])


def new_table(client: Any, name: str, items: int) -> None:
    """A table of ``items`` items whose stream is enabled once they are in: it holds only later writes."""
    client.create_table(
        TableName=name,
        KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}],
        BillingMode="PAY_PER_REQUEST",
    )
    with ThreadPoolExecutor(8) as pool:
        list(
            pool.map(
                lambda start: batch_write(
                    client, name, [{"PutRequest": {"Item": item(i)}} for i in range(start, min(start + 25, items))]
                ),
                range(0, items, 25),
            )
        )
    client.update_table(
        TableName=name, StreamSpecification={"StreamEnabled": True, "StreamViewType": "NEW_AND_OLD_IMAGES"}
    )


def podyn(
    endpoint: str, url: str, table: str, *args: str, log: Path, tree: str | None = None
) -> subprocess.Popen[bytes]:
    """``podyn`` of this checkout, or of the checkout at ``tree`` (``--apply-variant``)."""
    command = [sys.executable, "-m", "podyn_py", "--endpoint-url", endpoint, "-u", url, "-t", table, "--no-progress"]
    stderr = open(log, "w")  # noqa: SIM115 - lives as long as the process
    env = ENV if tree is None else dict(ENV, PYTHONPATH=tree)
    return subprocess.Popen([*command, *args], cwd=tree or ROOT, env=env, stdout=subprocess.DEVNULL, stderr=stderr)


def tables_row(url: str, table: str) -> dict[str, Any]:
    with psycopg.connect(url) as conn:
        row = conn.execute(
            """SELECT items_loaded, extract(epoch FROM load_finished_at - load_started_at), captured_changes,
                      spool_rows, changes_applied
               FROM podyn.tables WHERE source_table = %s""",
            (table,),
        ).fetchone()
    assert row is not None, f"{table} not in podyn.tables"
    return dict(zip(("items", "seconds", "captured", "spool_rows", "applied"), row, strict=True))


class Writer:
    """UpdateItem on HOT_KEYS keys from 8 threads, at ``rate`` a second (None: as fast as they go), until stopped."""

    def __init__(self, client: Any, table: str, rate: float | None) -> None:
        self.client = client
        self.table = table
        self.rate = rate
        self.count = 0
        self._lock = threading.Lock()
        self._halt = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(n,), daemon=True) for n in range(8)]

    def start(self) -> Writer:
        self.started = time.monotonic()
        for thread in self._threads:
            thread.start()
        return self

    def _run(self, n: int) -> None:
        while not self._halt.is_set():
            with self._lock:
                count = self.count
                self.count += 1
            if self.rate is not None:
                delay = self.started + count / self.rate - time.monotonic()
                if delay > 0 and self._halt.wait(delay):
                    return
            self.client.update_item(
                TableName=self.table,
                Key={"pk": {"S": f"k{count % HOT_KEYS:07d}"}},
                UpdateExpression="ADD n :one",
                ExpressionAttributeValues={":one": {"N": "1"}},
            )

    def stop(self) -> tuple[int, float]:
        self._halt.set()
        for thread in self._threads:
            thread.join(30)
        return self.count, time.monotonic() - self.started


def load_figures(ddb: LocalDynamoDB, pg: LocalPostgres, client: Any, args: argparse.Namespace) -> None:
    best: dict[str, float] = {}
    for round_ in range(args.rounds):
        for variant in ("capture, no writes", "capture, writes", "no capture, no writes"):
            name = f"spool_load_{round_}_{variant.replace(', ', '_').replace(' ', '')}"
            new_table(client, name, args.items)
            url = pg.create_database(name)
            extra = ["--no-capture"] if variant.startswith("no capture") else []
            writer = Writer(client, name, args.write_rate) if variant.endswith(", writes") else None
            process = podyn(ddb.endpoint_url, url, name, "-s", "-d", *extra, log=LOGS / f"{name}.log")
            if writer is not None:
                writer.start()
            assert process.wait() == 0, f"load failed, see {LOGS / name}.log"
            writes, seconds = writer.stop() if writer is not None else (0, 0.0)
            row = tables_row(url, name)
            rate = row["items"] / float(row["seconds"])
            best[variant] = max(best.get(variant, 0.0), rate)
            load = os.getloadavg()[0]
            print(
                f"load round {round_ + 1} [{variant}]: {row['items']:,} items in {float(row['seconds']):.1f} s ="
                f" {rate:,.0f} items/s; writes {writes:,} ({writes / seconds if seconds else 0:,.0f}/s);"
                f" captured {row['captured']:,}, spool {row['spool_rows']:,} rows; loadavg {load:.1f}",
                flush=True,
            )
            client.delete_table(TableName=name)
    quiet, busy, before = best["capture, no writes"], best["capture, writes"], best["no capture, no writes"]
    print(
        f"load, best of {args.rounds}: capture with {args.write_rate:.0f} writes/s {busy:,.0f} items/s, capture"
        f" without writes {quiet:,.0f}, no capture {before:,.0f}: with writes / without = {busy / quiet:.2f}x"
        f" (target >= 0.9x); capture / no capture (no writes) = {quiet / before:.2f}x",
        flush=True,
    )


def slowed_load(items: int, seconds: float) -> str:
    """The --scan-rate that makes a load of ``items`` items of ~300 bytes last about ``seconds``."""
    units = items * 0.5 / (4096 // 330)  # eventually consistent: 0.5 RCU per 4 KB
    return f"{max(1.0, units / seconds):.1f}"


def compaction_figure(ddb: LocalDynamoDB, pg: LocalPostgres, client: Any, args: argparse.Namespace) -> None:
    name, items = "spool_compaction", 20_000
    new_table(client, name, items)
    url = pg.create_database(name)
    rate = slowed_load(items, args.compaction_seconds)
    process = podyn(ddb.endpoint_url, url, name, "-s", "-d", "-r", rate, "-n", "2", log=LOGS / f"{name}.log")
    writer = Writer(client, name, None).start()
    assert process.wait() == 0, f"load failed, see {LOGS / name}.log"
    writes, seconds = writer.stop()
    row = tables_row(url, name)
    print(
        f"compaction: load of {row['items']:,} items in {float(row['seconds']):.0f} s (-r {rate}) with {writes:,}"
        f" updates of {HOT_KEYS:,} keys ({writes / seconds:,.0f}/s): {row['captured']:,} changes captured,"
        f" {row['spool_rows']:,} spool rows = {row['spool_rows'] / max(1, row['captured']):.3f} rows per change"
        f" ({row['captured'] / max(1, row['spool_rows']):,.0f} changes per row)",
        flush=True,
    )
    client.delete_table(TableName=name)


def apply_figure(ddb: LocalDynamoDB, pg: LocalPostgres, client: Any, args: argparse.Namespace) -> None:
    name, items = "spool_apply", 20_000
    new_table(client, name, items)
    url = pg.create_database(name)

    def put(prefix: str, count: int) -> float:
        """``count`` new keys, each once (one spool row each), from 8 threads; the seconds it took."""
        started = time.monotonic()
        with ThreadPoolExecutor(8) as pool:
            list(
                pool.map(
                    lambda start: batch_write(
                        client,
                        name,
                        [{"PutRequest": {"Item": item(i, prefix)}} for i in range(start, min(start + 25, count))],
                    ),
                    range(0, count, 25),
                )
            )
        return time.monotonic() - started

    # The load must outlast the puts, or the spool holds only the part written before it ended: measure the put
    # rate on keys the load will scan, and slow the load to 1.5 times the puts' expected time (at least
    # --apply-load-seconds).
    probe = min(2_000, args.apply_keys)
    expected = put("probe", probe) * args.apply_keys / probe
    rate = slowed_load(items + probe, max(args.apply_load_seconds, 1.5 * expected))
    process = podyn(ddb.endpoint_url, url, name, "-s", "-d", "-r", rate, "-n", "2", log=LOGS / f"{name}-load.log")
    put_seconds = put("new", args.apply_keys)
    assert process.wait() == 0, f"load failed, see {LOGS / name}-load.log"
    before = tables_row(url, name)
    print(
        f"apply: {args.apply_keys:,} new keys put in {put_seconds:.0f} s during a load of {before['items']:,} items"
        f" ({float(before['seconds']):.0f} s): {before['captured']:,} captured, {before['spool_rows']:,} spool rows",
        flush=True,
    )
    # Each apply runs on a copy of this database (CREATE DATABASE ... TEMPLATE): the same spool every time.
    rates: dict[str, list[int]] = {}
    copies = 0
    for round_ in range(args.apply_rounds):
        for label, tree in [("podyn", str(ROOT)), *args.apply_variant]:
            copies += 1
            copy = f"{name}_copy{copies}"
            with psycopg.connect(pg.url, autocommit=True) as conn:
                statement = sql.SQL("CREATE DATABASE {} TEMPLATE {}")
                conn.execute(statement.format(sql.Identifier(copy), sql.Identifier(name)))
            copy_url = pg.url_for(copy)
            log = LOGS / f"{copy}-changes.log"
            started = time.monotonic()
            service = podyn(ddb.endpoint_url, copy_url, name, "-c", log=log, tree=tree)
            while tables_row(copy_url, name)["spool_rows"] > 0:
                time.sleep(0.05)
            wall = time.monotonic() - started
            service.send_signal(signal.SIGTERM)
            service.wait(30)
            pattern = r"applied the spool: (\d+) changes .* in ([\d.]+) s \((\d+) changes/s\)"
            found = re.search(pattern, log.read_text())
            applied = "?"
            if found:
                applied = f"{int(found[1]):,} changes in {float(found[2]):.2f} s = {int(found[3]):,} changes/s"
                rates.setdefault(label, []).append(int(found[3]))
            print(
                f"apply [{label}] round {round_ + 1}: podyn -c applied {applied} (its log line); spool empty"
                f" {wall:.1f} s after podyn -c started (process start-up included); load average"
                f" {os.getloadavg()[0]:.1f}",
                flush=True,
            )
    for label, measured in rates.items():
        median = statistics.median(measured)
        print(
            f"apply [{label}]: median {median:,.0f} changes/s over {len(measured)} applies of the same spool"
            f" ({', '.join(f'{r:,}' for r in measured)}; target >= 15,000 changes/s:"
            f" {'MET' if median >= 15_000 else 'MISSED'})",
            flush=True,
        )
    client.delete_table(TableName=name)


def idle_figure(ddb: LocalDynamoDB, pg: LocalPostgres, client: Any, args: argparse.Namespace) -> None:
    name = "spool_idle"
    new_table(client, name, 10)
    url = pg.create_database(name)
    load = podyn(ddb.endpoint_url, url, name, "-s", "-d", log=LOGS / f"{name}-load.log")
    assert load.wait() == 0
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            f"""CREATE TABLE seen (pk text, at double precision);
                CREATE FUNCTION seen() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN
                    INSERT INTO seen VALUES (NEW.pk, extract(epoch FROM clock_timestamp())); RETURN NEW; END $$;
                CREATE TRIGGER seen AFTER INSERT OR UPDATE ON {name} FOR EACH ROW EXECUTE FUNCTION seen();"""
        )
    for cap in (float(c) for c in args.idle_caps.split(",")):
        service = podyn(ddb.endpoint_url, url, name, "-c", "--idle-poll-max", str(cap), log=LOGS / f"{name}-{cap}.log")
        delays = []
        time.sleep(3)
        for sample in range(args.idle_samples):
            time.sleep(2 * cap + 2)  # the shard backs off to the cap
            key = f"idle-{cap}-{sample}"
            written = time.time()
            client.put_item(TableName=name, Item={"pk": {"S": key}})
            deadline = time.monotonic() + 4 * cap + 30
            while time.monotonic() < deadline:
                with psycopg.connect(url) as conn:
                    row = conn.execute("SELECT at FROM seen WHERE pk = %s", (key,)).fetchone()
                if row is not None:
                    delays.append(row[0] - written)
                    break
                time.sleep(0.02)
        service.send_signal(signal.SIGTERM)
        service.wait(30)
        print(
            f"idle: --idle-poll-max {cap:g}: first change after {2 * cap + 2:g} s of silence visible after median"
            f" {statistics.median(delays):.2f} s, max {max(delays):.2f} s ({len(delays)} samples); an idle shard"
            f" costs {86_400 / cap:,.0f} GetRecords calls a day",
            flush=True,
        )
    client.delete_table(TableName=name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--write-rate", type=float, default=200.0)
    parser.add_argument("--compaction-seconds", type=float, default=60.0)
    parser.add_argument("--apply-keys", type=int, default=100_000)
    parser.add_argument("--apply-load-seconds", type=float, default=60.0)
    parser.add_argument("--apply-rounds", type=int, default=3, help="applies of the same captured spool, each")
    parser.add_argument(
        "--apply-variant",
        action="append",
        default=[],
        type=lambda text: tuple(text.split("=", 1)),
        metavar="LABEL=TREE",
        help="also apply the spool with the podyn of another checkout (PYTHONPATH=TREE), in every round",
    )
    parser.add_argument("--idle-caps", default="1,5,15")
    parser.add_argument("--idle-samples", type=int, default=3)
    parser.add_argument("--skip", action="append", default=[], choices=["load", "compaction", "apply", "idle"])
    args = parser.parse_args()
    LOGS.mkdir(exist_ok=True)
    with LocalDynamoDB() as ddb, LocalPostgres() as pg:
        print(header(pg.url), flush=True)
        client = ddb.client("dynamodb")
        if "load" not in args.skip:
            load_figures(ddb, pg, client, args)
        if "compaction" not in args.skip:
            compaction_figure(ddb, pg, client, args)
        if "apply" not in args.skip:
            apply_figure(ddb, pg, client, args)
        if "idle" not in args.skip:
            idle_figure(ddb, pg, client, args)


if __name__ == "__main__":
    main()
