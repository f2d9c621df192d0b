"""Issue 12: ``--scan-rate`` is a cap for the table as a whole, whatever the number of processes loading it.

Two podyn processes (as on two hosts) load one table through the test proxy (tests/proxy.py), which adds up the
ConsumedCapacity DynamoDB Local reports for every Scan it relays: what the table's scan consumed, measured outside
podyn, against the time it took.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from helpers import Service, assert_exit, podyn
from oracle import table_differences
from proxy import ThrottlingProxy

RATE = 20.0
COUNT = 3000


def test_two_processes_stay_within_one_scan_rate_together(
    ddb_server: Any,
    ddb: Any,
    pg_url: str,
    create_table: Any,
    throttling_proxy: ThrottlingProxy,
    services: Callable[..., Service],
) -> None:
    # About 1 KB each: the whole scan costs about 370 read units, some 18 s at 20 units/s.
    table = create_table(items=[{"pk": {"S": f"k{i:05d}"}, "pad": {"S": "p" * 1000}} for i in range(COUNT)])
    assert_exit(podyn(ddb_server, pg_url, "-s", "-t", table))
    loaders = [
        services(
            pg_url,
            table,
            "-d",
            "--scan-rate",
            str(RATE),
            *("--segments", "8", "-n", "2", "--lease-seconds", "3"),
            endpoint=throttling_proxy.endpoint_url,
        )
        for _ in range(2)
    ]
    for loader in loaders:
        assert loader.process.wait(240) == 0, loader.text()
    assert table_differences(ddb, pg_url, table) == []
    answers = throttling_proxy.consumed("Scan")
    total = sum(units for _, units in answers)
    assert total > 300, f"the scan consumed {total} units: not the whole table?"
    span = answers[-1][0] - answers[0][0]
    # Allowance: each process starts with a second of budget, and the first learns within a heartbeat (a third of
    # the lease: 1 s) that a second one joined; two processes each taking the whole rate would use twice of it.
    allowed = RATE * (span + 3)
    assert total <= allowed, f"{total:.0f} units in {span:.1f} s: {total / span:.1f} units/s for a cap of {RATE}"
    for loader in loaders:
        assert "loaded," in loader.text() and "loaded, 0 items" not in loader.text(), loader.text()
