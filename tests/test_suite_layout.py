"""The test suite's own rules (issue 11, point 5): shared helpers live in helpers.py and conftest.py, no test module
imports another, and the ``services`` and ``slow`` markers are registered, strict, and set on what needs them."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import REPO_ROOT

TESTS = REPO_ROOT / "tests"
TEST_MODULES = sorted(TESTS.glob("test_*.py"))
#: What helpers.py (and conftest.py, for the fixture) define once for every module.
SHARED = {"podyn", "run_podyn", "assert_exit", "ok", "podyn_ok", "Service", "services", "wait_for", "wait_for_state"}
SHARED |= {"wait_for_status", "wait_equal", "status_record", "status_with_exit"}


def _tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(), filename=str(path))


@pytest.mark.parametrize("path", TEST_MODULES, ids=lambda p: p.name)
def test_no_test_module_imports_another(path: Path) -> None:
    imported = set()
    for node in ast.walk(_tree(path)):
        if isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])
        elif isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
    assert not {name for name in imported if name.startswith("test_")}, f"{path.name}: import from helpers.py instead"


@pytest.mark.parametrize("path", TEST_MODULES, ids=lambda p: p.name)
def test_no_test_module_defines_its_own_shared_helper(path: Path) -> None:
    defined = {
        node.name
        for node in _tree(path).body
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)
    }
    assert not defined & SHARED, f"{path.name} defines {sorted(defined & SHARED)}: use the one in helpers.py"


def test_markers_are_registered_and_strict(pytestconfig: pytest.Config) -> None:
    registered = {line.split(":", 1)[0].strip() for line in pytestconfig.getini("markers")}
    assert {"slow", "services"} <= registered
    assert "--strict-markers" in pytestconfig.getini("addopts")


MARKER_DUMP = """
def pytest_collection_finish(session):
    for item in session.items:
        marks = sorted(m for m in ("services", "slow") if item.get_closest_marker(m))
        print("MARKS", item.nodeid, ",".join(marks) or "-")
"""


def test_the_servers_fixtures_mark_a_test_services_directly_or_through_other_fixtures(tmp_path: Path) -> None:
    """Collected in a subprocess, with a plugin that prints each test's markers: test_metadata_truth's tests get
    the servers through pg_url and create_table, test_naming's use neither, test_demo starts its own."""
    (tmp_path / "marker_dump.py").write_text(MARKER_DUMP)
    modules = ["tests/test_metadata_truth.py", "tests/test_naming.py", "tests/test_demo.py"]
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-p", "marker_dump", "--collect-only", "-q"]
        + modules,
        cwd=REPO_ROOT,
        env={**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(REPO_ROOT)])},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    marks: dict[str, set[str]] = {}
    for line in result.stdout.splitlines():
        if line.startswith("MARKS "):
            nodeid, listed = line.removeprefix("MARKS ").rsplit(" ", 1)
            marks[nodeid] = set(listed.split(",")) - {"-"}
    by_module: dict[str, list[set[str]]] = {}
    for nodeid, item_marks in marks.items():
        by_module.setdefault(nodeid.split("::")[0], []).append(item_marks)
    assert set(by_module) == set(modules), result.stdout[-2000:]
    assert all("services" in found for found in by_module["tests/test_metadata_truth.py"])
    assert not any(found for found in by_module["tests/test_naming.py"]), "a pure test was marked"
    assert by_module["tests/test_demo.py"] == [{"services", "slow"}]
