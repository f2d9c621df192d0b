"""Reading one table's DynamoDB stream: shards, their lineage, iterators and polling.

A :class:`StreamReader` turns the shards of one stream into :class:`ShardBatch` values: raw boto3 stream
records of one shard, in order, plus the :class:`ShardPosition` to checkpoint once they are applied. A child
shard is read only after its parent is finished, so every key's changes come out in the order they were made;
and :class:`~podyn_py.errors.StreamGapError` is raised rather than continue past records that are gone.

It is not for turning records into changes (``core``), applying them or storing checkpoints (the target
edge): the caller does that, and builds a new reader from its stored positions whenever it restarts or fails
to commit.

How the service is used, and why:

* Only the ``dynamodbstreams`` client the caller passes in is used (no KCL). Errors are told apart by
  ``ClientError`` codes, never by client-specific exception classes, so scripted clients act like real ones.
* Every GetRecords call is billed, so an idle open shard is polled with back-off (``idle_min`` doubling to
  ``idle_max``); closed shards are drained without waiting. Throttling and 5xx errors are retried with
  bounded exponential back-off (``retry.STREAM_CALL``) and end in :class:`~podyn_py.errors.TransientSourceError`.
* Records older than 24 hours are trimmed. A shard we hold an unfinished position for that is no longer
  listed, or a read after our position that the service reports as trimmed, is a gap. So is a finished shard
  that is no longer listed while none of its children is known: they were trimmed before we read them.
* A shard the caller has no position for gets an empty batch (``position.sequence_number is None``) as soon
  as it becomes readable, before any of its records. Checkpointing it lets a later reader notice that the
  shard was trimmed while nobody was reading, instead of skipping it as if it predated replication.
* A disabled stream is read to the end of every shard; then :attr:`StreamReader.ended` turns true.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Collection, Mapping
from datetime import UTC, datetime
from typing import Any

from botocore.exceptions import ClientError, HTTPClientError
from botocore.exceptions import ConnectionError as BotoConnectionError

from podyn_py import retry
from podyn_py.core.ports import StreamsClient
from podyn_py.core.positions import ShardBatch, ShardPosition
from podyn_py.errors import DataError, SourceError, StreamGapError, TransientSourceError
from podyn_py.retry import error_code as _code
from podyn_py.retry import error_message as _message

__all__ = ["ShardBatch", "ShardPosition", "StreamReader", "StreamsClient"]

_log = logging.getLogger(__name__)

_GET_RECORDS_MAX_LIMIT = 1000
_DESCRIBE_STREAM_MAX_LIMIT = 100


class _Shard:
    """The reader's mutable view of one shard."""

    __slots__ = (
        "closed",
        "due",
        "finished",
        "has_position",
        "held",
        "idle_delay",
        "iterator",
        "last_written",
        "listed",
        "parent_id",
        "sequence_number",
        "shard_id",
    )

    def __init__(self, shard_id: str, parent_id: str | None, idle_delay: float) -> None:
        self.shard_id = shard_id
        self.parent_id = parent_id
        self.sequence_number: str | None = None
        self.finished = False
        #: In the latest DescribeStream listing.
        self.listed = False
        #: EndingSequenceNumber was set in a listing: no new records will arrive.
        self.closed = False
        #: The caller passed a position for it when the reader was built.
        self.held = False
        #: The caller has (or has been handed) a position for it.
        self.has_position = False
        self.iterator: str | None = None
        #: ApproximateCreationDateTime of the last record this reader delivered from it, when the record had one:
        #: the records after it, should they be lost, were written later than that.
        self.last_written: datetime | None = None
        #: Clock time from which it may be polled again.
        self.due = float("-inf")
        self.idle_delay = idle_delay

    def position(self) -> ShardPosition:
        return ShardPosition(self.shard_id, self.parent_id, self.sequence_number, self.finished)


class StreamReader:
    """Reads one stream's shards in lineage order; see the module docstring for the rules it keeps.

    ``positions`` are the caller's checkpoints, keyed by shard id; empty for a stream never read before. The
    reader advances its in-memory positions as it hands out batches and never looks back: if the caller fails
    to apply and commit a batch, it must throw the reader away and build a new one from its stored positions.
    The same holds after any exception the reader raises. Keep finished positions: they are how a gap is told
    from old history (one may be dropped once its shard is no longer listed and a child's position is stored).

    ``max_records`` caps each GetRecords call and, softly, the records one :meth:`read` returns. The listing
    of shards is refreshed every ``relist_seconds``. ``retry_attempts`` bounds tries of one throttled call.
    ``clock`` and ``sleep`` are injectable so tests run in simulated time. The reader makes no calls until the
    first :meth:`read`, and is not thread-safe; a caller may hold one per table. With ``only``, it reads just
    those shards (the ones this process leases; see ``units.py``) and lists the others for their lineage only
    (:attr:`listed`).
    """

    def __init__(
        self,
        client: StreamsClient,
        stream_arn: str,
        positions: Mapping[str, ShardPosition] | None = None,
        *,
        max_records: int = 1000,
        relist_seconds: float = 30.0,
        idle_min: float = 0.25,
        idle_max: float = 5.0,
        retry_attempts: int = 10,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        only: Collection[str] | None = None,
    ) -> None:
        if not 1 <= max_records <= _GET_RECORDS_MAX_LIMIT:
            raise ValueError(f"max_records must be between 1 and {_GET_RECORDS_MAX_LIMIT}, not {max_records}")
        if not 0 < idle_min <= idle_max:
            raise ValueError(f"need 0 < idle_min <= idle_max, got {idle_min} and {idle_max}")
        if retry_attempts < 1:
            raise ValueError(f"retry_attempts must be at least 1, not {retry_attempts}")
        self._client = client
        self._arn = stream_arn
        self._table = _table_from_arn(stream_arn)
        self._max_records = max_records
        self._relist_seconds = relist_seconds
        self._idle_min = idle_min
        self._idle_max = idle_max
        self._retry_attempts = retry_attempts
        self._clock = clock
        self._sleep = sleep
        self._retry_clock = retry.Clock(monotonic=clock, sleep=sleep)
        self._status: str | None = None
        self._next_listing = float("-inf")
        self._shards: dict[str, _Shard] = {}
        #: Batches decided outside a pass (by the listing), handed out at the start of the next one.
        self._pending: list[ShardBatch] = []
        #: The shards this reader reads (those this process holds leases on); None: every shard.
        self._only = None if only is None else frozenset(only)
        #: Shard id → parent id of every shard in the latest listing (replaced whole: safe to read from a thread).
        self.listed: dict[str, str | None] | None = None
        for position in (positions or {}).values():
            shard = _Shard(position.shard_id, position.parent_shard_id, idle_min)
            shard.sequence_number = position.sequence_number
            shard.finished = position.finished
            shard.held = shard.has_position = True
            self._shards[shard.shard_id] = shard

    @property
    def stream_arn(self) -> str:
        return self._arn

    @property
    def ended(self) -> bool:
        """True once the stream is disabled and every listed shard has been delivered to its end.

        Nothing more will come: :meth:`read` returns no batches from then on.
        """
        if self._pending or self._status != "DISABLED":
            return False
        return all(s.finished for s in self._shards.values() if s.listed)

    def relist(self) -> None:
        """List the shards again at the next :meth:`read` (another process finished a shard: its children are
        due). May be called from another thread: it only moves the time of the next listing."""
        self._next_listing = float("-inf")

    def positions(self) -> dict[str, ShardPosition]:
        """The position of every shard handed out so far or passed in, including finished ones."""
        return {s.shard_id: s.position() for s in self._shards.values() if s.has_position}

    def read(self, max_wait: float = 1.0) -> list[ShardBatch]:
        """Batches ready now, waiting up to ``max_wait`` seconds for some; an empty list when idle or ended.

        A parent's batches always come before its children's, in this list and across calls.
        Raises :class:`StreamGapError` when records that replication needs are gone, and
        :class:`TransientSourceError` or :class:`SourceError` when the service keeps failing.
        """
        deadline = self._clock() + max_wait
        while True:
            if self._clock() >= self._next_listing:
                self._list_shards()
            if self.ended:
                return []
            batches = self._pass()
            if batches:
                return batches
            now = self._clock()
            if now >= deadline:
                return []
            wake = min([self._next_listing, deadline, *(s.due for s in self._readable())])
            if wake > now:
                self._sleep(wake - now)

    # -- one pass over the shards ----------------------------------------------------------------------------

    def _pass(self) -> list[ShardBatch]:
        """Start newly readable shards and poll each due one once, up to about ``max_records`` records."""
        batches, self._pending = self._pending, []
        batches.extend(self._start(s) for s in self._readable() if not s.has_position)
        taken = 0
        due = [s for s in self._readable() if s.due <= self._clock()]
        # Least recently due first, so busy shards cannot starve the others across calls.
        due.sort(key=lambda s: (s.due, s.shard_id))
        for shard in due:
            if taken >= self._max_records:
                break
            batch = self._poll(shard)
            if batch is None:
                continue
            batches.append(batch)
            taken += len(batch.records)
            if batch.position.finished:
                # In the same list right after the parent, so the caller checkpoints both at once.
                batches.extend(self._start(c) for c in self._readable() if not c.has_position)
        return batches

    def _readable(self) -> list[_Shard]:
        return [
            s for s in self._shards.values() if s.listed and not s.finished and self._mine(s) and self._parent_done(s)
        ]

    def _mine(self, shard: _Shard) -> bool:
        return self._only is None or shard.shard_id in self._only

    def _parent_done(self, shard: _Shard) -> bool:
        parent = self._shards.get(shard.parent_id) if shard.parent_id is not None else None
        if parent is None:
            # No parent, or one trimmed away before we ever knew it: nothing to wait for.
            return True
        # An unlisted parent without a position was trimmed before we knew it; one with an unfinished position
        # is a gap that the listing has already raised.
        return parent.finished or not (parent.listed or parent.has_position)

    def _anchored(self, shard: _Shard) -> bool:
        """Whether the shard's records from where we read are needed, so that losing them is a gap.

        Only a shard first seen by this reader, whose parent it never saw finish and from which nothing was
        delivered yet, is not: it predates replication, like the parents we skip.
        """
        if shard.held or shard.sequence_number is not None:
            return True
        parent = self._shards.get(shard.parent_id) if shard.parent_id is not None else None
        return parent is not None and parent.finished

    def _start(self, shard: _Shard) -> ShardBatch:
        shard.has_position = True
        _log.info("stream %s: reading shard %s from its trim horizon", self._arn, shard.shard_id)
        return self._batch(shard, [])

    def _batch(self, shard: _Shard, records: list[dict[str, Any]]) -> ShardBatch:
        return ShardBatch(shard.shard_id, shard.parent_id, records, shard.position())

    # -- reading one shard -----------------------------------------------------------------------------------

    def _poll(self, shard: _Shard) -> ShardBatch | None:
        """One GetRecords call (and GetShardIterator if needed); a batch if there is anything to hand out."""
        for _ in range(2):  # a second round only after refreshing an expired iterator
            if shard.iterator is None and not self._open_iterator(shard):
                return self._finish(shard, []) if shard.finished else None
            try:
                response = self._call(
                    "GetRecords",
                    self._client.get_records,
                    ShardIterator=shard.iterator,
                    Limit=self._max_records,
                )
            except ClientError as error:
                shard.iterator = None
                if _code(error) == "ExpiredIteratorException":
                    # Iterators live 15 minutes; a new one from the last delivered record loses nothing.
                    _log.debug("stream %s shard %s: iterator expired, refreshing", self._arn, shard.shard_id)
                    continue
                if _code(error) in ("TrimmedDataAccessException", "ResourceNotFoundException"):
                    self._lost(shard, error)
                    return self._finish(shard, []) if shard.finished else None
                raise self._error("GetRecords", error) from error
            return self._take(shard, response)
        return None

    def _open_iterator(self, shard: _Shard) -> bool:
        """Get an iterator just after the last delivered record (or at the trim horizon); False if none."""
        params: dict[str, Any] = {"StreamArn": self._arn, "ShardId": shard.shard_id}
        if shard.sequence_number is None:
            params["ShardIteratorType"] = "TRIM_HORIZON"
        else:
            params["ShardIteratorType"] = "AFTER_SEQUENCE_NUMBER"
            params["SequenceNumber"] = shard.sequence_number
        try:
            response = self._call("GetShardIterator", self._client.get_shard_iterator, **params)
        except ClientError as error:
            if _code(error) in ("TrimmedDataAccessException", "ResourceNotFoundException"):
                self._lost(shard, error)
                return False
            raise self._error("GetShardIterator", error) from error
        iterator = response.get("ShardIterator")
        if iterator is None:
            if not shard.closed:
                raise SourceError(
                    f"GetShardIterator returned no iterator for open shard {shard.shard_id} of {self._arn}",
                    table=self._table,
                )
            # A closed shard with nothing after our position: it is done.
            shard.finished = True
            return False
        shard.iterator = iterator
        return True

    def _lost(self, shard: _Shard, error: ClientError) -> None:
        """Records we were about to read are gone (trimmed, or the shard no longer exists)."""
        if self._anchored(shard):
            if _code(error) == "ResourceNotFoundException":
                self._describe()  # raises the clearer error when the whole stream no longer exists
                what = "the shard no longer exists, although the stream does"
            else:
                what = "DynamoDB Streams trimmed them (it keeps records for 24 hours after they are written)"
            after = (
                f"after sequence number {shard.sequence_number}"
                if shard.sequence_number is not None
                else "from its start"
            )
            raise StreamGapError(
                f"records of shard {shard.shard_id} {after} are gone from stream {self._arn} "
                f"({_code(error)}: {_message(error)}): {what}; {_written(shard)}. Re-run with --data to reload the "
                "table",
                table=self._table,
            ) from error
        if _code(error) == "TrimmedDataAccessException":
            # The oldest records were trimmed between opening the iterator and reading: open a new one.
            _log.info("stream %s shard %s: trim horizon moved, reopening", self._arn, shard.shard_id)
            shard.due = self._clock() + self._idle_min
            return
        _log.info("stream %s: shard %s was trimmed before it was read; skipping", self._arn, shard.shard_id)
        shard.finished = True

    def _take(self, shard: _Shard, response: Mapping[str, Any]) -> ShardBatch | None:
        records = self._newer(shard, response.get("Records") or [])
        if records:
            shard.sequence_number = _sequence_number(records[-1])
            shard.last_written = _written_at(records[-1]) or shard.last_written
        shard.iterator = response.get("NextShardIterator")
        now = self._clock()
        _log.debug(
            "stream %s shard %s: %d records, %s",
            self._arn,
            shard.shard_id,
            len(records),
            "more to come" if shard.iterator is not None else "end of shard",
        )
        if shard.iterator is None:
            return self._finish(shard, records)
        if records:
            shard.idle_delay = self._idle_min
            shard.due = now
        elif shard.closed:
            # A closed shard can still return empty pages before its end; they cost nothing to skip quickly.
            shard.due = now
        else:
            shard.due = now + shard.idle_delay
            shard.idle_delay = min(shard.idle_delay * 2, self._idle_max)
        return self._batch(shard, records) if records else None

    def _finish(self, shard: _Shard, records: list[dict[str, Any]]) -> ShardBatch:
        shard.finished = shard.has_position = True
        shard.iterator = None
        if not any(s.parent_id == shard.shard_id for s in self._shards.values()):
            # It closed after the last listing, so its children are not known yet: list again now.
            self._next_listing = min(self._next_listing, self._clock())
        _log.info(
            "stream %s: shard %s finished at sequence number %s",
            self._arn,
            shard.shard_id,
            shard.sequence_number,
        )
        return self._batch(shard, records)

    def _newer(self, shard: _Shard, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Records after the last delivered one: a safety net, as the service should send nothing else."""
        last = int(shard.sequence_number) if shard.sequence_number is not None else -1
        newer = []
        for record in records:
            number = int(_sequence_number(record))
            if number > last:
                newer.append(record)
                last = number
        if len(newer) < len(records):
            _log.warning(
                "stream %s shard %s: dropped %d records at or before sequence number %s",
                self._arn,
                shard.shard_id,
                len(records) - len(newer),
                shard.sequence_number,
            )
        return newer

    # -- the shard listing -----------------------------------------------------------------------------------

    def _list_shards(self) -> None:
        status, listing = self._describe()
        parents_known: set[str] = set()
        for description in listing:
            shard_id = description["ShardId"]
            parent_id = description.get("ParentShardId")
            shard = self._shards.get(shard_id)
            if shard is None:
                shard = self._shards[shard_id] = _Shard(shard_id, parent_id, self._idle_min)
                _log.info("stream %s: discovered shard %s (parent %s)", self._arn, shard_id, parent_id)
            shard.parent_id = parent_id
            shard.closed = "EndingSequenceNumber" in description.get("SequenceNumberRange", {})
        listed = {d["ShardId"] for d in listing}
        for shard in self._shards.values():
            shard.listed = shard.shard_id in listed
            if shard.parent_id is not None:
                parents_known.add(shard.parent_id)
        if status != self._status:
            _log.info("stream %s is %s with %d shards", self._arn, status, len(listed))
        self._status = status
        self.listed = {d["ShardId"]: d.get("ParentShardId") for d in listing}
        for shard in self._shards.values():
            if shard.listed or not shard.has_position:
                continue
            if not shard.finished and not self._anchored(shard):
                if not self._mine(shard):
                    continue  # its owner checkpoints it
                _log.info("stream %s: shard %s was trimmed before it was read; skipping", self._arn, shard.shard_id)
                self._pending.append(self._finish(shard, []))
            elif not shard.finished:
                after = (
                    f"after sequence number {shard.sequence_number}"
                    if shard.sequence_number is not None
                    else "from its start"
                )
                raise StreamGapError(
                    f"DescribeStream no longer lists shard {shard.shard_id} of stream {self._arn}, but its "
                    f"records {after} were not read (a shard leaves the listing once its records are trimmed, "
                    f"24 hours after they are written); {_written(shard)}. Re-run with --data to reload the table",
                    table=self._table,
                )
            if status == "ENABLED" and shard.shard_id not in parents_known:
                # While the stream is enabled a closed shard always has children; if they are all gone too,
                # whatever they held was trimmed before anyone read it.
                raise StreamGapError(
                    f"shard {shard.shard_id} of stream {self._arn} was read to its end, but DescribeStream lists "
                    "none of its child shards (they leave the listing once their records are trimmed, 24 hours "
                    f"after they are written), so they were never read; {_written(shard)}. Re-run with --data to "
                    "reload the table",
                    table=self._table,
                )
        self._next_listing = self._clock() + self._relist_seconds

    def _describe(self) -> tuple[str, list[dict[str, Any]]]:
        shards: list[dict[str, Any]] = []
        start: str | None = None
        status = "ENABLED"
        while True:
            params: dict[str, Any] = {"StreamArn": self._arn, "Limit": _DESCRIBE_STREAM_MAX_LIMIT}
            if start is not None:
                params["ExclusiveStartShardId"] = start
            try:
                response = self._call("DescribeStream", self._client.describe_stream, **params)
            except ClientError as error:
                if _code(error) == "ResourceNotFoundException":
                    # All that is known: the stream is gone. A table deleted a minute ago answers the same as a
                    # stream disabled more than a day ago, so podyn does not say which, nor when.
                    raise StreamGapError(
                        f"stream {self._arn} no longer exists (DescribeStream answered {_code(error)}: "
                        f"{_message(error)}), so changes after the last checkpoint cannot be read. Re-run with "
                        "--data to reload the table",
                        table=self._table,
                    ) from error
                raise self._error("DescribeStream", error) from error
            description = response["StreamDescription"]
            status = description["StreamStatus"]
            shards.extend(description.get("Shards") or [])
            start = description.get("LastEvaluatedShardId")
            if start is None:
                return status, shards

    # -- calls -----------------------------------------------------------------------------------------------

    def _call(self, operation: str, method: Callable[..., Any], **params: Any) -> Any:
        """Call ``method``, retrying what a retry can fix with bounded exponential back-off."""
        retrier = retry.Retrier(retry.STREAM_CALL, max_retries=self._retry_attempts - 1, clock=self._retry_clock)
        while True:
            try:
                response = method(**params)
            except ClientError as error:
                if not retry.is_transient(error):
                    raise
                last: Exception = error
                failure = f"{_code(error)}: {_message(error)}"
            except (BotoConnectionError, HTTPClientError) as error:
                last = error
                failure = str(error)
            else:
                _log.debug("%s %s: ok after %d attempt(s)", operation, self._arn, retrier.retries + 1)
                return response
            delay = retrier.next_delay()
            if delay is None:
                raise TransientSourceError(
                    f"{operation} on stream {self._arn} failed {retrier.retries + 1} times; last error: {failure}",
                    table=self._table,
                ) from last
            log = _log.warning if retrier.retries >= 3 else _log.debug
            log("%s %s: %s; retrying in %.2f s", operation, self._arn, failure, delay)
            retrier.wait(delay)

    def _error(self, operation: str, error: ClientError) -> SourceError:
        return SourceError(
            f"{operation} on stream {self._arn} failed: {_code(error)}: {_message(error)}", table=self._table
        )


def _sequence_number(record: Mapping[str, Any]) -> str:
    try:
        number = record["dynamodb"]["SequenceNumber"]
        int(number)
    except (KeyError, TypeError, ValueError) as error:
        raise DataError(f"stream record without a valid dynamodb.SequenceNumber: {record!r:.200}") from error
    return str(number)


def _written_at(record: Mapping[str, Any]) -> datetime | None:
    """A record's ApproximateCreationDateTime: a datetime from boto3, seconds since the epoch from raw JSON."""
    value = record.get("dynamodb", {}).get("ApproximateCreationDateTime")
    if isinstance(value, datetime):
        return value if value.tzinfo is not None else value.replace(tzinfo=UTC)
    if isinstance(value, int | float) and not isinstance(value, bool):
        return datetime.fromtimestamp(value, UTC)
    return None


def _written(shard: _Shard) -> str:
    """What is known of when a shard's lost records were written."""
    if shard.last_written is None:
        return (
            "podyn read no record of this shard since it started, so it does not know when the lost records were"
            " written"
        )
    age = (datetime.now(UTC) - shard.last_written).total_seconds()
    return (
        f"the last record podyn read from it was written at {shard.last_written.isoformat(timespec='seconds')}"
        f" ({_duration(age)} ago): the lost records were written after that"
    )


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{max(0.0, seconds):.0f} s"
    if seconds < 2 * 3600:
        return f"{seconds / 60:.0f} minutes"
    return f"{seconds / 3600:.1f} hours"


def _table_from_arn(stream_arn: str) -> str | None:
    """``arn:aws:dynamodb:REGION:ACCOUNT:table/NAME/stream/LABEL`` → NAME, for error messages."""
    resource = stream_arn.split(":", 5)[-1]
    parts = resource.split("/")
    return parts[1] if len(parts) >= 2 and parts[0] == "table" else None
