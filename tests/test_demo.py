"""The README's first command, end to end: the demo starts its own DynamoDB Local and PostgreSQL and must finish."""

from __future__ import annotations

import subprocess
import sys

from helpers import REPO_ROOT


def test_demo_runs_to_completion() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "podyn_py.demo"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "the changes arrived in PostgreSQL" in result.stdout
    assert "demo finished: the copy equals DynamoDB" in result.stdout
    # The live changes are visible in the printed tables: the new item, and the type conflict's variant column.
    assert "Live-Added Scooter" in result.stdout and "Threads_text" in result.stdout
