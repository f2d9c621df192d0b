"""``podyn --verify``, ``--status`` and ``--metrics-port`` end to end: the real CLI against DynamoDB Local and
PostgreSQL. Differences are made by hand in PostgreSQL, so each test knows exactly which keys must be reported."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from helpers import REPO_ROOT, assert_exit, podyn, run_podyn
from oracle import connect
from psycopg import sql

from podyn_py import metrics
from podyn_py.demo_services import free_port

BIG = "12345678901234567890123456789012345678"  # 38 significant digits, DynamoDB's most
BIG_CHANGED = BIG[:-1] + "9"  # differs in the 38th digit only


def short(prefix: str) -> str:
    """A table name that fits PostgreSQL's 63 bytes, so the target table has the same name."""
    return f"{prefix}_{os.urandom(4).hex()}"


def verify_json(ddb_server: Any, url: str, *args: str, code: int) -> list[dict[str, Any]]:
    reports: list[dict[str, Any]] = json.loads(
        assert_exit(podyn(ddb_server, url, "--verify", "--json", *args), code).stdout
    )
    return reports


def found(report: dict[str, Any]) -> set[tuple[str, str | None, str | None]]:
    return {(d["kind"], d["key"], d["column"]) for d in report["differences"]}


def execute(url: str, statement: str, table: str, *params: Any) -> None:
    with connect(url) as conn:
        conn.execute(sql.SQL(statement).format(t=sql.Identifier(table)), params)


def items(count: int) -> list[dict[str, Any]]:
    return [
        {
            "pk": {"S": f"k{i}"},
            "t": {"S": f"text {i}"},
            "n": {"N": f"{i}.5"},
            "b": {"B": bytes([i, 0, 255])},
            "f": {"BOOL": i % 2 == 0},
            "m": {"M": {"deep": {"L": [{"N": BIG}, {"S": "x"}]}, "flag": {"BOOL": True}}},
            "ss": {"SS": ["b", "a", "c"]},
            "ns": {"NS": ["1", "1E+2", "-0.5"]},
            "bs": {"BS": [b"\x01", b"\x02"]},
            "nul": {"S": "a\x00b"},  # stored as "ab": removed on purpose, no difference
            "nothing": {"NULL": True},
            **({"odd": {"N": "1"}} if i % 3 else {"odd": {"S": "one"}}),  # a variant column
        }
        for i in range(count)
    ]


@pytest.mark.parametrize("mode", ["columns", "jsonb"])
def test_verify_passes_on_an_equal_copy(ddb_server: Any, pg_url: str, create_table: Any, mode: str) -> None:
    table = create_table(name=short("t"), items=items(30))
    assert_exit(podyn(ddb_server, pg_url, "-s", "-d", "-t", table, "-m", mode, "--segments", "3"))
    (report,) = verify_json(ddb_server, pg_url, "-t", table, "--segments", "4", code=0)
    assert report["equal"] and report["items"] == 30 and report["differences"] == []
    assert report["segments_scanned"] == report["total_segments"] == 4 and not report["sampled"]
    text = assert_exit(podyn(ddb_server, pg_url, "--verify")).stdout  # no -t: every table podyn loaded into the schema
    assert f"{table} → public.{table}: equal (30 items" in text


def test_verify_reports_each_kind_of_difference_with_its_key(ddb_server: Any, pg_url: str, create_table: Any) -> None:
    table = create_table(name=short("t"), items=items(12))
    assert_exit(podyn(ddb_server, pg_url, "-s", "-d", "-t", table))
    changes: list[tuple[Any, ...]] = [
        ("DELETE FROM {t} WHERE pk = %s", "k0"),
        ("UPDATE {t} SET t = 'changed' WHERE pk = %s", "k1"),
        ("UPDATE {t} SET n = n + 1 WHERE pk = %s", "k2"),
        ("UPDATE {t} SET b = '\\x00'::bytea WHERE pk = %s", "k3"),
        ("UPDATE {t} SET f = NOT f WHERE pk = %s", "k4"),
        ("UPDATE {t} SET m = jsonb_set(m, %s::text[], %s::jsonb) WHERE pk = %s", ["deep", "0"], BIG_CHANGED, "k5"),
        ("UPDATE {t} SET t = NULL WHERE pk = %s", "k6"),
        ("UPDATE {t} SET m = jsonb_set(m, %s::text[], '1') WHERE pk = %s", ["flag"], "k7"),  # true is not 1
        ("UPDATE {t} SET ss = %s::jsonb WHERE pk = %s", '["c", "b", "a"]', "k8"),  # a set in another order: equal
        ("INSERT INTO {t} (pk, t) VALUES (%s, 'no such item')", "zz"),
    ]
    for statement, *params in changes:
        execute(pg_url, statement, table, *params)
    (report,) = verify_json(ddb_server, pg_url, "-t", table, "--segments", "3", code=4)
    assert found(report) == {
        ("missing", "pk=k0", None),
        ("differs", "pk=k1", "t"),
        ("differs", "pk=k2", "n"),
        ("differs", "pk=k3", "b"),
        ("differs", "pk=k4", "f"),
        ("differs", "pk=k5", "m"),
        ("differs", "pk=k6", "t"),
        ("differs", "pk=k7", "m"),
        ("extra", "pk=zz", None),
    }
    assert (report["missing"], report["extra"], report["differing"]) == (1, 1, 7) and not report["equal"]
    shown = {d["key"]: (d["expected"], d["found"]) for d in report["differences"] if d["kind"] == "differs"}
    assert shown["pk=k2"] == ("2.5", "3.5") and shown["pk=k6"] == ('"text 6"', "NULL")
    assert BIG in shown["pk=k5"][0] and BIG_CHANGED in shown["pk=k5"][1]

    text = assert_exit(podyn(ddb_server, pg_url, "--verify", "-t", table, "--verify-max-differences", "2"), 4).stdout
    assert "DIFFERENT: 1 missing row, 1 extra row, 7 differing rows" in text
    assert "… 7 more differences (--verify-max-differences)" in text


def test_verify_in_jsonb_mode_names_the_attribute_inside_data(ddb_server: Any, pg_url: str, create_table: Any) -> None:
    table = create_table(name=short("t"), items=items(6))
    assert_exit(podyn(ddb_server, pg_url, "-s", "-d", "-t", table, "-m", "jsonb"))
    change = "UPDATE {t} SET data = jsonb_set(data, %s::text[], %s::jsonb) WHERE pk = %s"
    execute(pg_url, change, table, ["m", "deep", "0"], BIG_CHANGED, "k1")
    execute(pg_url, "UPDATE {t} SET data = data - 'bs' WHERE pk = %s", table, "k2")
    execute(pg_url, change, table, ["f"], '"true"', "k3")  # a string, not the boolean
    execute(pg_url, change, table, ["ns"], "[100, -0.5, 1]", "k4")  # the same set: other order, 1E+2 as 100
    (report,) = verify_json(ddb_server, pg_url, "-t", table, code=4)
    assert found(report) == {
        ("differs", "pk=k1", "data.m"),
        ("differs", "pk=k2", "data.bs"),
        ("differs", "pk=k3", "data.f"),
    }
    assert [d["found"] for d in report["differences"] if d["key"] == "pk=k2"] == ["(absent)"]


def test_verify_reports_a_dropped_column(ddb_server: Any, pg_url: str, create_table: Any) -> None:
    table = create_table(name=short("t"), items=items(5))
    assert_exit(podyn(ddb_server, pg_url, "-s", "-d", "-t", table))
    execute(pg_url, "ALTER TABLE {t} DROP COLUMN n", table)
    (report,) = verify_json(ddb_server, pg_url, "-t", table, code=4)
    assert report["missing_columns"] == ["n"] and report["differing"] == 5
    assert found(report) == {("column", None, "n")} | {("differs", f"pk=k{i}", "n") for i in range(5)}


def test_sampled_verify_scans_some_segments_and_says_what_it_cannot_see(
    ddb_server: Any, pg_url: str, create_table: Any
) -> None:
    table = create_table(name=short("t"), items=items(60))
    assert_exit(podyn(ddb_server, pg_url, "-s", "-d", "-t", table))
    execute(pg_url, "INSERT INTO {t} (pk) VALUES (%s)", table, "only-in-postgres")
    (report,) = verify_json(ddb_server, pg_url, "-t", table, "--segments", "4", "--verify-sample", "0.5", code=0)
    assert report["sampled"] and (report["segments_scanned"], report["total_segments"]) == (2, 4)
    assert 0 < report["items"] < 60 and report["extra"] == 0
    text = assert_exit(
        podyn(ddb_server, pg_url, "--verify", "-t", table, "--segments", "4", "--verify-sample", "0.25")
    ).stdout
    assert "1 of 4 segments (sampled)" in text and "cannot be found in sampled mode" in text
    # The same table verified in full finds the extra row.
    (full,) = verify_json(ddb_server, pg_url, "-t", table, code=4)
    assert found(full) == {("extra", "pk=only-in-postgres", None)}


def test_verify_of_a_table_podyn_never_loaded_is_a_clear_error(ddb_server: Any, pg_url: str, create_table: Any) -> None:
    table = create_table(name=short("t"), items=items(2))
    result = assert_exit(podyn(ddb_server, pg_url, "--verify", "-t", table), 3)
    assert f"{table} → public.{table}: not verified: public.{table} was never loaded by podyn" in result.stdout
    assert_exit(podyn(ddb_server, pg_url, "-s", "-t", table))
    result = assert_exit(podyn(ddb_server, pg_url, "--verify", "-t", table), 3)
    assert "has not finished (state created)" in result.stdout


def test_verify_rechecks_a_key_that_is_fixed_while_it_runs(ddb_server: Any, pg_url: str, create_table: Any) -> None:
    """A row behind DynamoDB, as while changes are in flight: verify reads it again and finds it caught up."""
    table = create_table(name=short("t"), items=items(4))
    assert_exit(podyn(ddb_server, pg_url, "-s", "-d", "-t", table))
    execute(pg_url, "UPDATE {t} SET t = 'stale' WHERE pk = %s", table, "k2")
    command = [sys.executable, "-m", "podyn_py", "--endpoint-url", ddb_server.endpoint_url, "--no-progress"]
    process = subprocess.Popen(
        [*command, "-u", pg_url, "--verify", "-t", table], cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        assert process.stderr is not None
        log = []
        for line in process.stderr:
            log.append(line.decode())
            if b"reading them again" in line:
                execute(pg_url, "UPDATE {t} SET t = 'text 2' WHERE pk = %s", table, "k2")  # the change arrives
                break
        else:
            raise AssertionError("verify did not re-check:\n" + "".join(log))
        stdout, _ = process.communicate(timeout=60)
    finally:
        process.kill()
        process.wait()
    assert process.returncode == 0 and b": equal" in stdout


def test_verify_and_status_while_changes_flow(
    ddb_server: Any, ddb: Any, pg_url: str, create_table: Any, tmp_path: Path
) -> None:
    """Beside a running ``--changes`` service and writes in DynamoDB: verify finds the copy equal, status shows it
    live with its shards and counters."""
    table = create_table(name=short("live"), stream_view_type="NEW_AND_OLD_IMAGES", items=items(100))
    command = [sys.executable, "-m", "podyn_py", "--endpoint-url", ddb_server.endpoint_url, "--no-progress"]
    log_path = tmp_path / "service.log"
    with open(log_path, "w") as log:
        service = subprocess.Popen([*command, "-u", pg_url, "-t", table, "-s", "-d", "-c"], cwd=REPO_ROOT, stderr=log)
    try:
        deadline = time.monotonic() + 60
        while f"table {table}: live" not in log_path.read_text():
            assert service.poll() is None and time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.2)
        writes = 0
        verifier = subprocess.Popen(
            [*command, "-u", pg_url, "--verify", "--json", "-t", table], cwd=REPO_ROOT, stdout=subprocess.PIPE
        )
        while verifier.poll() is None:  # keep changes in flight while verify runs
            key = f"k{writes % 100}"
            ddb.update_item(
                TableName=table,
                Key={"pk": {"S": key}},
                UpdateExpression="SET t = :t",
                ExpressionAttributeValues={":t": {"S": f"write {writes}"}},
            )
            writes += 1
            time.sleep(0.1)
        stdout, _ = verifier.communicate()
        (report,) = json.loads(stdout)
        assert verifier.returncode == 0 and report["equal"], report
        deadline = time.monotonic() + 30
        while True:
            (live,) = json.loads(assert_exit(podyn(ddb_server, pg_url, "--status", "--json")).stdout)["tables"]
            if live["changes_applied"] >= writes or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert live["state"] == "live" and live["changes_applied"] >= writes > 0
        assert live["shards"] and any(s["sequence_number"] for s in live["shards"]) and live["stream_arn"]
        assert live["last_change_at"] is not None and live["replication_lag_seconds"] is not None
        text = assert_exit(podyn(ddb_server, pg_url, "--status")).stdout
        assert f"{table} → public.{table}: live" in text and "CHECKPOINT" in text
    finally:
        service.send_signal(signal.SIGTERM)
        service.wait(30)


def test_status_after_a_load_and_of_a_stopped_table(ddb_server: Any, pg_url: str, create_table: Any) -> None:
    table = create_table(name=short("t"), items=items(20))
    other = create_table(name=short("other"), items=items(3))
    assert_exit(podyn(ddb_server, pg_url, "-s", "-d", "-t", f"{table},{other}", "--segments", "3"))
    status = json.loads(assert_exit(podyn(ddb_server, pg_url, "--status", "--json")).stdout)
    tables = {t["source"]: t for t in status["tables"]}
    loaded = tables[table]
    assert loaded["state"] == "loaded" and loaded["items_loaded"] == 20 and loaded["target"] == f"public.{table}"
    assert [s["segment"] for s in loaded["segments"]] == [0, 1, 2] and all(s["done"] for s in loaded["segments"])
    assert sum(s["items_loaded"] for s in loaded["segments"]) == 20
    assert loaded["shards"] == [] and loaded["changes_applied"] == 0 and loaded["load_finished_at"] is not None
    text = assert_exit(podyn(ddb_server, pg_url, "--status", "-t", table)).stdout
    assert other not in text and f"{table} → public.{table}: loaded" in text
    assert "3/3 done" in text and "SEGMENT" in text

    # A reload that fails (a column podyn needs was dropped by hand) stops the table with its error.
    execute(pg_url, "ALTER TABLE {t} DROP COLUMN t", other)
    assert_exit(podyn(ddb_server, pg_url, "-d", "--reload", "-t", other), 3)
    result = assert_exit(podyn(ddb_server, pg_url, "--status"), 3)
    assert f"{other} → public.{other}: stopped" in result.stdout and "last error:" in result.stdout
    stopped = {
        t["source"]: t
        for t in json.loads(assert_exit(podyn(ddb_server, pg_url, "--status", "--json"), 3).stdout)["tables"]
    }
    assert stopped[other]["state"] == "stopped" and '"t"' in stopped[other]["last_error"]
    assert stopped[table]["state"] == "loaded"
    unknown = assert_exit(podyn(ddb_server, pg_url, "--status", "-t", "no_such_table"), 3)
    assert "no_such_table: unknown" in unknown.stdout


def test_status_and_verify_never_print_the_password(ddb_server: Any, pg_url: str, create_table: Any) -> None:
    secret = "Sup3rSecret"
    url = pg_url.replace("postgres@", f"postgres:{secret}@", 1)  # the test server trusts local connections
    table = create_table(name=short("t"), items=items(2))
    assert_exit(podyn(ddb_server, url, "-s", "-d", "-t", table))
    execute(pg_url, "UPDATE podyn.tables SET last_error = %s", table, f"connecting: password={secret} refused")
    outputs = [
        assert_exit(podyn(ddb_server, url, "--status")),
        assert_exit(podyn(ddb_server, url, "--status", "--json")),
        assert_exit(podyn(ddb_server, url, "--verify", "-v")),
    ]
    for result in outputs:
        assert secret not in result.stdout + result.stderr
    assert "user=postgres" in outputs[0].stdout and "password=***" in outputs[0].stdout


def test_status_of_a_database_podyn_never_used(pg_url: str) -> None:
    result = run_podyn("-u", pg_url, "--status")
    assert result.returncode == 1 and "no podyn metadata" in result.stderr


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        return str(response.read().decode())


def loaded_total(text: str, table: str) -> float:
    prefix = f'podyn_items_loaded_total{{table="{table}"}} '
    values = [float(line[len(prefix) :]) for line in text.splitlines() if line.startswith(prefix)]
    return values[0] if values else 0.0


def test_metrics_and_status_during_a_slow_load(ddb_server: Any, pg_url: str, create_table: Any, tmp_path: Path) -> None:
    table = create_table(
        name=short("t"), items=[{"pk": {"S": f"{i:05d}"}, "pad": {"S": "p" * 900}} for i in range(2000)]
    )
    port = free_port()
    command = [sys.executable, "-m", "podyn_py", "--endpoint-url", ddb_server.endpoint_url, "--no-progress"]
    command += ["-u", pg_url, "-s", "-d", "-t", table, "--scan-rate", "20", "--segments", "4", "-n", "2"]
    with open(tmp_path / "load.log", "w") as log:
        process = subprocess.Popen([*command, "--metrics-port", str(port)], cwd=REPO_ROOT, stderr=log)
    try:
        seen: list[float] = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and len(set(v for v in seen if v > 0)) < 2:
            time.sleep(0.3)
            try:
                seen.append(loaded_total(scrape(port), table))
            except OSError:
                continue  # not listening yet
        rising = [v for v in seen if v > 0]
        assert len(set(rising)) >= 2 and rising == sorted(rising), f"podyn_items_loaded_total did not rise: {seen}"
        status = json.loads(assert_exit(podyn(ddb_server, pg_url, "--status", "--json")).stdout)
        (loading,) = status["tables"]
        assert loading["state"] == "loading" and 0 < loading["items_loaded"] < 2000
        assert len(loading["segments"]) == 4 and not all(s["done"] for s in loading["segments"])
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(30)
    assert process.returncode == 0, (tmp_path / "load.log").read_text()


def test_metrics_served_in_process_and_a_busy_port_is_a_clear_error() -> None:
    metrics.ITEMS_LOADED.labels("in_process_table").inc(3)
    server = metrics.serve(0)
    try:
        assert loaded_total(scrape(server.server_port), "in_process_table") == 3.0
        result = run_podyn(
            "-u", "postgresql://nobody@127.0.0.1:1/x", "--status", "--metrics-port", str(server.server_port)
        )
    finally:
        server.shutdown()
        server.server_close()
    assert result.returncode == 1 and "cannot serve metrics on 127.0.0.1" in result.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--verify", "--data"), "--verify and --status run alone"),
        (("--verify", "--status"), "--verify and --status run alone"),
        (("--status",), "--status needs a PostgreSQL URL"),
        (("--verify", "--verify-sample", "0"), "0<x<=1"),
        (("--data", "--json"), "--json goes with --verify or --status"),
    ],
)
def test_usage_errors(args: tuple[str, ...], message: str) -> None:
    result = run_podyn(*args, env={"PODYN_POSTGRES_URL": ""})
    assert result.returncode == 2 and message in result.stderr
