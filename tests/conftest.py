"""Fixtures: one PostgreSQL and one DynamoDB Local per session; a fresh database and fresh tables per test."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psycopg
import pytest
from helpers import REPO_ROOT, Service
from proxy import ThrottlingProxy
from psycopg import sql

from podyn_py.demo_services import (
    LOCAL_ACCESS_KEY,
    LOCAL_REGION,
    LOCAL_SECRET_KEY,
    LocalDynamoDB,
    LocalPostgres,
    LocalS3,
)

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient
    from mypy_boto3_dynamodbstreams import DynamoDBStreamsClient
    from mypy_boto3_s3 import S3Client

KeySpec = Sequence[tuple[str, str]]
CreateTable = Callable[..., str]


def pytest_configure(config: pytest.Config) -> None:
    # Subprocess runs of the CLI find credentials through boto3's standard chain; a developer's own profile or
    # session token must not leak into them.
    os.environ["AWS_ACCESS_KEY_ID"] = LOCAL_ACCESS_KEY
    os.environ["AWS_SECRET_ACCESS_KEY"] = LOCAL_SECRET_KEY
    os.environ["AWS_DEFAULT_REGION"] = LOCAL_REGION
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN"):
        os.environ.pop(name, None)


#: Fixtures that start PostgreSQL or DynamoDB Local: a test that uses one (directly or through another fixture) is
#: marked ``services``.
SERVICE_FIXTURES = frozenset({"pg_server", "ddb_server", "s3_server"})

#: Test modules whose tests run podyn against the services in subprocesses, or replicate until the databases agree:
#: most take 5 to 30 s each (measured with --durations=0), the few others 1.5 to 4 s, so each module is marked
#: ``slow`` as a whole. Slow tests of other modules carry ``@pytest.mark.slow`` themselves.
SLOW_MODULES = frozenset(
    {
        "test_changes.py",
        "test_config_file_cli.py",
        "test_demo_verify.py",
        "test_exclude_attributes.py",
        "test_export_changes.py",
        "test_export_faults.py",
        "test_export_load.py",
        "test_faults.py",
        "test_index_evolution.py",
        "test_liveness_and_locks.py",
        "test_load.py",
        "test_lower_case_load.py",
        "test_metadata_attacks.py",
        "test_metadata_truth.py",
        "test_ports.py",
        "test_probes_and_json_logs.py",
        "test_processes.py",
        "test_properties.py",
        "test_scan_rate_shared.py",
        "test_security.py",
        "test_ttl_deletes.py",
        "test_target_names_cli.py",
        "test_status_units.py",
        "test_units_load.py",
        "test_upgrade_in_place.py",
        "test_shard_processes.py",
        "test_spool.py",
        "test_verify_status.py",
        "test_verify_processes.py",
        "test_export_to.py",
    }
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark what needs the services (``-m "not services"``: no PostgreSQL, no Java) and what is slow."""
    for item in items:
        if SERVICE_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.services)
        if item.path.name in SLOW_MODULES:
            item.add_marker(pytest.mark.slow)


def _unique_name(request: pytest.FixtureRequest, max_len: int) -> str:
    """A name from the test's name plus a random tag, using only [a-z0-9_]."""
    base = re.sub(r"[^a-z0-9_]+", "_", request.node.name.lower()).strip("_")
    tag = uuid.uuid4().hex[:8]
    return f"{base[: max_len - len(tag) - 1]}_{tag}"


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def pg_server() -> Iterator[LocalPostgres]:
    with LocalPostgres() as server:
        yield server


@pytest.fixture
def pg_url(pg_server: LocalPostgres, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh, empty database for this test; dropped afterwards even if connections are left open."""
    name = _unique_name(request, 63)
    url = pg_server.create_database(name)
    yield url
    with psycopg.connect(pg_server.url, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.fixture(scope="session")
def ddb_server() -> Iterator[LocalDynamoDB]:
    # One instance per session: DynamoDB Local slows down as stream records pile up; tests drop their tables.
    with LocalDynamoDB() as server:
        yield server


@pytest.fixture(scope="session")
def s3_server() -> Iterator[LocalS3]:
    """moto's S3 in server mode, one per session: S3 only (exports are read from it; DynamoDB is DynamoDB Local)."""
    with LocalS3() as server:
        yield server


@pytest.fixture
def s3(s3_server: LocalS3) -> Iterator[S3Client]:
    client = s3_server.client()
    yield client
    client.close()


@pytest.fixture
def export_bucket(s3: S3Client, request: pytest.FixtureRequest) -> str:
    """A new, empty bucket for this test's exports."""
    name = _unique_name(request, 63).replace("_", "-")
    s3.create_bucket(Bucket=name)
    return name


@pytest.fixture
def ddb(ddb_server: LocalDynamoDB) -> Iterator[DynamoDBClient]:
    client = ddb_server.client("dynamodb")
    yield client
    client.close()


@pytest.fixture
def ddb_streams(ddb_server: LocalDynamoDB) -> Iterator[DynamoDBStreamsClient]:
    client = ddb_server.client("dynamodbstreams")
    yield client
    client.close()


def _key_schema(key: KeySpec) -> list[dict[str, str]]:
    if len(key) not in (1, 2):
        raise ValueError(f"a key has 1 or 2 attributes, not {len(key)}: {key!r}")
    return [
        {"AttributeName": name, "KeyType": key_type}
        for (name, _), key_type in zip(key, ("HASH", "RANGE"), strict=False)
    ]


def _write_items(client: DynamoDBClient, table: str, items: Iterable[Mapping[str, Any]]) -> None:
    batch: list[Mapping[str, Any]] = []
    for item in items:
        batch.append(item)
        if len(batch) == 25:
            _write_batch(client, table, batch)
            batch = []
    if batch:
        _write_batch(client, table, batch)


def _write_batch(client: DynamoDBClient, table: str, batch: list[Mapping[str, Any]]) -> None:
    requests: Any = {table: [{"PutRequest": {"Item": item}} for item in batch]}
    for attempt in range(20):
        requests = client.batch_write_item(RequestItems=requests).get("UnprocessedItems")
        if not requests:
            return
        time.sleep(min(0.05 * 2**attempt, 1.0))
    raise RuntimeError(f"batch_write_item kept leaving items unprocessed in {table}")


@pytest.fixture
def create_table(ddb: DynamoDBClient, request: pytest.FixtureRequest) -> Iterator[CreateTable]:
    """Factory for on-demand tables, deleted after the test.

    ``create_table(key=(("pk", "S"), ("sk", "N")), stream_view_type="NEW_AND_OLD_IMAGES",
    gsis=[{"name": "ByOwner", "key": (("owner", "S"),)}], items=[{"pk": {"S": "a"}, ...}])``.
    An LSI key may give only its range attribute; the table's hash attribute is put in front.
    """
    created: list[str] = []

    def factory(
        key: KeySpec = (("pk", "S"),),
        *,
        name: str | None = None,
        stream_view_type: str | None = None,
        gsis: Sequence[Mapping[str, Any]] = (),
        lsis: Sequence[Mapping[str, Any]] = (),
        items: Iterable[Mapping[str, Any]] = (),
    ) -> str:
        table = name or _unique_name(request, 200)
        attribute_types: dict[str, str] = {}
        for attr, attr_type in [*key, *(kv for g in [*gsis, *lsis] for kv in g["key"])]:
            if attribute_types.setdefault(attr, attr_type) != attr_type:
                raise ValueError(f"attribute {attr!r} declared as both {attribute_types[attr]} and {attr_type}")
        params: dict[str, Any] = {
            "TableName": table,
            "KeySchema": _key_schema(key),
            "AttributeDefinitions": [{"AttributeName": a, "AttributeType": t} for a, t in attribute_types.items()],
            "BillingMode": "PAY_PER_REQUEST",
        }
        if gsis:
            params["GlobalSecondaryIndexes"] = [
                {
                    "IndexName": g["name"],
                    "KeySchema": _key_schema(g["key"]),
                    "Projection": {"ProjectionType": "ALL"},
                }
                for g in gsis
            ]
        if lsis:
            params["LocalSecondaryIndexes"] = [
                {
                    "IndexName": lsi["name"],
                    "KeySchema": _key_schema(lsi["key"] if len(lsi["key"]) == 2 else (key[0], *lsi["key"])),
                    "Projection": {"ProjectionType": "ALL"},
                }
                for lsi in lsis
            ]
        if stream_view_type is not None:
            params["StreamSpecification"] = {"StreamEnabled": True, "StreamViewType": stream_view_type}
        ddb.create_table(**params)
        created.append(table)
        deadline = time.monotonic() + 30
        while ddb.describe_table(TableName=table)["Table"].get("TableStatus") != "ACTIVE":
            if time.monotonic() > deadline:
                raise TimeoutError(f"table {table} did not become ACTIVE")
            time.sleep(0.05)
        _write_items(ddb, table, items)
        return table

    yield factory
    for table in created:
        with contextlib.suppress(ddb.exceptions.ResourceNotFoundException):
            ddb.delete_table(TableName=table)


@pytest.fixture
def throttling_proxy(ddb_server: LocalDynamoDB) -> Iterator[ThrottlingProxy]:
    with ThrottlingProxy(ddb_server.endpoint_url) as proxy:
        yield proxy


@pytest.fixture
def services(ddb_server: LocalDynamoDB, tmp_path: Path) -> Iterator[Callable[..., Service]]:
    """Start ``podyn -t TABLES ARGS`` in the background: ``services(url, tables, *args, endpoint=None)``, on
    DynamoDB Local unless ``endpoint`` (a proxy's) is given. Whatever still runs at the end is killed (a stopped
    process is continued first, so that it can die)."""
    started: list[Service] = []

    def start(url: str, tables: str, *args: str, endpoint: str | None = None) -> Service:
        log = tmp_path / f"service{len(started)}.log"
        service = Service(endpoint or ddb_server.endpoint_url, url, tables, log, *args)
        started.append(service)
        return service

    yield start
    for service in started:
        if service.process.poll() is None:
            service.process.send_signal(signal.SIGCONT)
        service.stop(signal.SIGKILL)  # also closes its log file
