"""How far a unit of work has got: what is committed with its rows, shared by the source that reads and the target
that checkpoints (neither edge imports the other)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ShardPosition:
    """How far one shard has been delivered; what the caller checkpoints per shard.

    ``sequence_number`` is the last delivered record's (``None``: none yet, reading starts at TRIM_HORIZON).
    ``finished`` means every record was delivered and the shard is closed, so its children may be read.
    """

    shard_id: str
    parent_shard_id: str | None
    sequence_number: str | None
    finished: bool


@dataclass(frozen=True)
class SegmentRecord:
    """How far one scan segment of a load has got: its last committed key (None: not started), rows so far."""

    segment: int
    total_segments: int
    last_key: dict[str, Any] | None
    items_loaded: int
    done: bool


@dataclass(frozen=True)
class ScanPage:
    """One page of a scan segment: its items, the key to continue after (None: the segment is done), and its cost
    in read capacity units (with the times throttling was waited out)."""

    items: list[dict[str, Any]]
    last_key: dict[str, Any] | None
    consumed: float
    throttled: int = 0


@dataclass(frozen=True)
class ShardBatch:
    """Records of one shard, in stream order, and the position to checkpoint in the same transaction as them.

    ``records`` are boto3 stream records (``eventName``, ``dynamodb`` with ``Keys``, images and
    ``SequenceNumber``). They are empty in two cases: the shard just finished (``position.finished``), or the
    reader just started a shard the caller had no position for (``position.sequence_number is None``). Both
    must be checkpointed.
    """

    shard_id: str
    parent_shard_id: str | None
    records: list[dict[str, Any]]
    position: ShardPosition


class UnitKind:
    """The kinds of work unit, as ``podyn.leases.kind`` and ``podyn.units.kind`` name them."""

    SEGMENT = "scan segment"
    SHARD = "stream shard"
    EXPORT_FILE = "export file"
    #: ``--verify`` shared by several processes: a segment of a run (unit id ``run:segment``), and the check of
    #: the rows that have no item (unit id ``run``), claimable once every segment of the run is compared.
    VERIFY_SEGMENT = "verify segment"
    VERIFY_EXTRA_ROWS = "verify rows without items"


@dataclass(frozen=True)
class Lease:
    """A process's claim on one unit of a table's work. Only its owner, in this generation, may commit the unit's
    position: a claim by another process bumps the generation, so a process that lost the lease (paused past its
    expiry, cut off from the database) cannot commit to the unit again, even if it wakes up mid-transaction."""

    kind: str
    unit_id: str
    owner: str
    generation: int
