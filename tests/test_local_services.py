"""The embedded servers, fixtures and fault-injecting proxy that the other integration tests stand on."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psycopg
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError
from proxy import ThrottlingProxy
from psycopg import sql

from podyn_py.demo_services import LocalPostgres, find_dynamodb_local, find_postgres_bin, local_client
from podyn_py.errors import ConfigError

if TYPE_CHECKING:
    from conftest import CreateTable
    from mypy_boto3_dynamodb import DynamoDBClient
    from mypy_boto3_dynamodbstreams import DynamoDBStreamsClient


def test_missing_binaries_are_config_errors(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PODYN_PG_BIN", str(tmp_path))
    monkeypatch.setenv("PODYN_DYNAMODB_LOCAL_DIR", str(tmp_path))
    with pytest.raises(ConfigError, match="PODYN_PG_BIN"):
        find_postgres_bin()
    with pytest.raises(ConfigError, match="DynamoDBLocal.jar"):
        find_dynamodb_local()
    monkeypatch.delenv("PODYN_DYNAMODB_LOCAL_DIR")
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(ConfigError, match="install-deps.sh"):
        find_dynamodb_local()


def test_pg_url_is_a_fresh_database(pg_url: str) -> None:
    with psycopg.connect(pg_url) as conn:
        name = conn.execute("SELECT current_database()").fetchone()
        tables = conn.execute("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'").fetchone()
        conn.execute("CREATE TABLE t (x int)")
    assert name is not None and name[0] != "postgres"
    assert tables == (0,)


def test_postgres_restart_after_kill_keeps_committed_data() -> None:
    with LocalPostgres() as pg:
        port = pg.port
        with psycopg.connect(pg.url, autocommit=True) as conn:
            conn.execute("CREATE TABLE t (x int)")
            conn.execute("INSERT INTO t VALUES (1), (2)")
        survivor = psycopg.connect(pg.url)
        pg.kill()
        with pytest.raises(psycopg.OperationalError):
            survivor.execute("SELECT 1")
        survivor.close()
        with pytest.raises(psycopg.OperationalError):
            psycopg.connect(pg.url, connect_timeout=2)

        pg.restart()

        assert pg.port == port
        with psycopg.connect(pg.url) as conn:
            assert conn.execute("SELECT x FROM t ORDER BY x").fetchall() == [(1,), (2,)]
        datadir = pg.datadir
    assert not datadir.exists()


def test_create_database_accepts_any_name(pg_server: LocalPostgres) -> None:
    url = pg_server.create_database("Odd name-é")
    try:
        with psycopg.connect(url) as conn:
            assert conn.execute("SELECT current_database()").fetchone() == ("Odd name-é",)
    finally:
        with psycopg.connect(pg_server.url, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE {}").format(sql.Identifier("Odd name-é")))


def test_create_table_with_indexes_and_items(ddb: DynamoDBClient, create_table: CreateTable) -> None:
    items = [{"pk": {"S": f"k{i}"}, "sk": {"N": str(i)}, "owner": {"S": "o"}, "ts": {"N": "1"}} for i in range(60)]
    table = create_table(
        (("pk", "S"), ("sk", "N")),
        gsis=[{"name": "ByOwner", "key": (("owner", "S"),)}],
        lsis=[{"name": "ByTs", "key": (("ts", "N"),)}],
        items=items,
    )

    described = ddb.describe_table(TableName=table)["Table"]
    assert [k["AttributeName"] for k in described["KeySchema"]] == ["pk", "sk"]
    assert [i["IndexName"] for i in described.get("GlobalSecondaryIndexes", [])] == ["ByOwner"]
    assert [k["AttributeName"] for k in described["LocalSecondaryIndexes"][0]["KeySchema"]] == ["pk", "ts"]
    assert ddb.scan(TableName=table, Select="COUNT")["Count"] == 60


def test_stream_record_appears_after_put(
    ddb: DynamoDBClient, ddb_streams: DynamoDBStreamsClient, create_table: CreateTable
) -> None:
    table = create_table(stream_view_type="NEW_AND_OLD_IMAGES")
    ddb.put_item(TableName=table, Item={"pk": {"S": "a"}, "n": {"N": "1"}})

    stream_arn = ddb.describe_table(TableName=table)["Table"]["LatestStreamArn"]
    shards = ddb_streams.describe_stream(StreamArn=stream_arn)["StreamDescription"]["Shards"]
    assert len(shards) >= 1
    iterator = ddb_streams.get_shard_iterator(
        StreamArn=stream_arn, ShardId=shards[0]["ShardId"], ShardIteratorType="TRIM_HORIZON"
    )["ShardIterator"]
    records: list[Any] = []
    deadline = time.monotonic() + 10
    while not records and time.monotonic() < deadline:
        page = ddb_streams.get_records(ShardIterator=iterator)
        records = page["Records"]
        iterator = page["NextShardIterator"]
    assert [r["eventName"] for r in records] == ["INSERT"]
    assert records[0]["dynamodb"]["NewImage"] == {"pk": {"S": "a"}, "n": {"N": "1"}}


def test_proxy_relays_requests_and_counts_them(throttling_proxy: ThrottlingProxy, create_table: CreateTable) -> None:
    table = create_table(items=[{"pk": {"S": "x"}}])
    client = local_client("dynamodb", throttling_proxy.endpoint_url)
    try:
        item = client.get_item(TableName=table, Key={"pk": {"S": "x"}})["Item"]
    finally:
        client.close()
    assert item == {"pk": {"S": "x"}}
    assert throttling_proxy.counts == {"GetItem": 1}


def test_throttled_scan_is_retried_by_boto3(throttling_proxy: ThrottlingProxy, create_table: CreateTable) -> None:
    table = create_table(items=[{"pk": {"S": "x"}}, {"pk": {"S": "y"}}])
    throttling_proxy.throttle("Scan", 2)
    config = Config(retries={"mode": "standard", "max_attempts": 5})
    client = local_client("dynamodb", throttling_proxy.endpoint_url, config=config)
    try:
        page = client.scan(TableName=table)
    finally:
        client.close()
    assert page["Count"] == 2
    assert page["ResponseMetadata"]["RetryAttempts"] == 2
    assert throttling_proxy.count("Scan") == 3
    assert throttling_proxy.pending_faults("Scan") == 0


@pytest.mark.parametrize(
    ("inject", "status", "code"),
    [
        (lambda p: p.throttle("Scan"), 400, "ProvisionedThroughputExceededException"),
        (lambda p: p.fail("Scan"), 500, "InternalServerError"),
        (lambda p: p.fail("Scan", status=503, type="ServiceUnavailable"), 503, "ServiceUnavailable"),
    ],
    ids=["throttle", "fail", "fail-503"],
)
def test_injected_errors_look_like_dynamodb_errors(
    throttling_proxy: ThrottlingProxy, inject: Callable[[ThrottlingProxy], None], status: int, code: str
) -> None:
    inject(throttling_proxy)
    client = local_client("dynamodb", throttling_proxy.endpoint_url, config=Config(retries={"total_max_attempts": 1}))
    try:
        with pytest.raises(ClientError) as raised:
            client.scan(TableName="never-reaches-dynamodb")
    finally:
        client.close()
    assert raised.value.response["Error"]["Code"] == code
    assert raised.value.response["ResponseMetadata"]["HTTPStatusCode"] == status
    assert throttling_proxy.count("Scan") == 1
