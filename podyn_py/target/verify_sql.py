"""The PostgreSQL side of ``podyn --verify``: reading rows by key, and finding rows whose key no item had.

Rows are read by key, a scan page at a time, through ``unnest`` of the keys; a mapped column the table lacks is
read as NULL of its type. The keys scanned go to a temporary table (binary COPY), and an anti-join against it at the
end finds the rows left over, read with a server-side cursor, so memory stays bounded whatever the table's size.
Read-only apart from that temporary table. What ``podyn.*`` holds is read through :mod:`podyn_py.target.state`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import psycopg
from psycopg import sql
from psycopg.types.json import set_json_loads

from podyn_py.core import ddl
from podyn_py.core.compare import exact_loads
from podyn_py.core.schema import TableSchema
from podyn_py.errors import ConfigError
from podyn_py.target import postgres

KEYS_TABLE = sql.Identifier("pg_temp", "podyn_verify_keys")


def connect(conninfo: str) -> psycopg.Connection[Any]:
    """An autocommit connection that reads jsonb with exact numbers, as the comparison needs."""
    conn = postgres.connect(conninfo, autocommit=True)
    set_json_loads(exact_loads, conn)
    return conn


def missing_columns(conn: psycopg.Connection[Any], schema: TableSchema) -> tuple[str, ...]:
    """The mapped columns the table lacks (dropped by hand); ConfigError when the table itself does not exist."""
    spec = schema.spec
    existing = postgres.existing_columns(conn, spec)
    if existing is None:
        raise ConfigError(f"table {spec.schema}.{spec.table} does not exist", table=spec.source)
    return tuple(c.name for c in schema.columns if c.name not in existing)


def rows_by_key_statement(schema: TableSchema, missing: Sequence[str]) -> sql.Composed:
    """SELECT every column of ``schema`` (NULL for the ``missing`` ones) of the rows whose keys are given, one
    array parameter per key column (``$n`` placeholders: run it on a RawCursor, see :func:`postgres.positional`)."""
    spec = schema.spec
    keys = schema.primary_key_columns
    names = [sql.Identifier(f"k{i}") for i in range(len(keys))]
    return sql.SQL("SELECT {} FROM {} t JOIN unnest({}) AS k({}) ON {}").format(
        sql.SQL(", ").join(
            sql.SQL("NULL::{}").format(sql.SQL(c.type.value))
            if c.name in missing
            else sql.SQL("t.{}").format(sql.Identifier(c.name))
            for c in schema.columns
        ),
        ddl.qualified(spec.schema, spec.table),
        sql.SQL(", ").join(
            sql.SQL("{}::{}[]").format(p, sql.SQL(c.type.value))
            for c, p in zip(keys, postgres.positional(len(keys)), strict=True)
        ),
        sql.SQL(", ").join(names),
        sql.SQL(" AND ").join(
            sql.SQL("t.{} = k.{}").format(sql.Identifier(c.name), n) for c, n in zip(keys, names, strict=True)
        ),
    )


def fetch_rows(
    conn: psycopg.Connection[Any],
    schema: TableSchema,
    statement: sql.Composed,
    keys: Sequence[tuple[Any, ...]],
) -> dict[tuple[Any, ...], Any]:
    """The rows of these keys (primary key values in column order), by key, read with ``statement``."""
    if not keys:
        return {}
    positions = [schema.columns.index(c) for c in schema.primary_key_columns]
    with psycopg.RawCursor(conn) as cur:  # $n placeholders: see postgres.positional
        rows = cur.execute(statement, [list(values) for values in zip(*keys, strict=True)]).fetchall()
    return {tuple(row[p] for p in positions): row for row in rows}


def create_keys_table(conn: psycopg.Connection[Any], schema: TableSchema) -> None:
    """The temporary table of the keys scanned, one column per primary key column."""
    conn.execute(
        sql.SQL("CREATE TEMPORARY TABLE {} ({})").format(
            KEYS_TABLE,
            sql.SQL(", ").join(
                sql.SQL("{} {}").format(sql.Identifier(f"k{i}"), sql.SQL(c.type.value))
                for i, c in enumerate(schema.primary_key_columns)
            ),
        )
    )


def save_keys(conn: psycopg.Connection[Any], schema: TableSchema, keys: Sequence[tuple[Any, ...]]) -> None:
    types = [c.type.value for c in schema.primary_key_columns]
    statement = sql.SQL("COPY {} FROM STDIN (FORMAT BINARY)").format(KEYS_TABLE)
    with conn.cursor() as cur, cur.copy(statement) as copy:
        copy.set_types(types)
        for key in keys:
            copy.write_row(key)


def extra_row_keys(conn: psycopg.Connection[Any], schema: TableSchema, batch_size: int = 1000) -> Iterator[list[Any]]:
    """Batches of the key values of rows whose key is not in the keys table: an anti-join read with a cursor.

    Rows marked expired (``--ttl-deletes mark``: their item is gone from DynamoDB on purpose) are not among them.
    """
    spec = schema.spec
    columns = schema.primary_key_columns
    statement = sql.SQL("SELECT {} FROM {} t WHERE NOT EXISTS (SELECT FROM {} k WHERE {}){}").format(
        sql.SQL(", ").join(sql.SQL("t.{}").format(sql.Identifier(c.name)) for c in columns),
        ddl.qualified(spec.schema, spec.table),
        KEYS_TABLE,
        sql.SQL(" AND ").join(
            sql.SQL("k.{} = t.{}").format(sql.Identifier(f"k{i}"), sql.Identifier(c.name))
            for i, c in enumerate(columns)
        ),
        sql.SQL("")
        if schema.expired_column is None
        else sql.SQL(" AND t.{} IS NULL").format(sql.Identifier(schema.expired_column)),
    )
    conn.execute(sql.SQL("ANALYZE {}").format(KEYS_TABLE))
    with conn.transaction(), conn.cursor(name="podyn_verify_extra") as cur:
        cur.execute(statement)
        while batch := cur.fetchmany(batch_size):
            yield batch
