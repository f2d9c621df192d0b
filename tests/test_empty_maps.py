"""Empty maps without their type tag: DynamoDB Local writes an empty map inside stream images as ``{}`` instead of
``{"M": {}}``. A value with no tag at all can only be an empty map, so podyn takes it as one (counted, logged once
per table); anything else malformed stays rejected, and a key can never be a map.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest
from helpers import REPO_ROOT
from oracle import connect
from psycopg import sql

from podyn_py.core.changes import Upsert, to_change
from podyn_py.core.rows import RowBuilder
from podyn_py.core.schema import ConversionMode, KeyAttribute, TableSpec, evolve, initial_schema
from podyn_py.core.values import PgType, split_value, to_column_value, to_json
from podyn_py.errors import DataError
from podyn_py.source.dynamodb import table_name

# -- pure: the conversion ---------------------------------------------------------------------------------------


def test_split_value_takes_an_untagged_value_as_an_empty_map_and_counts_it() -> None:
    untagged: list[int] = []
    assert split_value({}, untagged) == ("M", {})
    assert untagged == [1]
    assert split_value({}) == ("M", {})  # without a list: accepted all the same


@pytest.mark.parametrize(
    "value",
    [
        {"S": "a", "N": "1"},  # two tags
        {"X": "a"},  # unknown tag
        [],
        None,
        "abc",
        {"M": "not an object"},
        {"L": {}},
    ],
)
def test_other_malformed_values_stay_errors(value: Any) -> None:
    with pytest.raises(DataError):
        to_json(value)


@pytest.mark.parametrize(
    ("value", "expected", "count"),
    [
        ({}, {}, 1),
        ({"M": {"inner": {}}}, {"inner": {}}, 1),
        ({"L": [{}, {"S": "x"}, {}]}, [{}, "x", {}], 2),
        # a map inside a list inside a map
        ({"M": {"list": {"L": [{"M": {"deep": {}}}]}}}, {"list": [{"deep": {}}]}, 1),
        ({"M": {}}, {}, 0),  # the tagged form, as real DynamoDB sends it
    ],
)
def test_nested_untagged_empty_maps_convert_and_are_counted(value: Any, expected: Any, count: int) -> None:
    untagged: list[int] = []
    assert orjson.loads(orjson.dumps(to_json(value, untagged=untagged))) == expected
    assert len(untagged) == count
    untagged.clear()
    tag, raw = split_value(value, untagged)  # the top level is split first, as the row builder does
    assert orjson.loads(to_column_value(tag, raw, untagged=untagged)) == expected
    assert len(untagged) == count


def test_a_malformed_value_next_to_an_untagged_map_is_still_rejected() -> None:
    with pytest.raises(DataError, match="not a DynamoDB number"):
        to_json({"M": {"empty": {}, "bad": {"N": "1_000"}}})


SPEC = TableSpec("t", "public", "t", KeyAttribute("pk", "S"))


@pytest.mark.parametrize("mode", list(ConversionMode))
def test_row_builder_writes_empty_jsonb_and_counts_per_attribute(mode: ConversionMode) -> None:
    item = {"pk": {"S": "a"}, "empty": {}, "outer": {"M": {"inner": {"L": [{"M": {"deep": {}}}]}}}}
    spec = TableSpec("t", "public", "t", KeyAttribute("pk", "S"), mode=mode)
    schema = initial_schema(spec)
    added = evolve(schema, [item])
    if mode is ConversionMode.COLUMNS:
        assert [(c.name, c.type) for c in added] == [("empty", PgType.JSONB), ("outer", PgType.JSONB)]
    schema = schema.with_columns(added)
    counts: Counter[str] = Counter()
    row = RowBuilder(schema, untagged_map_counts=counts).build(item)
    values = {c.name: v for c, v in zip(schema.columns, row, strict=True)}
    if mode is ConversionMode.COLUMNS:
        assert orjson.loads(values["empty"]) == {}
        assert orjson.loads(values["outer"]) == {"inner": [{"deep": {}}]}
    else:
        assert orjson.loads(values["data"]) == {"pk": "a", "empty": {}, "outer": {"inner": [{"deep": {}}]}}
    assert counts == Counter({"empty": 1, "outer": 1})


def test_a_row_built_again_after_a_missing_column_counts_once() -> None:
    schema = initial_schema(SPEC)
    counts: Counter[str] = Counter()
    item = {"pk": {"S": "a"}, "empty": {}, "later": {"S": "x"}}
    schema = schema.with_columns(evolve(schema, [{"empty": {}}]))
    with pytest.raises(Exception, match="later"):  # MissingColumn: "later" has no column yet
        RowBuilder(schema, untagged_map_counts=counts).build(item)
    schema = schema.with_columns(evolve(schema, [item]))
    RowBuilder(schema, untagged_map_counts=counts).build(item)
    assert counts == Counter({"empty": 1})


def test_a_key_cannot_be_an_untagged_map() -> None:
    builder = RowBuilder(initial_schema(SPEC))
    with pytest.raises(DataError, match="key attribute"):
        builder.build({"pk": {}, "a": {"S": "x"}})
    record = {"eventName": "INSERT", "dynamodb": {"Keys": {"pk": {}}, "NewImage": {"pk": {}}}}
    for key_tags in (None, ("S",)):
        with pytest.raises(DataError, match="key attribute"):
            to_change(record, ["pk"], table="t", key_tags=key_tags)


def test_a_stream_record_with_untagged_maps_is_an_upsert() -> None:
    image = {"pk": {"S": "a"}, "empty": {}, "m": {"M": {"e": {}}}}
    record = {"eventName": "MODIFY", "dynamodb": {"Keys": {"pk": {"S": "a"}}, "NewImage": image}}
    change = to_change(record, ["pk"], table="t", key_tags=("S",))
    assert isinstance(change, Upsert) and change.item == image


# -- DynamoDB Local: the service replicates such changes --------------------------------------------------------


@pytest.mark.slow  # podyn -c in a subprocess until the changes arrive: about 7 s
@pytest.mark.parametrize("fast_path", ["--fast-path", "--no-fast-path"])
def test_changes_with_empty_maps_arrive_from_dynamodb_local(
    ddb_server: Any, ddb: Any, pg_url: str, create_table: Any, tmp_path: Path, fast_path: str
) -> None:
    table = create_table(stream_view_type="NEW_AND_OLD_IMAGES", items=[{"pk": {"S": "loaded"}}])
    log_path = tmp_path / "service.log"
    command = [sys.executable, "-m", "podyn_py", "--endpoint-url", ddb_server.endpoint_url, "-u", pg_url]
    command += ["-t", table, "-s", "-d", "-c", "--no-progress", fast_path]
    with open(log_path, "w") as log_file:
        process = subprocess.Popen(command, cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=log_file)
        try:
            with connect(pg_url) as conn:
                _wait(lambda: _state(conn, table) == "live", process, log_path, "the table to go live")
                ddb.put_item(
                    TableName=table,
                    Item={
                        "pk": {"S": "new"},
                        "empty": {"M": {}},
                        "nested": {"M": {"list": {"L": [{"M": {"inner": {"M": {}}}}]}, "s": {"S": "x"}}},
                    },
                )
                ddb.update_item(
                    TableName=table,
                    Key={"pk": {"S": "loaded"}},
                    UpdateExpression="SET later = :e",
                    ExpressionAttributeValues={":e": {"M": {}}},
                )

                target = table_name(table)
                select = sql.SQL("SELECT pk, empty, nested, later FROM {} ORDER BY pk").format(sql.Identifier(target))

                def arrived() -> bool:
                    if _state(conn, table) is None or not _has_columns(conn, target, 4):
                        return False
                    rows = conn.execute(select).fetchall()
                    return len(rows) == 2 and rows[0][3] is not None and rows[1][0] == "new"

                _wait(arrived, process, log_path, "the changes to arrive")
                rows = conn.execute(select).fetchall()
                assert rows == [
                    ("loaded", None, None, {}),
                    ("new", {}, {"list": [{"inner": {}}], "s": "x"}, None),
                ]
                rejected = conn.execute("SELECT count(*) FROM podyn.rejected").fetchone()
                assert rejected == (0,)
        finally:
            process.send_signal(signal.SIGTERM)
            assert process.wait(15) == 0, log_path.read_text()
    log = log_path.read_text()
    # DynamoDB Local sent the untagged form (that is what this test is about): podyn said so, once.
    assert log.count('without its "M" type') == 1, log
    assert "empty maps without their M type accepted" in log, log


def _state(conn: Any, table: str) -> str | None:
    exists = conn.execute("SELECT to_regclass('podyn.tables') IS NOT NULL").fetchone()
    if not (exists and exists[0]):
        return None
    row = conn.execute("SELECT state FROM podyn.tables WHERE source_table = %s", (table,)).fetchone()
    return None if row is None else str(row[0])


def _has_columns(conn: Any, table: str, count: int) -> bool:
    row = conn.execute(
        "SELECT count(*) FROM information_schema.columns WHERE table_name = %s AND column_name IN"
        " ('pk', 'empty', 'nested', 'later')",
        (table,),
    ).fetchone()
    return bool(row and row[0] == count)


def _wait(condition: Any, process: subprocess.Popen[bytes], log: Path, what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert process.poll() is None, f"podyn exited early:\n{log.read_text()}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}:\n{log.read_text()}"
        time.sleep(0.1)
