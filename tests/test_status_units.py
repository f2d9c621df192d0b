"""Issue 12: ``--status`` shows each unit of a table's work with its owner and lease, and the processes serving it.

Two podyn processes (as on two hosts) load one table, paced with ``--scan-rate``; ``--status`` (text and
``--json``) is read while they run, after one of them was killed outright, and after the load.
"""

from __future__ import annotations

import json
import signal
from collections.abc import Callable
from typing import Any

from helpers import Service, UnitWatcher, assert_exit, podyn, wait_for, worker_prefix

LEASE = "3"


def status_json(ddb_server: Any, pg_url: str, table: str) -> dict[str, Any]:
    result = podyn(ddb_server, pg_url, "--status", "--json", "-t", table, "--lease-seconds", LEASE)
    assert result.returncode in (0, 3), result.stderr
    (record,) = json.loads(result.stdout)["tables"]
    assert isinstance(record, dict)
    return record


def test_status_shows_units_with_owner_and_lease_and_the_live_workers(
    ddb_server: Any, ddb: Any, pg_url: str, create_table: Any, services: Callable[..., Service]
) -> None:
    table = create_table(items=[{"pk": {"S": f"k{i:05d}"}, "pad": {"S": "p" * 1000}} for i in range(3000)])
    assert_exit(podyn(ddb_server, pg_url, "-s", "-t", table))
    paced = ("--scan-rate", "10", "--segments", "8", "-n", "2", "--lease-seconds", LEASE)
    with UnitWatcher(pg_url, table) as watcher:
        loaders = [services(pg_url, table, "-d", *paced) for _ in range(2)]
        pids = {s.process.pid for s in loaders}
        wait_for(lambda: pids <= watcher.committers(), "both processes committing", timeout=90)
        record = status_json(ddb_server, pg_url, table)
        units = record["units"]
        assert [u["unit_id"] for u in units] == [str(i) for i in range(8)]  # in segment order, not 0, 1, 10, 2
        assert {u["kind"] for u in units} == {"scan segment"}
        leased = [u for u in units if u["owner"] is not None]
        assert leased, units
        for unit in leased:
            assert unit["lease_seconds_left"] is not None and unit["lease_seconds_left"] > -1.0, unit
            assert unit["lease_expires_at"] and unit["generation"] >= 1, unit
        owners = {u["owner"] for u in leased}
        workers = {w["worker"]: w for w in record["workers"]}
        assert owners <= set(workers), (owners, workers)
        assert {w["role"] for w in workers.values()} == {"load"}
        assert all(w["live"] for w in workers.values()), workers
        assert {next(p for p in pids if name.startswith(worker_prefix(p))) for name in workers} == pids
        text = assert_exit(podyn(ddb_server, pg_url, "--status", "-t", table, "--lease-seconds", LEASE)).stdout
        assert "OWNER" in text and "LEASE" in text and "expires in" in text, text
        assert "WORKER" in text and all(name in text for name in workers), text
        # One killed outright: it stays listed, no longer live, once its heartbeat is older than the lease.
        victim = loaders[0]
        assert victim.stop(signal.SIGKILL) == -signal.SIGKILL
        dead = next(name for name in workers if name.startswith(worker_prefix(victim.process.pid)))

        def victim_not_live() -> dict[str, Any] | None:
            shown = {w["worker"]: w for w in status_json(ddb_server, pg_url, table)["workers"]}
            return shown[dead] if not shown[dead]["live"] else None

        listed = wait_for(victim_not_live, "the killed worker shown as not live", timeout=30)
        assert listed is not None and listed["heartbeat_age_seconds"] >= float(LEASE)
        assert loaders[1].process.wait(180) == 0, loaders[1].text()
    record = status_json(ddb_server, pg_url, table)
    assert record["state"] == "loaded"
    assert all(u["done"] and u["owner"] is None and u["lease_seconds_left"] is None for u in record["units"])
    # The survivor left the table's workers as it finished; the killed one could not.
    assert [w["worker"] for w in record["workers"]] == [dead]
    text = assert_exit(podyn(ddb_server, pg_url, "--status", "-t", table, "--lease-seconds", LEASE)).stdout
    assert dead in text and "expires in" not in text, text
