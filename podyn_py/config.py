"""Run settings, and PostgreSQL connection strings in podyn's JDBC form or libpq's.

podyn (Java) took ``jdbc:postgresql://host:port/db?user=..&password=..``; podyn_py accepts that, libpq URIs
(``postgresql://...``) and key=value DSNs, and turns all of them into a libpq conninfo string. TLS settings
(sslmode, sslrootcert, ...) pass through to libpq. :func:`redact` gives the form that may be shown: no password.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from datetime import datetime
from urllib.parse import parse_qsl, unquote, urlsplit

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from podyn_py.core.changes import TtlPolicy
from podyn_py.core.schema import ConversionMode
from podyn_py.core.selection import Exclusions
from podyn_py.core.targets import TargetName, TargetRequest
from podyn_py.errors import ConfigError

log = logging.getLogger(__name__)

# JDBC parameter → libpq keyword, where they differ or need translating.
_JDBC_PARAMETERS = {
    "user": "user",
    "password": "password",
    "sslmode": "sslmode",
    "sslcert": "sslcert",
    "sslkey": "sslkey",
    "sslrootcert": "sslrootcert",
    "sslpassword": "sslpassword",
    "applicationname": "application_name",
    "connecttimeout": "connect_timeout",
    "options": "options",
    "targetservertype": "target_session_attrs",
    "gssencmode": "gssencmode",
    "channelbinding": "channel_binding",
}
_TARGET_SERVER_TYPES = {"any": "any", "primary": "read-write", "master": "read-write", "secondary": "standby"}


def parse_postgres_url(url: str) -> str:
    """Any accepted form of a PostgreSQL address → a libpq conninfo string. ConfigError if it is not one."""
    url = url.strip()
    if url.lower().startswith("jdbc:"):
        return _from_jdbc(url)
    try:
        conninfo_to_dict(url)
    except psycopg.ProgrammingError as exc:
        raise ConfigError(f"not a PostgreSQL URL or connection string: {redact_text(url)} ({exc})") from None
    return url


def _from_jdbc(url: str) -> str:
    rest = url[len("jdbc:") :]
    if not rest.lower().startswith("postgresql:"):
        raise ConfigError(f"only jdbc:postgresql: URLs are supported, got {redact_text(url)}")
    body = rest[len("postgresql:") :]
    if not body.startswith("//"):  # jdbc:postgresql:database
        body = "//localhost/" + body
    parts = urlsplit("postgresql:" + body)
    settings: dict[str, str] = {}
    hosts, ports = [], []
    for host_port in (parts.netloc.rsplit("@", 1)[-1] or "localhost").split(","):
        host, _, port = host_port.partition(":")
        if host.startswith("[") and "]" in host_port:  # IPv6 literal
            host, _, port = host_port[1:].partition("]")
            port = port.lstrip(":")
        hosts.append(host or "localhost")
        ports.append(port or "5432")
    settings["host"] = ",".join(hosts)
    settings["port"] = ",".join(ports)
    if parts.path.strip("/"):
        settings["dbname"] = unquote(parts.path.strip("/"))
    ssl = None
    for name, value in parse_qsl(parts.query, keep_blank_values=True):
        key = name.lower()
        if key == "ssl":
            ssl = value.lower() in ("", "true", "1", "yes")
        elif key == "targetservertype":
            settings["target_session_attrs"] = _TARGET_SERVER_TYPES.get(value.lower(), value)
        elif key in _JDBC_PARAMETERS:
            settings[_JDBC_PARAMETERS[key]] = value
        else:
            log.warning("ignoring JDBC parameter %r: libpq has no equivalent", name)
    if ssl and "sslmode" not in settings:
        settings["sslmode"] = "require"  # the JDBC driver's ssl=true also verifies; sslmode=verify-full does too
    return make_conninfo(**settings)


def redact(conninfo: str) -> str:
    """The conninfo without its password, fit for logs, errors and status output."""
    try:
        settings = conninfo_to_dict(conninfo)
    except psycopg.ProgrammingError:
        return redact_text(conninfo)
    settings.pop("password", None)
    return make_conninfo(**{k: str(v) for k, v in settings.items()})


def redact_text(text: str) -> str:
    """Best effort for text that did not parse: hide whatever follows ``password``, and URI user info."""
    text = re.sub(r"(?i)(password\s*=\s*)('[^']*'|[^&\s]*)", r"\1***", text)
    return re.sub(r"(//[^/@:]*:)[^@/]*@", r"\1***@", text)


@dataclass(frozen=True)
class AwsSettings:
    """Where and how to reach DynamoDB; plain values, so that config loads no boto3 (the source edge uses them)."""

    endpoint_url: str | None = None
    region: str | None = None
    profile: str | None = None
    max_attempts: int = 10
    #: Scan, GetRecords and BatchGetItem through the fast path (signed HTTP, orjson) rather than boto3's parser.
    fast_path: bool = True
    #: S3 endpoint for ``--from-export``/``--export-to`` (an S3-compatible store, a test's); None: boto3's usual one.
    s3_endpoint_url: str | None = None
    #: Fixed credentials, for local endpoints (the demo); otherwise the standard AWS chain finds them.
    access_key_id: str | None = field(default=None, repr=False)
    secret_access_key: str | None = field(default=None, repr=False)


@dataclass(frozen=True)
class TableSettings:
    """What a run sets for one table (``-t Source:target``, a config file's ``[tables.Source]``); None: the run's.

    Every field but ``target`` is named as the :class:`Config` field it stands in for: :meth:`Config.for_table`
    puts them over the run's, so a new per-table setting is a field here and a key in ``config_file.KEYS``.
    """

    target: TargetName | None = None
    mode: ConversionMode | None = None
    lower_case: bool | None = None
    scan_rate: float | None = None
    segments: int | None = None
    ttl_deletes: TtlPolicy | None = None


#: Default scan segments per connection (``--segments``): workers take the next segment as one finishes.
SEGMENTS_PER_CONNECTION = 4


@dataclass(frozen=True)
class Config:
    """Everything one run of podyn needs, built by the CLI; nothing else reads options or the environment."""

    tables: tuple[str, ...] = ()
    postgres: str | None = None
    schema: bool = False
    data: bool = False
    changes: bool = False
    citus: bool = False
    mode: ConversionMode | None = None
    lower_case: bool | None = None
    connections: int = 8
    scan_rate: float = 0.0
    segments: int | None = None
    consistent_read: bool = False
    pg_schema: str = "public"
    #: False when ``--pg-schema`` was left to its default: a table podyn replicates elsewhere is found there.
    pg_schema_given: bool = True
    #: ``--table-prefix``: before the PostgreSQL name of every table of the run.
    table_prefix: str = ""
    #: DynamoDB table name → its own settings, over the run's.
    table_settings: Mapping[str, TableSettings] = field(default_factory=dict)
    reload: bool = False
    progress: bool = False
    #: ``--from-export``: load the table from this export in S3 (``s3://.../AWSDynamoDB/<ExportId>/``), not a Scan.
    from_export: str | None = None
    #: ``--export-to``: ask DynamoDB for an export of each table to this S3 destination (``s3://bucket/prefix``),
    #: wait for it, and load it as ``from_export`` would.
    export_to: str | None = None
    #: How often DescribeExport is called while such an export runs (``--export-poll``).
    export_poll_seconds: float = 20.0
    #: How often a standing-by service tries to take over a table another process holds.
    standby_seconds: float = 10.0
    #: How long a lease on a work unit (segment, shard) lasts unless renewed (every third of it).
    lease_seconds: float = 30.0
    #: When this run (this command: all its processes) started, by the database's clock when known.
    run_started: datetime | None = None
    #: Attributes left out of the copy (``--exclude-attributes``, ``--keep-replication-attributes``).
    exclusions: Exclusions = field(default_factory=Exclusions)
    #: What becomes of the deletes DynamoDB's TTL makes (``--ttl-deletes``).
    ttl_deletes: TtlPolicy = TtlPolicy.DELETE
    #: Capture each table's stream into its spool from the start of its load (--no-capture: replay after it).
    capture: bool = True
    #: Longest wait between two GetRecords calls on an idle shard (--idle-poll-max); every call is billed.
    idle_poll_max: float = 5.0
    aws: AwsSettings = field(default_factory=AwsSettings)

    @property
    def dry_run(self) -> bool:
        return self.postgres is None

    @property
    def scan_segments(self) -> int:
        """``--segments``, else more segments than connections so that a slow segment does not hold up the end."""
        return self.segments or SEGMENTS_PER_CONNECTION * self.connections

    def for_table(self, source: str) -> Config:
        """The run's settings as they apply to one table: its own (``table_settings``) over the run's."""
        own = self.table_settings.get(source)
        if own is None:
            return self
        changes = {f.name: getattr(own, f.name) for f in fields(own) if f.name != "target"}
        return replace(self, **{name: value for name, value in changes.items() if value is not None})

    def target_request(self, source: str) -> TargetRequest:
        """What this run says about where ``source`` goes in PostgreSQL (see ``core.targets.choose_target``)."""
        own = self.table_settings.get(source)
        return TargetRequest(own.target if own else None, self.pg_schema, self.pg_schema_given, self.table_prefix)
