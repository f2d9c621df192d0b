"""Items → rows for one table, growing the table's schema when items bring new attributes or types.

Shared by the load and the change replication. Building a row is one pass over the item; only when an item needs
a column the schema lacks is the schema evolved (under a lock, through the target, which agrees with other
processes) and the rows built again. Items that cannot be converted come back as :class:`Rejected`, to be kept
in ``podyn.rejected`` with the rows' transaction: never dropped silently.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from typing import Any

from podyn_py.core.ports import Target
from podyn_py.core.rows import MissingColumn, Rejected, RowBuilder
from podyn_py.core.schema import TableSchema, plan_evolution
from podyn_py.core.selection import EVERYTHING, AttributeSelection
from podyn_py.errors import DataError, PodynError

log = logging.getLogger(__name__)


class RowConverter:
    """Thread-safe: segment workers of one table share one converter."""

    def __init__(self, schema: TableSchema, target: Target, selection: AttributeSelection = EVERYTHING) -> None:
        self.schema = schema
        self.target = target
        #: Attributes left out of every item before anything is made of it (``--exclude-attributes``).
        self.selection = selection
        #: Per column, how many values lost a U+0000, over the converter's life.
        self.nul_counts: Counter[str] = Counter()
        #: Per attribute, how many empty maps came as {} without their "M" (DynamoDB Local), over its life.
        self.untagged_map_counts: Counter[str] = Counter()
        self.builder = RowBuilder(schema, self.nul_counts, self.untagged_map_counts)
        self._lock = threading.Lock()
        self._nuls_logged: set[str] = set()
        self._untagged_logged = False

    def convert(self, items: list[dict[str, Any]]) -> tuple[TableSchema, list[list[Any]], list[Rejected]]:
        """Rows for ``items`` under a schema that holds them all (returned with them), growing it first if needed.

        Attributes the selection leaves out are gone first: they make no column, no jsonb key and no rejected item.
        """
        if self.selection:
            items = [self.selection.strip(item) for item in items]
        builder = self.builder
        rows, rejected, pending = self._build(builder, items)
        if pending:
            with self._lock:
                self.schema = self.target.add_columns(self.schema, lambda current: plan_evolution(current, pending))
                self.builder = builder = RowBuilder(self.schema, self.nul_counts, self.untagged_map_counts)
            rows, rejected, pending = self._build(builder, items)
            if pending:  # pragma: no cover - evolve covers every valid attribute value
                raise PodynError("schema evolution missed a column", table=self.schema.spec.source)
        self._log_nuls()
        self._log_untagged_maps()
        for each in rejected:
            log.error("rejected an item, kept in podyn.rejected: %s", each.error)
        return builder.schema, rows, rejected

    def add_expired_column(self) -> TableSchema:
        """Give the table its column for expired rows (``--ttl-deletes mark``), if it has none yet."""
        with self._lock:
            if self.schema.expired_column is None:
                self.schema = self.target.add_expired_column(self.schema)
                self.builder = RowBuilder(self.schema, self.nul_counts, self.untagged_map_counts)
            return self.schema

    def refresh(self, stale: TableSchema) -> None:
        """Read the mapping again after a writer found ``stale`` outdated (MappingChanged): columns were renamed."""
        with self._lock:
            if self.schema.generation > stale.generation:
                return  # another thread has read it since
            self.schema = self.target.current_schema(self.schema)
            self.builder = RowBuilder(self.schema, self.nul_counts, self.untagged_map_counts)

    def _build(
        self, builder: RowBuilder, items: list[dict[str, Any]]
    ) -> tuple[list[list[Any]], list[Rejected], list[dict[str, Any]]]:
        rows: list[list[Any]] = []
        rejected: list[Rejected] = []
        pending: list[dict[str, Any]] = []
        for item in items:
            try:
                try:
                    rows.append(builder.build(item))
                except MissingColumn:
                    builder.check(item)  # an item that cannot be converted must not make the schema grow
                    pending.append(item)
            except DataError as exc:
                rejected.append(Rejected(item, str(exc.key or ""), exc.attribute, str(exc)))
        return rows, rejected, pending

    def _log_nuls(self) -> None:
        for column in self.nul_counts.keys() - self._nuls_logged:
            with self._lock:
                if column in self._nuls_logged:
                    continue
                self._nuls_logged.add(column)
            log.warning(
                "table %s: removed U+0000 from values of column %s (PostgreSQL cannot store it); further ones are"
                " counted, not logged",
                self.schema.spec.source,
                column,
            )

    def _log_untagged_maps(self) -> None:
        if self._untagged_logged or not self.untagged_map_counts:
            return
        with self._lock:
            if self._untagged_logged:
                return
            self._untagged_logged = True
        attribute = next(iter(self.untagged_map_counts))
        log.warning(
            'table %s: attribute %r holds an empty map written as {} without its "M" type (as DynamoDB Local'
            " sends it in stream images); taken as an empty map. Further ones are counted, not logged",
            self.schema.spec.source,
            attribute,
        )
