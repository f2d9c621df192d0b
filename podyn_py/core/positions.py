"""How far a unit of work has got: what is committed with its rows, shared by the source that reads and the target
that checkpoints (neither edge imports the other)."""

from __future__ import annotations

from dataclasses import dataclass


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
