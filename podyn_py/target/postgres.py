"""The PostgreSQL edge: connections, table preparation, COPY of scanned pages, batched upserts and deletes.

Every write that moves a position (a scan segment's last key, an export file's line, a shard's sequence number)
happens in the same transaction as the rows it covers, guarded by a compare-and-set on the old position, so a page or
batch applied a second time (a commit whose answer was lost, a restart, a second process) changes nothing.

Connections made here dump jsonb parameters from bytes that are already JSON (orjson's output): the rows module
serialises each value once, with exact numbers, and nothing here serialises it again.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import socket
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import replace
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, TypeVar

import orjson
import psycopg
from psycopg import postgres, sql
from psycopg.abc import Buffer
from psycopg.adapt import Dumper
from psycopg.pq import Format
from psycopg.types.json import set_json_dumps

from podyn_py import health, metrics
from podyn_py.core import ddl, naming
from podyn_py.core.changes import SpoolEntry, TtlCounts
from podyn_py.core.exports import BridgeRecord, ExportFileRecord, ExportManifest
from podyn_py.core.positions import Lease, SegmentRecord, ShardPosition, UnitKind
from podyn_py.core.schema import (
    EXPIRED_COLUMN,
    Column,
    KeyAttribute,
    SchemaChange,
    SourceIdentity,
    StoredChoices,
    TableSchema,
    TableSpec,
    complete_keys,
    initial_schema,
)
from podyn_py.core.targets import StoredTarget
from podyn_py.core.values import PgType
from podyn_py.errors import (
    ConfigError,
    Interrupted,
    LeaseLost,
    LockKeyCollision,
    MappingChanged,
    PodynError,
    SchemaError,
    SpoolClosed,
    SpoolNotEmpty,
    TableHeldElsewhere,
    TargetError,
    TransientTargetError,
)
from podyn_py.retry import POSTGRES_RECONNECT, Retrier
from podyn_py.target import state

log = logging.getLogger(__name__)

T = TypeVar("T")

_JSONB_OID = postgres.types["jsonb"].oid


def _already_json(value: Any) -> Any:
    return value


def connect(conninfo: str, *, autocommit: bool = False) -> psycopg.Connection[Any]:
    try:
        conn = psycopg.connect(conninfo, autocommit=autocommit, application_name="podyn")
    except psycopg.Error as exc:
        raise classify(exc, "cannot connect to PostgreSQL") from exc
    set_json_dumps(_already_json, conn)
    return conn


def classify(exc: BaseException, what: str, *, table: str | None = None) -> PodynError:
    """Turn a psycopg error into podyn's tree: transient when reconnecting or retrying can fix it."""
    if isinstance(exc, PodynError):
        return exc
    message = f"{what}: {str(exc).strip()}"
    transient_types = (
        psycopg.OperationalError,
        psycopg.errors.SerializationFailure,
        psycopg.errors.DeadlockDetected,
        psycopg.errors.LockNotAvailable,
        psycopg.errors.QueryCanceled,
        # A transaction left idle past its lease, ended by PostgreSQL (see PostgresTarget.connect): retried on a
        # new connection, where the lease check decides.
        psycopg.errors.IdleInTransactionSessionTimeout,
    )
    if isinstance(exc, psycopg.errors.DiskFull | psycopg.errors.OutOfMemory):
        return TargetError(message, table=table)
    if isinstance(exc, transient_types):
        return TransientTargetError(message, table=table)
    return TargetError(message, table=table)


# Advisory lock namespaces: hashed together with the table's name into one bigint key per (namespace, table).
DDL_LOCK = "podyn.ddl"  # held for a transaction while changing a table's schema or starting its load
REPLICATION_LOCK = "podyn.replication"  # held for a session while a process loads or replicates the table
#: Held for a transaction by a page that finishes a segment, and by finish_load: of two processes finishing the
#: last two segments, the second sees the first's commit and marks the table loaded. Not podyn.tables' row lock,
#: which every process's heartbeat must take too: a slow (or paused) last page held up every heartbeat behind it.
LOAD_FINISH_LOCK = "podyn.load-finish"


def table_lock_key(namespace: str, schema: str, table: str) -> int:
    """The ``pg_advisory_lock(bigint)`` key of one target table in one namespace: the first 8 bytes of the
    SHA-256 of namespace, schema and table (NUL-separated, so no two triples give the same text), signed.

    64 bits make a collision between distinct tables practically impossible (a 32-bit crc32 of ``schema.table``
    had ``public.orders_5088719`` and ``public.orders_20002006`` share a key); TableHold still checks the holder.
    """
    text = "\0".join((namespace, schema, table)).encode("utf-8", "surrogatepass")
    return int.from_bytes(hashlib.sha256(text).digest()[:8], "big", signed=True)


def lock_key_oids(key: int) -> tuple[int, int]:
    """How pg_locks shows a bigint advisory key: (classid, objid) = its high and low 32 bits, with objsubid 1."""
    unsigned = key & 0xFFFF_FFFF_FFFF_FFFF
    return unsigned >> 32, unsigned & 0xFFFF_FFFF


def lock_holder_pid(conn: psycopg.Connection[Any], key: int) -> int | None:
    """The backend pid holding a bigint session or transaction advisory lock in this database, if any (the
    longest-running holder of a lock held shared by many)."""
    pids = lock_holder_pids(conn, key)
    return pids[0] if pids else None


def lock_holder_pids(conn: psycopg.Connection[Any], key: int) -> list[int]:
    """The backend pids holding a bigint advisory lock (exclusive or shared) in this database, oldest first."""
    classid, objid = lock_key_oids(key)
    rows = conn.execute(
        """SELECT l.pid FROM pg_locks l LEFT JOIN pg_stat_activity a ON a.pid = l.pid
           WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1 AND l.classid = %s::oid
             AND l.objid = %s::oid AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
           ORDER BY a.backend_start, l.pid""",
        (classid, objid),
    ).fetchall()
    return [int(r[0]) for r in rows]


#: How format_type() names the expiry column's type.
_TIMESTAMPTZ = "timestamp with time zone"

#: pg_class.relkind values podyn can write into: ordinary and partitioned tables.
_TABLE_KINDS = frozenset("rp")
_RELATION_KINDS = {"i": "an index", "I": "a partitioned index", "S": "a sequence", "v": "a view",
                   "m": "a materialized view", "f": "a foreign table", "c": "a composite type"}  # fmt: skip


def existing_columns(conn: psycopg.Connection[Any], spec: TableSpec) -> dict[str, str] | None:
    """Column name → type of the target table, or None if it does not exist; an error if the name is not a table."""
    regclass = ddl.qualified(spec.schema, spec.table).as_string(conn)
    row = conn.execute("SELECT c.oid, c.relkind FROM pg_class c WHERE c.oid = to_regclass(%s)", (regclass,)).fetchone()
    if row is None:
        return None
    if row[1] not in _TABLE_KINDS:
        kind = _RELATION_KINDS.get(row[1], f"relkind {row[1]}")
        raise ConfigError(
            f"{spec.schema}.{spec.table} exists, but as {kind}, not a table:"
            " rename it, or choose another schema with --pg-schema",
            table=spec.source,
        )
    rows = conn.execute(
        """SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute
           WHERE attrelid = %s AND attnum > 0 AND NOT attisdropped ORDER BY attnum""",
        (row[0],),
    ).fetchall()
    return dict(rows)


def free_index_names(conn: psycopg.Connection[Any], spec: TableSpec) -> dict[str, str]:
    """Index name → PostgreSQL name, for the indexes whose default name another relation of the schema holds.

    ``CREATE INDEX IF NOT EXISTS`` would skip such an index silently: table ``a_b`` with index ``c`` and table ``a``
    with index ``b_c`` both ask for ``a_b_c``, and a table may be named like another table's index. Those take
    ``naming.tagged_index_name`` instead, which the next run finds again (the default name is still taken).
    """
    names = {}
    for index in spec.indexes:
        wanted = naming.index_name(spec.table, index.name)
        if _relation_holds_index(conn, spec, wanted) is not False:
            continue
        names[index.name] = naming.tagged_index_name(spec.table, index.name)
        if not _relation_holds_index(conn, spec, names[index.name]):  # said once, when the index is created
            log.warning(
                "table %s: index name %s.%s is taken by another relation; index %s is named %s",
                spec.source, spec.schema, wanted, index.name, names[index.name],
            )  # fmt: skip
    return names


def _relation_holds_index(conn: psycopg.Connection[Any], spec: TableSpec, name: str) -> bool | None:
    """Is relation ``name`` of the schema an index on this table (True), something else (False), or absent (None)?"""
    row = conn.execute(
        """SELECT coalesce(i.indrelid = to_regclass(%s), false) FROM pg_class c
           JOIN pg_namespace n ON n.oid = c.relnamespace LEFT JOIN pg_index i ON i.indexrelid = c.oid
           WHERE n.nspname = %s AND c.relname = %s""",
        (ddl.qualified(spec.schema, spec.table).as_string(conn), spec.schema, name),
    ).fetchone()
    return None if row is None else bool(row[0])


def primary_key_columns(conn: psycopg.Connection[Any], spec: TableSpec) -> list[str]:
    regclass = ddl.qualified(spec.schema, spec.table).as_string(conn)
    rows = conn.execute(
        """SELECT a.attname FROM pg_index i
           JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, n) ON true
           JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
           WHERE i.indrelid = to_regclass(%s) AND i.indisprimary ORDER BY k.n""",
        (regclass,),
    ).fetchall()
    return [r[0] for r in rows]


def citus_available(conn: psycopg.Connection[Any]) -> bool:
    row = conn.execute("SELECT to_regproc('create_distributed_table') IS NOT NULL").fetchone()
    return bool(row and row[0])


class PostgresTarget:
    """Writes to one PostgreSQL database. Thread-safe: each caller uses its own connection from :meth:`connect`."""

    def __init__(
        self,
        conninfo: str,
        *,
        retry_seconds: float = 600.0,
        lock_timeout_ms: int = 10_000,
        stop: threading.Event | None = None,
    ) -> None:
        self.conninfo = conninfo
        #: Set on SIGTERM/SIGINT: waits between retries end at once, with Interrupted.
        self.stop = stop or threading.Event()
        #: How long transient failures (PostgreSQL restarting, a lock held elsewhere) are retried before giving up.
        self.retry_seconds = retry_seconds
        #: DDL waits this long for a table lock held by another session, then backs off and tries again, so that a
        #: long-running query elsewhere cannot block podyn forever, nor podyn's queued lock block everyone else.
        self.lock_timeout_ms = lock_timeout_ms
        #: Worker name → the connection holding its presence lock (see state.take_presence_lock), kept while the
        #: worker serves any table (the second dict: which, as (schema, table, role)).
        self._presence: dict[str, psycopg.Connection[Any]] = {}
        self._serving: dict[str, set[tuple[str, str, str]]] = {}
        self._presence_lock = threading.Lock()

    def connect(self, *, autocommit: bool = False, lease_seconds: float | None = None) -> psycopg.Connection[Any]:
        """A new connection. With ``lease_seconds`` (a worker that commits under leases), PostgreSQL ends any
        transaction of it left idle for longer than the lease: a process paused in the middle of a commit (SIGSTOP,
        a frozen VM) would otherwise keep its unit's lease row locked, and no other process could take the unit
        over until it woke up. When it wakes, its commit fails, and the retry finds the lease gone."""
        conn = connect(self.conninfo, autocommit=autocommit)
        if lease_seconds is not None:
            try:
                conn.execute(
                    "SELECT set_config('idle_in_transaction_session_timeout', %s, false)",
                    (f"{max(1, round(lease_seconds * 1000))}ms",),
                )
                if not autocommit:
                    conn.commit()
            except psycopg.Error as exc:
                conn.close()
                raise classify(exc, "cannot connect to PostgreSQL") from exc
        return conn

    @contextmanager
    def hold(self, spec: TableSpec) -> Iterator[TableHold]:
        """Hold the table for this process (a session advisory lock); TableHeldElsewhere if another holds it."""
        hold = TableHold(self, spec)
        try:
            hold.ensure()
            yield hold
        finally:
            hold.release()

    def stored_choices(self, schema: str, table: str) -> StoredChoices | None:
        """The conversion mode and lowercasing a table was created with, if podyn knows it."""

        def read(conn: psycopg.Connection[Any]) -> StoredChoices | None:
            if state.read_schema_version(conn) is None:
                return None
            record = state.read_table(conn, schema, table)
            if record is None:
                return None
            relation = relation_oid(conn, record.spec)
            # A record of a table that is gone binds nothing, but its choices stay the default for making it again.
            gone = relation is None or (record.target_oid is not None and record.target_oid != relation)
            return StoredChoices(record.spec.mode, record.spec.lower_case, binding=not gone)

        return self.run("reading podyn.tables", read, table=table)

    def stored_targets(self) -> list[StoredTarget]:
        """Where podyn replicates each DynamoDB table it recorded (none before the ``podyn`` schema exists)."""

        def read(conn: psycopg.Connection[Any]) -> list[StoredTarget]:
            return [] if state.read_schema_version(conn) is None else state.recorded_targets(conn)

        return self.run("reading podyn.tables", read)

    def run(self, what: str, fn: Callable[[psycopg.Connection[Any]], T], *, table: str | None = None) -> T:
        """Run ``fn`` in one transaction on a short-lived connection, mapping errors into podyn's tree.

        Transient failures are retried with back-off for up to ``retry_seconds``: ``fn`` must be safe to run again
        (every caller's is: a rolled-back transaction left nothing behind).
        """
        retrier = Retrier(POSTGRES_RECONNECT, stop=self.stop, deadline=self.retry_seconds)
        while True:
            try:
                with self.connect() as conn, conn.transaction():
                    conn.execute(
                        sql.SQL("SET LOCAL lock_timeout = {}").format(sql.Literal(f"{self.lock_timeout_ms}ms"))
                    )
                    return fn(conn)
            except psycopg.Error as exc:
                error = classify(exc, what, table=table)
            except TransientTargetError as exc:
                error = exc
            delay = retrier.next_delay() if error.transient else None
            if delay is None:
                raise error
            log.warning("%s%s; retrying in %.1f s", f"table {table}: " if table else "", error.message, delay)
            if retrier.wait(delay):
                raise Interrupted(f"stopped on request while {what}", table=table) from error

    def check_connection(self) -> None:
        """Connect once, without retrying: a wrong address, database or password is an error before any table."""
        with self.connect() as conn:
            conn.execute("SELECT 1")

    def ensure_metadata(self) -> None:
        """Create or migrate the ``podyn`` schema, before anything reads it."""
        self.run("preparing the podyn schema", state.ensure_metadata)

    def check_follows_changes(self) -> None:
        """PostgreSQL follows streams: nothing to refuse."""

    def record_failure(self, schema: str, table: str, error: str, *, source: str) -> None:
        """Mark a table podyn made as stopped with ``error`` in podyn.tables; nothing for a table it does not know."""
        if self.stored_choices(schema, table) is None:
            return

        def mark(conn: psycopg.Connection[Any]) -> state.StateChange | None:
            record = state.read_table(conn, schema, table)
            return None if record is None else state.stop(conn, record.spec, error)

        show_state(self.run("recording the failure", mark, table=source))

    # -- tables ---------------------------------------------------------------------------------------------------

    def prepare_table(
        self,
        spec: TableSpec,
        *,
        create: bool,
        citus: bool,
        source: SourceIdentity | None = None,
        reload: bool = False,
        replaces: Sequence[tuple[str, str]] = (),
    ) -> TableSchema:
        """The table's schema, creating or completing the table first when ``create`` (``--schema``).

        ``source`` is the DynamoDB table's identity now: podyn's state for a table re-created since (on either
        end) does not apply, and is discarded (with ``create``) or refused (without). ``reload`` allows a new
        conversion mode or lowercasing: the table is then made again. ``replaces``: (schema, table) of records of
        this DynamoDB table that the new mapping replaces; with ``create``, those whose table is still gone are
        forgotten in the same transaction.
        """

        def prepare(conn: psycopg.Connection[Any]) -> TableSchema:
            prepared = self._prepare(conn, spec, create, citus, source, reload)
            if create:
                _forget_replaced(conn, spec, replaces)
            return prepared

        return self.run("preparing the table", prepare, table=spec.source)

    def _prepare(
        self,
        conn: psycopg.Connection[Any],
        spec: TableSpec,
        create: bool,
        citus: bool,
        source: SourceIdentity | None,
        reload: bool,
    ) -> TableSchema:
        state.ensure_metadata(conn)
        conn.execute("SELECT pg_advisory_xact_lock(%s::bigint)", (table_lock_key(DDL_LOCK, spec.schema, spec.table),))
        record = state.read_table(conn, spec.schema, spec.table)
        if record is not None and record.spec.source != spec.source:  # -t A:x while x holds B (and a race)
            raise ConfigError(
                f"{spec.schema}.{spec.table} is where podyn replicates DynamoDB table {record.spec.source}:"
                f" choose another target for {spec.source}",
                table=spec.source,
            )
        existing = existing_columns(conn, spec)
        relation = relation_oid(conn, spec)
        source_gone = False
        if record is None:
            # Rows left in podyn.columns, segments or shards when podyn.tables' row was deleted by hand describe
            # nothing: a load must not "resume" from them.
            state.forget_table(conn, spec.schema, spec.table)
        else:
            record, existing, source_gone = _discard_stale_state(
                conn, record, spec, existing, relation, source, create, reload
            )
        # A table podyn finds without its metadata but with its mark holds podyn's copy from an earlier life: it
        # is loaded again from scratch. Without the mark it is someone else's table, whose rows are upserted.
        truncate = record is None and existing is not None and (source_gone or is_marked(conn, spec))
        if record is not None and record.state is not state.TableState.CREATED and existing is not None and not reload:
            _refuse_dropped_columns(spec, state.read_columns(conn, spec), existing)
        stored = state.read_columns(conn, spec)
        if stored:
            unmanaged = frozenset(existing or ()) - {c.name for c in stored}
            schema = complete_keys(TableSchema(spec, stored, unmanaged))
        else:
            schema = initial_schema(spec)
        if not create:
            if existing is None or record is None:
                raise ConfigError(
                    f"table {spec.schema}.{spec.table} has not been created by podyn yet: run with --schema",
                    table=spec.source,
                )
            # Indexes created in DynamoDB since the table was prepared: their key columns and indexes are added
            # here too, not only with --schema, or the first row carrying a new key would fail on a missing column.
            if stored and len(schema.columns) > len(stored):
                _add_and_record(conn, TableSchema(spec, stored, schema.reserved), list(schema.columns[len(stored) :]))
            _create_missing_indexes(conn, schema)
            if record.spec.indexes != spec.indexes:
                state.save_table(conn, spec)
        elif existing is None:
            if citus and not citus_available(conn):
                raise ConfigError("--citus: create_distributed_table() is not available (CREATE EXTENSION citus)")
            exists = conn.execute(
                "SELECT EXISTS (SELECT FROM pg_namespace WHERE nspname = %s)", (spec.schema,)
            ).fetchone()
            index_names = free_index_names(conn, spec)
            for statement in ddl.create_statements(
                schema, citus=citus, create_schema_too=not (exists and exists[0]), index_names=index_names
            ):
                conn.execute(statement)
            log.info("table %s: created %s.%s", spec.source, spec.schema, spec.table)
        else:
            schema = _adopt_existing(conn, schema, existing)
            _create_missing_indexes(conn, schema)
        if create:
            state.save_table(conn, spec)
            state.save_columns(conn, schema)
        current = state.read_table(conn, spec.schema, spec.table)
        relation = relation_oid(conn, spec)
        if current is not None and relation is not None:
            known = current.target_oid == relation and (source is None or current.source == source)
            if truncate or not known:
                # Also where an older podyn recorded the table without its identity: what is found now is
                # trusted, once.
                state.record_identity(conn, spec, relation, source, truncate_before_load=truncate or None)
        existing = existing_columns(conn, spec) or {}
        reserved = frozenset(existing) - set(schema.column_names)
        pg_types = {t.value: t for t in PgType}
        adoptable = frozenset((n, pg_types[existing[n]]) for n in reserved if existing[n] in pg_types)
        expired = state.read_expired_column(conn, spec) if current is not None else None
        if expired is not None and existing.get(expired) != _TIMESTAMPTZ:
            state.record_expired_column(conn, spec, None)  # dropped by hand: added again when next needed
            expired = None
        return TableSchema(
            schema.spec,
            schema.columns,
            reserved,
            state.read_mapping_generation(conn, spec),
            adoptable,
            keep_names=current is not None and current.keep_names,
        ).with_expired_column(expired)

    def current_schema(self, schema: TableSchema) -> TableSchema:
        """The stored mapping as it is now (after another writer renamed columns)."""

        return self.run(
            "reading the column mapping", lambda conn: _stored_schema(conn, schema), table=schema.spec.source
        )

    def add_expired_column(self, schema: TableSchema) -> TableSchema:
        """The schema with its column for expired rows (``--ttl-deletes mark``), adding it to the table first.

        Under the table's DDL lock: another process may have added it. The name is ``podyn_expired_at`` unless a
        column of the table has it (an attribute's, in either mode); a ``podyn_expired_at timestamptz`` no
        attribute holds is podyn's own from an earlier life and is taken again. The mapping generation is bumped,
        so that writers holding the schema without it convert again: their upserts must clear the mark.
        """
        spec = schema.spec

        def add(conn: psycopg.Connection[Any]) -> TableSchema:
            conn.execute(
                "SELECT pg_advisory_xact_lock(%s::bigint)", (table_lock_key(DDL_LOCK, spec.schema, spec.table),)
            )
            current = _stored_schema(conn, schema)
            if current.expired_column is not None:
                return current
            existing = existing_columns(conn, spec) or {}
            mapped = set(current.column_names)
            name = EXPIRED_COLUMN
            if existing.get(name) != _TIMESTAMPTZ or name in mapped:
                name = naming.unique_name(EXPIRED_COLUMN, set(existing) | mapped | current.reserved, EXPIRED_COLUMN)
                conn.execute(
                    sql.SQL("ALTER TABLE {} ADD COLUMN {} timestamptz").format(
                        ddl.qualified(spec.schema, spec.table), sql.Identifier(name)
                    )
                )
            state.record_expired_column(conn, spec, name)
            generation = state.bump_mapping_generation(conn, spec)
            log.info("table %s: added column %s timestamptz for rows whose item expired (TTL)", spec.source, name)
            return replace(current, generation=generation).with_expired_column(name)

        return self.run("adding the column for expired rows", add, table=spec.source)

    def add_columns(self, schema: TableSchema, evolve: Callable[[TableSchema], SchemaChange]) -> TableSchema:
        """Make the changes ``evolve`` asks for, agreeing with other processes through the stored mapping.

        Under the table's advisory lock, re-read the mapping (another process may have changed it), evolve against
        it, then rename and add columns and record the mapping in one transaction. A rename bumps the mapping
        generation, so that writers still holding the old names convert their rows again (see ``_check_mapping``).
        """

        def add(conn: psycopg.Connection[Any]) -> TableSchema:
            conn.execute(
                "SELECT pg_advisory_xact_lock(%s::bigint)",
                (table_lock_key(DDL_LOCK, schema.spec.schema, schema.spec.table),),
            )
            current = _stored_schema(conn, schema)
            change = evolve(current)
            if not change:
                return current
            if change.renamed:
                for old, new in naming.rename_steps(change.renamed, set(current.column_names) | current.reserved):
                    conn.execute(ddl.rename_column(current, old, new))
                current = current.with_change(
                    SchemaChange((), change.renamed), state.bump_mapping_generation(conn, schema.spec)
                )
                state.replace_columns(conn, current)
                log.info(
                    "table %s: renamed column%s %s (another attribute has the better claim to the name)",
                    schema.spec.source,
                    "s" if len(change.renamed) > 1 else "",
                    ", ".join(f"{old} to {new}" for old, new in change.renamed.items()),
                )
            return _add_and_record(conn, current, change.added) if change.added else current

        return self.run("adding columns", add, table=schema.spec.source)

    # -- load -----------------------------------------------------------------------------------------------------

    def begin_load(
        self,
        spec: TableSpec,
        total_segments: int,
        *,
        reload: bool,
        stream_arn: str | None = None,
        stream_view_type: str | None = None,
        run_started: datetime | None = None,
    ) -> list[state.SegmentRecord] | None:
        """The segments left to scan: all of them for a new load (or ``reload``), the unfinished ones to resume.

        None when the table is already loaded. ``reload`` empties the table in the same transaction that resets its
        segments, so a reload interrupted at any point resumes as a reload. The stream's ARN and view type at the
        start are recorded: change replication starts from this moment and must find the same stream.

        Many processes run the same command: a ``reload`` joins a load in progress that started after
        ``run_started`` (this run's start: another process of the same command started it) or whose segments
        other processes are loading now, instead of starting it over.
        """

        def begin(conn: psycopg.Connection[Any]) -> tuple[list[state.SegmentRecord] | None, state.StateChange | None]:
            conn.execute(
                "SELECT pg_advisory_xact_lock(%s::bigint)", (table_lock_key(DDL_LOCK, spec.schema, spec.table),)
            )
            record = state.read_table(conn, spec.schema, spec.table)
            if record is None:
                raise ConfigError(f"table {spec.source} has not been prepared: run with --schema", table=spec.source)
            segments = state.read_segments(conn, spec)
            if (
                reload
                and segments
                and record.load_finished_at is None
                and _load_under_way(conn, spec, record, run_started)
            ):
                log.info("table %s: joining the reload another podyn process is running", spec.source)
                return segments, None
            if not reload:
                if record.load_finished_at is not None:
                    return None, None
                if record.export_id is not None and not record.truncate_before_load:
                    raise ConfigError(
                        f"the load of {spec.source} from export {record.export_id} has not finished: resume it with"
                        " --from-export (the same export), or load the table by a Scan from scratch with --reload",
                        table=spec.source,
                    )
                if segments:  # an interrupted load: resume it with the segmentation it started with
                    return segments, None
            if reload or record.truncate_before_load:
                # A load from scratch over rows whose provenance podyn does not know (see _prepare) empties the
                # table first, as a reload does, in the same transaction that resets the segments.
                conn.execute(sql.SQL("TRUNCATE {}").format(ddl.qualified(spec.schema, spec.table)))
            if reload:
                state.forget_shards(conn, spec)
            state.reset_segments(conn, spec, total_segments)
            change = state.start_load(
                conn, spec, total_segments, stream_arn=stream_arn, stream_view_type=stream_view_type
            )
            return state.read_segments(conn, spec), change

        segments, change = self.run("starting the load", begin, table=spec.source)
        show_state(change)
        return segments

    def begin_export_load(
        self,
        spec: TableSpec,
        manifest: ExportManifest,
        *,
        reload: bool,
        stream_arn: str | None = None,
        stream_view_type: str | None = None,
        run_started: datetime | None = None,
    ) -> list[ExportFileRecord] | None:
        """The export's data files with how far each got: all from their start for a new load (or ``reload``), as
        committed to resume one from the same export. None when the table is already loaded.

        As :meth:`begin_load`: ``reload`` (or rows of unknown provenance) empties the table in the transaction that
        resets the files. An unfinished load from anything else (a Scan, another export) is refused: its rows are
        a part of another copy.
        """

        def begin(conn: psycopg.Connection[Any]) -> tuple[list[ExportFileRecord] | None, state.StateChange | None]:
            conn.execute(
                "SELECT pg_advisory_xact_lock(%s::bigint)", (table_lock_key(DDL_LOCK, spec.schema, spec.table),)
            )
            record = state.read_table(conn, spec.schema, spec.table)
            if record is None:
                raise ConfigError(f"table {spec.source} has not been prepared: run with --schema", table=spec.source)
            files = state.read_export_files(conn, spec)
            if (
                reload
                and files
                and record.load_finished_at is None
                and record.export_id == manifest.export_id
                and _load_under_way(conn, spec, record, run_started, UnitKind.EXPORT_FILE)
            ):
                log.info("table %s: joining the reload another podyn process is running", spec.source)
                return files, None
            if not reload and not record.truncate_before_load:
                if record.load_finished_at is not None:
                    return None, None
                if record.export_id == manifest.export_id and files:
                    return files, None  # an interrupted load of this export: resume it
                if record.load_started_at is not None:
                    started = f"export {record.export_id}" if record.export_id else "a Scan"
                    raise ConfigError(
                        f"the load of {spec.source} from {started} has not finished: resume it as it was started, or"
                        f" load the table from export {manifest.export_id} from scratch with --reload",
                        table=spec.source,
                    )
            if reload or record.truncate_before_load:
                conn.execute(sql.SQL("TRUNCATE {}").format(ddl.qualified(spec.schema, spec.table)))
            if reload:
                state.forget_shards(conn, spec)
            state.reset_export_files(conn, spec, manifest.files)
            change = state.start_export_load(
                conn, spec, manifest, stream_arn=stream_arn, stream_view_type=stream_view_type
            )
            return state.read_export_files(conn, spec), change

        files, change = self.run("starting the load from the export", begin, table=spec.source)
        show_state(change)
        return files

    def read_export_files(self, spec: TableSpec) -> list[ExportFileRecord]:
        return self.run("reading podyn.export_files", lambda conn: state.read_export_files(conn, spec))

    def finish_load(self, spec: TableSpec) -> int:
        """The items loaded, once every segment is done; marks the table loaded unless the commit of its last
        segment already did (a load interrupted between the two by an older podyn)."""

        def finish(conn: psycopg.Connection[Any]) -> tuple[int, state.StateChange | None]:
            _lock_load_finish(conn, spec)
            record = state.read_table(conn, spec.schema, spec.table)
            if record is not None and record.load_finished_at is not None:
                return record.items_loaded, None
            if state.segments_left(conn, spec) or state.export_files_left(conn, spec):
                raise ConfigError(f"the load of {spec.source} is not finished", table=spec.source)
            return state.finish_load(conn, spec)

        items, change = self.run("finishing the load", finish, table=spec.source)
        show_state(change)
        return items

    # -- work units -----------------------------------------------------------------------------------------------

    def claim_segments(
        self, spec: TableSpec, owner: str, limit: int, lease_seconds: float, conn: Any = None
    ) -> tuple[list[tuple[Lease, SegmentRecord]], int]:
        """Claim up to ``limit`` unfinished segments free of a live lease, with their committed positions (read
        after the claim, so a takeover continues exactly where the last owner's last commit left the segment);
        and how many segments are not done. On ``conn`` (a worker's own connection; the caller reconnects) if
        given."""

        def claim(conn: psycopg.Connection[Any]) -> tuple[list[tuple[Lease, SegmentRecord]], int]:
            segments = {str(s.segment): s for s in state.read_segments(conn, spec) if not s.done}
            leases = state.claim_units(conn, spec, UnitKind.SEGMENT, list(segments), owner, limit, lease_seconds)
            if not leases:
                return [], len(segments)
            fresh = {str(s.segment): s for s in state.read_segments(conn, spec)}
            return [(lease, fresh[lease.unit_id]) for lease in leases], len(segments)

        return self._run_on(conn, "claiming segments", claim, table=spec.source)

    def claim_export_files(
        self, spec: TableSpec, owner: str, limit: int, lease_seconds: float, conn: Any = None
    ) -> tuple[list[tuple[Lease, ExportFileRecord]], int]:
        """As :meth:`claim_segments`, for the data files of a load from an export."""

        def claim(conn: psycopg.Connection[Any]) -> tuple[list[tuple[Lease, ExportFileRecord]], int]:
            files = {f.key: f for f in state.read_export_files(conn, spec) if not f.done}
            leases = state.claim_units(conn, spec, UnitKind.EXPORT_FILE, list(files), owner, limit, lease_seconds)
            if not leases:
                return [], len(files)
            fresh = {f.key: f for f in state.read_export_files(conn, spec)}
            return [(lease, fresh[lease.unit_id]) for lease in leases], len(files)

        return self._run_on(conn, "claiming export files", claim, table=spec.source)

    def claim_units(
        self, spec: TableSpec, kind: str, candidates: Sequence[str], owner: str, limit: int, lease_seconds: float
    ) -> list[Lease]:
        return self.run(
            "claiming work units",
            lambda conn: state.claim_units(conn, spec, kind, candidates, owner, limit, lease_seconds),
            table=spec.source,
        )

    def renew_leases(self, spec: TableSpec, leases: Sequence[Lease], lease_seconds: float, *, role: str) -> list[Lease]:
        """Renew ``leases`` and beat the worker's row; the leases still held."""

        def renew(conn: psycopg.Connection[Any]) -> list[Lease]:
            if leases:
                state.beat_worker(conn, spec, role, leases[0].owner)
            return state.renew_leases(conn, spec, leases, lease_seconds)

        return self.run("renewing leases", renew, table=spec.source)

    def release_leases(self, spec: TableSpec, leases: Sequence[Lease], conn: Any = None) -> None:
        self._run_on(conn, "giving leases back", lambda c: state.release_leases(c, spec, leases), table=spec.source)

    def _run_on(
        self, conn: Any, what: str, fn: Callable[[psycopg.Connection[Any]], T], *, table: str | None = None
    ) -> T:
        """:meth:`run` (a short-lived connection, retried) without ``conn``; else one transaction on ``conn``,
        errors mapped into podyn's tree and left to the caller (which owns the connection) to retry."""
        if conn is None:
            return self.run(what, fn, table=table)
        try:
            with conn.transaction():
                return fn(conn)
        except psycopg.Error as exc:
            raise classify(exc, what, table=table) from exc

    def beat_worker(self, spec: TableSpec, role: str, worker: str, within_seconds: float) -> list[str]:
        """Record this worker as serving the table now; the table's live workers in ``role`` (itself included)."""

        def beat(conn: psycopg.Connection[Any]) -> list[str]:
            state.beat_worker(conn, spec, role, worker)
            state.forget_dead_workers(conn, spec)
            return state.live_workers(conn, spec, role, within_seconds)

        self._ensure_presence(worker, spec)
        with self._presence_lock:
            self._serving.setdefault(worker, set()).add((spec.schema, spec.table, role))
        return self.run("recording the worker", beat, table=spec.source)

    def _ensure_presence(self, worker: str, spec: TableSpec) -> None:
        """Hold the worker's presence lock on a connection of its own, taken again if that connection was lost."""
        with self._presence_lock:
            conn = self._presence.get(worker)
            if conn is not None:
                try:
                    conn.execute("SELECT 1")
                    return
                except psycopg.Error:
                    with contextlib.suppress(psycopg.Error):
                        conn.close()
            try:
                conn = self.connect(autocommit=True)
                state.take_presence_lock(conn, worker)
            except psycopg.Error as exc:
                raise classify(exc, "taking the worker's presence lock", table=spec.source) from exc
            self._presence[worker] = conn

    def leave_worker(self, spec: TableSpec, role: str, worker: str, leases: Sequence[Lease]) -> None:
        """Give every lease back and remove the worker's row (a clean stop: others take over at once)."""

        def leave(conn: psycopg.Connection[Any]) -> None:
            state.release_leases(conn, spec, leases)
            state.leave_worker(conn, spec, role, worker)

        try:
            self.run("giving leases back", leave, table=spec.source)
        finally:
            with self._presence_lock:
                serving = self._serving.get(worker, set())
                serving.discard((spec.schema, spec.table, role))
                conn = None if serving else self._presence.pop(worker, None)
            if conn is not None:  # it serves no table any more
                conn.close()

    def held_units(self, spec: TableSpec, kind: str) -> dict[str, tuple[str, bool]]:
        return self.run("reading leases", lambda conn: state.held_units(conn, spec, kind), table=spec.source)

    # -- changes --------------------------------------------------------------------------------------------------

    def read_table(self, spec: TableSpec) -> state.TableRecord | None:
        return self.run("reading podyn.tables", lambda conn: state.read_table(conn, spec.schema, spec.table))

    def record_export_request(self, spec: TableSpec, export_arn: str, destination: str) -> None:
        self.run(
            "recording the export asked for",
            lambda conn: state.record_export_request(conn, spec, export_arn, destination),
            table=spec.source,
        )

    # -- the bridge of incremental exports from an export to the stream ------------------------------------------

    def plan_bridge(self, spec: TableSpec, records: Sequence[BridgeRecord]) -> None:
        self.run("recording the bridge", lambda conn: state.plan_bridge(conn, spec, records), table=spec.source)

    def read_bridge(self, spec: TableSpec) -> list[BridgeRecord]:
        return self.run("reading the bridge", lambda conn: state.read_bridge(conn, spec), table=spec.source)

    def record_bridge_export(self, spec: TableSpec, ordinal: int, export_arn: str) -> None:
        self.run(
            "recording an incremental export asked for",
            lambda conn: state.record_bridge_export(conn, spec, ordinal, export_arn),
            table=spec.source,
        )

    def reset_bridge_export(self, spec: TableSpec, ordinal: int, client_token: str) -> None:
        self.run(
            "recording a failed incremental export",
            lambda conn: state.reset_bridge_export(conn, spec, ordinal, client_token),
            table=spec.source,
        )

    def apply_bridge(
        self,
        conn: psycopg.Connection[Any],
        schema: TableSchema,
        ordinal: int,
        *,
        rows: Sequence[Sequence[Any]],
        delete_keys: Sequence[Sequence[Any]],
        rejected: Sequence[Any],
    ) -> bool:
        """Apply one incremental export of the bridge (each key's state at the end of its window) and mark it
        applied, in one transaction. False, with nothing written, when it was applied already (another process,
        or an attempt whose commit answer was lost)."""
        spec = schema.spec
        try:
            with conn.transaction():
                _check_mapping(conn, schema)
                if not state.mark_bridge_applied(conn, spec, ordinal, len(rows) + len(delete_keys)):
                    raise _AlreadyApplied
                _write_changes(conn, schema, rows, delete_keys, (), rejected, lag_seconds=None)
        except _AlreadyApplied:
            return False
        except psycopg.errors.UndefinedTable as exc:
            raise _target_gone(conn, spec, exc, "applying an incremental export") from exc
        except psycopg.Error as exc:
            raise classify(exc, "applying an incremental export", table=spec.source) from exc
        return True

    def start_catching_up(
        self, spec: TableSpec, *, stream_arn: str, stream_view_type: str | None, replay_from: datetime | None
    ) -> None:
        change = self.run(
            "updating podyn.tables",
            lambda conn: state.start_catching_up(
                conn, spec, stream_arn=stream_arn, stream_view_type=stream_view_type, replay_from=replay_from
            ),
            table=spec.source,
        )
        show_state(change)

    def become_live(self, spec: TableSpec, lag_seconds: float) -> None:
        change = self.run(
            "updating podyn.tables", lambda conn: state.become_live(conn, spec, lag_seconds), table=spec.source
        )
        show_state(change)

    def record_lag(self, spec: TableSpec, lag_seconds: float) -> None:
        self.run("updating podyn.tables", lambda conn: state.record_changes(conn, spec, 0, lag_seconds))

    def read_positions(self, spec: TableSpec, stream_arn: str) -> dict[str, ShardPosition]:
        rows = self.run("reading shard checkpoints", lambda conn: state.read_shards(conn, spec, stream_arn))
        return {shard: ShardPosition(shard, parent, sequence, finished) for shard, parent, sequence, finished in rows}

    def apply_changes(
        self,
        conn: psycopg.Connection[Any],
        schema: TableSchema,
        stream_arn: str,
        *,
        rows: Sequence[Sequence[Any]],
        delete_keys: Sequence[Sequence[Any]],
        rejected: Sequence[Any],
        moves: Sequence[tuple[ShardPosition | None, ShardPosition, int]],
        lag_seconds: float | None,
        leases: Mapping[str, Lease] | None = None,
        expire: Sequence[tuple[Sequence[Any], datetime | None]] = (),
        ttl: TtlCounts | None = None,
    ) -> bool:
        """Apply a batch of changes and move its shards' checkpoints, in one transaction.

        ``moves`` are (checkpoint before, checkpoint after, records) per shard. False, with nothing written, when a
        checkpoint had already moved: these records were applied before (by another process, or by an attempt
        whose commit answer was lost). ``expire``: (primary key values, expiry time) of rows to mark as expired,
        after the upserts (which clear marks); the schema must have its ``expired_column``. ``ttl``: the batch's
        TTL deletes, added to the table's counts.
        """
        spec = schema.spec
        try:
            with conn.transaction():
                _check_mapping(conn, schema)
                if state.spool_pending(conn, spec):  # what was captured during the load goes first (spool.py)
                    raise SpoolNotEmpty("the changes captured during the load are applied first", table=spec.source)
                _move_checkpoints(conn, spec, stream_arn, moves, leases)
                _write_changes(conn, schema, rows, delete_keys, expire, rejected, lag_seconds=lag_seconds)
                if ttl:
                    state.record_ttl_deletes(conn, spec, ttl)
        except _AlreadyApplied:
            return False
        except psycopg.errors.UndefinedTable as exc:
            raise _target_gone(conn, spec, exc, "applying changes") from exc
        except psycopg.Error as exc:
            raise classify(exc, "applying changes", table=spec.source) from exc
        return True

    # -- the spool: changes captured while the table loads -------------------------------------------------------

    def spool_changes(
        self,
        conn: psycopg.Connection[Any],
        spec: TableSpec,
        stream_arn: str,
        *,
        entries: Sequence[SpoolEntry],
        rejected: Sequence[Any],
        moves: Sequence[tuple[ShardPosition | None, ShardPosition, int]],
        captured: int,
        captured_until: datetime | None,
        leases: Mapping[str, Lease] | None = None,
        ttl: TtlCounts | None = None,
    ) -> int | None:
        """Keep a batch's changes in the table's spool (each key's last one) and move its shards' checkpoints, in
        one transaction, while the table loads. The spool's rows after it; None, with nothing written, when a
        checkpoint had already moved (as :meth:`apply_changes`). SpoolClosed, with nothing written, when the table
        no longer loads: from then on its changes go to the table, after its spool. With ``leases``, only under
        the lease of each shard (else LeaseLost, nothing written), as :meth:`apply_changes`. ``ttl``: the batch's
        TTL deletes, added to the table's counts here (the policy made its entries what they are)."""
        try:
            with conn.transaction():
                _move_checkpoints(conn, spec, stream_arn, moves, leases)
                new_rows = state.spool_changes(conn, spec, entries)
                for item in rejected:
                    state.reject_item(conn, spec, item.key, item.attribute, item.error, item.item)
                if ttl:
                    state.record_ttl_deletes(conn, spec, ttl)
                spool_rows = state.record_capture(conn, spec, captured, captured_until, new_rows)
                if spool_rows is None:
                    raise SpoolClosed("the table is no longer loading", table=spec.source)
        except _AlreadyApplied:
            return None
        except psycopg.Error as exc:
            raise classify(exc, "capturing changes into the spool", table=spec.source) from exc
        return spool_rows

    def read_spool(self, spec: TableSpec, after: str | None, limit: int, conn: Any = None) -> list[SpoolEntry]:
        """Up to ``limit`` spool entries after key ``after``, in key order; on ``conn`` if given."""
        return self._run_on(
            conn, "reading the spool", lambda c: state.read_spool(c, spec, after, limit), table=spec.source
        )

    def apply_spool(
        self,
        conn: psycopg.Connection[Any],
        schema: TableSchema,
        *,
        keys: Sequence[str],
        rows: Sequence[Sequence[Any]],
        delete_keys: Sequence[Sequence[Any]],
        rejected: Sequence[Any],
        expire: Sequence[tuple[Sequence[Any], datetime | None]] = (),
    ) -> int | None:
        """Apply a batch of the spool's entries (``keys``) to the table and remove them from the spool, in one
        transaction: the rows the spool has left. None, with nothing written, when one of them was no longer there
        (another process applied it). ``expire``: rows to mark as expired after the upserts, as
        :meth:`apply_changes`."""
        spec = schema.spec
        try:
            with conn.transaction():
                _check_mapping(conn, schema)
                taken, left = state.take_spool(conn, spec, keys)
                if taken != len(keys):
                    raise _AlreadyApplied
                _write_changes(conn, schema, rows, delete_keys, expire, rejected, lag_seconds=None)
        except _AlreadyApplied:
            return None
        except psycopg.errors.UndefinedTable as exc:
            raise _target_gone(conn, spec, exc, "applying the spool") from exc
        except psycopg.Error as exc:
            raise classify(exc, "applying the spool", table=spec.source) from exc
        return left

    # -- rows -----------------------------------------------------------------------------------------------------

    def write_page(
        self,
        conn: psycopg.Connection[Any],
        schema: TableSchema,
        rows: Sequence[Sequence[Any]],
        rejected: Sequence[Any],
        segment: int,
        expected_key: dict[str, Any] | None,
        new_key: dict[str, Any] | None,
        lease: Lease | None = None,
    ) -> bool:
        """Commit a scanned page's rows with its segment's new position. False if the page was already applied.

        With ``lease``, only while this process still holds the segment (else LeaseLost, nothing written). The
        commit that finishes the table's last segment marks the table loaded, in the same transaction.
        """
        spec = schema.spec
        change: state.StateChange | None = None
        try:
            with conn.transaction():
                _check_mapping(conn, schema)
                if lease is not None and not state.holds_lease(conn, spec, lease):
                    raise LeaseLost(
                        f"segment {segment}: another process took it over after this one's lease expired; the page"
                        " is left to it",
                        table=spec.source,
                    )
                if new_key is None:
                    _lock_load_finish(conn, spec)  # of the last two segments' commits, the second decides
                if not state.advance_segment(conn, schema.spec, segment, expected_key, new_key, len(rows)):
                    raise _AlreadyApplied
                if new_key is None and state.segments_left(conn, spec) == 0:
                    _, change = state.finish_load(conn, spec)
                for item in rejected:
                    state.reject_item(conn, schema.spec, item.key, item.attribute, item.error, item.item)
                if rows:
                    try:
                        with conn.transaction():
                            copy_rows(conn, schema, rows)
                    except psycopg.errors.UniqueViolation:
                        # Rows already there (a table loaded before, or written by an application): upsert instead.
                        upsert_rows(conn, schema, rows)
        except _AlreadyApplied:
            return False
        except psycopg.errors.UndefinedTable as exc:
            raise _target_gone(conn, schema.spec, exc, "writing a page") from exc
        except psycopg.Error as exc:
            raise classify(exc, "writing a page", table=schema.spec.source) from exc
        show_state(change)
        return True

    def write_export_batch(
        self,
        conn: psycopg.Connection[Any],
        schema: TableSchema,
        rows: Sequence[Sequence[Any]],
        rejected: Sequence[Any],
        file_key: str,
        expected_line: int,
        new_line: int,
        done: bool,
        lease: Lease | None = None,
    ) -> bool:
        """Commit a batch of an export's data file with the file's new position. False if it was already applied.

        As :meth:`write_page`: only under ``lease`` if given, and the commit that finishes the last file marks the
        table loaded."""
        spec = schema.spec
        change: state.StateChange | None = None
        try:
            with conn.transaction():
                _check_mapping(conn, schema)
                if lease is not None and not state.holds_lease(conn, spec, lease):
                    raise LeaseLost(
                        f"{file_key}: another process took it over after this one's lease expired; the batch is left"
                        " to it",
                        table=spec.source,
                    )
                if done:
                    _lock_load_finish(conn, spec)
                if not state.advance_export_file(conn, schema.spec, file_key, expected_line, new_line, len(rows), done):
                    raise _AlreadyApplied
                if done and state.export_files_left(conn, spec) == 0:
                    _, change = state.finish_load(conn, spec)
                for item in rejected:
                    state.reject_item(conn, schema.spec, item.key, item.attribute, item.error, item.item)
                if rows:
                    try:
                        with conn.transaction():
                            copy_rows(conn, schema, rows)
                    except psycopg.errors.UniqueViolation:
                        upsert_rows(conn, schema, rows)  # rows already there: see write_page
        except _AlreadyApplied:
            return False
        except psycopg.errors.UndefinedTable as exc:
            raise _target_gone(conn, schema.spec, exc, "writing a batch") from exc
        except psycopg.Error as exc:
            raise classify(exc, "writing a batch", table=schema.spec.source) from exc
        show_state(change)
        return True


def _lock_load_finish(conn: psycopg.Connection[Any], spec: TableSpec) -> None:
    """Serialise, until the transaction ends, the decisions that depend on all of a table's segments (see
    LOAD_FINISH_LOCK)."""
    conn.execute(
        "SELECT pg_advisory_xact_lock(%s::bigint)", (table_lock_key(LOAD_FINISH_LOCK, spec.schema, spec.table),)
    )


def _load_under_way(
    conn: psycopg.Connection[Any],
    spec: TableSpec,
    record: state.TableRecord,
    run_started: datetime | None,
    kind: str = UnitKind.SEGMENT,
) -> bool:
    """A load in progress that this run's ``--reload`` should join: started since this run did, or its units
    (segments, export files) leased by live processes now."""
    if run_started is not None and record.load_started_at is not None and record.load_started_at >= run_started:
        return True
    return any(live for _, live in state.held_units(conn, spec, kind).values())


def _stored_schema(conn: psycopg.Connection[Any], schema: TableSchema) -> TableSchema:
    """``schema`` with the mapping, its generation and the expiry column as stored now."""
    spec = schema.spec
    generation = state.read_mapping_generation(conn, spec)
    current = replace(schema, columns=state.read_columns(conn, spec), generation=generation)
    return current.with_expired_column(state.read_expired_column(conn, spec))


def _check_mapping(conn: psycopg.Connection[Any], schema: TableSchema) -> None:
    """Keep renames out until this transaction ends, and make sure they did not happen before it began.

    The shared lock is the one ``add_columns`` takes exclusively. Taken in a statement of its own: under READ
    COMMITTED the next statement's snapshot then sees a rename that committed while this one waited.
    """
    conn.execute(
        "SELECT pg_advisory_xact_lock_shared(%s::bigint)",
        (table_lock_key(DDL_LOCK, schema.spec.schema, schema.spec.table),),
    )
    stored = state.read_mapping_generation(conn, schema.spec)
    if stored != schema.generation:
        raise MappingChanged(
            f"columns were renamed (mapping generation {schema.generation} → {stored}); converting again",
            table=schema.spec.source,
        )


def show_state(change: state.StateChange | None) -> None:
    """Log a table's new state, set its metric and tell the health probes: after the transaction that wrote it
    committed, never before."""
    if change is None:
        return
    log.info(
        "table %s: %s%s",
        change.source,
        change.state.value,
        f" ({change.error})" if change.error else "",
        extra={"table": change.source, "state": change.state.value, "error": change.error},
    )
    health.set_state(change.source, change.state.value, change.error)
    for each in state.TableState:
        metrics.TABLE_STATE.labels(change.source, each.value).set(1 if each is change.state else 0)


def _target_gone(conn: psycopg.Connection[Any], spec: TableSpec, exc: psycopg.Error, what: str) -> PodynError:
    """A write that found no table: when the target is the one gone (not a podyn table), say what became of it and
    which command loads it again, rather than PostgreSQL's bare 'relation does not exist'."""
    try:
        with conn.transaction():
            relation = relation_oid(conn, spec)
            record = state.read_table(conn, spec.schema, spec.table)
            moved = _renamed_to(conn, record.target_oid if record else None)
    except psycopg.Error:
        return classify(exc, what, table=spec.source)
    if relation is not None:
        return classify(exc, what, table=spec.source)
    became = f"renamed to {moved}" if moved else "dropped"
    return ConfigError(
        f"{spec.schema}.{spec.table} was {became} outside podyn while podyn wrote to it; its rows are gone from"
        f" there. Load it again with: podyn -t {spec.source} --schema --data",
        table=spec.source,
    )


def _renamed_to(conn: psycopg.Connection[Any], oid: int | None) -> str | None:
    """``schema.table`` the recorded target relation has now, if it still exists (renamed, or moved by hand)."""
    if oid is None:
        return None
    row = conn.execute(
        """SELECT n.nspname || '.' || c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
           WHERE c.oid = %s AND c.relkind IN ('r', 'p')""",
        (oid,),
    ).fetchone()
    return None if row is None else str(row[0])


class TableHold:
    """A session advisory lock, held shared, that marks a table as served by this process: any number of podyn
    processes serve a table together (they share its work units by leases), and ``--status`` sees from
    ``pg_locks`` whether any of them still runs. The lock lives as long as its connection: :meth:`ensure` notices
    a lost connection (PostgreSQL restarted, the backend terminated) and takes the lock again. An older podyn
    (before work units) takes the same lock exclusive: while one runs, this raises TableHeldElsewhere and stands by.

    The holder (``host:pid`` and the lock connection's backend pid) is recorded in ``podyn.tables``, and
    :meth:`heartbeat` refreshes it, so that ``--status`` can tell a table being replicated now from one whose
    process is gone, and so that a lock found taken can be told apart from a key shared with another table.
    """

    def __init__(self, target: PostgresTarget, spec: TableSpec) -> None:
        self.target = target
        self.spec = spec
        self.holder = f"{socket.gethostname()}:{os.getpid()}"
        self.key = table_lock_key(REPLICATION_LOCK, spec.schema, spec.table)
        self._conn: psycopg.Connection[Any] | None = None

    def ensure(self) -> None:
        if self._conn is not None:
            try:
                self._conn.execute("SELECT 1")
                return
            except psycopg.Error:
                log.warning("table %s: lost the connection holding the table's lock; taking it again", self.spec.source)
                self.release()
        conn = self.target.connect(autocommit=True)
        refusal: PodynError | None = None
        try:
            row = conn.execute("SELECT pg_try_advisory_lock_shared(%s::bigint)", (self.key,)).fetchone()
            if row and row[0]:
                state.record_holder(conn, self.spec.schema, self.spec.table, self.holder)
            else:
                refusal = self._refusal(conn)
        except psycopg.Error as exc:
            conn.close()
            raise classify(exc, "taking the table's lock", table=self.spec.source) from exc
        if refusal is not None:
            conn.close()
            raise refusal
        self._conn = conn

    def heartbeat(self) -> None:
        """Record this process as the table's holder, now (a cheap autocommit UPDATE on the lock's connection,
        outside any batch); take the lock again first if its connection was lost."""
        if self._conn is not None:
            try:
                state.record_holder(self._conn, self.spec.schema, self.spec.table, self.holder)
                return
            except psycopg.Error:
                log.warning("table %s: lost the connection holding the table's lock; taking it again", self.spec.source)
                self.release()
        self.ensure()

    def _refusal(self, conn: psycopg.Connection[Any]) -> PodynError:
        """Why the lock could not be taken: another process replicating this table (TableHeldElsewhere, stand by),
        or a process holding the same key for another table (LockKeyCollision: standing by would wait forever)."""
        spec = self.spec
        held_elsewhere = TableHeldElsewhere(
            "another podyn process is loading or replicating this table; leaving it to that process", table=spec.source
        )
        backend = lock_holder_pid(conn, self.key)
        if backend is None:  # released meanwhile: the next attempt takes it
            return held_elsewhere
        recorded = state.read_holder(conn, spec.schema, spec.table)
        if recorded is not None and recorded[1] == backend:
            return held_elsewhere
        others = state.tables_held_by(conn, backend, exclude=(spec.schema, spec.table))
        if not others:  # not recorded anywhere (yet): the holder records itself right after taking the lock
            return held_elsewhere
        other_schema, other_table, other_holder = others[0]
        return LockKeyCollision(
            f"the replication lock key of {spec.schema}.{spec.table} is held by podyn {other_holder} (backend"
            f" {backend}) for another table, {other_schema}.{other_table}: the two tables' lock keys collide, so"
            " this table would never be replicated; replicate them in one process, or report this as a bug",
            table=spec.source,
        )

    def release(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(psycopg.Error):
                self._conn.close()
            self._conn = None


class _AlreadyApplied(Exception):
    """Rolls back a transaction whose position had already moved on."""


def _write_changes(
    conn: psycopg.Connection[Any],
    schema: TableSchema,
    rows: Sequence[Sequence[Any]],
    delete_keys: Sequence[Sequence[Any]],
    expire: Sequence[tuple[Sequence[Any], datetime | None]],
    rejected: Sequence[Any],
    *,
    lag_seconds: float | None,
) -> None:
    """A batch of changes (a stream batch, a spool batch, an incremental export) into the table, in the caller's
    transaction: deletes, then upserts, then expiry marks (the upserts clear marks), the rejected records, and the
    table's count of changes applied."""
    spec = schema.spec
    if delete_keys:
        delete_rows(conn, schema, delete_keys)
    if rows:
        upsert_rows(conn, schema, rows)
    if expire:
        expire_rows(conn, schema, expire)
    for item in rejected:
        state.reject_item(conn, spec, item.key, item.attribute, item.error, item.item)
    state.record_changes(conn, spec, len(rows) + len(delete_keys) + len(expire), lag_seconds)


def _move_checkpoints(
    conn: psycopg.Connection[Any],
    spec: TableSpec,
    stream_arn: str,
    moves: Sequence[tuple[ShardPosition | None, ShardPosition, int]],
    leases: Mapping[str, Lease] | None,
) -> None:
    """Move each shard's checkpoint from its value before the batch to its value after (compare-and-set), inside
    the caller's transaction; with ``leases``, only under each shard's lease. LeaseLost when a lease is another's
    now; _AlreadyApplied when a checkpoint had already moved (the records were applied or captured before)."""
    for old, new, records in moves:
        lease = None if leases is None else leases.get(new.shard_id)
        if leases is not None and (lease is None or not state.holds_lease(conn, spec, lease)):
            raise LeaseLost(
                f"shard {new.shard_id}: another process took it over after this one's lease expired;"
                " its records are left to that process",
                table=spec.source,
            )
        before = None if old is None else (old.sequence_number, old.finished)
        after = (new.sequence_number, new.finished)
        if not state.move_shard(conn, spec, stream_arn, (new.shard_id, new.parent_shard_id), before, after, records):
            raise _AlreadyApplied


class _JsonbBytesBinaryDumper(Dumper):
    """jsonb in binary COPY from bytes that are JSON already (the rows' jsonb values): the format's version byte,
    then the text. One call a value, where psycopg's JsonbBinaryDumper makes three and two type checks."""

    format = Format.BINARY
    oid = _JSONB_OID

    def dump(self, obj: bytes) -> Buffer:
        return b"\x01" + obj


def copy_rows(conn: psycopg.Connection[Any], schema: TableSchema, rows: Sequence[Sequence[Any]]) -> None:
    with conn.cursor() as cur:
        # On this cursor only, and by oid only: what set_types picks for jsonb columns, nothing else.
        cur.adapters.register_dumper(None, _JsonbBytesBinaryDumper)
        with cur.copy(ddl.copy_rows(schema)) as copy:
            copy.set_types([c.type.value for c in schema.columns])
            for row in rows:
                copy.write_row(row)


def upsert_rows(conn: psycopg.Connection[Any], schema: TableSchema, rows: Sequence[Sequence[Any]]) -> None:
    """INSERT ... ON CONFLICT DO UPDATE every column: an item's row becomes exactly its latest image (an item that
    exists is not expired: the upsert clears the expiry mark, when the table has the column).

    The batch goes as one parameter, a JSON array of the rows (each an array of its column values, serialised by
    orjson), unpacked by ``jsonb_array_elements`` into one ``INSERT ... SELECT``: psycopg's array dumpers, which
    this replaced, spent Python time on every value (30,000 rows of 8 columns: 14–19k rows/s and 3.7–5.0 client
    CPU-s per 100k rows, against 34–43k rows/s and 0.7–1.1 with the JSON: bench/bench_upsert.py, bench/RESULTS.md).
    No temporary table, which would need the TEMPORARY privilege. Every value is the one a binary COPY stores:
    text as JSON strings (rows hold no U+0000), numbers as their decimal text (cast to numeric: scale and exponent
    kept), bytes as hex (``decode``), jsonb values embedded as they are (``->``). A key twice in ``rows`` keeps its
    last row, as one INSERT a row would."""
    if not rows:
        return
    keys = [c.name for c in schema.primary_key_columns]
    positions = [schema.column_names.index(k) for k in keys]
    last = {tuple(row[i] for i in positions): row for row in rows}
    unique = list(last.values()) if len(last) < len(rows) else rows
    statement = _upsert_statement(schema, keys)
    jsonb = [i for i, c in enumerate(schema.columns) if c.type is PgType.JSONB]
    binary = [i for i, c in enumerate(schema.columns) if c.type is PgType.BYTEA]
    with psycopg.RawCursor(conn) as cur:
        for chunk in _json_chunks(_json_row(row, jsonb, binary) for row in unique):
            cur.execute(statement, [chunk])


#: The most JSON text one upsert statement carries (jsonb itself holds at most 255 MB): a batch of large items
#: (up to 400 KB each) goes in several statements.
UPSERT_JSON_BYTES = 32 * 1024 * 1024


def _json_row(row: Sequence[Any], jsonb: Sequence[int], binary: Sequence[int]) -> bytes:
    if jsonb or binary:
        row = list(row)
        for i in jsonb:
            if row[i] is not None:
                row[i] = orjson.Fragment(row[i])  # JSON text already
        for i in binary:
            if row[i] is not None:
                row[i] = row[i].hex()
    return orjson.dumps(row, default=_decimal_text)


def _decimal_text(value: Any) -> str:
    if isinstance(value, Decimal):
        return str(value)  # exact: digits, scale and exponent, which numeric's input keeps
    raise TypeError(f"a row holds a {type(value).__name__}, which no column type of podyn's takes")


def _json_chunks(rows: Iterable[bytes]) -> Iterator[str]:
    """JSON arrays of the serialised rows, each at most UPSERT_JSON_BYTES (or one row, if larger)."""
    chunk: list[bytes] = []
    size = 0
    for row in rows:
        if chunk and size + len(row) > UPSERT_JSON_BYTES:
            yield (b"[" + b",".join(chunk) + b"]").decode()
            chunk, size = [], 0
        chunk.append(row)
        size += len(row) + 1
    if chunk:
        yield (b"[" + b",".join(chunk) + b"]").decode()


def _upsert_statement(schema: TableSchema, keys: Sequence[str]) -> sql.Composed:
    """``INSERT ... SELECT ... FROM jsonb_array_elements($1::jsonb) ON CONFLICT ...`` for the table's columns: the
    n-th element of each row array into the n-th column ($1: a RawCursor's placeholder, since a column name may
    hold "%")."""
    others = [sql.SQL("{0} = EXCLUDED.{0}").format(sql.Identifier(n)) for n in schema.column_names if n not in keys]
    if schema.expired_column is not None:
        others.append(sql.SQL("{} = NULL").format(sql.Identifier(schema.expired_column)))
    action = (
        sql.SQL("DO UPDATE SET {}").format(sql.SQL(", ").join(others))
        if others
        else sql.SQL("DO NOTHING")  # a key-only table has nothing to update
    )
    values = []
    for i, column in enumerate(schema.columns):
        at = sql.Literal(i)
        if column.type is PgType.JSONB:
            # NULL for a null: a jsonb value of podyn's is an object or an array, never JSON's null.
            values.append(sql.SQL("nullif(r -> {}, 'null')").format(at))
        elif column.type is PgType.TEXT:
            values.append(sql.SQL("r ->> {}").format(at))
        elif column.type is PgType.BYTEA:
            values.append(sql.SQL("decode(r ->> {}, 'hex')").format(at))
        else:
            values.append(sql.SQL("(r ->> {})::{}").format(at, sql.SQL(column.type.value)))
    return sql.SQL(
        "INSERT INTO {} ({}) SELECT {} FROM jsonb_array_elements($1::jsonb) AS r ON CONFLICT ({}) {}"
    ).format(
        ddl.qualified(schema.spec.schema, schema.spec.table),
        sql.SQL(", ").join(sql.Identifier(n) for n in schema.column_names),
        sql.SQL(", ").join(values),
        sql.SQL(", ").join(sql.Identifier(k) for k in keys),
        action,
    )


def expire_rows(
    conn: psycopg.Connection[Any], schema: TableSchema, expire: Sequence[tuple[Sequence[Any], datetime | None]]
) -> None:
    """Mark rows as expired: (primary key values, when; None: now). A key without a row changes nothing."""
    spec = schema.spec
    assert schema.expired_column is not None, "add_expired_column first"
    key_columns = schema.primary_key_columns
    placeholders = positional(len(key_columns) + 1)
    condition = sql.SQL(" AND ").join(
        sql.SQL("{} = {}").format(sql.Identifier(c.name), p) for c, p in zip(key_columns, placeholders, strict=False)
    )
    statement = sql.SQL("UPDATE {} SET {} = coalesce({}::timestamptz, now()) WHERE {}").format(
        ddl.qualified(spec.schema, spec.table), sql.Identifier(schema.expired_column), placeholders[-1], condition
    )
    with psycopg.RawCursor(conn) as cur:
        cur.executemany(statement, [[*key, when] for key, when in expire])


def delete_rows(conn: psycopg.Connection[Any], schema: TableSchema, keys: Sequence[Sequence[Any]]) -> None:
    """Delete rows by primary key values (in primary key column order)."""
    spec = schema.spec
    key_columns = schema.primary_key_columns
    condition = sql.SQL(" AND ").join(
        sql.SQL("{} = {}").format(sql.Identifier(c.name), p)
        for c, p in zip(key_columns, positional(len(key_columns)), strict=True)
    )
    statement = sql.SQL("DELETE FROM {} WHERE {}").format(ddl.qualified(spec.schema, spec.table), condition)
    with psycopg.RawCursor(conn) as cur:
        cur.executemany(statement, keys)


def positional(count: int) -> list[sql.SQL]:
    """``$1, $2, ...``: PostgreSQL's own placeholders, for statements run on a RawCursor.

    Statements that name user tables and columns run on a RawCursor: psycopg's ``%s`` placeholders would make any
    ``%`` inside a quoted identifier (an attribute named ``50%``) part of the placeholder syntax.
    """
    return [sql.SQL(f"${i}") for i in range(1, count + 1)]


def choices_text(spec: TableSpec) -> str:
    return f"--conversion-mode {spec.mode.value}{' and -lc' if spec.lower_case else ' without -lc'}"


def refuse_other_choices(stored: TableSpec, wanted: TableSpec) -> None:
    """A run whose ``-m``/``-lc`` differ from the table's is refused, naming the way to start over."""
    if stored.mode is not wanted.mode or stored.lower_case != wanted.lower_case:
        raise ConfigError(
            f"{stored.schema}.{stored.table} was made with {choices_text(stored)}; run with the same choices (or"
            f" none), or make it again with the new ones: podyn -t {stored.source} --schema --data --reload"
            f" {'-m ' + wanted.mode.value}{' -lc' if wanted.lower_case else ''} (drops and re-creates the table)",
            table=stored.source,
        )


def relation_oid(conn: psycopg.Connection[Any], spec: TableSpec) -> int | None:
    """The OID of the target relation: it survives a rename, not a drop (nor a drop and create again)."""
    row = conn.execute(
        "SELECT to_regclass(%s)::oid", (ddl.qualified(spec.schema, spec.table).as_string(conn),)
    ).fetchone()
    return None if row is None or row[0] is None else int(row[0])


def is_marked(conn: psycopg.Connection[Any], spec: TableSpec) -> bool:
    """Did podyn create this table (its comment carries ``ddl.TABLE_MARK``)?"""
    row = conn.execute(
        "SELECT obj_description(to_regclass(%s), 'pg_class')", (ddl.qualified(spec.schema, spec.table).as_string(conn),)
    ).fetchone()
    return bool(row and row[0] and str(row[0]).startswith(ddl.TABLE_MARK))


def stale_reasons(
    record: state.TableRecord,
    spec: TableSpec,
    relation: int | None,
    source: SourceIdentity | None,
    renamed_to: str | None = None,
) -> list[str]:
    """Why podyn's state for a table describes another table than the one at either end now (empty: it does not).

    ``renamed_to``: the name the recorded relation has now, when it still exists under another one.
    """
    target = f"{spec.schema}.{spec.table}"
    reasons = []
    if relation is None:
        reasons.append(f"{target} was {f'renamed to {renamed_to}' if renamed_to else 'dropped'} outside podyn")
    elif record.target_oid is not None and relation != record.target_oid:
        reasons.append(
            f"{target} was renamed to {renamed_to} and another table created as {target} outside podyn"
            if renamed_to
            else f"{target} was dropped and created again outside podyn"
        )
    if source is not None and record.source.differs_from(source):
        reasons.append(
            f"DynamoDB table {spec.source} was deleted and created again (now created {_when(source)};"
            f" podyn's state is for the one created {_when(record.source)})"
        )
    if record.spec.primary_key != spec.primary_key:

        def key(attributes: tuple[KeyAttribute, ...]) -> str:
            return ", ".join(f"{a.name} {a.tag}" for a in attributes)

        reasons.append(
            f"the key of DynamoDB table {spec.source} is now ({key(spec.primary_key)}),"
            f" podyn's state is for ({key(record.spec.primary_key)})"
        )
    return reasons


def _when(source: SourceIdentity) -> str:
    if source.created_at is not None:
        return source.created_at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + " UTC"
    return f"with id {source.table_id}" if source.table_id else "at an unknown time"


def _discard_stale_state(
    conn: psycopg.Connection[Any],
    record: state.TableRecord,
    spec: TableSpec,
    existing: dict[str, str] | None,
    relation: int | None,
    source: SourceIdentity | None,
    create: bool,
    reload: bool,
) -> tuple[state.TableRecord | None, dict[str, str] | None, bool]:
    """Forget podyn's state for a table when it no longer describes the tables at both ends.

    Returns the record (None once forgotten), the target's columns (None once dropped), and whether the rows
    still in the target must go before the next load (they are a copy of a DynamoDB table that is gone).
    Without ``create`` nothing is changed: the run is refused, naming the command that loads the table again.
    """
    moved = _renamed_to(conn, record.target_oid) if record.target_oid != relation else None
    reasons = stale_reasons(record, spec, relation, source, moved)
    choices_changed = record.spec.mode is not spec.mode or record.spec.lower_case != spec.lower_case
    if choices_changed and not reasons:
        if not reload:
            refuse_other_choices(record.spec, spec)
        reasons.append(f"--reload asks for {choices_text(spec)} instead of {choices_text(record.spec)}")
    if not reasons:
        return record, existing, False
    what = "; ".join(reasons)
    if not create:
        again = f" --reload -m {spec.mode.value}{' -lc' if spec.lower_case else ''}" if choices_changed else ""
        raise ConfigError(
            f"podyn's state for {spec.schema}.{spec.table} no longer applies: {what}."
            f" Load it again with: podyn -t {spec.source} --schema --data{again}",
            table=spec.source,
        )
    log.warning(
        "table %s: %s; podyn's state for it no longer applies: loading it again from scratch", spec.source, what
    )
    state.forget_table(conn, spec.schema, spec.table)
    if existing is not None and (choices_changed or record.spec.primary_key != spec.primary_key):
        if not is_marked(conn, spec):
            raise SchemaError(
                f"{spec.schema}.{spec.table} must be made again ({what}), but podyn did not create it: drop or"
                " rename it, or choose another --pg-schema",
                table=spec.source,
            )
        conn.execute(ddl.drop_table(initial_schema(spec)))
        log.warning("table %s: dropped %s.%s to make it again", spec.source, spec.schema, spec.table)
        return None, None, False
    source_gone = source is not None and record.source.differs_from(source)
    return None, existing, existing is not None and source_gone


def _forget_replaced(conn: psycopg.Connection[Any], spec: TableSpec, replaces: Sequence[tuple[str, str]]) -> None:
    for old in state.recorded_targets(conn):
        if old.where in replaces and old.source == spec.source and not old.live:  # checked again, under the lock
            state.forget_table(conn, old.schema, old.table)
            log.warning(
                "table %s: forgot podyn's record of %s.%s (dropped outside podyn): the table goes to %s.%s now",
                spec.source, old.schema, old.table, spec.schema, spec.table,
            )  # fmt: skip


def _refuse_dropped_columns(spec: TableSpec, stored: Sequence[Column], existing: dict[str, str]) -> None:
    """Columns of the mapping dropped by hand would come back empty: their values are gone, only a reload helps."""
    missing = [c.name for c in stored if c.name not in existing]
    if missing:
        raise ConfigError(
            f"column(s) {', '.join(missing)} of {spec.schema}.{spec.table} dropped outside podyn: their values are"
            f" gone; load the table again with podyn -t {spec.source} --schema --data --reload",
            table=spec.source,
        )


def _add_and_record(conn: psycopg.Connection[Any], current: TableSchema, added: Sequence[Column]) -> TableSchema:
    """ALTER TABLE for ``added`` and record them in podyn.columns, in the caller's transaction (under the DDL lock)."""
    conn.execute(ddl.add_columns(current, added))
    grown = current.with_columns(added)
    state.save_columns(conn, grown, start=len(current.columns))
    log.info(
        "table %s: added column%s %s",
        current.spec.source,
        "s" if len(added) > 1 else "",
        ", ".join(f"{c.name} {c.type.value}" for c in added),
    )
    return grown


def _create_missing_indexes(conn: psycopg.Connection[Any], schema: TableSchema) -> None:
    """CREATE INDEX for each GSI and LSI of the spec whose index is not there yet; never drops one.

    An index already present is not asked again: even with IF NOT EXISTS, CREATE INDEX would first wait for a
    SHARE lock on the table, which every start of a --changes service would then take.
    """
    spec = schema.spec
    index_names = free_index_names(conn, spec)
    for index in spec.indexes:
        name = index_names.get(index.name) or naming.index_name(spec.table, index.name)
        if _relation_holds_index(conn, spec, name):
            continue
        conn.execute(ddl.create_index(schema, index, name))
        log.info("table %s: created index %s.%s for %s", spec.source, spec.schema, name, index.name)


def _adopt_existing(conn: psycopg.Connection[Any], schema: TableSchema, existing: dict[str, str]) -> TableSchema:
    """Reuse a table that already exists: same key, compatible columns; add what is missing, drop nothing."""
    spec = schema.spec
    for column in schema.columns:
        found = existing.get(column.name)
        if found is not None and found != column.type.value:
            raise SchemaError(
                f"existing column {column.name!r} is {found}, podyn needs {column.type.value}",
                table=spec.source,
                attribute=column.attribute,
            )
    wanted_key = [c.name for c in schema.primary_key_columns]
    actual_key = primary_key_columns(conn, spec)
    if actual_key != wanted_key:
        raise SchemaError(
            f"existing table {spec.schema}.{spec.table} has primary key ({', '.join(actual_key) or 'none'}),"
            f" podyn needs ({', '.join(wanted_key)})",
            table=spec.source,
        )
    missing = [c for c in schema.columns if c.name not in existing]
    if missing:
        conn.execute(ddl.add_columns(schema, missing))
    return schema
