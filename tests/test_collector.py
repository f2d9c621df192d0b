"""The garbage collector's settings for a run (podyn_py.collector): what they change, what they leave, who sets them.

They change the process's collector, so each test puts the thresholds back as they were.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest
from click.testing import CliRunner

from podyn_py import collector
from podyn_py.cli import main


@pytest.fixture(autouse=True)
def thresholds() -> Iterator[None]:
    before = gc.get_threshold()
    try:
        yield
    finally:
        gc.set_threshold(*before)


def test_the_young_generation_is_collected_less_often() -> None:
    gc.set_threshold(700, 10, 10)  # CPython's defaults
    collector.tune_for_bulk_work()
    assert gc.get_threshold() == (collector.YOUNG_THRESHOLD, 10, 10)


@pytest.mark.parametrize(
    "chosen",
    [(0, 10, 10), (collector.YOUNG_THRESHOLD * 2, 5, 5)],
    ids=["collector off", "higher already"],
)
def test_a_choice_made_before_is_left(chosen: tuple[int, int, int]) -> None:
    gc.set_threshold(*chosen)
    collector.tune_for_bulk_work()
    assert gc.get_threshold() == chosen


def test_importing_podyn_changes_nothing_the_cli_does() -> None:
    """The library leaves the collector alone (imported above); the command sets it before anything else."""
    gc.set_threshold(700, 10, 10)
    assert gc.get_threshold() == (700, 10, 10)
    result = CliRunner().invoke(main, [])  # nothing to do: a usage error, after the settings
    assert result.exit_code == 2 and "nothing to do" in result.output
    assert gc.get_threshold()[0] == collector.YOUNG_THRESHOLD
