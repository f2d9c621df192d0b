"""One process's leases on one table's work units: claimed from the target, renewed on a heartbeat, given back.

Any number of podyn processes, on one host or many, started with the same command, share a table's units (scan
segments, stream shards) through ``podyn.leases`` (see ``target/state.py``). A process claims free units, renews
its leases every ``heartbeat_seconds``, and gives them back when it stops, so another process takes them over at
once; a process that stops renewing (killed, paused, cut off) loses them when they expire, ``lease_seconds`` after
its last renewal. Every commit to a unit checks the lease in its transaction (owner and generation), so a
process that lost a lease cannot commit to the unit again.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from podyn_py.core.ports import Target
from podyn_py.core.positions import Lease
from podyn_py.core.schema import TableSpec
from podyn_py.errors import PodynError

log = logging.getLogger(__name__)

#: How long a lease lasts unless renewed (``--lease-seconds``); it is renewed every third of that.
LEASE_SECONDS = 30.0

_worker: tuple[int, str] | None = None


def worker_id() -> str:
    """This process's name as an owner of leases: host, pid and a random part (a pid is reused after a restart)."""
    global _worker
    pid = os.getpid()
    if _worker is None or _worker[0] != pid:
        _worker = (pid, f"{socket.gethostname()}:{pid}:{secrets.token_hex(3)}")
    return _worker[1]


@dataclass(frozen=True)
class LeaseTiming:
    lease_seconds: float = LEASE_SECONDS

    @property
    def heartbeat_seconds(self) -> float:
        return self.lease_seconds / 3

    @property
    def poll_seconds(self) -> float:
        """How often a process with nothing to claim looks again (units freed by a stop, or expired)."""
        return min(5.0, self.lease_seconds / 3)


class UnitKeeper:
    """The leases this process holds on one table's units in one role (``load``, ``changes``). Thread-safe."""

    def __init__(
        self,
        target: Target,
        spec: TableSpec,
        role: str,
        timing: LeaseTiming | None = None,
        *,
        worker: str | None = None,
    ) -> None:
        self.target = target
        self.spec = spec
        self.role = role
        self.timing = timing or LeaseTiming()
        #: This process's name (tests give two workers of one process names of their own).
        self.worker = worker or worker_id()
        self._lock = threading.Lock()
        self._held: dict[tuple[str, str], Lease] = {}
        #: Live workers of the table in this role at the last heartbeat, in the order they joined (this one too).
        self.worker_list: list[str] = []

    @property
    def leases(self) -> list[Lease]:
        with self._lock:
            return list(self._held.values())

    def held(self, lease: Lease) -> bool:
        """Whether the lease was still this process's at the last renewal (a commit checks it for certain)."""
        with self._lock:
            return self._held.get((lease.kind, lease.unit_id)) == lease

    @property
    def workers(self) -> int:
        return max(1, len(self.worker_list))

    def join(self) -> None:
        """Record this process as one of the table's workers (its share of units and of ``--scan-rate``)."""
        self.worker_list = self.target.beat_worker(self.spec, self.role, self.worker, self.timing.lease_seconds)

    def adopt(self, leases: Sequence[Lease]) -> None:
        """Keep (renew from now on) leases claimed through the target."""
        with self._lock:
            for lease in leases:
                self._held[(lease.kind, lease.unit_id)] = lease

    def claim(self, kind: str, candidates: Sequence[str], limit: int) -> list[Lease]:
        leases = self.target.claim_units(self.spec, kind, candidates, self.worker, limit, self.timing.lease_seconds)
        self.adopt(leases)
        return leases

    def renew(self) -> list[Lease]:
        """Renew every lease held and beat the worker's row; the leases lost (taken over after they expired)."""
        mine = self.leases
        kept = self.target.renew_leases(self.spec, mine, self.timing.lease_seconds, role=self.role)
        self.join()
        with self._lock:
            # A lease given back while the renewal ran (its unit done: release() drops it here before it frees the
            # row) was not renewed either, but it was not lost: only those still held count.
            lost = [
                lease for lease in mine if lease not in kept and self._held.get((lease.kind, lease.unit_id)) == lease
            ]
            for lease in lost:
                del self._held[(lease.kind, lease.unit_id)]
        for lease in lost:
            log.warning(
                "table %s: lost the lease on %s %s (it expired and another process took it over)",
                self.spec.source,
                lease.kind,
                lease.unit_id,
            )
        return lost

    def release(self, leases: Sequence[Lease], conn: Any = None) -> None:
        """Give leases back now (a unit done, or more than this process's share), on ``conn`` if given."""
        with self._lock:
            mine = [lease for lease in leases if self._held.pop((lease.kind, lease.unit_id), None) == lease]
        if mine:
            self.target.release_leases(self.spec, mine, conn)

    def leave(self) -> None:
        """Give every lease back and leave the table's workers: others take over at once, not after the lease.

        A failure here (PostgreSQL gone) is logged, not raised: the leases then expire by themselves."""
        with self._lock:
            mine, self._held = list(self._held.values()), {}
        try:
            self.target.leave_worker(self.spec, self.role, self.worker, mine)
        except PodynError as exc:
            log.warning(
                "table %s: could not give back %d leases (%s); they expire in %.0f s",
                self.spec.source,
                len(mine),
                exc,
                self.timing.lease_seconds,
            )
