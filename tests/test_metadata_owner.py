"""One owner of the ``podyn`` metadata schema (issue 11, point 2).

target/state.py is the only module whose SQL names ``podyn.<table>``; everyone else calls its typed functions.
A state change is shown (its log line, the ``podyn_table_state`` metric) only once its transaction committed.
"""

from __future__ import annotations

import ast
import re
import uuid
from pathlib import Path

import pytest
from oracle import connect

from podyn_py import metrics
from podyn_py.core.schema import KeyAttribute, TableSpec
from podyn_py.errors import TargetError
from podyn_py.target import state
from podyn_py.target.postgres import PostgresTarget

PACKAGE = Path(__file__).resolve().parent.parent / "podyn_py"
OWNER = PACKAGE / "target" / "state.py"

#: Modules whose SQL on podyn.* has yet to move into state.py (none left). The test fails while an entry names a
#: module that no longer has such SQL.
NOT_YET_MOVED: set[Path] = set()

_TABLES = "|".join(name.split(".")[1] for name in (*state.METADATA_TABLES, "podyn.schema_version"))
#: SQL naming a metadata table: after a keyword that names a relation, or as to_regclass's argument. A message
#: ("reading podyn.tables", "not in podyn.tables", "see podyn.rejected") has no such keyword before the name.
_METADATA_SQL = re.compile(
    rf"(\b(FROM|INTO|UPDATE|JOIN|TABLE|EXISTS)\s+|to_regclass\(\s*'){state.METADATA_SCHEMA}\.({_TABLES})\b",
    re.IGNORECASE,
)


def metadata_sql(path: Path) -> list[str]:
    """``line: text`` of each string literal in the module whose SQL names a podyn.* table, or of each
    ``sql.Identifier("podyn", ...)``."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and _METADATA_SQL.search(node.value):
            found.append(f"{node.lineno}: {' '.join(node.value.split())[:100]}")
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute | ast.Name)
            and (node.func.attr if isinstance(node.func, ast.Attribute) else node.func.id) == "Identifier"
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and node.args[0].value == state.METADATA_SCHEMA
        ):
            found.append(f"{node.lineno}: Identifier({state.METADATA_SCHEMA!r}, ...)")
    return found


def test_only_the_state_module_has_sql_on_the_metadata_schema() -> None:
    modules = sorted(PACKAGE.rglob("*.py"))
    assert OWNER in modules
    elsewhere = {
        str(path.relative_to(PACKAGE)): hits
        for path in modules
        if path != OWNER and path not in NOT_YET_MOVED and (hits := metadata_sql(path))
    }
    assert not elsewhere, f"SQL on podyn.* outside target/state.py (move it into a typed function there): {elsewhere}"
    stale = [str(path.relative_to(PACKAGE)) for path in NOT_YET_MOVED if not metadata_sql(path)]
    assert not stale, f"no SQL on podyn.* left in {stale}: remove them from NOT_YET_MOVED"


def test_the_check_finds_the_state_modules_sql() -> None:
    """The pattern is not blind: it finds state.py's SQL on every metadata table, and not the messages."""
    found = " ".join(metadata_sql(OWNER))
    for table in _TABLES.split("|"):
        assert f"podyn.{table}" in found, f"podyn.{table} not found in state.py's SQL: {found}"
    messages = ["reading podyn.tables", "not in podyn.tables", "(see podyn.rejected)", "updating podyn.tables"]
    assert not [m for m in messages if _METADATA_SQL.search(m)]


def shown_state(table: str) -> dict[str, float | None]:
    return {
        each.value: metrics.REGISTRY.get_sample_value("podyn_table_state", {"table": table, "state": each.value})
        for each in (state.TableState.LOADING, state.TableState.LOADED)
    }


def test_a_state_change_rolled_back_at_commit_leaves_the_metric_alone(pg_url: str) -> None:
    """A deferred trigger fails the commit of finish_load's transaction: the table stays ``loading``, in the
    database and in the metric; once the commit succeeds, the metric says ``loaded``."""
    spec = TableSpec(
        f"Owner_{uuid.uuid4().hex[:8]}", "public", f"owner_{uuid.uuid4().hex[:8]}", KeyAttribute("pk", "S")
    )
    target = PostgresTarget(pg_url, retry_seconds=0)
    target.prepare_table(spec, create=True, citus=False)
    assert target.begin_load(spec, 1, reload=False) is not None
    assert shown_state(spec.source) == {"loading": 1.0, "loaded": 0.0}
    with connect(pg_url) as conn:
        # Every segment done but the table not marked loaded: as an older podyn left a load it was killed in.
        conn.execute("UPDATE podyn.segments SET done = true")
        conn.execute(
            """CREATE FUNCTION refuse_commit() RETURNS trigger LANGUAGE plpgsql
               AS $$ BEGIN RAISE EXCEPTION 'commit refused by the test'; END $$"""
        )
        conn.execute(
            """CREATE CONSTRAINT TRIGGER refuse_commit AFTER UPDATE ON podyn.tables
               DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION refuse_commit()"""
        )
    with pytest.raises(TargetError, match="commit refused by the test"):
        target.finish_load(spec)
    record = target.read_table(spec)
    assert record is not None and record.state is state.TableState.LOADING and record.load_finished_at is None
    assert shown_state(spec.source) == {"loading": 1.0, "loaded": 0.0}

    with connect(pg_url) as conn:
        conn.execute("DROP TRIGGER refuse_commit ON podyn.tables")
    assert target.finish_load(spec) == 0
    assert shown_state(spec.source) == {"loading": 0.0, "loaded": 1.0}
