"""Stream records → changes (podyn_py.core.changes), with the real records in ``tests/data/stream-events``.

Those files are Lambda events: each record's ``dynamodb`` part is what GetRecords returns, but its
ApproximateCreationDateTime is a number of seconds, where boto3 parses it into a datetime. Every record is tried
in both forms, and with each stream view type's images (KEYS_ONLY and OLD_IMAGE records carry no new image).
"""

from __future__ import annotations

import copy
import dataclasses
import datetime as dt
import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from podyn_py.core.changes import Change, Delete, Refetch, Upsert, compact, key_identity, to_change
from podyn_py.errors import DataError

DATA = Path(__file__).parent / "data" / "stream-events"
TABLE = "ExampleTableWithStream"


def _lambda_records() -> list[tuple[str, dict[str, Any]]]:
    records = []
    for path in sorted(DATA.glob("*.json")):
        for n, record in enumerate(json.loads(path.read_text())["Records"]):
            records.append((f"{path.stem}[{n}]", record))
    return records


LAMBDA_RECORDS = _lambda_records()


def as_boto3(record: dict[str, Any]) -> dict[str, Any]:
    """The record as boto3's GetRecords gives it: no eventSourceARN, the creation time as an aware datetime."""
    out = {k: copy.deepcopy(v) for k, v in record.items() if k != "eventSourceARN"}
    body = out["dynamodb"]
    body["ApproximateCreationDateTime"] = dt.datetime.fromtimestamp(body["ApproximateCreationDateTime"], tz=dt.UTC)
    return out


def with_view(record: dict[str, Any], view: str) -> dict[str, Any]:
    """The record as a stream of ``view`` would have carried it."""
    out = copy.deepcopy(record)
    body = out["dynamodb"]
    body["StreamViewType"] = view
    if view in ("KEYS_ONLY", "OLD_IMAGE"):
        body.pop("NewImage", None)
    if view in ("KEYS_ONLY", "NEW_IMAGE"):
        body.pop("OldImage", None)
    return out


def key_names(record: dict[str, Any]) -> tuple[str, ...]:
    return tuple(record["dynamodb"]["Keys"])


def expected_created(record: dict[str, Any]) -> dt.datetime:
    return dt.datetime.fromtimestamp(record["dynamodb"]["ApproximateCreationDateTime"], tz=dt.UTC)


FORMS = {"lambda": lambda r: copy.deepcopy(r), "boto3": as_boto3}
VIEWS = ["NEW_AND_OLD_IMAGES", "NEW_IMAGE", "OLD_IMAGE", "KEYS_ONLY"]


def test_the_data_covers_every_event_and_both_key_shapes() -> None:
    events = {r["eventName"] for _, r in LAMBDA_RECORDS}
    assert events == {"INSERT", "MODIFY", "REMOVE"}
    assert {len(r["dynamodb"]["Keys"]) for _, r in LAMBDA_RECORDS} == {1, 2}
    assert all(isinstance(r["dynamodb"]["ApproximateCreationDateTime"], int | float) for _, r in LAMBDA_RECORDS)


# --- one record → one change ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("view", VIEWS)
@pytest.mark.parametrize("form", sorted(FORMS))
@pytest.mark.parametrize(("name", "record"), LAMBDA_RECORDS, ids=[n for n, _ in LAMBDA_RECORDS])
def test_real_records_become_the_change_their_event_and_view_mean(
    name: str, record: dict[str, Any], form: str, view: str
) -> None:
    source = FORMS[form](with_view(record, view))
    before = copy.deepcopy(source)
    keys = key_names(record)

    change = to_change(source, keys, table=TABLE)

    expected_key = {k: record["dynamodb"]["Keys"][k] for k in keys}
    # The creation time has a test of its own below; here the kind of change, its key and its image.
    change = dataclasses.replace(change, created_at=None)
    if record["eventName"] == "REMOVE":
        assert change == Delete(expected_key)
    elif view in ("NEW_IMAGE", "NEW_AND_OLD_IMAGES"):
        # The full new image, exactly: the row becomes it (absent attributes become NULL).
        assert change == Upsert(expected_key, record["dynamodb"]["NewImage"])
    else:
        assert change == Refetch(expected_key)
    assert source == before  # the record is not changed


@pytest.mark.parametrize("form", sorted(FORMS))
def test_creation_time_is_an_aware_utc_datetime_in_both_forms(form: str) -> None:
    """boto3 gives a datetime; the Lambda form (and a raw JSON response) gives seconds since the epoch.

    Replication compares it with the load's start (to skip records already in the loaded data) and with the
    clock (the lag): a record that loses it is neither skipped nor counted.
    """
    got = {}
    for name, record in LAMBDA_RECORDS:
        change = to_change(FORMS[form](record), key_names(record), table=TABLE)
        got[name] = change.created_at
    assert got == {name: expected_created(record) for name, record in LAMBDA_RECORDS}
    assert all(c is not None and c.utcoffset() == dt.timedelta(0) for c in got.values())
    # 1.635734407123456789E9 in the Java event: a fraction of a second is kept (to the microsecond).
    assert got["lambda-java-dynamo-event[1]"] == dt.datetime(2021, 11, 1, 2, 40, 7, 123457, tzinfo=dt.UTC)


def test_key_holds_only_the_tables_key_attributes_in_key_order() -> None:
    record = as_boto3(LAMBDA_RECORDS[0][1])
    record["dynamodb"]["Keys"] = {"val": {"S": "data"}, "key": {"S": "binary"}}
    assert list(to_change(record, ("key", "val"), table=TABLE).key) == ["key", "val"]
    # Keys naming more than the table's key (never seen, but harmless): the key is the table's.
    assert to_change(record, ("key",), table=TABLE).key == {"key": {"S": "binary"}}


def test_binary_key_from_boto3_is_kept_as_bytes() -> None:
    record = {
        "eventName": "INSERT",
        "dynamodb": {
            "Keys": {"pk": {"B": b"\x00\xff"}},
            "NewImage": {"pk": {"B": b"\x00\xff"}, "n": {"N": "1"}},
            "SequenceNumber": "100",
            "ApproximateCreationDateTime": dt.datetime(2024, 5, 1, tzinfo=dt.UTC),
        },
    }
    change = to_change(record, ("pk",), table=TABLE)
    assert change == Upsert({"pk": {"B": b"\x00\xff"}}, {"pk": {"B": b"\x00\xff"}, "n": {"N": "1"}}, change.created_at)


# --- malformed records ------------------------------------------------------------------------------------------


def _java(n: int) -> dict[str, Any]:
    return as_boto3(next(r for name, r in LAMBDA_RECORDS if name == f"lambda-java-dynamo-event[{n}]"))


def _edit(record: dict[str, Any], **changes: Any) -> dict[str, Any]:
    out = copy.deepcopy(record)
    for path, value in changes.items():
        where = out
        *parents, last = path.split("__")
        for part in parents:
            where = where[part]
        if value is _DROP:
            where.pop(last)
        else:
            where[last] = value
    return out


_DROP = object()

# (id, record, key names, text the error's key must contain, attribute the error must name)
MALFORMED: list[tuple[str, dict[str, Any], tuple[str, ...], str, str | None]] = [
    ("no dynamodb part", _edit(_java(0), dynamodb=_DROP), ("Id",), "c4ca4238a0b923820dcc509a6f75849b", None),
    ("dynamodb part is a list", _edit(_java(0), dynamodb=[]), ("Id",), "c4ca4238a0b923820dcc509a6f75849b", None),
    ("no Keys", _edit(_java(1), dynamodb__Keys=_DROP), ("Id",), "", None),
    ("key attribute missing", _edit(_java(1), dynamodb__Keys={"Other": {"S": "x"}}), ("Id",), "Other", None),
    ("sort key missing", _java(1), ("Id", "Sort"), "101", None),
    ("unknown event", _edit(_java(1), eventName="UPDATE"), ("Id",), "Id=101", None),
    ("no event name", _edit(_java(0), eventName=_DROP), ("Id",), "Id=101", None),
    ("key value is a bare string", _edit(_java(0), dynamodb__Keys={"Id": "101"}), ("Id",), "Id=<invalid>", "Id"),
    ("key value has two tags", _edit(_java(0), dynamodb__Keys={"Id": {"N": "1", "S": "1"}}), ("Id",), "Id=", "Id"),
    ("key value is null", _edit(_java(2), dynamodb__Keys={"Id": None}), ("Id",), "Id=", "Id"),
    ("key value has an unknown tag", _edit(_java(2), dynamodb__Keys={"Id": {"Q": "101"}}), ("Id",), "Id=", "Id"),
    ("key number is no number", _edit(_java(2), dynamodb__Keys={"Id": {"N": "1,5"}}), ("Id",), "Id=", "Id"),
    ("key string is no string", _edit(_java(2), dynamodb__Keys={"Id": {"S": None}}), ("Id",), "Id=", "Id"),
    ("NewImage is a list", _edit(_java(0), dynamodb__NewImage=[]), ("Id",), "Id=101", None),
]


@pytest.mark.parametrize(
    ("record", "keys", "key_text", "attribute"), [m[1:] for m in MALFORMED], ids=[m[0] for m in MALFORMED]
)
def test_malformed_records_raise_data_error_naming_table_and_key(
    record: dict[str, Any], keys: tuple[str, ...], key_text: str, attribute: str | None
) -> None:
    with pytest.raises(DataError) as raised:
        to_change(record, keys, table=TABLE)
    error = raised.value
    assert error.table == TABLE
    assert error.key is not None and key_text in str(error.key)
    assert error.attribute == attribute
    assert f"table {TABLE!r}" in str(error)


# --- compact --------------------------------------------------------------------------------------------------------


def S(text: str) -> dict[str, Any]:  # noqa: N802 - named after the DynamoDB type tag
    return {"S": text}


def up(key: dict[str, Any], n: int) -> Upsert:
    return Upsert(key, {**key, "n": {"N": str(n)}})


KA, KB, KC = {"pk": S("a")}, {"pk": S("b")}, {"pk": S("c")}
BIN1, BIN1_AGAIN, BIN10 = {"pk": {"B": b"\x01"}}, {"pk": {"B": bytearray(b"\x01")}}, {"pk": {"B": b"\x01\x00"}}
AB1, AB1_REORDERED = {"pk": S("a"), "sk": {"N": "1"}}, {"sk": {"N": "1"}, "pk": S("a")}
AB2 = {"pk": S("a"), "sk": {"N": "2"}}

COMPACT_CASES: list[tuple[str, list[Change], list[Change]]] = [
    ("empty", [], []),
    ("one", [up(KA, 1)], [up(KA, 1)]),
    ("distinct keys keep their order", [up(KA, 1), up(KB, 1), up(KC, 1)], [up(KA, 1), up(KB, 1), up(KC, 1)]),
    ("last change wins, in last-change order", [up(KA, 1), up(KB, 1), up(KA, 2)], [up(KB, 1), up(KA, 2)]),
    ("upsert after delete", [Delete(KA), up(KB, 1), up(KA, 2)], [up(KB, 1), up(KA, 2)]),
    ("delete after upserts", [up(KA, 1), up(KA, 2), up(KB, 1), Delete(KA)], [up(KB, 1), Delete(KA)]),
    ("refetch is a change like any other", [up(KA, 1), Refetch(KA), Delete(KB)], [Refetch(KA), Delete(KB)]),
    (
        "a key and its type tag",
        [up(KA, 1), up({"pk": {"N": "1"}}, 2), up({"pk": S("1")}, 3)],
        [up(KA, 1), up({"pk": {"N": "1"}}, 2), up({"pk": S("1")}, 3)],
    ),  # fmt: skip
    (
        "binary keys: bytes and bytearray are one key",
        [up(BIN1, 1), up(BIN10, 1), Delete(BIN1_AGAIN)],
        [up(BIN10, 1), Delete(BIN1_AGAIN)],
    ),  # fmt: skip
    ("binary key is not its text", [up({"pk": {"B": b"a"}}, 1), up(KA, 2)], [up({"pk": {"B": b"a"}}, 1), up(KA, 2)]),
    ("composite keys differ by sort key", [up(AB1, 1), up(AB2, 1), up(AB1, 2)], [up(AB2, 1), up(AB1, 2)]),
    (
        "composite key attribute order does not matter",
        [up(AB1, 1), up(AB2, 1), Delete(AB1_REORDERED)],
        [up(AB2, 1), Delete(AB1_REORDERED)],
    ),  # fmt: skip
]


@pytest.mark.parametrize(("changes", "expected"), [c[1:] for c in COMPACT_CASES], ids=[c[0] for c in COMPACT_CASES])
def test_compact_keeps_each_keys_last_change_in_last_change_order(
    changes: list[Change], expected: list[Change]
) -> None:
    assert compact(changes) == expected


def test_compact_of_the_real_records() -> None:
    changes = [to_change(as_boto3(r), key_names(r), table=TABLE) for _, r in LAMBDA_RECORDS]

    compacted = compact(changes)

    # Two keys: the Go event's (key, val) written twice, and Id 101 inserted, modified and removed three times.
    assert [type(c) for c in compacted] == [Upsert, Delete]
    assert compacted[0] is changes[1]  # the second INSERT of the same key
    assert compacted[1] is changes[-1]  # the last REMOVE of Id 101
    assert compacted[1].key == {"Id": {"N": "101"}}


KEYS = st.sampled_from([KA, KB, KC, BIN1, BIN1_AGAIN, BIN10, AB1, AB1_REORDERED, AB2])
CHANGES = st.one_of(
    st.builds(up, KEYS, st.integers(0, 9)),
    st.builds(Delete, KEYS),
    st.builds(Refetch, KEYS),
)


@given(st.lists(CHANGES, max_size=30))
def test_compact_matches_a_model(changes: list[Change]) -> None:
    identities = [key_identity(c.key) for c in changes]
    last_index = {identity: i for i, identity in enumerate(identities)}
    expected = [changes[i] for i in sorted(last_index.values())]

    compacted = compact(changes)

    assert compacted == expected
    assert len({key_identity(c.key) for c in compacted}) == len(compacted)
    assert all(any(c is d for d in changes) for c in compacted)  # the same objects, not copies


def test_key_identity_is_hashable_and_exact_for_numbers_as_text() -> None:
    # Numbers are compared as DynamoDB sends them (it normalises them), not as floats.
    big = {"pk": {"N": "12345678901234567890123456789012345678"}}
    bigger = {"pk": {"N": "12345678901234567890123456789012345679"}}
    assert key_identity(big) != key_identity(bigger)
    assert float(Decimal(big["pk"]["N"])) == float(Decimal(bigger["pk"]["N"]))
    assert hash(key_identity(BIN1)) == hash(key_identity(BIN1_AGAIN))
