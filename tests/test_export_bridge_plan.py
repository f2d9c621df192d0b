"""The bridge's decisions, pure: when incremental exports are needed, their windows, where the stream's replay
starts after them, when no bridge can be built; and an incremental export's line as a change."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import pytest

from podyn_py.core.changes import Delete, Upsert, from_incremental
from podyn_py.core.exports import (
    BridgeImpossible,
    BridgeWindow,
    bridge_client_token,
    chain_windows,
    plan_bridge,
)
from podyn_py.errors import DataError

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
ARN = "arn:aws:dynamodb:eu-west-1:1:table/t/stream/x"
MIN = timedelta(minutes=1)
HOUR = timedelta(hours=1)


def test_no_bridge_when_the_stream_reaches_back() -> None:
    exported = NOW - 3 * HOUR
    found = plan_bridge(
        exported,
        stream_arn=ARN,
        stream_created_at=exported - timedelta(days=3),
        now=NOW,
        pitr_enabled=None,
        pitr_earliest=None,
    )
    assert found.windows == () and found.end is None
    assert found.replay_from == exported - 5 * MIN


def test_a_stream_enabled_after_the_export_is_bridged_to_its_start_plus_the_margins() -> None:
    exported, created = NOW - 5 * HOUR, NOW - 2 * HOUR
    found = plan_bridge(
        exported, stream_arn=ARN, stream_created_at=created, now=NOW, pitr_enabled=True, pitr_earliest=None
    )
    assert [(w.start, w.end) for w in found.windows] == [(exported - 5 * MIN, created + 2 * MIN + 5 * MIN)]
    assert found.end == created + 7 * MIN
    assert found.replay_from == created + 2 * MIN  # the stream holds it, with the export time's accuracy to spare


def test_an_export_older_than_the_stream_keeps_is_bridged_in_windows_of_at_most_a_day() -> None:
    exported = NOW - timedelta(days=3)
    found = plan_bridge(
        exported,
        stream_arn=ARN,
        stream_created_at=NOW - timedelta(days=30),
        now=NOW,
        pitr_enabled=True,
        pitr_earliest=NOW - timedelta(days=35),
    )
    windows = found.windows
    assert windows[0].start == exported - 5 * MIN
    # the stream holds from 24 hours ago; the bridge ends an hour (the slack) plus the margin after that
    assert found.end == NOW - 23 * HOUR + 5 * MIN
    assert found.replay_from == NOW - 23 * HOUR
    assert len(windows) == 3
    assert all(a.end == b.start for a, b in zip(windows, windows[1:], strict=False))
    assert all(timedelta(minutes=15) <= w.end - w.start <= timedelta(hours=24) for w in windows)
    assert [w.ordinal for w in windows] == [0, 1, 2]


@pytest.mark.parametrize(
    ("length", "count"),
    [
        (timedelta(minutes=1), 1),
        (timedelta(minutes=15), 1),
        (timedelta(hours=24), 1),
        (timedelta(hours=24, seconds=1), 2),
        (timedelta(hours=48), 2),
        (timedelta(hours=49), 3),
        (timedelta(days=30), 30),
    ],
)
def test_windows_chain_from_start_to_end(length: timedelta, count: int) -> None:
    start = NOW - timedelta(days=40)
    windows = chain_windows(start, start + length)
    assert len(windows) == count
    assert windows[0].start == start
    assert windows[-1].end == start + max(length, timedelta(minutes=15))
    assert all(a.end == b.start for a, b in zip(windows, windows[1:], strict=False))
    assert all(timedelta(minutes=15) <= w.end - w.start <= timedelta(hours=24) for w in windows)


@pytest.mark.parametrize(
    ("stream_arn", "enabled", "earliest", "reason"),
    [
        (None, True, None, "the table has no stream"),
        (ARN, False, None, "point-in-time recovery, which incremental exports read, is disabled"),
        (ARN, True, NOW - 4 * HOUR - 4 * MIN, "point-in-time recovery reaches back to 2026-06-01 07:56:00+00:00 only"),
    ],
)
def test_when_no_bridge_can_be_built(
    stream_arn: str | None, enabled: bool, earliest: datetime | None, reason: str
) -> None:
    with pytest.raises(BridgeImpossible, match=re.escape(reason)):
        plan_bridge(
            NOW - 4 * HOUR,
            stream_arn=stream_arn,
            stream_created_at=NOW - HOUR,
            now=NOW,
            pitr_enabled=enabled,
            pitr_earliest=earliest,
        )


def test_client_tokens_are_the_same_for_the_same_window_only() -> None:
    window = BridgeWindow(0, NOW - 2 * HOUR, NOW - HOUR)
    token = bridge_client_token("arn:t", "public.t", "0123-ab", window)
    assert token == bridge_client_token("arn:t", "public.t", "0123-ab", window)
    assert token.startswith("podyn-") and len(token) <= 64
    assert token != bridge_client_token("arn:t", "public.t", "0123-ab", BridgeWindow(0, window.start, NOW))
    assert token != bridge_client_token("arn:t", "public.t", "0123-cd", window)
    retried = bridge_client_token("arn:t", "public.t", "0123-ab", window, "arn:t/export/failed")
    assert retried != token, "after a failed export, a new token: the same one gives the failed export back"


def test_an_incremental_line_is_an_upsert_or_a_delete() -> None:
    meta = {"WriteTimestampMicros": {"N": "1780315200000000"}}
    key = {"pk": {"S": "a"}}
    line = {"Metadata": meta, "Keys": key, "NewImage": {"pk": {"S": "a"}, "v": {"N": "2"}}, "OldImage": {}}
    upsert = from_incremental(line, ["pk"], table="t")
    assert isinstance(upsert, Upsert) and upsert.item["v"] == {"N": "2"}
    assert upsert.created_at == datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
    deleted = from_incremental({"Metadata": meta, "Keys": key, "OldImage": line["NewImage"]}, ["pk"], table="t")
    assert isinstance(deleted, Delete) and deleted.key == key and not deleted.expired
    with pytest.raises(DataError, match="without the table's key"):
        from_incremental({"Metadata": meta, "Keys": {"other": {"S": "a"}}}, ["pk"], table="t")
