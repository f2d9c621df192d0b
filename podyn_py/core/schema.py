"""Table schemas as data: what a DynamoDB table looks like in PostgreSQL, and how it grows.

A :class:`TableSpec` is what DescribeTable tells (keys, indexes) plus the user's choices (schema, conversion mode,
lowercasing). A :class:`TableSchema` adds the columns, each mapping one (attribute, PostgreSQL type) pair to one
column name. :func:`plan_evolution` looks at items and returns only the columns they need that the schema lacks,
and the existing columns to rename so that names follow :func:`naming.assign_names` (a schema delta), leaving the
schema itself unchanged; the caller applies it to the database and to the metadata first.

In ``columns`` mode an attribute's first type seen gets the plain column; a later different type goes to a variant
column ``<column>_<type>``, so a row is never rejected for a type conflict. A NULL never decides a type. In ``jsonb``
mode the columns are fixed: the key and index-key attributes, and ``data`` with the whole item.

A table cannot have more than 1,600 columns. Once a columns-mode table reaches :data:`MAX_COLUMNS`, attributes (and
types) without a column of their own go into one jsonb column, ``podyn_overflow``, as ``{attribute: value}``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from enum import StrEnum
from typing import Any

from podyn_py.core import naming
from podyn_py.core.values import PG_TYPE_OF_TAG, PgType, split_value
from podyn_py.errors import DataError

#: The column that holds the whole item in jsonb mode.
DATA_COLUMN = "data"
#: PostgreSQL allows 1,600 columns a table, dropped ones included; podyn stops adding columns below that, leaving
#: room for columns added by hand, and puts further attributes into one jsonb column (columns mode).
MAX_COLUMNS = 1500
OVERFLOW_COLUMN = "podyn_overflow"
#: The column that marks rows whose item expired (``--ttl-deletes mark``), added when first needed.
EXPIRED_COLUMN = "podyn_expired_at"


class ConversionMode(StrEnum):
    COLUMNS = "columns"
    JSONB = "jsonb"


@dataclass(frozen=True)
class KeyAttribute:
    """A key attribute as AttributeDefinitions declares it: name and type tag (S, N or B)."""

    name: str
    tag: str

    @property
    def pg_type(self) -> PgType:
        return PG_TYPE_OF_TAG[self.tag]


@dataclass(frozen=True)
class SourceIdentity:
    """Which DynamoDB table, of those that ever had a name: its TableId (real DynamoDB) and creation time.

    A table deleted and created again under the same name has another identity; podyn's state for the old one
    does not apply to it.
    """

    table_id: str | None = None
    created_at: datetime | None = None

    def differs_from(self, other: SourceIdentity) -> bool:
        """True when the two are known to be different tables (an unknown part proves nothing)."""
        if self.table_id is not None and other.table_id is not None:
            return self.table_id != other.table_id
        if self.created_at is not None and other.created_at is not None:
            return self.created_at != other.created_at
        return False


@dataclass(frozen=True)
class StoredChoices:
    """The conversion mode and lowercasing podyn recorded for a table, and whether they still bind a run: they do
    not once the table they were made for is gone (a later run may choose again; without a choice, they stay)."""

    mode: ConversionMode
    lower_case: bool
    binding: bool = True


@dataclass(frozen=True)
class IndexSpec:
    """A global or local secondary index: its name and key attributes (partition[, sort])."""

    name: str
    attributes: tuple[KeyAttribute, ...]
    is_global: bool = True


@dataclass(frozen=True)
class TableSpec:
    source: str
    schema: str
    table: str
    partition_key: KeyAttribute
    sort_key: KeyAttribute | None = None
    indexes: tuple[IndexSpec, ...] = ()
    mode: ConversionMode = ConversionMode.COLUMNS
    lower_case: bool = False

    @property
    def primary_key(self) -> tuple[KeyAttribute, ...]:
        return (self.partition_key,) if self.sort_key is None else (self.partition_key, self.sort_key)

    @property
    def key_names(self) -> tuple[str, ...]:
        return tuple(k.name for k in self.primary_key)

    @property
    def key_columns_attributes(self) -> tuple[KeyAttribute, ...]:
        """The primary key's attributes, then every index key attribute, each once."""
        seen: dict[str, KeyAttribute] = {}
        for attribute in self.primary_key + tuple(a for ix in self.indexes for a in ix.attributes):
            seen.setdefault(attribute.name, attribute)
        return tuple(seen.values())


@dataclass(frozen=True)
class Column:
    name: str
    type: PgType
    #: The attribute whose values it holds; None for a column podyn adds itself (``data``).
    attribute: str | None
    variant: bool = False


@dataclass(frozen=True)
class TableSchema:
    spec: TableSpec
    columns: tuple[Column, ...]
    #: Names taken by columns podyn does not manage (a table that existed before podyn): never given to attributes.
    reserved: frozenset[str] = frozenset()
    #: ``podyn.tables.mapping_generation`` when the mapping was read: writers check it is still current.
    generation: int = 0
    #: Those of ``reserved`` (name, type) that an attribute may claim: a table podyn finds without its mapping (its
    #: ``podyn`` schema lost, or made by hand) keeps the column ``v numeric`` for attribute ``v``'s numbers
    #: instead of giving them a second, tagged column.
    adoptable: frozenset[tuple[str, PgType]] = frozenset()
    #: The names of existing columns never change (a table named by podyn_py 0.1's first-come rule: renaming its
    #: columns on upgrade would change what its users' queries read); new columns still follow the rule.
    keep_names: bool = False
    #: The timestamptz column that marks rows whose item DynamoDB's TTL removed (``--ttl-deletes mark``), once the
    #: table has one: outside the mapping (no attribute's), among ``reserved``, and set to NULL by every upsert.
    expired_column: str | None = None
    _by_value: dict[tuple[str, PgType], int] = field(init=False, repr=False, compare=False)
    _primary: dict[str, Column] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        by_value: dict[tuple[str, PgType], int] = {}
        primary: dict[str, Column] = {}
        for index, column in enumerate(self.columns):
            if column.attribute is None:
                continue
            by_value[(column.attribute, column.type)] = index
            if not column.variant:
                primary[column.attribute] = column
        object.__setattr__(self, "_by_value", by_value)
        object.__setattr__(self, "_primary", primary)

    @property
    def column_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns)

    @property
    def overflow_position(self) -> int | None:
        """Where attributes without a column of their own go, once the table is full (columns mode)."""
        if self.spec.mode is ConversionMode.JSONB:
            return None
        return next((i for i, c in enumerate(self.columns) if c.attribute is None), None)

    def position(self, attribute: str, pg_type: PgType) -> int | None:
        """Where values of this attribute and type go in a row, or None if there is no such column."""
        return self._by_value.get((attribute, pg_type))

    def primary_column(self, attribute: str) -> Column | None:
        return self._primary.get(attribute)

    def key_column(self, attribute: KeyAttribute) -> Column:
        index = self._by_value[(attribute.name, attribute.pg_type)]
        return self.columns[index]

    @property
    def primary_key_columns(self) -> tuple[Column, ...]:
        return tuple(self.key_column(k) for k in self.spec.primary_key)

    def with_columns(self, added: Iterable[Column]) -> TableSchema:
        return replace(self, columns=self.columns + tuple(added))

    def with_expired_column(self, name: str | None) -> TableSchema:
        """The schema with ``name`` as its expiry column (see ``expired_column``); its name is never an attribute's."""
        if name is None:
            return replace(self, expired_column=None)
        return replace(self, expired_column=name, reserved=self.reserved | {name})

    def with_change(self, change: SchemaChange, generation: int | None = None) -> TableSchema:
        """The schema after ``change``: existing columns renamed (same positions), then the new ones."""
        renamed = tuple(
            Column(change.renamed.get(c.name, c.name), c.type, c.attribute, c.variant) for c in self.columns
        )
        return replace(
            self, columns=renamed + change.added, generation=self.generation if generation is None else generation
        )


def initial_schema(spec: TableSpec) -> TableSchema:
    """Key and index-key columns (and ``data`` in jsonb mode): what CREATE TABLE makes."""
    fixed = {DATA_COLUMN} if spec.mode is ConversionMode.JSONB else set()
    claims = [naming.NameClaim(a.name, a.pg_type.value) for a in spec.key_columns_attributes]
    names = naming.assign_names(claims, lower_case=spec.lower_case, fixed=fixed)
    columns = [Column(names[c], a.pg_type, a.name) for c, a in zip(claims, spec.key_columns_attributes, strict=True)]
    if spec.mode is ConversionMode.JSONB:
        columns.append(Column(DATA_COLUMN, PgType.JSONB, None))
    return TableSchema(spec, tuple(columns))


def complete_keys(schema: TableSchema) -> TableSchema:
    """Add key columns for indexes created in DynamoDB since the table was first prepared.

    A key attribute that already has a column of another type (``gk`` seen as S, the new index declares N) gets
    the variant column ``<column>_<type>`` that a value of that type would get anyway; the index goes on it.
    """
    fresh = initial_schema(schema.spec)
    missing = [c for c in fresh.columns if c.attribute is not None and schema.position(c.attribute, c.type) is None]
    if not missing:
        return schema
    taken = set(schema.column_names) | schema.reserved
    added = []
    for column in missing:
        assert column.attribute is not None
        primary = schema.primary_column(column.attribute)
        if primary is None:
            name = naming.column_name(column.attribute, taken, lower_case=schema.spec.lower_case)
            added.append(Column(name, column.type, column.attribute))
        else:
            name = naming.variant_name(primary.name, column.attribute, column.type.value, taken)
            added.append(Column(name, column.type, column.attribute, True))
        taken.add(name)
    return schema.with_columns(added)


@dataclass(frozen=True)
class SchemaChange:
    """What a schema needs to hold new items: existing columns to rename (old → new name), then columns to add."""

    added: tuple[Column, ...] = ()
    renamed: Mapping[str, str] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.added or self.renamed)


def evolve(schema: TableSchema, items: Iterable[Mapping[str, Any]]) -> list[Column]:
    """The columns ``items`` need that ``schema`` lacks (see :func:`plan_evolution`, which also gives renames)."""
    return list(plan_evolution(schema, items).added)


def plan_evolution(schema: TableSchema, items: Iterable[Mapping[str, Any]]) -> SchemaChange:
    """The columns ``items`` need that ``schema`` lacks, in the order first needed (none in jsonb mode), and the
    existing columns to rename so that every name follows :func:`naming.assign_names` over all the columns.

    A rename happens when a new attribute has the better claim to a name: ``id`` arriving after ``Id`` took ``id``
    under ``-lc``. Values that are not valid attribute values are passed over: rejecting the item is the row
    builder's job.
    """
    if schema.spec.mode is ConversionMode.JSONB:
        return SchemaChange()
    new: list[tuple[str, PgType, bool]] = []
    new_by_value: set[tuple[str, PgType]] = set()
    new_primary: set[str] = set()
    count = len(set(schema.column_names) | schema.reserved)
    full = schema.overflow_position is not None
    overflow = False
    for item in items:
        for attribute, value in item.items():
            try:
                tag, _ = split_value(value)
            except DataError:
                continue
            pg_type = PG_TYPE_OF_TAG.get(tag)
            if pg_type is None:
                continue
            if full or schema.position(attribute, pg_type) is not None or (attribute, pg_type) in new_by_value:
                continue
            if count + 1 >= MAX_COLUMNS:
                overflow = full = True
                continue
            variant = schema.primary_column(attribute) is not None or attribute in new_primary
            if not variant:
                new_primary.add(attribute)
            new.append((attribute, pg_type, variant))
            new_by_value.add((attribute, pg_type))
            count += 1
    if not new and not overflow:
        return SchemaChange()
    existing = {
        naming.NameClaim(c.attribute, c.type.value, c.variant): c.name
        for c in schema.columns
        if c.attribute is not None
    }
    claims = [naming.NameClaim(a, t.value, v) for a, t, v in new]
    # Unmapped columns of the right type may be claimed (see TableSchema.adoptable); any other name of the table
    # is never given out. Should the rule give a released name to a column of another type, or rename onto it,
    # that name is held back too and the names assigned again.
    fixed = {c.name for c in schema.columns if c.attribute is None} | schema.reserved
    adoptable = {name: pg_type.value for name, pg_type in schema.adoptable}
    fixed -= adoptable.keys()
    for _ in range(len(adoptable) + 1):
        names = naming.assign_names(
            [*existing, *claims],
            lower_case=schema.spec.lower_case,
            fixed=fixed,
            pinned=existing if schema.keep_names else None,
        )
        clashes = {names[c] for c in claims if names[c] in schema.reserved and adoptable.get(names[c]) != c.pg_type}
        clashes |= {names[c] for c, old in existing.items() if names[c] != old and names[c] in schema.reserved}
        if not clashes:
            break
        fixed |= clashes
    added = [Column(names[c], t, a, v) for c, (a, t, v) in zip(claims, new, strict=True)]
    if overflow:
        taken = fixed | schema.reserved | set(names.values())
        added.append(Column(naming.unique_name(OVERFLOW_COLUMN, taken, OVERFLOW_COLUMN), PgType.JSONB, None))
    renamed = {old: names[claim] for claim, old in existing.items() if names[claim] != old}
    return SchemaChange(tuple(added), renamed)
