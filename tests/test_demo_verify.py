"""The demo's verdict comes from ``podyn --verify``: a difference planted between replication and verification is
reported and fails the demo, and a table that cannot be verified is never claimed equal.

The demo runs in-process against the session's DynamoDB Local and a fresh database, with its ``before_verify`` step
changing things after podyn stopped and before verify runs.
"""

from __future__ import annotations

import uuid
from typing import Any

import psycopg
import pytest
from psycopg import sql

from podyn_py.cli import EXIT_DIFFERENCES, EXIT_TABLES_FAILED
from podyn_py.demo import run_demo

EQUAL_CLAIM = "found the copy equal"


def _prefix() -> str:
    return f"demo_{uuid.uuid4().hex[:6]}_"


def test_a_row_changed_before_verify_is_reported_and_fails_the_demo(
    ddb_server: Any, pg_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    def plant(conn: psycopg.Connection[Any], client: Any, names: dict[str, str]) -> None:
        conn.execute(
            sql.SQL('UPDATE {} SET "Title" = %s WHERE "Id" = 102').format(sql.Identifier(names["ProductCatalog"])),
            ("Planted Title",),
        )

    prefix = _prefix()
    status = run_demo(ddb_server.endpoint_url, pg_url, prefix, before_verify=plant)
    out = capsys.readouterr().out
    assert status == EXIT_DIFFERENCES, out[-3000:]
    catalog = f"{prefix}ProductCatalog"
    assert f"{catalog} → public.{catalog}: DIFFERENT: 1 differing row" in out, out[-3000:]
    assert 'differs  Id=102  column Title: expected "Book 102 Title", found "Planted Title"' in out, out[-3000:]
    assert f"{prefix}Forum → public.{prefix}Forum: equal (" in out
    assert EQUAL_CLAIM not in out
    assert "demo finished: the copy DIFFERS from DynamoDB" in out


def test_a_table_that_cannot_be_verified_is_not_claimed_equal(
    ddb_server: Any, pg_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    def take_away(conn: psycopg.Connection[Any], client: Any, names: dict[str, str]) -> None:
        client.delete_table(TableName=names["Forum"])  # verify's Scan then finds no table

    prefix = _prefix()
    status = run_demo(ddb_server.endpoint_url, pg_url, prefix, before_verify=take_away)
    out = capsys.readouterr().out
    assert status == EXIT_TABLES_FAILED, out[-3000:]
    assert f"{prefix}Forum → public.{prefix}Forum: not verified: scanning: ResourceNotFoundException" in out, out[
        -3000:
    ]
    assert EQUAL_CLAIM not in out
    assert "demo finished: the copy could not be verified" in out
