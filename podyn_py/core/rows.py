"""Items → row tuples under a table schema, in one pass over each item's attributes.

A row has one value per schema column, in column order; attributes an item lacks are None (SQL NULL). jsonb values
come back serialised (bytes), so the target writes them as they are. The schema must already hold every column the
item needs (see :func:`podyn_py.core.schema.evolve`); a missing one is a bug, reported as DataError naming the key.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from podyn_py.core.schema import DATA_COLUMN, ConversionMode, TableSchema
from podyn_py.core.values import (
    NULL_TAG,
    PG_TYPE_OF_TAG,
    dump_json,
    key_text,
    split_value,
    to_column_value,
    to_json,
)
from podyn_py.errors import DataError

Item = Mapping[str, Any]
T = TypeVar("T")


@dataclass(frozen=True)
class Rejected:
    """An item (or stream record) that cannot become a row, kept whole in ``podyn.rejected`` with why."""

    item: dict[str, Any]
    key: str
    attribute: str | None
    error: str


class MissingColumn(Exception):
    """The schema lacks a column this item needs: evolve the schema, then build again."""


class RowBuilder:
    """Builds rows for one schema version. Build a new one when the schema gains columns."""

    def __init__(
        self,
        schema: TableSchema,
        nul_counts: Counter[str] | None = None,
        untagged_map_counts: Counter[str] | None = None,
    ) -> None:
        self.schema = schema
        self.width = len(schema.columns)
        #: Per column name, how many values lost a U+0000 (pass one Counter to successive builders to add up).
        self.nul_counts: Counter[str] = Counter() if nul_counts is None else nul_counts
        #: Per attribute, how many empty maps came as ``{}`` without their ``"M"`` (DynamoDB Local's stream images)
        #: and were taken as empty maps; shared like ``nul_counts``.
        self.untagged_map_counts: Counter[str] = Counter() if untagged_map_counts is None else untagged_map_counts
        spec = schema.spec
        self._keys = tuple((k.name, schema.columns.index(schema.key_column(k))) for k in spec.key_columns_attributes)
        self._required = tuple((k.name, k.tag) for k in spec.primary_key)
        self._jsonb = spec.mode is ConversionMode.JSONB
        self._data_position = schema.column_names.index(DATA_COLUMN) if self._jsonb else -1
        self._overflow = schema.overflow_position

    def build(self, item: Item) -> list[Any]:
        return self._in_context(item, self._build_jsonb if self._jsonb else self._build_columns)

    def check(self, item: Item) -> None:
        """Raise the DataError that building ``item`` would meet once the schema holds its columns.

        For items that need new columns: a value that cannot be converted must not make the schema grow, since
        evolve would add a column for its type tag all the same.
        """
        self._in_context(item, _check_values)

    def _in_context(self, item: Item, build: Callable[[Item], T]) -> T:
        """``build(item)`` after checking the key attributes; a DataError gains the table and the item's key."""
        try:
            for name, tag in self._required:
                value = item.get(name)
                if value is None:
                    raise DataError("item lacks a key attribute", attribute=name)
                if not isinstance(value, dict) or tag not in value or len(value) != 1:
                    raise DataError(f"key attribute is not of type {tag}: {value!r:.80}", attribute=name)
            return build(item)
        except DataError as exc:
            raise DataError(
                exc.message,
                table=self.schema.spec.source,
                key=key_text(item, self.schema.spec.key_names),
                attribute=exc.attribute,
            ) from exc

    def _build_columns(self, item: Item) -> list[Any]:
        row: list[Any] = [None] * self.width
        nuls: list[int] = []
        untagged: list[int] = []
        found: list[str] = []
        position = self.schema.position
        overflow: dict[str, Any] | None = None
        for attribute, value in item.items():
            try:
                ((tag, raw),) = value.items()
            except (AttributeError, ValueError):
                try:
                    tag, raw = split_value(value, untagged)  # only {} passes: an empty map without its "M"
                except DataError as exc:
                    raise DataError(exc.message, attribute=attribute) from None
            if tag == NULL_TAG:
                if raw is not True:
                    raise DataError(f"NULL value is not true: {raw!r:.40}", attribute=attribute)
                continue
            pg_type = PG_TYPE_OF_TAG.get(tag)
            if pg_type is None:
                raise DataError(f"unknown DynamoDB type tag {tag!r}", attribute=attribute)
            index = position(attribute, pg_type)
            if index is None:
                if self._overflow is None:
                    raise MissingColumn(attribute)
                if overflow is None:
                    overflow = {}
                try:
                    overflow[attribute.replace("\x00", "")] = to_json(value, nuls, untagged)
                except DataError as exc:
                    raise DataError(exc.message, attribute=attribute) from exc
                self._note_untagged(attribute, untagged, found)
                continue
            try:
                row[index] = to_column_value(tag, raw, nuls, untagged)
            except DataError as exc:
                raise DataError(exc.message, attribute=attribute) from exc
            self._note_untagged(attribute, untagged, found)
            if nuls:
                self.nul_counts[self.schema.columns[index].name] += 1
                nuls.clear()
        if overflow is not None:
            assert self._overflow is not None
            row[self._overflow] = dump_json(overflow)
            if nuls:
                self.nul_counts[self.schema.columns[self._overflow].name] += 1
        self.untagged_map_counts.update(found)
        return row

    def _build_jsonb(self, item: Item) -> list[Any]:
        row: list[Any] = [None] * self.width
        nuls: list[int] = []
        untagged: list[int] = []
        found: list[str] = []
        tree = {}
        for attribute, value in item.items():
            try:
                tree[attribute.replace("\x00", "")] = to_json(value, nuls, untagged)
            except DataError as exc:
                raise DataError(exc.message, attribute=attribute) from exc
            self._note_untagged(attribute, untagged, found)
        for attribute, index in self._keys:
            value = item.get(attribute)
            if value is None:
                continue
            ((tag, raw),) = value.items()
            if PG_TYPE_OF_TAG.get(tag) is self.schema.columns[index].type:
                row[index] = to_column_value(tag, raw)
        if nuls or any("\x00" in a for a in item):
            self.nul_counts[DATA_COLUMN] += 1
        row[self._data_position] = dump_json(tree)
        self.untagged_map_counts.update(found)
        return row

    @staticmethod
    def _note_untagged(attribute: str, untagged: list[int], found: list[str]) -> None:
        """Move the empty maps without "M" just seen to ``found``, counted once the whole row is built (a row
        abandoned for a missing column is built again and must not count twice)."""
        if untagged:
            found.extend([attribute] * len(untagged))
            untagged.clear()


def _check_values(item: Item) -> None:
    """Convert every attribute value of ``item``, keeping nothing: DataError names the first one that fails."""
    for attribute, value in item.items():
        try:
            to_column_value(*split_value(value))
        except DataError as exc:
            raise DataError(exc.message, attribute=attribute) from exc
