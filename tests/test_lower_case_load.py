"""``-lc`` with attributes ``Id``, ``id`` and ``ID``: the same column names in every run, whatever comes first.

Issue 10, case 5: parallel segments used to race for the name ``id``. Real CLI, DynamoDB Local and PostgreSQL.
A fresh load meets the three attributes in whatever order the segments run; the arrival orders that can be forced
are forced with a first load of some items and a ``--data --reload`` (or ``--changes``) bringing the others, which
makes podyn rename the column the first attribute took.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import REPO_ROOT, run_podyn
from oracle import connect
from psycopg import sql

from podyn_py.core.naming import name_tag
from podyn_py.local import LocalPostgres

SPELLINGS = ("Id", "id", "ID")
EXPECTED = {"id": "id", "Id": "id_" + name_tag("Id"), "ID": "id_" + name_tag("ID")}


def items(spellings: tuple[str, ...], count: int = 48, start: int = 0) -> list[dict[str, Any]]:
    """Items each carrying one spelling (its value names it, to check it lands in the right column)."""
    return [
        {"pk": {"S": f"k{i}"}, (s := spellings[i % len(spellings)]): {"S": f"{s}-{i}"}, "Other": {"N": str(i)}}
        for i in range(start, start + count)
    ]


def short() -> str:
    """A table name within PostgreSQL's 63 bytes, so the target table has the same name."""
    return f"lc_{uuid.uuid4().hex[:12]}"


@pytest.fixture
def fresh_db(pg_server: LocalPostgres) -> Iterator[Any]:
    """A factory of fresh empty databases, dropped afterwards."""
    made: list[str] = []

    def make() -> str:
        name = f"lc_{uuid.uuid4().hex[:12]}"
        made.append(name)
        return pg_server.create_database(name)

    yield make
    with connect(pg_server.url) as conn:
        conn.autocommit = True
        for name in made:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def podyn(ddb_server: Any, url: str, table: str, *args: str) -> subprocess.CompletedProcess[str]:
    result = run_podyn("--endpoint-url", ddb_server.endpoint_url, "--no-progress", "-u", url, "-t", table, *args)
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    return result


def mapping(url: str) -> dict[str, str]:
    with connect(url) as conn:
        rows = conn.execute("SELECT attribute_name, column_name FROM podyn.columns WHERE NOT variant").fetchall()
    return {a: c for a, c in rows if a in SPELLINGS}


def assert_rows_in_their_columns(url: str, table: str) -> None:
    """Each item's value is in its own attribute's column, and the other spellings' columns are NULL there."""
    with connect(url) as conn:
        rows = conn.execute(
            sql.SQL("SELECT {}, {}, {} FROM {}").format(
                *(sql.Identifier(EXPECTED[s]) for s in SPELLINGS), sql.Identifier(table)
            )  # fmt: skip
        ).fetchall()
    assert rows
    for row in rows:
        (present,) = [(s, v) for s, v in zip(SPELLINGS, row, strict=True) if v is not None]
        assert present[1].startswith(present[0] + "-"), row


def assert_verified(ddb_server: Any, url: str, table: str) -> None:
    (report,) = json.loads(podyn(ddb_server, url, table, "--verify", "--json", "--segments", "4").stdout)
    assert report["differences"] == [], report


def test_parallel_loads_give_the_same_names_every_time(ddb_server: Any, create_table: Any, fresh_db: Any) -> None:
    table = create_table(name=short(), items=items(SPELLINGS))
    for _ in range(3):
        url = fresh_db()
        podyn(ddb_server, url, table, "-s", "-d", "-lc", "-n", "4", "--segments", "8")
        assert mapping(url) == EXPECTED
        assert_rows_in_their_columns(url, table)
    assert_verified(ddb_server, url, table)


@pytest.mark.parametrize(
    ("first", "then"),
    [(("Id",), ("id", "ID")), (("id",), ("Id", "ID")), (("ID", "Id"), ("id",)), (("Id",), ("ID",))],
    ids=lambda s: "+".join(s),
)
def test_later_arrival_renames_the_column(
    ddb_server: Any, ddb: Any, create_table: Any, fresh_db: Any, first: tuple[str, ...], then: tuple[str, ...]
) -> None:
    table = create_table(name=short(), items=items(first, 24))
    url = fresh_db()
    podyn(ddb_server, url, table, "-s", "-d", "-lc", "-n", "4", "--segments", "8")
    if first == ("Id",):
        assert mapping(url) == {"Id": "id"}  # alone, it is lowercased: what -lc is for
    for item in items(then, 24, start=100):
        ddb.put_item(TableName=table, Item=item)
    result = podyn(ddb_server, url, table, "-d", "--reload", "-lc", "-n", "4", "--segments", "8")
    seen = set(first) | set(then)
    assert mapping(url) == {s: EXPECTED[s] for s in seen}  # as a fresh load of them all gives
    if first == ("Id",):  # it had taken id, and now shares the name with another spelling
        assert "renamed column" in result.stderr
        with connect(url) as conn:
            generation = conn.execute("SELECT mapping_generation FROM podyn.tables").fetchone()
        assert generation is not None and generation[0] >= 1
    assert_verified(ddb_server, url, table)


def test_id_arriving_by_changes_renames_and_keeps_every_value(
    ddb_server: Any, ddb: Any, create_table: Any, fresh_db: Any, tmp_path: Path
) -> None:
    table = create_table(name=short(), stream_view_type="NEW_AND_OLD_IMAGES", items=items(("Id",), 20))
    url = fresh_db()
    podyn(ddb_server, url, table, "-s", "-d", "-lc", "-n", "2", "--segments", "4")
    assert mapping(url) == {"Id": "id"}
    log = tmp_path / "changes.log"
    command = [sys.executable, "-m", "podyn_py", "--endpoint-url", ddb_server.endpoint_url, "-u", url, "-t", table,
               "--no-progress", "-c", "-lc"]  # fmt: skip
    with open(log, "w") as log_file:
        service = subprocess.Popen(command, cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=log_file)
        try:
            for item in items(("id", "Id"), 10, start=100):
                ddb.put_item(TableName=table, Item=item)
            deadline = time.monotonic() + 60
            while True:
                with connect(url) as conn:
                    row = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(table))).fetchone()
                if row is not None and row[0] == 30:
                    break
                assert service.poll() is None, log.read_text()
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(0.2)
        finally:
            service.send_signal(signal.SIGTERM)
            code = service.wait(15)
    assert code == 0, log.read_text()
    assert "renamed column" in log.read_text()
    assert mapping(url) == {"id": "id", "Id": "id_" + name_tag("Id")}
    with connect(url) as conn:
        rows = conn.execute(
            sql.SQL("SELECT {}, {} FROM {}").format(
                sql.Identifier("id"), sql.Identifier("id_" + name_tag("Id")), sql.Identifier(table)
            )  # fmt: skip
        ).fetchall()
    assert sorted(rows, key=str) == sorted(
        [(None, f"Id-{i}") for i in range(20)] + [(f"id-{i}", None) if i % 2 == 0 else (None, f"Id-{i}")
                                                  for i in range(100, 110)], key=str)  # fmt: skip
    assert_verified(ddb_server, url, table)
