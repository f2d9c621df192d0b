"""TTL deletes in stream records, and what each ``--ttl-deletes`` policy makes of a key's changes (pure).

The records are in ``tests/data/ttl/ttl-delete-events.json``: a TTL delete as a Lambda event carries it (userIdentity
``type``/``principalId``, taken from aws-lambda-go's sample event), the same as GetRecords returns it (the Streams
API's Identity shape: ``Type``/``PrincipalId``), and an application's delete (no userIdentity).
"""

from __future__ import annotations

import copy
import datetime as dt
import json
from pathlib import Path
from typing import Any

import pytest

from podyn_py.core.changes import (
    Change,
    Delete,
    Expire,
    Refetch,
    TtlCounts,
    TtlPolicy,
    Upsert,
    compact,
    is_ttl_delete,
    to_change,
)

DATA = Path(__file__).parent / "data" / "ttl" / "ttl-delete-events.json"
LAMBDA_TTL, WIRE_TTL, APPLICATION = json.loads(DATA.read_text())["Records"]
GO_SAMPLE = Path(__file__).parent / "data" / "stream-events" / "lambda-go-dynamodb-event.json"
T1 = dt.datetime(2024, 5, 1, 10, 0, 0, tzinfo=dt.UTC)
T2 = T1 + dt.timedelta(seconds=1)


def as_boto3(record: dict[str, Any]) -> dict[str, Any]:
    """As boto3 parses it: the creation time a datetime, no eventSourceARN."""
    out = {k: copy.deepcopy(v) for k, v in record.items() if k != "eventSourceARN"}
    out["dynamodb"]["ApproximateCreationDateTime"] = dt.datetime.fromtimestamp(
        record["dynamodb"]["ApproximateCreationDateTime"], tz=dt.UTC
    )
    return out


@pytest.mark.parametrize("form", ["as sent", "boto3"])
@pytest.mark.parametrize("record", [LAMBDA_TTL, WIRE_TTL], ids=["lambda event", "GetRecords"])
def test_a_ttl_delete_is_a_delete_marked_expired_with_its_old_image(record: dict[str, Any], form: str) -> None:
    source = as_boto3(record) if form == "boto3" else copy.deepcopy(record)
    assert is_ttl_delete(source)
    change = to_change(source, ("Id",), table="ExampleTableWithStream")
    expected_time = dt.datetime.fromtimestamp(record["dynamodb"]["ApproximateCreationDateTime"], tz=dt.UTC)
    assert change == Delete(record["dynamodb"]["Keys"], expected_time, True, record["dynamodb"]["OldImage"])


def test_an_applications_delete_is_not_expired_and_keeps_no_image() -> None:
    assert not is_ttl_delete(APPLICATION)
    change = to_change(APPLICATION, ("Id",))
    assert isinstance(change, Delete) and not change.expired and change.old_image is None


def _with_identity(identity: Any, event: str = "REMOVE") -> dict[str, Any]:
    record: dict[str, Any] = copy.deepcopy(WIRE_TTL)
    record["eventName"] = event
    if identity is None:
        record.pop("userIdentity")
    else:
        record["userIdentity"] = identity
    return record


@pytest.mark.parametrize(
    ("record", "ttl"),
    [
        (_with_identity({"Type": "Service", "PrincipalId": "dynamodb.amazonaws.com"}), True),
        (_with_identity({"type": "Service", "principalId": "dynamodb.amazonaws.com"}), True),
        (_with_identity(None), False),
        (_with_identity({"Type": "Service", "PrincipalId": "replication.dynamodb.amazonaws.com"}), False),
        (_with_identity({"Type": "User", "PrincipalId": "dynamodb.amazonaws.com"}), False),
        (_with_identity({"Type": "Service"}), False),
        (_with_identity("Service"), False),
        (_with_identity({"Type": "Service", "PrincipalId": "dynamodb.amazonaws.com"}, event="MODIFY"), False),
        # aws-lambda-go's sample puts the service identity on an INSERT: only a REMOVE can be a TTL delete.
        (json.loads(GO_SAMPLE.read_text())["Records"][0], False),
    ],
    ids=[
        "GetRecords shape",
        "Lambda shape",
        "no identity",
        "another principal",
        "not a service",
        "no principal",
        "identity not a map",
        "a MODIFY",
        "the go sample's INSERT",
    ],
)
def test_only_a_remove_by_the_dynamodb_service_is_a_ttl_delete(record: dict[str, Any], ttl: bool) -> None:
    assert is_ttl_delete(record) is ttl


# --- one key's changes in a batch, under each policy ------------------------------------------------------------

KEY = {"pk": {"S": "a"}}
V1 = {"pk": {"S": "a"}, "v": {"N": "1"}}
V2 = {"pk": {"S": "a"}, "v": {"N": "2"}}
OLD = {"pk": {"S": "a"}, "v": {"N": "0"}, "ExpiresAt": {"N": "1714557600"}}


def ttl(old_image: dict[str, Any] | None = None) -> Delete:
    return Delete(KEY, T2, expired=True, old_image=old_image)


#: (id, the key's changes in order, what each policy leaves: {policy: expected compacted list})
CASES: list[tuple[str, list[Change], dict[TtlPolicy, list[Change]]]] = [
    (
        "alone, with its old image",
        [ttl(OLD)],
        {
            TtlPolicy.DELETE: [ttl(OLD)],
            TtlPolicy.KEEP: [Upsert(KEY, OLD, T2)],  # a row missing (expired during the load) is kept too
            TtlPolicy.MARK: [Expire(KEY, T2, OLD)],
        },
    ),
    (
        "alone, without an image (KEYS_ONLY, NEW_IMAGE)",
        [ttl()],
        {TtlPolicy.DELETE: [ttl()], TtlPolicy.KEEP: [], TtlPolicy.MARK: [Expire(KEY, T2)]},
    ),
    (
        "after an upsert, without an image",
        [Upsert(KEY, V1, T1), ttl()],
        {
            TtlPolicy.DELETE: [ttl()],
            TtlPolicy.KEEP: [Upsert(KEY, V1, T1)],  # the row holds the item as it expired
            TtlPolicy.MARK: [Expire(KEY, T2, V1)],
        },
    ),
    (
        "after a refetch, without an image",
        [Refetch(KEY, T1), ttl()],
        # The refetch would find the item gone and delete the row.
        {TtlPolicy.DELETE: [ttl()], TtlPolicy.KEEP: [], TtlPolicy.MARK: [Expire(KEY, T2)]},
    ),
    (
        "created again after it expired",
        [ttl(OLD), Upsert(KEY, V2, T2)],
        {policy: [Upsert(KEY, V2, T2)] for policy in TtlPolicy},
    ),
    (
        "an application's delete",
        [Upsert(KEY, V1, T1), Delete(KEY, T2)],
        {policy: [Delete(KEY, T2)] for policy in TtlPolicy},
    ),
]


@pytest.mark.parametrize("policy", list(TtlPolicy))
@pytest.mark.parametrize(("changes", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_compact_applies_the_ttl_policy(
    changes: list[Change], expected: dict[TtlPolicy, list[Change]], policy: TtlPolicy
) -> None:
    assert compact(changes, policy) == expected[policy]


def test_other_keys_keep_their_order_around_a_ttl_delete() -> None:
    b = {"pk": {"S": "b"}}
    changes: list[Change] = [Upsert(b, {**b, "v": {"N": "1"}}), ttl(OLD), Delete(b)]
    assert compact(changes, TtlPolicy.KEEP) == [Upsert(KEY, OLD, T2), Delete(b)]
    assert compact(changes) == [ttl(OLD), Delete(b)]


def test_counts_say_what_the_policy_did_with_the_ttl_deletes_not_skipped() -> None:
    assert TtlCounts.of(5, 3, TtlPolicy.DELETE) == TtlCounts(5, 3, 0, 0)
    assert TtlCounts.of(5, 3, TtlPolicy.KEEP) == TtlCounts(5, 0, 3, 0)
    assert TtlCounts.of(5, 3, TtlPolicy.MARK) == TtlCounts(5, 0, 0, 3)
    assert not TtlCounts() and TtlCounts(1)
