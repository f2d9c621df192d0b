#!/usr/bin/env python
"""Throwaway benchmark: boto3's parsed responses vs ``podyn_py.source.fastpath.RawJsonClient`` (raw JSON + orjson).

Run from the repository root, never as a test:

    .venv/bin/python bench/bench_fastpath.py --items 50000

It starts a fresh DynamoDB Local, fills a table of N items of about 300 bytes (with a stream, so GetRecords can be
measured on the same writes), then measures:

  scan         full-table Scan, 1 segment and 4 segments (4 threads): items/s and this process's CPU per item
  get_records  reading the first R stream records (Limit 1000) from TRIM_HORIZON: records/s and CPU per record
  parse only   the same response bodies parsed by botocore's parser vs orjson.loads, no network, no server
"""

from __future__ import annotations

import argparse
import concurrent.futures
import statistics
import time
from collections.abc import Callable
from typing import Any

import botocore.config
import botocore.parsers
import orjson

from podyn_py.demo_services import LocalDynamoDB, local_client
from podyn_py.source.fastpath import RawJsonClient

TABLE = "bench_fastpath"
WORDS = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india", "juliet", "kilo"]
COLORS = ["red", "green", "blue", "black", "white", "grey", "teal"]


def item(i: int) -> dict[str, Any]:
    """About 300 bytes: scalars, a string set, a nested map with a list, a small binary, filler text."""
    h = (i * 2654435761) % 2**32
    return {
        "id": {"S": f"item-{i:09d}"},
        "seq": {"N": str(i)},
        "price": {"N": f"{h % 100_000 / 100:.2f}"},
        "name": {"S": f"Product {i} {WORDS[h % 11]} {COLORS[h % 7]}"},
        "active": {"BOOL": h % 3 == 0},
        "created": {"S": f"2024-{1 + h % 12:02d}-{1 + h % 28:02d}T{h % 24:02d}:{h % 60:02d}:00Z"},
        "tags": {"SS": sorted({WORDS[h % 11], COLORS[(h >> 8) % 7]})},
        "digest": {"B": h.to_bytes(4, "big") * 4},
        "attrs": {
            "M": {
                "color": {"S": COLORS[h % 7]},
                "size": {"N": str(h % 50)},
                "dims": {"L": [{"N": str(h % 100)}, {"N": str((h >> 3) % 100)}, {"N": str((h >> 6) % 100)}]},
                "vendor": {"M": {"name": {"S": f"vendor-{h % 997}"}, "rating": {"N": str((h >> 5) % 50)}}},
            }
        },
        "note": {"S": ("lorem ipsum dolor sit amet " * 5)[: 90 + h % 25]},
    }


def fill(raw: RawJsonClient, items: int, threads: int = 4) -> None:
    def write(first: int) -> None:
        for batch in range(first, (items + 24) // 25, threads):
            requests: Any = [{"PutRequest": {"Item": item(i)}} for i in range(batch * 25, min(items, batch * 25 + 25))]
            while requests:
                requests = raw.call("BatchWriteItem", {"RequestItems": {TABLE: requests}}).get("UnprocessedItems", {})
                requests = requests.get(TABLE, [])

    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
        for future in [pool.submit(write, t) for t in range(threads)]:
            future.result()


def scan(call: Callable[..., Any], segments: int) -> int:
    def segment(number: int) -> int:
        request: dict[str, Any] = {"TableName": TABLE, "Segment": number, "TotalSegments": segments}
        count = 0
        while True:
            page = call(request)
            count += len(page["Items"])
            if "LastEvaluatedKey" not in page:
                return count
            request["ExclusiveStartKey"] = page["LastEvaluatedKey"]

    with concurrent.futures.ThreadPoolExecutor(segments) as pool:
        return sum(pool.map(segment, range(segments)))


def read_records(client: Any, arn: str, shard: str, wanted: int) -> int:
    iterator = client.get_shard_iterator(StreamArn=arn, ShardId=shard, ShardIteratorType="TRIM_HORIZON")
    iterator = iterator["ShardIterator"]
    count = 0
    while count < wanted and iterator:
        response = client.get_records(ShardIterator=iterator, Limit=1000)
        count += len(response["Records"])
        iterator = response.get("NextShardIterator")
    return count


def timed(fn: Callable[[], int]) -> tuple[int, float, float]:
    cpu, wall = time.process_time(), time.perf_counter()
    n = fn()
    return n, time.perf_counter() - wall, time.process_time() - cpu


def compare(label: str, unit: str, runs: dict[str, Callable[[], int]], rounds: int) -> dict[str, tuple[float, float]]:
    best: dict[str, tuple[float, float]] = {}
    for _ in range(rounds):  # alternate, so drift on a shared machine hits both
        for name, fn in runs.items():
            n, wall, cpu = timed(fn)
            rate, cpu_per = n / wall, cpu / n * 1e6
            old = best.get(name)
            best[name] = (max(rate, old[0]), min(cpu_per, old[1])) if old else (rate, cpu_per)
    base = best["boto3"]
    for name, (rate, cpu_per) in best.items():
        print(
            f"{label:<22} {name:<6} {rate:>9,.0f} {unit}/s  {cpu_per:>6.1f} µs CPU/{unit}"
            f"   x{rate / base[0]:.2f} throughput, x{base[1] / cpu_per:.2f} less CPU"
        )
    return best


def parse_only(client: Any, operation: str, params: dict[str, Any], repeat: int) -> None:
    """The same body through botocore's parser and through orjson."""
    bodies: list[bytes] = []

    def keep(response_dict: dict[str, Any], **_: Any) -> None:
        bodies.append(response_dict["body"])

    client.meta.events.register(f"before-parse.*.{operation}", keep)
    getattr(client, botocore.xform_name(operation))(**params)
    client.meta.events.unregister(f"before-parse.*.{operation}", keep)
    body = bodies[-1]
    shape = client.meta.service_model.operation_model(operation).output_shape
    parser = botocore.parsers.create_parser("json")
    response = {"body": body, "headers": {}, "status_code": 200}
    times = {}
    parsers: tuple[tuple[str, Callable[[], Any]], ...] = (
        ("boto3", lambda: parser.parse(response, shape)),
        ("orjson", lambda: orjson.loads(body)),
    )
    for name, fn in parsers:
        samples = []
        for _ in range(repeat):
            started = time.process_time()
            fn()
            samples.append(time.process_time() - started)
        times[name] = statistics.median(samples)
    print(
        f"parse only {operation:<11} {len(body) / 1e6:.2f} MB body: botocore {times['boto3'] * 1e3:.1f} ms, "
        f"orjson {times['orjson'] * 1e3:.1f} ms (x{times['boto3'] / times['orjson']:.0f})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=50_000)
    parser.add_argument("--records", type=int, default=5_000, help="stream records read per GetRecords run")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    config = botocore.config.Config(retries={"mode": "standard", "max_attempts": 10}, max_pool_connections=10)
    with LocalDynamoDB() as server:
        ddb = local_client("dynamodb", server.endpoint_url, config=config)
        streams = local_client("dynamodbstreams", server.endpoint_url, config=config)
        ddb.create_table(
            TableName=TABLE,
            KeySchema=[{"AttributeName": "id", "KeyType": "HASH"}],
            AttributeDefinitions=[{"AttributeName": "id", "AttributeType": "S"}],
            BillingMode="PAY_PER_REQUEST",
            StreamSpecification={"StreamEnabled": True, "StreamViewType": "NEW_AND_OLD_IMAGES"},
        )
        raw, raw_streams = RawJsonClient(ddb), RawJsonClient(streams)
        started = time.perf_counter()
        fill(raw, args.items)
        print(f"filled {args.items} items in {time.perf_counter() - started:.0f} s")

        def boto3_scan(request: dict[str, Any]) -> Any:
            return ddb.scan(**request)

        for segments in (1, 4):
            compare(
                f"scan, {segments} segment(s)",
                "item",
                {
                    "boto3": lambda s=segments: scan(boto3_scan, s),  # type: ignore[misc]
                    "fast": lambda s=segments: scan(lambda r: raw.call("Scan", r), s),  # type: ignore[misc]
                },
                args.rounds,
            )

        arn = ddb.describe_table(TableName=TABLE)["Table"]["LatestStreamArn"]
        shard = streams.describe_stream(StreamArn=arn)["StreamDescription"]["Shards"][0]["ShardId"]
        compare(
            "get_records",
            "record",
            {
                "boto3": lambda: read_records(streams, arn, shard, args.records),
                "fast": lambda: read_records(raw_streams, arn, shard, args.records),
            },
            args.rounds,
        )

        parse_only(ddb, "Scan", {"TableName": TABLE}, 20)
        iterator = streams.get_shard_iterator(StreamArn=arn, ShardId=shard, ShardIteratorType="TRIM_HORIZON")
        parse_only(streams, "GetRecords", {"ShardIterator": iterator["ShardIterator"], "Limit": 1000}, 20)
        raw.close()
        raw_streams.close()
        ddb.close()
        streams.close()


if __name__ == "__main__":
    main()
