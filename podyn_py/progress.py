"""Load progress: a tqdm bar per table on a terminal, a log line every ``interval`` seconds otherwise."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from tqdm import tqdm

log = logging.getLogger(__name__)


class LoadProgress:
    def __init__(self, table: str, total: int | None, *, bar: bool, interval: float = 10.0) -> None:
        self.table = table
        self.items = 0
        self.units = 0.0
        self._interval = interval
        self._started = time.monotonic()
        self._logged = self._started
        self._lock = threading.Lock()
        self._bar: Any = (
            tqdm(
                total=total or None,
                desc=table,
                unit=" items",
                unit_scale=True,
                dynamic_ncols=True,
                leave=True,
            )
            if bar
            else None
        )

    def add(self, items: int, units: float) -> None:
        with self._lock:
            self.items += items
            self.units += units
            if self._bar is not None:
                self._bar.update(items)
                self._bar.set_postfix_str(f"{self.units:,.0f} RCU", refresh=False)
                return
            now = time.monotonic()
            if now - self._logged >= self._interval:
                self._logged = now
                log.info(
                    "table %s: %s",
                    self.table,
                    self.summary(),
                    extra={"table": self.table, "items": self.items, "read_capacity_units": self.units},
                )

    def summary(self) -> str:
        seconds = max(time.monotonic() - self._started, 1e-9)
        return f"{self.items:,} items in {seconds:.1f} s ({self.items / seconds:,.0f} items/s), {self.units:,.1f} RCU"

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
