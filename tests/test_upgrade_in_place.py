"""Issue 12: upgrade in place. Tables loaded and streams followed by the release before work units continue under
this code: the metadata migrates, a load it left half done resumes where its committed pages end, and change
replication continues from its checkpoints.

The release before is run as it was: ``podyn_py`` from commit OLD_COMMIT of this repository (``git archive``,
skipped where the history does not hold it), imported ahead of this tree through PYTHONPATH, against the same
DynamoDB Local and PostgreSQL.
"""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from helpers import (
    REPO_ROOT,
    STREAM,
    add_audit,
    assert_counters_strictly_increase,
    assert_exit,
    fresh,
    increment,
    podyn,
    wait_equal,
    wait_for,
    wait_for_state,
)
from oracle import connect, table_differences
from psycopg import sql

from podyn_py.target.state import SCHEMA_VERSION

#: main before issue 12 (work units): its metadata has no leases, its table lock is exclusive.
OLD_COMMIT = "acd9085"
COUNT = 3000


@pytest.fixture(scope="module")
def old_podyn(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory holding podyn_py as of OLD_COMMIT."""
    try:
        archive = subprocess.run(
            ["git", "-C", str(REPO_ROOT), "archive", OLD_COMMIT, "podyn_py"], capture_output=True, check=True
        ).stdout
    except (OSError, subprocess.CalledProcessError) as exc:
        pytest.skip(f"commit {OLD_COMMIT} is not in this checkout's history: {exc}")
    root = tmp_path_factory.mktemp("old-podyn")
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(root, filter="data")
    assert not (root / "podyn_py" / "units.py").exists(), "not the release before work units"
    return root


def old_command(old: Path, endpoint: str, url: str, *args: str) -> list[str]:
    return [sys.executable, "-m", "podyn_py", "--endpoint-url", endpoint, "-u", url, "--no-progress", *args]


def old_env(old: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(old)}


def run_old(old: Path, endpoint: str, url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        old_command(old, endpoint, url, *args),
        cwd=old,
        env=old_env(old),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.fixture
def background(tmp_path: Path) -> Iterator[list[subprocess.Popen[bytes]]]:
    """Processes the test starts; killed at the end if still running."""
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for process in started:
        if process.poll() is None:
            process.kill()
            process.wait(10)


def schema_version(url: str) -> int:
    with connect(url) as conn:
        row = conn.execute("SELECT version FROM podyn.schema_version").fetchone()
    assert row is not None
    return int(row[0])


def committed_items(url: str, table: str) -> int:
    try:
        with connect(url) as conn:
            row = conn.execute(
                """SELECT coalesce(sum(s.items_loaded), 0) FROM podyn.segments s
                   JOIN podyn.tables t USING (target_schema, target_table) WHERE t.source_table = %s""",
                (table,),
            ).fetchone()
    except psycopg.errors.UndefinedTable:
        return 0
    return int(row[0]) if row else 0


def add_insert_log(url: str, table: str) -> None:
    """Log every row version of ``table`` (key, operation) in ``inserted``: a page written twice logs UPDATE."""
    with connect(url) as conn:
        conn.execute(
            sql.SQL(
                """CREATE TABLE inserted (pk text, op text);
                   CREATE FUNCTION inserted_row() RETURNS trigger LANGUAGE plpgsql AS $$
                   BEGIN INSERT INTO inserted VALUES (NEW.pk, TG_OP); RETURN NEW; END $$;
                   CREATE TRIGGER inserted AFTER INSERT OR UPDATE ON {} FOR EACH ROW EXECUTE FUNCTION inserted_row();"""
            ).format(sql.Identifier(table))
        )


def table_record(url: str, table: str) -> tuple[Any, ...]:
    with connect(url) as conn:
        row = conn.execute(
            "SELECT state, items_loaded, changes_applied FROM podyn.tables WHERE source_table = %s", (table,)
        ).fetchone()
    assert row is not None
    return tuple(row)


def checkpoints(url: str, table: str) -> dict[str, tuple[int, int]]:
    """Shard id → (sequence number, records applied) of the table's shards."""
    with connect(url) as conn:
        rows = conn.execute(
            """SELECT h.shard_id, h.sequence_number::numeric, h.records_applied FROM podyn.shards h
               JOIN podyn.tables t USING (target_schema, target_table)
               WHERE t.source_table = %s AND h.sequence_number IS NOT NULL""",
            (table,),
        ).fetchall()
    return {str(shard): (int(sequence), int(records)) for shard, sequence, records in rows}


def test_a_half_load_and_a_followed_stream_of_the_release_before_continue_under_work_units(
    ddb_server: Any,
    ddb: Any,
    pg_url: str,
    create_table: Any,
    old_podyn: Path,
    background: list[subprocess.Popen[bytes]],
    tmp_path: Path,
) -> None:
    endpoint = ddb_server.endpoint_url
    half = create_table(
        name=fresh(), items=[{"pk": {"S": f"h{i:05d}"}, "pad": {"S": "p" * 1000}} for i in range(COUNT)]
    )
    followed = create_table(
        name=fresh(), items=[{"pk": {"S": f"k{i}"}, "counter": {"N": "0"}} for i in range(60)], stream_view_type=STREAM
    )

    # The release before: a load killed half way ...
    done = run_old(old_podyn, endpoint, pg_url, "-s", "-t", half)
    assert done.returncode == 0, done.stderr
    add_insert_log(pg_url, half)
    with (tmp_path / "old-load.log").open("w") as err:
        loading = subprocess.Popen(
            old_command(old_podyn, endpoint, pg_url, "-d", "-t", half, "--scan-rate", "40", "--segments", "8"),
            cwd=old_podyn,
            env=old_env(old_podyn),
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
    background.append(loading)
    wait_for(lambda: committed_items(pg_url, half) >= 300, "the old load committing pages", timeout=90)
    loading.send_signal(signal.SIGKILL)
    assert loading.wait(10) == -signal.SIGKILL
    before_upgrade = committed_items(pg_url, half)
    assert before_upgrade < COUNT, "the old load finished before it could be killed"

    # ... and a table loaded and followed with --changes until it was live and equal, then stopped.
    with (tmp_path / "old-changes.log").open("w") as err:
        following = subprocess.Popen(
            old_command(old_podyn, endpoint, pg_url, "-s", "-d", "-c", "-t", followed),
            cwd=old_podyn,
            env=old_env(old_podyn),
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
    background.append(following)
    wait_for_state(pg_url, followed, "live", timeout=90)
    add_audit(pg_url, followed)
    for i in range(20):
        increment(ddb, followed, f"k{i}")
    wait_equal(ddb, pg_url, followed, timeout=60)
    following.send_signal(signal.SIGTERM)
    assert following.wait(30) == 0, (tmp_path / "old-changes.log").read_text()
    old_version = schema_version(pg_url)
    assert old_version < SCHEMA_VERSION
    old_checkpoints = checkpoints(pg_url, followed)
    assert old_checkpoints, "the release before recorded no checkpoint"
    applied_before = table_record(pg_url, followed)[2]
    for i in range(20, 40):  # written while no podyn runs: for the new code to apply, once
        increment(ddb, followed, f"k{i}")

    # This code: the metadata migrates, the half load resumes where it stopped.
    resumed = assert_exit(podyn(ddb_server, pg_url, "-d", "-t", half, "--lease-seconds", "3"))
    assert "migrated from version" in resumed.stderr, resumed.stderr
    assert schema_version(pg_url) == SCHEMA_VERSION
    assert "resuming an interrupted load" in resumed.stderr, resumed.stderr
    assert "continues after its last committed page" in resumed.stderr, resumed.stderr
    assert table_record(pg_url, half)[:2] == ("loaded", COUNT)
    with connect(pg_url) as conn:
        logged = conn.execute(
            "SELECT count(*), count(DISTINCT pk), count(*) FILTER (WHERE op <> 'INSERT') FROM inserted"
        )
        assert logged.fetchone() == (COUNT, COUNT, 0), "a page was loaded twice: a position was lost"
    assert table_differences(ddb, pg_url, half) == []

    # The stream continues from the checkpoints: only the 20 writes made since are applied, once each.
    with (tmp_path / "new-changes.log").open("w") as err:
        catching_up = subprocess.Popen(
            [sys.executable, "-m", "podyn_py", "--endpoint-url", endpoint, "-u", pg_url, "--no-progress"]
            + ["-c", "-t", followed, "--lease-seconds", "3"],
            cwd=REPO_ROOT,
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
    background.append(catching_up)
    wait_equal(ddb, pg_url, followed, timeout=90)
    deadline = time.monotonic() + 30
    while table_record(pg_url, followed)[2] < applied_before + 20 and time.monotonic() < deadline:
        time.sleep(0.2)
    catching_up.send_signal(signal.SIGTERM)
    assert catching_up.wait(30) == 0, (tmp_path / "new-changes.log").read_text()
    assert table_record(pg_url, followed)[2] - applied_before == 20, "changes replayed again, or missed"
    new_checkpoints = checkpoints(pg_url, followed)
    for shard, (sequence, records) in old_checkpoints.items():
        assert shard in new_checkpoints, f"shard {shard}'s checkpoint was dropped"
        assert new_checkpoints[shard][0] >= sequence and new_checkpoints[shard][1] >= records
    assert assert_counters_strictly_increase(pg_url) == 40  # the 20 old and 20 new writes, each once
    assert table_differences(ddb, pg_url, followed) == []
