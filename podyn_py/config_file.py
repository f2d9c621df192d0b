"""``--config podyn.toml``: the defaults and per-table settings of a service with many tables, in TOML (tomllib).

Keys are the CLI's long options with ``_`` for ``-`` (``scan_rate`` for ``--scan-rate``). Keys at the top of the
file are the run's defaults; a ``[tables.NAME]`` section holds one DynamoDB table's own settings, which win over
those defaults, and the sections list the tables of the run when ``-t`` is not given. Flags given on the command
line (or in the environment) win over the file. A key podyn does not know, a key in the wrong place and a value of
the wrong type are errors that name the key and its line: tomllib tells no line, so it is looked for in the text.

This module reads and checks the file; the CLI converts the values with its own options' types (ranges, choices),
so a value means in the file what it means on the command line. What to do (``--schema``, ``--data``,
``--changes``, ``--reload``...) stays on the command line.
"""

from __future__ import annotations

import difflib
import re
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from podyn_py.core.changes import TtlPolicy
from podyn_py.core.schema import ConversionMode
from podyn_py.core.targets import parse_target
from podyn_py.errors import ConfigError


@dataclass(frozen=True)
class Key:
    """A key of the file: the CLI option (click parameter name) it gives the run's default for (None: a table's
    section only), the TOML types it takes, the :class:`~podyn_py.config.TableSettings` field it sets in a table's
    section (None: the whole run only), and how a table's value becomes that field's (after the option's own
    conversion; a ConfigError is reported with the key's line)."""

    option: str | None
    kinds: tuple[type, ...]
    per_table: str | None = None
    parse: Callable[[Any], Any] | None = None


#: Every key the file may hold. A new setting is a line here (and, per table, a TableSettings field).
KEYS: dict[str, Key] = {
    "postgres_url": Key("postgres_url", (str,)),
    "pg_schema": Key("pg_schema", (str,)),
    "table_prefix": Key("table_prefix", (str,)),
    "target": Key(None, (str,), "target", parse_target),
    "conversion_mode": Key("conversion_mode", (str,), "mode", ConversionMode),
    "lower_case_column_names": Key("lower_case", (bool,), "lower_case"),
    "scan_rate": Key("scan_rate", (int, float), "scan_rate"),
    "segments": Key("segments", (int,), "segments"),
    "num_connections": Key("connections", (int,)),
    "consistent_read": Key("consistent_read", (bool,)),
    "citus": Key("citus", (bool,)),
    "endpoint_url": Key("endpoint_url", (str,)),
    "region": Key("region", (str,)),
    "profile": Key("profile", (str,)),
    "max_attempts": Key("max_attempts", (int,)),
    "fast_path": Key("fast_path", (bool,)),
    "metrics_port": Key("metrics_port", (int,)),
    "metrics_address": Key("metrics_address", (str,)),
    "progress": Key("progress", (bool,)),
    "log_level": Key("log_level", (str,)),
    "ttl_deletes": Key("ttl_deletes", (str,), "ttl_deletes", TtlPolicy),
    "exclude_attributes": Key("exclude_attributes", (str,)),
    "keep_replication_attributes": Key("keep_replication_attributes", (bool,)),
}

#: What a key wants, by the last of its kinds (``(int, float)``: a number).
_KIND_NAMES = {str: "a string", int: "an integer", float: "a number", bool: "true or false"}


@dataclass(frozen=True)
class Value:
    """One key of the file as written, with where it was written, for errors about it."""

    key: str
    value: Any
    where: str


@dataclass(frozen=True)
class FileSettings:
    """A checked config file: the run's defaults, and each table's own settings (by DynamoDB table name)."""

    path: str
    defaults: tuple[Value, ...]
    tables: dict[str, tuple[Value, ...]]


def load(path: str | Path) -> FileSettings:
    """Read and check the file: ConfigError, naming the key and its line, on anything podyn would not use."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read config file {path}: {exc}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    lines = _key_lines(text)

    def where(*key_path: str) -> str:
        for end in range(len(key_path), 0, -1):  # a key written inside an inline table: the line of its table
            if key_path[:end] in lines:
                return f"{path}, line {lines[key_path[:end]]}"
        return str(path)

    defaults: list[Value] = []
    tables: dict[str, tuple[Value, ...]] = {}
    for key, value in data.items():
        if key != "tables":
            defaults.append(_check(Value(key, value, where(key)), None))
            continue
        if not isinstance(value, dict):
            raise ConfigError(f"{where(key)}: tables: give a section per DynamoDB table, [tables.NAME]")
        for source, section in value.items():
            if not isinstance(section, dict):
                raise ConfigError(
                    f"{where(key, source)}: tables.{source}: give the table's settings in a section,"
                    f' [tables.{_toml_key(source)}] (or tables.{_toml_key(source)} = {{ target = "..." }})'
                )
            tables[source] = tuple(_check(Value(k, v, where(key, source, k)), source) for k, v in section.items())
    return FileSettings(str(path), tuple(defaults), tables)


def _check(value: Value, table: str | None) -> Value:
    """``value`` if its key may stand where it is and its value has the key's type."""
    spec = KEYS.get(value.key)
    place = f" in [tables.{_toml_key(table)}]" if table is not None else " at the top level"
    if spec is None:
        close = difflib.get_close_matches(value.key.replace("-", "_"), KEYS, n=1)
        hint = f" (did you mean {close[0]}?)" if close else f"; known keys: {', '.join(KEYS)}"
        raise ConfigError(f"{value.where}: unknown key {value.key!r}{place}{hint}")
    if table is not None and spec.per_table is None:
        raise ConfigError(f"{value.where}: {value.key} applies to the whole run, not to one table: set it at the top")
    if table is None and spec.option is None:
        raise ConfigError(f"{value.where}: {value.key} belongs in a table's section, [tables.NAME]")
    # bool is an int in Python, never in TOML: true is no number of segments.
    if not any(type(value.value) is kind for kind in spec.kinds):
        wanted, found = _KIND_NAMES[spec.kinds[-1]], _kind_of(value.value)
        raise ConfigError(f"{value.where}: {value.key} must be {wanted}, not {found} ({_shown(value.value)})")
    return value


def _kind_of(value: Any) -> str:
    names = {str: "a string", int: "an integer", float: "a float", bool: "a boolean", dict: "a table", list: "an array"}
    return names.get(type(value), "a date or time")


def _shown(value: Any) -> str:
    text = repr(value) if not isinstance(value, bool) else str(value).lower()
    return text if len(text) <= 40 else text[:37] + "..."


def _toml_key(name: str) -> str:
    return name if re.fullmatch(r"[A-Za-z0-9_-]+", name) else '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


#: A TOML key at the start of a line: bare, "basic" or 'literal' parts joined by dots, then ``=``.
_KEY = r"""(?:[A-Za-z0-9_-]+|"(?:[^"\\]|\\.)*"|'[^']*')"""
_KEY_LINE = re.compile(rf"^\s*({_KEY}(?:\s*\.\s*{_KEY})*)\s*=")
_HEADER_LINE = re.compile(rf"^\s*\[\s*({_KEY}(?:\s*\.\s*{_KEY})*)\s*\]")


def _key_lines(text: str) -> dict[tuple[str, ...], int]:
    """The line (1-based) each key path is first written on: ``("tables", "Orders", "segments")`` → 12.

    Each key or ``[header]`` is parsed alone by tomllib, so quoting and dotted keys mean what they mean to TOML.
    """
    lines: dict[tuple[str, ...], int] = {}
    section: tuple[str, ...] = ()
    for number, line in enumerate(text.splitlines(), start=1):
        if header := _HEADER_LINE.match(line):
            section = _path(header.group(1))
            lines.setdefault(section, number)
        elif key := _KEY_LINE.match(line):
            lines.setdefault(section + _path(key.group(1)), number)
    return lines


def _path(dotted: str) -> tuple[str, ...]:
    try:
        data: Any = tomllib.loads(f"{dotted} = 0")
    except tomllib.TOMLDecodeError:
        return ()
    path: list[str] = []
    while isinstance(data, dict) and len(data) == 1:
        ((name, data),) = data.items()
        path.append(name)
    return tuple(path)
