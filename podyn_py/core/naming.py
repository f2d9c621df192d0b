"""Attribute names → PostgreSQL identifiers.

DynamoDB allows attribute names PostgreSQL cannot take as they are: longer than 63 bytes, containing U+0000, or
equal to another name once lowercased (``-lc``) or shortened. Identifiers are always quoted, so quotes, spaces,
reserved words and unicode are kept as they are; only these three cases change a name:

- U+0000 is removed (an empty result becomes ``column``).
- With ``lower_case``, the name is lowercased.
- A name over 63 bytes is cut at a character boundary and tagged with ``_`` and 8 hex digits of the SHA-1 of the
  original attribute name, so the same attribute always gets the same column.
- A name already taken by another attribute gets the same tag; should that be taken too, ``_2``, ``_3``...

Which attribute keeps the plain name is decided once, when a column is first added, and stored in the ``podyn``
metadata schema; later runs read the mapping instead of deriving it again.
"""

from __future__ import annotations

import hashlib
from collections.abc import Container

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
