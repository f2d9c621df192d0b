"""What an orchestrator's probes ask of a running podyn: do its loops come round (/healthz), and is every table it
works on live, and how far behind (/readyz)?

Each loop of podyn runs in a thread of its own (a table's change replication, its stream reader, a load's segment
worker) and registers that thread with :func:`loop`; it calls :func:`beat` each time it comes round, and so does
every retry wait (``retry.Clock.wait``): a loop that waits out throttling or an outage is doing its job. A loop whose
last beat is older than the threshold is stalled: blocked in a call that neither returns nor fails (a lock held by
someone else, a hung connection). Restarting the process is then what can help, which a liveness probe does.

A table's state is what established it, never a guess: the state transitions committed to ``podyn.tables`` (shown
by ``target.postgres.show_state`` after the commit), this process standing by or failing the table, and the lag the
replicator measured after each committed batch (or 0 when the stream had nothing new). Between two measurements the
lag reported is an upper bound: the measured lag plus the time since it was measured, so a replicator that stops
measuring does not stay "ready".

Not for metrics (``metrics.py``, served on the same port) nor for what other processes do (``--status`` reads
``podyn.tables``). Imports no podyn module.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from wsgiref.types import StartResponse, WSGIApplication, WSGIEnvironment

#: The state of a table this process will work on but has not shown a state for yet.
STARTING = "starting"
#: Another process holds the table; this one waits to take over (``--changes``). Ready: it does what it should.
STANDING_BY = "standing by"
#: Another process held the table when this one wanted to load it (a run without ``--changes``). Not ready.
HELD_ELSEWHERE = "held elsewhere"
#: The only state that is ready by itself (with the lag under the threshold).
LIVE = "live"

#: --health-max-stall's default: far above the longest wait between two rounds of a loop (30 s retry caps).
DEFAULT_MAX_STALL_SECONDS = 300.0
#: --ready-max-lag's default.
DEFAULT_MAX_LAG_SECONDS = 60.0


@dataclass
class _Loop:
    name: str
    table: str | None
    last: float


@dataclass
class _Table:
    state: str = STARTING
    error: str | None = None
    lag: float | None = None
    lag_at: float | None = None


class Health:
    """The loops and tables of one process. Thread-safe; :meth:`beat` is cheap enough for every retry wait."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._loops: dict[int, _Loop] = {}
        self._tables: dict[str, _Table] = {}

    # -- loops --------------------------------------------------------------------------------------------------

    @contextlib.contextmanager
    def loop(self, name: str, table: str | None = None) -> Iterator[None]:
        """The current thread runs loop ``name`` until the block ends (a loop that ends is no longer watched)."""
        ident = threading.get_ident()
        with self._lock:
            outer = self._loops.get(ident)
            self._loops[ident] = _Loop(name, table, self._clock())
        try:
            yield
        finally:
            with self._lock:
                if outer is None:
                    self._loops.pop(ident, None)
                else:
                    outer.last = self._clock()
                    self._loops[ident] = outer

    def beat(self) -> None:
        """The current thread's loop came round (nothing when the thread runs no loop)."""
        entry = self._loops.get(threading.get_ident())  # one dict read: atomic, no lock needed
        if entry is not None:
            entry.last = self._clock()

    # -- tables -------------------------------------------------------------------------------------------------

    def expect(self, tables: Iterable[str]) -> None:
        """This process is to work on ``tables``: until each shows a state, it is ``starting`` (not ready)."""
        with self._lock:
            for table in tables:
                self._tables.setdefault(table, _Table())

    def set_state(self, table: str, state: str, error: str | None = None) -> None:
        with self._lock:
            entry = self._tables.setdefault(table, _Table())
            entry.state, entry.error = state, error

    def set_lag(self, table: str, seconds: float) -> None:
        """The replicator measured the table's lag (after committing a batch, or 0 on an empty poll)."""
        with self._lock:
            entry = self._tables.setdefault(table, _Table())
            entry.lag, entry.lag_at = seconds, self._clock()

    # -- the probes ---------------------------------------------------------------------------------------------

    def liveness(self, max_stall: float) -> tuple[bool, dict[str, Any]]:
        """Healthy unless a loop has not come round for more than ``max_stall`` seconds; the loops, as JSON."""
        now = self._clock()
        with self._lock:
            loops = [(entry, now - entry.last) for entry in self._loops.values()]
        shown = [
            {"loop": e.name, "table": e.table, "seconds_since_progress": round(age, 3), "stalled": age > max_stall}
            for e, age in sorted(loops, key=lambda pair: pair[0].name)
        ]
        stalled = [each["loop"] for each in shown if each["stalled"]]
        body = {
            "status": "stalled" if stalled else "ok",
            "max_stall_seconds": max_stall,
            "stalled": stalled,
            "loops": shown,
        }
        return not stalled, body

    def readiness(self, max_lag: float) -> tuple[bool, dict[str, Any]]:
        """Ready when there is a table and every one is live with its lag at most ``max_lag`` seconds (or standing
        by for another process); each table's state and lag, as JSON."""
        now = self._clock()
        with self._lock:
            tables = {name: (e.state, e.error, e.lag, e.lag_at) for name, e in self._tables.items()}
        shown: dict[str, dict[str, Any]] = {}
        for name, (state, error, lag, lag_at) in sorted(tables.items()):
            bound = None if lag is None or lag_at is None else lag + max(0.0, now - lag_at)
            ready = state == STANDING_BY or (state == LIVE and bound is not None and bound <= max_lag)
            shown[name] = {
                "state": state,
                "ready": ready,
                "lag_seconds": None if bound is None else round(bound, 3),
                "measured_lag_seconds": None if lag is None else round(lag, 3),
                "error": error,
            }
        ok = bool(shown) and all(each["ready"] for each in shown.values())
        return ok, {"status": "ready" if ok else "not ready", "max_lag_seconds": max_lag, "tables": shown}

    def probes(self, *, max_stall: float, max_lag: float) -> dict[str, WSGIApplication]:
        """WSGI apps for ``/healthz`` and ``/readyz``: 200 or 503, with the JSON body of each probe."""

        def serve(check: Callable[[], tuple[bool, dict[str, Any]]]) -> WSGIApplication:
            def app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
                if environ.get("REQUEST_METHOD", "GET") not in ("GET", "HEAD"):
                    start_response("405 Method Not Allowed", [("Allow", "GET, HEAD")])
                    return [b""]
                ok, body = check()
                payload = (json.dumps(body, sort_keys=False) + "\n").encode()
                headers = [("Content-Type", "application/json"), ("Content-Length", str(len(payload)))]
                start_response("200 OK" if ok else "503 Service Unavailable", headers)
                return [b""] if environ.get("REQUEST_METHOD") == "HEAD" else [payload]

            return app

        return {
            "/healthz": serve(lambda: self.liveness(max_stall)),
            "/readyz": serve(lambda: self.readiness(max_lag)),
        }


#: The process's one Health, like metrics.REGISTRY: the loops and tables report to it, the metrics port serves it.
HEALTH = Health()

loop = HEALTH.loop
beat = HEALTH.beat
expect = HEALTH.expect
set_state = HEALTH.set_state
set_lag = HEALTH.set_lag
