"""The one retry policy (podyn_py/retry.py): what is transient, how long to wait, when to give up, and that a set
stop event ends a wait at once.

Pure tests in simulated time: a driven clock records the waits instead of sleeping them, and its ``random`` is
fixed so that jittered delays are exact. The last part drives DynamoDB's own retry levels (waiting out throttling,
BatchGetItem's unprocessed keys) with scripted calls through the same clock.
"""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from botocore.exceptions import ClientError

from podyn_py import retry
from podyn_py.core.schema import KeyAttribute, TableSpec
from podyn_py.errors import Interrupted, SourceError, TransientSourceError
from podyn_py.load import LoadOptions, load_table
from podyn_py.retry import Backoff, Clock, Jitter, Retrier
from podyn_py.source import dynamodb
from podyn_py.target.dryrun import DryRunTarget


@dataclass
class DrivenClock:
    """Simulated time: ``sleep`` records the wait and moves ``now`` on; ``during_sleep`` runs inside each wait."""

    jitter: float = 1.0
    now: float = 0.0
    sleeps: list[float] = field(default_factory=list)
    during_sleep: Callable[[], None] | None = None

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds
        if self.during_sleep is not None:
            self.during_sleep()

    def clock(self) -> Clock:
        return Clock(monotonic=lambda: self.now, sleep=self.sleep, random=lambda: self.jitter)


def client_error(code: str, status: int = 400, operation: str = "Scan") -> ClientError:
    response: Any = {
        "Error": {"Code": code, "Message": f"{code} happened"},
        "ResponseMetadata": {"HTTPStatusCode": status},
    }
    return ClientError(response, operation)


# -- Backoff ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("backoff", "expected"),
    [
        (Backoff(0.5, cap=30.0), [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]),
        (Backoff(0.1, cap=10.0), [0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 6.4, 10.0]),
        (Backoff(1.0, cap=1.0), [1.0] * 8),
        (Backoff(1.0, cap=100.0, factor=3.0), [1.0, 3.0, 9.0, 27.0, 81.0, 100.0, 100.0, 100.0]),
        (Backoff(2.0, cap=5.0, factor=1.0), [2.0] * 8),
        # A cap below the initial delay caps the first wait too (ChangeOptions(max_backoff_seconds=0.2)).
        (Backoff(0.5, cap=0.2), [0.2] * 8),
    ],
)
def test_delays_grow_by_the_factor_up_to_the_cap(backoff: Backoff, expected: list[float]) -> None:
    assert [backoff.ceiling(n) for n in range(1, 9)] == pytest.approx(expected)
    assert [backoff.delay(n) for n in range(1, 9)] == pytest.approx(expected)  # no jitter: the ceiling itself


@pytest.mark.parametrize("retry_number", [1_024, 1_100, 10**6])
def test_a_loop_that_retries_forever_stays_at_the_cap(retry_number: int) -> None:
    assert Backoff(0.4, cap=30.0).ceiling(retry_number) == 30.0  # 2.0 ** 1100 would overflow


@pytest.mark.parametrize(
    ("jitter", "random_value", "expected"),
    [
        (Jitter.NONE, 0.0, 8.0),
        (Jitter.NONE, 0.7, 8.0),
        (Jitter.FULL, 0.0, 0.0),
        (Jitter.FULL, 0.25, 2.0),
        (Jitter.FULL, 1.0, 8.0),
        (Jitter.HALF, 0.0, 4.0),
        (Jitter.HALF, 0.5, 6.0),
        (Jitter.HALF, 1.0, 8.0),
    ],
)
def test_jitter_spreads_the_delay_within_its_bounds(jitter: Jitter, random_value: float, expected: float) -> None:
    backoff = Backoff(1.0, cap=30.0, jitter=jitter)
    assert backoff.delay(4, lambda: random_value) == pytest.approx(expected)


@pytest.mark.parametrize(("jitter", "low"), [(Jitter.FULL, 0.0), (Jitter.HALF, 0.5), (Jitter.NONE, 1.0)])
def test_jittered_delays_with_the_real_random_stay_between_their_bounds(jitter: Jitter, low: float) -> None:
    backoff = Backoff(0.25, cap=20.0, jitter=jitter)
    for n in range(1, 12):
        ceiling = backoff.ceiling(n)
        delays = [backoff.delay(n) for _ in range(200)]
        assert all(low * ceiling <= d <= ceiling for d in delays), (n, min(delays), max(delays))


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"initial": 0.0, "cap": 1.0}, "positive"),
        ({"initial": 1.0, "cap": 0.0}, "positive"),
        ({"initial": -1.0, "cap": 1.0}, "positive"),
        ({"initial": 1.0, "cap": 2.0, "factor": 0.5}, "factor"),
    ],
)
def test_a_policy_that_cannot_work_is_refused(arguments: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Backoff(**arguments)


def test_retries_count_from_one() -> None:
    with pytest.raises(ValueError, match="from 1"):
        Backoff(1.0, cap=2.0).ceiling(0)


# The loops' delays as they were computed before the policy had one home: each named policy keeps them.
OLD_FORMULAS: list[tuple[str, Backoff, Callable[[int], float]]] = [
    ("DynamoDB throttling waited out", retry.DYNAMODB_THROTTLED, lambda n: min(30.0, 0.2 * 2 ** min(n, 8))),
    ("other transient DynamoDB errors", retry.DYNAMODB_FAILED, lambda n: min(30.0, 0.5 * 2**n)),
    ("BatchGetItem unprocessed keys", retry.UNPROCESSED_KEYS, lambda n: min(5.0, 0.05 * 2**n)),
    ("fast path, throttled", retry.REQUEST_THROTTLED, lambda n: min(1.0 * 2.0 ** (n - 1), 20.0)),
    ("fast path, other failures", retry.REQUEST_FAILED, lambda n: min(0.025 * 2.0 ** (n - 1), 20.0)),
    ("a DynamoDB Streams call", retry.STREAM_CALL, lambda n: min(0.1 * 2 ** (n - 1), 10.0)),
    ("PostgreSQL reconnect", retry.POSTGRES_RECONNECT, lambda n: min(0.5 * 2 ** (n - 1), 30.0)),
    ("change replication round", retry.CHANGES_RESTART, lambda n: min(0.5 * 2 ** (n - 1), 30.0)),
    ("a table's replication", retry.TABLE_RESTART, lambda n: min(1.0 * 2 ** (n - 1), 30.0)),
]


@pytest.mark.parametrize(("backoff", "old"), [(b, f) for _, b, f in OLD_FORMULAS], ids=[n for n, _, _ in OLD_FORMULAS])
def test_each_loop_keeps_its_delays(backoff: Backoff, old: Callable[[int], float]) -> None:
    assert [backoff.ceiling(n) for n in range(1, 40)] == pytest.approx([old(n) for n in range(1, 40)])


# -- what is transient -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "status", "transient", "throttling"),
    [
        ("ProvisionedThroughputExceededException", 400, True, True),
        ("ThrottlingException", 400, True, True),
        ("Throttling", 400, True, True),
        ("RequestLimitExceeded", 400, True, True),
        ("LimitExceededException", 400, True, True),
        ("TransactionInProgressException", 400, True, True),
        ("InternalServerError", 500, True, False),
        ("InternalFailure", 500, True, False),
        ("ServiceUnavailable", 503, True, False),
        ("ServiceUnavailableException", 503, True, False),
        ("RequestTimeout", 400, True, False),
        ("RequestTimeoutException", 408, True, False),
        ("", 502, True, False),  # a proxy's bad gateway, no DynamoDB code
        ("SomethingNew", 504, True, False),
        # Never retried: the answer will not change, and for a stream retrying would hide a gap.
        ("ValidationException", 400, False, False),
        ("ResourceNotFoundException", 400, False, False),
        ("TrimmedDataAccessException", 400, False, False),
        ("ExpiredIteratorException", 400, False, False),
        ("ConditionalCheckFailedException", 400, False, False),
        ("AccessDeniedException", 400, False, False),
        ("UnrecognizedClientException", 400, False, False),
    ],
)
def test_what_a_retry_can_fix(code: str, status: int, transient: bool, throttling: bool) -> None:
    error = client_error(code, status)
    assert retry.error_code(error) == code
    assert retry.error_message(error) == f"{code} happened"
    assert retry.is_transient(error) is transient
    assert retry.is_throttling(error) is throttling
    expected = TransientSourceError if transient else SourceError

    def fail() -> None:
        raise error

    with pytest.raises(SourceError) as raised:
        dynamodb.call(fail, "scanning", table="t")
    assert type(raised.value) is expected
    assert raised.value.message == f"scanning: {code}: {code} happened"


def test_an_error_response_without_code_or_status_is_not_transient() -> None:
    empty: Any = {}
    error = ClientError(empty, "Scan")
    assert retry.error_code(error) == "" and not retry.is_transient(error)


# -- Retrier ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("max_retries", [0, 1, 3, 9])
def test_retries_end_after_max_retries(max_retries: int) -> None:
    retrier = Retrier(Backoff(0.1, cap=10.0), max_retries=max_retries, clock=DrivenClock().clock())
    delays = []
    while (delay := retrier.next_delay()) is not None:
        delays.append(delay)
        assert len(delays) <= max_retries
    assert delays == pytest.approx([min(0.1 * 2**n, 10.0) for n in range(max_retries)])
    assert retrier.retries == max_retries
    assert retrier.next_delay() is None  # spent stays spent


@pytest.mark.parametrize(
    ("deadline", "expected"),
    [
        (0.4, []),  # the first wait (0.5 s) would end after the deadline
        (0.5, [0.5]),
        (3.4, [0.5, 1.0]),  # 0.5 + 1.0 + 2.0 = 3.5 > 3.4
        (3.5, [0.5, 1.0, 2.0]),
        (62.0, [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0]),  # 61.5 s, then 30 more would pass 62
    ],
)
def test_no_wait_ends_after_the_deadline(deadline: float, expected: list[float]) -> None:
    time_ = DrivenClock()
    retrier = Retrier(retry.POSTGRES_RECONNECT, deadline=deadline, clock=time_.clock())
    while (delay := retrier.next_delay()) is not None:
        assert not retrier.wait(delay)
    assert time_.sleeps == expected
    assert time_.now <= deadline


def test_the_deadline_counts_the_time_the_tries_take() -> None:
    time_ = DrivenClock()
    retrier = Retrier(Backoff(1.0, cap=1.0), deadline=10.0, clock=time_.clock())
    time_.now += 9.5  # a slow first try
    assert retrier.next_delay() is None


def test_reset_starts_the_delays_again_and_advance_ignores_limits() -> None:
    retrier = Retrier(Backoff(0.5, cap=4.0), max_retries=2, clock=DrivenClock().clock())
    assert [retrier.next_delay(), retrier.next_delay(), retrier.next_delay()] == [0.5, 1.0, None]
    retrier.reset()
    assert retrier.next_delay() == 0.5
    assert [retrier.advance() for _ in range(5)] == [1.0, 2.0, 4.0, 4.0, 4.0]
    assert retrier.retries == 6


def test_the_clock_gives_the_jitter() -> None:
    retrier = Retrier(Backoff(2.0, cap=8.0, jitter=Jitter.FULL), clock=DrivenClock(jitter=0.25).clock())
    assert [retrier.advance() for _ in range(4)] == [0.5, 1.0, 2.0, 2.0]


def test_a_set_stop_event_ends_a_wait_at_once() -> None:
    stop = threading.Event()
    stop.set()
    started = time.monotonic()
    assert Retrier(Backoff(60.0, cap=60.0), stop=stop).wait(60.0)
    assert Clock().wait(60.0, stop)
    assert time.monotonic() - started < 1.0


def test_a_stop_event_set_while_waiting_ends_the_wait() -> None:
    stop = threading.Event()
    waiting = threading.Event()
    result: list[bool] = []

    def wait() -> None:
        waiting.set()
        result.append(Retrier(Backoff(60.0, cap=60.0), stop=stop).wait(60.0))

    thread = threading.Thread(target=wait)
    started = time.monotonic()
    thread.start()
    assert waiting.wait(10)
    stop.set()
    thread.join(10)
    assert result == [True] and time.monotonic() - started < 10


def test_a_driven_clock_sees_the_stop_event_set_during_its_sleep() -> None:
    stop = threading.Event()
    time_ = DrivenClock(during_sleep=stop.set)
    retrier = Retrier(Backoff(1.0, cap=1.0), stop=stop, clock=time_.clock())
    assert retrier.wait(1.0) and time_.sleeps == [1.0]
    assert retrier.wait(1.0) and time_.sleeps == [1.0]  # already set: no more sleeping


def test_without_a_stop_event_a_wait_just_sleeps() -> None:
    time_ = DrivenClock()
    assert not Retrier(Backoff(1.0, cap=1.0), clock=time_.clock()).wait(3.0)
    assert time_.sleeps == [3.0] and time_.now == 3.0


# -- DynamoDB's retry levels, scripted -------------------------------------------------------------------------------


class Scripted:
    """A call that raises the scripted errors in turn, then answers ``answer``."""

    def __init__(self, errors: list[ClientError], answer: Any = None) -> None:
        self.errors = list(errors)
        self.answer = answer if answer is not None else {"Items": []}
        self.calls = 0

    def __call__(self) -> Any:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return self.answer


def test_throttling_is_waited_out_with_growing_delays() -> None:
    time_ = DrivenClock()
    call = Scripted([client_error("ProvisionedThroughputExceededException")] * 12)
    response, throttled = dynamodb.call_waiting_out_throttling(call, "scanning", table="t", clock=time_.clock())
    assert response == {"Items": []} and throttled == 12 and call.calls == 13
    assert time_.sleeps == pytest.approx([0.4, 0.8, 1.6, 3.2, 6.4, 12.8, 25.6] + [30.0] * 5)


def test_other_transient_errors_are_retried_eight_times_then_raised() -> None:
    time_ = DrivenClock(jitter=0.0)  # half jitter: half the ceiling
    call = Scripted([client_error("InternalServerError", 500)] * 20)
    with pytest.raises(TransientSourceError, match="InternalServerError"):
        dynamodb.call_waiting_out_throttling(call, "scanning", table="t", clock=time_.clock())
    assert call.calls == 9
    assert time_.sleeps == pytest.approx([0.5, 1.0, 2.0, 4.0, 8.0, 15.0, 15.0, 15.0])


def test_an_error_no_retry_can_fix_is_raised_at_once() -> None:
    time_ = DrivenClock()
    call = Scripted([client_error("ValidationException")])
    with pytest.raises(SourceError, match="ValidationException"):
        dynamodb.call_waiting_out_throttling(call, "scanning", table="t", clock=time_.clock())
    assert call.calls == 1 and time_.sleeps == []


def test_a_stop_request_ends_the_wait_for_throttling_to_pass() -> None:
    """Throttling is waited out forever; a SIGTERM must not wait with it (it used to wait until it passed)."""
    stop = threading.Event()
    time_ = DrivenClock()
    call = Scripted([client_error("ThrottlingException")] * 1000)
    time_.during_sleep = lambda: stop.set() if len(time_.sleeps) == 3 else None
    with pytest.raises(Interrupted, match="stopped on request while scanning"):
        dynamodb.call_waiting_out_throttling(call, "scanning", table="t", stop=stop, clock=time_.clock())
    assert call.calls == 3 and len(time_.sleeps) == 3


def test_scan_page_passes_the_stop_event_to_its_wait() -> None:
    stop = threading.Event()
    stop.set()

    class Throttled:
        calls = 0

        def scan(self, **request: Any) -> Any:
            self.calls += 1
            raise client_error("ProvisionedThroughputExceededException")

    client = Throttled()
    started = time.monotonic()
    with pytest.raises(Interrupted):
        dynamodb.scan_page(
            client, "t", segment=0, total_segments=1, start_key=None, limit=None, consistent_read=False, stop=stop
        )
    assert client.calls == 1 and time.monotonic() - started < 1.0


def test_unprocessed_keys_are_asked_for_again_after_a_growing_wait() -> None:
    keys = [{"pk": {"S": str(n)}} for n in range(3)]

    class Busy:
        def __init__(self) -> None:
            self.requests: list[list[dict[str, Any]]] = []

        def batch_get_item(self, RequestItems: dict[str, Any]) -> Any:  # noqa: N803 (boto3's spelling)
            wanted = RequestItems["t"]["Keys"]
            self.requests.append(wanted)
            served, left = wanted[:1], wanted[1:]
            unprocessed = {"t": {"Keys": left}} if left else {}
            return {"Responses": {"t": [dict(k, v={"N": "1"}) for k in served]}, "UnprocessedKeys": unprocessed}

    client = Busy()
    time_ = DrivenClock()
    items = dynamodb.batch_get_items(client, "t", keys, clock=time_.clock())
    assert [i["pk"]["S"] for i in items] == ["0", "1", "2"]
    assert [len(r) for r in client.requests] == [3, 2, 1]
    assert time_.sleeps == pytest.approx([0.1, 0.2])


def test_a_load_throttled_without_end_stops_on_request() -> None:
    """The load passes its stop event down to the wait for throttling (a dry run: no database needed)."""
    stop = threading.Event()

    class Storm:
        calls = 0

        def scan(self, **request: Any) -> Any:
            self.calls += 1
            stop.set()  # SIGTERM arrives while DynamoDB throttles
            if self.calls >= 3:  # without the stop event podyn would wait on: end the test instead of hanging
                raise client_error("ValidationException")
            raise client_error("ProvisionedThroughputExceededException")

    spec = TableSpec(source="storm", schema="public", table="storm", partition_key=KeyAttribute("pk", "S"))
    target = DryRunTarget(io.StringIO(), citus=False)
    description = dynamodb.TableDescription(spec, None, None, 0, 0)
    client = Storm()
    started = time.monotonic()
    with pytest.raises(Interrupted):
        load_table(
            description,
            target.prepare_table(spec, create=False, citus=False),
            target,
            client,
            LoadOptions(segments=1, connections=1),
            stop=stop,
        )
    assert client.calls == 1 and time.monotonic() - started < 5.0
