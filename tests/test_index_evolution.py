"""Indexes added to or removed from a DynamoDB table after podyn created its PostgreSQL table (issue 10, case 3).

The real CLI in subprocesses against DynamoDB Local (which supports UpdateTable with GlobalSecondaryIndexUpdates)
and PostgreSQL: the table is created and loaded with ``-s -d``, the index changes in DynamoDB, then ``-c`` runs as
the README's service does, without ``--schema``.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from typing import Any

from helpers import STREAM, Service, assert_exit, podyn, wait_for, wait_for_state
from oracle import connect
from psycopg import sql

Services = Callable[..., Service]


def short(prefix: str) -> str:
    """A table name that fits PostgreSQL's 63 bytes, so the target table has the same name."""
    return f"{prefix}_{os.urandom(4).hex()}"


def create_gsi(ddb: Any, table: str, index: str, attribute: str, attribute_type: str) -> None:
    ddb.update_table(
        TableName=table,
        AttributeDefinitions=[{"AttributeName": attribute, "AttributeType": attribute_type}],
        GlobalSecondaryIndexUpdates=[
            {
                "Create": {
                    "IndexName": index,
                    "KeySchema": [{"AttributeName": attribute, "KeyType": "HASH"}],
                    "Projection": {"ProjectionType": "ALL"},
                }
            }
        ],
    )

    def active() -> bool:
        indexes = ddb.describe_table(TableName=table)["Table"].get("GlobalSecondaryIndexes", [])
        return any(ix["IndexName"] == index and ix.get("IndexStatus", "ACTIVE") == "ACTIVE" for ix in indexes)

    wait_for(active, f"index {index} ACTIVE")


def delete_gsi(ddb: Any, table: str, index: str) -> None:
    ddb.update_table(TableName=table, GlobalSecondaryIndexUpdates=[{"Delete": {"IndexName": index}}])

    def gone() -> bool:
        indexes = ddb.describe_table(TableName=table)["Table"].get("GlobalSecondaryIndexes", [])
        return all(ix["IndexName"] != index for ix in indexes)

    wait_for(gone, f"index {index} deleted")


def row(url: str, table: str, key: str, *columns: str) -> tuple[Any, ...] | None:
    """The row's values in ``columns``; None while the row, or one of the columns, is not there."""
    with connect(url) as conn:
        present = conn.execute(
            "SELECT count(*) FROM pg_attribute WHERE attrelid = to_regclass(%s) AND attname = ANY(%s)",
            (sql.Identifier(table).as_string(conn), list(columns)),
        ).fetchone()
        if present is None or present[0] < len(columns):
            return None
        query = sql.SQL("SELECT {} FROM {} WHERE pk = %s").format(
            sql.SQL(", ").join(map(sql.Identifier, columns)), sql.Identifier(table)
        )
        return conn.execute(query, (key,)).fetchone()


def indexes(url: str, table: str) -> dict[str, list[str]]:
    """Index name → its columns, for the table's indexes other than the primary key's."""
    with connect(url) as conn:
        rows = conn.execute(
            """SELECT c.relname, array_agg(a.attname ORDER BY k.n) FROM pg_index i
               JOIN pg_class c ON c.oid = i.indexrelid
               JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, n) ON true
               JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
               WHERE i.indrelid = to_regclass(%s) AND NOT i.indisprimary GROUP BY c.relname""",
            (sql.Identifier(table).as_string(conn),),
        ).fetchall()
    return dict(rows)


def table_state(url: str, table: str) -> tuple[str, str | None]:
    with connect(url) as conn:
        found = conn.execute("SELECT state, last_error FROM podyn.tables WHERE target_table = %s", (table,)).fetchone()
    assert found is not None
    return found[0], found[1]


def column_types(url: str, table: str) -> dict[str, tuple[str, bool]]:
    with connect(url) as conn:
        rows = conn.execute(
            "SELECT column_name, attribute_type, variant FROM podyn.columns WHERE target_table = %s", (table,)
        ).fetchall()
    return {name: (type_, variant) for name, type_, variant in rows}


def test_gsi_added_after_the_load_gets_its_column_and_index_under_changes(
    ddb_server: Any, ddb: Any, pg_url: str, create_table: Any, services: Services
) -> None:
    table = create_table(name=short("gsi_add"), stream_view_type=STREAM, items=[{"pk": {"S": "old"}}])
    assert_exit(podyn(ddb_server, pg_url, "-t", table, "-s", "-d"))
    create_gsi(ddb, table, "ByGk", "gk", "S")
    ddb.put_item(TableName=table, Item={"pk": {"S": "new"}, "gk": {"S": "g1"}})  # no other new attribute

    service = services(pg_url, table, "-c")
    assert wait_for(lambda: row(pg_url, table, "new", "gk"), "the new row", service=service) == ("g1",)
    assert indexes(pg_url, table) == {f"{table}_ByGk": ["gk"]}
    assert column_types(pg_url, table)["gk"] == ("text", False)
    assert service.stop(signal.SIGTERM) == 0, service.text()
    state, error = table_state(pg_url, table)
    assert state != "stopped" and error is None, error


def test_gsi_removed_keeps_its_index_and_replication_goes_on(
    ddb_server: Any, ddb: Any, pg_url: str, create_table: Any, services: Services
) -> None:
    """The removed index stays in PostgreSQL (podyn drops nothing); one added at the same time is created."""
    table = create_table(
        name=short("gsi_del"),
        stream_view_type=STREAM,
        gsis=[{"name": "ByA", "key": (("ga", "S"),)}],
        items=[{"pk": {"S": "old"}, "ga": {"S": "a0"}}],
    )
    assert_exit(podyn(ddb_server, pg_url, "-t", table, "-s", "-d"))
    assert indexes(pg_url, table) == {f"{table}_ByA": ["ga"]}
    delete_gsi(ddb, table, "ByA")
    create_gsi(ddb, table, "ByB", "gb", "N")
    ddb.put_item(TableName=table, Item={"pk": {"S": "new"}, "ga": {"S": "a1"}, "gb": {"N": "2"}})

    service = services(pg_url, table, "-c")
    assert wait_for(lambda: row(pg_url, table, "new", "ga", "gb"), "the new row", service=service) == ("a1", 2)
    assert indexes(pg_url, table) == {f"{table}_ByA": ["ga"], f"{table}_ByB": ["gb"]}
    ddb.put_item(TableName=table, Item={"pk": {"S": "later"}, "ga": {"S": "a2"}})
    assert wait_for(lambda: row(pg_url, table, "later", "ga", "gb"), "a later row", service=service) == ("a2", None)
    assert service.stop(signal.SIGTERM) == 0, service.text()
    state, error = table_state(pg_url, table)
    assert state != "stopped" and error is None, error
    with connect(pg_url) as conn:
        spec = conn.execute("SELECT spec FROM podyn.tables WHERE target_table = %s", (table,)).fetchone()
    assert spec is not None and [ix["name"] for ix in spec[0]["indexes"]] == ["ByB"]


def test_gsi_key_declared_with_another_type_than_its_column_goes_to_the_variant_column(
    ddb_server: Any, ddb: Any, pg_url: str, create_table: Any, services: Services
) -> None:
    """``gk`` loaded as S has the text column ``gk``; a GSI declaring it N gets ``gk_numeric``, as an N value
    would, and the index is on that column; the S values stay where they are."""
    table = create_table(
        name=short("gsi_type"), stream_view_type=STREAM, items=[{"pk": {"S": "old"}, "gk": {"S": "x"}}]
    )
    assert_exit(podyn(ddb_server, pg_url, "-t", table, "-s", "-d"))
    assert column_types(pg_url, table)["gk"] == ("text", False)
    create_gsi(ddb, table, "ByGk", "gk", "N")
    ddb.put_item(TableName=table, Item={"pk": {"S": "new"}, "gk": {"N": "42"}})

    service = services(pg_url, table, "-c")
    assert wait_for(lambda: row(pg_url, table, "new", "gk", "gk_numeric"), "the new row", service=service) == (None, 42)
    assert row(pg_url, table, "old", "gk", "gk_numeric") == ("x", None)
    assert column_types(pg_url, table)["gk_numeric"] == ("numeric", True)
    assert indexes(pg_url, table) == {f"{table}_ByGk": ["gk_numeric"]}
    assert service.stop(signal.SIGTERM) == 0, service.text()
    assert table_state(pg_url, table)[0] != "stopped"


def test_gsi_added_while_changes_run_gets_its_index_at_the_next_start(
    ddb_server: Any, ddb: Any, pg_url: str, create_table: Any, services: Services
) -> None:
    """A running service does not see the new index (it reads DescribeTable at start): the attribute becomes a
    column through schema evolution meanwhile, and the index is created when the service starts again."""
    table = create_table(name=short("gsi_live"), stream_view_type=STREAM, items=[{"pk": {"S": "old"}}])
    service = services(pg_url, table, "-s", "-d", "-c")
    wait_for_state(pg_url, table, "live", service=service)
    create_gsi(ddb, table, "ByGk", "gk", "N")
    ddb.put_item(TableName=table, Item={"pk": {"S": "new"}, "gk": {"N": "5"}})
    assert wait_for(lambda: row(pg_url, table, "new", "gk"), "the new row", service=service) == (5,)
    assert indexes(pg_url, table) == {}, "the running service created the index after all: update the README"
    assert service.stop(signal.SIGTERM) == 0, service.text()

    again = services(pg_url, table, "-c")
    assert wait_for(lambda: indexes(pg_url, table), "the index", service=again) == {f"{table}_ByGk": ["gk"]}
    ddb.put_item(TableName=table, Item={"pk": {"S": "after"}, "gk": {"N": "6"}})
    assert wait_for(lambda: row(pg_url, table, "after", "gk"), "a row after the restart", service=again) == (6,)
    assert again.stop(signal.SIGTERM) == 0, again.text()
    assert column_types(pg_url, table)["gk"] == ("numeric", False)


def test_gsi_added_before_a_data_run_without_schema_gets_its_column_and_index(
    ddb_server: Any, ddb: Any, pg_url: str, create_table: Any
) -> None:
    """``--data`` without ``--schema`` prepares the table the same way: the COPY finds the new key column."""
    table = create_table(name=short("gsi_data"))
    assert_exit(podyn(ddb_server, pg_url, "-t", table, "-s"))
    create_gsi(ddb, table, "ByGk", "gk", "B")
    ddb.put_item(TableName=table, Item={"pk": {"S": "a"}, "gk": {"B": b"\x01"}})
    assert_exit(podyn(ddb_server, pg_url, "-t", table, "-d"))
    assert row(pg_url, table, "a", "gk") == (b"\x01",)
    assert indexes(pg_url, table) == {f"{table}_ByGk": ["gk"]}
    assert column_types(pg_url, table)["gk"] == ("bytea", False)
