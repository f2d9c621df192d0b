"""Helpers shared by test modules: ``from helpers import ...`` (pytest puts tests/ on sys.path)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def run_podyn(
    *args: str,
    env: Mapping[str, str] | None = None,
    timeout: float = 120,
    cwd: Path | str | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m podyn_py ARGS`` in a subprocess and capture its output; never raises on exit codes.

    ``env`` is added to (and overrides) the current environment, which conftest has pointed at the local
    credentials; it does not replace it, so PATH and the AWS variables stay in place.
    """
    return subprocess.run(
        [sys.executable, "-m", "podyn_py", *args],
        env={**os.environ, **(env or {})},
        cwd=cwd if cwd is not None else REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
