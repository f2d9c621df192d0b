"""Every module of podyn_py stands on its floor and imports only from its floor or below, and nothing in a circle.

The floors, bottom to top (README "Design notes"):

0. ``errors``, ``metrics``, ``progress``, ``health``, ``logs``: import no other podyn module; ``retry`` imports only
   ``health`` (a retry's wait is a round of its loop);
1. the pure core, ``core/*`` (tests/test_core_purity.py checks that it does no I/O), with ``core.ports``: the
   protocols of the sources, the target and the DynamoDB clients, which the edges satisfy and the orchestration speaks;
2. ``config``: plain settings (it speaks the core's ``ConversionMode``, so it stands on the core), and ``config_file``;
3. the edges: ``source/*`` (DynamoDB and its streams), ``target/*`` (PostgreSQL and the ``podyn`` schema), and
   ``conversion`` (items → rows with schema growth, shared by the load and the changes); the source and the target
   do not import each other;
4. the orchestration: ``load``, ``export_load``, ``changes``, ``replicate``, ``verify``, ``status``;
5. on top: ``cli``, ``__main__``, ``demo``, and ``demo_services`` (the embedded servers; only the demo imports them
   inside the package, the tests and benches outside it).

Imports are read with ``ast``, at module level and inside functions alike (a lazy import is an import too).
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import REPO_ROOT

import podyn_py

PACKAGE_DIR = Path(podyn_py.__file__).parent

#: Floor of each module, by name relative to ``podyn_py`` (a trailing ``.*``: every module of that package).
FLOORS: dict[str, int] = {
    "": 0,  # podyn_py/__init__.py
    "errors": 0,
    "metrics": 0,
    "progress": 0,
    "retry": 0,  # what a retry can fix and how long to wait: used by both edges and the orchestration
    "health": 0,  # the loops' beats and the tables' states that /healthz and /readyz report
    "logs": 0,  # the text and JSON log formats, the table of a record, redaction
    "collector": 0,  # the garbage collector's settings for a run, set by the CLI
    "core.*": 1,
    "config": 2,
    "config_file": 2,  # --config: reads and checks the TOML file; the CLI converts its values with its own types
    "source.*": 3,
    "target.*": 3,
    "conversion": 3,
    "units": 3,
    "load": 4,
    "export_load": 4,
    "bridge": 4,
    "export_request": 4,
    "changes": 4,
    "spool": 4,
    "replicate": 4,
    "verify": 4,
    "status": 4,
    "processes": 4,
    "cli": 5,
    "__main__": 5,
    "demo": 5,
    "demo_services": 5,
}
#: Modules only these may import, whatever their floor.
ONLY_IMPORTED_BY = {"podyn_py.demo_services": {"podyn_py.demo"}}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE_DIR.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE_DIR.rglob("*.py"))}


def floor(module: str) -> int:
    relative = module.removeprefix("podyn_py").removeprefix(".")
    if relative in FLOORS:
        return FLOORS[relative]
    package = relative.split(".")[0] + ".*"
    if package in FLOORS:
        return FLOORS[package]
    raise AssertionError(f"{module} has no floor: add it to FLOORS in {__file__} and to the README's design notes")


def podyn_imports(module: str) -> set[str]:
    """The podyn_py modules ``module`` imports anywhere in its source (a package when no module has the name)."""
    tree = ast.parse(MODULES[module].read_text(encoding="utf-8"))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{module}: relative import (line {node.lineno})"
            base = node.module or ""
            for alias in node.names:
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base)
    return {name for name in found if name == "podyn_py" or name.startswith("podyn_py.")}


GRAPH = {module: podyn_imports(module) - {module} for module in MODULES}


def test_every_module_has_a_floor_and_the_expected_ones_exist() -> None:
    for module in MODULES:
        floor(module)
    assert {
        "podyn_py.config",
        "podyn_py.core.compare",
        "podyn_py.core.keys",
        "podyn_py.core.ports",
        "podyn_py.target.verify_sql",
        "podyn_py.demo_services",
        "podyn_py.verify",
    } <= MODULES.keys()
    assert "podyn_py.local" not in MODULES


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_stay_on_their_floor_or_below(module: str) -> None:
    above = sorted(f"{name} (floor {floor(name)})" for name in GRAPH[module] if floor(name) > floor(module))
    assert above == [], f"{module} (floor {floor(module)}) imports from above"


@pytest.mark.parametrize("guarded", sorted(ONLY_IMPORTED_BY))
def test_guarded_modules_have_only_their_importers(guarded: str) -> None:
    importers = {module for module, imported in GRAPH.items() if guarded in imported}
    assert importers <= ONLY_IMPORTED_BY[guarded]


@pytest.mark.parametrize(
    ("edge", "other"), [("podyn_py.source", "podyn_py.target"), ("podyn_py.target", "podyn_py.source")]
)
def test_the_edges_do_not_import_each_other(edge: str, other: str) -> None:
    # What both need (a shard's position, keys) is the core's; the orchestration joins the two edges.
    crossing = sorted(
        f"{module} → {name}"
        for module, imported in GRAPH.items()
        if module.startswith(edge)
        for name in imported
        if name.startswith(other)
    )
    assert crossing == []


def test_no_import_cycles() -> None:
    cycles: list[list[str]] = []
    done: set[str] = set()

    def visit(module: str, path: list[str]) -> None:
        if module in path:
            cycles.append([*path[path.index(module) :], module])
            return
        if module in done:
            return
        for imported in sorted(GRAPH.get(module, ())):
            visit(imported, [*path, module])
        done.add(module)

    for module in sorted(GRAPH):
        visit(module, [])
    assert cycles == []


def test_the_checks_see_what_they_check() -> None:
    # The graph is read correctly: lazy imports inside functions count, ``from package import module`` names the
    # module, and the edges are seen where they are (were these wrong, the tests above would pass vacuously).
    assert {"podyn_py.replicate", "podyn_py.verify", "podyn_py.status"} <= GRAPH["podyn_py.cli"]
    assert "podyn_py.target.verify_sql" in GRAPH["podyn_py.verify"]
    assert "podyn_py.source.dynamodb" in GRAPH["podyn_py.verify"]
    assert "podyn_py.demo_services" in GRAPH["podyn_py.demo"]
    assert floor("podyn_py.target.state") > floor("podyn_py.core.schema") > floor("podyn_py.errors")
    # The protocols stand below both edges, so either may import them without reaching the other.
    assert floor("podyn_py.core.ports") < floor("podyn_py.source.streams") == floor("podyn_py.target.postgres")
    assert "podyn_py.core.ports" in GRAPH["podyn_py.source.streams"] & GRAPH["podyn_py.changes"]


def test_config_loads_no_aws_sdk() -> None:
    # config stands below the edges: building a Config must not drag boto3 in (it did, through AwsSettings).
    result = subprocess.run(
        [sys.executable, "-c", "import json, sys, podyn_py.config; print(json.dumps(sorted(sys.modules)))"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env={"PYTHONPATH": str(REPO_ROOT), "PYTHONWARNINGS": "error"},
    )
    assert result.returncode == 0, result.stderr
    loaded: list[str] = json.loads(result.stdout.splitlines()[-1])
    assert "podyn_py.config" in loaded
    assert [m for m in loaded if m.split(".")[0] in {"boto3", "botocore", "s3transfer"}] == []
    assert [m for m in loaded if m.startswith(("podyn_py.source", "podyn_py.target"))] == []
