"""A load from an export that goes wrong: a data file that is not what the manifest says stops the table with an
error naming the file and nothing claims to be loaded; a load killed with -9 in the middle of a file resumes after
the last committed line, writing no row twice.

The exports are written by the tests (DynamoDB Local has none, tests/exports.py); the slow S3 is a proxy in front of
moto's server that trickles response bodies, so that the kill lands in the middle of a file.
"""

from __future__ import annotations

import gzip
import json
import os
import signal
import subprocess
import sys
from typing import Any

import pytest
from exports import SlowS3, write_export
from helpers import REPO_ROOT, assert_exit, fresh, podyn, row_count, wait_for
from oracle import connect, table_differences
from psycopg import sql


def load(ddb_server: Any, pg_url: str, table: str, url: str, endpoint: str, *args: str) -> Any:
    return podyn(
        ddb_server, pg_url, "-t", table, "-s", "-d", "--from-export", url, "--s3-endpoint-url", endpoint, *args
    )


def files_state(pg_url: str, table: str) -> list[tuple[str, int, int, bool]]:
    with connect(pg_url) as conn:
        rows = conn.execute(
            "SELECT data_file_key, line, items_loaded, done FROM podyn.export_files WHERE target_table = %s"
            " ORDER BY ordinal",
            (table,),
        ).fetchall()
    return [(r[0], r[1], r[2], r[3]) for r in rows]


def table_state(pg_url: str, table: str) -> tuple[str, Any, str | None]:
    with connect(pg_url) as conn:
        row = conn.execute(
            "SELECT state, load_finished_at, last_error FROM podyn.tables WHERE source_table = %s", (table,)
        ).fetchone()
    assert row is not None
    return row[0], row[1], row[2]


def many(count: int) -> list[dict[str, Any]]:
    return [{"pk": {"S": f"k{i:05d}"}, "v": {"N": str(i)}} for i in range(count)]


def count_mismatch(s3: Any, bucket: str, export: Any, key: str) -> None:
    folder = export.url.split(f"s3://{bucket}/", 1)[1]
    manifest = s3.get_object(Bucket=bucket, Key=f"{folder}manifest-files.json")["Body"].read().decode()
    entries = [json.loads(line) for line in manifest.splitlines()]
    for entry in entries:
        if entry["dataFileS3Key"] == key:
            entry["itemCount"] += 1
    s3.put_object(
        Bucket=bucket, Key=f"{folder}manifest-files.json", Body="".join(json.dumps(e) + "\n" for e in entries)
    )
    summary = json.loads(s3.get_object(Bucket=bucket, Key=f"{folder}manifest-summary.json")["Body"].read())
    summary["itemCount"] += 1
    s3.put_object(Bucket=bucket, Key=f"{folder}manifest-summary.json", Body=json.dumps(summary))


def truncated(s3: Any, bucket: str, export: Any, key: str) -> None:
    body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    s3.put_object(Bucket=bucket, Key=key, Body=body[: len(body) * 2 // 3])


def changed(s3: Any, bucket: str, export: Any, key: str) -> None:
    """The same number of items, but not the bytes the export wrote (its MD5 differs)."""
    content = gzip.decompress(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
    s3.put_object(Bucket=bucket, Key=key, Body=gzip.compress(content.replace(b'"N": "', b'"N": "1')))


@pytest.mark.parametrize(
    ("corrupt", "error"),
    [
        (count_mismatch, "manifest-files.json says"),
        (truncated, "is not a complete gzip file"),
        (changed, "its MD5 is"),
    ],
    ids=["count", "truncated", "md5"],
)
def test_a_file_unlike_its_manifest_stops_the_table_naming_it(
    ddb_server: Any,
    ddb: Any,
    s3: Any,
    s3_server: Any,
    export_bucket: str,
    pg_url: str,
    create_table: Any,
    corrupt: Any,
    error: str,
) -> None:
    table = create_table(name=fresh(), items=many(3000))
    export = write_export(s3, ddb, table, bucket=export_bucket, files=3)
    bad = export.data_keys[1]
    corrupt(s3, export_bucket, export, bad)
    result = assert_exit(load(ddb_server, pg_url, table, export.url, s3_server.endpoint_url, "-n", "1"), 3)
    assert f"s3://{export_bucket}/{bad}" in result.stderr and error in result.stderr
    state, finished, last_error = table_state(pg_url, table)
    assert state == "stopped" and finished is None and last_error is not None and bad in last_error
    files = {key: (line, done) for key, line, _, done in files_state(pg_url, table)}
    assert files[bad][1] is False, "the bad file is not done"
    status = podyn(ddb_server, pg_url, "--status", "-t", table)
    assert status.returncode == 3 and "stopped" in status.stdout
    verify = podyn(ddb_server, pg_url, "--verify", "-t", table)
    assert verify.returncode == 3, "a table whose load did not finish is not verified"
    # The table is not taken as loaded: once the file is put right, the load resumes and ends equal.
    good = write_export(s3, ddb, table, bucket=export_bucket, files=3)
    refused = assert_exit(load(ddb_server, pg_url, table, good.url, s3_server.endpoint_url), 3)
    assert f"from export {export.export_id} has not finished" in refused.stderr
    assert_exit(load(ddb_server, pg_url, table, good.url, s3_server.endpoint_url, "--reload"))
    assert table_differences(ddb, pg_url, table) == []


def test_kill_9_in_the_middle_of_a_file_resumes_after_the_last_committed_line(
    ddb_server: Any, ddb: Any, s3: Any, s3_server: Any, export_bucket: str, pg_url: str, create_table: Any
) -> None:
    # Incompressible values, so the file is large enough (~1 MB) to take seconds through the slow S3.
    items = [{"pk": {"S": f"k{i:05d}"}, "r": {"S": os.urandom(150).hex()}, "v": {"N": str(i)}} for i in range(4000)]
    table = create_table(name=fresh(), items=items)
    export = write_export(s3, ddb, table, bucket=export_bucket, files=1)
    assert_exit(podyn(ddb_server, pg_url, "-t", table, "-s"))
    with connect(pg_url) as conn:  # every row version PostgreSQL receives
        conn.execute(
            sql.SQL(
                """CREATE TABLE audit (pk text, op text);
                   CREATE FUNCTION audit_row() RETURNS trigger LANGUAGE plpgsql AS $$
                   BEGIN INSERT INTO audit VALUES (NEW.pk, TG_OP); RETURN NEW; END $$;
                   CREATE TRIGGER audit AFTER INSERT OR UPDATE ON {} FOR EACH ROW EXECUTE FUNCTION audit_row();"""
            ).format(sql.Identifier(table))
        )
    with SlowS3(s3_server.endpoint_url, chunk=16384, pause=0.05) as slow:
        command = [sys.executable, "-m", "podyn_py", "--endpoint-url", ddb_server.endpoint_url, "-u", pg_url]
        command += ["--no-progress", "-t", table, "-d", "-n", "1", "--from-export", export.url]
        command += ["--s3-endpoint-url", slow.endpoint_url]
        process = subprocess.Popen(command, cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            wait_for(
                lambda: any(line > 0 for _, line, _, _ in files_state(pg_url, table)),
                "a batch of the file committed",
                timeout=60,
            )
            process.send_signal(signal.SIGKILL)
            process.wait(10)
        finally:
            if process.poll() is None:
                process.kill()
            assert process.stderr is not None
            process.stderr.close()
    ((_, line, loaded, done),) = files_state(pg_url, table)
    assert 0 < line < 4000 and not done, "killed in the middle of the file"
    assert loaded == line == row_count(pg_url, table)
    result = assert_exit(
        podyn(
            ddb_server,
            pg_url,
            "-t",
            table,
            "-d",
            "--from-export",
            export.url,
            "--s3-endpoint-url",
            s3_server.endpoint_url,
        )
    )
    assert "resuming an interrupted load" in result.stderr
    assert files_state(pg_url, table)[0][1:] == (4000, 4000, True)
    assert table_differences(ddb, pg_url, table) == []
    with connect(pg_url) as conn:
        written = conn.execute("SELECT count(*), count(DISTINCT pk), bool_and(op = 'INSERT') FROM audit").fetchone()
    assert written == (4000, 4000, True), "every row written once, by COPY"
    assert table_state(pg_url, table)[0] == "loaded"


def test_a_reload_from_an_export_starts_over(
    ddb_server: Any, ddb: Any, s3: Any, s3_server: Any, export_bucket: str, pg_url: str, create_table: Any
) -> None:
    """A loaded table is skipped; --reload empties it and loads the new export; an export of another table is
    refused before anything is written."""
    table = create_table(name=fresh(), items=many(100))
    first = write_export(s3, ddb, table, bucket=export_bucket, files=2)
    assert_exit(load(ddb_server, pg_url, table, first.url, s3_server.endpoint_url))
    ddb.delete_item(TableName=table, Key={"pk": {"S": "k00000"}})
    second = write_export(s3, ddb, table, bucket=export_bucket, files=2)
    skipped = assert_exit(load(ddb_server, pg_url, table, second.url, s3_server.endpoint_url))
    assert "already loaded; skipping" in skipped.stderr and row_count(pg_url, table) == 100
    assert_exit(load(ddb_server, pg_url, table, second.url, s3_server.endpoint_url, "--reload"))
    assert row_count(pg_url, table) == 99 and table_differences(ddb, pg_url, table) == []
    other = create_table(name=fresh(), items=many(5))
    wrong = assert_exit(load(ddb_server, pg_url, other, second.url, s3_server.endpoint_url), 3)
    assert f"is of table {table}, not {other}" in wrong.stderr
