"""The edges satisfy the protocols the orchestration speaks (podyn_py/core/ports.py), and the orchestration asks the
target what it can do instead of asking its class.

Each check is made twice: at run time (``runtime_checkable`` isinstance: the methods are there) and by mypy
(the assignments in :func:`satisfies`: the signatures fit, boto3's stubs included).
"""

from __future__ import annotations

import ast
import io
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from helpers import run_podyn

import podyn_py
from podyn_py.config import AwsSettings, Config
from podyn_py.core.ports import (
    ChangeSource,
    DataClient,
    Hold,
    ItemClient,
    ScanClient,
    ScanSource,
    StreamsClient,
    TableClient,
    Target,
)
from podyn_py.core.positions import ShardPosition
from podyn_py.core.schema import KeyAttribute, TableSpec, initial_schema
from podyn_py.errors import ConfigError
from podyn_py.replicate import replicate
from podyn_py.source import dynamodb
from podyn_py.source.fastpath import RawJsonClient
from podyn_py.source.streams import StreamReader
from podyn_py.target.dryrun import CANNOT_FOLLOW_CHANGES, DryRunTarget
from podyn_py.target.postgres import PostgresTarget, TableHold

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient
    from mypy_boto3_dynamodbstreams import DynamoDBStreamsClient

PACKAGE_DIR = Path(podyn_py.__file__).parent
ORCHESTRATION = ("load", "changes", "replicate", "verify", "conversion")
SPEC = TableSpec(source="ports", schema="public", table="ports", partition_key=KeyAttribute("pk", "S"))


def satisfies(
    boto: DynamoDBClient,
    streams: DynamoDBStreamsClient,
    fast: RawJsonClient,
    postgres: PostgresTarget,
    dry: DryRunTarget,
    hold: TableHold,
    scan: dynamodb.TableScan,
    reader: StreamReader,
) -> None:
    """Never fails at run time; mypy --strict fails on this function if an edge no longer fits its protocol."""
    boto_data: DataClient = boto
    boto_tables: TableClient = boto
    boto_streams: StreamsClient = streams
    fast_data: DataClient = fast
    fast_streams: StreamsClient = fast
    postgres_target: Target = postgres
    dry_target: Target = dry
    table_hold: Hold = hold
    scan_source: ScanSource = scan
    change_source: ChangeSource = reader
    del boto_data, boto_tables, boto_streams, fast_data, fast_streams, postgres_target, dry_target, table_hold
    del scan_source, change_source


def test_targets_satisfy_the_target_protocol(pg_url: str) -> None:
    postgres = PostgresTarget(pg_url)
    dry = DryRunTarget(io.StringIO(), citus=False)
    assert isinstance(postgres, Target)
    assert isinstance(dry, Target)
    assert isinstance(TableHold(postgres, SPEC), Hold)
    assert not isinstance(object(), Target)  # the check can fail


def test_clients_and_sources_satisfy_their_protocols(
    ddb: DynamoDBClient, ddb_streams: DynamoDBStreamsClient, ddb_server: Any
) -> None:
    settings = AwsSettings(endpoint_url=ddb_server.endpoint_url)
    fast = dynamodb.make_client(settings, data=True)
    fast_streams = dynamodb.make_client(settings, "dynamodbstreams", data=True)
    assert isinstance(fast, RawJsonClient) and isinstance(fast_streams, RawJsonClient)
    for data in (ddb, fast):
        assert isinstance(data, ScanClient) and isinstance(data, ItemClient) and isinstance(data, DataClient)
    assert isinstance(ddb, TableClient)
    assert not isinstance(fast, TableClient)  # why the orchestration passes a table client beside the data one
    for streams in (ddb_streams, fast_streams):
        assert isinstance(streams, StreamsClient)
    scan = dynamodb.TableScan(fast, "ports")
    reader = StreamReader(ddb_streams, "arn:aws:dynamodb:ddblocal:000000000000:table/ports/stream/x", {})
    assert isinstance(scan, ScanSource)
    assert isinstance(reader, ChangeSource)
    unconnected = PostgresTarget("postgresql://")  # constructing a target connects to nothing
    dry = DryRunTarget(io.StringIO(), citus=False)
    satisfies(ddb, ddb_streams, fast, unconnected, dry, TableHold(unconnected, SPEC), scan, reader)


def test_the_dry_run_refuses_changes_before_reading_anything() -> None:
    # Nothing listens at this endpoint: reaching DynamoDB would fail otherwise, or retry for minutes.
    config = Config(tables=("ports",), changes=True, aws=AwsSettings(endpoint_url="http://127.0.0.1:9", max_attempts=1))
    with pytest.raises(ConfigError) as refused:
        replicate(config, out=io.StringIO(), stop=threading.Event())
    assert str(refused.value) == "--changes needs a PostgreSQL URL (-u): a dry run cannot follow a stream"


def test_the_dry_run_refuses_every_change_method() -> None:
    dry = DryRunTarget(io.StringIO(), citus=False)
    schema = initial_schema(SPEC)
    position = ShardPosition("shard-1", None, None, False)
    calls: list[Callable[[], object]] = [
        dry.check_follows_changes,
        lambda: dry.read_table(SPEC),
        lambda: dry.read_positions(SPEC, "arn"),
        lambda: dry.start_catching_up(SPEC, stream_arn="arn", stream_view_type=None, replay_from=None),
        lambda: dry.apply_changes(
            None, schema, "arn", rows=[], delete_keys=[], rejected=[], moves=[(None, position, 0)], lag_seconds=None
        ),
        lambda: dry.become_live(SPEC, 0.0),
        lambda: dry.record_lag(SPEC, 0.0),
    ]
    for call in calls:
        with pytest.raises(ConfigError, match="a dry run cannot follow a stream") as refused:
            call()
        assert CANNOT_FOLLOW_CHANGES in str(refused.value)


def test_the_cli_refuses_changes_without_a_url_with_one_clear_line() -> None:
    result = run_podyn("--changes", "-t", "ports", "--endpoint-url", "http://127.0.0.1:9", timeout=60)
    assert result.returncode == 1, result.stderr
    assert "podyn: --changes needs a PostgreSQL URL (-u): a dry run cannot follow a stream" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("module", ORCHESTRATION)
def test_the_orchestration_asks_the_target_not_its_class(module: str) -> None:
    tree = ast.parse((PACKAGE_DIR / f"{module}.py").read_text(encoding="utf-8"))
    class_checks = [
        f"line {node.lineno}: {ast.unparse(node)}"
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id == "isinstance"
        and any(name in ast.unparse(node.args[1]) for name in ("PostgresTarget", "DryRunTarget"))
    ]
    assert class_checks == []
    # ... and passes no client as Any: each parameter named *client says which calls it needs.
    untyped = [
        f"line {arg.lineno}: {arg.arg}"
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        for arg in [*node.args.args, *node.args.kwonlyargs]
        if arg.arg.endswith("client") and arg.annotation is not None and ast.unparse(arg.annotation) == "Any"
    ]
    assert untyped == []
