"""Several real ``podyn --changes`` processes sharing one table's stream shards by lease (issue 12).

DynamoDB Local keeps one shard per stream and never splits it, so the stream is scripted at the HTTP boundary: the
processes are pointed (``--endpoint-url``) at ``scripted_stream_server.py``, which relays DynamoDB calls to DynamoDB
Local and answers DynamoDB Streams calls from a script the test writes while they run (several shards, a split,
records appended over time). Everything else is real: the CLI in subprocesses, their HTTP clients, PostgreSQL.

Every change applied exactly once, in order per key, is proven with more than the final state: a trigger logs every
row version the target receives and each scripted image carries a counter that grows per key (a record applied
twice, or out of order, shows as a counter that does not increase); each shard's ``records_applied`` equals the
records the script holds for it; and the rows equal the script's final state. The order of shards is checked where
it is decided: the server asks PostgreSQL, at each GetShardIterator on a child shard, whether its parent's
checkpoint was committed as finished.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from helpers import (
    STREAM,
    Service,
    add_audit,
    assert_counters_strictly_increase,
    assert_exit,
    fresh,
    podyn,
    wait_for,
)
from oracle import connect
from scripted_stream_server import ScriptedStreamServer, ScriptShard, StreamScript

LEASE = "3"
#: Generous: the machine's two cores are shared with DynamoDB Local, PostgreSQL, the other tests and three podyns.
TIMEOUT = 120.0


@pytest.fixture
def stream_server(ddb_server: Any) -> Iterator[ScriptedStreamServer]:
    with ScriptedStreamServer(ddb_server.endpoint_url) as server:
        yield server


Scripted = Callable[..., tuple[str, StreamScript]]


@pytest.fixture
def scripted(stream_server: ScriptedStreamServer, create_table: Any, pg_url: str) -> Scripted:
    """``scripted(page_limit=...)``: a stream-enabled DynamoDB table whose stream is a script on ``stream_server``,
    loaded (empty) by podyn, with the audit trigger on its target table."""

    def make(**options: Any) -> tuple[str, StreamScript]:
        table = create_table(name=fresh(), stream_view_type=STREAM)
        script = stream_server.add(StreamScript(table, on_iterator=parent_finished(pg_url), **options))
        assert_exit(podyn(stream_server, pg_url, "-s", "-d", "-t", table))
        add_audit(pg_url, table)
        return table, script

    return make


def parent_finished(url: str) -> Callable[[ScriptShard], object]:
    """What the server records at each GetShardIterator: for a child shard, whether PostgreSQL holds its parent's
    checkpoint as finished at that moment (None for a shard without a parent)."""

    def seen(shard: ScriptShard) -> object:
        if shard.parent_id is None:
            return None
        with connect(url) as conn:
            row = conn.execute("SELECT finished FROM podyn.shards WHERE shard_id = %s", (shard.parent_id,)).fetchone()
        return bool(row and row[0])

    return seen


def owners(url: str) -> dict[str, str]:
    """Shard id → owner of every stream shard leased now (a live lease: not expired)."""
    with connect(url) as conn:
        rows = conn.execute(
            """SELECT unit_id, owner FROM podyn.leases
               WHERE kind = 'stream shard' AND owner IS NOT NULL AND expires_at > now()"""
        ).fetchall()
    return {str(r[0]): str(r[1]) for r in rows}


def shares(url: str) -> list[int]:
    """How many shards each owner holds now, largest first."""
    counts: dict[str, int] = {}
    for owner in owners(url).values():
        counts[owner] = counts.get(owner, 0) + 1
    return sorted(counts.values(), reverse=True)


def owner_pid(owner: str) -> int:
    """A lease owner is ``host:pid:random``."""
    return int(owner.split(":")[-2])


def owning(url: str) -> set[int]:
    """The pids of the processes that hold a live lease on a shard now."""
    return {owner_pid(owner) for owner in owners(url).values()}


def checkpoints(url: str) -> dict[str, tuple[str | None, bool, int]]:
    with connect(url) as conn:
        rows = conn.execute("SELECT shard_id, sequence_number, finished, records_applied FROM podyn.shards").fetchall()
    return {str(r[0]): (r[1], bool(r[2]), int(r[3])) for r in rows}


def target_rows(url: str, table: str) -> dict[str, int]:
    with connect(url) as conn:
        rows = conn.execute(f'SELECT pk, counter FROM "{table}"').fetchall()
    return {str(r[0]): int(r[1]) for r in rows}


def wait_applied(url: str, script: StreamScript, services: list[Service], timeout: float = TIMEOUT) -> None:
    """Wait until every shard's checkpoint is at the last record the script holds for it (closed ones finished)."""
    last: list[object] = []

    def done() -> bool:
        stored = checkpoints(url)
        with script.lock:
            wanted = {s.shard_id: (script.last_sequence(s.shard_id), s.closed) for s in script.shards.values()}
        last[:] = [{k: (v, stored.get(k)) for k, v in wanted.items() if stored.get(k, (None, False))[:2] != v}]
        return all(stored.get(k, (None, False))[:2] == v for k, v in wanted.items())

    deadline = time.monotonic() + timeout
    while not done():
        assert any(s.process.poll() is None for s in services), "every podyn process exited"
        if time.monotonic() > deadline:
            logs = "\n".join(f"--- {s.log.name}\n{s.text()[-3000:]}" for s in services)
            raise AssertionError(f"shards not caught up after {timeout} s: {last[0]}\n{logs}")
        time.sleep(0.2)


def assert_exactly_once(url: str, table: str, script: StreamScript, *, splits: bool = True) -> int:
    """Rows equal the script's final state; no row version out of order or doubled; each shard's records counted
    once; every child opened (``splits``: there were some) only after its parent's finished checkpoint was
    committed. The row versions logged."""
    assert target_rows(url, table) == script.final_state()
    versions = assert_counters_strictly_increase(url)
    stored = checkpoints(url)
    with script.lock:
        expected = {s.shard_id: len(s.records) for s in script.shards.values()}
        children = [c for c in script.iterator_calls if c.parent_id is not None]
    assert {shard: stored[shard][2] for shard in expected} == expected
    assert bool(children) == splits, f"child shards read: {children}"
    early = [c for c in children if c.seen is not True]
    assert not early, f"child shards opened before their parent's finished checkpoint was committed: {early}"
    return versions


def applied_by(service: Service) -> int:
    """The records a process logged as applied."""
    return sum(int(n) for n in re.findall(r"applied (\d+) records", service.text()))


class Writer:
    """Appends one record per key of every open shard, round after round; keys follow their shard's lineage (a
    split hands each child half of its parent's keys, as a partition split does), counters grow per key."""

    def __init__(self, script: StreamScript, roots: dict[str, list[str]]) -> None:
        self.script = script
        self.keys = dict(roots)  # shard id → its keys
        for shard in roots:
            assert shard in script.shards
        self.counter = 0

    def round(self) -> None:
        with self.script.lock:
            for shard, keys in self.keys.items():
                if not self.script.shards[shard].closed:
                    for key in keys:
                        self.counter += 1
                        self.script.put(shard, key, self.counter)

    def split(self, parent: str) -> list[str]:
        with self.script.lock:
            keys = self.keys[parent]
            children = self.script.split(parent)
            half = len(keys) // 2
            self.keys[children[0]], self.keys[children[1]] = keys[:half], keys[half:]
            return children


def roots(script: StreamScript, count: int, keys: int) -> dict[str, list[str]]:
    out = {}
    for n in range(count):
        out[script.open_shard()] = [f"s{n}k{k}" for k in range(keys)]
    return out


def start(services: Any, url: str, table: str, server: ScriptedStreamServer, *args: str) -> Service:
    service: Service = services(url, table, "-c", *args, endpoint=server.endpoint_url)
    return service


def test_three_processes_share_shards_through_a_split_a_kill_and_a_pause(
    scripted: Scripted, stream_server: ScriptedStreamServer, pg_url: str, services: Any
) -> None:
    """Three processes on five shards (four roots, one of which splits while they run) with records appended every
    0.2 s: one is killed with SIGKILL, another stopped with SIGSTOP past its lease and continued. Every record is
    applied once, in order per key; more than one process applied records; the leases are --lease-seconds long."""
    table, script = scripted(page_limit=5)
    writer = Writer(script, roots(script, 4, 4))
    splitting = next(iter(writer.keys))
    writer.round()
    processes = [start(services, pg_url, table, stream_server, "--lease-seconds", LEASE) for _ in range(3)]
    wait_for(lambda: shares(pg_url) == [2, 1, 1], lambda: f"three shares of 4 shards (now {shares(pg_url)})",
             timeout=TIMEOUT, service=processes[0])  # fmt: skip
    with connect(pg_url) as conn:
        longest = conn.execute(
            "SELECT max(expires_at - now()) FROM podyn.leases WHERE kind = 'stream shard' AND owner IS NOT NULL"
        ).fetchone()
    assert longest is not None and longest[0].total_seconds() <= float(LEASE)  # --lease-seconds reached --changes
    killed, paused, kept = processes
    for n in range(40):
        writer.round()
        if n == 5:
            writer.split(splitting)
        if n == 10:
            assert killed.process.pid in owning(pg_url)  # it had shards to lose
            assert killed.stop(signal.SIGKILL) == -signal.SIGKILL
        if n == 15:  # stopped for the next 25 rounds of 0.2 s and more: well past its 3 s lease
            wait_for(lambda: paused.process.pid in owning(pg_url), "the process to pause owns shards",
                     timeout=TIMEOUT, service=paused)  # fmt: skip
            paused.process.send_signal(signal.SIGSTOP)
        time.sleep(0.2)
    wait_for(lambda: paused.process.pid not in owning(pg_url), "the paused process's leases taken over",
             timeout=TIMEOUT, service=kept)  # fmt: skip
    paused.process.send_signal(signal.SIGCONT)
    for _ in range(10):
        writer.round()
        time.sleep(0.2)
    wait_applied(pg_url, script, [paused, kept])
    versions = assert_exactly_once(pg_url, table, script)
    assert versions >= len(writer.keys)
    assert sum(applied_by(p) > 0 for p in processes) >= 2, [applied_by(p) for p in processes]
    assert paused.stop() == 0 and kept.stop() == 0


def test_a_process_started_later_takes_a_fair_share(
    scripted: Scripted, stream_server: ScriptedStreamServer, pg_url: str, services: Any
) -> None:
    """One process reads all four shards; a second one started later ends with two of them, and both apply records
    (the stream is scripted at the HTTP boundary: DynamoDB Local keeps one shard)."""
    table, script = scripted(page_limit=5)
    writer = Writer(script, roots(script, 4, 3))
    first = start(services, pg_url, table, stream_server, "--lease-seconds", LEASE)
    wait_for(lambda: shares(pg_url) == [4], lambda: f"one process on 4 shards (now {shares(pg_url)})",
             timeout=TIMEOUT, service=first)  # fmt: skip
    writer.round()
    second = start(services, pg_url, table, stream_server, "--lease-seconds", LEASE)
    wait_for(lambda: shares(pg_url) == [2, 2], lambda: f"two shares of 2 (now {shares(pg_url)})",
             timeout=TIMEOUT, service=second)  # fmt: skip
    assert owning(pg_url) == {first.process.pid, second.process.pid}
    for _ in range(10):
        writer.round()
        time.sleep(0.2)
    wait_applied(pg_url, script, [first, second])
    assert target_rows(pg_url, table) == script.final_state()
    assert assert_counters_strictly_increase(pg_url) >= 12
    assert applied_by(second) > 0
    assert first.stop() == 0 and second.stop() == 0


def test_a_process_stopped_with_sigterm_hands_its_shards_back_at_once(
    scripted: Scripted, stream_server: ScriptedStreamServer, pg_url: str, services: Any
) -> None:
    """With 30 s leases, a process stopped with SIGTERM gives its shards back as it exits, and the other owns them
    well before their leases would have expired (the stream is scripted at the HTTP boundary: DynamoDB Local keeps
    one shard)."""
    table, script = scripted()
    writer = Writer(script, roots(script, 4, 2))
    first = start(services, pg_url, table, stream_server, "--lease-seconds", "30")
    second = start(services, pg_url, table, stream_server, "--lease-seconds", "30")
    wait_for(lambda: shares(pg_url) == [2, 2], lambda: f"two shares of 2 (now {shares(pg_url)})",
             timeout=TIMEOUT, service=second)  # fmt: skip
    with connect(pg_url) as conn:
        mine = conn.execute(
            "SELECT unit_id, expires_at FROM podyn.leases WHERE kind = 'stream shard' AND owner LIKE %s",
            (f"%:{first.process.pid}:%",),
        ).fetchall()
    assert len(mine) == 2
    assert first.stop(signal.SIGTERM) == 0
    with connect(pg_url) as conn:
        left = conn.execute(
            "SELECT unit_id FROM podyn.leases WHERE owner LIKE %s", (f"%:{first.process.pid}:%",)
        ).fetchall()
    assert left == []  # given back on the way out, not left to expire
    wait_for(lambda: shares(pg_url) == [4], lambda: f"the other process on all 4 shards (now {shares(pg_url)})",
             timeout=30, service=second)  # fmt: skip
    with connect(pg_url) as conn:
        now = conn.execute("SELECT now()").fetchone()
    assert now is not None and now[0] < min(expires for _, expires in mine)  # well before they would have expired
    writer.round()
    wait_applied(pg_url, script, [second])
    assert target_rows(pg_url, table) == script.final_state()
    assert second.stop() == 0


def test_a_child_shard_is_read_only_after_its_parent_is_finished(
    scripted: Scripted, stream_server: ScriptedStreamServer, pg_url: str, services: Any
) -> None:
    """A parent with a long backlog, read two records a call, and its two children, already split, each with
    records of the parent's keys: three processes, so the children have idle owners-to-be while the parent is read.
    Neither child is opened before the parent's finished checkpoint is committed, and every key's counter grows
    across the split (the stream is scripted at the HTTP boundary: DynamoDB Local keeps one shard)."""
    table, script = scripted(page_limit=2)
    writer = Writer(script, roots(script, 1, 6))
    parent = next(iter(writer.keys))
    for _ in range(15):
        writer.round()
    children = writer.split(parent)
    for _ in range(5):
        writer.round()
    processes = [start(services, pg_url, table, stream_server, "--lease-seconds", LEASE) for _ in range(3)]
    wait_applied(pg_url, script, processes)
    assert_exactly_once(pg_url, table, script)
    assert {c.shard_id for c in script.iterator_calls if c.parent_id == parent} == set(children)
    for process in processes:
        assert process.stop() == 0


def test_a_killed_process_s_shards_are_taken_over_before_its_lease_expires(
    scripted: Scripted, stream_server: ScriptedStreamServer, pg_url: str, services: Any
) -> None:
    """With 30 s leases, a process killed with SIGKILL leaves its presence lock with its connections: the other
    process takes all four shards well before the leases expire, instead of keeping to a share that still counts
    the dead one (the stream is scripted at the HTTP boundary: DynamoDB Local keeps one shard)."""
    table, script = scripted()
    writer = Writer(script, roots(script, 4, 2))
    first = start(services, pg_url, table, stream_server, "--lease-seconds", "30")
    second = start(services, pg_url, table, stream_server, "--lease-seconds", "30")
    wait_for(lambda: shares(pg_url) == [2, 2], lambda: f"two shares of 2 (now {shares(pg_url)})",
             timeout=TIMEOUT, service=second)  # fmt: skip
    with connect(pg_url) as conn:
        expiry = conn.execute(
            "SELECT min(expires_at) FROM podyn.leases WHERE kind = 'stream shard' AND owner LIKE %s",
            (f"%:{first.process.pid}:%",),
        ).fetchone()
    assert expiry is not None and expiry[0] is not None
    assert first.stop(signal.SIGKILL) == -signal.SIGKILL
    writer.round()
    wait_for(lambda: shares(pg_url) == [4], lambda: f"the other process on all 4 shards (now {shares(pg_url)})",
             timeout=30, service=second)  # fmt: skip
    with connect(pg_url) as conn:
        now = conn.execute("SELECT now()").fetchone()
    assert now is not None and now[0] < expiry[0]
    wait_applied(pg_url, script, [second])
    assert target_rows(pg_url, table) == script.final_state()
    assert second.stop() == 0


def test_a_process_paused_inside_its_commit_holds_up_neither_the_table_nor_its_shards(
    scripted: Scripted, stream_server: ScriptedStreamServer, pg_url: str, services: Any
) -> None:
    """A process stopped with SIGSTOP inside a batch's transaction, after it updated the table's row in podyn.tables
    (a trigger sleeps there on the batch with the 'freeze' key, and the process is stopped meanwhile), leaves its
    session idle in that transaction, holding that row and its shard's lease row locked. PostgreSQL ends the
    session once the lease is over, so the other process goes on applying its own shard and takes the paused one's
    over; when the paused one continues, its commit fails and nothing is applied twice (the stream is scripted at
    the HTTP boundary: DynamoDB Local keeps one shard)."""
    table, script = scripted()
    writer = Writer(script, roots(script, 2, 2))
    first = start(services, pg_url, table, stream_server, "--lease-seconds", LEASE)
    second = start(services, pg_url, table, stream_server, "--lease-seconds", LEASE)
    writer.round()
    wait_for(lambda: shares(pg_url) == [1, 1], lambda: f"one shard each (now {shares(pg_url)})",
             timeout=TIMEOUT, service=second)  # fmt: skip
    wait_applied(pg_url, script, [first, second])
    with connect(pg_url) as conn:  # sleeps in the transaction that writes the 'freeze' row
        conn.execute(
            f"""CREATE FUNCTION hold_up() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN
                  IF EXISTS (SELECT FROM "{table}" WHERE pk = 'freeze'
                             AND xmin::text::bigint = txid_current() % 4294967296) THEN
                    PERFORM pg_sleep(2);
                  END IF;
                  RETURN NEW;
                END $$;
                CREATE TRIGGER hold_up BEFORE UPDATE ON podyn.tables FOR EACH ROW EXECUTE FUNCTION hold_up();"""
        )
    shard, owner = sorted(owners(pg_url).items())[0]
    paused, other = (first, second) if owner_pid(owner) == first.process.pid else (second, first)
    script.put(shard, "freeze", 1)

    def sleeping() -> bool:
        with connect(pg_url) as conn:
            row = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE wait_event = 'PgSleep'").fetchone()
        return bool(row and row[0])

    wait_for(sleeping, "the batch with the 'freeze' key in its trigger", timeout=TIMEOUT, service=paused)
    paused.process.send_signal(signal.SIGSTOP)
    writer.round()  # records for both shards: the other process's own must apply while this one is stopped
    (own,) = [s for s in writer.keys if s != shard]
    applied = script.last_sequence(own)
    wait_for(lambda: checkpoints(pg_url).get(own, (None,))[0] == applied,
             "the other process applying its own shard", timeout=30, service=other)  # fmt: skip
    taken = f":{other.process.pid}:"
    wait_for(lambda: taken in owners(pg_url).get(shard, ""), lambda: f"the other process on {shard} ({owners(pg_url)})",
             timeout=30, service=other)  # fmt: skip
    paused.process.send_signal(signal.SIGCONT)
    for _ in range(5):
        writer.round()
        time.sleep(0.2)
    wait_applied(pg_url, script, [paused, other])
    assert_exactly_once(pg_url, table, script, splits=False)
    assert paused.stop() == 0 and other.stop() == 0


def test_both_children_of_a_split_are_read_soon_after_their_parent_finishes(
    scripted: Scripted, stream_server: ScriptedStreamServer, pg_url: str, services: Any
) -> None:
    """Two processes: the first reads shard R, the second the parent P (R was opened first, so the first keeps it
    when the second joins). P splits: the second process, whose share is then one shard, takes one child; the other
    child is the first process's to take, which learns of it only from a listing of its own. Both children are
    opened within a few lease heartbeats (1 s here) of the parent's finished checkpoint, not at the first process's
    next periodic listing (every 30 s). The stream is scripted at the HTTP boundary: DynamoDB Local keeps one shard."""
    table, script = scripted()
    writer = Writer(script, roots(script, 2, 4))
    rest, parent = list(writer.keys)
    first = start(services, pg_url, table, stream_server, "--lease-seconds", LEASE)
    wait_for(lambda: shares(pg_url) == [2], lambda: f"one process on both shards (now {shares(pg_url)})",
             timeout=TIMEOUT, service=first)  # fmt: skip
    second = start(services, pg_url, table, stream_server, "--lease-seconds", LEASE)
    wait_for(lambda: f":{second.process.pid}:" in owners(pg_url).get(parent, ""),
             lambda: f"the second on the parent (now {owners(pg_url)})", timeout=TIMEOUT, service=second)  # fmt: skip
    writer.round()
    children = writer.split(parent)
    writer.round()
    wait_for(lambda: checkpoints(pg_url).get(parent, (None, False))[1], "the parent finished",
             timeout=TIMEOUT, service=second)  # fmt: skip
    wait_for(lambda: all(script.iterators_on(c) for c in children), lambda: f"both children opened ({owners(pg_url)})",
             timeout=12, service=first)  # fmt: skip
    wait_applied(pg_url, script, [first, second])
    assert_exactly_once(pg_url, table, script)
    assert {owner_pid(owners(pg_url)[c]) for c in [rest, *children]} == {first.process.pid, second.process.pid}
    assert first.stop() == 0 and second.stop() == 0


def test_one_command_with_two_processes_shares_the_shards(
    scripted: Scripted, stream_server: ScriptedStreamServer, pg_url: str, services: Any
) -> None:
    """``podyn -c -P 2``: the command's two processes take two of the four shards each and apply every record once;
    SIGTERM to the command reaches both, which give their shards back (the stream is scripted at the HTTP boundary:
    DynamoDB Local keeps one shard)."""
    table, script = scripted()
    writer = Writer(script, roots(script, 4, 2))
    command = start(services, pg_url, table, stream_server, "-P", "2", "--lease-seconds", LEASE)
    children: set[int] = set()
    try:
        wait_for(lambda: shares(pg_url) == [2, 2], lambda: f"two shares of 2 (now {shares(pg_url)})",
                 timeout=TIMEOUT, service=command)  # fmt: skip
        children = owning(pg_url)
        assert len(children) == 2 and command.process.pid not in children
        for _ in range(5):
            writer.round()
            time.sleep(0.2)
        wait_applied(pg_url, script, [command])
        assert_exactly_once(pg_url, table, script, splits=False)
        assert command.stop() == 0
        with connect(pg_url) as conn:
            held = conn.execute("SELECT count(*) FROM podyn.leases WHERE owner IS NOT NULL").fetchone()
        assert held == (0,)
    finally:
        for pid in children:  # the command's own processes, should it have died without stopping them
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
