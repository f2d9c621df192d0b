"""The ``podyn`` metadata schema in the target database: what restarts, other processes, status and verify share.

- ``podyn.tables``: one row per replicated table: source, conversion mode, keys, state, stream, last error.
- ``podyn.columns``: the attribute → column mapping, one row per (attribute, type).
- ``podyn.segments``: per parallel-scan segment, the last evaluated key and items loaded; done or not.
- ``podyn.shards``: per stream shard, the last applied sequence number; finished or not.
- ``podyn.rejected``: items podyn could not convert, kept whole with the error, so that nothing is lost silently.

Segment and shard positions are written in the same transaction as the rows they cover (see ``postgres.py``):
that is what makes a kill -9 harmless. Every function here takes a connection and runs inside the caller's
transaction; none commits. This is the only module that reads or writes ``podyn.*``.

A change of a table's state returns a :class:`StateChange` instead of logging it or setting its metric: the
caller shows it (``postgres.show_state``) once the transaction committed, so a rollback shows nothing.
"""

from __future__ import annotations

import base64
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

import orjson
import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb

from podyn_py.core.positions import Lease, UnitKind
from podyn_py.core.positions import SegmentRecord as SegmentRecord  # where it was before the core held it
from podyn_py.core.schema import (
    Column,
    ConversionMode,
    IndexSpec,
    KeyAttribute,
    SourceIdentity,
    TableSchema,
    TableSpec,
)
from podyn_py.core.values import PgType
from podyn_py.errors import ConfigError

log = logging.getLogger(__name__)

METADATA_SCHEMA = "podyn"

# Metadata DDL is idempotent; the advisory lock keeps two processes from racing on CREATE ... IF NOT EXISTS.
_METADATA_LOCK = 0x706F64796E  # "podyn"

_V1_DDL = """
CREATE TABLE IF NOT EXISTS podyn.tables (
    target_schema text NOT NULL,
    target_table text NOT NULL,
    source_table text NOT NULL,
    conversion_mode text NOT NULL,
    lower_case boolean NOT NULL,
    spec jsonb NOT NULL,
    state text NOT NULL DEFAULT 'created',
    total_segments integer,
    items_loaded bigint NOT NULL DEFAULT 0,
    load_started_at timestamptz,
    load_finished_at timestamptz,
    stream_arn text,
    stream_view_type text,
    replay_from timestamptz,
    changes_applied bigint NOT NULL DEFAULT 0,
    last_change_at timestamptz,
    replication_lag_seconds double precision,
    last_error text,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (target_schema, target_table)
);
CREATE TABLE IF NOT EXISTS podyn.columns (
    target_schema text NOT NULL,
    target_table text NOT NULL,
    column_name text NOT NULL,
    attribute_name text,
    attribute_type text NOT NULL,
    variant boolean NOT NULL DEFAULT false,
    ordinal integer NOT NULL,
    added_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (target_schema, target_table, column_name),
    UNIQUE (target_schema, target_table, attribute_name, attribute_type)
);
CREATE TABLE IF NOT EXISTS podyn.segments (
    target_schema text NOT NULL,
    target_table text NOT NULL,
    segment integer NOT NULL,
    total_segments integer NOT NULL,
    last_key jsonb,
    items_loaded bigint NOT NULL DEFAULT 0,
    done boolean NOT NULL DEFAULT false,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (target_schema, target_table, segment)
);
CREATE TABLE IF NOT EXISTS podyn.shards (
    target_schema text NOT NULL,
    target_table text NOT NULL,
    stream_arn text NOT NULL,
    shard_id text NOT NULL,
    parent_shard_id text,
    sequence_number text,
    finished boolean NOT NULL DEFAULT false,
    records_applied bigint NOT NULL DEFAULT 0,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (target_schema, target_table, stream_arn, shard_id)
);
CREATE TABLE IF NOT EXISTS podyn.rejected (
    id bigserial PRIMARY KEY,
    target_schema text NOT NULL,
    target_table text NOT NULL,
    item_key text,
    attribute_name text,
    error text NOT NULL,
    item jsonb,
    rejected_at timestamptz NOT NULL DEFAULT now()
);
"""

#: Ordered migrations of the metadata schema: ``_MIGRATIONS[i]`` takes it from version ``i + 1`` to ``i + 2``.
#: Version 1 is ``_V1_DDL``, the layout of podyn_py 0.1 (which kept no version). Never edit a released step:
#: add one.
_MIGRATIONS: tuple[str, ...] = (
    # 2: the identity of both ends (the target relation's OID, the DynamoDB table's id and creation time), a
    # request to empty the table before its next load, the process holding the table with its heartbeat, the
    # generation of the column mapping (bumped when columns are renamed; writers check it), and the naming
    # rule of the table's columns (1: podyn_py 0.1's first come, first named, kept as it is; 2: order-free).
    """
    ALTER TABLE podyn.tables
        ADD COLUMN IF NOT EXISTS target_oid oid,
        ADD COLUMN IF NOT EXISTS source_table_id text,
        ADD COLUMN IF NOT EXISTS source_created_at timestamptz,
        ADD COLUMN IF NOT EXISTS truncate_before_load boolean NOT NULL DEFAULT false,
        ADD COLUMN IF NOT EXISTS holder text,
        ADD COLUMN IF NOT EXISTS holder_pid integer,
        ADD COLUMN IF NOT EXISTS heartbeat_at timestamptz,
        ADD COLUMN IF NOT EXISTS mapping_generation integer NOT NULL DEFAULT 0,
        ADD COLUMN IF NOT EXISTS naming_rule smallint NOT NULL DEFAULT 1;
    ALTER TABLE podyn.tables ALTER COLUMN naming_rule SET DEFAULT 2;
    CREATE TABLE IF NOT EXISTS podyn.schema_version (version integer NOT NULL);
    """,
    # 3: work units shared by many processes. A lease per unit (a scan segment, a stream shard): its owner, the
    # generation (bumped by every claim, so a process that lost the lease cannot commit to the unit again), and
    # when it expires unless renewed. The workers serving each table, with their heartbeat (fair shares, the
    # scan-rate budget, --status). podyn.units shows every unit with its position and lease.
    """
    CREATE TABLE IF NOT EXISTS podyn.leases (
        target_schema text NOT NULL,
        target_table text NOT NULL,
        kind text NOT NULL,
        unit_id text NOT NULL,
        owner text,
        generation bigint NOT NULL DEFAULT 0,
        claimed_at timestamptz,
        expires_at timestamptz,
        PRIMARY KEY (target_schema, target_table, kind, unit_id)
    );
    CREATE TABLE IF NOT EXISTS podyn.workers (
        worker text NOT NULL,
        target_schema text NOT NULL,
        target_table text NOT NULL,
        role text NOT NULL,
        started_at timestamptz NOT NULL DEFAULT now(),
        heartbeat_at timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (target_schema, target_table, role, worker)
    );
    CREATE OR REPLACE VIEW podyn.units AS
        SELECT s.target_schema, s.target_table, 'scan segment'::text AS kind, s.segment::text AS unit_id,
               ARRAY[]::text[] AS parents, s.last_key::text AS position, s.done, s.items_loaded AS items,
               l.owner, l.generation, l.expires_at AS lease_expires_at, s.updated_at
        FROM podyn.segments s
        LEFT JOIN podyn.leases l ON (l.target_schema, l.target_table, l.kind, l.unit_id)
                                    = (s.target_schema, s.target_table, 'scan segment', s.segment::text)
        UNION ALL
        SELECT h.target_schema, h.target_table, 'stream shard', h.shard_id,
               CASE WHEN h.parent_shard_id IS NULL THEN ARRAY[]::text[] ELSE ARRAY[h.parent_shard_id] END,
               h.sequence_number, h.finished, h.records_applied,
               l.owner, l.generation, l.expires_at, h.updated_at
        FROM podyn.shards h
        LEFT JOIN podyn.leases l ON (l.target_schema, l.target_table, l.kind, l.unit_id)
                                    = (h.target_schema, h.target_table, 'stream shard', h.shard_id);
    """,
)

#: The version this podyn writes and reads.
SCHEMA_VERSION = 1 + len(_MIGRATIONS)

#: How often the process replicating a table refreshes ``podyn.tables.heartbeat_at`` (ChangeOptions' default).
HEARTBEAT_SECONDS = 5.0
#: ``--status`` calls a table's process stalled once its heartbeat is older than this.
HEARTBEAT_STALE_SECONDS = 3 * HEARTBEAT_SECONDS


METADATA_TABLES = (
    "podyn.tables",
    "podyn.columns",
    "podyn.segments",
    "podyn.shards",
    "podyn.rejected",
    "podyn.leases",
    "podyn.workers",
)


class TableState(StrEnum):
    CREATED = "created"
    LOADING = "loading"
    LOADED = "loaded"
    CATCHING_UP = "catching up"
    LIVE = "live"
    STOPPED = "stopped"


@dataclass(frozen=True)
class TableRecord:
    """A row of ``podyn.tables``."""

    spec: TableSpec
    state: TableState
    total_segments: int | None
    items_loaded: int
    load_started_at: datetime | None
    load_finished_at: datetime | None
    stream_arn: str | None
    stream_view_type: str | None
    replay_from: datetime | None
    last_error: str | None
    #: The target relation podyn made or adopted (pg_class OID: survives a rename, not a drop); None if unknown.
    target_oid: int | None = None
    #: The DynamoDB table podyn's state describes.
    source: SourceIdentity = SourceIdentity()
    #: The next load that starts from scratch empties the table first: its rows are not known to be current.
    truncate_before_load: bool = False
    #: The table's column names came from podyn_py 0.1's first-come rule: existing names are never changed.
    keep_names: bool = False


def ensure_metadata(conn: psycopg.Connection[Any]) -> None:
    """Create the metadata schema, or migrate it in place to :data:`SCHEMA_VERSION`, once, under a lock.

    Checking first means a role that owns a pre-created ``podyn`` schema needs no CREATE on the database:
    PostgreSQL checks that privilege even for CREATE SCHEMA IF NOT EXISTS on an existing schema.
    """
    if read_schema_version(conn) == SCHEMA_VERSION:
        return
    conn.execute("SELECT pg_advisory_xact_lock(%s)", (_METADATA_LOCK,))
    version = read_schema_version(conn)  # another process may have migrated meanwhile
    if version == SCHEMA_VERSION:
        return
    if version is not None and version > SCHEMA_VERSION:
        raise ConfigError(
            f"the podyn metadata schema is at version {version}, newer than this podyn's ({SCHEMA_VERSION}):"
            " upgrade podyn"
        )
    if version is None:
        schema = conn.execute("SELECT EXISTS (SELECT FROM pg_namespace WHERE nspname = 'podyn')").fetchone()
        if not (schema and schema[0]):
            conn.execute("CREATE SCHEMA podyn")
        conn.execute(_V1_DDL)  # IF NOT EXISTS throughout: also completes a partly created version 1
        version = 1
    for step in _MIGRATIONS[version - 1 :]:
        conn.execute(step)
    conn.execute("DELETE FROM podyn.schema_version")
    conn.execute("INSERT INTO podyn.schema_version (version) VALUES (%s)", (SCHEMA_VERSION,))
    if version < SCHEMA_VERSION:
        log.info("podyn metadata schema migrated from version %d to %d", version, SCHEMA_VERSION)


def require_current_metadata(conn: psycopg.Connection[Any]) -> None:
    """For the read-only commands (``--status``, ``--verify``): the metadata must exist and be of this version."""
    version = read_schema_version(conn)
    if version is None:
        raise ConfigError("no podyn metadata in this database (schema podyn): podyn has not run here")
    if version != SCHEMA_VERSION:
        raise ConfigError(
            f"the podyn metadata schema is at version {version}, this podyn reads version {SCHEMA_VERSION}:"
            + (
                " run podyn once with --schema, --data or --changes to migrate it in place"
                if version < SCHEMA_VERSION
                else " upgrade podyn"
            )
        )


def read_schema_version(conn: psycopg.Connection[Any]) -> int | None:
    """The metadata schema's version: None when there is none yet, 1 for podyn_py 0.1's layout (no version)."""
    # pg_class read through SQL, with the statement's snapshot: to_regclass() looks in the backend's catalog cache,
    # which an advisory lock does not refresh, so a process that waited for another's migration could miss it.
    row = conn.execute(
        """SELECT bool_or(c.relname = 'schema_version'), bool_or(c.relname = 'tables') FROM pg_class c
           JOIN pg_namespace n ON n.oid = c.relnamespace
           WHERE n.nspname = 'podyn' AND c.relname IN ('schema_version', 'tables') AND c.relkind IN ('r', 'p')"""
    ).fetchone()
    assert row is not None
    has_version, has_tables = bool(row[0]), bool(row[1])
    if not has_version:
        return 1 if has_tables else None
    found = conn.execute("SELECT max(version) FROM podyn.schema_version").fetchone()
    return int(found[0]) if found and found[0] is not None else 1


def spec_to_json(spec: TableSpec) -> dict[str, Any]:
    def key(attribute: KeyAttribute | None) -> list[str] | None:
        return None if attribute is None else [attribute.name, attribute.tag]

    return {
        "source": spec.source,
        "partition_key": key(spec.partition_key),
        "sort_key": key(spec.sort_key),
        "indexes": [
            {"name": ix.name, "global": ix.is_global, "attributes": [key(a) for a in ix.attributes]}
            for ix in spec.indexes
        ],
    }


def spec_from_json(data: dict[str, Any], schema: str, table: str, mode: str, lower_case: bool) -> TableSpec:
    def key(pair: list[str] | None) -> KeyAttribute | None:
        return None if pair is None else KeyAttribute(pair[0], pair[1])

    partition_key = key(data["partition_key"])
    assert partition_key is not None
    return TableSpec(
        source=data["source"],
        schema=schema,
        table=table,
        partition_key=partition_key,
        sort_key=key(data["sort_key"]),
        indexes=tuple(
            IndexSpec(ix["name"], tuple(KeyAttribute(a[0], a[1]) for a in ix["attributes"]), ix["global"])
            for ix in data["indexes"]
        ),
        mode=ConversionMode(mode),
        lower_case=lower_case,
    )


def read_table(conn: psycopg.Connection[Any], schema: str, table: str) -> TableRecord | None:
    row = conn.execute(
        """SELECT spec, conversion_mode, lower_case, state, total_segments, items_loaded, load_started_at,
                  load_finished_at, stream_arn, stream_view_type, replay_from, last_error,
                  target_oid, source_table_id, source_created_at, truncate_before_load, naming_rule = 1
           FROM podyn.tables WHERE target_schema = %s AND target_table = %s""",
        (schema, table),
    ).fetchone()
    if row is None:
        return None
    spec = spec_from_json(row[0], schema, table, row[1], row[2])
    return TableRecord(
        spec,
        TableState(row[3]),
        row[4],
        row[5],
        row[6],
        row[7],
        row[8],
        row[9],
        row[10],
        row[11],
        target_oid=row[12],
        source=SourceIdentity(row[13], row[14]),
        truncate_before_load=row[15],
        keep_names=row[16],
    )


def list_tables(conn: psycopg.Connection[Any]) -> list[TableRecord]:
    rows = conn.execute("SELECT target_schema, target_table FROM podyn.tables ORDER BY 1, 2").fetchall()
    return [record for s, t in rows if (record := read_table(conn, s, t)) is not None]


def source_tables(conn: psycopg.Connection[Any], target_schema: str) -> list[str]:
    """The DynamoDB tables podyn replicates into ``target_schema``, by name."""
    rows = conn.execute(
        "SELECT source_table FROM podyn.tables WHERE target_schema = %s ORDER BY 1", (target_schema,)
    ).fetchall()
    return [str(r[0]) for r in rows]


def save_table(conn: psycopg.Connection[Any], spec: TableSpec) -> None:
    """Record a table (or refresh its spec), keeping its state and positions."""
    conn.execute(
        """INSERT INTO podyn.tables (target_schema, target_table, source_table, conversion_mode, lower_case, spec)
           VALUES (%s, %s, %s, %s, %s, %s)
           ON CONFLICT (target_schema, target_table) DO UPDATE
           SET spec = excluded.spec, source_table = excluded.source_table, updated_at = now()""",
        (spec.schema, spec.table, spec.source, spec.mode.value, spec.lower_case, _jsonb(spec_to_json(spec))),
    )


def record_identity(
    conn: psycopg.Connection[Any],
    spec: TableSpec,
    target_oid: int,
    source: SourceIdentity | None,
    *,
    truncate_before_load: bool | None = None,
) -> None:
    """Tie the table's row to both ends: the target relation and the DynamoDB table (when known)."""
    conn.execute(
        """UPDATE podyn.tables
           SET target_oid = %s, source_table_id = coalesce(%s, source_table_id),
               source_created_at = coalesce(%s, source_created_at),
               truncate_before_load = coalesce(%s, truncate_before_load), updated_at = now()
           WHERE target_schema = %s AND target_table = %s""",
        (
            target_oid,
            source.table_id if source else None,
            source.created_at if source else None,
            truncate_before_load,
            spec.schema,
            spec.table,
        ),
    )


def forget_table(conn: psycopg.Connection[Any], schema: str, table: str) -> int:
    """Remove every row podyn keeps for a target table (state, mapping, positions, rejects); how many were removed.

    In the caller's transaction, so that a table is either known whole or not at all.
    """
    removed = 0
    for metadata_table in (
        "podyn.segments",
        "podyn.shards",
        "podyn.leases",
        "podyn.columns",
        "podyn.rejected",
        "podyn.tables",
    ):
        cur = conn.execute(
            sql.SQL("DELETE FROM {} WHERE target_schema = %s AND target_table = %s").format(
                sql.Identifier(*metadata_table.split("."))
            ),
            (schema, table),
        )
        removed += cur.rowcount
    return removed


@dataclass(frozen=True)
class StateChange:
    """A table's new state, as written in a transaction: shown (log, metric) only once that transaction commits."""

    source: str
    state: TableState
    error: str | None = None


def _set_state(
    conn: psycopg.Connection[Any],
    spec: TableSpec,
    state: TableState,
    error: str | None,
    assignments: str = "",
    values: tuple[Any, ...] = (),
) -> StateChange:
    """Set a table's state and last error, with ``assignments`` (SQL of this module) to more columns."""
    conn.execute(
        f"""UPDATE podyn.tables SET state = %s, last_error = %s, updated_at = now(){assignments}
            WHERE target_schema = %s AND target_table = %s""",
        (state.value, error, *values, spec.schema, spec.table),
    )
    return StateChange(spec.source, state, error)


def forget_shards(conn: psycopg.Connection[Any], spec: TableSpec) -> None:
    """Remove the table's shard checkpoints (a reload: changes are replayed from the new load's start)."""
    conn.execute("DELETE FROM podyn.shards WHERE target_schema = %s AND target_table = %s", (spec.schema, spec.table))
    forget_leases(conn, spec, UnitKind.SHARD)


def start_load(
    conn: psycopg.Connection[Any],
    spec: TableSpec,
    total_segments: int,
    *,
    stream_arn: str | None,
    stream_view_type: str | None,
) -> StateChange:
    """``loading``, from now, with the stream found at the start; no items, no replay point, nothing to empty."""
    return _set_state(
        conn,
        spec,
        TableState.LOADING,
        None,
        """, total_segments = %s, items_loaded = 0, load_started_at = now(), load_finished_at = NULL,
             stream_arn = %s, stream_view_type = %s, replay_from = NULL, truncate_before_load = false""",
        (total_segments, stream_arn, stream_view_type),
    )


def finish_load(conn: psycopg.Connection[Any], spec: TableSpec) -> tuple[int, StateChange]:
    """``loaded``, now, with the items the segments loaded; how many."""
    row = conn.execute(
        """SELECT coalesce(sum(items_loaded), 0)::bigint FROM podyn.segments
           WHERE target_schema = %s AND target_table = %s""",
        (spec.schema, spec.table),
    ).fetchone()
    items = int(row[0]) if row else 0
    change = _set_state(conn, spec, TableState.LOADED, None, ", items_loaded = %s, load_finished_at = now()", (items,))
    return items, change


def start_catching_up(
    conn: psycopg.Connection[Any],
    spec: TableSpec,
    *,
    stream_arn: str,
    stream_view_type: str | None,
    replay_from: datetime | None,
) -> StateChange:
    """``catching up`` on the stream, replaying (with its margin) from the load's start."""
    return _set_state(
        conn,
        spec,
        TableState.CATCHING_UP,
        None,
        ", stream_arn = %s, stream_view_type = %s, replay_from = %s",
        (stream_arn, stream_view_type, replay_from),
    )


def become_live(conn: psycopg.Connection[Any], spec: TableSpec, lag_seconds: float) -> StateChange:
    """``live``: caught up with the stream, ``lag_seconds`` behind it."""
    return _set_state(conn, spec, TableState.LIVE, None, ", replication_lag_seconds = %s", (lag_seconds,))


def stop(conn: psycopg.Connection[Any], spec: TableSpec, error: str) -> StateChange:
    """``stopped`` by ``error``: the table needs attention before it is replicated again."""
    return _set_state(conn, spec, TableState.STOPPED, error)


def read_columns(conn: psycopg.Connection[Any], spec: TableSpec) -> tuple[Column, ...]:
    rows = conn.execute(
        """SELECT column_name, attribute_type, attribute_name, variant FROM podyn.columns
           WHERE target_schema = %s AND target_table = %s ORDER BY ordinal""",
        (spec.schema, spec.table),
    ).fetchall()
    return tuple(Column(name, PgType(type_), attribute, variant) for name, type_, attribute, variant in rows)


def save_columns(conn: psycopg.Connection[Any], schema: TableSchema, start: int = 0) -> None:
    """Record the mapping of ``schema.columns[start:]``."""
    spec = schema.spec
    with conn.cursor() as cur:
        cur.executemany(
            """INSERT INTO podyn.columns
                   (target_schema, target_table, column_name, attribute_name, attribute_type, variant, ordinal)
               VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING""",
            [
                (spec.schema, spec.table, c.name, c.attribute, c.type.value, c.variant, ordinal)
                for ordinal, c in enumerate(schema.columns[start:], start)
            ],
        )


def replace_columns(conn: psycopg.Connection[Any], schema: TableSchema) -> None:
    """Record the whole mapping of ``schema`` anew (after columns were renamed)."""
    spec = schema.spec
    conn.execute("DELETE FROM podyn.columns WHERE target_schema = %s AND target_table = %s", (spec.schema, spec.table))
    save_columns(conn, schema)


def read_mapping_generation(conn: psycopg.Connection[Any], spec: TableSpec) -> int:
    """How many times the table's columns were renamed (0 for a table podyn does not know yet)."""
    row = conn.execute(
        "SELECT mapping_generation FROM podyn.tables WHERE target_schema = %s AND target_table = %s",
        (spec.schema, spec.table),
    ).fetchone()
    return int(row[0]) if row else 0


def bump_mapping_generation(conn: psycopg.Connection[Any], spec: TableSpec) -> int:
    """Mark the mapping as changed (columns renamed): writers holding the old one must read it again."""
    row = conn.execute(
        """UPDATE podyn.tables SET mapping_generation = mapping_generation + 1, updated_at = now()
           WHERE target_schema = %s AND target_table = %s RETURNING mapping_generation""",
        (spec.schema, spec.table),
    ).fetchone()
    return int(row[0]) if row else 0


def read_segments(conn: psycopg.Connection[Any], spec: TableSpec) -> list[SegmentRecord]:
    rows = conn.execute(
        """SELECT segment, total_segments, last_key, items_loaded, done FROM podyn.segments
           WHERE target_schema = %s AND target_table = %s ORDER BY segment""",
        (spec.schema, spec.table),
    ).fetchall()
    return [SegmentRecord(*row) for row in rows]


def reset_segments(conn: psycopg.Connection[Any], spec: TableSpec, total_segments: int) -> None:
    conn.execute("DELETE FROM podyn.segments WHERE target_schema = %s AND target_table = %s", (spec.schema, spec.table))
    forget_leases(conn, spec, UnitKind.SEGMENT)
    with conn.cursor() as cur:
        cur.executemany(
            """INSERT INTO podyn.segments (target_schema, target_table, segment, total_segments)
               VALUES (%s, %s, %s, %s)""",
            [(spec.schema, spec.table, segment, total_segments) for segment in range(total_segments)],
        )


def advance_segment(
    conn: psycopg.Connection[Any],
    spec: TableSpec,
    segment: int,
    expected_key: dict[str, Any] | None,
    new_key: dict[str, Any] | None,
    items: int,
) -> bool:
    """Move a segment from ``expected_key`` to ``new_key`` (None: done). False if it was not at ``expected_key``.

    The compare-and-set makes a page applied twice (a commit whose answer was lost, a second process) a no-op.
    """
    cur = conn.execute(
        """UPDATE podyn.segments
           SET last_key = %s, done = %s, items_loaded = items_loaded + %s, updated_at = now()
           WHERE target_schema = %s AND target_table = %s AND segment = %s
             AND NOT done AND last_key IS NOT DISTINCT FROM %s""",
        (
            _jsonb(new_key),
            new_key is None,
            items,
            spec.schema,
            spec.table,
            segment,
            _jsonb(expected_key),
        ),
    )
    return cur.rowcount == 1


def reject_item(
    conn: psycopg.Connection[Any],
    spec: TableSpec,
    key: str | None,
    attribute: str | None,
    error: str,
    item: Any,
) -> None:
    conn.execute(
        """INSERT INTO podyn.rejected (target_schema, target_table, item_key, attribute_name, error, item)
           VALUES (%s, %s, %s, %s, %s, %s)""",
        (spec.schema, spec.table, key, attribute, error, _jsonb(item)),
    )


def _jsonb(value: Any) -> Jsonb | None:
    """A parameter for a jsonb column (our connections' JSON dumper takes serialised bytes; see postgres.py)."""
    return None if value is None else Jsonb(orjson.dumps(value, default=_wire_default))


def _wire_default(value: Any) -> Any:
    if isinstance(value, bytes | bytearray):
        return base64.b64encode(value).decode("ascii")
    raise TypeError(f"cannot store {type(value).__name__} in metadata")


def read_shards(
    conn: psycopg.Connection[Any], spec: TableSpec, stream_arn: str
) -> list[tuple[str, str | None, str | None, bool]]:
    """(shard id, parent id, last applied sequence number, finished) of every shard checkpointed for the stream."""
    rows = conn.execute(
        """SELECT shard_id, parent_shard_id, sequence_number, finished FROM podyn.shards
           WHERE target_schema = %s AND target_table = %s AND stream_arn = %s ORDER BY shard_id""",
        (spec.schema, spec.table, stream_arn),
    ).fetchall()
    return [(r[0], r[1], r[2], r[3]) for r in rows]


def move_shard(
    conn: psycopg.Connection[Any],
    spec: TableSpec,
    stream_arn: str,
    shard: tuple[str, str | None],
    old: tuple[str | None, bool] | None,
    new: tuple[str | None, bool],
    records: int,
) -> bool:
    """Compare-and-set a shard's checkpoint from ``old`` (None: no checkpoint yet) to ``new`` (sequence, finished).

    False when the checkpoint was not at ``old``: another process (or an earlier attempt whose commit answer was
    lost) already applied these records, and the caller must not apply them again.
    """
    shard_id, parent = shard
    if old is None:
        cur = conn.execute(
            """INSERT INTO podyn.shards (target_schema, target_table, stream_arn, shard_id, parent_shard_id,
                                         sequence_number, finished, records_applied)
               VALUES (%s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING""",
            (spec.schema, spec.table, stream_arn, shard_id, parent, new[0], new[1], records),
        )
    else:
        cur = conn.execute(
            """UPDATE podyn.shards
               SET sequence_number = %s, finished = %s, records_applied = records_applied + %s,
                   updated_at = now()
               WHERE target_schema = %s AND target_table = %s AND stream_arn = %s AND shard_id = %s
                 AND sequence_number IS NOT DISTINCT FROM %s AND finished = %s""",
            (new[0], new[1], records, spec.schema, spec.table, stream_arn, shard_id, old[0], old[1]),
        )
    return cur.rowcount == 1


def record_changes(conn: psycopg.Connection[Any], spec: TableSpec, applied: int, lag_seconds: float | None) -> None:
    conn.execute(
        """UPDATE podyn.tables
           SET changes_applied = changes_applied + %s,
               last_change_at = CASE WHEN %s > 0 THEN now() ELSE last_change_at END,
               replication_lag_seconds = coalesce(%s, replication_lag_seconds), updated_at = now()
           WHERE target_schema = %s AND target_table = %s""",
        (applied, applied, lag_seconds, spec.schema, spec.table),
    )


def record_holder(conn: psycopg.Connection[Any], schema: str, table: str, holder: str) -> bool:
    """Record ``holder`` (host:pid) and this connection's backend as the table's lock holder, seen now.

    For the autocommit connection that holds the table's advisory lock. False when podyn.tables does not hold
    the table (yet: a first ``--schema`` run takes the lock before it records the table).
    """
    try:
        cur = conn.execute(
            """UPDATE podyn.tables SET holder = %s, holder_pid = pg_backend_pid(), heartbeat_at = now()
               WHERE target_schema = %s AND target_table = %s""",
            (holder, schema, table),
        )
    except psycopg.errors.UndefinedTable:
        return False
    return cur.rowcount == 1


def read_holder(conn: psycopg.Connection[Any], schema: str, table: str) -> tuple[str | None, int | None] | None:
    """(holder, backend pid) last recorded for the table; None when podyn does not know the table."""
    try:
        row = conn.execute(
            "SELECT holder, holder_pid FROM podyn.tables WHERE target_schema = %s AND target_table = %s",
            (schema, table),
        ).fetchone()
    except psycopg.errors.UndefinedTable:
        return None
    return None if row is None else (row[0], row[1])


def tables_held_by(
    conn: psycopg.Connection[Any], backend_pid: int, *, exclude: tuple[str, str]
) -> list[tuple[str, str, str | None]]:
    """(schema, table, holder) of the other tables whose recorded holder is that backend now.

    A record counts only if written since the backend started: a pid left behind by a process that is gone may
    have been given to a new backend since.
    """
    try:
        rows = conn.execute(
            """SELECT t.target_schema, t.target_table, t.holder FROM podyn.tables t
               JOIN pg_stat_activity a ON a.pid = t.holder_pid
               WHERE t.holder_pid = %s AND t.heartbeat_at >= a.backend_start
                 AND (t.target_schema, t.target_table) <> (%s, %s)
               ORDER BY 1, 2""",
            (backend_pid, *exclude),
        ).fetchall()
    except psycopg.errors.UndefinedTable:
        return []
    return [(r[0], r[1], r[2]) for r in rows]


# -- work units and their leases ---------------------------------------------------------------------------------


def claim_units(
    conn: psycopg.Connection[Any],
    spec: TableSpec,
    kind: str,
    candidates: Sequence[str],
    owner: str,
    limit: int,
    lease_seconds: float,
) -> list[Lease]:
    """Claim up to ``limit`` of ``candidates`` (in their order) whose lease is free or expired, for ``owner``.

    A unit locked by a claim or a commit under way is skipped, not waited for (``SKIP LOCKED``). Each claim bumps
    the unit's generation: the previous owner's commits to it fail from now on. The caller decides which units
    are candidates (not done, parents done); this only arbitrates between processes. The free units are picked in
    a materialised CTE, run once: as a subquery of UPDATE ... FROM it can be run again per row and claim more.

    A lease of ``owner``'s own that expired (a renewal came late) is not claimed again by it: one of its threads
    still works on that unit, and the next renewal keeps it; claiming it made that thread lose its page in flight
    to a sibling (and log that another process took it over).
    """
    if not candidates or limit <= 0:
        return []
    ids = list(candidates)
    conn.execute(
        """INSERT INTO podyn.leases (target_schema, target_table, kind, unit_id)
           SELECT %s, %s, %s, unnest(%s::text[]) ON CONFLICT DO NOTHING""",
        (spec.schema, spec.table, kind, ids),
    )
    rows = conn.execute(
        """WITH free AS MATERIALIZED (
               SELECT unit_id FROM podyn.leases
               WHERE target_schema = %(schema)s AND target_table = %(table)s AND kind = %(kind)s
                 AND unit_id = ANY(%(ids)s)
                 AND (owner IS NULL OR (expires_at < now() AND owner <> %(owner)s))
               ORDER BY array_position(%(ids)s, unit_id) LIMIT %(limit)s
               FOR UPDATE SKIP LOCKED)
           UPDATE podyn.leases l
           SET owner = %(owner)s, generation = l.generation + 1, claimed_at = now(),
               expires_at = now() + %(lease)s * interval '1 second'
           FROM free
           WHERE l.target_schema = %(schema)s AND l.target_table = %(table)s AND l.kind = %(kind)s
             AND l.unit_id = free.unit_id
           RETURNING l.unit_id, l.generation""",
        {
            "owner": owner,
            "lease": lease_seconds,
            "schema": spec.schema,
            "table": spec.table,
            "kind": kind,
            "ids": ids,
            "limit": limit,
        },
    ).fetchall()
    order = {unit: i for i, unit in enumerate(ids)}
    return sorted((Lease(kind, str(r[0]), owner, int(r[1])) for r in rows), key=lambda lease: order[lease.unit_id])


def renew_leases(
    conn: psycopg.Connection[Any], spec: TableSpec, leases: Sequence[Lease], lease_seconds: float
) -> list[Lease]:
    """Extend ``leases`` by ``lease_seconds`` from now; the ones still held (a lease another process claimed after
    it expired is lost, whatever its expiry: the generation tells)."""
    if not leases:
        return []
    rows = conn.execute(
        """UPDATE podyn.leases l SET expires_at = now() + %s * interval '1 second'
           FROM unnest(%s::text[], %s::text[], %s::text[], %s::bigint[]) AS mine(kind, unit_id, owner, generation)
           WHERE l.target_schema = %s AND l.target_table = %s AND l.kind = mine.kind AND l.unit_id = mine.unit_id
             AND l.owner = mine.owner AND l.generation = mine.generation
           RETURNING l.kind, l.unit_id""",
        (
            lease_seconds,
            [lease.kind for lease in leases],
            [lease.unit_id for lease in leases],
            [lease.owner for lease in leases],
            [lease.generation for lease in leases],
            spec.schema,
            spec.table,
        ),
    ).fetchall()
    held = {(str(r[0]), str(r[1])) for r in rows}
    return [lease for lease in leases if (lease.kind, lease.unit_id) in held]


def release_leases(conn: psycopg.Connection[Any], spec: TableSpec, leases: Sequence[Lease]) -> None:
    """Give ``leases`` back at once (SIGTERM, a unit done, more than a fair share): free for any process to claim."""
    if not leases:
        return
    conn.execute(
        """UPDATE podyn.leases l SET owner = NULL, expires_at = NULL
           FROM unnest(%s::text[], %s::text[], %s::text[], %s::bigint[]) AS mine(kind, unit_id, owner, generation)
           WHERE l.target_schema = %s AND l.target_table = %s AND l.kind = mine.kind AND l.unit_id = mine.unit_id
             AND l.owner = mine.owner AND l.generation = mine.generation""",
        (
            [lease.kind for lease in leases],
            [lease.unit_id for lease in leases],
            [lease.owner for lease in leases],
            [lease.generation for lease in leases],
            spec.schema,
            spec.table,
        ),
    )


def holds_lease(conn: psycopg.Connection[Any], spec: TableSpec, lease: Lease) -> bool:
    """Whether ``lease`` is still its owner's, in this generation; locks the lease row until the caller's
    transaction ends, so no claim can take it over before this transaction's commit (the fence of a commit).

    The lock is FOR KEY SHARE: it keeps out a claim (FOR UPDATE) but not a renewal, which changes no key. Under
    FOR SHARE, one slow commit held up the renewal of every lease of its process (one UPDATE renews them all),
    and the process lost its other units to a takeover while that commit ran."""
    row = conn.execute(
        """SELECT 1 FROM podyn.leases
           WHERE target_schema = %s AND target_table = %s AND kind = %s AND unit_id = %s
             AND owner = %s AND generation = %s
           FOR KEY SHARE""",
        (spec.schema, spec.table, lease.kind, lease.unit_id, lease.owner, lease.generation),
    ).fetchone()
    return row is not None


def forget_leases(conn: psycopg.Connection[Any], spec: TableSpec, kind: str) -> None:
    """Remove the table's leases of one kind (its segments or shards start over)."""
    conn.execute(
        "DELETE FROM podyn.leases WHERE target_schema = %s AND target_table = %s AND kind = %s",
        (spec.schema, spec.table, kind),
    )


def beat_worker(conn: psycopg.Connection[Any], spec: TableSpec, role: str, worker: str) -> None:
    """Record that ``worker`` serves the table in ``role`` (``load``, ``changes``), now."""
    conn.execute(
        """INSERT INTO podyn.workers (worker, target_schema, target_table, role) VALUES (%s, %s, %s, %s)
           ON CONFLICT (target_schema, target_table, role, worker) DO UPDATE SET heartbeat_at = now()""",
        (worker, spec.schema, spec.table, role),
    )


def leave_worker(conn: psycopg.Connection[Any], spec: TableSpec, role: str, worker: str) -> None:
    conn.execute(
        "DELETE FROM podyn.workers WHERE target_schema = %s AND target_table = %s AND role = %s AND worker = %s",
        (spec.schema, spec.table, role, worker),
    )


#: A worker whose heartbeat is this old is gone (the longest lease, --lease-seconds 3600, beats every 20 minutes):
#: its row is removed, so that processes killed outright do not pile up in podyn.workers.
DEAD_WORKER_SECONDS = 2 * 3600.0


def forget_dead_workers(conn: psycopg.Connection[Any], spec: TableSpec) -> None:
    """Remove the table's workers (any role) that have not beaten for DEAD_WORKER_SECONDS."""
    conn.execute(
        """DELETE FROM podyn.workers WHERE target_schema = %s AND target_table = %s
             AND heartbeat_at < now() - %s * interval '1 second'""",
        (spec.schema, spec.table, DEAD_WORKER_SECONDS),
    )


def live_workers(conn: psycopg.Connection[Any], spec: TableSpec, role: str, within_seconds: float) -> list[str]:
    """The workers of the table in ``role`` whose heartbeat is younger than ``within_seconds``, oldest first."""
    rows = conn.execute(
        """SELECT worker FROM podyn.workers
           WHERE target_schema = %s AND target_table = %s AND role = %s
             AND heartbeat_at > now() - %s * interval '1 second'
           ORDER BY started_at, worker""",
        (spec.schema, spec.table, role, within_seconds),
    ).fetchall()
    return [str(r[0]) for r in rows]


def held_units(conn: psycopg.Connection[Any], spec: TableSpec, kind: str) -> dict[str, tuple[str, bool]]:
    """Unit id → (owner, lease still running) of the table's units of ``kind`` that have an owner."""
    rows = conn.execute(
        """SELECT unit_id, owner, expires_at >= now() FROM podyn.leases
           WHERE target_schema = %s AND target_table = %s AND kind = %s AND owner IS NOT NULL""",
        (spec.schema, spec.table, kind),
    ).fetchall()
    return {str(r[0]): (str(r[1]), bool(r[2])) for r in rows}


def segments_left(conn: psycopg.Connection[Any], spec: TableSpec) -> int:
    row = conn.execute(
        "SELECT count(*) FROM podyn.segments WHERE target_schema = %s AND target_table = %s AND NOT done",
        (spec.schema, spec.table),
    ).fetchone()
    return int(row[0]) if row else 0


# -- what --status shows -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TableProgress:
    """A row of ``podyn.tables`` as ``--status`` shows it, with its rejects and what PostgreSQL says of it now."""

    target_schema: str
    target_table: str
    source_table: str
    conversion_mode: str
    state: TableState
    last_error: str | None
    items_loaded: int
    load_started_at: datetime | None
    load_finished_at: datetime | None
    stream_arn: str | None
    stream_view_type: str | None
    changes_applied: int
    last_change_at: datetime | None
    replication_lag_seconds: float | None
    updated_at: datetime
    rejected: int
    holder: str | None
    holder_pid: int | None
    heartbeat_at: datetime | None
    #: Seconds since the heartbeat, by the database's clock; None without one.
    heartbeat_age_seconds: float | None
    #: The target is the relation podyn recorded (or, recorded by an older podyn without its OID, there at all).
    target_present: bool
    #: Columns of podyn's mapping that the target no longer has (dropped or renamed by hand).
    missing_columns: tuple[str, ...]


@dataclass(frozen=True)
class SegmentProgress:
    segment: int
    done: bool
    items_loaded: int
    updated_at: datetime


@dataclass(frozen=True)
class ShardProgress:
    shard_id: str
    parent_shard_id: str | None
    #: As text: sequence numbers have more digits than a float holds.
    sequence_number: str | None
    finished: bool
    records_applied: int
    updated_at: datetime


def read_progress(
    conn: psycopg.Connection[Any], sources: Sequence[str] = (), target_schema: str | None = None
) -> list[TableProgress]:
    """Every table recorded (or those whose DynamoDB name is in ``sources``, optionally in one schema), ordered by
    DynamoDB name and schema."""
    rows = conn.execute(
        """SELECT target_schema, target_table, source_table, conversion_mode, state, last_error, items_loaded,
                  load_started_at, load_finished_at, stream_arn, stream_view_type, changes_applied,
                  last_change_at, replication_lag_seconds, updated_at,
                  (SELECT count(*) FROM podyn.rejected r
                   WHERE r.target_schema = t.target_schema AND r.target_table = t.target_table),
                  holder, holder_pid, heartbeat_at,
                  extract(epoch FROM statement_timestamp() - heartbeat_at)::float8,
                  coalesce(r.oid = coalesce(t.target_oid, r.oid), false),
                  (SELECT array_agg(c.column_name ORDER BY c.ordinal) FROM podyn.columns c
                   WHERE c.target_schema = t.target_schema AND c.target_table = t.target_table
                     AND NOT EXISTS (SELECT FROM pg_attribute a WHERE a.attrelid = r.oid
                                     AND a.attname = c.column_name AND NOT a.attisdropped))
           FROM podyn.tables t
           LEFT JOIN LATERAL (SELECT to_regclass(format('%%I.%%I', t.target_schema, t.target_table))::oid) r(oid)
               ON true
           WHERE (%(schema)s::text IS NULL OR target_schema = %(schema)s)
             AND (cardinality(%(tables)s::text[]) = 0 OR source_table = ANY(%(tables)s))
           ORDER BY source_table, target_schema""",
        {"schema": target_schema, "tables": list(sources)},
    ).fetchall()
    return [_table_progress(list(row)) for row in rows]


def _table_progress(values: list[Any]) -> TableProgress:
    values[4] = TableState(values[4])
    values[21] = tuple(values[21] or ())
    return TableProgress(*values)


def read_segment_progress(conn: psycopg.Connection[Any], schema: str, table: str) -> list[SegmentProgress]:
    rows = conn.execute(
        """SELECT segment, done, items_loaded, updated_at FROM podyn.segments
           WHERE target_schema = %s AND target_table = %s ORDER BY segment""",
        (schema, table),
    ).fetchall()
    return [SegmentProgress(*row) for row in rows]


def read_shard_progress(
    conn: psycopg.Connection[Any], schema: str, table: str, stream_arn: str | None
) -> list[ShardProgress]:
    """The checkpoints of the table's shards in ``stream_arn`` (not a replaced stream's; all when None), oldest
    update first."""
    rows = conn.execute(
        """SELECT shard_id, parent_shard_id, sequence_number, finished, records_applied, updated_at
           FROM podyn.shards WHERE target_schema = %s AND target_table = %s
             AND (%s::text IS NULL OR stream_arn = %s)
           ORDER BY updated_at, shard_id""",
        (schema, table, stream_arn, stream_arn),
    ).fetchall()
    return [
        ShardProgress(shard_id, parent, None if sequence is None else str(sequence), finished, records, updated)
        for shard_id, parent, sequence, finished, records, updated in rows
    ]


@dataclass(frozen=True)
class UnitProgress:
    """A row of ``podyn.units`` as ``--status`` shows it: one unit of a table's work and its lease."""

    kind: str
    unit_id: str
    parents: tuple[str, ...]
    #: The committed position as text (a segment's LastEvaluatedKey as JSON, a shard's sequence number).
    position: str | None
    done: bool
    items: int
    #: The process holding the lease (``host:pid:tag``), or None when the unit is free.
    owner: str | None
    generation: int | None
    lease_expires_at: datetime | None
    #: Seconds until the lease expires, by the database's clock (negative: expired that long ago); None if free.
    lease_seconds_left: float | None
    updated_at: datetime | None


@dataclass(frozen=True)
class WorkerProgress:
    """A row of ``podyn.workers``: a process serving a table in a role (``load``, ``changes``)."""

    worker: str
    role: str
    started_at: datetime
    heartbeat_at: datetime
    #: Seconds since the heartbeat, by the database's clock.
    heartbeat_age_seconds: float


def read_units(conn: psycopg.Connection[Any], schema: str, table: str) -> list[UnitProgress]:
    """The table's units with their leases, by kind and then in their natural order (segment 2 before 10)."""
    rows = conn.execute(
        """SELECT kind, unit_id, parents, position, done, items, owner, generation, lease_expires_at,
                  CASE WHEN owner IS NOT NULL
                       THEN extract(epoch FROM lease_expires_at - statement_timestamp())::float8 END,
                  updated_at
           FROM podyn.units WHERE target_schema = %s AND target_table = %s
           ORDER BY kind, length(unit_id), unit_id""",
        (schema, table),
    ).fetchall()
    return [
        UnitProgress(
            str(kind),
            str(unit),
            tuple(parents or ()),
            position,
            bool(done),
            int(items or 0),
            owner,
            generation,
            expires,
            left,
            updated,
        )
        for kind, unit, parents, position, done, items, owner, generation, expires, left, updated in rows
    ]


def read_workers(conn: psycopg.Connection[Any], schema: str, table: str) -> list[WorkerProgress]:
    """The processes recorded as serving the table, oldest first (a process killed outright stays until its
    heartbeat is old enough for :func:`forget_dead_workers`)."""
    rows = conn.execute(
        """SELECT worker, role, started_at, heartbeat_at,
                  extract(epoch FROM statement_timestamp() - heartbeat_at)::float8
           FROM podyn.workers WHERE target_schema = %s AND target_table = %s
           ORDER BY started_at, worker, role""",
        (schema, table),
    ).fetchall()
    return [WorkerProgress(*row) for row in rows]
