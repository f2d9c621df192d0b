"""``--config podyn.toml`` through the real CLI against DynamoDB Local and PostgreSQL (issue 15, item 5): each
table's section really reaches its load (target, conversion mode, lower case, scan rate, segments), and flags win.

What the load asked DynamoDB for is read from the requests themselves: DynamoDB Local sits behind the test proxy
(tests/proxy.py), which records each Scan's body (TableName, Limit, TotalSegments). A paced scan asks for pages of
about a second of its budget (16 items at 2 RCU/s and one connection, for items guessed at 1 KB); an unpaced one
for 1,000.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from helpers import assert_exit, fresh, podyn
from oracle import connect, table_differences

CONFIG = """\
scan_rate = 2        # paced, unless a table says otherwise
segments = 2

[tables.{a}]
target = "a_copy"
conversion_mode = "jsonb"
scan_rate = 0        # unpaced

[tables.{b}]
target = "app.b_copy"
lower_case_column_names = true
segments = 3
"""


def mixed_items(count: int) -> list[dict[str, Any]]:
    return [{"pk": {"S": f"k{i}"}, "MixedCase": {"N": str(i)}} for i in range(count)]


def columns(url: str, schema: str, table: str) -> set[str]:
    with connect(url) as conn:
        rows = conn.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_schema = %s AND table_name = %s",
            (schema, table),
        ).fetchall()
    return {r[0] for r in rows}


def recorded(url: str, source: str) -> tuple[str, str, str, bool, int]:
    with connect(url) as conn:
        row = conn.execute(
            """SELECT target_schema, target_table, conversion_mode, lower_case, total_segments FROM podyn.tables
               WHERE source_table = %s""",
            (source,),
        ).fetchone()
    assert row is not None
    return tuple(row)


def scans(proxy: Any, table: str) -> list[dict[str, Any]]:
    return [body for body in proxy.requests["Scan"] if body.get("TableName") == table]


def test_each_tables_section_reaches_its_load(
    throttling_proxy: Any, ddb: Any, pg_url: str, create_table: Any, tmp_path: Path
) -> None:
    a, b = create_table(name=fresh(), items=mixed_items(10)), create_table(name=fresh(), items=mixed_items(10))
    unlisted = create_table(name=fresh(), items=mixed_items(1))
    config = tmp_path / "podyn.toml"
    config.write_text(CONFIG.format(a=a, b=b))
    assert_exit(podyn(throttling_proxy, pg_url, "--config", str(config), "-s", "-d", "-n", "1"))

    assert recorded(pg_url, a) == ("public", "a_copy", "jsonb", False, 2)
    assert columns(pg_url, "public", "a_copy") == {"pk", "data"}
    assert recorded(pg_url, b) == ("app", "b_copy", "columns", True, 3)
    assert columns(pg_url, "app", "b_copy") == {"pk", "mixedcase"}
    assert table_differences(ddb, pg_url, a) == [] and table_differences(ddb, pg_url, b, schema="app") == []
    assert {s["Limit"] for s in scans(throttling_proxy, a)} == {1000}  # its own scan_rate = 0
    assert {s["TotalSegments"] for s in scans(throttling_proxy, a)} == {2}  # the file's default
    assert {s["Limit"] for s in scans(throttling_proxy, b)} == {16}  # the file's default scan_rate
    assert {s["TotalSegments"] for s in scans(throttling_proxy, b)} == {3}
    assert scans(throttling_proxy, unlisted) == []  # the sections are the tables of the run

    # Later runs with the file find the tables where it put them.
    verify = assert_exit(podyn(throttling_proxy, pg_url, "--config", str(config), "--verify"))
    assert "public.a_copy" in verify.stdout and "app.b_copy" in verify.stdout


def test_flags_win_over_the_file(
    throttling_proxy: Any, ddb: Any, pg_url: str, create_table: Any, tmp_path: Path
) -> None:
    a, b = create_table(name=fresh(), items=mixed_items(10)), create_table(name=fresh(), items=mixed_items(10))
    config = tmp_path / "podyn.toml"
    config.write_text(CONFIG.format(a=a, b=b))
    flags = ("-m", "columns", "--segments", "5", "-r", "0", "-n", "1", "-t", f"{a},{b}")
    assert_exit(podyn(throttling_proxy, pg_url, "--config", str(config), "-s", "-d", *flags))

    assert recorded(pg_url, a) == ("public", "a_copy", "columns", False, 5)  # -m beats its jsonb
    assert columns(pg_url, "public", "a_copy") == {"pk", "MixedCase"}
    assert recorded(pg_url, b) == ("app", "b_copy", "columns", True, 5)  # what no flag says stays the file's
    assert {s["Limit"] for s in scans(throttling_proxy, b)} == {1000}  # -r 0 beats the file's 2
    assert {s["TotalSegments"] for s in scans(throttling_proxy, b)} == {5}
