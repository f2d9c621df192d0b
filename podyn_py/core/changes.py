"""Stream records → changes: :class:`Upsert`, :class:`Delete`, or :class:`Refetch` when the record has no new image.

INSERT and MODIFY carry the item's full new image on NEW_IMAGE and NEW_AND_OLD_IMAGES streams: the row becomes that
image exactly (attributes absent from it become NULL). KEYS_ONLY and OLD_IMAGE streams only name the key, so the
current item must be read (:class:`Refetch`). REMOVE deletes by key.

Within a batch only each key's last change matters, since every change states the key's whole state:
:func:`compact` keeps that one, so a batch never writes a row twice and deletes and upserts never collide.

A REMOVE made by DynamoDB's TTL process (``userIdentity`` type ``Service``, principal ``dynamodb.amazonaws.com``) is a
:class:`Delete` with ``expired`` set. :class:`TtlPolicy` says what becomes of it (``--ttl-deletes``): deleted like any
other, kept (the row stays as the item was), or kept and marked (:class:`Expire`). :func:`compact` applies the policy,
since what a kept or marked row must hold can depend on the key's earlier changes in the batch.

The same holds over a whole load: the spool keeps each key's last change as a :class:`SpoolEntry`, what
:func:`compact` made of each batch (TTL deletes included) composed with the key's entry before it.
"""

from __future__ import annotations

import base64
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, cast

import orjson

from podyn_py.core.values import decode_binary, key_text, split_value, to_column_value
from podyn_py.errors import DataError

Item = dict[str, Any]
KeyIdentity = tuple[tuple[str, Any], ...]

#: View types whose INSERT/MODIFY records carry the new image.
VIEW_TYPES_WITH_NEW_IMAGE = frozenset({"NEW_IMAGE", "NEW_AND_OLD_IMAGES"})
#: The types a key attribute can have.
_KEY_TAGS = frozenset({"S", "N", "B"})


@dataclass(frozen=True)
class Upsert:
    key: Item
    item: Item
    created_at: datetime | None = None


@dataclass(frozen=True)
class Delete:
    key: Item
    created_at: datetime | None = None
    #: DynamoDB's TTL process removed the item (the record's userIdentity says so), not an application.
    expired: bool = False
    #: A TTL delete's image of the item before it went (OLD_IMAGE and NEW_AND_OLD_IMAGES streams), else None.
    old_image: Item | None = None


@dataclass(frozen=True)
class Refetch:
    """An INSERT or MODIFY whose record lacks the new image: apply the item as it is now (or delete it if gone)."""

    key: Item
    created_at: datetime | None = None


@dataclass(frozen=True)
class Expire:
    """A TTL delete under ``--ttl-deletes mark``: the row stays, marked as expired at ``created_at`` (the record's
    time). ``item``, when known (the record's old image, or the key's upsert earlier in the batch), is written first:
    the row then holds the item as it was when it expired, even where it was missing."""

    key: Item
    created_at: datetime | None = None
    item: Item | None = None


Change = Upsert | Delete | Refetch | Expire


class TtlPolicy(StrEnum):
    """What becomes of a TTL delete (``--ttl-deletes``)."""

    #: Delete the row, as DynamoDB deleted the item: the copy mirrors the table.
    DELETE = "delete"
    #: Keep the row, as the item was when it expired.
    KEEP = "keep"
    #: Keep the row and set its expiry time (``podyn_expired_at``); an item created again under the key clears it.
    MARK = "mark"


#: A TTL delete's userIdentity (GetRecords says PrincipalId and Type; Lambda events principalId and type).
_TTL_PRINCIPAL = "dynamodb.amazonaws.com"


def is_ttl_delete(record: Mapping[str, Any]) -> bool:
    """Did DynamoDB's TTL process make this record (a REMOVE whose userIdentity is the DynamoDB service)?"""
    identity = record.get("userIdentity")
    if record.get("eventName") != "REMOVE" or not isinstance(identity, Mapping):
        return False
    kind = identity.get("Type", identity.get("type"))
    principal = identity.get("PrincipalId", identity.get("principalId"))
    return bool(kind == "Service" and principal == _TTL_PRINCIPAL)


def to_change(
    record: Mapping[str, Any],
    key_names: Sequence[str],
    *,
    table: str | None = None,
    key_tags: Sequence[str] | None = None,
) -> Change:
    """One stream record as a change. DataError (naming table and key) for a record that does not parse.

    ``key_tags``, when given, are the key attributes' types (S, N or B, in ``key_names`` order): a key of another
    type is an error too, since it could never be the table's key.
    """
    body = record.get("dynamodb")
    if not isinstance(body, Mapping):
        raise DataError("stream record without its 'dynamodb' part", table=table, key=record.get("eventID"))
    keys = body.get("Keys")
    if not isinstance(keys, Mapping) or not all(name in keys for name in key_names):
        raise DataError(
            "stream record without the table's key", table=table, key=str(keys)[:100] if keys else record.get("eventID")
        )
    key = {name: keys[name] for name in key_names}
    for index, (name, value) in enumerate(key.items()):
        try:
            tag, raw = split_value(value)
            if tag not in _KEY_TAGS:  # also {}: an empty map's stand-in, and a map is never a key
                raise DataError(f"key attribute is {tag}, not a string, number or binary")
            if key_tags is not None and tag != key_tags[index]:
                raise DataError(f"key attribute is {tag}, the table's key is {key_tags[index]}")
            to_column_value(tag, raw)  # a key value that cannot be converted cannot be deleted or written either
        except DataError as exc:
            raise DataError(exc.message, table=table, key=key_text(keys, tuple(key_names)), attribute=name) from exc
    created = _timestamp(body.get("ApproximateCreationDateTime"))
    event = record.get("eventName")
    if event == "REMOVE":
        if not is_ttl_delete(record):
            return Delete(key, created)
        old = body.get("OldImage")
        return Delete(key, created, expired=True, old_image=dict(old) if isinstance(old, Mapping) else None)
    if event in ("INSERT", "MODIFY"):
        image = body.get("NewImage")
        if image is None:
            return Refetch(key, created)
        if not isinstance(image, Mapping):
            raise DataError("stream record's NewImage is not a map", table=table, key=key_text(keys, tuple(key_names)))
        return Upsert(key, dict(image), created)
    raise DataError(f"unknown stream event {event!r}", table=table, key=key_text(keys, tuple(key_names)))


def from_incremental(
    line: Mapping[str, Any],
    key_names: Sequence[str],
    *,
    table: str | None = None,
    key_tags: Sequence[str] | None = None,
) -> Change:
    """One line of an incremental export's data file as a change, through the same checks as a stream record.

    A line is ``{"Metadata": {"WriteTimestampMicros": {"N": "…"}}, "Keys": {…}, "NewImage": {…}, "OldImage":
    {…}}``: the item's state at the end of the export's window (its last write in it, at WriteTimestampMicros);
    no NewImage: the item was deleted by then. DataError (naming table and key) for a line that is not one.
    """
    if not isinstance(line, Mapping):
        raise DataError("incremental export line is not a JSON object", table=table)
    micros = (
        (line.get("Metadata") or {}).get("WriteTimestampMicros") if isinstance(line.get("Metadata"), Mapping) else None
    )
    created: float | None = None
    if isinstance(micros, Mapping) and isinstance(micros.get("N"), str):
        try:
            created = int(micros["N"]) / 1e6
        except ValueError:
            created = None
    body: dict[str, Any] = {"Keys": line.get("Keys")}
    if created is not None:
        body["ApproximateCreationDateTime"] = created
    if line.get("NewImage") is None:
        return to_change({"eventName": "REMOVE", "dynamodb": body}, key_names, table=table, key_tags=key_tags)
    body["NewImage"] = line["NewImage"]
    return to_change({"eventName": "MODIFY", "dynamodb": body}, key_names, table=table, key_tags=key_tags)


def _timestamp(value: Any) -> datetime | None:
    """boto3 gives a datetime; raw JSON (and Lambda events) give seconds since the epoch."""
    if isinstance(value, datetime):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        return datetime.fromtimestamp(value, UTC)
    return None


def key_identity(key: Mapping[str, Any]) -> KeyIdentity:
    """A hashable form of a key (its attribute values), to tell changes to the same item apart."""
    parts = []
    for name in sorted(key):
        tag, raw = split_value(key[name])
        # Binary arrives as bytes from boto3 and as base64 text from the fast path: the same key either way.
        parts.append((tag, decode_binary(raw) if tag == "B" else raw))
    return tuple(parts)


def compact(changes: Iterable[Change], ttl: TtlPolicy = TtlPolicy.DELETE) -> list[Change]:
    """Each key's last change, in the order of those last changes, with TTL deletes as the ``ttl`` policy says.

    ``keep``: a TTL delete with the item's old image upserts it (the row holds the item as it expired, also where
    it was missing, as for an item that expired during the load); without one it changes nothing, and drops the
    key's earlier Refetch, which would find the item gone and delete the row. ``mark``: the same, as an Expire.
    """
    last: dict[KeyIdentity, Change] = {}
    for change in changes:
        identity = key_identity(change.key)
        before = last.pop(identity, None)  # re-insert so that order follows the last change
        if isinstance(change, Delete) and change.expired and ttl is not TtlPolicy.DELETE:
            if ttl is TtlPolicy.MARK:
                kept = change.old_image
                if kept is None and isinstance(before, Upsert | Expire):
                    kept = before.item  # the item as the batch last wrote it
                last[identity] = Expire(change.key, change.created_at, kept)
            elif change.old_image is not None:
                last[identity] = Upsert(change.key, change.old_image, change.created_at)
            elif before is not None and not isinstance(before, Refetch):
                last[identity] = before  # as if the TTL delete were not there
            continue
        last[identity] = change
    return list(last.values())


@dataclass(frozen=True)
class TtlCounts:
    """TTL deletes of a batch: every one read (``seen``, also those older than the load, which are skipped), and
    what the policy made of the others: deleted (``applied``), ``kept``, ``marked``."""

    seen: int = 0
    applied: int = 0
    kept: int = 0
    marked: int = 0

    def __bool__(self) -> bool:
        return self.seen > 0

    def text(self, policy: TtlPolicy) -> str:
        """A batch log line's part about its TTL deletes, counted apart from the others ("" without any)."""
        if not self:
            return ""
        counted = self.applied + self.kept + self.marked
        done = {TtlPolicy.DELETE: "applied as deletes", TtlPolicy.KEEP: "kept", TtlPolicy.MARK: "marked"}[policy]
        return f", {self.seen} TTL deletes seen: {counted} {done}"  # the others are among those older than the load

    @classmethod
    def of(cls, seen: int, counted: int, ttl: TtlPolicy) -> TtlCounts:
        """``seen`` TTL deletes, of which ``counted`` were not skipped, under policy ``ttl``."""
        return cls(
            seen,
            counted if ttl is TtlPolicy.DELETE else 0,
            counted if ttl is TtlPolicy.KEEP else 0,
            counted if ttl is TtlPolicy.MARK else 0,
        )


@dataclass(frozen=True)
class SpoolEntry:
    """A key's last change captured while its table loads, as the spool (``podyn.spool``) keeps it.

    ``key`` is :func:`spool_key`'s text; ``image`` the new image as DynamoDB JSON text, None for a delete;
    ``shard_id`` and ``sequence_number`` name the key's last stream record captured. ``expired``: an
    :class:`Expire` (``--ttl-deletes mark``): the row is marked as expired at ``created_at``, after ``image`` (if
    any) is written; ``deleted`` tells a delete from an Expire without image (it only marks the row there is).
    """

    key: str
    image: str | None
    shard_id: str
    sequence_number: str
    created_at: datetime | None = None
    expired: bool = False

    @property
    def deleted(self) -> bool:
        return self.image is None and not self.expired


def spool_key(key: Mapping[str, Any]) -> str:
    """A key as JSON text that is the same for the same item however it arrived (attribute order; binary as bytes
    from boto3 or base64 text from the fast path) and that holds any value (U+0000 is escaped, as PostgreSQL's
    text needs): the spool's primary key, ordered as text."""
    wire = {}
    for name, value in key.items():
        tag, raw = split_value(value)
        wire[name] = {tag: base64.b64encode(decode_binary(raw)).decode("ascii") if tag == "B" else raw}
    return orjson.dumps(wire, option=orjson.OPT_SORT_KEYS).decode()


def to_spool_entry(change: Upsert | Delete | Expire, shard_id: str, sequence_number: str) -> SpoolEntry:
    """What the spool keeps of a change (a TTL delete already made an Upsert, a Delete or an Expire by
    :func:`compact`): binary values anywhere in the image become base64 text (the fast path's form, which the rows
    accept), everything else stays as DynamoDB sent it."""
    if isinstance(change, Delete):
        return SpoolEntry(spool_key(change.key), None, shard_id, sequence_number, change.created_at)
    image = None if change.item is None else orjson.dumps(change.item, default=_base64).decode()
    return SpoolEntry(
        spool_key(change.key), image, shard_id, sequence_number, change.created_at, isinstance(change, Expire)
    )


def spool_upsert(entry: SpoolEntry) -> Item | None:
    """The image of an entry that is an upsert, else None: what applying it needs (the key is in the image, and
    is not parsed)."""
    if entry.image is None or entry.expired:
        return None
    return cast(Item, orjson.loads(entry.image))


def from_spool_entry(entry: SpoolEntry) -> Upsert | Delete | Expire:
    key = orjson.loads(entry.key)
    image = None if entry.image is None else orjson.loads(entry.image)
    if entry.expired:
        return Expire(key, entry.created_at, image)
    if image is None:
        return Delete(key, entry.created_at)
    return Upsert(key, image, entry.created_at)


def _base64(value: Any) -> Any:
    if isinstance(value, bytes | bytearray | memoryview):
        return base64.b64encode(bytes(value)).decode("ascii")
    raise TypeError(f"a stream image holds a {type(value).__name__}, which DynamoDB JSON has not")
