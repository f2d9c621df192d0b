"""``--exclude-attributes`` and global tables' attributes (``--keep-replication-attributes``) through the real CLI,
against DynamoDB Local and PostgreSQL: the load, ``--changes`` as a service, and ``--verify``.

Tables on the legacy version of global tables (2017.11.29) carry ``aws:rep:deleting``, ``aws:rep:updatetime`` and
``aws:rep:updateregion`` in every item, written by the replication. DynamoDB Local has no global tables: the items
here carry those attributes as the replication writes them (names and types), put by the test.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from helpers import STREAM, assert_exit, fresh, podyn, wait_for, wait_for_state
from oracle import connect
from psycopg import sql

from podyn_py.core.selection import REPLICATION_ATTRIBUTES

SECRETS = ("password_hash", "blob_avatar", "blob_banner")


def user(pk: str, **more: dict[str, Any]) -> dict[str, Any]:
    return {
        "pk": {"S": pk},
        "name": {"S": f"name of {pk}"},
        "password_hash": {"S": f"SECRET hash of {pk}"},
        "blob_avatar": {"B": b"SECRET\x00avatar"},
        "aws:rep:deleting": {"BOOL": False},
        "aws:rep:updatetime": {"N": "1714557600.123001"},
        "aws:rep:updateregion": {"S": "eu-west-1"},
        **more,
    }


def table_text(url: str, table: str) -> str:
    """Every row of the table as text, and what podyn keeps of it in podyn.columns and podyn.rejected."""
    with connect(url) as conn:
        rows = conn.execute(sql.SQL("SELECT t::text FROM {} t ORDER BY 1").format(sql.Identifier(table))).fetchall()
        mapping = conn.execute("SELECT attribute_name, column_name FROM podyn.columns").fetchall()
        rejected = conn.execute("SELECT item::text FROM podyn.rejected").fetchall()
    return json.dumps([rows, mapping, rejected])


def columns_of(url: str, table: str) -> set[str]:
    with connect(url) as conn:
        rows = conn.execute(
            "SELECT attname FROM pg_attribute WHERE attrelid = %s::regclass AND attnum > 0 AND NOT attisdropped",
            (sql.Identifier(table).as_string(conn),),
        ).fetchall()
    return {r[0] for r in rows}


def row_of(url: str, table: str, pk: str) -> str | None:
    with connect(url) as conn:
        found = conn.execute(
            sql.SQL("SELECT t::text FROM {} t WHERE pk = %s").format(sql.Identifier(table)), (pk,)
        ).fetchone()
    return None if found is None else str(found[0])


@pytest.mark.parametrize("mode", ["columns", "jsonb"])
def test_excluded_attributes_never_reach_postgresql(
    mode: str, ddb_server: Any, ddb: Any, pg_url: str, create_table: Any, services: Any
) -> None:
    """Not in a column, not in the jsonb document, not in the mapping: neither from the load nor from the stream;
    the global tables' attributes are left out by default. --verify, told the same patterns, finds the copy equal;
    without them it reports what is missing."""
    table = create_table(name=fresh(), stream_view_type=STREAM, items=[user(f"k{i}") for i in range(3)])
    exclude = f"{table}.password_hash,*.blob_*"
    service = services(pg_url, table, "-s", "-d", "-c", "-m", mode, "-n", "1", "--exclude-attributes", exclude)
    wait_for_state(pg_url, table, "live", service=service)
    ddb.put_item(TableName=table, Item=user("new", blob_banner={"B": b"SECRET banner"}))
    ddb.update_item(
        TableName=table,
        Key={"pk": {"S": "k1"}},
        UpdateExpression="SET password_hash = :p, note = :n",
        ExpressionAttributeValues={":p": {"S": "SECRET changed"}, ":n": {"S": "changed"}},
    )
    wait_for(
        lambda: row_of(pg_url, table, "new") and "changed" in (row_of(pg_url, table, "k1") or ""),
        "the changes applied",
        service=service,
    )
    assert service.stop() == 0

    text = table_text(pg_url, table)
    assert "SECRET" not in text and "U0VDUkVU" not in text  # nor its base64
    for name in (*SECRETS, *REPLICATION_ATTRIBUTES):
        assert name not in text
    assert "name of new" in text and "name of k0" in text  # the rest is there
    expected_columns = {"pk", "name", "note"} if mode == "columns" else {"pk", "data"}
    assert columns_of(pg_url, table) == expected_columns

    verify = podyn(ddb_server, pg_url, "--verify", "-t", table, "--json", "--exclude-attributes", exclude)
    assert verify.returncode == 0, verify.stdout + verify.stderr
    unaware = podyn(ddb_server, pg_url, "--verify", "-t", table, "--json")
    assert unaware.returncode == 4, unaware.stdout + unaware.stderr
    report = json.loads(unaware.stdout)[0]
    assert report["differing"] == 4  # every item: password_hash and blob_* are not in its row
    shown = json.dumps(report["differences"])
    assert ("password_hash" in shown or "blob_avatar" in shown) and "aws:rep" not in shown  # the default: no flag


def test_keep_replication_attributes_copies_them(ddb_server: Any, ddb: Any, pg_url: str, create_table: Any) -> None:
    table = create_table(name=fresh(), items=[user(f"k{i}") for i in range(2)])
    assert_exit(podyn(ddb_server, pg_url, "-t", table, "-s", "-d", "-n", "1", "--keep-replication-attributes"))
    assert set(REPLICATION_ATTRIBUTES) <= columns_of(pg_url, table)
    assert "eu-west-1" in table_text(pg_url, table)
    verify = podyn(ddb_server, pg_url, "--verify", "-t", table, "--keep-replication-attributes")
    assert verify.returncode == 0, verify.stdout + verify.stderr
    # Without the flag, verify expects them left out: the columns hold values the copy should not have.
    assert podyn(ddb_server, pg_url, "--verify", "-t", table).returncode == 4


@pytest.mark.parametrize(
    ("pattern", "message"),
    [
        ("{table}.owner", "attribute 'owner' is part of the key of index ByOwner"),
        ("*.pk", "attribute 'pk' is part of the table's key"),
        ("{table}.*", "attribute 'pk' is part of the table's key"),
    ],
)
def test_a_key_attribute_cannot_be_excluded(
    pattern: str, message: str, ddb_server: Any, pg_url: str, create_table: Any
) -> None:
    table = create_table(name=fresh(), gsis=[{"name": "ByOwner", "key": (("owner", "S"),)}], items=[user("k0")])
    pattern = pattern.format(table=table)
    result = assert_exit(podyn(ddb_server, pg_url, "-t", table, "-s", "-d", "--exclude-attributes", pattern), 3)
    assert f"--exclude-attributes {pattern}: {message}; key attributes cannot be excluded" in result.stderr
    assert "Traceback" not in result.stderr
    with connect(pg_url) as conn:
        exists = conn.execute("SELECT to_regclass(%s)", (sql.Identifier(table).as_string(conn),)).fetchone()
    assert exists == (None,)  # refused before anything was made


def test_a_pattern_that_is_not_table_dot_attribute_is_a_usage_error(ddb_server: Any, pg_url: str) -> None:
    result = assert_exit(podyn(ddb_server, pg_url, "-t", "T", "-s", "--exclude-attributes", "T.ok,password"), 2)
    assert "--exclude-attributes" in result.stderr and "'password' is not Table.attribute" in result.stderr
