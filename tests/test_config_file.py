"""``--config podyn.toml`` without the services (issue 15, item 5): what the file may hold, the errors that name a
wrong key or value with its line (exit 2), flags winning over the file, and the sample file the README shows.

Most cases run the real ``main`` in-process with click's CliRunner; one runs ``python -m podyn_py``. That the
settings reach each table's load is tested against DynamoDB Local and PostgreSQL in tests/test_config_file_cli.py.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from click.testing import CliRunner
from helpers import REPO_ROOT, assert_exit, run_podyn

from podyn_py import cli, config_file
from podyn_py.config import TableSettings
from podyn_py.core.schema import ConversionMode
from podyn_py.core.targets import TargetName
from podyn_py.errors import ConfigError

EXAMPLE = REPO_ROOT / "examples" / "podyn.toml"


def settings_of(*args: str, env: dict[str, str] | None = None) -> tuple[dict[str, object], dict[str, TableSettings]]:
    """The options and per-table settings ``podyn ARGS`` would run with (parsed as the CLI parses them)."""
    context = cli.main.make_context("podyn", list(args))
    with context:
        sources, tables = cli._table_settings(context, context.params["tables"], context.params["config_file"])
    return {**context.params, "sources": sources}, tables


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "podyn.toml"
    path.write_text(text)
    return str(path)


def test_the_example_file_is_valid_and_means_what_its_comments_say() -> None:
    options, tables = settings_of("--config", str(EXAMPLE), "--schema")
    assert options["sources"] == ("Orders", "UserProfiles", "Events.v2", "Sessions")
    assert (options["pg_schema"], options["connections"], options["scan_rate"], options["region"]) == (
        "dynamodb",
        8,
        200.0,
        "eu-west-1",
    )
    assert tables["Orders"] == TableSettings(TargetName(None, "orders"), segments=64)
    assert tables["UserProfiles"] == TableSettings(
        TargetName("app", "user_profiles"), mode=ConversionMode.JSONB, scan_rate=50.0
    )
    assert tables["Events.v2"] == TableSettings(TargetName(None, "events_v2"), lower_case=True)
    assert tables["Sessions"] == TableSettings()


def test_the_readme_shows_the_example_file() -> None:
    readme = (REPO_ROOT / "README.md").read_text()
    blocks = re.findall(r"```toml\n(.*?)```", readme, re.DOTALL)
    assert EXAMPLE.read_text() in blocks


def test_flags_and_the_environment_win_over_the_file(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        'postgres_url = "postgresql://file@db/app"\nscan_rate = 100\nsegments = 4\nconversion_mode = "jsonb"\n'
        '[tables.A]\nscan_rate = 5\nsegments = 2\ntarget = "a"\nconversion_mode = "columns"\n'
        "lower_case_column_names = true\n[tables.B]\n",
    )
    options, tables = settings_of("--config", path, "-s")
    assert (options["postgres_url"], options["scan_rate"], options["segments"], options["conversion_mode"]) == (
        "postgresql://file@db/app",
        100.0,
        4,
        "jsonb",
    )
    assert tables["A"] == TableSettings(TargetName(None, "a"), ConversionMode.COLUMNS, True, 5.0, 2)
    options, tables = settings_of("--config", path, "-s", "-r", "7", "-m", "jsonb", "-t", "A:other,C")
    assert options["scan_rate"] == 7.0 and options["sources"] == ("A", "C")  # -t chooses the tables
    assert tables["A"] == TableSettings(TargetName(None, "other"), None, True, None, 2)  # -r and -m: every table
    assert tables["C"] == TableSettings()
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PODYN_POSTGRES_URL", "postgresql://env@db/app")
        assert settings_of("--config", path, "-s")[0]["postgres_url"] == "postgresql://env@db/app"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("scan_rate = 1\nsegmnts = 4\n", "line 2: unknown key 'segmnts' at the top level (did you mean segments?)"),
        ("[tables.Orders]\n\n# a comment\nscan-rate = 4\n", "line 4: unknown key 'scan-rate' in [tables.Orders]"),
        (
            '[tables."my.table"]\ntarget = "x"\n  color = "red"\n',
            "line 3: unknown key 'color' in [tables.\"my.table\"]",
        ),
        ("tables.Orders.segmnts = 4\n", "line 1: unknown key 'segmnts' in [tables.Orders]"),
        ("[tables]\nOrders = { segments = 4, colour = 1 }\n", "line 2: unknown key 'colour' in [tables.Orders]"),
        ("[tables.A]\nsegments = 1\n[tables.B]\nsegments = 1\nnum_connections = 2\n", "line 5: num_connections"),
        ('target = "x"\n', "line 1: target belongs in a table's section"),
        ("reload = true\n", "line 1: unknown key 'reload'"),  # what to do stays on the command line
        ("tables = 3\n", "line 1: tables: give a section per DynamoDB table"),
        ("[tables]\nOrders = 3\n", "line 2: tables.Orders: give the table's settings in a section"),
    ],
)
def test_a_wrong_key_names_the_key_and_its_line(tmp_path: Path, text: str, message: str) -> None:
    result = CliRunner().invoke(cli.main, ["--config", write(tmp_path, text), "--schema"])
    assert result.exit_code == 2, result.output
    assert f"podyn.toml, {message}" in result.stderr


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('segments = "4"\n', "line 1: segments must be an integer, not a string ('4')"),
        ("segments = true\n", "line 1: segments must be an integer, not a boolean (true)"),
        ("[tables.A]\nsegments = 4.5\n", "line 2: segments must be an integer, not a float (4.5)"),
        ("scan_rate = [1]\n", "line 1: scan_rate must be a number, not an array ([1])"),
        ("[tables.A]\nlower_case_column_names = 1\n", "line 2: lower_case_column_names must be true or false"),
        ("consistent_read = 1979-05-27\n", "line 1: consistent_read must be true or false, not a date or time"),
        ("[tables.A]\nsegments = 0\n", "line 2: segments: 0 is not in the range 1<=x<=1000000"),
        ('[tables.A]\nconversion_mode = "xml"\n', "line 2: conversion_mode: 'xml' is not one of 'columns', 'jsonb'"),
        ("num_connections = 1000\n", "line 1: num_connections: 1000 is not in the range 1<=x<=256"),
        ('[tables.A]\ntarget = "a.b.c"\n', "line 2: target 'a.b.c': give [schema.]table"),
        ('[tables.A]\ntarget = "podyn.a"\n', "line 2: schema 'podyn' holds podyn's own metadata"),
    ],
)
def test_a_wrong_value_names_the_key_and_its_line(tmp_path: Path, text: str, message: str) -> None:
    result = CliRunner().invoke(cli.main, ["--config", write(tmp_path, text), "--schema"])
    assert result.exit_code == 2, result.output
    assert f"podyn.toml, {message}" in result.stderr


def test_a_file_that_is_not_toml_is_a_usage_error(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli.main, ["--config", write(tmp_path, "scan_rate = \n"), "--schema"])
    assert result.exit_code == 2 and "not valid TOML" in result.stderr and "line 1" in result.stderr


def test_the_real_command_refuses_a_wrong_key_before_connecting(tmp_path: Path) -> None:
    path = write(tmp_path, 'pg_schema = "app"\n\n[tables.Orders]\ntarget = "orders"\nsegmnets = 4\n')
    result = assert_exit(run_podyn("--config", path, "--schema", "--endpoint-url", "http://127.0.0.1:9"), 2)
    assert f"{path}, line 5: unknown key 'segmnets' in [tables.Orders] (did you mean segments?)" in result.stderr


def test_every_key_sets_an_option_or_a_table_setting() -> None:
    options = {p.name for p in cli.main.params}
    fields = set(TableSettings.__dataclass_fields__)
    for name, key in config_file.KEYS.items():
        assert key.option is None or key.option in options, name
        assert key.per_table is None or key.per_table in fields, name
        assert key.option is not None or key.per_table is not None, name
    # every per-table setting but the target stands in for a Config field of the same name (Config.for_table)
    from podyn_py.config import Config

    assert fields - {"target"} <= set(Config.__dataclass_fields__)


def test_an_unreadable_file_is_an_error() -> None:
    with pytest.raises(ConfigError, match="cannot read config file"):
        config_file.load("/nonexistent/podyn.toml")
