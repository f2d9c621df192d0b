"""``podyn --data --export-to s3://bucket/prefix``: podyn asks DynamoDB for a full export, waits for it, and loads
it as ``--from-export`` does; a restart waits for the same export (one ExportTableToPointInTime, one export); a
table without point-in-time recovery and a failed export are clear errors, and nothing is loaded.

DynamoDB Local has no export API: ExportTableToPointInTime, DescribeExport and DescribeContinuousBackups are
answered at the HTTP boundary by tests/scripted_exports.py (realistic ExportDescriptions; the export's files are
written into moto's S3 from the DynamoDB Local table's items when the scripted export completes), every other call
is relayed to DynamoDB Local.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
from click.testing import CliRunner
from exports import EDGE_ITEMS, SlowS3, many_items
from helpers import REPO_ROOT, assert_exit, fresh, podyn, row_count, wait_for
from oracle import connect, table_differences
from scripted_exports import ExportScript
from scripted_stream_server import ScriptedStreamServer

from podyn_py.cli import main
from podyn_py.core.exports import export_client_token

POLL = ("--export-poll", "0.1")


@pytest.fixture
def script(s3: Any, ddb: Any) -> ExportScript:
    return ExportScript(s3, ddb, polls=3)


@pytest.fixture
def server(ddb_server: Any, script: ExportScript) -> Iterator[ScriptedStreamServer]:
    with ScriptedStreamServer(ddb_server.endpoint_url, dynamodb=script) as running:
        yield running


def export_to(server: ScriptedStreamServer, pg_url: str, table: str, bucket: str, s3_server: Any, *args: str) -> Any:
    return podyn(
        server,
        pg_url,
        *("-t", table, "-s", "-d", "--export-to", f"s3://{bucket}/exports/"),
        *("--s3-endpoint-url", s3_server.endpoint_url, *POLL, *args),
    )


def table_row(pg_url: str, table: str) -> tuple[Any, ...]:
    with connect(pg_url) as conn:
        row = conn.execute(
            "SELECT state, export_id, export_arn, export_request_arn, last_error FROM podyn.tables"
            " WHERE source_table = %s",
            (table,),
        ).fetchone()
    assert row is not None
    return tuple(row)


def rows_loaded(pg_url: str, table: str) -> int:
    """The items the load has committed (0 before the table is made)."""
    with connect(pg_url) as conn:
        made = conn.execute("SELECT to_regclass('podyn.export_files') IS NOT NULL").fetchone()
        if not made or not made[0]:
            return 0
        row = conn.execute(
            "SELECT coalesce(sum(items_loaded), 0) FROM podyn.export_files WHERE target_table = %s", (table,)
        ).fetchone()
    return int(row[0]) if row else 0


def test_export_to_asks_for_an_export_waits_and_loads_it(
    server: ScriptedStreamServer,
    script: ExportScript,
    ddb_server: Any,
    ddb: Any,
    s3_server: Any,
    export_bucket: str,
    pg_url: str,
    create_table: Any,
) -> None:
    table = create_table(name=fresh(), items=EDGE_ITEMS + many_items(300))
    result = assert_exit(export_to(server, pg_url, table, export_bucket, s3_server))
    (request,) = script.calls_of("ExportTableToPointInTime")
    table_arn = ddb.describe_table(TableName=table)["Table"]["TableArn"]
    assert request == {
        "TableArn": table_arn,
        "ClientToken": export_client_token(table_arn, f"public.{table}", f"s3://{export_bucket}/exports"),
        "S3Bucket": export_bucket,
        "S3Prefix": "exports",
        "ExportFormat": "DYNAMODB_JSON",
        "ExportType": "FULL_EXPORT",
    }
    ((arn, description),) = script.exports.items()
    export_id = arn.rsplit("/", 1)[1]
    assert len(script.calls_of("DescribeExport")) == 3, "polled until COMPLETED"
    assert f"as export {export_id}" in result.stderr and f"export {export_id} completed" in result.stderr
    assert f"loaded from export {export_id}" in result.stderr and "0 read capacity units" in result.stderr
    assert table_differences(ddb, pg_url, table) == []
    assert table_row(pg_url, table) == ("loaded", export_id, arn, None, None)
    status = json.loads(assert_exit(podyn(ddb_server, pg_url, "--status", "--json", "-t", table)).stdout)
    (record,) = status["tables"]
    assert record["export"]["id"] == export_id and record["read_capacity_consumed"] == 0
    assert record["export"]["url"] == f"s3://{export_bucket}/exports/AWSDynamoDB/{export_id}/"
    # Loaded: the same command asks for nothing.
    again = assert_exit(export_to(server, pg_url, table, export_bucket, s3_server))
    assert "already loaded; skipping" in again.stderr
    assert len(script.calls_of("ExportTableToPointInTime")) == 1 and len(script.exports) == 1
    # --reload asks for a new export (another client token), and loads it.
    ddb.delete_item(TableName=table, Key={"pk": {"S": "limits"}})
    assert_exit(export_to(server, pg_url, table, export_bucket, s3_server, "--reload"))
    first, second = script.calls_of("ExportTableToPointInTime")
    assert first["ClientToken"] != second["ClientToken"] and len(script.exports) == 2
    assert table_differences(ddb, pg_url, table) == []
    assert row_count(pg_url, table) == len(EDGE_ITEMS) + 300 - 1


def test_kill_9_while_waiting_then_restart_waits_for_the_same_export(
    server: ScriptedStreamServer,
    script: ExportScript,
    ddb: Any,
    s3_server: Any,
    export_bucket: str,
    pg_url: str,
    create_table: Any,
) -> None:
    table = create_table(name=fresh(), items=many_items(200))
    script.released.clear()  # the export stays IN_PROGRESS until the first process is gone
    command = [sys.executable, "-m", "podyn_py", "--endpoint-url", server.endpoint_url, "-u", pg_url]
    command += ["--no-progress", "-t", table, "-s", "-d", "--export-to", f"s3://{export_bucket}/exports", *POLL]
    command += ["--s3-endpoint-url", s3_server.endpoint_url]
    process = subprocess.Popen(command, cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: len(script.calls_of("DescribeExport")) >= 2, "the first process polling its export")
        assert table_row(pg_url, table)[3] is not None, "the export's ARN is recorded before it is waited for"
        process.send_signal(signal.SIGKILL)
        process.wait(10)
    finally:
        if process.poll() is None:
            process.kill()
    assert row_count(pg_url, table) == 0
    script.released.set()
    result = assert_exit(export_to(server, pg_url, table, export_bucket, s3_server))
    assert "asked for by an earlier run" in result.stderr
    assert len(script.calls_of("ExportTableToPointInTime")) == 1, "the restart asked for no export"
    ((arn, _),) = script.exports.items()
    assert {c["ExportArn"] for c in script.calls_of("DescribeExport")} == {arn}
    assert table_differences(ddb, pg_url, table) == []
    assert table_row(pg_url, table)[:3] == ("loaded", arn.rsplit("/", 1)[1], arn)


def test_kill_9_in_the_middle_of_the_load_resumes_the_same_export(
    server: ScriptedStreamServer,
    script: ExportScript,
    ddb: Any,
    s3_server: Any,
    export_bucket: str,
    pg_url: str,
    create_table: Any,
) -> None:
    """Once the export is complete and its load has begun, a restart goes on with that export's files (the slow S3
    in front of moto lets the kill land in the middle of the file) and asks DynamoDB for nothing."""
    items = [{"pk": {"S": f"k{i:05d}"}, "r": {"S": os.urandom(150).hex()}} for i in range(4000)]
    table = create_table(name=fresh(), items=items)
    script.files = 1
    with SlowS3(s3_server.endpoint_url, chunk=16384, pause=0.05) as slow:
        command = [sys.executable, "-m", "podyn_py", "--endpoint-url", server.endpoint_url, "-u", pg_url]
        command += ["--no-progress", "-t", table, "-s", "-d", "-n", "1", *POLL]
        command += ["--export-to", f"s3://{export_bucket}/exports", "--s3-endpoint-url", slow.endpoint_url]
        process = subprocess.Popen(command, cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_for(lambda: rows_loaded(pg_url, table) > 0, "a batch of the file committed", timeout=60)
            process.send_signal(signal.SIGKILL)
            process.wait(10)
        finally:
            if process.poll() is None:
                process.kill()
    assert 0 < row_count(pg_url, table) < 4000, "killed in the middle of the file"
    calls = len(script.calls)
    result = assert_exit(export_to(server, pg_url, table, export_bucket, s3_server))
    assert "the load from export" in result.stderr and "resuming an interrupted load" in result.stderr
    assert len(script.calls) == calls, "no export asked for, none described"
    assert len(script.exports) == 1 and table_differences(ddb, pg_url, table) == []


def test_a_second_request_with_the_same_token_gets_the_same_export(
    server: ScriptedStreamServer,
    script: ExportScript,
    ddb: Any,
    s3_server: Any,
    export_bucket: str,
    pg_url: str,
    create_table: Any,
) -> None:
    """Killed after DynamoDB started the export but before its ARN was recorded: the restart asks again with the
    same client token and gets the same export back (DynamoDB's idempotency), so one export is made."""
    table = create_table(name=fresh(), items=many_items(50))
    table_arn = ddb.describe_table(TableName=table)["Table"]["TableArn"]
    token = export_client_token(table_arn, f"public.{table}", f"s3://{export_bucket}/exports")
    script.answer(
        "ExportTableToPointInTime",
        {"TableArn": table_arn, "ClientToken": token, "S3Bucket": export_bucket, "S3Prefix": "exports"},
    )
    assert_exit(export_to(server, pg_url, table, export_bucket, s3_server))
    assert [c["ClientToken"] for c in script.calls_of("ExportTableToPointInTime")] == [token, token]
    assert len(script.exports) == 1
    assert table_differences(ddb, pg_url, table) == []


@pytest.mark.parametrize("how", ["DescribeContinuousBackups", "PointInTimeRecoveryUnavailableException"])
def test_a_table_without_point_in_time_recovery_is_refused(
    server: ScriptedStreamServer,
    script: ExportScript,
    s3_server: Any,
    export_bucket: str,
    pg_url: str,
    create_table: Any,
    how: str,
) -> None:
    """DescribeContinuousBackups says DISABLED; or podyn may not ask it, and the export call is refused."""
    table = create_table(name=fresh(), items=many_items(20))
    script.pitr_off.add(table)
    if how == "PointInTimeRecoveryUnavailableException":
        script.describe_denied.add(table)
    result = assert_exit(export_to(server, pg_url, table, export_bucket, s3_server), 3)
    assert "point-in-time recovery" in result.stderr and table in result.stderr
    assert (
        f"aws dynamodb update-continuous-backups --table-name {table} --point-in-time-recovery-specification"
        " PointInTimeRecoveryEnabled=true" in result.stderr
    )
    assert script.exports == {} and row_count(pg_url, table) == 0
    assert len(script.calls_of("ExportTableToPointInTime")) == (how != "DescribeContinuousBackups")
    state, export_id, _, _, last_error = table_row(pg_url, table)
    assert (state, export_id) == ("stopped", None) and "point-in-time recovery" in last_error


def test_a_failed_export_is_an_error_and_the_next_run_asks_for_a_new_one(
    server: ScriptedStreamServer,
    script: ExportScript,
    ddb: Any,
    s3_server: Any,
    export_bucket: str,
    pg_url: str,
    create_table: Any,
) -> None:
    table = create_table(name=fresh(), items=many_items(20))
    script.failure = ("S3AccessDenied", "Failed to write to S3 bucket: Access Denied")
    result = assert_exit(export_to(server, pg_url, table, export_bucket, s3_server), 3)
    ((arn, _),) = script.exports.items()
    assert f"export {arn} of table {table} failed: S3AccessDenied: Failed to write to S3 bucket" in result.stderr
    assert row_count(pg_url, table) == 0 and table_row(pg_url, table)[0] == "stopped"
    script.failure = None  # the bucket policy was fixed
    retried = assert_exit(export_to(server, pg_url, table, export_bucket, s3_server))
    assert "failed (S3AccessDenied" in retried.stderr and "asking for a new one" in retried.stderr
    first, second = script.calls_of("ExportTableToPointInTime")
    assert first["ClientToken"] != second["ClientToken"] and len(script.exports) == 2
    assert table_differences(ddb, pg_url, table) == []


def test_with_changes_a_table_whose_stream_could_not_follow_is_refused_before_any_export(
    server: ScriptedStreamServer,
    script: ExportScript,
    s3_server: Any,
    export_bucket: str,
    pg_url: str,
    create_table: Any,
) -> None:
    """No stream: --changes could not take over from the export, nor could a bridge of incremental exports (they
    end where a stream takes over), so no export is asked for (one is billed) and nothing is loaded."""
    table = create_table(name=fresh(), items=many_items(10))
    result = assert_exit(export_to(server, pg_url, table, export_bucket, s3_server, "-c"), 3)
    assert "the table has no stream" in result.stderr and "No export was asked for" in result.stderr
    assert "no bridge of incremental exports can cover the gap" in result.stderr
    assert script.calls == [] and row_count(pg_url, table) == 0


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (("-u", "postgresql://x/y", "-s", "--export-to", "s3://b/p"), "--export-to goes with --data"),
        (
            ("-u", "postgresql://x/y", "-d", "--export-to", "s3://b/p", "--from-export", "s3://b/AWSDynamoDB/1-a/"),
            "give one",
        ),
        (("-d", "--export-to", "s3://b/p"), "not in a dry run"),
        (("-u", "postgresql://x/y", "-d", "--export-to", "s3://b/x/AWSDynamoDB/01-ab/"), "loaded with --from-export"),
        (("-u", "postgresql://x/y", "-d", "--export-to", "b/p"), "is not s3://BUCKET or s3://BUCKET/PREFIX"),
    ],
    ids=["no-data", "from-export", "dry-run", "an-export-folder", "not-s3"],
)
def test_export_to_is_refused_before_anything_is_asked(args: tuple[str, ...], error: str) -> None:
    """Usage errors (exit 2), before any connection: the CLI in this process."""
    result = CliRunner().invoke(main, ["--endpoint-url", "http://127.0.0.1:9", *args])
    assert result.exit_code == 2 and error in result.output, result.output
