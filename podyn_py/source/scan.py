"""Parallel scan pacing: a read-capacity budget shared by all segments of a table.

``--scan-rate`` caps the read capacity units per second a table's scan consumes as a whole. DynamoDB tells the cost
of a page only after serving it (ReturnConsumedCapacity), so the limiter charges afterwards and makes the next
request wait until the debt is paid; page sizes are cut so that one page costs about a second of budget.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

# Eventually consistent reads cost half a unit per 4 KB; strongly consistent reads a whole one.
_BYTES_PER_UNIT = 4096

#: The most items asked for in one Scan page. It bounds memory (a parsed item and its row take ~5-20 KB in Python,
#: whatever its size in DynamoDB) and keeps DynamoDB Local's scans linear: without a ``Limit`` it serves each page in
#: time that grows with the rest of the segment (bench/RESULTS.md). On DynamoDB a ``Limit`` changes no read cost.
MAX_PAGE_ITEMS = 1000


class ReadCapacityLimiter:
    """A token bucket in read capacity units, shared by threads. ``rate <= 0`` means unlimited."""

    def __init__(
        self,
        rate: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.rate = rate
        self._clock = clock
        self._sleep = sleep
        self._lock = threading.Lock()
        self._tokens = rate
        self._updated = clock()
        self.consumed = 0.0

    @property
    def unlimited(self) -> bool:
        return self.rate <= 0

    def set_rate(self, rate: float) -> None:
        """Change the budget (the table's rate shared by a new number of processes) from now on."""
        with self._lock:
            self._refill()
            self.rate = rate
            self._tokens = min(self._tokens, rate)

    def _refill(self) -> None:
        now = self._clock()
        self._tokens = min(self.rate, self._tokens + (now - self._updated) * self.rate)
        self._updated = now

    def wait(self) -> float:
        """Block until the budget is not in debt; returns the seconds waited."""
        if self.unlimited:
            return 0.0
        waited = 0.0
        while True:
            with self._lock:
                self._refill()
                if self._tokens > 0:
                    return waited
                delay = -self._tokens / self.rate + 0.001
            self._sleep(delay)
            waited += delay

    def charge(self, units: float) -> None:
        with self._lock:
            self.consumed += units
            if not self.unlimited:
                self._refill()
                self._tokens -= units


class PageSizer:
    """Chooses a scan ``Limit``: pages cost about ``units_per_page`` (None: unpaced), of at most ``MAX_PAGE_ITEMS``."""

    def __init__(self, units_per_page: float | None, *, consistent_read: bool, first_guess_bytes: int = 1024) -> None:
        self.units_per_page = units_per_page
        self._bytes_per_unit = _BYTES_PER_UNIT * (1 if consistent_read else 2)
        self._item_bytes = float(first_guess_bytes)

    def limit(self) -> int:
        if self.units_per_page is None:
            return MAX_PAGE_ITEMS
        return max(1, min(MAX_PAGE_ITEMS, int(self.units_per_page * self._bytes_per_unit / self._item_bytes)))

    def observe(self, items: int, units: float) -> None:
        """Learn the average item size from what a page cost."""
        if items > 0 and units > 0:
            measured = units * self._bytes_per_unit / items
            self._item_bytes = 0.5 * self._item_bytes + 0.5 * measured
