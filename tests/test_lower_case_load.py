"""``-lc`` with attributes ``Id``, ``id`` and ``ID``: the same column names in every run, whatever comes first.

Issue 10, case 5: parallel segments used to race for the name ``id``. Real CLI, DynamoDB Local and PostgreSQL.
A fresh load meets the three attributes in whatever order the segments run; the arrival orders that can be forced
are forced with a first load of some items and a ``--data --reload`` (or ``--changes``) bringing the others, which
makes podyn rename the column the first attribute took.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import REPO_ROOT, assert_exit, podyn
from oracle import connect
from psycopg import sql
from scripted_streams import RecordMaker

from podyn_py.changes import TableReplicator
from podyn_py.conversion import RowConverter
from podyn_py.core.naming import name_tag
from podyn_py.core.positions import ShardPosition, UnitKind
from podyn_py.core.schema import KeyAttribute, TableSchema, TableSpec
from podyn_py.demo_services import LocalPostgres
from podyn_py.errors import MappingChanged
from podyn_py.load import LoadOptions, load_table
from podyn_py.source import dynamodb
from podyn_py.source.streams import ShardBatch
from podyn_py.target.postgres import PostgresTarget

SPELLINGS = ("Id", "id", "ID")
EXPECTED = {"id": "id", "Id": "id_" + name_tag("Id"), "ID": "id_" + name_tag("ID")}


def items(spellings: tuple[str, ...], count: int = 48, start: int = 0) -> list[dict[str, Any]]:
    """Items each carrying one spelling (its value names it, to check it lands in the right column)."""
    return [
        {"pk": {"S": f"k{i}"}, (s := spellings[i % len(spellings)]): {"S": f"{s}-{i}"}, "Other": {"N": str(i)}}
        for i in range(start, start + count)
    ]


def short() -> str:
    """A table name within PostgreSQL's 63 bytes, so the target table has the same name."""
    return f"lc_{uuid.uuid4().hex[:12]}"


@pytest.fixture
def fresh_db(pg_server: LocalPostgres) -> Iterator[Any]:
    """A factory of fresh empty databases, dropped afterwards."""
    made: list[str] = []

    def make() -> str:
        name = f"lc_{uuid.uuid4().hex[:12]}"
        made.append(name)
        return pg_server.create_database(name)

    yield make
    with connect(pg_server.url) as conn:
        conn.autocommit = True
        for name in made:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def mapping(url: str) -> dict[str, str]:
    with connect(url) as conn:
        rows = conn.execute("SELECT attribute_name, column_name FROM podyn.columns WHERE NOT variant").fetchall()
    return {a: c for a, c in rows if a in SPELLINGS}


def assert_rows_in_their_columns(url: str, table: str) -> None:
    """Each item's value is in its own attribute's column, and the other spellings' columns are NULL there."""
    with connect(url) as conn:
        rows = conn.execute(
            sql.SQL("SELECT {}, {}, {} FROM {}").format(
                *(sql.Identifier(EXPECTED[s]) for s in SPELLINGS), sql.Identifier(table)
            )  # fmt: skip
        ).fetchall()
    assert rows
    for row in rows:
        (present,) = [(s, v) for s, v in zip(SPELLINGS, row, strict=True) if v is not None]
        assert present[1].startswith(present[0] + "-"), row
    assert {s for row in rows for s, v in zip(SPELLINGS, row, strict=True) if v is not None} == set(SPELLINGS)


def assert_verified(ddb_server: Any, url: str, table: str) -> None:
    (report,) = json.loads(
        assert_exit(podyn(ddb_server, url, "-t", table, "--verify", "--json", "--segments", "4")).stdout
    )
    assert report["differences"] == [], report


def spread_over_segments(ddb: Any, table: str, segments: int) -> None:
    """Give each item one spelling so that every segment meets ``Id`` or ``ID`` first and ``id`` only later.

    First-come naming then gave ``id`` to ``Id`` or ``ID`` in every run, whichever segment committed first.
    """
    for segment in range(segments):
        keys = [i["pk"] for i in ddb.scan(TableName=table, Segment=segment, TotalSegments=segments)["Items"]]
        order = ("Id", "ID") if segment % 2 else ("ID", "Id")
        for position, key in enumerate(keys):
            spelling = order[0] if position == 0 else (*order, "id")[position % 3]
            ddb.update_item(
                TableName=table,
                Key={"pk": key},
                UpdateExpression="SET #a = :v",
                ExpressionAttributeNames={"#a": spelling},
                ExpressionAttributeValues={":v": {"S": f"{spelling}-{key['S']}"}},
            )


def test_parallel_loads_give_the_same_names_every_time(
    ddb_server: Any, ddb: Any, create_table: Any, fresh_db: Any
) -> None:
    table = create_table(name=short(), items=[{"pk": {"S": f"k{i}"}, "Other": {"N": str(i)}} for i in range(48)])
    spread_over_segments(ddb, table, 8)
    for _ in range(3):
        url = fresh_db()
        assert_exit(podyn(ddb_server, url, "-t", table, "-s", "-d", "-lc", "-n", "4", "--segments", "8"))
        assert mapping(url) == EXPECTED
        assert_rows_in_their_columns(url, table)
    assert_verified(ddb_server, url, table)


@pytest.mark.parametrize(
    ("first", "then"),
    [(("Id",), ("id", "ID")), (("id",), ("Id", "ID")), (("ID", "Id"), ("id",)), (("Id",), ("ID",))],
    ids=lambda s: "+".join(s),
)
def test_later_arrival_renames_the_column(
    ddb_server: Any, ddb: Any, create_table: Any, fresh_db: Any, first: tuple[str, ...], then: tuple[str, ...]
) -> None:
    table = create_table(name=short(), items=items(first, 24))
    url = fresh_db()
    assert_exit(podyn(ddb_server, url, "-t", table, "-s", "-d", "-lc", "-n", "4", "--segments", "8"))
    if first == ("Id",):
        assert mapping(url) == {"Id": "id"}  # alone, it is lowercased: what -lc is for
    for item in items(then, 24, start=100):
        ddb.put_item(TableName=table, Item=item)
    result = assert_exit(podyn(ddb_server, url, "-t", table, "-d", "--reload", "-lc", "-n", "4", "--segments", "8"))
    seen = set(first) | set(then)
    assert mapping(url) == {s: EXPECTED[s] for s in seen}  # as a fresh load of them all gives
    if first == ("Id",):  # it had taken id, and now shares the name with another spelling
        assert "renamed column" in result.stderr
        with connect(url) as conn:
            generation = conn.execute("SELECT mapping_generation FROM podyn.tables").fetchone()
        assert generation is not None and generation[0] >= 1
    assert_verified(ddb_server, url, table)


def test_id_arriving_by_changes_renames_and_keeps_every_value(
    ddb_server: Any, ddb: Any, create_table: Any, fresh_db: Any, tmp_path: Path
) -> None:
    table = create_table(name=short(), stream_view_type="NEW_AND_OLD_IMAGES", items=items(("Id",), 20))
    url = fresh_db()
    assert_exit(podyn(ddb_server, url, "-t", table, "-s", "-d", "-lc", "-n", "2", "--segments", "4"))
    assert mapping(url) == {"Id": "id"}
    log = tmp_path / "changes.log"
    command = [sys.executable, "-m", "podyn_py", "--endpoint-url", ddb_server.endpoint_url, "-u", url, "-t", table,
               "--no-progress", "-c", "-lc"]  # fmt: skip
    with open(log, "w") as log_file:
        service = subprocess.Popen(command, cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=log_file)
        try:
            for item in items(("id", "Id"), 10, start=100):
                ddb.put_item(TableName=table, Item=item)
            deadline = time.monotonic() + 60
            while True:
                with connect(url) as conn:
                    row = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(table))).fetchone()
                if row is not None and row[0] == 30:
                    break
                assert service.poll() is None, log.read_text()
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(0.2)
        finally:
            service.send_signal(signal.SIGTERM)
            code = service.wait(15)
    assert code == 0, log.read_text()
    assert "renamed column" in log.read_text()
    assert mapping(url) == {"id": "id", "Id": "id_" + name_tag("Id")}
    with connect(url) as conn:
        rows = conn.execute(
            sql.SQL("SELECT {}, {} FROM {}").format(
                sql.Identifier("id"), sql.Identifier("id_" + name_tag("Id")), sql.Identifier(table)
            )  # fmt: skip
        ).fetchall()
    assert sorted(rows, key=str) == sorted(
        [(None, f"Id-{i}") for i in range(20)] + [(f"id-{i}", None) if i % 2 == 0 else (None, f"Id-{i}")
                                                  for i in range(100, 110)], key=str)  # fmt: skip
    assert_verified(ddb_server, url, table)


def test_a_writer_holding_the_old_names_converts_again(pg_url: str) -> None:
    """A page or batch converted before another writer renamed a column is refused whole, then written right."""
    spec = TableSpec("T", "public", short(), KeyAttribute("pk", "S"), lower_case=True)
    target = PostgresTarget(pg_url)
    schema = target.prepare_table(spec, create=True, citus=False)
    assert target.begin_load(spec, 1, reload=False) is not None
    page = [{"pk": {"S": "a"}, "Id": {"S": "Id-a"}}]
    batch = [{"pk": {"S": "c"}, "Id": {"S": "Id-c"}}]
    converter = RowConverter(schema, target)
    stale, rows, _ = converter.convert(page)  # Id takes id
    assert stale.column_names == ("pk", "id")
    RowConverter(schema, target).convert([{"pk": {"S": "b"}, "id": {"S": "id-b"}}])  # another worker: id arrives
    moves = [(None, ShardPosition("shard-1", None, "1", False), 1)]
    with target.connect() as conn:
        with pytest.raises(MappingChanged):
            target.write_page(conn, stale, rows, [], 0, None, None)
        with pytest.raises(MappingChanged):
            target.apply_changes(
                conn, stale, "arn", rows=rows, delete_keys=[], rejected=[], moves=moves, lag_seconds=None
            )
        segment = conn.execute("SELECT last_key, done, items_loaded FROM podyn.segments").fetchone()
        assert segment == (None, False, 0)  # nothing half-written
        assert conn.execute("SELECT count(*) FROM podyn.shards").fetchone() == (0,)
        converter.refresh(stale)
        fresh, rows, _ = converter.convert(page)
        assert fresh.generation == stale.generation + 1
        assert target.write_page(conn, fresh, rows, [], 0, None, None)
        fresh, rows, _ = converter.convert(batch)
        assert target.apply_changes(
            conn, fresh, "arn", rows=rows, delete_keys=[], rejected=[], moves=moves, lag_seconds=None
        )
        moved = "id_" + name_tag("Id")
        stored = conn.execute(
            sql.SQL("SELECT pk, {}, {} FROM {} ORDER BY pk").format(
                sql.Identifier("id"), sql.Identifier(moved), sql.Identifier(spec.table)
            )
        ).fetchall()
    assert stored == [("a", None, "Id-a"), ("c", None, "Id-c")]


def test_a_load_whose_page_meets_a_rename_writes_it_under_the_new_names(
    ddb: Any, pg_url: str, create_table: Any
) -> None:
    """In process, real PostgresTarget and DynamoDB Local: another process renames ``id`` just after a worker
    converted its page and before it writes it (the only thing the target adds). The load still finishes."""
    table = create_table(name=short(), items=[{"pk": {"S": f"k{i}"}, "Id": {"S": f"Id-k{i}"}} for i in range(30)])
    description = dynamodb.describe_table(ddb, table, pg_schema="public", lower_case=True)

    class RenamingBeforeTheFirstWrite(PostgresTarget):
        refused = 0

        def write_page(self, conn: Any, schema: TableSchema, *args: Any, **kwargs: Any) -> bool:
            if schema.generation == 0 and "id" in schema.column_names:
                RowConverter(schema, PostgresTarget(pg_url)).convert([{"pk": {"S": "x"}, "id": {"S": "v"}}])
            try:
                return super().write_page(conn, schema, *args, **kwargs)
            except MappingChanged:
                self.refused += 1
                raise

    target = RenamingBeforeTheFirstWrite(pg_url)
    schema = target.prepare_table(description.spec, create=True, citus=False)
    result = load_table(description, schema, target, ddb, LoadOptions(segments=2, connections=1))
    assert result.items == 30 and target.refused == 1
    moved = "id_" + name_tag("Id")
    with connect(pg_url) as conn:
        rows = conn.execute(
            sql.SQL("SELECT pk, {}, {} FROM {}").format(
                sql.Identifier("id"), sql.Identifier(moved), sql.Identifier(table)
            )
        ).fetchall()
    assert sorted(rows) == sorted((f"k{i}", None, f"Id-k{i}") for i in range(30))


def test_a_change_batch_that_meets_a_rename_is_applied_under_the_new_names(pg_url: str) -> None:
    """In process, real PostgresTarget: another process renames ``id`` after the replicator converted a batch
    and before it applies it. The batch is converted again and applied once, its checkpoint with it."""
    spec = TableSpec("T", "public", short(), KeyAttribute("pk", "S"), lower_case=True)
    description = dynamodb.TableDescription(spec, "arn:stream", "NEW_AND_OLD_IMAGES", item_count=0, size_bytes=0)

    class RenamingBeforeTheFirstApply(PostgresTarget):
        refused = 0

        def apply_changes(self, conn: Any, schema: TableSchema, *args: Any, **kwargs: Any) -> bool:
            if schema.generation == 0:
                RowConverter(schema, PostgresTarget(pg_url)).convert([{"pk": {"S": "x"}, "id": {"S": "v"}}])
            try:
                return super().apply_changes(conn, schema, *args, **kwargs)
            except MappingChanged:
                self.refused += 1
                raise

    target = RenamingBeforeTheFirstApply(pg_url)
    schema = target.prepare_table(spec, create=True, citus=False)
    replicator = TableReplicator(description, schema, target, None, None, threading.Event())
    records = RecordMaker()
    batch = [records.put(f"k{i}", i, Id={"S": f"Id-k{i}"}) for i in range(5)]
    position = ShardPosition("shard-1", None, batch[-1]["dynamodb"]["SequenceNumber"], False)
    replicator.keeper.join()  # as run() does: the batch commits only under its shard's lease
    replicator.owned = {lease.unit_id: lease for lease in replicator.keeper.claim(UnitKind.SHARD, ["shard-1"], 1)}
    try:
        with target.connect() as conn:
            replicator._apply(conn, "arn:stream", [ShardBatch("shard-1", None, batch, position)])
    finally:
        replicator.keeper.leave()
    assert target.refused == 1
    moved = "id_" + name_tag("Id")
    with connect(pg_url) as conn:
        rows = conn.execute(
            sql.SQL("SELECT pk, {}, {} FROM {}").format(
                sql.Identifier("id"), sql.Identifier(moved), sql.Identifier(spec.table)
            )
        ).fetchall()
        shard = conn.execute("SELECT sequence_number, records_applied FROM podyn.shards").fetchone()
    assert sorted(rows) == sorted((f"k{i}", None, f"Id-k{i}") for i in range(5))
    assert shard == (position.sequence_number, 5)
