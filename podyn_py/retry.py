"""podyn's one retry policy: which DynamoDB failures are transient, and how long to wait before trying again.

Every back-off loop in podyn takes its delays from one of the :class:`Backoff` policies below (initial delay,
growth factor, cap, jitter), one per level, from a single HTTP request to a table's whole replication. The loops
with a deadline, an attempt limit or a stop event count their tries with a :class:`Retrier`, whose waits end at
once when the stop event is set; the two that keep their own counters (the fast path's per-request attempts,
DynamoDB's wait for throttling) ask the policy for each delay. Waits go through a :class:`Clock` (the fast path:
its injected ``sleep``) that tests replace, so no unit test sleeps. What each loop does between tries (reconnect,
re-read checkpoints, log, count a metric) stays in the loop; this module decides nothing but "again?" and "after
how long?".

It is not for PostgreSQL's errors: which of those a retry can fix is ``target.postgres.classify``'s business,
which marks them with :class:`~podyn_py.errors.TransientTargetError`. Nor does it do I/O: it imports neither
boto3 nor psycopg (a ``ClientError`` is only read through its ``response`` dict).
"""

from __future__ import annotations

import enum
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from podyn_py import health

if TYPE_CHECKING:
    from botocore.exceptions import ClientError

__all__ = [
    "THROTTLING_CODES",
    "TRANSIENT_CODES",
    "TRANSIENT_STATUSES",
    "Backoff",
    "Clock",
    "Jitter",
    "Retrier",
    "error_code",
    "error_message",
    "is_throttling",
    "is_transient",
]

#: Error codes that mean "slow down": botocore's standard retry mode's list (which has DynamoDB's).
THROTTLING_CODES = frozenset(
    {
        "Throttling",
        "ThrottlingException",
        "ThrottledException",
        "RequestThrottledException",
        "TooManyRequestsException",
        "ProvisionedThroughputExceededException",
        "TransactionInProgressException",
        "RequestLimitExceeded",
        "BandwidthLimitExceeded",
        "LimitExceededException",
        "RequestThrottled",
        "SlowDown",
        "PriorRequestNotComplete",
        "EC2ThrottledException",
    }
)
#: Error codes a later retry can fix: throttling, server-side failures and timeouts.
TRANSIENT_CODES = THROTTLING_CODES | {
    "InternalServerError",
    "InternalFailure",
    "ServiceUnavailable",
    "ServiceUnavailableException",
    "RequestTimeout",
    "RequestTimeoutException",
}
#: HTTP statuses a later retry can fix, whatever the code (botocore's standard mode's).
TRANSIENT_STATUSES = frozenset({500, 502, 503, 504})


def error_code(error: ClientError) -> str:
    """The error code of a botocore ``ClientError`` (also the fast path's, which has the same shape)."""
    return str(error.response.get("Error", {}).get("Code", ""))


def error_message(error: ClientError) -> str:
    return str(error.response.get("Error", {}).get("Message", ""))


def is_throttling(error: ClientError) -> bool:
    return error_code(error) in THROTTLING_CODES


def is_transient(error: ClientError) -> bool:
    """Whether trying the same request again later can succeed: throttling, a timeout, a 5xx."""
    status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
    return error_code(error) in TRANSIENT_CODES or status in TRANSIENT_STATUSES


class Jitter(enum.Enum):
    """How a delay is spread, so that workers failing together do not retry together."""

    #: The delay as computed.
    NONE = "none"
    #: Uniform in [0, delay] ("full jitter", botocore's).
    FULL = "full"
    #: Uniform in [delay / 2, delay]: spread, yet never much shorter than asked.
    HALF = "half"


@dataclass(frozen=True)
class Backoff:
    """Truncated exponential back-off: the n-th retry waits ``initial × factor^(n-1)``, at most ``cap``, jittered."""

    initial: float
    cap: float
    factor: float = 2.0
    jitter: Jitter = Jitter.NONE

    def __post_init__(self) -> None:
        if not (self.initial > 0 and self.cap > 0):
            raise ValueError(f"initial and cap must be positive, got {self.initial} and {self.cap}")
        if self.factor < 1:
            raise ValueError(f"factor must be at least 1, not {self.factor}")

    def ceiling(self, retry: int) -> float:
        """The delay before retry number ``retry`` (1: the first), before jitter."""
        if retry < 1:
            raise ValueError(f"retries count from 1, not {retry}")
        try:
            grown = self.initial * self.factor ** (retry - 1)
        except OverflowError:  # a loop that retries forever reaches 2.0 ** 1024
            return self.cap
        return min(grown, self.cap)

    def delay(self, retry: int, random: Callable[[], float] = random.random) -> float:
        """The jittered delay before retry number ``retry``; ``random`` returns a float in [0, 1]."""
        ceiling = self.ceiling(retry)
        if self.jitter is Jitter.FULL:
            return random() * ceiling
        if self.jitter is Jitter.HALF:
            return ceiling * (0.5 + random() / 2)
        return ceiling


@dataclass(frozen=True)
class Clock:
    """Time as a retry loop sees it. The default is real time; tests pass their own functions and drive it."""

    monotonic: Callable[[], float] = time.monotonic
    #: Sleeps instead of waiting on the stop event; None: really wait (on the stop event when there is one).
    sleep: Callable[[float], None] | None = None
    random: Callable[[], float] = random.random

    def wait(self, seconds: float, stop: threading.Event | None = None) -> bool:
        """Wait ``seconds``, or less when ``stop`` is set meanwhile; True when it is set (then stop waiting).

        A wait before a retry is a round of the thread's loop (``health.beat``): it is waiting, not stalled.
        """
        health.beat()
        if stop is not None and stop.is_set():
            return True
        try:
            if self.sleep is not None:
                self.sleep(seconds)
                return stop is not None and stop.is_set()
            if stop is None:
                time.sleep(seconds)
                return False
            return stop.wait(seconds)
        finally:
            health.beat()


SYSTEM_CLOCK = Clock()

# -- the policies, one per level, from the request up to the table --------------------------------------------------

#: The fast path's own retries of one HTTP request, as botocore's standard mode: full jitter, from 1 s when
#: throttled and from 25 ms otherwise (the cap is the client's ``max_backoff``).
REQUEST_THROTTLED = Backoff(1.0, cap=20.0, jitter=Jitter.FULL)
REQUEST_FAILED = Backoff(0.025, cap=20.0, jitter=Jitter.FULL)
#: Throttling that outlasted the request's retries is waited out, forever: a throttled load slows down, never fails.
DYNAMODB_THROTTLED = Backoff(0.4, cap=30.0, jitter=Jitter.HALF)
#: Other transient DynamoDB failures that outlasted the request's retries: eight more tries.
DYNAMODB_FAILED = Backoff(1.0, cap=30.0, jitter=Jitter.HALF)
DYNAMODB_FAILED_RETRIES = 8
#: A data file of an export in S3 whose reading failed (connection lost, a 5xx beyond botocore's retries): read
#: again from its committed position, eight more times.
S3_FAILED = Backoff(1.0, cap=30.0, jitter=Jitter.HALF)
S3_FAILED_RETRIES = 8
#: BatchGetItem's unprocessed keys (the table is busy): asked for again, forever.
UNPROCESSED_KEYS = Backoff(0.1, cap=5.0, jitter=Jitter.HALF)
#: One DynamoDB Streams call (DescribeStream, GetShardIterator, GetRecords), tried ``retry_attempts`` times.
STREAM_CALL = Backoff(0.1, cap=10.0)
#: A PostgreSQL transaction (or a load's page) whose connection was lost or that hit a lock timeout: reconnect and
#: run it again, until the caller's deadline (10 minutes by default).
POSTGRES_RECONNECT = Backoff(0.5, cap=30.0)
#: One table's change replication after a transient failure (the cap is ``ChangeOptions.max_backoff_seconds``);
#: back to the start after every successful round.
CHANGES_RESTART = Backoff(0.5, cap=30.0)
#: One table's whole replication (hold, prepare, replicate) after a transient failure, until stopped.
TABLE_RESTART = Backoff(1.0, cap=30.0)


class Retrier:
    """The tries of one operation: delays from ``backoff``, at most ``max_retries`` waits and no wait that would end
    after ``deadline`` seconds from now (None: no limit), each wait ended at once by ``stop``.

    Usage: after a failure that a retry can fix, ``delay = retrier.next_delay()``; None means give up (raise the
    error); otherwise log and ``if retrier.wait(delay): raise Interrupted(...)``. A loop that retries until stopped
    takes :meth:`advance` instead. After a success, :meth:`reset` starts the delays from ``initial`` again. Not
    thread-safe: one per loop.
    """

    __slots__ = ("_deadline", "backoff", "clock", "max_retries", "retries", "stop")

    def __init__(
        self,
        backoff: Backoff,
        *,
        stop: threading.Event | None = None,
        max_retries: int | None = None,
        deadline: float | None = None,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        if max_retries is not None and max_retries < 0:
            raise ValueError(f"max_retries must not be negative, not {max_retries}")
        self.backoff = backoff
        self.stop = stop
        self.max_retries = max_retries
        self.clock = clock
        self._deadline = None if deadline is None else clock.monotonic() + deadline
        #: Waits since the start or the last :meth:`reset`.
        self.retries = 0

    def next_delay(self) -> float | None:
        """Count a failed try: the wait before the next one, or None when the retries or the deadline are spent."""
        if self.max_retries is not None and self.retries >= self.max_retries:
            return None
        delay = self.backoff.delay(self.retries + 1, self.clock.random)
        if self._deadline is not None and self.clock.monotonic() + delay > self._deadline:
            return None
        self.retries += 1
        return delay

    def advance(self) -> float:
        """Count a failed try and return the wait before the next one, whatever the limits: for loops that retry
        until stopped (which set none)."""
        self.retries += 1
        return self.backoff.delay(self.retries, self.clock.random)

    def wait(self, seconds: float) -> bool:
        """Wait before the next try; True when the stop event ended (or preceded) the wait."""
        return self.clock.wait(seconds, self.stop)

    def reset(self) -> None:
        """A try succeeded: the next failure waits ``initial`` again (the deadline, if any, stays)."""
        self.retries = 0
