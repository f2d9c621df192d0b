"""Where a DynamoDB table goes in PostgreSQL: ``-t Source:[schema.]table``, ``--table-prefix``, ``--pg-schema``,
and the mapping podyn recorded for earlier runs (``podyn.tables``: ``source_table`` → ``target_schema``,
``target_table``).

Pure: it parses the names a user gives, checks them against what PostgreSQL can hold, and decides between what a
run asks for and what podyn recorded. The target reads the records; nothing here opens a connection.

Names are taken as written: podyn quotes every identifier, so ``Orders`` stays ``Orders`` (PostgreSQL's folding of
unquoted names to lower case does not apply). A name holding a dot is written in double quotes, ``""`` for a quote
inside: ``-t 'Orders:"app.v2"."orders"'``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from podyn_py.core.naming import MAX_IDENTIFIER_BYTES, base_name
from podyn_py.errors import ConfigError

#: The schema of podyn's own metadata: no table of a user goes there.
METADATA_SCHEMA = "podyn"


@dataclass(frozen=True)
class TargetName:
    """A PostgreSQL table a run names for a DynamoDB table; ``schema`` None: the run's ``--pg-schema``."""

    schema: str | None
    table: str

    def __str__(self) -> str:
        table = quote_name(self.table)
        return table if self.schema is None else f"{quote_name(self.schema)}.{table}"


@dataclass(frozen=True)
class StoredTarget:
    """A row of ``podyn.tables``: which DynamoDB table podyn replicates into which PostgreSQL table, and whether
    the relation podyn recorded is still there (a record of a table dropped by hand binds nothing)."""

    source: str
    schema: str
    table: str
    live: bool = True

    @property
    def where(self) -> tuple[str, str]:
        return self.schema, self.table


@dataclass(frozen=True)
class TargetRequest:
    """What a run says about where one table goes."""

    #: ``-t Source:[schema.]table`` or a config file's ``target``.
    explicit: TargetName | None = None
    #: ``--pg-schema``, and whether it was given (on the command line or in a config file) or left to its default.
    schema: str = "public"
    schema_given: bool = True
    #: ``--table-prefix``: put before the PostgreSQL name of every table of the run.
    prefix: str = ""

    def wanted(self, source: str) -> tuple[str, str]:
        """The (schema, table) this request names for ``source``, before looking at what podyn recorded."""
        if self.explicit is None:
            return check_schema(self.schema), base_name(self.prefix + source, lower_case=False)
        schema = self.explicit.schema if self.explicit.schema is not None else self.schema
        return check_schema(schema), check_name(self.prefix + self.explicit.table, "table", source)

    @property
    def names_table(self) -> bool:
        """Does the run name the table (a target or a prefix)? Otherwise where podyn put it before is where it goes."""
        return self.explicit is not None or bool(self.prefix)


def quote_name(name: str) -> str:
    """``name`` as ``-t`` and a config file's ``target`` take it back: in double quotes when it needs them."""
    if name and name == name.strip() and not any(c in name for c in '.",:'):
        return name
    return '"' + name.replace('"', '""') + '"'


def show(where: tuple[str, str]) -> str:
    return f"{quote_name(where[0])}.{quote_name(where[1])}"


def check_name(name: str, what: str, source: str | None = None) -> str:
    """``name`` if PostgreSQL can hold it as it is; a ConfigError saying why not otherwise."""
    size = len(name.encode("utf-8", "surrogatepass"))
    problem = (
        "is empty"
        if not name
        else "holds U+0000, which PostgreSQL cannot store"
        if "\x00" in name
        else f"is {size} bytes long; PostgreSQL names hold at most {MAX_IDENTIFIER_BYTES} (choose a shorter one)"
        if size > MAX_IDENTIFIER_BYTES
        else None
    )
    if problem:
        raise ConfigError(f"PostgreSQL {what} name {name!r} {problem}", table=source)
    return name


def check_schema(schema: str) -> str:
    check_name(schema, "schema")
    if schema == METADATA_SCHEMA:
        raise ConfigError(f"schema {METADATA_SCHEMA!r} holds podyn's own metadata: choose another for the tables")
    return schema


def check_prefix(prefix: str) -> str:
    """``--table-prefix``: names cut to 63 bytes would lose what follows it, so it must leave room for a name."""
    if "\x00" in prefix or len(prefix.encode("utf-8", "surrogatepass")) > MAX_IDENTIFIER_BYTES - 9:
        raise ConfigError(
            f"--table-prefix {prefix!r}: at most {MAX_IDENTIFIER_BYTES - 9} bytes and no U+0000, so that a table"
            " name still fits after it"
        )
    return prefix


def parse_target(text: str) -> TargetName:
    """``table``, ``schema.table``, or either part in double quotes (``"a.b"."c""d"``: schema ``a.b``, table
    ``c"d``). Unquoted parts are taken as written, spaces around them dropped."""
    parts = _names(text)
    if len(parts) > 2:
        raise ConfigError(f'target {text!r}: give [schema.]table; a name that holds a dot goes in double quotes: "a.b"')
    if len(parts) == 1:
        return TargetName(None, check_name(parts[0], "table"))
    return TargetName(check_schema(parts[0]), check_name(parts[1], "table"))


def parse_tables(text: str) -> list[tuple[str, TargetName | None]]:
    """``-t``: ``Orders,UserProfiles:app.user_profiles`` → each DynamoDB table with the target it names, if any.

    DynamoDB table names hold no ``:``, ``,`` nor ``"``: the first ``:`` ends the source; a comma inside quotes
    belongs to a target.
    """
    entries: list[tuple[str, TargetName | None]] = []
    for item in _split_outside_quotes(text, ","):
        item = item.strip()
        if not item:
            continue
        source, colon, target = item.partition(":")
        source = source.strip()
        if not source or '"' in source:
            raise ConfigError(f"-t {item!r}: give DYNAMODB_TABLE[:[SCHEMA.]TABLE]")
        entries.append((source, parse_target(target) if colon else None))
    seen: set[str] = set()
    for source, _ in entries:
        if source in seen:
            raise ConfigError(f"-t names DynamoDB table {source} twice")
        seen.add(source)
    return entries


def _split_outside_quotes(text: str, separator: str) -> list[str]:
    parts: list[str] = []
    current: list[str] = []
    quoted = False
    for char in text:
        if char == '"':
            quoted = not quoted  # a doubled quote inside a name toggles twice
        if char == separator and not quoted:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    parts.append("".join(current))
    return parts


#: One part of a dotted name: a double-quoted name (``""`` is a quote), or unquoted text without dots and quotes.
_PART = re.compile(r'\s*(?:"((?:[^"]|"")*)"|([^".]*))\s*(\.|$)')


def _names(text: str) -> list[str]:
    """The dot-separated names of ``text``, unquoted."""
    names: list[str] = []
    position = 0
    while True:
        match = _PART.match(text, position)
        if match is None or (match.group(3) == "" and match.end() != len(text)):
            raise ConfigError(
                f"{text!r} is not [schema.]table: a name that holds a dot or a quote goes in double quotes,"
                ' with each quote doubled: "a.b", "say ""hi"""'
            )
        quoted, bare = match.group(1), match.group(2)
        names.append(quoted.replace('""', '"') if quoted is not None else bare.strip())
        if match.group(3) == "":
            return names
        position = match.end()


def check_distinct(requests: Iterable[tuple[str, TargetRequest]]) -> None:
    """Two tables of one run may not be given the same PostgreSQL table (``-t A:x,B:x``, or ``-t A:B,B``)."""
    seen: dict[tuple[str, str], str] = {}
    for source, request in requests:
        where = request.wanted(source)
        if where in seen:
            raise ConfigError(f"DynamoDB tables {seen[where]} and {source} would both go to {show(where)}")
        seen[where] = source


def choose_target(
    source: str, request: TargetRequest, stored: Sequence[StoredTarget], *, reading: bool = False
) -> tuple[str, str]:
    """The (schema, table) ``source`` is replicated into, given every table podyn recorded (``stored``).

    A run that names the table (a target, a prefix) gets that table; one that does not gets where podyn put the
    table before (only in ``--pg-schema``, when given), else the default: the DynamoDB name in ``--pg-schema``.
    ``reading`` (``--verify``) only finds a table. Writing is refused when the table named is recorded for
    another DynamoDB table, or when the source is recorded in another table that is still there: in another
    table of the same schema, or anywhere when the run names an explicit target (``--pg-schema`` alone may
    make copies in several schemas, as it always could).
    """
    mine = [s for s in stored if s.source == source]
    if request.names_table:
        where = request.wanted(source)
    else:
        candidates = [s for s in mine if not request.schema_given or s.schema == request.schema]
        where = _one_of(source, request, candidates)
    if reading:
        return where
    taken = next((s for s in stored if s.where == where and s.source != source), None)
    if taken is not None:
        raise ConfigError(
            f"{show(where)} is where podyn replicates DynamoDB table {taken.source} (podyn.tables): choose another"
            f" target for {source}; if that copy is no longer wanted, drop it and delete its row of podyn.tables"
            f" (target_schema = {taken.schema!r}, target_table = {taken.table!r})",
            table=source,
        )
    for other in mine:
        if other.live and other.where != where and (request.explicit is not None or other.schema == where[0]):
            raise ConfigError(
                f"DynamoDB table {source} is replicated into {show(other.where)} (podyn.tables), but this run maps"
                f" it to {show(where)}{_how(request)}. To go on with {show(other.where)}, run with the mapping it"
                f" was made with, or with none for this table (podyn then uses {show(other.where)}); to replicate"
                f" it into {show(where)} instead, drop {show(other.where)} first (its record then binds nothing)"
                " and run this command again",
                table=source,
            )
    return where


def replaced(
    source: str, where: tuple[str, str], request: TargetRequest, stored: Sequence[StoredTarget]
) -> list[tuple[str, str]]:
    """The records of ``source`` that a run writing it to ``where`` replaces: those whose table is gone (dropped
    by hand, as a refusal of the new mapping asks), in the same schema, or anywhere for an explicit target."""
    return [
        s.where
        for s in stored
        if s.source == source
        and not s.live
        and s.where != where
        and (request.explicit is not None or s.schema == where[0])
    ]


def _one_of(source: str, request: TargetRequest, candidates: Sequence[StoredTarget]) -> tuple[str, str]:
    """Where podyn put ``source`` before: the one table still there, else the one recorded; the default among
    several; the default when there is none."""
    default = request.wanted(source)
    for group in ([c for c in candidates if c.live], list(candidates)):
        if len(group) == 1:
            return group[0].where
        if any(c.where == default for c in group):
            return default
        if group:
            listed = ", ".join(show(c.where) for c in group)
            raise ConfigError(
                f"DynamoDB table {source} is replicated into {listed}: say which with --pg-schema or"
                f" -t {source}:schema.table",
                table=source,
            )
    return default


def _how(request: TargetRequest) -> str:
    if not request.names_table:
        return ""
    if request.explicit is not None:
        return f" (target {request.explicit}{f', --table-prefix {request.prefix!r}' if request.prefix else ''})"
    return f" (--table-prefix {request.prefix!r})"
