"""The batch upsert behind every change, spool entry and re-loaded page (``postgres.upsert_rows``), against the
real PostgreSQL: one ``INSERT ... SELECT FROM jsonb_array_elements($1)`` statement per batch, the rows as one JSON
array (several statements when the batch's JSON passes ``UPSERT_JSON_BYTES``).

What it must keep from one INSERT a row: every type's values (jsonb as JSON, string scalars included, NULLs,
bytes), an existing row replaced whole, and a key given twice in one batch ending with its last row (one
statement may not update a row twice)."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from oracle import connect

from podyn_py.conversion import RowConverter
from podyn_py.core.schema import KeyAttribute, TableSpec
from podyn_py.target import postgres
from podyn_py.target.postgres import PostgresTarget, upsert_rows

SPEC = TableSpec("upserts", "public", "upserts", KeyAttribute("pk", "S"))


def item(pk: str, **attributes: Any) -> dict[str, Any]:
    return {"pk": {"S": pk}, **attributes}


def table(url: str) -> dict[str, tuple[Any, ...]]:
    with connect(url) as conn:
        rows = conn.execute("SELECT pk, n, s, b, t, m, l FROM upserts ORDER BY pk").fetchall()
    return {str(r[0]): tuple(bytes(v) if isinstance(v, memoryview) else v for v in r[1:]) for r in rows}


def test_a_batch_upsert_keeps_every_type_replaces_rows_whole_and_keeps_a_keys_last_row(pg_url: str) -> None:
    target = PostgresTarget(pg_url, retry_seconds=5)
    target.ensure_metadata()
    schema = target.prepare_table(SPEC, create=True, citus=False)
    rows = RowConverter(schema, target)
    first = [
        item("a", n={"N": "1.50"}, s={"S": "one"}, b={"B": b"\x00\xff"}, t={"BOOL": True}, m={"M": {"x": {"S": "y"}}}),
        item("b", n={"N": "2"}, l={"L": [{"S": "scalar"}]}),
    ]
    schema, converted, rejected = rows.convert(first)
    assert rejected == []
    with target.connect() as conn, conn.transaction():
        upsert_rows(conn, schema, converted)
    assert table(pg_url)["a"] == (Decimal("1.50"), "one", b"\x00\xff", True, {"x": "y"}, None)
    later = [
        item("a", s={"S": "replaced"}),  # the row becomes this image: n, b, t and m are gone
        item("c", n={"N": "3"}),
        item("c", n={"N": "4"}, m={"M": {}}),  # twice in one batch: the last one stays
    ]
    schema, converted, rejected = rows.convert(later)
    with target.connect() as conn, conn.transaction():
        upsert_rows(conn, schema, converted)
    assert table(pg_url) == {
        "a": (None, "replaced", None, None, None, None),
        "b": (Decimal("2"), None, None, None, None, ["scalar"]),
        "c": (Decimal("4"), None, None, None, {}, None),
    }


def test_a_batch_larger_than_one_statement_takes_is_split_and_every_row_arrives(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = PostgresTarget(pg_url, retry_seconds=5)
    target.ensure_metadata()
    schema = target.prepare_table(SPEC, create=True, citus=False)
    rows = RowConverter(schema, target)
    items = [item(f"k{i:03d}", s={"S": "x" * 100}, n={"N": str(i)}, b={"B": bytes([i % 256])}) for i in range(50)]
    schema, converted, rejected = rows.convert(items)
    assert rejected == []
    statements: list[int] = []
    chunks = postgres._json_chunks

    def counted(json_rows: Any) -> Any:
        for chunk in chunks(json_rows):
            statements.append(len(chunk))
            yield chunk

    monkeypatch.setattr(postgres, "UPSERT_JSON_BYTES", 1000)  # about 7 rows a statement
    monkeypatch.setattr(postgres, "_json_chunks", counted)
    with target.connect() as conn, conn.transaction():
        upsert_rows(conn, schema, converted)
    assert len(statements) >= 7 and all(size <= 1000 for size in statements)
    with connect(pg_url) as conn:
        stored = conn.execute("SELECT pk, n, s, b FROM upserts ORDER BY pk").fetchall()
    assert stored == [(f"k{i:03d}", Decimal(i), "x" * 100, bytes([i % 256])) for i in range(50)]
