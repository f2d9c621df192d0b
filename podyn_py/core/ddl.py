"""DDL as psycopg.sql compositions: every identifier quoted, every value a literal or a parameter.

These functions only compose statements; the target runs them, and the dry run prints them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from psycopg import sql

from podyn_py.core import naming
from podyn_py.core.schema import Column, IndexSpec, TableSchema


def qualified(schema: str, table: str) -> sql.Identifier:
    return sql.Identifier(schema, table)


def create_schema(schema: str) -> sql.Composed:
    return sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema))


def column_definition(column: Column) -> sql.Composed:
    return sql.SQL("{} {}").format(sql.Identifier(column.name), sql.SQL(column.type.value))


def create_table(schema: TableSchema) -> sql.Composed:
    spec = schema.spec
    definitions = [column_definition(c) for c in schema.columns]
    primary_key = sql.SQL(", ").join(sql.Identifier(c.name) for c in schema.primary_key_columns)
    definitions.append(sql.SQL("PRIMARY KEY ({})").format(primary_key))
    return sql.SQL("CREATE TABLE IF NOT EXISTS {} ({})").format(
        qualified(spec.schema, spec.table), sql.SQL(", ").join(definitions)
    )


def add_columns(schema: TableSchema, columns: Sequence[Column]) -> sql.Composed:
    """One ALTER TABLE for all new columns: one lock, one catalog change."""
    spec = schema.spec
    return sql.SQL("ALTER TABLE {} {}").format(
        qualified(spec.schema, spec.table),
        sql.SQL(", ").join(sql.SQL("ADD COLUMN IF NOT EXISTS {}").format(column_definition(c)) for c in columns),
    )


def rename_column(schema: TableSchema, old: str, new: str) -> sql.Composed:
    """RENAME COLUMN cannot share an ALTER TABLE with other actions: one statement per column."""
    spec = schema.spec
    return sql.SQL("ALTER TABLE {} RENAME COLUMN {} TO {}").format(
        qualified(spec.schema, spec.table), sql.Identifier(old), sql.Identifier(new)
    )


def create_index(schema: TableSchema, index: IndexSpec, name: str | None = None) -> sql.Composed:
    """CREATE INDEX for a GSI or LSI, named ``name`` (default: ``naming.index_name``)."""
    spec = schema.spec
    columns = sql.SQL(", ").join(sql.Identifier(schema.key_column(a).name) for a in index.attributes)
    return sql.SQL("CREATE INDEX IF NOT EXISTS {} ON {} ({})").format(
        sql.Identifier(name or naming.index_name(spec.table, index.name)), qualified(spec.schema, spec.table), columns
    )


def distribute_table(schema: TableSchema) -> sql.Composed:
    """Citus: shard the table by its partition key column."""
    spec = schema.spec
    table = sql.SQL("{}.{}").format(sql.Identifier(spec.schema), sql.Identifier(spec.table)).as_string()
    return sql.SQL("SELECT create_distributed_table({}, {})").format(
        sql.Literal(table), sql.Literal(schema.key_column(spec.partition_key).name)
    )


#: How a table's comment starts when podyn created the table. It survives the loss of the ``podyn`` schema, a
#: rename and a dump, not a drop: a table found without metadata but with this mark holds podyn's copy of a
#: table, whose rows podyn may replace; a table without it holds someone else's rows, which podyn only upserts.
TABLE_MARK = "podyn: a copy of DynamoDB table "


def mark_table(schema: TableSchema) -> sql.Composed:
    spec = schema.spec
    return sql.SQL("COMMENT ON TABLE {} IS {}").format(
        qualified(spec.schema, spec.table), sql.Literal(TABLE_MARK + spec.source)
    )


def drop_table(schema: TableSchema) -> sql.Composed:
    return sql.SQL("DROP TABLE {}").format(qualified(schema.spec.schema, schema.spec.table))


def copy_rows(schema: TableSchema) -> sql.Composed:
    """Binary COPY into every column of the schema, in column order (as rows are built)."""
    spec = schema.spec
    return sql.SQL("COPY {} ({}) FROM STDIN (FORMAT BINARY)").format(
        qualified(spec.schema, spec.table), sql.SQL(", ").join(sql.Identifier(n) for n in schema.column_names)
    )


def create_statements(
    schema: TableSchema,
    *,
    citus: bool,
    create_schema_too: bool = True,
    index_names: Mapping[str, str] | None = None,
) -> list[sql.Composed]:
    """Everything ``--schema`` runs for one table, in order: distribution comes before any data.

    Leave out CREATE SCHEMA for a schema that exists: even with IF NOT EXISTS it needs CREATE on the database.
    ``index_names`` maps a DynamoDB index name to the PostgreSQL name to use where the default one is taken.
    """
    index_names = index_names or {}
    statements = [create_schema(schema.spec.schema)] if create_schema_too else []
    statements.append(create_table(schema))
    if citus:
        statements.append(distribute_table(schema))
    statements.extend(create_index(schema, index, index_names.get(index.name)) for index in schema.spec.indexes)
    statements.append(mark_table(schema))
    return statements
