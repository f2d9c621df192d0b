"""The batch upsert behind every change, spool entry and re-loaded page (``postgres.upsert_rows``), against the
real PostgreSQL: one ``INSERT ... SELECT FROM unnest(...)`` statement per batch, each column's values as an array.

What it must keep from one INSERT a row: every type's values (jsonb as JSON, string scalars included, NULLs,
bytes), an existing row replaced whole, and a key given twice in one batch ending with its last row (one
statement may not update a row twice)."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from oracle import connect

from podyn_py.conversion import RowConverter
from podyn_py.core.schema import KeyAttribute, TableSpec
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
