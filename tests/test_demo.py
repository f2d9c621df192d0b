"""The README's first command, end to end: the demo starts its own DynamoDB Local and PostgreSQL and must finish, and
its claim that the copy equals DynamoDB must come from ``podyn --verify``'s report (tests/test_demo_verify.py
plants a difference and takes a table away)."""

from __future__ import annotations

import subprocess
import sys

import pytest
from helpers import REPO_ROOT

from podyn_py.demo import SAMPLE_TABLES

# The demo starts its own PostgreSQL and DynamoDB Local (no fixture tells conftest so) and runs for about 20 s.
pytestmark = [pytest.mark.services, pytest.mark.slow]


def test_demo_runs_to_completion() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "podyn_py.demo"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "the changes arrived in PostgreSQL" in result.stdout
    # The verdict comes from verify: its report, one "equal" line per table, is printed before it.
    assert "$ podyn --verify" in result.stdout
    for sample in SAMPLE_TABLES:
        assert f"demo_{sample} → public.demo_{sample}: equal (" in result.stdout, result.stdout[-3000:]
    assert f"demo finished: podyn --verify found the copy equal to DynamoDB ({len(SAMPLE_TABLES)} tables)" in (
        result.stdout
    )
    # The live changes are visible in the printed tables: the new item, and the type conflict's variant column.
    assert "Live-Added Scooter" in result.stdout and "Threads_text" in result.stdout
