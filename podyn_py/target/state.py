"""The ``podyn`` metadata schema in the target database: what restarts, other processes, status and verify share.

- ``podyn.tables``: one row per replicated table: source, conversion mode, keys, state, stream, last error.
- ``podyn.columns``: the attribute → column mapping, one row per (attribute, type).
- ``podyn.segments``: per parallel-scan segment, the last evaluated key and items loaded; done or not.
- ``podyn.shards``: per stream shard, the last applied sequence number; finished or not.
- ``podyn.export_files``: per data file of the export a table is loaded from, the lines committed; done or not.
- ``podyn.rejected``: items podyn could not convert, kept whole with the error, so that nothing is lost silently.
- ``podyn.spool``: per table and key, the key's last change captured from the stream while the table loads.
- ``podyn.verify_runs``, ``verify_segments``, ``verify_keys``: ``--verify`` shared by several processes: each run,
  each part's committed result, and the keys its segments scanned (for the rows without items).
- ``podyn.bridge_exports``: per table, the incremental exports that bridge its export to its stream, in order.

Segment, export file and shard positions are written in the same transaction as the rows they cover (see
``postgres.py``): that is what makes a kill -9 harmless. Every function here takes a connection and runs inside the
caller's transaction; none commits. This is the only module that reads or writes ``podyn.*``.

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

from podyn_py.core.changes import SpoolEntry, TtlCounts
from podyn_py.core.compare import Tally
from podyn_py.core.exports import BridgeRecord, BridgeWindow, ExportFile, ExportFileRecord, ExportManifest
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
from podyn_py.core.targets import StoredTarget
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
    # 4: TTL deletes (--ttl-deletes): how many the stream carried, and how many were applied as deletes, kept or
    # marked, counted in each batch's transaction; and the column that marks rows whose item expired, once added.
    """
    ALTER TABLE podyn.tables
        ADD COLUMN IF NOT EXISTS ttl_deletes_seen bigint NOT NULL DEFAULT 0,
        ADD COLUMN IF NOT EXISTS ttl_deletes_applied bigint NOT NULL DEFAULT 0,
        ADD COLUMN IF NOT EXISTS ttl_deletes_kept bigint NOT NULL DEFAULT 0,
        ADD COLUMN IF NOT EXISTS ttl_deletes_marked bigint NOT NULL DEFAULT 0,
        ADD COLUMN IF NOT EXISTS expired_column text;
    """,
    # 5: loads from an export in S3 (--from-export): the export a table was loaded from (its id, ARN, folder,
    # point in time, items, billed size, format), the read capacity a load consumed from the table (0 for an
    # export; NULL: not recorded), and the load's position in each of the export's data files (the lines read,
    # committed with their rows; done once the file's end was checked against the manifest).
    """
    ALTER TABLE podyn.tables
        ADD COLUMN IF NOT EXISTS export_id text,
        ADD COLUMN IF NOT EXISTS export_arn text,
        ADD COLUMN IF NOT EXISTS export_url text,
        ADD COLUMN IF NOT EXISTS export_time timestamptz,
        ADD COLUMN IF NOT EXISTS export_item_count bigint,
        ADD COLUMN IF NOT EXISTS export_size_bytes bigint,
        ADD COLUMN IF NOT EXISTS export_format text,
        ADD COLUMN IF NOT EXISTS read_capacity_consumed double precision;
    CREATE TABLE IF NOT EXISTS podyn.export_files (
        target_schema text NOT NULL,
        target_table text NOT NULL,
        data_file_key text NOT NULL,
        ordinal integer NOT NULL,
        item_count bigint NOT NULL,
        md5_checksum text,
        line bigint NOT NULL DEFAULT 0,
        items_loaded bigint NOT NULL DEFAULT 0,
        done boolean NOT NULL DEFAULT false,
        updated_at timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (target_schema, target_table, data_file_key)
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
                                    = (h.target_schema, h.target_table, 'stream shard', h.shard_id)
        UNION ALL
        SELECT f.target_schema, f.target_table, 'export file', f.data_file_key, ARRAY[]::text[], f.line::text,
               f.done, f.items_loaded, l.owner, l.generation, l.expires_at, f.updated_at
        FROM podyn.export_files f
        LEFT JOIN podyn.leases l ON (l.target_schema, l.target_table, l.kind, l.unit_id)
                                    = (f.target_schema, f.target_table, 'export file', f.data_file_key);
    """,
    # 6: the spool. While a table loads, its stream is captured: each key's last change (the new image as DynamoDB
    # JSON, or a delete), committed with the shard checkpoints; applied to the table once it is loaded. The key is
    # core.changes.spool_key's text; json (not jsonb) keeps a U+0000 inside a value. How much was captured
    # (captured_changes, captured_until: the newest record's ApproximateCreationDateTime) and the spool's rows are
    # counted in podyn.tables by the transactions that change them.
    """
    ALTER TABLE podyn.tables
        ADD COLUMN IF NOT EXISTS captured_changes bigint NOT NULL DEFAULT 0,
        ADD COLUMN IF NOT EXISTS captured_until timestamptz,
        ADD COLUMN IF NOT EXISTS spool_rows bigint NOT NULL DEFAULT 0;
    CREATE TABLE IF NOT EXISTS podyn.spool (
        target_schema text NOT NULL,
        target_table text NOT NULL,
        item_key text COLLATE "C" NOT NULL,
        deleted boolean NOT NULL,
        image json,
        shard_id text NOT NULL,
        sequence_number text NOT NULL,
        created_at timestamptz,
        PRIMARY KEY (target_schema, target_table, item_key)
    );
    """,
    # 7: TTL deletes in the spool (--ttl-deletes mark): an entry that marks its row as expired (at created_at),
    # after writing its image if it has one; without an image it only marks the row there is. Entries of version 6
    # are upserts and deletes (false).
    """
    ALTER TABLE podyn.spool ADD COLUMN IF NOT EXISTS expired boolean NOT NULL DEFAULT false;
    """,
    # 8: an export podyn asked DynamoDB for (--export-to) and waits for: its ARN, the S3 destination it was asked
    # to write to, and when. A restart (or another process) waits for that one rather than asking again; cleared
    # when a load starts (the load's own export_* columns then say which export it reads).
    """
    ALTER TABLE podyn.tables
        ADD COLUMN IF NOT EXISTS export_request_arn text,
        ADD COLUMN IF NOT EXISTS export_request_to text,
        ADD COLUMN IF NOT EXISTS export_requested_at timestamptz;
    """,
    # 9: --verify shared by several processes. A run per table and run name (--verify-run, or the one -P gives
    # its children): the segments it compares (a sample's are chosen once, by the process that starts it), and
    # whether it looks for rows without items; a heartbeat its processes refresh (a run whose processes all
    # stopped is not joined again). Each part's result (a segment, or the rows without items: segment -1),
    # committed with the part under its lease, by the process that compared it. The keys the segments scanned,
    # tagged with the lease generation that scanned them (only the committed generation's count), for the check
    # of rows without items; removed when the run finishes.
    """
    CREATE TABLE IF NOT EXISTS podyn.verify_runs (
        run_id bigserial PRIMARY KEY,
        target_schema text NOT NULL,
        target_table text NOT NULL,
        name text NOT NULL,
        total_segments integer NOT NULL,
        segments integer[] NOT NULL,
        sample double precision NOT NULL,
        rows_without_items boolean NOT NULL,
        started_by text NOT NULL,
        started_at timestamptz NOT NULL DEFAULT now(),
        heartbeat_at timestamptz NOT NULL DEFAULT now(),
        finished_at timestamptz
    );
    CREATE INDEX IF NOT EXISTS verify_runs_by_name ON podyn.verify_runs (target_schema, target_table, name);
    CREATE TABLE IF NOT EXISTS podyn.verify_segments (
        run_id bigint NOT NULL,
        segment integer NOT NULL,
        generation bigint NOT NULL,
        worker text NOT NULL,
        result jsonb NOT NULL,
        finished_at timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (run_id, segment)
    );
    CREATE TABLE IF NOT EXISTS podyn.verify_keys (
        run_id bigint NOT NULL,
        segment integer NOT NULL,
        generation bigint NOT NULL,
        key text[] NOT NULL
    );
    CREATE INDEX IF NOT EXISTS verify_keys_by_run ON podyn.verify_keys (run_id);
    """,
    # 10: the bridge from a table's export to its stream (core.exports.plan_bridge): the incremental exports to
    # apply, in order, each with its window, its client token, the export DynamoDB started for it and when its
    # changes were applied (in the transaction that applied them); podyn.tables.bridge_to, the bridge's end, from
    # which (minus the margin) the stream's replay starts. Cleared when a load starts.
    """
    ALTER TABLE podyn.tables ADD COLUMN IF NOT EXISTS bridge_to timestamptz;
    CREATE TABLE IF NOT EXISTS podyn.bridge_exports (
        target_schema text NOT NULL,
        target_table text NOT NULL,
        ordinal integer NOT NULL,
        export_from timestamptz NOT NULL,
        export_to timestamptz NOT NULL,
        client_token text NOT NULL,
        export_arn text,
        requested_at timestamptz,
        items_applied bigint,
        applied_at timestamptz,
        PRIMARY KEY (target_schema, target_table, ordinal)
    );
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
    "podyn.export_files",
    "podyn.spool",
    "podyn.verify_runs",
    "podyn.verify_segments",
    "podyn.verify_keys",
    "podyn.bridge_exports",
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
    #: The export the table is (being) loaded from, and its point in time; None for a Scan load.
    export_id: str | None = None
    export_time: datetime | None = None
    #: That export's folder (``s3://…/AWSDynamoDB/<ExportId>/``).
    export_url: str | None = None
    #: The export podyn asked for (``--export-to``) and no load has started from yet, and where it writes.
    export_request_arn: str | None = None
    export_request_to: str | None = None
    #: The end of the bridge of incremental exports from the export to the stream (None: no bridge), and how many
    #: of its exports are not applied yet.
    bridge_to: datetime | None = None
    bridge_left: int = 0


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
                  target_oid, source_table_id, source_created_at, truncate_before_load, naming_rule = 1,
                  export_id, export_time, export_url, export_request_arn, export_request_to, bridge_to,
                  (SELECT count(*) FROM podyn.bridge_exports b
                   WHERE b.target_schema = t.target_schema AND b.target_table = t.target_table
                     AND b.applied_at IS NULL)
           FROM podyn.tables t WHERE target_schema = %s AND target_table = %s""",
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
        export_id=row[17],
        export_time=row[18],
        export_url=row[19],
        export_request_arn=row[20],
        export_request_to=row[21],
        bridge_to=row[22],
        bridge_left=row[23],
    )


def list_tables(conn: psycopg.Connection[Any]) -> list[TableRecord]:
    rows = conn.execute("SELECT target_schema, target_table FROM podyn.tables ORDER BY 1, 2").fetchall()
    return [record for s, t in rows if (record := read_table(conn, s, t)) is not None]


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
    removed = _forget_verify_runs(conn, "target_schema = %s AND target_table = %s", (schema, table))
    for metadata_table in (
        "podyn.segments",
        "podyn.export_files",
        "podyn.shards",
        "podyn.spool",
        "podyn.bridge_exports",
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
    """``loading``, from now, with the stream found at the start; no items, no replay point, nothing to empty, no
    export (a Scan load; :func:`start_export_load` records the export), an empty spool (what an earlier capture kept
    happened before this load's scan: the scan reads its effect)."""
    forget_spool(conn, spec)
    conn.execute(
        "DELETE FROM podyn.bridge_exports WHERE target_schema = %s AND target_table = %s", (spec.schema, spec.table)
    )
    return _set_state(
        conn,
        spec,
        TableState.LOADING,
        None,
        """, total_segments = %s, items_loaded = 0, load_started_at = now(), load_finished_at = NULL,
             stream_arn = %s, stream_view_type = %s, replay_from = NULL, truncate_before_load = false,
             export_id = NULL, export_arn = NULL, export_url = NULL, export_time = NULL, export_item_count = NULL,
             export_size_bytes = NULL, export_format = NULL, read_capacity_consumed = NULL,
             export_request_arn = NULL, export_request_to = NULL, export_requested_at = NULL,
             captured_changes = 0, captured_until = NULL, spool_rows = 0, bridge_to = NULL""",
        (total_segments, stream_arn, stream_view_type),
    )


def start_export_load(
    conn: psycopg.Connection[Any],
    spec: TableSpec,
    manifest: ExportManifest,
    *,
    stream_arn: str | None,
    stream_view_type: str | None,
) -> StateChange:
    """``loading`` from an export, from now: the export recorded, no read capacity consumed from the table."""
    change = start_load(conn, spec, 0, stream_arn=stream_arn, stream_view_type=stream_view_type)
    conn.execute(
        """UPDATE podyn.tables
           SET export_id = %s, export_arn = %s, export_url = %s, export_time = %s, export_item_count = %s,
               export_size_bytes = %s, export_format = %s, read_capacity_consumed = 0
           WHERE target_schema = %s AND target_table = %s""",
        (
            manifest.export_id,
            manifest.export_arn,
            manifest.url,
            manifest.export_time,
            manifest.item_count,
            manifest.billed_size_bytes,
            manifest.output_format.value,
            spec.schema,
            spec.table,
        ),
    )
    return change


def record_export_request(conn: psycopg.Connection[Any], spec: TableSpec, export_arn: str, destination: str) -> None:
    """The export podyn asked DynamoDB for (``--export-to``), so that a restart waits for it instead of asking for
    another; its load's start clears it (:func:`start_load`)."""
    conn.execute(
        """UPDATE podyn.tables
           SET export_request_arn = %s, export_request_to = %s, export_requested_at = now(), updated_at = now()
           WHERE target_schema = %s AND target_table = %s""",
        (export_arn, destination, spec.schema, spec.table),
    )


def plan_bridge(conn: psycopg.Connection[Any], spec: TableSpec, records: Sequence[BridgeRecord]) -> None:
    """The bridge of incremental exports a load from an export needs, none asked for yet; its end recorded as
    where the stream's replay starts from (minus the margin)."""
    conn.execute(
        "DELETE FROM podyn.bridge_exports WHERE target_schema = %s AND target_table = %s", (spec.schema, spec.table)
    )
    with conn.cursor() as cur:
        cur.executemany(
            """INSERT INTO podyn.bridge_exports
                   (target_schema, target_table, ordinal, export_from, export_to, client_token)
               VALUES (%s, %s, %s, %s, %s, %s)""",
            [
                (spec.schema, spec.table, r.window.ordinal, r.window.start, r.window.end, r.client_token)
                for r in records
            ],
        )
    conn.execute(
        "UPDATE podyn.tables SET bridge_to = %s, updated_at = now() WHERE target_schema = %s AND target_table = %s",
        (records[-1].window.end if records else None, spec.schema, spec.table),
    )


def read_bridge(conn: psycopg.Connection[Any], spec: TableSpec) -> list[BridgeRecord]:
    return read_bridge_of(conn, spec.schema, spec.table)


def read_bridge_of(conn: psycopg.Connection[Any], schema: str, table: str) -> list[BridgeRecord]:
    """A table's bridge in window order (``--status`` reads it by the target's names)."""
    rows = conn.execute(
        """SELECT ordinal, export_from, export_to, client_token, export_arn, applied_at IS NOT NULL
           FROM podyn.bridge_exports WHERE target_schema = %s AND target_table = %s ORDER BY ordinal""",
        (schema, table),
    ).fetchall()
    return [BridgeRecord(BridgeWindow(r[0], r[1], r[2]), r[3], r[4], r[5]) for r in rows]


def record_bridge_export(conn: psycopg.Connection[Any], spec: TableSpec, ordinal: int, export_arn: str) -> None:
    """The incremental export DynamoDB started for a window of the bridge: a restart waits for it."""
    conn.execute(
        """UPDATE podyn.bridge_exports SET export_arn = %s, requested_at = now()
           WHERE target_schema = %s AND target_table = %s AND ordinal = %s""",
        (export_arn, spec.schema, spec.table, ordinal),
    )


def reset_bridge_export(conn: psycopg.Connection[Any], spec: TableSpec, ordinal: int, client_token: str) -> None:
    """A window whose export failed: asked for again, as a new export (a new client token)."""
    conn.execute(
        """UPDATE podyn.bridge_exports SET export_arn = NULL, requested_at = NULL, client_token = %s
           WHERE target_schema = %s AND target_table = %s AND ordinal = %s AND applied_at IS NULL""",
        (client_token, spec.schema, spec.table, ordinal),
    )


def mark_bridge_applied(conn: psycopg.Connection[Any], spec: TableSpec, ordinal: int, items: int) -> bool:
    """Mark a window's changes applied, in the transaction that applies them; False if they already were, or if
    a window before it is not (windows apply in order)."""
    cur = conn.execute(
        """UPDATE podyn.bridge_exports b SET applied_at = now(), items_applied = %s
           WHERE target_schema = %s AND target_table = %s AND ordinal = %s AND applied_at IS NULL
             AND NOT EXISTS (SELECT 1 FROM podyn.bridge_exports e
                             WHERE e.target_schema = b.target_schema AND e.target_table = b.target_table
                               AND e.ordinal < b.ordinal AND e.applied_at IS NULL)""",
        (items, spec.schema, spec.table, ordinal),
    )
    return cur.rowcount == 1


def finish_load(conn: psycopg.Connection[Any], spec: TableSpec) -> tuple[int, StateChange]:
    """``loaded``, now, with the items the segments (or the export's files) loaded; how many."""
    row = conn.execute(
        """SELECT (SELECT coalesce(sum(items_loaded), 0) FROM podyn.segments
                   WHERE target_schema = %(schema)s AND target_table = %(table)s)
                + (SELECT coalesce(sum(items_loaded), 0) FROM podyn.export_files
                   WHERE target_schema = %(schema)s AND target_table = %(table)s)""",
        {"schema": spec.schema, "table": spec.table},
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
    """A new Scan load's units: ``total_segments`` segments, not started (an earlier load's units are gone)."""
    conn.execute("DELETE FROM podyn.segments WHERE target_schema = %s AND target_table = %s", (spec.schema, spec.table))
    forget_leases(conn, spec, UnitKind.SEGMENT)
    conn.execute(
        "DELETE FROM podyn.export_files WHERE target_schema = %s AND target_table = %s", (spec.schema, spec.table)
    )
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


def reset_export_files(conn: psycopg.Connection[Any], spec: TableSpec, files: Sequence[ExportFile]) -> None:
    """A new load from an export: its data files as the load's units, none started (no segments left)."""
    reset_segments(conn, spec, 0)
    forget_leases(conn, spec, UnitKind.EXPORT_FILE)
    with conn.cursor() as cur:
        cur.executemany(
            """INSERT INTO podyn.export_files
                   (target_schema, target_table, data_file_key, ordinal, item_count, md5_checksum)
               VALUES (%s, %s, %s, %s, %s, %s)""",
            [(spec.schema, spec.table, f.key, f.ordinal, f.item_count, f.md5) for f in files],
        )


def read_export_files(conn: psycopg.Connection[Any], spec: TableSpec) -> list[ExportFileRecord]:
    rows = conn.execute(
        """SELECT data_file_key, ordinal, item_count, md5_checksum, line, items_loaded, done FROM podyn.export_files
           WHERE target_schema = %s AND target_table = %s ORDER BY ordinal, data_file_key""",
        (spec.schema, spec.table),
    ).fetchall()
    return [ExportFileRecord(*row) for row in rows]


def advance_export_file(
    conn: psycopg.Connection[Any],
    spec: TableSpec,
    key: str,
    expected_line: int,
    new_line: int,
    items: int,
    done: bool,
) -> bool:
    """Move a data file from ``expected_line`` to ``new_line`` (lines read), done or not. False if it was not there.

    Compare-and-set, as :func:`advance_segment`: a batch applied twice (a commit whose answer was lost, a second
    process) changes nothing.
    """
    cur = conn.execute(
        """UPDATE podyn.export_files
           SET line = %s, done = %s, items_loaded = items_loaded + %s, updated_at = now()
           WHERE target_schema = %s AND target_table = %s AND data_file_key = %s AND NOT done AND line = %s""",
        (new_line, done, items, spec.schema, spec.table, key, expected_line),
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


def record_ttl_deletes(conn: psycopg.Connection[Any], spec: TableSpec, counts: TtlCounts) -> None:
    """Add a batch's TTL deletes to the table's counts, in the batch's transaction."""
    conn.execute(
        """UPDATE podyn.tables
           SET ttl_deletes_seen = ttl_deletes_seen + %s, ttl_deletes_applied = ttl_deletes_applied + %s,
               ttl_deletes_kept = ttl_deletes_kept + %s, ttl_deletes_marked = ttl_deletes_marked + %s
           WHERE target_schema = %s AND target_table = %s""",
        (counts.seen, counts.applied, counts.kept, counts.marked, spec.schema, spec.table),
    )


def read_expired_column(conn: psycopg.Connection[Any], spec: TableSpec) -> str | None:
    """The column that marks the table's expired rows, if podyn added one (None for a table it does not know)."""
    row = conn.execute(
        "SELECT expired_column FROM podyn.tables WHERE target_schema = %s AND target_table = %s",
        (spec.schema, spec.table),
    ).fetchone()
    return None if row is None or row[0] is None else str(row[0])


def record_expired_column(conn: psycopg.Connection[Any], spec: TableSpec, name: str | None) -> None:
    """Record (None: forget) the column that marks the table's expired rows, in the ALTER TABLE's transaction."""
    conn.execute(
        """UPDATE podyn.tables SET expired_column = %s, updated_at = now()
           WHERE target_schema = %s AND target_table = %s""",
        (name, spec.schema, spec.table),
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
    are candidates (not done, parents done); this only arbitrates between processes. A lease is free once it
    expired, or at once when its owner's presence lock is gone (see :func:`take_presence_lock`: the process was
    killed, its connections closed). The free units are picked in
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
        f"""WITH free AS MATERIALIZED (
               SELECT unit_id FROM podyn.leases
               WHERE target_schema = %(schema)s AND target_table = %(table)s AND kind = %(kind)s
                 AND unit_id = ANY(%(ids)s)
                 AND (owner IS NULL OR (owner <> %(owner)s AND (expires_at < now() OR NOT EXISTS ({_PRESENT}))))
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


def _present(worker: str) -> str:
    """SQL: the worker named by the column ``worker`` still holds its presence lock (its process runs, connected
    to PostgreSQL)."""
    return f"""SELECT FROM pg_locks k
               WHERE k.locktype = 'advisory' AND k.granted AND k.objsubid = 1
                 AND k.classid = ((hashtextextended({worker}, 0) >> 32) & 4294967295)::oid
                 AND k.objid = (hashtextextended({worker}, 0) & 4294967295)::oid
                 AND k.database = (SELECT oid FROM pg_database WHERE datname = current_database())"""


#: The owner of lease row ``leases`` still holds its presence lock.
_PRESENT = _present("leases.owner")


def take_presence_lock(conn: psycopg.Connection[Any], worker: str) -> bool:
    """Take ``worker``'s presence lock (a session advisory lock keyed by its name) on ``conn``, a connection the
    process keeps open as long as it runs: when the process dies, PostgreSQL drops the lock with the connection,
    and other processes take its leases over at once instead of after they expire."""
    row = conn.execute("SELECT pg_try_advisory_lock(hashtextextended(%s, 0))", (worker,)).fetchone()
    return bool(row and row[0])


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
    and the process lost its other units to a takeover while that commit ran.

    The locks must not outlive the lease: a process paused (SIGSTOP, a frozen VM) inside the transaction would
    keep its unit from every other process (claims skip locked rows), and once its batch updated the table's row
    in podyn.tables, every other process's batches too, for as long as it is paused. So the transaction may not
    stay idle past the lease's expiry (at least 1 s): PostgreSQL ends the session, the unit can be claimed, and
    the paused process's commit fails when it wakes. PostgreSQL arms that timer when it answers a Sync, and a
    pipelined ``executemany`` ends with a Flush that disarms it: a pause during the upserts or deletes of a batch
    keeps that process's units (only those) until it continues or its connection drops. Nothing is applied twice
    either way."""
    row = conn.execute(
        """SELECT set_config('idle_in_transaction_session_timeout',
                             (1000 * greatest(extract(epoch FROM expires_at - now()), 1))::bigint::text, true)
           FROM podyn.leases
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
    """The workers of the table in ``role`` whose heartbeat is younger than ``within_seconds`` and who still hold
    their presence lock, oldest first. A killed worker's row stays until its heartbeat is stale, but its presence
    lock went with its connections: it no longer counts at once (its share of units, of ``--scan-rate``)."""
    rows = conn.execute(
        f"""SELECT worker FROM podyn.workers
           WHERE target_schema = %s AND target_table = %s AND role = %s
             AND heartbeat_at > now() - %s * interval '1 second' AND EXISTS ({_present("workers.worker")})
           ORDER BY started_at, worker""",
        (spec.schema, spec.table, role, within_seconds),
    ).fetchall()
    return [str(r[0]) for r in rows]


def held_units(conn: psycopg.Connection[Any], spec: TableSpec, kind: str) -> dict[str, tuple[str, bool]]:
    """Unit id → (owner, lease still running) of the table's units of ``kind`` that have an owner."""
    rows = conn.execute(
        f"""SELECT unit_id, owner, expires_at >= now() AND EXISTS ({_PRESENT}) FROM podyn.leases
           WHERE target_schema = %s AND target_table = %s AND kind = %s AND owner IS NOT NULL""",
        (spec.schema, spec.table, kind),
    ).fetchall()
    return {str(r[0]): (str(r[1]), bool(r[2])) for r in rows}


def export_files_left(conn: psycopg.Connection[Any], spec: TableSpec) -> int:
    row = conn.execute(
        "SELECT count(*) FROM podyn.export_files WHERE target_schema = %s AND target_table = %s AND NOT done",
        (spec.schema, spec.table),
    ).fetchone()
    return int(row[0]) if row else 0


def segments_left(conn: psycopg.Connection[Any], spec: TableSpec) -> int:
    row = conn.execute(
        "SELECT count(*) FROM podyn.segments WHERE target_schema = %s AND target_table = %s AND NOT done",
        (spec.schema, spec.table),
    ).fetchone()
    return int(row[0]) if row else 0


# -- --verify shared by several processes ------------------------------------------------------------------------

#: ``podyn.verify_segments.segment`` of a run's check of the rows that have no item.
EXTRA_ROWS = -1
#: A run of a table whose last heartbeat is this old is removed when another run of the table starts.
VERIFY_RUN_KEPT_SECONDS = 7 * 24 * 3600.0
_VERIFY_KINDS = [UnitKind.VERIFY_SEGMENT, UnitKind.VERIFY_EXTRA_ROWS]


@dataclass(frozen=True)
class VerifyRun:
    """One ``--verify`` of one table, shared by the processes that joined it."""

    run_id: int
    name: str
    total_segments: int
    #: The segments it compares (all of them, or a sample's).
    segments: tuple[int, ...]
    sample: float
    rows_without_items: bool
    started_by: str
    #: Whether this process started it (else it joined it).
    started: bool

    @property
    def parts(self) -> list[int]:
        """Every part to commit: the segments, then the check of the rows without items if the run makes it."""
        return [*self.segments, *([EXTRA_ROWS] if self.rows_without_items else [])]


def verify_unit(run_id: int, segment: int) -> tuple[str, str]:
    """The kind and id of a part's work unit (its lease)."""
    if segment == EXTRA_ROWS:
        return UnitKind.VERIFY_EXTRA_ROWS, str(run_id)
    return UnitKind.VERIFY_SEGMENT, f"{run_id}:{segment}"


def join_verify_run(
    conn: psycopg.Connection[Any],
    spec: TableSpec,
    name: str,
    *,
    total_segments: int,
    segments: Sequence[int],
    sample: float,
    rows_without_items: bool,
    worker: str,
    within_seconds: float,
) -> VerifyRun:
    """The run ``name`` of the table to join, else a new one (with these segments): a run is joined while it is
    unfinished and its heartbeat younger than ``within_seconds`` (some process of it runs), or when it finished
    less than ``within_seconds`` ago (a process of the same command that started late reports it). Serialised per
    table and name by an advisory lock, so that processes starting at the same moment agree on one run."""
    conn.execute(
        "SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))",
        (f"podyn verify run {spec.schema}.{spec.table} {name}",),
    )
    table = (spec.schema, spec.table)
    _forget_verify_runs(
        conn,
        "target_schema = %s AND target_table = %s AND heartbeat_at < now() - %s * interval '1 second'",
        (*table, VERIFY_RUN_KEPT_SECONDS),
    )
    conn.execute(  # the keys of runs whose processes all stopped
        """DELETE FROM podyn.verify_keys k USING podyn.verify_runs r
           WHERE k.run_id = r.run_id AND r.target_schema = %s AND r.target_table = %s AND r.finished_at IS NULL
             AND r.heartbeat_at < now() - %s * interval '1 second'""",
        (*table, DEAD_WORKER_SECONDS),
    )
    row = conn.execute(
        """SELECT run_id, total_segments, segments, sample, rows_without_items, started_by FROM podyn.verify_runs
           WHERE target_schema = %s AND target_table = %s AND name = %s
             AND ((finished_at IS NULL AND heartbeat_at > now() - %s * interval '1 second')
                  OR finished_at > now() - %s * interval '1 second')
           ORDER BY run_id DESC LIMIT 1""",
        (*table, name, within_seconds, within_seconds),
    ).fetchone()
    if row is not None:
        return VerifyRun(int(row[0]), name, int(row[1]), tuple(row[2]), float(row[3]), bool(row[4]), row[5], False)
    created = conn.execute(
        """INSERT INTO podyn.verify_runs (target_schema, target_table, name, total_segments, segments, sample,
                                          rows_without_items, started_by)
           VALUES (%s, %s, %s, %s, %s, %s, %s, %s) RETURNING run_id""",
        (*table, name, total_segments, list(segments), sample, rows_without_items, worker),
    ).fetchone()
    assert created is not None
    return VerifyRun(int(created[0]), name, total_segments, tuple(segments), sample, rows_without_items, worker, True)


def _forget_verify_runs(conn: psycopg.Connection[Any], where: str, params: tuple[Any, ...]) -> int:
    """Remove the verify runs ``where`` (SQL of this module on podyn.verify_runs) with their results and keys; how
    many rows were removed."""
    runs = [r[0] for r in conn.execute(f"SELECT run_id FROM podyn.verify_runs WHERE {where}", params).fetchall()]
    if not runs:
        return 0
    removed = 0
    for statement in (
        "DELETE FROM podyn.verify_keys WHERE run_id = ANY(%s)",
        "DELETE FROM podyn.verify_segments WHERE run_id = ANY(%s)",
        "DELETE FROM podyn.verify_runs WHERE run_id = ANY(%s)",
    ):
        removed += conn.execute(statement, (runs,)).rowcount
    ids = [str(r) for r in runs]
    removed += conn.execute(
        "DELETE FROM podyn.leases WHERE kind = ANY(%s) AND split_part(unit_id, ':', 1) = ANY(%s)",
        (_VERIFY_KINDS, ids),
    ).rowcount
    return removed


def beat_verify_run(conn: psycopg.Connection[Any], run_id: int) -> None:
    """Some process of the run runs: processes starting now join it."""
    conn.execute(
        "UPDATE podyn.verify_runs SET heartbeat_at = now() WHERE run_id = %s AND finished_at IS NULL", (run_id,)
    )


def read_verify_results(conn: psycopg.Connection[Any], run_id: int) -> dict[int, tuple[str, Tally]]:
    """Segment (EXTRA_ROWS: the rows without items) → the worker that compared it and what it found."""
    rows = conn.execute(
        "SELECT segment, worker, result FROM podyn.verify_segments WHERE run_id = %s ORDER BY segment", (run_id,)
    ).fetchall()
    return {int(r[0]): (str(r[1]), Tally.from_json(r[2])) for r in rows}


def claim_verify_part(
    conn: psycopg.Connection[Any],
    spec: TableSpec,
    run: VerifyRun,
    parts: Sequence[int],
    owner: str,
    lease_seconds: float,
) -> tuple[tuple[int, Lease] | None, int]:
    """Claim one of ``parts`` (of one kind: segments, or the rows without items) not committed yet and free of a
    live lease; and how many of them are not committed. A part committed by another process between the read and
    the claim is given back, not compared twice."""
    done = _verify_parts_done(conn, run.run_id)
    left = [p for p in parts if p not in done]
    if not left:
        return None, 0
    by_unit = {verify_unit(run.run_id, p): p for p in left}
    kind = next(iter(by_unit))[0]
    leases = claim_units(conn, spec, kind, [unit for _, unit in by_unit], owner, 1, lease_seconds)
    if not leases:
        return None, len(left)
    part = by_unit[(kind, leases[0].unit_id)]
    if part in _verify_parts_done(conn, run.run_id):
        release_leases(conn, spec, leases)
        return None, len(left) - 1
    return (part, leases[0]), len(left)


def _verify_parts_done(conn: psycopg.Connection[Any], run_id: int) -> set[int]:
    rows = conn.execute("SELECT segment FROM podyn.verify_segments WHERE run_id = %s", (run_id,)).fetchall()
    return {int(r[0]) for r in rows}


def commit_verify_part(
    conn: psycopg.Connection[Any],
    spec: TableSpec,
    run: VerifyRun,
    segment: int,
    lease: Lease,
    result: Tally,
) -> tuple[bool, bool]:
    """Commit a part's result and give its lease back, if the lease is still the caller's; (committed, the run is
    finished now). The run's row is locked first, so that of two processes committing its last two parts at once
    the second sees the first's and finishes the run; the commit that finishes it removes the run's keys and
    leases."""
    conn.execute("SELECT FROM podyn.verify_runs WHERE run_id = %s FOR UPDATE", (run.run_id,))
    if not holds_lease(conn, spec, lease):
        return False, False
    cur = conn.execute(
        """INSERT INTO podyn.verify_segments (run_id, segment, generation, worker, result)
           VALUES (%s, %s, %s, %s, %s) ON CONFLICT DO NOTHING""",
        (run.run_id, segment, lease.generation, lease.owner, _jsonb(result.to_json())),
    )
    release_leases(conn, spec, [lease])
    if cur.rowcount == 0:
        return False, False
    finished = conn.execute(
        """UPDATE podyn.verify_runs SET heartbeat_at = now(), finished_at = now()
           WHERE run_id = %s AND finished_at IS NULL
             AND (SELECT count(*) FROM podyn.verify_segments WHERE run_id = %s) >= %s
           RETURNING run_id""",
        (run.run_id, run.run_id, len(run.parts)),
    ).fetchone()
    if finished is None:
        return True, False
    conn.execute("DELETE FROM podyn.verify_keys WHERE run_id = %s", (run.run_id,))
    conn.execute(
        """DELETE FROM podyn.leases WHERE target_schema = %s AND target_table = %s AND kind = ANY(%s)
             AND split_part(unit_id, ':', 1) = %s""",
        (spec.schema, spec.table, _VERIFY_KINDS, str(run.run_id)),
    )
    return True, True


def read_verify_finished(conn: psycopg.Connection[Any], run_id: int) -> bool:
    row = conn.execute("SELECT finished_at IS NOT NULL FROM podyn.verify_runs WHERE run_id = %s", (run_id,)).fetchone()
    return bool(row and row[0])


def save_verify_keys(
    conn: psycopg.Connection[Any], run_id: int, segment: int, generation: int, keys: Sequence[Sequence[Any]]
) -> None:
    """Keep the keys a segment scanned (primary key values in column order), as text, under the lease generation
    that scanned them."""
    statement = "COPY podyn.verify_keys (run_id, segment, generation, key) FROM STDIN (FORMAT BINARY)"
    with conn.cursor() as cur, cur.copy(statement) as copy:
        copy.set_types(["bigint", "integer", "bigint", "text[]"])
        for key in keys:
            copy.write_row((run_id, segment, generation, [_key_text(v) for v in key]))


def _key_text(value: Any) -> str:
    """A key value as PostgreSQL's input for its column type reads it back (bytea in hex)."""
    if isinstance(value, bytes | bytearray | memoryview):
        return "\\x" + bytes(value).hex()
    return str(value)


def copy_verify_keys(conn: psycopg.Connection[Any], run_id: int, into: sql.Composable, types: Sequence[str]) -> None:
    """Copy the keys of the run's committed segments (those the committed generation scanned) into ``into``, a
    table with one column per primary key column, of ``types``."""
    conn.execute(
        sql.SQL(
            """INSERT INTO {} SELECT {} FROM podyn.verify_keys k
               JOIN podyn.verify_segments s ON (s.run_id, s.segment, s.generation) = (k.run_id, k.segment, k.generation)
               WHERE k.run_id = %s"""
        ).format(
            into,
            sql.SQL(", ").join(
                sql.SQL("(k.key[{}])::{}").format(sql.Literal(i + 1), sql.SQL(t)) for i, t in enumerate(types)
            ),
        ),
        (run_id,),
    )


# -- the spool: changes captured while a table loads ------------------------------------------------------------


def spool_changes(conn: psycopg.Connection[Any], spec: TableSpec, entries: Sequence[SpoolEntry]) -> int:
    """Keep each entry as its key's last change, composed with the one kept before (the caller writes in stream
    order and gives each key once); how many keys are new to the spool. The arrays go in binary (``%b``): psycopg's
    text form escapes each element, which took 4 times as long as the insert itself.

    Each entry replaces the key's, but for an Expire without image (``--ttl-deletes mark`` of a TTL delete that
    carries no old image): it marks the row the earlier entry leaves, so it keeps that entry's image and becomes an
    Expire, or it leaves a delete a delete (there is no row to mark). Applied in turn, the two would do the same.
    """
    if not entries:
        return 0
    rows = conn.execute(
        """INSERT INTO podyn.spool AS s (target_schema, target_table, item_key, deleted, image, expired, shard_id,
                                         sequence_number, created_at)
           SELECT %s, %s, k, d, i::json, x, h, q, c
           FROM unnest(%b::text[], %b::bool[], %b::text[], %b::bool[], %b::text[], %b::text[], %b::timestamptz[])
                AS e(k, d, i, x, h, q, c)
           ON CONFLICT (target_schema, target_table, item_key) DO UPDATE
           SET deleted = CASE WHEN excluded.expired AND excluded.image IS NULL THEN s.deleted ELSE excluded.deleted END,
               image = CASE WHEN excluded.expired AND excluded.image IS NULL THEN s.image ELSE excluded.image END,
               expired = CASE WHEN excluded.expired AND excluded.image IS NULL THEN NOT s.deleted
                              ELSE excluded.expired END,
               shard_id = excluded.shard_id, sequence_number = excluded.sequence_number,
               created_at = excluded.created_at
           RETURNING xmax = 0""",
        (
            spec.schema,
            spec.table,
            [e.key for e in entries],
            [e.deleted for e in entries],
            [e.image for e in entries],
            [e.expired for e in entries],
            [e.shard_id for e in entries],
            [e.sequence_number for e in entries],
            [e.created_at for e in entries],
        ),
    ).fetchall()
    return sum(1 for (inserted,) in rows if inserted)


def record_capture(
    conn: psycopg.Connection[Any], spec: TableSpec, captured: int, captured_until: datetime | None, new_rows: int
) -> int | None:
    """Count a batch captured into the spool: the spool's rows after it; None, counting nothing, when the table
    is not loading (any more): the caller must roll back, since no change may enter the spool once its apply can
    have begun. The row lock taken here is the one the commit that finishes the load takes first
    (``lock_table_row``): a batch and that commit are serialised, and whichever comes second sees the other."""
    row = conn.execute(
        """UPDATE podyn.tables
           SET captured_changes = captured_changes + %s, captured_until = greatest(captured_until, %s::timestamptz),
               spool_rows = spool_rows + %s, updated_at = now()
           WHERE target_schema = %s AND target_table = %s AND load_started_at IS NOT NULL AND load_finished_at IS NULL
           RETURNING spool_rows""",
        (captured, captured_until, new_rows, spec.schema, spec.table),
    ).fetchone()
    return None if row is None else int(row[0])


def read_spool(conn: psycopg.Connection[Any], spec: TableSpec, after: str | None, limit: int) -> list[SpoolEntry]:
    """Up to ``limit`` entries of the table's spool in key order, after key ``after`` (None: from the first)."""
    rows = conn.execute(
        """SELECT item_key, image::text, shard_id, sequence_number, created_at, expired FROM podyn.spool
           WHERE target_schema = %s AND target_table = %s AND (%s::text IS NULL OR item_key > %s)
           ORDER BY item_key LIMIT %s""",
        (spec.schema, spec.table, after, after, limit),
    ).fetchall()
    return [
        SpoolEntry(str(k), image, str(shard), str(seq), created, bool(expired))
        for k, image, shard, seq, created, expired in rows
    ]


def take_spool(conn: psycopg.Connection[Any], spec: TableSpec, keys: Sequence[str]) -> tuple[int, int]:
    """Remove these keys' entries from the spool as they are applied: how many were still there, and how many
    rows the spool has left."""
    row = conn.execute(
        """WITH taken AS (DELETE FROM podyn.spool s USING unnest(%b::text[]) AS k(item_key)
                          WHERE s.target_schema = %s AND s.target_table = %s AND s.item_key = k.item_key
                          RETURNING 1)
           UPDATE podyn.tables SET spool_rows = spool_rows - (SELECT count(*) FROM taken), updated_at = now()
           WHERE target_schema = %s AND target_table = %s
           RETURNING (SELECT count(*) FROM taken), spool_rows""",
        (list(keys), spec.schema, spec.table, spec.schema, spec.table),
    ).fetchone()
    return (int(row[0]), int(row[1])) if row else (0, 0)


def spool_pending(conn: psycopg.Connection[Any], spec: TableSpec) -> bool:
    """Whether the table's spool still holds changes (they go to the table before any later change)."""
    row = conn.execute(
        "SELECT EXISTS (SELECT FROM podyn.spool WHERE target_schema = %s AND target_table = %s)",
        (spec.schema, spec.table),
    ).fetchone()
    return bool(row and row[0])


def forget_spool(conn: psycopg.Connection[Any], spec: TableSpec) -> None:
    conn.execute("DELETE FROM podyn.spool WHERE target_schema = %s AND target_table = %s", (spec.schema, spec.table))


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
    #: The export the table was loaded from (None: a Scan load), and what its manifest said of it.
    export_id: str | None
    export_arn: str | None
    export_url: str | None
    export_time: datetime | None
    export_item_count: int | None
    export_size_bytes: int | None
    export_format: str | None
    #: Read capacity the load consumed from the table: 0 from an export; None where not recorded (a Scan load).
    read_capacity_consumed: float | None
    #: TTL deletes read from the stream, and what became of them (``--ttl-deletes``).
    ttl_deletes: TtlCounts = TtlCounts()
    #: Stream records captured into the spool during the load, the newest one's creation time, the spool's rows.
    captured_changes: int = 0
    captured_until: datetime | None = None
    spool_rows: int = 0


@dataclass(frozen=True)
class SegmentProgress:
    segment: int
    done: bool
    items_loaded: int
    updated_at: datetime


@dataclass(frozen=True)
class ExportFileProgress:
    key: str
    item_count: int
    #: Lines of the decompressed file read and committed.
    line: int
    items_loaded: int
    done: bool
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
                                     AND a.attname = c.column_name AND NOT a.attisdropped)),
                  export_id, export_arn, export_url, export_time, export_item_count, export_size_bytes,
                  export_format, read_capacity_consumed,
                  ttl_deletes_seen, ttl_deletes_applied, ttl_deletes_kept, ttl_deletes_marked,
                  captured_changes, captured_until, spool_rows
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
    values[30:34] = [TtlCounts(*values[30:34])]
    return TableProgress(*values)


def read_segment_progress(conn: psycopg.Connection[Any], schema: str, table: str) -> list[SegmentProgress]:
    rows = conn.execute(
        """SELECT segment, done, items_loaded, updated_at FROM podyn.segments
           WHERE target_schema = %s AND target_table = %s ORDER BY segment""",
        (schema, table),
    ).fetchall()
    return [SegmentProgress(*row) for row in rows]


def read_export_file_progress(conn: psycopg.Connection[Any], schema: str, table: str) -> list[ExportFileProgress]:
    rows = conn.execute(
        """SELECT data_file_key, item_count, line, items_loaded, done, updated_at FROM podyn.export_files
           WHERE target_schema = %s AND target_table = %s ORDER BY ordinal, data_file_key""",
        (schema, table),
    ).fetchall()
    return [ExportFileProgress(*row) for row in rows]


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


def recorded_targets(conn: psycopg.Connection[Any]) -> list[StoredTarget]:
    """Every DynamoDB table podyn replicates, with its PostgreSQL table and whether the relation recorded is there
    (not dropped, nor dropped and made again): the mapping later runs follow, and refuse to change."""
    rows = conn.execute(
        """SELECT t.source_table, t.target_schema, t.target_table,
                  r.oid IS NOT NULL AND (t.target_oid IS NULL OR t.target_oid = r.oid)
           FROM podyn.tables t
           LEFT JOIN LATERAL (SELECT to_regclass(format('%I.%I', t.target_schema, t.target_table))::oid) r(oid)
             ON true
           ORDER BY 2, 3"""
    ).fetchall()
    return [StoredTarget(source, schema, table, live) for source, schema, table, live in rows]


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
