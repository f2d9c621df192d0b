"""Issue 12, last point: ``--verify`` shared by several processes. ``-P 2`` on one host, and two processes given the
same ``--verify-run`` as on two hosts, share each table's verify segments by lease; every part's result is
committed in ``podyn.verify_segments``; every process reports the whole table, assembled from those results.

Everything is the real podyn (subprocesses) against DynamoDB Local and PostgreSQL. The runs are paced with
``--scan-rate`` and use one thread per process (``-n 1``), so that both processes are comparing before the first
is done, and ``--lease-seconds 3``, so that a takeover comes quickly.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from typing import Any

from helpers import REPO_ROOT, assert_exit, owner_pid, podyn, wait_for
from oracle import connect
from psycopg import sql

from podyn_py.core.compare import Difference, Kind, Tally, add_up, count
from podyn_py.processes import chosen_output

COUNT = 600
SEGMENTS = 8
#: Read units per second for the whole table, whatever the number of processes: about 6 s for its 600 items of
#: about 700 bytes (DynamoDB Local bills a Scan by size, half a unit per 4 KB, eventually consistent).
PACE = ("--scan-rate", "10", "--segments", str(SEGMENTS), "-n", "1", "--lease-seconds", "3")


def keyed_items(count: int = COUNT) -> list[dict[str, Any]]:
    """Items under a binary partition key and a number sort key: the keys go through podyn.verify_keys as text."""
    return [
        {"pk": {"B": i.to_bytes(2, "big")}, "sk": {"N": f"{i}.50"}, "t": {"S": f"text {i}"}, "pad": {"S": "p" * 600}}
        for i in range(count)
    ]


def loaded(ddb_server: Any, pg_url: str, create_table: Any) -> str:
    table: str = create_table(key=(("pk", "B"), ("sk", "N")), items=keyed_items())
    assert_exit(podyn(ddb_server, pg_url, "-s", "-d", "-t", table))
    return table


def target_of(pg_url: str, table: str) -> str:
    with connect(pg_url) as conn:
        row = conn.execute("SELECT target_table FROM podyn.tables WHERE source_table = %s", (table,)).fetchone()
    assert row is not None
    return str(row[0])


def committed_parts(pg_url: str, table: str) -> dict[int, tuple[int | None, int, int]]:
    """Segment (-1: the rows without items) → (pid of the process that committed it, items, differences) of the
    table's last verify run, as committed in PostgreSQL."""
    with connect(pg_url) as conn:
        rows = conn.execute(
            """SELECT s.segment, s.worker, (s.result->>'items')::int, (s.result->>'difference_count')::int
               FROM podyn.verify_segments s JOIN podyn.verify_runs r USING (run_id)
               JOIN podyn.tables t USING (target_schema, target_table)
               WHERE t.source_table = %s
                 AND r.run_id = (SELECT max(run_id) FROM podyn.verify_runs v
                                 WHERE (v.target_schema, v.target_table) = (r.target_schema, r.target_table))""",
            (table,),
        ).fetchall()
    return {int(r[0]): (owner_pid(r[1]), int(r[2]), int(r[3])) for r in rows}


def verify_leases(pg_url: str, table: str) -> list[tuple[str, int | None]]:
    """(unit id, owner pid) of the table's verify segments leased now."""
    with connect(pg_url) as conn:
        rows = conn.execute(
            """SELECT l.unit_id, l.owner FROM podyn.leases l JOIN podyn.tables t USING (target_schema, target_table)
               WHERE t.source_table = %s AND l.kind = 'verify segment' AND l.owner IS NOT NULL""",
            (table,),
        ).fetchall()
    return [(str(r[0]), owner_pid(r[1])) for r in rows]


def test_verify_with_two_processes_on_an_equal_table(ddb_server: Any, pg_url: str, create_table: Any) -> None:
    table = loaded(ddb_server, pg_url, create_table)
    result = assert_exit(podyn(ddb_server, pg_url, "--verify", "-t", table, "-P", "2", *PACE), 0)
    assert result.stdout.count(f"{table} → public.{target_of(pg_url, table)}: equal ({COUNT} items") == 1, result
    assert "compared by 2 processes" in result.stdout

    parts = committed_parts(pg_url, table)
    assert set(parts) == {*range(SEGMENTS), -1}, "every segment and the rows without items, committed once"
    assert sum(items for _, items, _ in parts.values()) == COUNT, "items counted twice or lost across processes"
    assert len({pid for pid, _, _ in parts.values()}) == 2, f"one process compared every segment: {parts}"
    assert all(differences == 0 for _, _, differences in parts.values())


def test_verify_with_two_processes_reports_each_difference_once(
    ddb_server: Any, pg_url: str, create_table: Any
) -> None:
    table = loaded(ddb_server, pg_url, create_table)
    target = sql.Identifier(target_of(pg_url, table))
    with connect(pg_url) as conn:
        for i in (3, 170, 333, 590):  # spread over the segments
            conn.execute(sql.SQL("UPDATE {} SET t = 'changed' WHERE pk = %s").format(target), (i.to_bytes(2, "big"),))
        conn.execute(sql.SQL("DELETE FROM {} WHERE pk = %s").format(target), ((42).to_bytes(2, "big"),))
        conn.execute(
            sql.SQL("INSERT INTO {} (pk, sk, t) VALUES (%s, 7.25, 'no such item')").format(target), (b"\xff\xff",)
        )

    result = assert_exit(podyn(ddb_server, pg_url, "--verify", "--json", "-t", table, "-P", "2", *PACE), 4)
    (report,) = json.loads(result.stdout)  # one report, not one per process
    keys = [(d["kind"], d["key"], d["column"]) for d in report["differences"]]
    assert len(keys) == len(set(keys)) == 6, f"a difference reported twice, or one missing: {keys}"
    kinds = sorted(kind for kind, _, _ in keys)
    assert kinds == ["differs", "differs", "differs", "differs", "extra", "missing"], keys
    assert (report["missing"], report["extra"], report["differing"]) == (1, 1, 4)
    assert report["items"] == COUNT and report["difference_count"] == 6 and not report["equal"]
    assert len(report["workers"]) == 2 and report["not_compared"] == []

    parts = committed_parts(pg_url, table)
    assert parts[-1][2] == 1, "the row without an item is found by the one process that looked for such rows"
    assert sum(differences for _, _, differences in parts.values()) == 6


def test_a_verify_process_killed_mid_run_leaves_its_segments_to_the_other(
    ddb_server: Any, pg_url: str, create_table: Any
) -> None:
    """Two processes given the same --verify-run, as on two hosts; one is killed with SIGKILL while it compares
    a segment. The other takes that segment over (at once: the killed one's presence lock went with its
    connections), compares the rest, and reports the whole table."""
    table = loaded(ddb_server, pg_url, create_table)
    command = [sys.executable, "-m", "podyn_py", "--endpoint-url", ddb_server.endpoint_url, "-u", pg_url]
    command += ["--no-progress", "--verify", "-t", table, "--verify-run", "nightly", *PACE]
    first = subprocess.Popen(command, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    second = subprocess.Popen(command, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:

        def first_holds() -> list[str] | None:
            """The segments the first process holds, once both processes hold one."""
            leases = verify_leases(pg_url, table)
            both = {pid for _, pid in leases} == {first.pid, second.pid}
            return [unit for unit, pid in leases if pid == first.pid] if both else None

        held = wait_for(first_holds, "both processes comparing a segment", timeout=15)
        assert held is not None
        first.send_signal(signal.SIGKILL)
        first.communicate(timeout=10)
        out, err = second.communicate(timeout=30)
    finally:
        for process in (first, second):
            process.kill()
            process.communicate()
    assert second.returncode == 0, f"exit {second.returncode}\n{out.decode()}\n{err.decode()}"
    assert f": equal ({COUNT} items" in out.decode(), out.decode()

    parts = committed_parts(pg_url, table)
    assert set(parts) == {*range(SEGMENTS), -1}
    assert sum(items for _, items, _ in parts.values()) == COUNT
    taken_over = [int(unit.split(":")[1]) for unit in held]
    assert all(parts[segment][0] == second.pid for segment in taken_over), (taken_over, parts)


def test_a_shared_run_stopped_early_reports_what_was_compared_and_what_was_not(
    ddb_server: Any, pg_url: str, create_table: Any
) -> None:
    """SIGTERM once some segments are committed: the report is partial, names the parts not compared, and is
    not "equal" (exit 3)."""
    table = loaded(ddb_server, pg_url, create_table)
    command = [sys.executable, "-m", "podyn_py", "--endpoint-url", ddb_server.endpoint_url, "-u", pg_url]
    command += ["--no-progress", "--verify", "-t", table, "--verify-run", "early", *PACE, "--scan-rate", "4"]
    process = subprocess.Popen(command, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        wait_for(lambda: committed_parts(pg_url, table) or None, "a segment committed", timeout=15)
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=30)
    finally:
        process.kill()
        process.communicate()
    text = out.decode()
    assert process.returncode == 3, f"exit {process.returncode}\n{text}\n{err.decode()}"
    assert ": interrupted after" in text and ": equal" not in text, text
    compared = committed_parts(pg_url, table)
    missing = [f"segment {s}" for s in range(SEGMENTS) if s not in compared] + ["rows without items"]
    assert f"(not compared yet: {', '.join(missing)})" in text, (text, compared)


def test_one_report_of_a_command_is_a_complete_one() -> None:
    """-P --verify prints one child's report: a complete one (exit 0 or 4) before a partial or killed one's."""
    assert chosen_output([(-9, b""), (3, b"partial\n"), (4, b"whole\n"), (0, b"whole too\n")]) == b"whole\n"
    assert chosen_output([(-9, b""), (3, b"partial\n")]) == b"partial\n"
    assert chosen_output([(-9, b"")]) == b""


def test_a_part_result_survives_its_round_trip_through_json() -> None:
    tally = Tally(items=3)
    for key in ("a", "b", "c"):
        count(tally, [Difference(Kind.VALUE, f"pk={key}", "t", '"x"', '"y"')], limit=2)
    again = Tally.from_json(json.loads(json.dumps(tally.to_json())))
    assert again == tally and again.difference_count == 3 and len(again.differences) == 2
    total = Tally()
    add_up(total, again, limit=3)
    add_up(total, again, limit=3)
    assert (total.items, total.differing, total.difference_count, len(total.differences)) == (6, 6, 6, 3)
