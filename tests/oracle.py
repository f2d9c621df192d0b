"""An independent check that a PostgreSQL table equals its DynamoDB table, written without podyn's own converters.

It reads the attribute → column mapping from ``podyn.columns`` (the mapping is podyn's to choose; the values are
not), scans DynamoDB with boto3, reads PostgreSQL with psycopg (jsonb numbers parsed as Decimal, so no float ever
stands between the two sides), and compares every attribute of every item with its row.
"""

from __future__ import annotations

import base64
import json
from decimal import Decimal
from typing import Any

import psycopg
from psycopg import sql
from psycopg.types.json import set_json_loads


def _exact_loads(data: bytes | str) -> Any:
    return json.loads(data, parse_float=Decimal, parse_int=Decimal)


def connect(url: str) -> psycopg.Connection[Any]:
    conn = psycopg.connect(url, autocommit=True)
    set_json_loads(_exact_loads, conn)
    return conn


def scan_all(ddb: Any, table: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    kwargs: dict[str, Any] = {"TableName": table, "ConsistentRead": True}
    while True:
        page = ddb.scan(**kwargs)
        items.extend(page["Items"])
        if "LastEvaluatedKey" not in page:
            return items
        kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]


TYPE_OF_TAG = {"S": "text", "N": "numeric", "B": "bytea", "BOOL": "boolean"}


def nul_free(text: str) -> str:
    return text.replace("\x00", "")


def json_equal(value: dict[str, Any], stored: Any) -> bool:
    """Does ``stored`` (parsed jsonb) hold DynamoDB attribute value ``value`` with real JSON types?"""
    ((tag, raw),) = value.items()
    if tag == "S":
        return bool(stored == nul_free(raw))
    if tag == "N":
        return isinstance(stored, Decimal) and bool(stored == Decimal(raw))
    if tag == "B":
        return bool(stored == base64.b64encode(raw).decode())
    if tag == "BOOL":
        return stored is raw
    if tag == "NULL":
        return stored is None
    if tag == "M":
        return (
            isinstance(stored, dict)
            and set(stored) == {nul_free(k) for k in raw}
            and all(json_equal(v, stored[nul_free(k)]) for k, v in raw.items())
        )
    if tag == "L":
        return isinstance(stored, list) and len(stored) == len(raw) and all(map(json_equal, raw, stored))
    if tag == "SS":
        return isinstance(stored, list) and sorted(stored) == sorted(nul_free(s) for s in raw)
    if tag == "NS":
        return isinstance(stored, list) and sorted(stored) == sorted(Decimal(n) for n in raw)
    if tag == "BS":
        return isinstance(stored, list) and sorted(stored) == sorted(base64.b64encode(b).decode() for b in raw)
    raise AssertionError(f"unknown tag {tag}")


def scalar_equal(value: dict[str, Any], stored: Any) -> bool:
    ((tag, raw),) = value.items()
    if tag == "S":
        return bool(stored == nul_free(raw))
    if tag == "N":
        return isinstance(stored, Decimal) and bool(stored == Decimal(raw))
    if tag == "B":
        return isinstance(stored, bytes) and stored == bytes(raw)
    if tag == "BOOL":
        return stored is raw
    return json_equal(value, stored)


def table_differences(ddb: Any, url: str, source: str, *, schema: str = "public") -> list[str]:
    """Every difference between DynamoDB table ``source`` and its PostgreSQL table, as readable lines."""
    items = scan_all(ddb, source)
    with connect(url) as conn:
        target_table, mode = conn.execute(
            "SELECT target_table, conversion_mode FROM podyn.tables WHERE source_table = %s AND target_schema = %s",
            (source, schema),
        ).fetchone()  # type: ignore[misc]
        mapping = {
            (attribute, type_): column
            for attribute, type_, column in conn.execute(
                "SELECT attribute_name, attribute_type, column_name FROM podyn.columns"
                " WHERE target_schema = %s AND target_table = %s",
                (schema, target_table),
            )
        }
        spec = conn.execute(
            "SELECT spec FROM podyn.tables WHERE target_schema = %s AND target_table = %s", (schema, target_table)
        ).fetchone()[0]  # type: ignore[index]
        cur = conn.execute(sql.SQL("SELECT * FROM {}").format(sql.Identifier(schema, target_table)))
        names = [d.name for d in cur.description or []]
        rows = [dict(zip(names, r, strict=True)) for r in cur.fetchall()]
    keys = [spec["partition_key"][0]] + ([spec["sort_key"][0]] if spec["sort_key"] else [])

    def key_of_item(item: dict[str, Any]) -> tuple[Any, ...]:
        parts = []
        for k in keys:
            ((tag, raw),) = item[k].items()
            parts.append(Decimal(raw) if tag == "N" else bytes(raw) if tag == "B" else nul_free(raw))
        return tuple(parts)

    def key_of_row(row: dict[str, Any]) -> tuple[Any, ...]:
        return tuple(
            row[mapping[(k, TYPE_OF_TAG[t])]]
            for k, t in [spec["partition_key"]] + ([spec["sort_key"]] if spec["sort_key"] else [])
        )

    by_key = {key_of_row(r): r for r in rows}
    overflow = mapping.get((None, "jsonb")) if mode == "columns" else None
    problems = []
    if len(rows) != len(items):
        problems.append(f"{len(items)} items but {len(rows)} rows")
    for item in items:
        key = key_of_item(item)
        row = by_key.get(key)
        if row is None:
            problems.append(f"missing row for {key}")
            continue
        if mode == "jsonb":
            data = row["data"]
            if set(data) != {nul_free(a) for a in item}:
                problems.append(f"{key}: data has attributes {sorted(data)}, item {sorted(item)}")
            problems.extend(
                f"{key}: attribute {a!r} differs: {v!r} vs {data.get(nul_free(a))!r}"
                for a, v in item.items()
                if not json_equal(v, data.get(nul_free(a)))
            )
            continue
        used = set()
        for attribute, value in item.items():
            ((tag, _),) = value.items()
            if tag == "NULL":
                continue
            column = mapping.get((attribute, TYPE_OF_TAG.get(tag, "jsonb")))
            if column is None and overflow is not None:  # a table past the column limit: {attribute: value}
                used.add(overflow)
                stored = (row[overflow] or {}).get(nul_free(attribute))
                if not json_equal(value, stored):
                    problems.append(f"{key}: attribute {attribute!r} in {overflow}: {value!r:.200} vs {stored!r:.200}")
                continue
            if column is None:
                problems.append(f"{key}: no column for attribute {attribute!r} ({tag})")
                continue
            used.add(column)
            if not scalar_equal(value, row[column]):
                problems.append(
                    f"{key}: attribute {attribute!r} column {column!r}: {value!r:.200} vs {row[column]!r:.200}"
                )
        problems.extend(
            f"{key}: column {name!r} should be NULL, holds {row[name]!r:.100}"
            for name in names
            if name not in used and row[name] is not None
        )
    return problems
