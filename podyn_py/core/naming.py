"""Attribute names → PostgreSQL identifiers.

DynamoDB allows attribute names PostgreSQL cannot take as they are: longer than 63 bytes, containing U+0000, or
equal to another name once lowercased (``-lc``) or shortened. Identifiers are always quoted, so quotes, spaces,
reserved words and unicode are kept as they are; only these three cases change a name:

- U+0000 is removed (an empty result becomes ``column``).
- With ``lower_case``, the name is lowercased.
- A name over 63 bytes is cut at a character boundary and tagged with ``_`` and 8 hex digits of the SHA-1 of the
  original attribute name, so the same attribute always gets the same column.
- A name already taken by another attribute gets the same tag; should that be taken too, ``_2``, ``_3``...

Which attribute keeps a contested name does not depend on the order attributes arrive in (:func:`assign_names`):
an attribute whose name already is that column name keeps it; otherwise a name asked for by one attribute only is
its own, and a name asked for by several is given to none of them (each is tagged). The mapping is stored in the
``podyn`` metadata schema; when a new attribute changes it, existing columns are renamed (see ``schema.py``).
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Collection, Container, Iterable, Mapping
from dataclasses import dataclass

MAX_IDENTIFIER_BYTES = 63


def name_tag(*parts: str) -> str:
    """8 hex digits that identify ``parts`` (the attribute name, and a type for variants)."""
    return hashlib.sha1("\x1f".join(parts).encode("utf-8", "surrogatepass")).hexdigest()[:8]


def truncate_utf8(text: str, max_bytes: int) -> str:
    """The longest prefix of ``text`` whose UTF-8 form fits in ``max_bytes``."""
    encoded = text.encode("utf-8", "surrogatepass")
    if len(encoded) <= max_bytes:
        return text
    return encoded[:max_bytes].decode("utf-8", "ignore")


def tagged(base: str, tag: str, max_bytes: int = MAX_IDENTIFIER_BYTES) -> str:
    """``base_tag`` cut so that the whole fits in ``max_bytes``."""
    suffix = f"_{tag}"
    return truncate_utf8(base, max_bytes - len(suffix)) + suffix


def base_name(attribute: str, lower_case: bool) -> str:
    """The identifier an attribute asks for before collisions are considered."""
    name = attribute.replace("\x00", "")
    if lower_case:
        name = name.lower()
    if not name:
        name = "column"
    if len(name.encode("utf-8", "surrogatepass")) > MAX_IDENTIFIER_BYTES:
        name = tagged(name, name_tag(attribute))
    return name


def unique_name(wanted: str, taken: Container[str], *tag_parts: str) -> str:
    """``wanted`` if free, else ``wanted`` tagged with ``name_tag(*tag_parts)``, else that with a counter."""
    if wanted not in taken:
        return wanted
    candidate = tagged(wanted, name_tag(*tag_parts))
    counter = 2
    while candidate in taken:
        candidate = tagged(wanted, f"{name_tag(*tag_parts)}_{counter}")
        counter += 1
    return candidate


def column_name(attribute: str, taken: Container[str], *, lower_case: bool) -> str:
    """The column name for a new attribute, given the names already taken in its table."""
    return unique_name(base_name(attribute, lower_case), taken, attribute)


def variant_name(primary_column: str, attribute: str, pg_type: str, taken: Container[str]) -> str:
    """The column for values of ``attribute`` whose type differs from its first column's (``amount_text``)."""
    return unique_name(tagged(primary_column, pg_type), taken, attribute, pg_type)


def index_name(table: str, index: str) -> str:
    """``<table>_<index>``: PostgreSQL index names are per schema, so the table name keeps them apart."""
    wanted = f"{table}_{index}"
    if len(wanted.encode("utf-8", "surrogatepass")) > MAX_IDENTIFIER_BYTES:
        return tagged_index_name(table, index)
    return wanted


def tagged_index_name(table: str, index: str) -> str:
    """The name an index takes when ``<table>_<index>`` is too long or taken (``a_b`` + ``c`` and ``a`` + ``b_c``)."""
    return tagged(f"{table}_{index}", name_tag(table, index))


@dataclass(frozen=True, order=True)
class NameClaim:
    """An (attribute, PostgreSQL type) pair that needs a column; a variant's name derives from its primary's."""

    attribute: str
    pg_type: str
    variant: bool = False


def assign_names(
    claims: Iterable[NameClaim],
    *,
    lower_case: bool,
    fixed: Collection[str] = (),
    pinned: Mapping[NameClaim, str] | None = None,
) -> dict[NameClaim, str]:
    """Column names for a set of claims: a function of the set alone, never of the order the claims arrived in.

    ``fixed`` names (columns podyn does not manage, ``data``, ``podyn_overflow``) are never given out. Then, in
    this order, each step giving out only names still free:

    1. a primary column whose attribute name needs no change (``id``) gets it;
    2. other primary columns: the plain name (lowercased, shortened) if no other claim asks for it, else tagged;
    3. variants: ``<primary column>_<type>`` likewise.

    Tagged names carry the SHA-1 of the attribute (and type), so they differ between claims; a counter is added
    only where even that is taken, in sorted order. Every variant claim needs a primary claim of its attribute.
    ``pinned`` claims keep the names given (a table whose names an older rule chose); the others are named around
    them.
    """
    pinned = pinned or {}
    every = sorted(set(claims) - pinned.keys())
    taken = set(fixed) | set(pinned.values())
    names: dict[NameClaim, str] = dict(pinned)
    primaries = [c for c in every if not c.variant]
    wanted = {c: base_name(c.attribute, lower_case) for c in primaries}
    pending: list[tuple[NameClaim, str, tuple[str, ...]]] = []
    for claim in primaries:
        if wanted[claim] == claim.attribute and claim.attribute not in taken:
            names[claim] = claim.attribute
            taken.add(claim.attribute)
        else:
            pending.append((claim, wanted[claim], (claim.attribute,)))
    _settle(pending, taken, names)
    primary_names = {c.attribute: names[c] for c in [*primaries, *pinned] if not c.variant}
    variants: list[tuple[NameClaim, str, tuple[str, ...]]] = [
        (c, tagged(primary_names[c.attribute], c.pg_type), (c.attribute, c.pg_type)) for c in every if c.variant
    ]
    _settle(variants, taken, names)
    return names


def _settle(
    pending: list[tuple[NameClaim, str, tuple[str, ...]]], taken: set[str], names: dict[NameClaim, str]
) -> None:
    """Plain names asked for once go first, then the tagged ones, each group in sorted order."""
    asked = Counter(want for _, want, _ in pending)
    contested = []
    for claim, want, parts in sorted(pending, key=lambda p: (p[1], p[0])):
        if asked[want] == 1 and want not in taken:
            names[claim] = want
            taken.add(want)
        else:
            contested.append((claim, want, parts))
    for claim, want, parts in contested:
        name = unique_name(want, taken | {want}, *parts)
        names[claim] = name
        taken.add(name)


def rename_steps(renames: Mapping[str, str], names: Collection[str]) -> list[tuple[str, str]]:
    """``renames`` (old → new column name) as RENAME steps that never meet a name still in use.

    A column moves once its new name is free; should renames wait on each other in a cycle, one goes through a
    temporary name first. ``names`` are every column name of the table before the renames.
    """
    left = {old: new for old, new in renames.items() if old != new}
    in_use = set(names)
    steps: list[tuple[str, str]] = []
    while left:
        ready = sorted(old for old, new in left.items() if new not in in_use)
        if not ready:
            old = min(left)
            counter = 1
            while (temporary := tagged(old, f"podyn_rename_{counter}")) in in_use or temporary in left.values():
                counter += 1
            steps.append((old, temporary))
            in_use.discard(old)
            in_use.add(temporary)
            left[temporary] = left.pop(old)
            continue
        for old in ready:
            new = left.pop(old)
            steps.append((old, new))
            in_use.discard(old)
            in_use.add(new)
    return steps
