"""The README documents every option of the CLI, and every option has help (as sqlite-utils' test_docs does)."""

from __future__ import annotations

import re

import pytest
from helpers import REPO_ROOT

from podyn_py.cli import main

README = (REPO_ROOT / "README.md").read_text()
OPTIONS = [p for p in main.params if p.param_type_name == "option"]


@pytest.mark.parametrize("option", OPTIONS, ids=lambda o: o.name or "?")
def test_every_option_is_documented(option: object) -> None:
    names = [n for n in option.opts + option.secondary_opts if n.startswith("--")]  # type: ignore[attr-defined]
    assert any(re.search(rf"`[^`]*{re.escape(n)}\b", README) for n in names), f"{names} missing from README.md"
    assert option.help, f"{names} has no --help text"  # type: ignore[attr-defined]


def test_readme_opens_with_the_two_setup_commands() -> None:
    first_block = README.split("```bash", 1)[1].split("```", 1)[0]
    assert "bash scripts/demo.sh" in first_block and "bash scripts/test.sh" in first_block
    assert (REPO_ROOT / ".ci" / "run").read_text().count("scripts/test.sh") == 1
