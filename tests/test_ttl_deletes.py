"""``--ttl-deletes delete|keep|mark`` through the real CLI, against DynamoDB Local and PostgreSQL.

DynamoDB Local has no TTL process: it never expires an item, so its stream never carries a TTL delete. So the
tables live in DynamoDB Local and are loaded by ``podyn --schema --data`` (a subprocess) as usual; then
``podyn --changes`` runs in this process through click's CliRunner (the real CLI, options, replicate and
TableReplicator), with its ``dynamodbstreams`` client replaced at the API boundary by the scripted one of
``tests/scripted_streams.py`` (boto3's response shapes). It answers with real-shaped records: TTL deletes carry the
userIdentity of ``tests/data/ttl/ttl-delete-events.json`` (GetRecords' shape), next to an application's delete, a
change made just before an item expired and an item created again after it expired. The items the script expires
or deletes are deleted from DynamoDB Local too, so that ``--verify`` compares with what DynamoDB would hold.

The last test checks at the HTTP boundary that both stream readers, boto3's parser and the fast path, hand out the
userIdentity a GetRecords response carries.
"""

from __future__ import annotations

import copy
import datetime as dt
import json
import logging
import os
import signal
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import orjson
import psycopg
import pytest
from click.testing import CliRunner, Result
from helpers import assert_exit, podyn, status_record, wait_for
from psycopg import sql
from scripted_streams import STREAM_ARN, Clock, FakeShard, RecordMaker, ScriptedStreams, shard_id

from podyn_py import metrics
from podyn_py.cli import main
from podyn_py.config import AwsSettings
from podyn_py.core.changes import Delete, is_ttl_delete, to_change
from podyn_py.source import dynamodb
from podyn_py.source.streams import StreamReader

DATA = Path(__file__).parent / "data" / "ttl" / "ttl-delete-events.json"
#: A TTL delete's userIdentity as GetRecords returns it.
TTL_IDENTITY = json.loads(DATA.read_text())["Records"][1]["userIdentity"]
SHARD = shard_id(1)
STREAM = "NEW_AND_OLD_IMAGES"


class UnderTablesArn:
    """The scripted stream, answering under the stream ARN DynamoDB Local gave the table."""

    def __init__(self, scripted: ScriptedStreams) -> None:
        self.scripted = scripted

    def describe_stream(self, *, StreamArn: str, **params: Any) -> dict[str, Any]:
        return self.scripted.describe_stream(StreamArn=STREAM_ARN, **params)

    def get_shard_iterator(self, *, StreamArn: str, **params: Any) -> dict[str, Any]:
        return self.scripted.get_shard_iterator(StreamArn=STREAM_ARN, **params)

    def get_records(self, **params: Any) -> dict[str, Any]:
        return self.scripted.get_records(**params)


def ttl_delete(maker: RecordMaker, pk: str, old_image: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
    """The REMOVE DynamoDB's TTL makes: the service's userIdentity, and the old image (a NEW_AND_OLD_IMAGES stream)."""
    record = maker.remove(pk)
    record["userIdentity"] = copy.deepcopy(TTL_IDENTITY)
    record["dynamodb"]["OldImage"] = old_image
    record["dynamodb"].update(kwargs)
    return record


def item(pk: str, v: int, **more: dict[str, Any]) -> dict[str, Any]:
    return {"pk": {"S": pk}, "v": {"N": str(v)}, "expires_at": {"N": "1714557600"}, **more}


def put(maker: RecordMaker, pk: str, v: int, event: str = "MODIFY", **more: dict[str, Any]) -> dict[str, Any]:
    """An INSERT or MODIFY whose new image is ``item(pk, v, **more)``."""
    return maker.raw(event, {"pk": {"S": pk}}, item(pk, v, **more))


def run_changes(
    monkeypatch: pytest.MonkeyPatch,
    endpoint: str,
    url: str,
    table: str,
    streams: ScriptedStreams,
    script: Callable[[], None],
    *args: str,
) -> Result:
    """``podyn --changes`` in this process on the scripted stream until ``script`` (run beside it) returns; then
    SIGTERM, as a service manager stops it. Re-raises what ``script`` raised."""
    real = dynamodb.make_client

    def make_client(settings: AwsSettings, service: str = "dynamodb", **kwargs: Any) -> Any:
        return UnderTablesArn(streams) if service == "dynamodbstreams" else real(settings, service, **kwargs)

    monkeypatch.setattr(dynamodb, "make_client", make_client)
    failure: list[BaseException] = []

    def watch() -> None:
        try:
            script()
        except BaseException as exc:  # handed to the test
            failure.append(exc)
        finally:
            os.kill(os.getpid(), signal.SIGTERM)

    # Ours while the CLI does not hold SIGTERM (before it starts, after it ends): a late signal is harmless.
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: None)
    watcher = threading.Thread(target=watch, name="ttl-script", daemon=True)
    try:
        watcher.start()
        args_ = ["--endpoint-url", endpoint, "-u", url, "-t", table, "--no-progress", "--changes", *args]
        result = CliRunner().invoke(main, args_)
        watcher.join(60)
    finally:
        signal.signal(signal.SIGTERM, previous)
    if failure:
        raise failure[0]
    return result


def checkpoint(url: str) -> str | None:
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT max(sequence_number) FROM podyn.shards").fetchone()
    return None if row is None else row[0]


def wait_applied(url: str, record: dict[str, Any]) -> None:
    """Until the shard's checkpoint is at ``record``: it and every record before it are committed."""
    number = record["dynamodb"]["SequenceNumber"]
    wait_for(lambda: checkpoint(url) == number, f"the checkpoint at {number} (last: {checkpoint(url)})")


def table_rows(url: str, table: str, expired: str | None = "podyn_expired_at") -> dict[str, tuple[Any, ...]]:
    """pk → (v, expiry mark) of every row (the mark None when the table has no such column)."""
    mark = sql.Identifier(expired) if expired else sql.SQL("NULL")
    with psycopg.connect(url) as conn:
        found = conn.execute(sql.SQL("SELECT pk, v, {} FROM {}").format(mark, sql.Identifier(table))).fetchall()
    return {pk: (int(v), at) for pk, v, at in found}


def has_column(url: str, table: str, column: str) -> bool:
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid = %s::regclass"
            " AND attname = %s AND NOT attisdropped",
            (sql.Identifier(table).as_string(conn), column),
        ).fetchone()
    return row is not None and row[0] == "timestamp with time zone"


@pytest.fixture
def loaded(ddb: Any, ddb_server: Any, pg_url: str, create_table: Any) -> Iterator[tuple[str, RecordMaker]]:
    """A table of five items (a to e) in DynamoDB Local, loaded into PostgreSQL by the real CLI."""
    table = create_table(
        name=f"ttl_{os.urandom(6).hex()}",
        stream_view_type=STREAM,
        items=[item(pk, i) for i, pk in enumerate("abcde")],
    )
    assert_exit(podyn(ddb_server, pg_url, "-t", table, "--schema", "--data", "-n", "1", "--segments", "2"))
    yield table, RecordMaker()


def sample(name: str, table: str, **labels: str) -> float:
    return metrics.REGISTRY.get_sample_value(name, {"table": table, **labels}) or 0.0


@pytest.mark.parametrize("policy", ["delete", "keep", "mark"])
def test_ttl_deletes_follow_the_policy_and_are_counted_apart(
    policy: str,
    loaded: tuple[str, RecordMaker],
    ddb: Any,
    ddb_server: Any,
    pg_url: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """a changed then expired, b deleted by the application, c expired then created again, x expired during the
    load (never scanned), z a TTL delete from before the load (skipped, but seen); d and e untouched / changed."""
    table, make = loaded
    old = dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)
    records = [
        put(make, "e", 10),
        put(make, "a", 2),
        ttl_delete(make, "a", item("a", 2)),
        make.remove("b"),
        ttl_delete(make, "c", item("c", 2)),
        ttl_delete(make, "x", item("x", 7)),
        ttl_delete(make, "z", item("z", 9), ApproximateCreationDateTime=old),
    ]
    again = put(make, "c", 100, event="INSERT")
    shard = FakeShard(SHARD, None, list(records), closed=False)
    streams = ScriptedStreams([shard], Clock())
    # DynamoDB after that history: what --verify compares with.
    ddb.put_item(TableName=table, Item=item("e", 10))
    for pk in "abc":
        ddb.delete_item(TableName=table, Key={"pk": {"S": pk}})
    ddb.put_item(TableName=table, Item=item("c", 100))
    marked = policy == "mark"
    seen_while_expired: dict[str, tuple[Any, ...]] = {}

    def script() -> None:
        wait_applied(pg_url, records[-1])
        seen_while_expired.update(table_rows(pg_url, table, "podyn_expired_at" if marked else None))
        with streams.lock:  # between two calls of the reader
            shard.records.append(again)
        wait_applied(pg_url, again)

    caplog.set_level(logging.INFO, logger="podyn_py")
    result = run_changes(monkeypatch, ddb_server.endpoint_url, pg_url, table, streams, script, "--ttl-deletes", policy)
    assert result.exit_code == 0, result.output

    when = {r["dynamodb"]["Keys"]["pk"]["S"]: r["dynamodb"]["ApproximateCreationDateTime"] for r in records[2:]}
    expected = {
        "delete": ({"d": (3, None), "e": (10, None)}, {"c": (100, None), "d": (3, None), "e": (10, None)}),
        "keep": (
            {"a": (2, None), "c": (2, None), "d": (3, None), "e": (10, None), "x": (7, None)},
            {"a": (2, None), "c": (100, None), "d": (3, None), "e": (10, None), "x": (7, None)},
        ),
        "mark": (
            {"a": (2, when["a"]), "c": (2, when["c"]), "d": (3, None), "e": (10, None), "x": (7, when["x"])},
            # c created again: the mark is cleared by the upsert
            {"a": (2, when["a"]), "c": (100, None), "d": (3, None), "e": (10, None), "x": (7, when["x"])},
        ),
    }[policy]
    assert seen_while_expired == expected[0]
    assert table_rows(pg_url, table, "podyn_expired_at" if marked else None) == expected[1]
    assert has_column(pg_url, table, "podyn_expired_at") is marked  # added only when a row is marked

    outcome = {"delete": "applied", "keep": "kept", "mark": "marked"}[policy]
    counts = {"seen": 4, "applied": 0, "kept": 0, "marked": 0} | {outcome: 3}
    assert status_record(ddb_server, pg_url, table)["ttl_deletes"] == counts
    text = podyn(ddb_server, pg_url, "--status", "-t", table).stdout  # exit 3: stopped, so "not running"
    assert f"TTL deletes: 4 seen, {counts['applied']} applied as deletes, {counts['kept']} kept," in text
    with psycopg.connect(pg_url) as conn:
        stored = conn.execute(
            "SELECT ttl_deletes_seen, ttl_deletes_applied, ttl_deletes_kept, ttl_deletes_marked FROM podyn.tables"
        ).fetchone()
    assert stored == tuple(counts.values())
    assert sample("podyn_ttl_deletes_seen_total", table) == 4
    for each in ("applied", "kept", "marked"):
        assert sample("podyn_ttl_deletes_total", table, outcome=each) == counts[each]
    logged = [r.getMessage() for r in caplog.records if "TTL deletes seen" in r.getMessage()]
    assert logged and all(table in line for line in logged), caplog.text
    done = {"delete": "applied as deletes", "keep": "kept", "mark": "marked"}[policy]
    assert any(f"4 TTL deletes seen: 3 {done}" in line and "1 older than the load" in line for line in logged)

    # The copy against DynamoDB: deletes mirror it; marked rows are expected to have no item; kept rows are extra.
    verify = podyn(ddb_server, pg_url, "--verify", "-t", table, "--json")
    report = json.loads(verify.stdout)[0]
    if policy == "keep":
        assert verify.returncode == 4 and report["extra"] == 2, verify.stdout
    else:
        assert verify.returncode == 0, verify.stdout + verify.stderr


@pytest.mark.parametrize("mode", ["columns", "jsonb"])
def test_the_mark_column_never_takes_an_attributes_name(
    mode: str, ddb: Any, ddb_server: Any, pg_url: str, create_table: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An attribute called podyn_expired_at: in columns mode it has that column, so the mark gets another name
    (podyn_expired_at_<tag>); in jsonb mode it lives inside ``data`` and the mark column is podyn_expired_at. Either
    way the attribute's values stay where they were, and one that arrives after the mark column keeps its own. A
    record kept in podyn.rejected loses the attributes --exclude-attributes leaves out."""
    table = create_table(
        name=f"ttlname_{os.urandom(6).hex()}",
        stream_view_type=STREAM,
        items=[item(pk, i, podyn_expired_at={"S": f"mine {pk}"}) for i, pk in enumerate("ab")],
    )
    assert_exit(podyn(ddb_server, pg_url, "-t", table, "--schema", "--data", "-m", mode, "-n", "1", "--segments", "2"))
    make = RecordMaker()
    records = [
        ttl_delete(make, "a", item("a", 0, podyn_expired_at={"S": "mine a"})),
        make.put("n", 5, event="INSERT", podyn_expired_at={"S": "mine n"}),
        # Kept in podyn.rejected (an unknown event), without what --exclude-attributes leaves out.
        make.raw("UPSERT", {"pk": {"S": "bad"}}, {"pk": {"S": "bad"}, "password_hash": {"S": "SECRET"}}),
    ]
    ddb.delete_item(TableName=table, Key={"pk": {"S": "a"}})
    ddb.put_item(TableName=table, Item={"pk": {"S": "n"}, "counter": {"N": "5"}, "podyn_expired_at": {"S": "mine n"}})
    streams = ScriptedStreams([FakeShard(SHARD, None, records, closed=False)], Clock())
    result = run_changes(
        monkeypatch,
        ddb_server.endpoint_url,
        pg_url,
        table,
        streams,
        lambda: wait_applied(pg_url, records[-1]),
        "--ttl-deletes",
        "mark",
        "--exclude-attributes",
        f"{table}.password_hash",
    )
    assert result.exit_code == 0, result.output
    with psycopg.connect(pg_url) as conn:
        rejected = conn.execute("SELECT item::text FROM podyn.rejected").fetchall()
        assert len(rejected) == 1 and "bad" in rejected[0][0] and "SECRET" not in rejected[0][0]
        recorded = conn.execute("SELECT expired_column FROM podyn.tables").fetchone()
        assert recorded is not None
        mark = recorded[0]
        if mode == "columns":
            assert mark.startswith("podyn_expired_at_") and has_column(pg_url, table, mark)
            found = conn.execute(
                sql.SQL("SELECT pk, podyn_expired_at, {} IS NOT NULL FROM {} ORDER BY pk").format(
                    sql.Identifier(mark), sql.Identifier(table)
                )
            ).fetchall()
        else:
            assert mark == "podyn_expired_at"
            found = conn.execute(
                sql.SQL(
                    "SELECT pk, data->>'podyn_expired_at', podyn_expired_at IS NOT NULL FROM {} ORDER BY pk"
                ).format(sql.Identifier(table))
            ).fetchall()
    assert found == [("a", "mine a", True), ("b", "mine b", False), ("n", "mine n", False)]
    verify = podyn(ddb_server, pg_url, "--verify", "-t", table)
    assert verify.returncode == 0, verify.stdout + verify.stderr


# --- the stream readers keep userIdentity -----------------------------------------------------------------------


class StreamsServer:
    """Answers DescribeStream, GetShardIterator and GetRecords over HTTP with bodies in the service's wire JSON."""

    def __init__(self, records: list[dict[str, Any]]) -> None:
        answers = {
            "DynamoDBStreams_20120810.DescribeStream": {
                "StreamDescription": {
                    "StreamArn": STREAM_ARN,
                    "StreamStatus": "ENABLED",
                    "StreamViewType": STREAM,
                    "KeySchema": [{"AttributeName": "pk", "KeyType": "HASH"}],
                    "Shards": [
                        {"ShardId": SHARD, "SequenceNumberRange": {"StartingSequenceNumber": "100"}},
                    ],
                }
            },
            "DynamoDBStreams_20120810.GetShardIterator": {"ShardIterator": "iterator-1"},
            "DynamoDBStreams_20120810.GetRecords": {"Records": records, "NextShardIterator": "iterator-2"},
        }

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                body = orjson.dumps(answers.get(self.headers.get("X-Amz-Target", ""), {}))
                if self.headers.get("X-Amz-Target", "").endswith("GetRecords"):
                    answers["DynamoDBStreams_20120810.GetRecords"] = {"Records": [], "NextShardIterator": "iterator-3"}
                self.send_response(200)
                self.send_header("Content-Type", "application/x-amz-json-1.0")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.mark.parametrize("fast_path", [True, False], ids=["fast path", "boto3"])
def test_both_stream_readers_hand_out_the_user_identity(fast_path: bool) -> None:
    """A GetRecords body as the service sends it (the TTL delete of the data file, and an application's delete),
    parsed by botocore or by the fast path and read by the real StreamReader: the TTL delete stays one."""
    wire = json.loads(DATA.read_text())["Records"]
    records = [
        {k: v for k, v in r.items() if k != "eventSourceARN"}
        | {"dynamodb": {**r["dynamodb"], "Keys": {"pk": {"S": f"k{n}"}}, "SequenceNumber": str(200 + n)}}
        for n, r in enumerate(wire[1:])
    ]
    server = StreamsServer(records)
    try:
        settings = AwsSettings(endpoint_url=server.url, max_attempts=1, fast_path=fast_path)
        client = dynamodb.make_client(settings, "dynamodbstreams", data=True)
        reader = StreamReader(client, STREAM_ARN, {}, idle_min=0.01, idle_max=0.01)
        got: list[dict[str, Any]] = []
        for _ in range(5):
            got += [r for batch in reader.read(0.2) for r in batch.records]
            if got:
                break
    finally:
        server.close()
    assert [r.get("userIdentity") for r in got] == [TTL_IDENTITY, None]
    assert [is_ttl_delete(r) for r in got] == [True, False]
    change = to_change(got[0], ("pk",))
    assert isinstance(change, Delete) and change.expired and change.old_image == records[0]["dynamodb"]["OldImage"]
