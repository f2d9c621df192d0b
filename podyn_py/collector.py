"""The cyclic garbage collector's settings for a podyn run, which allocates objects by the million and frees them young.

Each Scan page, parsed by orjson, is some 25,000 dicts and lists, and its rows and JSON trees as many again; they
live until the page is written, then reference counting frees them (they hold no cycles). CPython's default
thresholds (700, 10, 10) start a young collection every 700 net allocations: while a page is being parsed and
converted, its objects are traversed again and again, survive, are promoted, and soon start full collections that
walk the whole heap. Measured: half of the CPU of parsing a page, and a third of the whole load's, went to the
collector (bench/RESULTS.md, "Issue 12: client CPU").

A young collection every :data:`YOUNG_THRESHOLD` net allocations instead leaves the collector its job (cycles) at a
small fraction of the cost. The count is net: objects freed by reference counting take their allocation back, so a
collection comes when that many objects are alive and young, which 8 workers' pages in flight (some 200,000 dicts
and lists) do not reach. Garbage cycles wait longer, and are bounded by the same count; a load makes about 30,000
objects of them once (botocore's models, at start-up), none per page (checked with ``gc.DEBUG_SAVEALL``). At 100,000
the young collections of a load still took 0.5 CPU-s per 100k items; at 300,000 and above, none ran during the load.
The process's owner (the CLI) calls :func:`tune_for_bulk_work`; the library never does on import.
"""

from __future__ import annotations

import gc

__all__ = ["YOUNG_THRESHOLD", "tune_for_bulk_work"]

#: Net allocations of container objects between two young collections (CPython's default is 700).
YOUNG_THRESHOLD = 300_000


def tune_for_bulk_work() -> None:
    """Collect the young generation every YOUNG_THRESHOLD allocations; the older generations' ratios stay."""
    young, older, oldest = gc.get_threshold()
    if young and young < YOUNG_THRESHOLD:  # 0: the collector is off, as someone chose
        gc.set_threshold(YOUNG_THRESHOLD, older, oldest)
