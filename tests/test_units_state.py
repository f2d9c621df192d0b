"""Issue 12: the locks and timeouts behind leases, in process against the real PostgreSQL (no DynamoDB needed).

What a commit under a lease must keep out (a claim by another process) and what it must not hold up (its own
process's renewal, every process's heartbeat); what PostgreSQL does to a worker's transaction left idle past the
lease; and the rows of workers that died. The multi-process behaviour these make possible is tested through the
CLI in test_units_load.py.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence
from typing import Any

import psycopg
import pytest
from oracle import connect

from podyn_py.core.positions import Lease, UnitKind
from podyn_py.core.schema import KeyAttribute, TableSpec
from podyn_py.errors import LeaseLost
from podyn_py.target import state
from podyn_py.target.postgres import PostgresTarget, classify
from podyn_py.units import LeaseTiming, UnitKeeper

SPEC = TableSpec("units_src", "public", "units_src", KeyAttribute("pk", "S"))


@pytest.fixture
def target(pg_url: str) -> Iterator[PostgresTarget]:
    target = PostgresTarget(pg_url, retry_seconds=5)
    target.ensure_metadata()
    target.prepare_table(SPEC, create=True, citus=False)
    assert target.begin_load(SPEC, 2, reload=False) is not None
    yield target


def claim(target: PostgresTarget, owner: str, lease_seconds: float = 30.0) -> list[Lease]:
    return [lease for lease, _ in target.claim_segments(SPEC, owner, 2, lease_seconds)[0]]


def expire(url: str) -> None:
    """Make every lease of the table expired now, as if its owner had stopped renewing long ago."""
    with connect(url) as conn:
        conn.execute("UPDATE podyn.leases SET expires_at = now() - interval '1 minute'")


def test_a_commit_under_a_lease_keeps_a_claim_out_but_not_its_renewal(target: PostgresTarget, pg_url: str) -> None:
    mine = claim(target, "a")
    assert len(mine) == 2
    expire(pg_url)
    with target.connect() as committing, committing.transaction():
        assert state.holds_lease(committing, SPEC, mine[0])  # a page's commit, not finished yet
        with connect(pg_url) as other:
            other.execute("SET lock_timeout = '2s'")
            # The owner's renewal goes through at once (it would wait out the commit under FOR SHARE) ...
            renewed = state.renew_leases(other, SPEC, mine, 30.0)
        assert renewed == mine
        expire(pg_url)
        # ... and another process cannot take the unit being committed, expired or not: SKIP LOCKED passes it by.
        taken = claim(target, "b")
        assert [lease.unit_id for lease in taken] == [mine[1].unit_id]
    assert [lease.unit_id for lease in claim(target, "b")] == [mine[0].unit_id]  # free once committed
    assert target.renew_leases(SPEC, mine, 30.0, role="load") == []  # both lost to b now


def test_a_page_that_finishes_a_segment_leaves_the_tables_row_to_the_heartbeats(
    target: PostgresTarget, pg_url: str
) -> None:
    (first, _) = claim(target, "a")
    schema = target.prepare_table(SPEC, create=False, citus=False)
    # The page's own transaction is a savepoint of this one, left open.
    with target.connect() as committing, committing.transaction():
        assert target.write_page(committing, schema, [], [], int(first.unit_id), None, None, first)
        with connect(pg_url) as heartbeat:
            heartbeat.execute("SET lock_timeout = '2s'")
            assert state.record_holder(heartbeat, SPEC.schema, SPEC.table, "another:1")


def test_a_page_under_a_lost_lease_writes_nothing(target: PostgresTarget, pg_url: str) -> None:
    (first, _) = claim(target, "a")
    expire(pg_url)
    assert claim(target, "b")
    schema = target.prepare_table(SPEC, create=False, citus=False)
    with target.connect() as conn, pytest.raises(LeaseLost):
        target.write_page(conn, schema, [["k1"]], [], int(first.unit_id), None, {"pk": {"S": "k1"}}, first)
    with connect(pg_url) as conn:
        assert conn.execute("SELECT count(*) FROM units_src").fetchone() == (0,)


def test_a_workers_transaction_left_idle_past_the_lease_is_ended_and_retried(target: PostgresTarget) -> None:
    conn = target.connect(lease_seconds=1.0)
    try:
        conn.execute("SELECT 1")  # a transaction opened, then the process is paused
        time.sleep(1.5)
        with pytest.raises(psycopg.Error) as raised:
            conn.execute("SELECT 1")
            conn.commit()
        assert classify(raised.value, "writing a page").transient
    finally:
        conn.close()
    with target.connect() as plain:  # other connections are not limited
        row = plain.execute("SHOW idle_in_transaction_session_timeout").fetchone()
    assert row == ("0",)


def test_workers_dead_for_hours_are_forgotten_the_others_kept(target: PostgresTarget, pg_url: str) -> None:
    with connect(pg_url) as conn:
        for worker, age in (("gone:1:aa", "3 hours"), ("quiet:2:bb", "1 hour")):
            conn.execute(
                """INSERT INTO podyn.workers (worker, target_schema, target_table, role, started_at, heartbeat_at)
                   VALUES (%s, 'public', 'units_src', 'load', now() - %s::interval, now() - %s::interval)""",
                (worker, age, age),
            )
    try:
        assert target.beat_worker(SPEC, "load", "new:3:cc", 30.0) == ["new:3:cc"]
        with connect(pg_url) as conn:
            left = {str(r[0]) for r in conn.execute("SELECT worker FROM podyn.workers").fetchall()}
        assert left == {"quiet:2:bb", "new:3:cc"}
    finally:
        target.leave_worker(SPEC, "load", "new:3:cc", [])  # closes its presence lock's connection


def test_a_process_does_not_take_its_own_expired_lease_from_itself(target: PostgresTarget, pg_url: str) -> None:
    """A renewal that comes late leaves the lease expired but still its owner's: a sibling thread of the owner
    must not claim it (its first thread is still loading that segment); another process may."""
    (first, second) = claim(target, "a")
    expire(pg_url)
    assert claim(target, "a") == []
    assert target.renew_leases(SPEC, [first, second], 30.0, role="load") == [first, second]  # still a's
    expire(pg_url)
    assert {lease.unit_id for lease in claim(target, "b")} == {first.unit_id, second.unit_id}


def test_a_lease_given_back_while_its_renewal_runs_is_not_reported_lost(
    target: PostgresTarget, caplog: pytest.LogCaptureFixture
) -> None:
    """A worker thread finishing its segment gives the lease back while the heartbeat's renewal runs (the renewal
    took its list of leases first): the renewal finds that lease no longer renewable, but it was not lost to
    another process, and the log must not say it was (three processes' finishing pages, released at once after
    a slow commit, were all reported 'lost ... another process took it over')."""
    keeper = UnitKeeper(target, SPEC, "load", LeaseTiming(30.0), worker="a:1:aa")
    first, second = keeper.claim(UnitKind.SEGMENT, ["0", "1"], 2)

    class ReleasingTarget:
        """The target, with the worker thread's release landing inside the renewal's round trip."""

        def __getattr__(self, name: str) -> Any:
            return getattr(target, name)

        def renew_leases(self, spec: TableSpec, leases: Sequence[Lease], seconds: float, *, role: str) -> list[Lease]:
            keeper.release([first])
            return target.renew_leases(spec, leases, seconds, role=role)

    keeper.target = ReleasingTarget()
    try:
        with caplog.at_level(logging.WARNING, logger="podyn_py.units"):
            assert keeper.renew() == []
        assert keeper.leases == [second]
        assert not [r for r in caplog.records if "lost the lease" in r.getMessage()], caplog.text
    finally:
        keeper.target = target
        keeper.leave()
