"""One error tree for podyn_py.

Every error podyn raises on purpose derives from :class:`PodynError`. Errors carry structured fields (table, key,
attribute) so that a message can name exactly what was wrong, and a ``transient`` marker that tells retry code
whether trying again can help. The CLI maps the tree to exit codes; see ``cli.py``.
"""

from __future__ import annotations

from typing import Any


class PodynError(Exception):
    """Root of every error podyn raises on purpose."""

    #: True when retrying the same operation later can succeed (a lost connection, throttling).
    transient: bool = False

    def __init__(
        self,
        message: str,
        *,
        table: str | None = None,
        key: Any = None,
        attribute: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.table = table
        self.key = key
        self.attribute = attribute

    def __str__(self) -> str:
        where = []
        if self.table is not None:
            where.append(f"table {self.table!r}")
        if self.key is not None:
            where.append(f"key {self.key!r}")
        if self.attribute is not None:
            where.append(f"attribute {self.attribute!r}")
        return f"{self.message} ({', '.join(where)})" if where else self.message


class ConfigError(PodynError):
    """The command line or a setting is wrong; nothing was done."""


class SourceError(PodynError):
    """DynamoDB or DynamoDB Streams refused or failed a request that retries did not fix."""


class TransientSourceError(SourceError):
    """A DynamoDB failure that a later retry can fix (throttling, a timeout, a 5xx)."""

    transient = True


class TargetError(PodynError):
    """PostgreSQL refused or failed a statement that retries did not fix."""


class TransientTargetError(TargetError):
    """A PostgreSQL failure that a later retry can fix (connection lost, server restarting, lock timeout)."""

    transient = True


class MappingChanged(TransientTargetError):
    """Columns were renamed since this writer read the mapping: read it again and convert the rows again.

    Raised before any row of the page or batch is written, so nothing is half-written under the old names.
    """


class LeaseLost(TransientTargetError):
    """This process's lease on a unit of work (a segment, a shard) was taken over by another process after it
    expired: nothing was committed; the unit is the other process's now."""


class DataError(PodynError):
    """A DynamoDB value or record that podyn cannot understand (unknown type tag, malformed number or JSON)."""


class SchemaError(PodynError):
    """The target table cannot hold what the source needs (incompatible existing table, key mismatch)."""


class StreamGapError(PodynError):
    """Stream records that replication needs are gone (trimmed, stream re-created or disabled).

    Continuing would silently skip changes, so the table stops; re-running with ``--data`` reloads it.
    """


class TableHeldElsewhere(PodynError):
    """Another podyn process holds this table's advisory lock."""

    transient = True


class LockKeyCollision(PodynError):
    """A table's advisory lock key is held by a podyn process for another table: standing by would wait forever."""


class Interrupted(PodynError):
    """Stopped on request (SIGINT/SIGTERM) after committing what was in flight; a later run resumes."""


class SpoolClosed(PodynError):
    """The table is no longer loading (its load finished, or another process started a new one): its changes go to
    the table from now on, after its spool, and no longer into the spool. Nothing of the batch was written."""


class SpoolNotEmpty(TransientTargetError):
    """Changes captured while the table loaded are still in its spool: they are applied before any later change.
    Nothing of the batch was written."""


class CaptureEnded(PodynError):
    """The table's load is done and this capture ran only beside it (``--data`` without ``--changes``): it stops,
    leaving the spool and the shard checkpoints to a later ``--changes``."""
