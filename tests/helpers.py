"""Helpers shared by test modules: ``from helpers import ...`` (pytest puts tests/ on sys.path).

Running podyn: ``podyn(ddb_server, url, ...)`` runs the CLI once and returns its result, ``assert_exit(result)`` checks
its exit code; ``Service`` is podyn left running in the background (the ``services`` fixture in conftest starts and
cleans them up). Waiting: ``wait_for`` polls any condition within a deadline; ``wait_for_state`` waits for the state
podyn stored in ``podyn.tables``, ``wait_for_status`` for what ``--status`` shows, ``wait_equal`` for PostgreSQL to
hold exactly what DynamoDB holds. Each wait fails with what it last saw, and at once when the service it waits on
has exited.
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, NamedTuple, Protocol, TypeVar

import psycopg
from oracle import connect, table_differences
from psycopg import sql

REPO_ROOT = Path(__file__).resolve().parent.parent

#: The stream view type the change tests use unless they test another.
STREAM = "NEW_AND_OLD_IMAGES"

T = TypeVar("T")


class HasEndpoint(Protocol):
    """A DynamoDB endpoint: the ``ddb_server`` fixture, or the throttling proxy in front of it."""

    @property
    def endpoint_url(self) -> str: ...


def run_podyn(
    *args: str,
    env: Mapping[str, str] | None = None,
    timeout: float = 120,
    cwd: Path | str | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m podyn_py ARGS`` in a subprocess and capture its output; never raises on exit codes.

    ``env`` is added to (and overrides) the current environment, which conftest has pointed at the local
    credentials; it does not replace it, so PATH and the AWS variables stay in place.
    """
    return subprocess.run(
        [sys.executable, "-m", "podyn_py", *args],
        env={**os.environ, **(env or {})},
        cwd=cwd if cwd is not None else REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def podyn(
    dynamodb: HasEndpoint | str,
    url: str | None,
    *args: str,
    env: Mapping[str, str] | None = None,
    timeout: float = 120,
) -> subprocess.CompletedProcess[str]:
    """``podyn --endpoint-url E [-u URL] --no-progress ARGS`` run once; never raises on exit codes (see assert_exit).

    ``dynamodb`` is the endpoint (a ``ddb_server``, a proxy, or its URL); ``url`` None leaves ``-u`` out.
    """
    endpoint = dynamodb if isinstance(dynamodb, str) else dynamodb.endpoint_url
    target = ["-u", url] if url is not None else []
    return run_podyn("--endpoint-url", endpoint, *target, "--no-progress", *args, env=env, timeout=timeout)


def assert_exit(result: subprocess.CompletedProcess[str], code: int = 0) -> subprocess.CompletedProcess[str]:
    """Fail with podyn's stdout and stderr unless it exited with ``code``; return the result for more checks."""
    assert result.returncode == code, (
        f"exit {result.returncode}, expected {code}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    )
    return result


class Service:
    """``podyn --changes`` (and whatever else is asked) running in the background, its log in a file."""

    def __init__(self, endpoint: str, url: str, tables: str, log: Path, *args: str) -> None:
        self.log = log
        command = [sys.executable, "-m", "podyn_py", "--endpoint-url", endpoint, "-u", url, "-t", tables]
        command += ["--no-progress", *args]
        self._log_file = open(log, "w")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(command, cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=self._log_file)

    def text(self) -> str:
        return self.log.read_text()

    def assert_running(self) -> None:
        """Fail with the log if the service has exited: nothing it was meant to do will happen any more."""
        code = self.process.poll()
        assert code is None, f"service exited ({code}):\n{self.text()}"

    def wait_for_log(self, needle: str, timeout: float = 30) -> None:
        """Wait for a log line. Only for what leaves no trace in the databases (a retry, standing by): a state
        podyn stores is waited on with ``wait_for_state``."""
        wait_for(lambda: needle in self.text(), f"{needle!r} logged", timeout=timeout, service=self)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15) -> int:
        """Send ``sig`` unless it has exited, wait for the exit code, close the log."""
        if self.process.poll() is None:
            self.process.send_signal(sig)
        try:
            code = self.process.wait(timeout)
        finally:
            self._log_file.close()
        if code != 0:  # shown with the test's failure, when a test asserts a clean exit
            sys.stderr.write(f"podyn exited with {code}; the end of its log:\n{self.text()[-6000:]}\n")
        return code


def wait_for(
    condition: Callable[[], T],
    what: str | Callable[[], str],
    *,
    timeout: float = 30,
    service: Service | None = None,
) -> T:
    """Poll ``condition`` until it returns something truthy and return that; fail after ``timeout`` seconds saying
    ``what`` was awaited (a callable is asked then, to tell what was last seen), or at once (with its log) if
    ``service`` has exited."""
    deadline = time.monotonic() + timeout
    while not (found := condition()):
        if service is not None:
            service.assert_running()
        if time.monotonic() >= deadline:
            described = what() if callable(what) else what
            log = f"\nservice log:\n{service.text()}" if service is not None else ""
            raise AssertionError(f"{described}: not after {timeout} s{log}")
        time.sleep(0.1)
    return found


def stored_state(url: str, table: str) -> str | None:
    """The state podyn stored for ``table`` in ``podyn.tables``; None when there is no row (or no podyn schema)."""
    try:
        with connect(url) as conn:
            row = conn.execute("SELECT state FROM podyn.tables WHERE source_table = %s", (table,)).fetchone()
    except psycopg.errors.UndefinedTable:
        return None
    return None if row is None else str(row[0])


def wait_for_state(url: str, table: str, state: str, *, timeout: float = 30, service: Service | None = None) -> None:
    """Wait until ``podyn.tables`` says ``table`` is ``state`` (committed: what another session sees)."""
    seen: list[str | None] = []

    def reached() -> bool:
        seen.append(stored_state(url, table))
        return seen[-1] == state

    wait_for(
        reached, lambda: f"{table} stored as {state!r} (last seen: {seen[-1]!r})", timeout=timeout, service=service
    )


def status_with_exit(dynamodb: HasEndpoint | str, url: str, table: str) -> tuple[dict[str, Any], int]:
    """``podyn --status --json -t TABLE``: the table's record and the exit code (0, or 3 when it is not well)."""
    result = podyn(dynamodb, url, "--status", "--json", "-t", table)
    assert result.returncode in (0, 3), f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    tables = json.loads(result.stdout)["tables"]
    assert len(tables) == 1, result.stdout
    record: dict[str, Any] = tables[0]
    return record, result.returncode


def status_record(dynamodb: HasEndpoint | str, url: str, table: str) -> dict[str, Any]:
    """What ``--status --json`` shows for ``table``."""
    return status_with_exit(dynamodb, url, table)[0]


def wait_for_status(
    dynamodb: HasEndpoint | str, url: str, table: str, state: str, *, timeout: float = 60
) -> tuple[dict[str, Any], int]:
    """Wait until ``--status`` shows ``table`` as ``state``, which may be derived (``not running``, ``target
    missing``) rather than stored; return the record and the exit code. Until podyn has recorded the table,
    ``--status`` may list nothing: that is waited through; anything else but one record and exit 0 or 3 fails."""
    last: list[str] = []

    def shown() -> tuple[dict[str, Any], int] | None:
        result = podyn(dynamodb, url, "--status", "--json", "-t", table)
        last[:] = [f"exit {result.returncode}\n{result.stdout}{result.stderr}"]
        tables = json.loads(result.stdout)["tables"] if result.stdout.strip() else []
        if not tables:
            return None
        assert len(tables) == 1 and result.returncode in (0, 3), last[0]
        record: dict[str, Any] = tables[0]
        return (record, result.returncode) if record["state"] == state else None

    found = wait_for(shown, lambda: f"--status showing {table} as {state!r} (last: {last[0]})", timeout=timeout)
    assert found is not None
    return found


def wait_equal(
    ddb: Any, url: str, table: str, *, schema: str = "public", timeout: float = 30, service: Service | None = None
) -> None:
    """Wait until PostgreSQL holds exactly what DynamoDB holds for ``table``, by the independent oracle."""
    problems: list[str] = []

    def equal() -> bool:
        problems[:] = table_differences(ddb, url, table, schema=schema)
        return not problems

    wait_for(equal, lambda: f"{table} equal (differences: {problems[:5]})", timeout=timeout, service=service)


def add_audit(url: str, table: str) -> None:
    """Log every row version PostgreSQL receives for ``table``: key, counter, operation."""
    with connect(url) as conn:
        conn.execute(
            sql.SQL(
                """CREATE TABLE audit (pk text, counter numeric, op text, n bigserial);
                   CREATE FUNCTION audit_row() RETURNS trigger LANGUAGE plpgsql AS $$
                   BEGIN INSERT INTO audit (pk, counter, op) VALUES (NEW.pk, NEW.counter, TG_OP); RETURN NEW; END $$;
                   CREATE TRIGGER audit AFTER INSERT OR UPDATE ON {} FOR EACH ROW EXECUTE FUNCTION audit_row();"""
            ).format(sql.Identifier(table))
        )


def audited_rows(url: str) -> int:
    """How many row versions the audit trigger logged so far."""
    with connect(url) as conn:
        row = conn.execute("SELECT count(*) FROM audit").fetchone()
    assert row is not None
    return int(row[0])


def assert_counters_strictly_increase(url: str) -> int:
    """Every key's counter grows from one logged row version to the next: no change applied twice or out of order."""
    with connect(url) as conn:
        rows = conn.execute("SELECT pk, counter FROM audit ORDER BY n").fetchall()
    last: dict[str, Any] = {}
    for pk, counter in rows:
        assert counter is not None
        assert pk not in last or counter > last[pk], f"{pk}: counter {counter} applied after {last[pk]}"
        last[pk] = counter
    return len(rows)


def increment(ddb: Any, table: str, key: str) -> None:
    """One write to DynamoDB that adds 1 to the item's counter."""
    ddb.update_item(
        TableName=table,
        Key={"pk": {"S": key}},
        UpdateExpression="ADD #c :one SET touched = :now",
        ExpressionAttributeNames={"#c": "counter"},
        ExpressionAttributeValues={":one": {"N": "1"}, ":now": {"N": str(time.time())}},
    )


def fresh() -> str:
    """A DynamoDB table name short enough to be the PostgreSQL table's name as it is."""
    return f"meta_{uuid.uuid4().hex[:12]}"


def items(count: int, prefix: str = "k", *, value: int = 0) -> list[dict[str, Any]]:
    """``count`` small items keyed ``pk`` = prefix + i, with a number ``v`` and a string ``s``."""
    return [{"pk": {"S": f"{prefix}{i}"}, "v": {"N": str(i + value)}, "s": {"S": f"x{i}"}} for i in range(count)]


def row_count(url: str, table: str, schema: str = "public") -> int:
    with connect(url) as conn:
        row = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(schema, table))).fetchone()
    assert row is not None
    return int(row[0])


def column_names(url: str, table: str) -> set[str]:
    with connect(url) as conn:
        rows = conn.execute(
            "SELECT attname FROM pg_attribute WHERE attrelid = to_regclass(%s) AND attnum > 0 AND NOT attisdropped",
            (sql.Identifier("public", table).as_string(conn),),
        ).fetchall()
    return {r[0] for r in rows}


def recreate(ddb: Any, create_table: Any, table: str, **kwargs: Any) -> None:
    """Delete DynamoDB table ``table`` and create it again under the same name (``create_table`` arguments)."""
    ddb.delete_table(TableName=table)
    deadline = time.monotonic() + 30
    while table in ddb.list_tables()["TableNames"]:
        assert time.monotonic() < deadline, "the table was not deleted"
        time.sleep(0.05)
    create_table(name=table, **kwargs)


# -- many processes sharing a table's work units (issue 12) -----------------------------------------------------


def worker_prefix(pid: int) -> str:
    """The start of the name podyn's process ``pid`` goes by as an owner of leases (``units.worker_id``:
    host, pid and a random part)."""
    return f"{socket.gethostname()}:{pid}:"


def owner_pid(owner: str | None) -> int | None:
    """The pid in a lease owner's name (None for a free lease)."""
    return None if owner is None else int(owner.split(":")[-2])


class Unit(NamedTuple):
    """A row of ``podyn.units`` for one scan segment."""

    segment: int
    owner: str | None
    generation: int | None
    items: int
    done: bool
    lease_expires_at: Any
    #: Seconds since the lease expired, by the database's clock (negative while it runs; None without an owner).
    overdue: float | None


def segment_units(url: str, table: str) -> list[Unit]:
    """The scan segments of DynamoDB table ``table`` as ``podyn.units`` shows them, by segment number."""
    try:
        with connect(url) as conn:
            rows = conn.execute(
                """SELECT u.unit_id::int, u.owner, u.generation, u.items, u.done, u.lease_expires_at,
                          CASE WHEN u.owner IS NOT NULL
                               THEN extract(epoch FROM clock_timestamp() - u.lease_expires_at)::float8 END
                   FROM podyn.units u JOIN podyn.tables t USING (target_schema, target_table)
                   WHERE t.source_table = %s AND u.kind = 'scan segment' ORDER BY 1""",
                (table,),
            ).fetchall()
    except psycopg.errors.UndefinedTable:
        return []
    return [Unit(*row) for row in rows]


class UnitWatcher:
    """Watches a table's segments in ``podyn.units`` (every ``interval`` s, in a thread) and credits each
    lease owner with the items its segments gained while it held them: which processes committed pages.

    Items gained between two looks at a segment whose lease generation did not change were committed by that
    generation's owner (a release keeps the generation, a claim bumps it); across a claim they are not credited.
    """

    def __init__(self, url: str, table: str, interval: float = 0.1) -> None:
        self.url, self.table, self.interval = url, table, interval
        self.committed: collections.Counter[str] = collections.Counter()
        #: Every (segment, generation) → owner seen.
        self.owners: dict[tuple[int, int], str] = {}
        self.last: dict[int, Unit] = {}
        #: The longest a lease was seen expired while its owner still held it (seconds).
        self.overdue = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="unit-watcher", daemon=True)
        self._lock = threading.Lock()

    def __enter__(self) -> UnitWatcher:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.look()  # the last commits

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.look()

    def look(self) -> list[Unit]:
        now = segment_units(self.url, self.table)
        with self._lock:
            for unit in now:
                if unit.overdue is not None:
                    self.overdue = max(self.overdue, unit.overdue)
                if unit.owner is not None and unit.generation is not None:
                    self.owners[(unit.segment, unit.generation)] = unit.owner
                before = self.last.get(unit.segment)
                gained = unit.items - (before.items if before else 0)
                if gained and before is not None and before.generation == unit.generation:
                    owner = self.owners.get((unit.segment, unit.generation or 0))
                    if owner is not None:
                        self.committed[owner] += gained
                self.last[unit.segment] = unit
        return now

    def committers(self) -> set[int]:
        """The pids of the processes credited with committed items."""
        with self._lock:
            return {pid for owner, n in self.committed.items() if n and (pid := owner_pid(owner)) is not None}

    def held_by_any(self) -> list[Unit]:
        """The unfinished segments leased (live or expired) at the last look."""
        with self._lock:
            return [u for u in self.last.values() if not u.done and u.owner is not None]

    def held_by(self, pid: int) -> list[Unit]:
        """The unfinished segments whose lease (live or expired) process ``pid`` held at the last look."""
        with self._lock:
            return [u for u in self.last.values() if not u.done and owner_pid(u.owner) == pid]


def loaded_items(url: str, table: str) -> int:
    """The items committed so far by the load of DynamoDB table ``table`` (its segments' counts)."""
    return sum(unit.items for unit in segment_units(url, table))


def backends_in_transaction(url: str, pid: int, *, statement: str = "") -> list[str]:
    """The states of the PostgreSQL backends that process ``pid``'s TCP connections are served by, except the
    idle ones: a process stopped while one is listed is stopped in the middle of a transaction. With ``statement``,
    only those whose last statement began so (``COPY``: a page's transaction)."""
    ports = _local_tcp_ports(pid)
    with connect(url) as conn:
        rows = conn.execute(
            """SELECT state || coalesce(' ' || wait_event, '') || ': ' || left(query, 60) FROM pg_stat_activity
               WHERE client_port = ANY(%s) AND state IS DISTINCT FROM 'idle' AND starts_with(query, %s)""",
            (sorted(ports), statement),
        ).fetchall()
    return [str(r[0]) for r in rows]


def _local_tcp_ports(pid: int) -> set[int]:
    """The local ports of process ``pid``'s TCP sockets, from /proc (Linux)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            target = os.readlink(fd)
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError), open(table) as lines:
            next(lines)
            for line in lines:
                fields = line.split()
                if fields[9] in inodes:
                    ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports
