"""DDL composition (podyn_py.core.ddl), tested as strings: no database needed."""

from __future__ import annotations

import pytest
from psycopg import sql

from podyn_py.core import ddl, naming
from podyn_py.core.schema import (
    Column,
    ConversionMode,
    IndexSpec,
    KeyAttribute,
    TableSchema,
    TableSpec,
    evolve,
    initial_schema,
)
from podyn_py.core.values import PgType

HOSTILE = 'x"; DROP TABLE y; --'
# Single quote, double quote, backslash and a comment marker: every way out of a literal or an identifier.
WORSE = "o'x\"; DROP TABLE y; --\\"


def orders(*, mode: ConversionMode = ConversionMode.COLUMNS, lower_case: bool = False) -> TableSchema:
    return initial_schema(
        TableSpec(
            source="Orders",
            schema="public",
            table="orders",
            partition_key=KeyAttribute("id", "S"),
            sort_key=KeyAttribute("ts", "N"),
            indexes=(IndexSpec("byCustomer", (KeyAttribute("customer", "S"), KeyAttribute("ts", "N"))),),
            mode=mode,
            lower_case=lower_case,
        )
    )


def hostile(name: str) -> TableSchema:
    return initial_schema(
        TableSpec(
            source=name,
            schema=name,
            table=name,
            partition_key=KeyAttribute(name, "S"),
            sort_key=KeyAttribute(name + "2", "N"),
            indexes=(IndexSpec(name, (KeyAttribute(name + "3", "B"),)),),
        )
    )


def lex(statement: str) -> tuple[list[str], list[str], str]:
    """Split SQL text into quoted identifiers, string literals and what is left (keywords and punctuation)."""
    identifiers: list[str] = []
    literals: list[str] = []
    rest: list[str] = []
    i = 0
    while i < len(statement):
        char = statement[i]
        if char == '"':
            j = i + 1
            value = []
            while True:
                if statement[j] == '"':
                    if statement[j + 1 : j + 2] == '"':
                        value.append('"')
                        j += 2
                        continue
                    break
                value.append(statement[j])
                j += 1
            identifiers.append("".join(value))
            i = j + 1
        elif char == "'" or statement[i : i + 2] == "E'":
            escaped = char == "E"
            j = i + (2 if escaped else 1)
            value = []
            while True:
                if escaped and statement[j] == "\\":
                    value.append(statement[j + 1])
                    j += 2
                    continue
                if statement[j] == "'":
                    if statement[j + 1 : j + 2] == "'":
                        value.append("'")
                        j += 2
                        continue
                    break
                value.append(statement[j])
                j += 1
            literals.append("".join(value))
            i = j + 1
        else:
            rest.append(char)
            i += 1
    return identifiers, literals, "".join(rest)


def test_create_schema() -> None:
    assert ddl.create_schema("public").as_string() == 'CREATE SCHEMA IF NOT EXISTS "public"'
    assert ddl.create_schema("My Schema").as_string() == 'CREATE SCHEMA IF NOT EXISTS "My Schema"'


def test_create_table() -> None:
    assert ddl.create_table(orders()).as_string() == (
        'CREATE TABLE IF NOT EXISTS "public"."orders" '
        '("id" text, "ts" numeric, "customer" text, PRIMARY KEY ("id", "ts"))'
    )


def test_create_table_jsonb() -> None:
    assert ddl.create_table(orders(mode=ConversionMode.JSONB)).as_string() == (
        'CREATE TABLE IF NOT EXISTS "public"."orders" '
        '("id" text, "ts" numeric, "customer" text, "data" jsonb, PRIMARY KEY ("id", "ts"))'
    )


def test_create_table_jsonb_key_named_data() -> None:
    spec = TableSpec("T", "s", "t", KeyAttribute("data", "S"), mode=ConversionMode.JSONB)
    schema = initial_schema(spec)
    statement = ddl.create_table(schema).as_string()
    key = schema.key_column(spec.partition_key).name
    assert key != "data"
    assert statement == f'CREATE TABLE IF NOT EXISTS "s"."t" ("{key}" text, "data" jsonb, PRIMARY KEY ("{key}"))'


def test_create_table_every_type() -> None:
    schema = orders()
    schema = schema.with_columns(
        evolve(
            schema,
            [
                {
                    "n": {"N": "1"},
                    "s": {"S": "x"},
                    "b": {"B": b"x"},
                    "f": {"BOOL": True},
                    "m": {"M": {}},
                    "n2": {"S": "1"},
                }
            ],
        )
    )
    schema = schema.with_columns(evolve(schema, [{"n": {"S": "x"}}]))
    assert ddl.create_table(schema).as_string() == (
        'CREATE TABLE IF NOT EXISTS "public"."orders" ("id" text, "ts" numeric, "customer" text, '
        '"n" numeric, "s" text, "b" bytea, "f" boolean, "m" jsonb, "n2" text, "n_text" text, '
        'PRIMARY KEY ("id", "ts"))'
    )


def test_lower_case_names_used_everywhere() -> None:
    spec = TableSpec(
        "T",
        "s",
        "t",
        KeyAttribute("PK", "S"),
        KeyAttribute("SK", "N"),
        (IndexSpec("Gsi", (KeyAttribute("GsiKey", "S"),)),),
        lower_case=True,
    )
    statements = [s.as_string() for s in ddl.create_statements(initial_schema(spec), citus=True)]
    assert (
        statements[1]
        == 'CREATE TABLE IF NOT EXISTS "s"."t" ("pk" text, "sk" numeric, "gsikey" text, PRIMARY KEY ("pk", "sk"))'
    )
    assert statements[2] == "SELECT create_distributed_table('\"s\".\"t\"', 'pk')"
    assert statements[3] == 'CREATE INDEX IF NOT EXISTS "t_Gsi" ON "s"."t" ("gsikey")'


def test_add_columns() -> None:
    columns = [
        Column("a", PgType.TEXT, "a"),
        Column("b c", PgType.JSONB, "b c"),
        Column("a_numeric", PgType.NUMERIC, "a", variant=True),
        Column(HOSTILE, PgType.BOOLEAN, HOSTILE),
    ]
    assert ddl.add_columns(orders(), columns).as_string() == (
        'ALTER TABLE "public"."orders" ADD COLUMN IF NOT EXISTS "a" text, ADD COLUMN IF NOT EXISTS "b c" jsonb, '
        'ADD COLUMN IF NOT EXISTS "a_numeric" numeric, ADD COLUMN IF NOT EXISTS "x""; DROP TABLE y; --" boolean'
    )


def test_create_index() -> None:
    schema = orders()
    (index,) = schema.spec.indexes
    assert ddl.create_index(schema, index).as_string() == (
        'CREATE INDEX IF NOT EXISTS "orders_byCustomer" ON "public"."orders" ("customer", "ts")'
    )


def test_distribute_table() -> None:
    assert (
        ddl.distribute_table(orders()).as_string() == "SELECT create_distributed_table('\"public\".\"orders\"', 'id')"
    )


@pytest.mark.parametrize("citus", [False, True])
def test_create_statements_order(citus: bool) -> None:
    schema = orders()
    statements = [s.as_string() for s in ddl.create_statements(schema, citus=citus)]
    kinds = [s.split(" (")[0].split(" IF NOT EXISTS")[0] for s in statements]
    expected = [
        "CREATE SCHEMA",
        "CREATE TABLE",
        "CREATE INDEX",
        'COMMENT ON TABLE "public"."orders" IS \'podyn: a copy of DynamoDB table Orders\'',
    ]
    if citus:
        expected.insert(2, "SELECT create_distributed_table('\"public\".\"orders\"', 'id')")
    assert kinds == expected
    assert any("create_distributed_table" in s for s in statements) is citus


def test_create_statements_without_indexes() -> None:
    schema = initial_schema(TableSpec("T", "s", "t", KeyAttribute("k", "S")))
    statements = [s.as_string() for s in ddl.create_statements(schema, citus=True)]
    assert statements == [
        'CREATE SCHEMA IF NOT EXISTS "s"',
        'CREATE TABLE IF NOT EXISTS "s"."t" ("k" text, PRIMARY KEY ("k"))',
        "SELECT create_distributed_table('\"s\".\"t\"', 'k')",
        'COMMENT ON TABLE "s"."t" IS \'podyn: a copy of DynamoDB table T\'',
    ]
    assert len(ddl.create_statements(schema, citus=False)) == 3


def test_create_statements_several_indexes_after_distribution() -> None:
    spec = TableSpec(
        "T",
        "s",
        "t",
        KeyAttribute("k", "S"),
        indexes=(IndexSpec("a", (KeyAttribute("x", "S"),)), IndexSpec("b", (KeyAttribute("y", "N"),), False)),
    )
    statements = [s.as_string() for s in ddl.create_statements(initial_schema(spec), citus=True)]
    assert statements[2].startswith("SELECT create_distributed_table(")
    assert statements[3] == 'CREATE INDEX IF NOT EXISTS "t_a" ON "s"."t" ("x")'
    assert statements[4] == 'CREATE INDEX IF NOT EXISTS "t_b" ON "s"."t" ("y")'
    tagged = {"b": naming.tagged_index_name("t", "b")}
    renamed = [s.as_string() for s in ddl.create_statements(initial_schema(spec), citus=False, index_names=tagged)]
    assert renamed[2] == 'CREATE INDEX IF NOT EXISTS "t_a" ON "s"."t" ("x")'
    assert renamed[3] == f'CREATE INDEX IF NOT EXISTS "t_b_{naming.name_tag("t", "b")}" ON "s"."t" ("y")'


@pytest.mark.parametrize("name", [HOSTILE, WORSE, "select", "Mixed Case", "caf\u00e9 \U0001f389", "a" * 63])
@pytest.mark.parametrize("citus", [False, True])
def test_every_identifier_is_quoted(name: str, citus: bool) -> None:
    schema = hostile(name)
    statements = [
        *ddl.create_statements(schema, citus=citus),
        ddl.add_columns(schema, [Column(name + "4", PgType.TEXT, name + "4")]),
    ]
    for statement in statements:
        assert isinstance(statement, sql.Composable)
        identifiers, literals, rest = lex(statement.as_string())
        # Nothing of the name leaks out of its quotes: what is left is keywords, types and punctuation.
        assert "DROP" not in rest and "--" not in rest and ";" not in rest and "'" not in rest
        allowed = {name, name + "4", *schema.column_names, naming.index_name(name, name)}
        assert set(identifiers) <= allowed, statement.as_string()
        if not literals:
            assert name in identifiers
        elif statement.as_string().startswith("COMMENT ON TABLE"):
            # The mark names the DynamoDB table inside one literal: the name stays inside it.
            assert literals == [ddl.TABLE_MARK + name]
            assert identifiers == [name, name]
        else:
            # create_distributed_table('"schema"."table"', 'column'): the literal is itself quoted identifiers.
            table, column = literals
            assert lex(table)[0] == [name, name]
            assert lex(table)[2] == "."
            assert column == schema.primary_key_columns[0].name


def test_hostile_create_table_exact() -> None:
    schema = initial_schema(TableSpec(HOSTILE, "s", HOSTILE, KeyAttribute(HOSTILE, "S")))
    assert ddl.create_table(schema).as_string() == (
        'CREATE TABLE IF NOT EXISTS "s"."x""; DROP TABLE y; --" '
        '("x""; DROP TABLE y; --" text, PRIMARY KEY ("x""; DROP TABLE y; --"))'
    )
    assert ddl.distribute_table(schema).as_string() == (
        'SELECT create_distributed_table(\'"s"."x""; DROP TABLE y; --"\', \'x"; DROP TABLE y; --\')'
    )
