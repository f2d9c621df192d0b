"""Which attributes of a table's items reach PostgreSQL: ``--exclude-attributes`` and global tables' own attributes.

A pattern is ``Table.attribute``; ``*`` in either part matches any run of characters (none too), every other
character stands for itself (``Users.password_hash``, ``*.aws:rep:*``, ``Orders.blob_*``). Table and attribute names
may both hold dots, so a pattern applies to an attribute of a table when some dot splits it into a part that matches
the table's name and a part that matches the attribute's. Patterns match top-level attributes, never inside a map.

Items of tables on the legacy global tables version (2017.11.29) carry ``aws:rep:deleting``, ``aws:rep:updatetime``
and ``aws:rep:updateregion``, written by the replication itself: they are left out too, unless the run keeps them.

Key attributes (of the table and of its indexes) are never left out: a pattern that would is a ConfigError naming the
table, the attribute and the pattern. This module only decides; the load, the changes and ``--verify`` apply
:meth:`AttributeSelection.strip` to every item before it becomes a row, a rejected item or an expected row.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from podyn_py.core.schema import TableSpec
from podyn_py.errors import ConfigError

#: What the legacy version of global tables (2017.11.29) adds to every item; not data of the application.
REPLICATION_ATTRIBUTES = ("aws:rep:deleting", "aws:rep:updatetime", "aws:rep:updateregion")

#: Decisions remembered per table, by attribute name; beyond this many names, the rest are matched each time.
_CACHE_LIMIT = 65_536


def _compile(pattern: str) -> re.Pattern[str]:
    """``*`` as any run of characters, the rest literally, the whole name."""
    return re.compile(".*".join(re.escape(part) for part in pattern.split("*")), re.DOTALL)


@dataclass(frozen=True)
class Exclusions:
    """The run's patterns (``--exclude-attributes``) and whether global tables' attributes are kept."""

    patterns: tuple[str, ...] = ()
    keep_replication_attributes: bool = False

    @classmethod
    def parse(cls, text: str | Iterable[str] | None, *, keep_replication_attributes: bool = False) -> Exclusions:
        """Comma-separated patterns (or several such strings); ConfigError for one that is not ``Table.attribute``."""
        pieces = [text] if isinstance(text, str) else list(text or ())
        patterns = tuple(p.strip() for piece in pieces for p in piece.split(",") if p.strip())
        for pattern in patterns:
            if not any(pattern[:i] and pattern[i + 1 :] for i, c in enumerate(pattern) if c == "."):
                raise ConfigError(
                    f"--exclude-attributes: {pattern!r} is not Table.attribute (a table, a dot, an attribute; '*'"
                    " matches any characters, e.g. Users.password_hash or *.aws:rep:*)"
                )
        return cls(patterns, keep_replication_attributes)

    def for_table(self, spec: TableSpec) -> AttributeSelection:
        """What is left out of this table's items; ConfigError when a pattern names one of its key attributes."""
        rules: list[tuple[str, str]] = []
        for pattern in self.patterns:
            for i, c in enumerate(pattern):
                if c == "." and pattern[:i] and pattern[i + 1 :] and _compile(pattern[:i]).fullmatch(spec.source):
                    rules.append((pattern, pattern[i + 1 :]))
        selection = AttributeSelection(
            spec.source,
            tuple(rules),
            frozenset(a.name for a in spec.key_columns_attributes),
            () if self.keep_replication_attributes else REPLICATION_ATTRIBUTES,
        )
        selection.check_keys(spec)
        return selection


class AttributeSelection:
    """The attributes left out of one table's items. Thread-safe: segment workers share one."""

    def __init__(
        self,
        table: str,
        rules: tuple[tuple[str, str], ...] = (),
        keys: frozenset[str] = frozenset(),
        always: tuple[str, ...] = (),
    ) -> None:
        self.table = table
        #: (pattern as given, its attribute part compiled), for the patterns whose table part matches this table.
        self.rules = tuple((pattern, _compile(attribute)) for pattern, attribute in rules)
        self.keys = keys
        #: Names left out by default (global tables' own attributes), unless they are keys.
        self.always = frozenset(always) - keys
        #: Every name left out when no pattern has a ``*`` in its attribute part: then one C-speed set test per
        #: item says whether it has any (an item's attributes are mostly many, its excluded ones few or none).
        self._names: frozenset[str] | None = None
        if not any("*" in attribute for _, attribute in rules):
            self._names = (self.always | {attribute for _, attribute in rules}) - keys
        self._any = bool(self.rules or self.always)
        self._cache: dict[str, bool] = {}

    def __bool__(self) -> bool:
        """Whether anything can be left out at all."""
        return self._any

    def rule_for(self, attribute: str) -> str | None:
        """The pattern that leaves ``attribute`` out (the global tables' default says ``aws:rep:*``), or None."""
        if attribute in self.keys:
            return None
        if attribute in self.always:
            return "aws:rep:* (global tables; --keep-replication-attributes keeps them)"
        return next((pattern for pattern, regex in self.rules if regex.fullmatch(attribute)), None)

    def excluded(self, attribute: str) -> bool:
        hit = self._cache.get(attribute)
        if hit is None:
            hit = self.rule_for(attribute) is not None
            if len(self._cache) < _CACHE_LIMIT:
                self._cache[attribute] = hit
        return hit

    def check_keys(self, spec: TableSpec) -> None:
        """ConfigError when a pattern matches a key attribute: a row cannot lose its key, nor an index its column."""
        index_of = {a.name: ix.name for ix in reversed(spec.indexes) for a in ix.attributes}
        for name in dict.fromkeys((*spec.key_names, *index_of)):
            pattern = next((p for p, regex in self.rules if regex.fullmatch(name)), None)
            if pattern is None:
                continue
            what = "the table's key" if name in spec.key_names else f"the key of index {index_of[name]}"
            raise ConfigError(
                f"--exclude-attributes {pattern}: attribute {name!r} is part of {what}; key attributes cannot be"
                " excluded",
                table=spec.source,
                attribute=name,
            )

    def strip(self, item: Mapping[str, Any]) -> Any:
        """The item without the attributes left out: the same object when nothing is (the common case)."""
        if not self._any:
            return item
        names = self._names
        if names is not None:
            if names.isdisjoint(item):
                return item
            return {a: v for a, v in item.items() if a not in names}
        cache, excluded = self._cache, self.excluded
        for attribute in item:
            hit = cache.get(attribute)
            if hit or (hit is None and excluded(attribute)):
                return {a: v for a, v in item.items() if not excluded(a)}
        return item

    def strip_record(self, record: Mapping[str, Any]) -> Any:
        """A stream record without the attributes left out of its images (for one kept whole in podyn.rejected)."""
        body = record.get("dynamodb")
        if not self or not isinstance(body, Mapping):
            return record
        stripped = self.strip_images(body)
        return record if stripped is body else {**record, "dynamodb": stripped}

    def strip_images(self, body: Mapping[str, Any]) -> Any:
        """``body`` (a stream record's ``dynamodb``, a line of an incremental export) without the attributes left out
        of its ``NewImage`` and ``OldImage``: the same object when nothing is."""
        images = {
            name: self.strip(body[name]) for name in ("NewImage", "OldImage") if isinstance(body.get(name), Mapping)
        }
        if all(images[name] is body[name] for name in images):
            return body
        return {**body, **images}


#: Leaves nothing out: what code that is given no selection uses.
EVERYTHING = AttributeSelection("")
