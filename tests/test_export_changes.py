"""From an export to the stream with no gap: ``--changes`` after a load from an export replays the stream from the
export's time minus 5 minutes, so writes made around the export time end as DynamoDB has them; a stream that cannot
reach back that far is bridged by incremental exports (tests/test_export_bridge.py), or, when no bridge can be
built (no stream, point-in-time recovery off), refused before anything is loaded.

DynamoDB Local has no export API and its stream label is the table's creation time: the exports are written by
the tests (tests/exports.py) with an export time a little over two minutes after the stream was enabled (as if the
export had been made then), or in the past for a stream enabled after the export. A stream older than 24 hours
cannot be made here: that refusal is checked on the pure function in tests/test_export_source.py.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from exports import write_export
from helpers import STREAM, assert_exit, fresh, increment, items, podyn, row_count, wait_equal, wait_for_state
from oracle import connect
from scripted_exports import ExportScript
from scripted_stream_server import ScriptedStreamServer

from podyn_py.core.exports import EXPORT_REPLAY_MARGIN_SECONDS


def export_times(pg_url: str, table: str) -> tuple[datetime, datetime, datetime]:
    with connect(pg_url) as conn:
        row = conn.execute(
            "SELECT export_time, replay_from, load_started_at FROM podyn.tables WHERE source_table = %s", (table,)
        ).fetchone()
    assert row is not None
    return row[0], row[1], row[2]


def write_around(ddb: Any, table: str) -> None:
    """Updates, deletes and new items: changes the stream has and the export may or may not have."""
    for key in ("k1", "k2", "k3", "k1"):
        increment(ddb, table, key)
    ddb.delete_item(TableName=table, Key={"pk": {"S": "k4"}})
    ddb.put_item(TableName=table, Item={"pk": {"S": "new"}, "v": {"N": "1"}, "m": {"M": {"x": {"BOOL": True}}}})


def test_changes_follow_an_export_load_from_its_time(
    ddb_server: Any,
    ddb: Any,
    s3: Any,
    s3_server: Any,
    export_bucket: str,
    pg_url: str,
    create_table: Any,
    services: Any,
) -> None:
    table = create_table(name=fresh(), stream_view_type=STREAM, items=items(200))
    write_around(ddb, table)  # before the export: in it, and in the stream
    export = write_export(s3, ddb, table, bucket=export_bucket, output_format="ION", files=3)
    write_around(ddb, table)  # after it: only in the stream
    ddb.delete_item(TableName=table, Key={"pk": {"S": "k5"}})
    service = services(
        pg_url, table, "-s", "-d", "-c", "--from-export", export.url, "--s3-endpoint-url", s3_server.endpoint_url
    )
    wait_for_state(pg_url, table, "live", timeout=60, service=service)
    wait_equal(ddb, pg_url, table, service=service)
    increment(ddb, table, "k6")  # and while live
    wait_equal(ddb, pg_url, table, service=service)
    exported, replay_from, started = export_times(pg_url, table)
    assert exported == export.export_time
    assert replay_from == exported - timedelta(seconds=EXPORT_REPLAY_MARGIN_SECONDS)
    assert replay_from != started - timedelta(minutes=2), "replayed from the export, not from the load's start"
    assert service.stop() == 0


def test_a_stream_enabled_after_the_export_without_pitr_is_refused_before_loading(
    ddb_server: Any, ddb: Any, s3: Any, s3_server: Any, export_bucket: str, pg_url: str, create_table: Any
) -> None:
    """A bridge of incremental exports needs point-in-time recovery, which DynamoDB Local has no API for:
    DescribeContinuousBackups is scripted at the HTTP boundary (tests/scripted_exports.py) to say it is off."""
    table = create_table(name=fresh(), stream_view_type=STREAM, items=items(50))
    an_hour_ago = datetime.now(UTC) - timedelta(hours=1)
    export = write_export(s3, ddb, table, bucket=export_bucket, export_time=an_hour_ago)
    script = ExportScript(s3, ddb)
    script.pitr_off.add(table)
    with ScriptedStreamServer(ddb_server.endpoint_url, dynamodb=script) as server:
        _refused_then_loaded_with_a_warning(server, pg_url, table, export, s3_server)
    assert not script.calls_of("ExportTableToPointInTime")


def _refused_then_loaded_with_a_warning(server: Any, pg_url: str, table: str, export: Any, s3_server: Any) -> None:
    args = ("-t", table, "-s", "-d", "--from-export", export.url, "--s3-endpoint-url", s3_server.endpoint_url)
    refused = assert_exit(podyn(server, pg_url, *args, "-c"), 3)
    assert "the table's stream was enabled at" in refused.stderr
    assert "point-in-time recovery, which incremental exports read, is disabled" in refused.stderr
    assert "Nothing was loaded" in refused.stderr and "incremental exports" in refused.stderr
    assert row_count(pg_url, table) == 0
    with connect(pg_url) as conn:
        assert conn.execute("SELECT count(*) FROM podyn.export_files").fetchone() == (0,)
    # Without --changes the copy is made, with a warning; a later --changes is refused the same way.
    loaded = assert_exit(podyn(server, pg_url, *args))
    assert "--changes will refuse to follow this load" in loaded.stderr
    assert row_count(pg_url, table) == 50
    later = assert_exit(podyn(server, pg_url, "-t", table, "-c"), 3)
    assert f"loaded from export {export.export_id}" in later.stderr and "incremental exports" in later.stderr


def test_a_table_without_a_stream_is_refused_before_loading(
    ddb_server: Any, ddb: Any, s3: Any, s3_server: Any, export_bucket: str, pg_url: str, create_table: Any
) -> None:
    table = create_table(name=fresh(), items=items(20))
    export = write_export(s3, ddb, table, bucket=export_bucket)
    refused = assert_exit(
        podyn(
            ddb_server,
            pg_url,
            *("-t", table, "-s", "-d", "-c", "--from-export", export.url, "--s3-endpoint-url", s3_server.endpoint_url),
        ),
        3,
    )
    assert "the table has no stream" in refused.stderr and "Nothing was loaded" in refused.stderr
    assert row_count(pg_url, table) == 0
