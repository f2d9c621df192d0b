"""``podyn --data --from-export``: a table loaded from an export in S3 (moto's S3 API on 127.0.0.1) equals DynamoDB
(the oracle, and ``--verify``), gives the same rows as a Scan load of the same table, and reads nothing from it.

DynamoDB Local has no export API: the exports are written by the tests in the documented layout from the tables
they create in DynamoDB Local (tests/exports.py), in both formats, DYNAMODB_JSON and ION.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from exports import EDGE_ITEMS, many_items, write_export
from helpers import assert_exit, fresh, podyn
from oracle import connect, table_differences
from psycopg import sql

from podyn_py import metrics
from podyn_py.config import AwsSettings, Config, parse_postgres_url
from podyn_py.export_load import ExportLoadResult
from podyn_py.replicate import replicate
from podyn_py.target import state

FORMATS = ("DYNAMODB_JSON", "ION")


def rows(url: str, schema: str, table: str) -> list[tuple[Any, ...]]:
    """Every row as text, column by column (names included), ordered by key: what a reader of the table sees."""
    with connect(url) as conn:
        columns = [
            r[0]
            for r in conn.execute(
                "SELECT attname FROM pg_attribute WHERE attrelid = to_regclass(%s) AND attnum > 0"
                " AND NOT attisdropped ORDER BY attname",
                (sql.Identifier(schema, table).as_string(conn),),
            ).fetchall()
        ]
        selected = sql.SQL(", ").join(sql.SQL("{}::text").format(sql.Identifier(c)) for c in columns)
        query = sql.SQL("SELECT {} FROM {} ORDER BY {}::text").format(
            selected, sql.Identifier(schema, table), sql.Identifier("pk")
        )
        return [tuple(zip(columns, row, strict=True)) for row in conn.execute(query).fetchall()]


@pytest.mark.parametrize("mode", ["columns", "jsonb"])
@pytest.mark.parametrize("output_format", FORMATS)
def test_export_loads_the_same_rows_as_a_scan(
    ddb_server: Any,
    ddb: Any,
    s3: Any,
    s3_server: Any,
    export_bucket: str,
    pg_url: str,
    create_table: Any,
    output_format: str,
    mode: str,
) -> None:
    table = create_table(name=fresh(), items=EDGE_ITEMS + many_items(500))
    export = write_export(s3, ddb, table, bucket=export_bucket, output_format=output_format, files=4)
    s3_args = ("--s3-endpoint-url", s3_server.endpoint_url)
    result = assert_exit(
        podyn(
            ddb_server,
            pg_url,
            "-t",
            table,
            "-s",
            "-d",
            "-m",
            mode,
            "--pg-schema",
            "exported",
            "--from-export",
            export.url,
            *s3_args,
        )
    )
    assert f"loaded from export {export.export_id}" in result.stderr
    assert "0 read capacity units consumed" in result.stderr
    assert table_differences(ddb, pg_url, table, schema="exported") == []
    assert_exit(podyn(ddb_server, pg_url, "-t", table, "-s", "-d", "-m", mode, "--pg-schema", "scanned"))
    assert rows(pg_url, "exported", table) == rows(pg_url, "scanned", table)
    assert_exit(podyn(ddb_server, pg_url, "--verify", "-t", table, "--pg-schema", "exported"))

    status = json.loads(
        assert_exit(podyn(ddb_server, pg_url, "--status", "--json", "-t", table, "--pg-schema", "exported")).stdout
    )
    (record,) = status["tables"]
    assert record["state"] == "loaded"
    assert record["items_loaded"] == export.items == len(EDGE_ITEMS) + 500
    assert record["read_capacity_consumed"] == 0
    assert record["export"]["id"] == export.export_id
    assert record["export"]["format"] == output_format
    assert record["export"]["item_count"] == export.items
    assert record["export"]["size_bytes"] > 0
    assert record["export"]["time"] is not None
    assert [f["done"] for f in record["export_files"]] == [True] * 4
    assert sum(f["items_loaded"] for f in record["export_files"]) == export.items
    text = assert_exit(podyn(ddb_server, pg_url, "--status", "-t", table, "--pg-schema", "exported")).stdout
    assert f"export: {export.export_id} ({output_format}" in text
    assert "read capacity consumed from the table: 0 RCU" in text
    with connect(pg_url) as conn:
        version = conn.execute("SELECT version FROM podyn.schema_version").fetchone()
    assert version == (state.SCHEMA_VERSION,)


def test_run_summary_metrics_and_dry_run(
    ddb_server: Any, ddb: Any, s3: Any, s3_server: Any, export_bucket: str, pg_url: str, create_table: Any
) -> None:
    """In process: the run's summary and the metrics carry the export and zero read capacity. The dry run reads the
    export and prints the COPY of each file's batches."""
    table = create_table(name=fresh(), items=many_items(30))
    export = write_export(s3, ddb, table, bucket=export_bucket, files=2)
    dry = assert_exit(
        podyn(
            ddb_server,
            None,
            "-t",
            table,
            "-s",
            "-d",
            "--from-export",
            export.url,
            "--s3-endpoint-url",
            s3_server.endpoint_url,
        )
    )
    assert dry.stdout.count("COPY") == 2 and "lines 1-15" in dry.stdout
    assert f"-- {table}: 30 rows would be copied" in dry.stdout
    config = Config(
        tables=(table,),
        postgres=parse_postgres_url(pg_url),
        schema=True,
        data=True,
        from_export=export.url,
        aws=AwsSettings(endpoint_url=ddb_server.endpoint_url, s3_endpoint_url=s3_server.endpoint_url),
    )
    summary = replicate(config)
    (result,) = summary.loaded
    assert isinstance(result, ExportLoadResult)
    assert (result.items, result.export_id, result.read_capacity) == (30, export.export_id, 0.0)
    assert result.export_time == export.export_time
    sample = metrics.REGISTRY.get_sample_value
    assert sample("podyn_read_capacity_consumed_total", {"table": table}) == 0.0
    assert sample("podyn_items_loaded_total", {"table": table}) == 30.0
    labels = {"table": table, "export_id": export.export_id, "format": "DYNAMODB_JSON", "url": export.url}
    assert sample("podyn_export_info", labels) == 1.0
    assert sample("podyn_export_items", {"table": table}) == 30.0
    assert sample("podyn_export_time_seconds", {"table": table}) == export.export_time.timestamp()


def test_a_table_loaded_before_the_export_columns_continues_after_the_migration(
    ddb_server: Any, ddb: Any, pg_url: str, create_table: Any
) -> None:
    """Metadata of the release before (no export columns, no podyn.export_files) is migrated in place:
    a table it loaded stays loaded, and --status reads it (no export, read capacity not recorded)."""
    table = create_table(name=fresh(), items=many_items(10))
    assert_exit(podyn(ddb_server, pg_url, "-s", "-d", "-t", table))
    # The version before the migration that added the export columns (later ones are idempotent: run again).
    before = 1 + next(i for i, step in enumerate(state._MIGRATIONS) if "podyn.export_files" in step)
    with connect(pg_url) as conn:
        conn.execute("DROP VIEW podyn.units")  # it shows the export files; that migration makes it again
        conn.execute("DROP TABLE podyn.export_files")
        conn.execute(
            """ALTER TABLE podyn.tables DROP COLUMN export_id, DROP COLUMN export_arn, DROP COLUMN export_url,
               DROP COLUMN export_time, DROP COLUMN export_item_count, DROP COLUMN export_size_bytes,
               DROP COLUMN export_format, DROP COLUMN read_capacity_consumed"""
        )
        conn.execute("UPDATE podyn.schema_version SET version = %s", (before,))
    result = assert_exit(podyn(ddb_server, pg_url, "-s", "-d", "-t", table))
    assert f"migrated from version {before} to {state.SCHEMA_VERSION}" in result.stderr
    assert "already loaded" in result.stderr
    (record,) = json.loads(assert_exit(podyn(ddb_server, pg_url, "--status", "--json", "-t", table)).stdout)["tables"]
    assert (record["state"], record["items_loaded"], record["export"], record["read_capacity_consumed"]) == (
        "loaded",
        10,
        None,
        None,
    )
