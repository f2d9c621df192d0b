"""Issue 12: processes that load one table together, sharing its segments by lease, as an adversarial operator
runs them: kill -9 one mid-load, pause one past its lease (SIGSTOP) and wake it, stop one with SIGTERM, start
``--reload`` three times at once.

Everything is the real podyn (subprocesses, as on separate hosts) against DynamoDB Local and PostgreSQL. The loads
are paced with ``--scan-rate`` so that they last long enough to be interrupted, and run with ``--lease-seconds 3``
(a heartbeat every second) so that takeovers come quickly. An audit trigger logs every row version PostgreSQL
receives: a page committed twice would log its rows twice.
"""

from __future__ import annotations

import random
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from helpers import (
    STREAM,
    Service,
    UnitWatcher,
    add_audit,
    assert_exit,
    backends_in_transaction,
    increment,
    loaded_items,
    owner_pid,
    podyn,
    segment_units,
    wait_equal,
    wait_for,
)
from oracle import connect, table_differences
from psycopg import sql

COUNT = 3000
LEASE = "3"
#: 12 segments over 3 processes of 2 threads each: every process holds two at a time, and there are more to take.
SHARED = ("--segments", "12", "-n", "2", "--lease-seconds", LEASE)
#: Read units per second for the whole table (about 19 s for its 370 units): long enough for three processes that
#: start seconds apart on a busy machine to all be committing before half of it is loaded.
PACE = "20"


def audited_items(count: int = COUNT) -> list[dict[str, Any]]:
    """Items of about 1 KB with the ``counter`` the audit trigger logs."""
    return [{"pk": {"S": f"k{i:05d}"}, "counter": {"N": "0"}, "pad": {"S": "p" * 1000}} for i in range(count)]


def prepared_table(ddb_server: Any, pg_url: str, create_table: Any, *, stream: bool = True) -> str:
    """A table of COUNT items, created in PostgreSQL (``--schema``) with the audit trigger, not loaded yet."""
    table: str = create_table(items=audited_items(), stream_view_type=STREAM if stream else None)
    assert_exit(podyn(ddb_server, pg_url, "-s", "-t", table))
    with connect(pg_url) as conn:
        target = conn.execute("SELECT target_table FROM podyn.tables WHERE source_table = %s", (table,)).fetchone()
    assert target is not None
    add_audit(pg_url, str(target[0]))
    return table


def assert_each_item_inserted_once(pg_url: str, count: int = COUNT) -> None:
    """The load wrote every row exactly once: one INSERT per key, no second copy of a page (its COPY would fail on
    the key and fall back to an upsert, logged as UPDATE)."""
    with connect(pg_url) as conn:
        row = conn.execute(
            "SELECT count(*), count(DISTINCT pk), count(*) FILTER (WHERE op <> 'INSERT') FROM audit"
        ).fetchone()
    assert row == (count, count, 0), f"(row versions, keys, updates) = {row}: a page was committed twice"


def assert_loaded_exactly(pg_url: str, table: str, count: int = COUNT) -> None:
    units = segment_units(pg_url, table)
    assert units and all(u.done for u in units), units
    assert sum(u.items for u in units) == count, "items counted twice or lost across the processes"
    with connect(pg_url) as conn:
        state = conn.execute(
            "SELECT state, items_loaded FROM podyn.tables WHERE source_table = %s", (table,)
        ).fetchone()
    assert state == ("loaded", count)


@contextmanager
def writes(ddb: Any, table: str, keys: int = COUNT) -> Iterator[set[str]]:
    """Application writes (counter + 1 on random keys, about 20/s) while the block runs; yields the keys written."""
    written: set[str] = set()
    done = threading.Event()

    def write() -> None:
        rng = random.Random(12)
        while not done.wait(0.05):
            key = f"k{rng.randrange(keys):05d}"
            increment(ddb, table, key)
            written.add(key)

    thread = threading.Thread(target=write, name="writes", daemon=True)
    thread.start()
    try:
        yield written
    finally:
        done.set()
        thread.join()


def wait_all_committing(watcher: UnitWatcher, loaders: list[Service], *, below: int) -> None:
    """Until every loader has committed pages (and the load is not past ``below`` items yet)."""
    pids = {s.process.pid for s in loaders}

    def all_in() -> bool:
        for s in loaders:
            s.assert_running()
        return pids <= watcher.committers()

    wait_for(all_in, lambda: f"every process committing (committed: {dict(watcher.committed)})", timeout=90)
    loaded = loaded_items(watcher.url, watcher.table)
    assert loaded < below, f"the load was too far ({loaded} items) when all three were committing: not paced?"


def catch_up(ddb: Any, pg_url: str, table: str, services: Callable[..., Service]) -> None:
    """Replay the writes made during the load (``--changes``) until PostgreSQL equals DynamoDB."""
    follower = services(pg_url, table, "-c", "--lease-seconds", LEASE)
    wait_equal(ddb, pg_url, table, timeout=90, service=follower)
    assert follower.stop() == 0, follower.text()


def test_three_processes_one_killed_mid_load_the_others_take_over_exactly(
    ddb_server: Any, ddb: Any, pg_url: str, create_table: Any, services: Callable[..., Service]
) -> None:
    table = prepared_table(ddb_server, pg_url, create_table)
    with writes(ddb, table) as written, UnitWatcher(pg_url, table) as watcher:
        loaders = [services(pg_url, table, "-s", "-d", "--scan-rate", PACE, *SHARED) for _ in range(3)]
        wait_all_committing(watcher, loaders, below=COUNT // 2)
        victim = next(s for s in loaders if watcher.held_by(s.process.pid))
        lost = watcher.held_by(victim.process.pid)
        assert victim.stop(signal.SIGKILL) == -signal.SIGKILL
        killed_at = time.monotonic()
        survivors = [s for s in loaders if s is not victim]
        for survivor in survivors:
            assert survivor.process.wait(180) == 0, survivor.text()
        finished_after = time.monotonic() - killed_at
    assert written, "no application writes ran during the load"
    assert_each_item_inserted_once(pg_url)
    assert_loaded_exactly(pg_url, table)
    # The killed process's segments were taken over (a new lease generation) and finished by the others.
    # A segment the watcher last saw the victim hold may have been finished by the victim itself between that look
    # and the kill (its last page commits atomically: done, same generation); every other one was claimed again.
    survivor_pids = {s.process.pid for s in survivors}
    taken_over = 0
    for unit in lost:
        after = segment_units(pg_url, table)[unit.segment]
        assert after.done and after.generation is not None and unit.generation is not None
        if after.generation == unit.generation:
            continue
        assert after.generation > unit.generation, f"segment {unit.segment} went back a generation"
        taken_over += 1
        takers = {
            owner_pid(owner)
            for (segment, generation), owner in watcher.owners.items()
            if segment == unit.segment and generation > unit.generation
        }
        assert takers and takers <= survivor_pids, (unit, takers)
    assert taken_over > 0, f"none of the killed process's segments {lost} was claimed again"
    assert finished_after > float(LEASE), "the others finished before the lease could expire: nothing to take over"
    assert len(watcher.committers()) == 3, dict(watcher.committed)
    assert any("continues after its last committed page" in s.text() for s in survivors)
    # Rows of keys the application did not write are exactly DynamoDB's now; the writes are then replayed.
    assert len(written) < COUNT
    catch_up(ddb, pg_url, table, services)
    assert table_differences(ddb, pg_url, table) == []


def test_a_process_paused_past_its_lease_commits_nothing_to_the_segments_it_lost(
    ddb_server: Any, ddb: Any, pg_url: str, create_table: Any, services: Callable[..., Service]
) -> None:
    table = prepared_table(ddb_server, pg_url, create_table, stream=False)
    with UnitWatcher(pg_url, table) as watcher:
        loaders = [services(pg_url, table, "-s", "-d", "--scan-rate", PACE, *SHARED) for _ in range(3)]
        wait_all_committing(watcher, loaders, below=COUNT // 2)
        sleeper = next(s for s in loaders if watcher.held_by(s.process.pid))
        pid = sleeper.process.pid
        # Stopped between two transactions (a stop inside one is the next test's case): try again until so.
        for _ in range(50):
            sleeper.process.send_signal(signal.SIGSTOP)
            if not backends_in_transaction(pg_url, pid):
                break
            sleeper.process.send_signal(signal.SIGCONT)
            time.sleep(0.05)
        else:
            raise AssertionError("never caught the process between two transactions")
        watcher.look()
        lost = watcher.held_by(pid)
        assert lost, "the paused process held no segment"
        # Woken as soon as another process claimed its segments, before that one commits to them: a page the
        # sleeper had in flight would still fit each segment's position (the compare-and-set), only the lease
        # check in the commit keeps it out.
        claimed = wait_for(
            lambda: all(
                (now := segment_units(pg_url, table)[u.segment]).done or (now.generation or 0) > (u.generation or 0)
                for u in lost
            ),
            "the paused process's segments claimed by the others",
            timeout=60,
        )
        assert claimed
        sleeper.process.send_signal(signal.SIGCONT)
        for loader in loaders:
            assert loader.process.wait(180) == 0, loader.text()
    # No commit raced another's: the sleeper's page in flight, if any, was refused (not committed first, which
    # would have made the new owner's own page of that position "already applied").
    for loader in loaders:
        assert "page already applied" not in loader.text(), loader.text()
    text = sleeper.text()
    assert "took it over after this one's lease expired" in text or "the lease was lost" in text, text
    assert_each_item_inserted_once(pg_url)
    assert_loaded_exactly(pg_url, table)
    for unit in lost:
        later = {
            owner_pid(owner)
            for (segment, generation), owner in watcher.owners.items()
            if segment == unit.segment and generation > (unit.generation or 0)
        }
        assert pid not in later, f"segment {unit.segment} went back to the sleeper: {later}"
    assert table_differences(ddb, pg_url, table) == []


def slow_statements(pg_url: str, table: str, seconds: float, *, key: str | None = None) -> None:
    """Make every page's commit of ``table`` take ``seconds`` more on the server (only the page holding ``key``,
    with a key): a trigger that sleeps, so that a process is caught inside a commit, or one commit outlasts the
    lease."""
    with connect(pg_url) as conn:
        target = conn.execute("SELECT target_table FROM podyn.tables WHERE source_table = %s", (table,)).fetchone()
        assert target is not None
        condition = "true" if key is None else f"NEW.pk = '{key}'"
        level = "STATEMENT" if key is None else "ROW"
        conn.execute(
            sql.SQL(
                """CREATE FUNCTION slow_commit() RETURNS trigger LANGUAGE plpgsql AS $$
                   BEGIN IF {} THEN PERFORM pg_sleep({}); END IF; RETURN NULL; END $$;
                   CREATE TRIGGER slow_commit AFTER INSERT ON {} FOR EACH {} EXECUTE FUNCTION slow_commit();"""
            ).format(
                sql.SQL(condition if level == "ROW" else "true"),
                sql.Literal(seconds),
                sql.Identifier(str(target[0])),
                sql.SQL(level),
            )
        )


#: The lease of the tests that check no lease is ever lost: renewed every 1.7 s, it outlasts the pauses of a
#: machine busy with other tests.
CALM_LEASE = "5"


def assert_renewed_throughout(watcher: UnitWatcher, loaders: list[Service]) -> None:
    """No live process let a lease of its own expire (renewed every 1.7 s, a 5 s lease is never seen expired
    for more than a moment), and none lost one."""
    assert watcher.overdue < 1.5, f"a lease was {watcher.overdue:.1f} s past its expiry while its owner ran"
    for loader in loaders:
        assert "lost the lease" not in loader.text() and "the lease was lost" not in loader.text(), loader.text()


def test_a_process_paused_inside_a_commit_loses_the_segment_after_the_lease(
    ddb_server: Any, ddb: Any, pg_url: str, create_table: Any, services: Callable[..., Service]
) -> None:
    """Paused in the middle of a page's transaction, a process keeps its segment's lease row locked: without an
    end to that transaction, no other process could take the segment over until it woke up (SKIP LOCKED passes
    it by). PostgreSQL ends a worker's transaction left idle past the lease; the woken process's commit then
    fails, and its retry finds the lease gone."""
    table = prepared_table(ddb_server, pg_url, create_table, stream=False)
    slow_statements(pg_url, table, 0.4)
    with UnitWatcher(pg_url, table) as watcher:
        loaders = [services(pg_url, table, "-s", "-d", "--scan-rate", PACE, *SHARED) for _ in range(3)]
        wait_all_committing(watcher, loaders, below=COUNT // 2)
        sleeper = next(s for s in loaders if watcher.held_by(s.process.pid))
        pid = sleeper.process.pid
        for _ in range(200):
            sleeper.process.send_signal(signal.SIGSTOP)
            # In a page's transaction, past its COPY's rows (in the trigger's sleep, or idle after it): the case of
            # this test. Stopped in another transaction (a claim, a renewal, a heartbeat), the process loses its
            # segments without the mechanism under test (seen once); stopped while sending the COPY's rows, its
            # backend waits for them, active, which no idle timeout ends.
            inside = backends_in_transaction(pg_url, pid, statement="COPY")
            if inside and not any(state.startswith("active ClientRead") for state in inside):
                break
            sleeper.process.send_signal(signal.SIGCONT)
            time.sleep(0.02)
        else:
            raise AssertionError("never caught the process inside a transaction")
        watcher.look()
        lost = watcher.held_by(pid)
        assert lost, "the paused process held no segment"
        claimed = wait_for(
            lambda: all(
                (now := segment_units(pg_url, table)[u.segment]).done or (now.generation or 0) > (u.generation or 0)
                for u in lost
            ),
            lambda: (
                f"the paused process's segments {[u.segment for u in lost]} taken over: "
                f"{segment_units(pg_url, table)}; its backends: {backends_in_transaction(pg_url, pid)}"
            ),
            timeout=45,
        )
        assert claimed
        sleeper.process.send_signal(signal.SIGCONT)
        for loader in loaders:
            assert loader.process.wait(180) == 0, loader.text()
    text = sleeper.text()
    # Its transaction was ended under it; the retry on a new connection found the lease gone.
    assert "writing a page" in text and "reconnecting" in text, text
    assert "took it over after this one's lease expired" in text, text
    # It went on with the connection it had reconnected with, not the one PostgreSQL had closed.
    assert "claiming segments: the connection is lost" not in text, text
    assert_each_item_inserted_once(pg_url)
    assert_loaded_exactly(pg_url, table)
    assert table_differences(ddb, pg_url, table) == []


def test_one_slow_commit_costs_its_process_no_other_lease(
    ddb_server: Any, ddb: Any, pg_url: str, create_table: Any, services: Callable[..., Service]
) -> None:
    """A commit that outlasts the lease (here a trigger sleeps three leases on one row) must not stop the
    renewal of its process's other leases: a third process waits for a segment to fall free and would take any
    lease that expired. The commit itself keeps its lease row locked, so its segment is not taken either."""
    table = prepared_table(ddb_server, pg_url, create_table, stream=False)
    slow_statements(pg_url, table, 3 * float(CALM_LEASE), key="k01234")
    few = ("--segments", "4", "-n", "2", "--lease-seconds", CALM_LEASE)
    with UnitWatcher(pg_url, table) as watcher:
        loaders = [services(pg_url, table, "-s", "-d", "--scan-rate", "40", *few) for _ in range(3)]
        for loader in loaders:
            assert loader.process.wait(240) == 0, loader.text()
    assert_renewed_throughout(watcher, loaders)
    assert_each_item_inserted_once(pg_url)
    assert_loaded_exactly(pg_url, table)


def test_a_slow_last_page_of_a_segment_holds_up_no_heartbeat(
    ddb_server: Any, ddb: Any, pg_url: str, create_table: Any, services: Callable[..., Service]
) -> None:
    """The commit that finishes a segment is serialised with the others that do (one of the last two marks the
    table loaded). It used podyn.tables' row lock for that, the row every process's heartbeat updates: a slow
    one (here a trigger on podyn.segments sleeps three leases when the first segment is done) held up every process's
    heartbeat and the lease renewal after it, and they lost their segments to each other."""
    table = prepared_table(ddb_server, pg_url, create_table, stream=False)
    with connect(pg_url) as conn:
        conn.execute(
            sql.SQL(
                """CREATE FUNCTION slow_finish() RETURNS trigger LANGUAGE plpgsql AS $$
                   BEGIN
                       IF (SELECT count(*) FROM podyn.segments s
                           WHERE s.target_table = NEW.target_table AND s.done) = 1 THEN
                           PERFORM pg_sleep({});
                       END IF;
                       RETURN NULL;
                   END $$;
                   CREATE TRIGGER slow_finish AFTER UPDATE ON podyn.segments FOR EACH ROW
                       WHEN (NEW.done AND NOT OLD.done) EXECUTE FUNCTION slow_finish();"""
            ).format(sql.Literal(3 * float(CALM_LEASE)))
        )
    calm = ("--segments", "12", "-n", "2", "--lease-seconds", CALM_LEASE)
    with UnitWatcher(pg_url, table) as watcher:
        loaders = [services(pg_url, table, "-s", "-d", "--scan-rate", "40", *calm) for _ in range(3)]
        for loader in loaders:
            assert loader.process.wait(240) == 0, loader.text()
    assert_renewed_throughout(watcher, loaders)
    assert_each_item_inserted_once(pg_url)
    assert_loaded_exactly(pg_url, table)


def test_a_process_stopped_with_sigterm_gives_its_segments_back_at_once(
    ddb_server: Any, ddb: Any, pg_url: str, create_table: Any, services: Callable[..., Service]
) -> None:
    """With a 30 s lease, a process killed outright leaves its segments for 30 s; one stopped with SIGTERM
    commits what it has in flight and gives them back as it exits: the process waiting for a segment (all four
    are held by the first two) takes them at its next look (every 5 s)."""
    table = prepared_table(ddb_server, pg_url, create_table, stream=False)
    long_lease = ("--segments", "4", "-n", "2", "--lease-seconds", "30")
    with UnitWatcher(pg_url, table) as watcher:
        loaders = [services(pg_url, table, "-s", "-d", "--scan-rate", "20", *long_lease) for _ in range(3)]

        def two_holding_one_waiting() -> tuple[list[Service], Service] | None:
            for s in loaders:
                s.assert_running()
            held = {owner_pid(u.owner) for u in watcher.held_by_any()}
            holders = [s for s in loaders if s.process.pid in held]
            waiting = [s for s in loaders if "all held by other processes; waiting" in s.text()]
            if len(watcher.held_by_any()) == 4 and len(holders) == 2 and len(waiting) == 1:
                return holders, waiting[0]
            return None

        found = wait_for(two_holding_one_waiting, "two processes holding all four segments, one waiting", timeout=90)
        assert found is not None
        holders, waiting = found
        quitter = holders[0]
        given = watcher.held_by(quitter.process.pid)
        assert given, f"the first process held no segment: {watcher.look()}, {[s.process.pid for s in holders]}"
        quitter.process.send_signal(signal.SIGTERM)
        assert quitter.process.wait(30) == 0, quitter.text()
        stopped = time.monotonic()
        assert "stopped on request" in quitter.text(), quitter.text()
        # Free as soon as it exited, not in 30 s ...
        after = segment_units(pg_url, table)
        assert all(owner_pid(after[u.segment].owner) != quitter.process.pid for u in given), after
        # ... and taken by the waiting process at its next look.
        wait_for(
            lambda: all(
                owner_pid((now := segment_units(pg_url, table)[u.segment]).owner) == waiting.process.pid or now.done
                for u in given
            ),
            lambda: (
                f"segments {[u.segment for u in given]} taken by the waiting process: {segment_units(pg_url, table)}"
            ),
            timeout=15,
        )
        assert time.monotonic() - stopped < 30, "taken only once the lease expired"
        for loader in [holders[1], waiting]:
            assert loader.process.wait(180) == 0, loader.text()
    assert waiting.process.pid in watcher.committers()
    assert_each_item_inserted_once(pg_url)
    assert_loaded_exactly(pg_url, table)


def test_reload_started_by_three_processes_at_once_loads_the_table_once(
    ddb_server: Any, ddb: Any, pg_url: str, create_table: Any, services: Callable[..., Service]
) -> None:
    """``--reload`` empties the table and loads it from scratch; three processes started with it (and a fourth
    started when the reload is under way) load it together, once: each starting it over would empty the rows the
    others loaded and insert them again."""
    table: str = create_table(items=audited_items())
    assert_exit(podyn(ddb_server, pg_url, "-s", "-d", "-t", table))
    with connect(pg_url) as conn:
        target = conn.execute("SELECT target_table FROM podyn.tables WHERE source_table = %s", (table,)).fetchone()
    assert target is not None
    add_audit(pg_url, str(target[0]))  # from here on: what the reload writes
    with UnitWatcher(pg_url, table) as watcher:
        loaders = [services(pg_url, table, "-d", "--reload", "--scan-rate", "10", *SHARED) for _ in range(3)]
        wait_all_committing(watcher, loaders, below=COUNT // 3)
        late = services(pg_url, table, "-d", "--reload", "--scan-rate", "10", *SHARED)
        loaders.append(late)
        for loader in loaders:
            assert loader.process.wait(180) == 0, loader.text()
    joined = [s for s in loaders if "joining the reload another podyn process is running" in s.text()]
    assert len(joined) == 3 and late in joined, [s.text() for s in loaders]
    assert "of them leased to other processes" in late.text(), late.text()
    assert "resuming an interrupted load" not in late.text(), late.text()  # it was not interrupted
    assert_each_item_inserted_once(pg_url)
    assert_loaded_exactly(pg_url, table)
    assert table_differences(ddb, pg_url, table) == []
