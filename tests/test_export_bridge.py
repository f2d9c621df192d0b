"""The bridge of incremental exports from a load from an export to a stream enabled after the export was made:
the load, then the bridge's changes, then the stream from the bridge's end minus the margin, so that the table ends
as DynamoDB has it whatever overlapped; and a kill -9 while the bridge's export runs asks DynamoDB for nothing
twice.

What is scripted, and why: DynamoDB Local has no export API, no point-in-time log to take an incremental export
from, and its stream keeps every record since the table was created (its label is the table's creation time). So
ExportTableToPointInTime, DescribeExport and DescribeContinuousBackups are answered at the HTTP boundary
(tests/scripted_exports.py: the incremental export's files are written into moto's S3 from the lines the test
gives, those of the window asked for), and the table's stream is a scripted one (tests/scripted_stream_server.py)
whose label says it was enabled 15 minutes ago, after the export's time 40 minutes ago, holding only the records
the test appends. DynamoDB Local holds the table's key schema and, for the oracle, the state the test expects.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from exports import incremental_line, write_export
from helpers import STREAM, assert_exit, fresh, podyn, status_record, wait_equal, wait_for, wait_for_state
from oracle import connect
from scripted_exports import ExportScript
from scripted_stream_server import ScriptedStreamServer, StreamScript

from podyn_py.core.exports import EXPORT_REPLAY_MARGIN_SECONDS, EXPORT_TIME_ACCURACY_SECONDS

POLL = ("--export-poll", "0.1")
MARGIN = timedelta(seconds=EXPORT_REPLAY_MARGIN_SECONDS)
ACCURACY = timedelta(seconds=EXPORT_TIME_ACCURACY_SECONDS)


@pytest.fixture
def script(s3: Any, ddb: Any) -> ExportScript:
    return ExportScript(s3, ddb, polls=2)


@pytest.fixture
def server(ddb_server: Any, script: ExportScript) -> Iterator[ScriptedStreamServer]:
    with ScriptedStreamServer(ddb_server.endpoint_url, dynamodb=script) as running:
        yield running


def item(pk: str, counter: int) -> dict[str, Any]:
    return {"pk": {"S": pk}, "counter": {"N": str(counter)}}


class Scenario:
    """Writes before and around the export time (in the export), in the bridge's window only (in the incremental
    export: the stream did not exist yet), in both (the window's end overlaps the stream's start), and after (the
    stream only)."""

    def __init__(self, ddb: Any, s3: Any, bucket: str, table: str, script: ExportScript) -> None:
        now = datetime.now(UTC).replace(microsecond=0)
        self.export_time = now - timedelta(minutes=40)
        self.stream_enabled = now - timedelta(minutes=15)
        self.bridge_end = self.stream_enabled + ACCURACY + MARGIN
        exported = [item(f"k{n}", 0) for n in range(10)]
        self.export = write_export(
            s3, ddb, table, bucket=bucket, items=exported, export_time=self.export_time, files=2, prefix="exports"
        )
        t = self.export_time
        script.incremental_lines = [
            incremental_line({"pk": {"S": "k4"}}, item("k4", 1), item("k4", 0), t - timedelta(minutes=3)),
            incremental_line({"pk": {"S": "k1"}}, item("k1", 1), item("k1", 0), t + timedelta(minutes=1)),
            incremental_line({"pk": {"S": "k2"}}, None, item("k2", 0), t + timedelta(minutes=2)),
            incremental_line({"pk": {"S": "b1"}}, item("b1", 1), None, t + timedelta(minutes=3)),
            incremental_line(
                {"pk": {"S": "k3"}}, item("k3", 5), item("k3", 0), self.stream_enabled + timedelta(minutes=1)
            ),
        ]
        self.expected = {f"k{n}": 0 for n in range(10)} | {"k1": 1, "k3": 6, "k4": 1, "b1": 2, "s1": 1}
        del self.expected["k2"], self.expected["k5"]
        self.stream = StreamScript(table, label=self.stream_enabled.strftime("%Y-%m-%dT%H:%M:%S.000"))
        # DynamoDB Local holds what the table holds now, for the oracle.
        for pk, counter in self.expected.items():
            ddb.put_item(TableName=table, Item=item(pk, counter))

    def stream_writes(self) -> None:
        shard = self.stream.open_shard()
        self.stream.put(shard, "k3", 5)  # in the bridge too: applied twice, the same image
        self.stream.put(shard, "k3", 6)
        self.stream.put(shard, "b1", 2)
        self.stream.remove(shard, "k5")
        self.stream.put(shard, "s1", 1)


def bridge_rows(pg_url: str, table: str) -> list[tuple[Any, ...]]:
    """The table's bridge as podyn.bridge_exports holds it (none before podyn made its metadata schema)."""
    with connect(pg_url) as conn:
        if conn.execute("SELECT to_regclass('podyn.bridge_exports')").fetchone() == (None,):
            return []
        return conn.execute(
            """SELECT b.ordinal, b.export_from, b.export_to, b.export_arn IS NOT NULL, b.items_applied,
                      b.applied_at IS NOT NULL
               FROM podyn.bridge_exports b JOIN podyn.tables t USING (target_schema, target_table)
               WHERE t.source_table = %s ORDER BY 1""",
            (table,),
        ).fetchall()


def replay_from(pg_url: str, table: str) -> tuple[Any, ...]:
    with connect(pg_url) as conn:
        row = conn.execute(
            "SELECT replay_from, bridge_to, export_time FROM podyn.tables WHERE source_table = %s", (table,)
        ).fetchone()
    assert row is not None
    return tuple(row)


def incremental_requests(script: ExportScript) -> list[dict[str, Any]]:
    return [c for c in script.calls_of("ExportTableToPointInTime") if c.get("ExportType") == "INCREMENTAL_EXPORT"]


def test_a_stream_enabled_after_the_export_is_bridged_by_an_incremental_export(
    server: ScriptedStreamServer,
    script: ExportScript,
    ddb: Any,
    s3: Any,
    s3_server: Any,
    export_bucket: str,
    pg_url: str,
    create_table: Any,
    services: Any,
) -> None:
    table = create_table(name=fresh(), stream_view_type=STREAM)
    scenario = Scenario(ddb, s3, export_bucket, table, script)
    server.add(scenario.stream)
    scenario.stream_writes()
    args = ("-s", "-d", "-c", "--from-export", scenario.export.url, "--s3-endpoint-url", s3_server.endpoint_url)
    service = services(pg_url, table, *args, *POLL, endpoint=server.endpoint_url)
    wait_for_state(pg_url, table, "live", timeout=90, service=service)
    wait_equal(ddb, pg_url, table, service=service)
    (request,) = incremental_requests(script)
    start = scenario.export_time - MARGIN
    assert request["IncrementalExportSpecification"] == {
        "ExportFromTime": start.timestamp(),
        "ExportToTime": scenario.bridge_end.timestamp(),
        "ExportViewType": "NEW_AND_OLD_IMAGES",
    }
    assert request["S3Bucket"] == export_bucket and request["S3Prefix"] == "exports"  # beside the export
    assert request["ClientToken"].startswith("podyn-")
    assert bridge_rows(pg_url, table) == [(0, start, scenario.bridge_end, True, 5, True)]
    replayed_from, bridge_to, exported = replay_from(pg_url, table)
    assert bridge_to == scenario.bridge_end and exported == scenario.export_time
    assert replayed_from == scenario.bridge_end - MARGIN
    with connect(pg_url) as conn:
        rows = dict(conn.execute(f'SELECT pk, counter FROM public."{table}"').fetchall())
    assert {pk: int(c) for pk, c in rows.items()} == scenario.expected
    (shown,) = status_record(server, pg_url, table)["bridge"]
    assert shown["applied"] is True and shown["export_arn"] and shown["window"]["ordinal"] == 0
    text = assert_exit(podyn(server, pg_url, "--status", "-t", table)).stdout
    assert "bridge: 1/1 incremental exports applied, from" in text
    assert service.stop() == 0


def test_a_kill_during_the_bridge_asks_for_nothing_twice(
    server: ScriptedStreamServer,
    script: ExportScript,
    ddb: Any,
    s3: Any,
    s3_server: Any,
    export_bucket: str,
    pg_url: str,
    create_table: Any,
    services: Any,
) -> None:
    table = create_table(name=fresh(), stream_view_type=STREAM)
    scenario = Scenario(ddb, s3, export_bucket, table, script)
    server.add(scenario.stream)
    scenario.stream_writes()
    script.released.clear()  # the incremental export stays IN_PROGRESS until released
    args = ("-s", "-d", "-c", "--from-export", scenario.export.url, "--s3-endpoint-url", s3_server.endpoint_url)
    first = services(pg_url, table, *args, *POLL, endpoint=server.endpoint_url)
    wait_for(
        lambda: [r[3] for r in bridge_rows(pg_url, table)] == [True] and len(script.calls_of("DescribeExport")) > 2,
        "the incremental export asked for, recorded and waited for",
        timeout=60,
        service=first,
    )
    assert first.stop(signal.SIGKILL) == -signal.SIGKILL
    assert [r[5] for r in bridge_rows(pg_url, table)] == [False]
    script.released.set()
    second = services(pg_url, table, *args, *POLL, endpoint=server.endpoint_url)
    wait_for_state(pg_url, table, "live", timeout=90, service=second)
    wait_equal(ddb, pg_url, table, service=second)
    assert len(incremental_requests(script)) == 1, "the restart waited for the export asked for before"
    assert [r[4:] for r in bridge_rows(pg_url, table)] == [(5, True)]
    assert second.stop() == 0


def test_a_failed_incremental_export_is_asked_for_anew_by_the_next_run(
    server: ScriptedStreamServer,
    script: ExportScript,
    ddb: Any,
    s3: Any,
    s3_server: Any,
    export_bucket: str,
    pg_url: str,
    create_table: Any,
    services: Any,
) -> None:
    """The export script makes the incremental export FAILED (as DynamoDB reports one): the table stops with
    DynamoDB's reason, nothing of the bridge applied; the next run asks for a new export (a new client token, since
    the same one would give the failed export back) and goes on."""
    table = create_table(name=fresh(), stream_view_type=STREAM)
    scenario = Scenario(ddb, s3, export_bucket, table, script)
    server.add(scenario.stream)
    scenario.stream_writes()
    script.failure = ("IncrementalExportFailed", "S3 access denied while writing")
    args = ("-t", table, "-s", "-d", "--from-export", scenario.export.url, "--s3-endpoint-url", s3_server.endpoint_url)
    failed = assert_exit(podyn(server, pg_url, *args, *POLL), 3)
    assert "IncrementalExportFailed: S3 access denied while writing" in failed.stderr
    assert "the next run asks for a new one" in failed.stderr
    assert [r[3:] for r in bridge_rows(pg_url, table)] == [(False, None, False)]
    refused = assert_exit(podyn(server, pg_url, "-t", table, "-c"), 3)
    assert "not applied yet" in refused.stderr
    script.failure = None
    service = services(pg_url, table, *args[2:], "-c", *POLL, endpoint=server.endpoint_url)
    wait_for_state(pg_url, table, "live", timeout=90, service=service)
    wait_equal(ddb, pg_url, table, service=service)
    first, second = incremental_requests(script)
    assert first["ClientToken"] != second["ClientToken"]
    assert first["IncrementalExportSpecification"] == second["IncrementalExportSpecification"]
    assert [r[4:] for r in bridge_rows(pg_url, table)] == [(5, True)]
    assert service.stop() == 0


def test_excluded_attributes_stay_out_of_the_export_load_and_the_bridge(
    server: ScriptedStreamServer,
    script: ExportScript,
    ddb: Any,
    s3: Any,
    s3_server: Any,
    export_bucket: str,
    pg_url: str,
    create_table: Any,
    services: Any,
) -> None:
    """``--exclude-attributes`` holds for the items of the export's files and the images of the bridge's
    incremental export as it does for a Scan and a stream: no column, no value, not even in a rejected line."""
    table = create_table(name=fresh(), stream_view_type=STREAM)
    now = datetime.now(UTC).replace(microsecond=0)
    export_time = now - timedelta(minutes=40)
    enabled = now - timedelta(minutes=15)
    secret = {"secret": {"S": "SECRET value"}}
    export = write_export(
        s3, ddb, table, bucket=export_bucket, items=[item(f"k{n}", 0) | secret for n in range(3)],
        export_time=export_time, files=1, prefix="exports",
    )  # fmt: skip
    script.incremental_lines = [
        incremental_line({"pk": {"S": "b1"}}, item("b1", 1) | secret, None, export_time + timedelta(minutes=1)),
        incremental_line({"pk": {"S": "k1"}}, item("k1", 2) | secret, item("k1", 0) | secret, export_time),
        # Keys without the table's key: rejected, kept in podyn.rejected without the attribute left out.
        incremental_line({"id": {"S": "x1"}}, {"id": {"S": "x1"}} | secret, None, export_time),
    ]
    stream = StreamScript(table, label=enabled.strftime("%Y-%m-%dT%H:%M:%S.000"))
    server.add(stream)
    stream.open_shard()
    args = ("-s", "-d", "-c", "--from-export", export.url, "--s3-endpoint-url", s3_server.endpoint_url)
    service = services(
        pg_url, table, *args, *POLL, "--exclude-attributes", f"{table}.secret", endpoint=server.endpoint_url
    )
    wait_for_state(pg_url, table, "live", timeout=90, service=service)
    assert service.stop() == 0
    with connect(pg_url) as conn:
        rows = conn.execute(f'SELECT to_jsonb(t) FROM public."{table}" t ORDER BY pk').fetchall()
        kept = conn.execute("SELECT item::text FROM podyn.rejected").fetchall()
    assert [r[0] for r in rows] == [
        {"pk": "b1", "counter": 1},
        {"pk": "k0", "counter": 0},
        {"pk": "k1", "counter": 2},
        {"pk": "k2", "counter": 0},
    ]
    (rejected,) = kept
    assert "x1" in rejected[0] and "SECRET" not in rejected[0] and "secret" not in rejected[0]
