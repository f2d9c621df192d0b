"""The health probes' logic (health.py) and the log formats (logs.py), in process: no services, a fake clock.

The end-to-end tests, through the CLI against DynamoDB Local and PostgreSQL, are in test_probes_and_json_logs.py.
"""

from __future__ import annotations

import json
import logging
import threading
import urllib.error
import urllib.request
from typing import Any

import orjson
import pytest

from podyn_py import health, logs, metrics
from podyn_py.config import redact_text
from podyn_py.errors import TargetError
from podyn_py.retry import SYSTEM_CLOCK


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_loop_that_stops_coming_round_is_stalled_and_one_that_ended_is_forgotten() -> None:
    clock = FakeClock()
    watched = health.Health(clock)
    assert watched.liveness(10.0)[0], "no loop yet: nothing stalled"
    with watched.loop("changes T", "T"):
        clock.now += 9.0
        ok, body = watched.liveness(10.0)
        assert ok and body["loops"][0] == {
            "loop": "changes T",
            "table": "T",
            "seconds_since_progress": 9.0,
            "stalled": False,
        }
        clock.now += 2.0
        ok, body = watched.liveness(10.0)
        assert not ok and body["stalled"] == ["changes T"] and body["status"] == "stalled"
        watched.beat()
        assert watched.liveness(10.0)[0]
        clock.now += 11.0
    assert watched.liveness(10.0) == (True, {"status": "ok", "max_stall_seconds": 10.0, "stalled": [], "loops": []})


def test_a_beat_counts_for_the_calling_threads_loop_only() -> None:
    clock = FakeClock()
    watched = health.Health(clock)
    entered, release = threading.Event(), threading.Event()

    def other() -> None:
        with watched.loop("stream reader T"):
            entered.set()
            release.wait(10)

    thread = threading.Thread(target=other)
    thread.start()
    try:
        assert entered.wait(10)
        with watched.loop("changes T"):
            clock.now += 20.0
            watched.beat()  # this thread's loop, not the reader's
            _, body = watched.liveness(10.0)
            assert body["stalled"] == ["stream reader T"]
    finally:
        release.set()
        thread.join(10)


def test_a_retry_wait_is_a_round_of_the_waiting_threads_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = FakeClock()
    monkeypatch.setattr(health.HEALTH, "_clock", clock)
    with health.loop("load T segment 0", "T"):
        clock.now += 50.0
        assert health.HEALTH.liveness(10.0)[1]["stalled"] == ["load T segment 0"]
        SYSTEM_CLOCK.wait(0.0)
        assert health.HEALTH.liveness(10.0)[0]


@pytest.mark.parametrize(
    ("state", "lag", "waited", "ready"),
    [
        (health.STARTING, None, 0.0, False),
        ("loading", None, 0.0, False),
        ("catching up", 1.0, 0.0, False),
        ("live", None, 0.0, False),  # live, but no lag measured: not known to be close
        ("live", 0.0, 0.0, True),
        ("live", 59.0, 0.0, True),
        ("live", 61.0, 0.0, False),
        ("live", 0.0, 61.0, False),  # measured 0 a minute ago: the bound has grown past the threshold
        ("live", 30.0, 29.0, True),
        ("live", 30.0, 31.0, False),
        (health.STANDING_BY, None, 0.0, True),
        (health.HELD_ELSEWHERE, None, 0.0, False),
        ("stopped", 0.0, 0.0, False),
    ],
)
def test_readiness_of_one_table(state: str, lag: float | None, waited: float, ready: bool) -> None:
    clock = FakeClock()
    watched = health.Health(clock)
    watched.expect(["T"])
    watched.set_state("T", state)
    if lag is not None:
        watched.set_lag("T", lag)
    clock.now += waited
    ok, body = watched.readiness(60.0)
    assert ok is ready and body["tables"]["T"]["ready"] is ready and body["tables"]["T"]["state"] == state
    if lag is not None:
        assert body["tables"]["T"]["lag_seconds"] == lag + waited
        assert body["tables"]["T"]["measured_lag_seconds"] == lag


def test_readiness_needs_every_table_and_at_least_one() -> None:
    watched = health.Health(FakeClock())
    assert watched.readiness(60.0) == (False, {"status": "not ready", "max_lag_seconds": 60.0, "tables": {}})
    watched.expect(["A", "B"])
    watched.set_state("A", "live")
    watched.set_lag("A", 0.0)
    ok, body = watched.readiness(60.0)
    assert not ok and body["tables"]["B"]["state"] == health.STARTING
    watched.set_state("B", "stopped", "disk full")
    ok, body = watched.readiness(60.0)
    assert not ok and body["tables"]["B"]["error"] == "disk full"
    watched.set_state("B", "live")
    watched.set_lag("B", 2.0)
    assert watched.readiness(60.0)[0]


def get(port: int, path: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return int(response.status), bytes(response.read())
    except urllib.error.HTTPError as error:
        return int(error.code), bytes(error.read())


def test_the_probes_and_the_metrics_share_the_port() -> None:
    watched = health.Health(FakeClock())
    watched.expect(["probe_table"])
    metrics.ITEMS_LOADED.labels("probe_table").inc(2)
    server = metrics.serve(0, routes=watched.probes(max_stall=10.0, max_lag=5.0))
    try:
        port = server.server_port
        status, body = get(port, "/readyz")
        assert status == 503 and json.loads(body)["tables"]["probe_table"]["state"] == health.STARTING
        watched.set_state("probe_table", "live")
        watched.set_lag("probe_table", 1.0)
        status, body = get(port, "/readyz")
        assert status == 200 and json.loads(body)["status"] == "ready"
        status, body = get(port, "/healthz")
        assert status == 200 and json.loads(body)["stalled"] == []
        status, body = get(port, "/metrics")
        assert status == 200 and b'podyn_items_loaded_total{table="probe_table"} 2.0' in body
    finally:
        server.shutdown()
        server.server_close()


SECRET = "Pa55-w0rd-of-the-test"


def record(msg: str, *args: Any, exc: BaseException | None = None, **extra: Any) -> logging.LogRecord:
    made = logging.LogRecord("podyn_py.changes", logging.WARNING, __file__, 1, msg, args, None)
    if exc is not None:
        made.exc_info = (type(exc), exc, exc.__traceback__)
    for name, value in extra.items():
        setattr(made, name, value)
    return made


def formatted(made: logging.LogRecord) -> dict[str, Any]:
    line = logs.JsonFormatter(logs.Redactor(redact_text, [SECRET])).format(made)
    assert "\n" not in line
    event: dict[str, Any] = orjson.loads(line)
    return event


def test_a_json_line_has_the_time_level_logger_message_and_fields() -> None:
    event = formatted(record("table %s: applied %d records", "Orders", 3, table="Orders", upserts=2, lag_seconds=0.5))
    assert event["time"].endswith("Z") and event["time"][10] == "T"
    assert event["level"] == "warning" and event["logger"] == "podyn_py.changes"
    assert event["message"] == "table Orders: applied 3 records"
    assert event["table"] == "Orders" and event["upserts"] == 2 and event["lag_seconds"] == 0.5
    assert list(event)[:5] == ["time", "level", "logger", "table", "message"]


def raised(exc: BaseException) -> BaseException:
    try:
        raise exc
    except BaseException as caught:
        return caught


@pytest.mark.parametrize(
    ("made", "table"),
    [
        (record("anything", table="Given", other="x"), "Given"),  # extra wins
        (record("failed", exc=raised(TargetError("boom", table="FromError"))), "FromError"),
        (record("%s", TargetError("boom", table="FromArgument")), "FromArgument"),
        (record("table %s: applied %d records", "FromMessage", 3), "FromMessage"),
        (record("no table here: %s", "NotATable"), None),
    ],
)
def test_the_table_of_a_record(made: logging.LogRecord, table: str | None) -> None:
    assert logs.table_of(made) == table
    assert formatted(made).get("table") == table


def test_a_thread_working_on_a_table_gives_it_to_its_records_without_one() -> None:
    with logs.about("Threaded"):
        assert logs.table_of(record("no table in the message")) == "Threaded"
        assert logs.table_of(record("table %s: x", "Named")) == "Named"
    assert logs.table_of(record("no table in the message")) is None


def test_an_exception_is_one_field_and_no_secret_survives_anywhere() -> None:
    url = f"postgresql://app:{SECRET}@db/app"
    exc = raised(TargetError(f"cannot connect to {url}", table="T"))
    event = formatted(record("connecting to %s failed", f"password={SECRET}", exc=exc, error=str(exc), url=[url]))
    line = json.dumps(event)
    assert SECRET not in line
    assert event["exception"]["type"] == "podyn_py.errors.TargetError"
    assert event["exception"]["message"] == "cannot connect to postgresql://app:***@db/app (table 'T')"
    assert event["exception"]["traceback"].startswith("Traceback (most recent call last):")
    assert event["message"] == "connecting to password=*** failed" and event["url"] == ["postgresql://app:***@db/app"]


def test_the_text_format_is_redacted_too() -> None:
    formatter = logs.TextFormatter(logs.Redactor(redact_text, [SECRET]))
    line = formatter.format(record("the secret is %s, or %s", SECRET, f"user=app password={SECRET}"))
    assert SECRET not in line and line.endswith("podyn_py.changes: the secret is ***, or user=app password=***")


def test_short_secrets_are_left_to_the_patterns() -> None:
    redact = logs.Redactor(None, ["abc", "longer-secret"])
    assert redact("abc and longer-secret") == "abc and ***"
