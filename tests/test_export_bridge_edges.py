"""The edges the incremental-export bridge is built on, through the real clients: an INCREMENTAL_EXPORT asked for
with its window and view type and a client token, described until complete, its manifest and data files read
from moto's S3 and made changes by the same core as stream records.

DynamoDB Local has no export API (and no point-in-time log to take an incremental export from):
ExportTableToPointInTime, DescribeExport and DescribeContinuousBackups are scripted at the HTTP boundary
(tests/scripted_exports.py, relaying the rest to DynamoDB Local), and the incremental export's files are written
into moto's S3 from the lines the test gives, in the Developer Guide's layout.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from exports import incremental_line
from helpers import fresh
from scripted_exports import ExportScript
from scripted_stream_server import ScriptedStreamServer

from podyn_py.core.changes import Delete, Upsert, from_incremental
from podyn_py.core.exports import BridgeWindow, ExportFileRecord, ExportStatus, bridge_client_token
from podyn_py.demo_services import local_client
from podyn_py.errors import ConfigError
from podyn_py.source import dynamodb, export


@pytest.fixture
def script(s3: Any, ddb: Any) -> ExportScript:
    return ExportScript(s3, ddb, polls=2)


@pytest.fixture
def server(ddb_server: Any, script: ExportScript) -> Iterator[ScriptedStreamServer]:
    with ScriptedStreamServer(ddb_server.endpoint_url, dynamodb=script) as running:
        yield running


def test_an_incremental_export_asked_for_waited_for_and_read(
    server: ScriptedStreamServer, script: ExportScript, ddb: Any, s3: Any, export_bucket: str, create_table: Any
) -> None:
    table = create_table(name=fresh())
    table_arn = ddb.describe_table(TableName=table)["Table"]["TableArn"]
    now = datetime.now(UTC).replace(microsecond=0)
    window = BridgeWindow(0, now - timedelta(hours=2), now - timedelta(hours=1))
    key = {"pk": {"S": "a"}}
    script.incremental_lines = [
        incremental_line(key, {"pk": {"S": "a"}, "v": {"N": "2"}}, {"pk": {"S": "a"}, "v": {"N": "1"}}, window.start),
        incremental_line({"pk": {"S": "b"}}, None, {"pk": {"S": "b"}}, window.end - timedelta(seconds=1)),
        incremental_line({"pk": {"S": "late"}}, {"pk": {"S": "late"}}, None, window.end),  # outside: [start, end)
    ]
    client = local_client("dynamodb", server.endpoint_url)
    enabled, earliest, latest = dynamodb.point_in_time_window(client, table)
    assert enabled is True and earliest is not None and latest is not None and earliest < latest
    token = bridge_client_token(table_arn, f"public.{table}", "0123-ab", window)
    asked = [
        dynamodb.start_export(
            client,
            table,
            table_arn,
            bucket=export_bucket,
            prefix="bridge",
            client_token=token,
            incremental=(window.start, window.end),
        )
        for _ in range(2)
    ]
    assert asked[0].arn == asked[1].arn, "the same client token gives back the same export"
    request = script.calls_of("ExportTableToPointInTime")[0]
    assert request["ExportType"] == "INCREMENTAL_EXPORT" and request["ClientToken"] == token
    assert request["IncrementalExportSpecification"] == {
        "ExportFromTime": window.start.timestamp(),
        "ExportToTime": window.end.timestamp(),
        "ExportViewType": "NEW_AND_OLD_IMAGES",
    }
    job = asked[0]
    while job.status is ExportStatus.IN_PROGRESS:
        job = dynamodb.describe_export(client, table, job.arn)
    assert job.status is ExportStatus.COMPLETED and job.item_count == 2
    manifest = export.read_manifest(s3, job.folder_url, incremental=True)
    assert manifest.export_time == window.end and manifest.item_count == 2
    with pytest.raises(ConfigError, match="not a full export"):
        export.read_manifest(s3, job.folder_url)
    reader = export.ExportReader(s3, manifest, incremental=True)
    lines: list[dict[str, Any]] = []
    for file in manifest.files:
        record = ExportFileRecord(file.key, file.ordinal, file.item_count, file.md5, 0, 0, False)
        for batch in reader.read_file(record, stop=threading.Event()):
            lines.extend(batch.items)
    changes = sorted((from_incremental(line, ["pk"], table=table) for line in lines), key=lambda c: str(c.key))
    assert isinstance(changes[0], Upsert) and changes[0].item["v"] == {"N": "2"}
    assert changes[0].created_at == window.start
    assert isinstance(changes[1], Delete) and changes[1].key == {"pk": {"S": "b"}}
    client.close()
