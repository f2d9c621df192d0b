"""The pure core (podyn_py.core) imports no I/O: neither boto3 nor psycopg's connection layer, and opens nothing.

What can be asserted about psycopg, and why: ``from psycopg import sql`` runs ``psycopg/__init__.py``, which itself
imports ``psycopg.connection``, ``psycopg.cursor``, ``psycopg.pq`` and the ``psycopg_binary`` extension. So the
presence of those modules in ``sys.modules`` says nothing about the core; asserting their absence would fail for
as long as the core composes SQL with ``psycopg.sql``, which is the intended design. Instead:

1. a fresh interpreter that imports only the core loads no boto3/botocore/s3transfer, none of podyn's edges, and no
   psycopg module beyond what ``import psycopg.sql`` alone loads (a baseline measured in another fresh interpreter);
2. the core's source imports psycopg only as ``from psycopg import sql``;
3. the core does its work (conversion, schema, rows, DDL rendered with ``as_string()``) in an interpreter where
   every way to open a PostgreSQL connection or a socket raises.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from helpers import REPO_ROOT

import podyn_py.core

CORE_DIR = Path(podyn_py.core.__file__).parent
CORE_MODULES = sorted(
    f"podyn_py.core.{p.stem}" if p.stem != "__init__" else "podyn_py.core" for p in CORE_DIR.glob("*.py")
)
EXPECTED_CORE = {"values", "naming", "schema", "rows", "ddl"}

FORBIDDEN_PREFIXES = (
    "boto3",
    "botocore",
    "s3transfer",
    "mypy_boto3",
    "podyn_py.source",
    "podyn_py.target",
    "podyn_py.cli",
    "podyn_py.load",
    "podyn_py.replicate",
    "podyn_py.demo_services",
    "click",
    "tqdm",
)


def run_python(code: str) -> list[str]:
    """Run ``code`` in a fresh interpreter with a minimal environment and return the JSON it prints last."""
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env={"PYTHONPATH": str(REPO_ROOT), "PYTHONWARNINGS": "error"},
    )
    assert result.returncode == 0, result.stderr
    loaded: list[str] = json.loads(result.stdout.splitlines()[-1])
    return loaded


def test_core_modules_are_the_expected_ones() -> None:
    # A new core module must be added to the checks below by being found here, not silently skipped.
    assert {m.rsplit(".", 1)[-1] for m in CORE_MODULES} >= EXPECTED_CORE
    assert "podyn_py.core" in CORE_MODULES


def test_core_imports_no_io() -> None:
    imports = "\n".join(f"import {m}" for m in CORE_MODULES)
    loaded = set(
        run_python(
            f"""
            import json, sys
            {textwrap.indent(imports, " " * 12).strip()}
            print(json.dumps(sorted(sys.modules)))
            """
        )
    )
    assert set(CORE_MODULES) <= loaded
    assert sorted(m for m in loaded if m.startswith(FORBIDDEN_PREFIXES)) == []

    baseline = set(run_python("import json, sys, psycopg.sql; print(json.dumps(sorted(sys.modules)))"))
    psycopg_extra = {m for m in loaded - baseline if m.startswith(("psycopg", "psycopg_binary", "psycopg_c"))}
    assert psycopg_extra == set(), "the core imports more of psycopg than psycopg.sql needs"


@pytest.mark.parametrize("path", sorted(CORE_DIR.glob("*.py")), ids=lambda p: p.name)
def test_core_source_imports(path: Path) -> None:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            names = [f"{module}.{alias.name}" for alias in node.names]
        else:
            continue
        for name in names:
            assert not name.startswith(FORBIDDEN_PREFIXES), f"{path.name}: {name}"
            if name.split(".")[0] in {"psycopg", "psycopg_binary", "psycopg_c", "psycopg2"}:
                assert name == "psycopg.sql", f"{path.name}: imports {name}, only `from psycopg import sql` is pure"
            assert name.split(".")[0] not in {"socket", "urllib", "http", "requests", "subprocess"}, name


def test_core_works_with_connections_forbidden() -> None:
    result = run_python(
        """
        import json, socket, sys

        def forbidden(*args, **kwargs):
            raise AssertionError("the pure core tried to connect")

        socket.socket.connect = forbidden
        socket.socket.connect_ex = forbidden
        socket.create_connection = forbidden
        socket.getaddrinfo = forbidden

        import psycopg
        import psycopg.pq
        psycopg.connect = forbidden
        psycopg.Connection.connect = classmethod(forbidden)
        psycopg.AsyncConnection.connect = classmethod(forbidden)

        class ForbiddenPGconn:  # the libpq wrapper is an immutable C type: replace it rather than patch it
            connect = staticmethod(forbidden)
            connect_start = staticmethod(forbidden)

        psycopg.pq.PGconn = ForbiddenPGconn

        from podyn_py.core import ddl, rows, schema, values

        spec = schema.TableSpec(
            "T", "s", "t", schema.KeyAttribute("id", "S"), schema.KeyAttribute("ts", "N"),
            (schema.IndexSpec("byX", (schema.KeyAttribute("x", "S"),)),),
        )
        table = schema.initial_schema(spec)
        item = {"id": {"S": "k"}, "ts": {"N": "1.50"}, "m": {"M": {"n": {"N": "1E-130"}}}, "b": {"B": "AA=="}}
        table = table.with_columns(schema.evolve(table, [item]))
        row = rows.RowBuilder(table).build(item)
        out = [s.as_string() for s in ddl.create_statements(table, citus=True)]
        out.append(ddl.add_columns(table, table.columns[3:]).as_string())
        out.append(str(row[1]))
        out.append(row[3].decode())
        print(json.dumps(out))
        """
    )
    assert (
        result[1] == 'CREATE TABLE IF NOT EXISTS "s"."t" '
        '("id" text, "ts" numeric, "x" text, "m" jsonb, "b" bytea, PRIMARY KEY ("id", "ts"))'
    )
    assert result[2] == "SELECT create_distributed_table('\"s\".\"t\"', 'id')"
    assert result[-2] == "1.50"
    assert result[-1] == '{"n":1E-130}'
