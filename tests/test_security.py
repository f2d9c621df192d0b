"""Security: no password in any output, TLS settings reach libpq, hostile names stay names, least privilege.

The real CLI runs against DynamoDB Local and the test PostgreSQL. That server trusts local connections, so a URL may
carry any password: what is checked is that podyn never shows it, wherever the run ends.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
from helpers import REPO_ROOT, STREAM, Service, wait_equal, wait_for_state
from oracle import connect, table_differences
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from podyn_py.config import parse_postgres_url, redact

SECRET = "S3cr3t-Pa55"


def short(prefix: str) -> str:
    return f"{prefix}_{os.urandom(4).hex()}"


@dataclass
class Run:
    args: tuple[str, ...]
    returncode: int | None  # None: still running when the time was up (then killed)
    output: str


@dataclass(frozen=True)
class Patient:
    """A command that may still be running after ``seconds``: then it is killed and reported with returncode None."""

    args: list[str]
    seconds: float


def run_all(
    commands: list[list[str] | Patient], *, env: dict[str, str] | None = None, timeout: float = 60
) -> list[Run]:
    """Run ``podyn`` command lines concurrently; each must end within ``timeout``, a Patient within its seconds."""
    started = time.monotonic()
    argv = [c.args if isinstance(c, Patient) else c for c in commands]
    processes = [
        subprocess.Popen(
            [sys.executable, "-m", "podyn_py", *args],
            cwd=REPO_ROOT,
            env={**os.environ, **(env or {})},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for args in argv
    ]
    runs = []
    try:
        for command, args, process in zip(commands, argv, processes, strict=True):
            patient = isinstance(command, Patient)
            limit = started + (command.seconds if isinstance(command, Patient) else timeout)
            try:
                output, _ = process.communicate(timeout=max(0.1, limit - time.monotonic()))
            except subprocess.TimeoutExpired:
                if not patient:
                    raise
                process.kill()
                output, _ = process.communicate()
                runs.append(Run(tuple(args), None, output))
                continue
            runs.append(Run(tuple(args), process.returncode, output))
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.communicate()
    return runs


def with_password(pg_url: str) -> dict[str, str]:
    """The test database's address in each accepted form, every one carrying SECRET as the password."""
    parts = conninfo_to_dict(pg_url)
    host, port, db = parts["host"], parts["port"], parts["dbname"]
    return {
        "jdbc": f"jdbc:postgresql://{host}:{port}/{db}?user=postgres&password={SECRET}",
        "uri": f"postgresql://postgres:{SECRET}@{host}:{port}/{db}",
        "dsn": f"host={host} port={port} dbname={db} user=postgres password={SECRET}",
    }


# -- passwords ---------------------------------------------------------------------------------------------------


def test_passwords_never_appear_in_logs_errors_dry_run_or_status(
    ddb_server: Any, ddb: Any, pg_url: str, create_table: Any
) -> None:
    table = create_table(name=short("pw"), items=[{"pk": {"S": f"k{i}"}, "v": {"N": str(i)}} for i in range(5)])
    base = ["--endpoint-url", ddb_server.endpoint_url, "--no-progress", "-v", "-t", table]
    urls = with_password(pg_url)
    parts = conninfo_to_dict(pg_url)
    host, port, db = parts["host"], parts["port"], parts["dbname"]
    wrong_port_jdbc = f"jdbc:postgresql://{host}:1/{db}?user=postgres&password={SECRET}"
    wrong_port_uri = f"postgresql://postgres:{SECRET}@{host}:1/{db}"
    no_database = f"postgresql://postgres:{SECRET}@{host}:{port}/no_such_database"
    # The AWS secret key is the same string: the runs must not show that either (DynamoDB Local accepts any key).
    env = {"AWS_SECRET_ACCESS_KEY": SECRET}

    # Loads in each URL form (one --pg-schema each, so they run side by side), the dry run, failing runs.
    first: list[list[str] | Patient] = [[*base, "-u", url, "-s", "-d", "--pg-schema", f] for f, url in urls.items()]
    first += [
        [*base, "-s", "-d"],  # dry run
        [*base, "-u", wrong_port_uri, "--status"],
        [*base, "-u", no_database, "--verify"],
        [*base, "-u", f"postgresql://postgres:{SECRET}@{host}:{port}/db?no_such_option=1", "-s", "-d"],
        [*base, "-u", f"jdbc:mysql://{host}/db?user=postgres&password={SECRET}", "--status"],
    ]
    runs = run_all(first, env=env)
    for form, load in zip(urls, runs, strict=False):
        assert load.returncode == 0, load.output
        assert table_differences(ddb, pg_url, table, schema=form) == []
    dry = runs[len(urls)]
    assert dry.returncode == 0 and "CREATE TABLE" in dry.output, dry.output
    failing = runs[len(urls) + 1 :]
    assert all(r.returncode not in (0, None) and r.output.strip() for r in failing), [
        (r.args, r.returncode) for r in failing
    ]
    assert "Connection refused" in failing[0].output, failing[0].output
    assert 'database "no_such_database" does not exist' in failing[1].output, failing[1].output

    # --status and --verify of what was loaded; loads against an unreachable database, which may still be retrying
    # after a few seconds (see test_faults.py, test_unreachable_postgres_is_an_error_before_any_table): the log
    # lines they wrote by then are checked.
    second: list[list[str] | Patient] = [
        [*base, "-u", urls["jdbc"], "--status", "--pg-schema", "jdbc"],
        [*base, "-u", urls["uri"], "--status", "--json", "--pg-schema", "uri"],
        [*base, "-u", urls["dsn"], "--verify", "--pg-schema", "dsn"],
        Patient([*base, "-u", wrong_port_jdbc, "-s", "-d"], 5),
        Patient([*base, "-u", no_database, "-s", "-d"], 5),
    ]
    checks = run_all(second, env=env)
    assert [r.returncode for r in checks[:3]] == [0, 0, 0], [r.output[-1000:] for r in checks[:3]]
    assert "user=postgres" in checks[0].output and "equal" in checks[2].output
    assert all("cannot connect to PostgreSQL" in r.output for r in checks[3:]), [r.output[-500:] for r in checks]

    for run in runs + checks:
        assert SECRET not in run.output, f"password shown by {run.args}:\n{run.output}"


# -- TLS ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        (
            "jdbc:postgresql://db.example.com:6432/app?user=u&password=p&sslmode=verify-full"
            "&sslrootcert=/etc/ssl/ca.pem&sslcert=/etc/ssl/client.crt&sslkey=/etc/ssl/client.key",
            {
                "sslmode": "verify-full",
                "sslrootcert": "/etc/ssl/ca.pem",
                "sslcert": "/etc/ssl/client.crt",
                "sslkey": "/etc/ssl/client.key",
                "host": "db.example.com",
                "port": "6432",
                "dbname": "app",
            },
        ),
        ("jdbc:postgresql://db/app?user=u&ssl=true", {"sslmode": "require"}),
        ("jdbc:postgresql://db/app?ssl=true&sslmode=verify-ca&sslrootcert=/ca.pem", {"sslmode": "verify-ca"}),
        (
            "postgresql://u:p@db/app?sslmode=verify-full&sslrootcert=/ca.pem&sslcert=/c.crt&sslkey=/c.key",
            {"sslmode": "verify-full", "sslrootcert": "/ca.pem", "sslcert": "/c.crt", "sslkey": "/c.key"},
        ),
        (
            "host=db dbname=app sslmode=verify-ca sslrootcert=/ca.pem sslcert=/c.crt sslkey=/c.key",
            {"sslmode": "verify-ca", "sslrootcert": "/ca.pem", "sslcert": "/c.crt", "sslkey": "/c.key"},
        ),
    ],
    ids=["jdbc-all", "jdbc-ssl-true", "jdbc-ssl-and-sslmode", "libpq-uri", "libpq-dsn"],
)
def test_tls_settings_pass_through_to_libpq(url: str, expected: dict[str, str]) -> None:
    settings = conninfo_to_dict(parse_postgres_url(url))
    assert {k: settings.get(k) for k in expected} == expected
    shown = conninfo_to_dict(redact(parse_postgres_url(url)))
    assert "password" not in shown and {k: shown.get(k) for k in expected} == expected


def test_tls_required_against_a_server_without_tls_fails_in_libpq(pg_url: str) -> None:
    parts = conninfo_to_dict(pg_url)
    host, port, db = parts["host"], parts["port"], parts["dbname"]
    urls = [
        f"postgresql://postgres:{SECRET}@{host}:{port}/{db}?sslmode=require",
        f"jdbc:postgresql://{host}:{port}/{db}?user=postgres&password={SECRET}&ssl=true",
    ]
    for run in run_all([["-u", url, "--status"] for url in urls]):
        assert run.returncode == 1, run.output
        # libpq's own message: the setting reached the TLS negotiation.
        assert "server does not support SSL, but SSL was required" in run.output, run.output
        assert SECRET not in run.output


# -- hostile names -----------------------------------------------------------------------------------------------

HOSTILE_ATTRIBUTES = [
    'x"; DROP TABLE victim; --',
    "'); DELETE FROM podyn.tables; --",
    "{}",
    "{0}",
    "$1",
    "\\",
    '"',
    "''",
    "victim",
    "a.b",
    "data",
    "with\nnewline",
    "ünï ✓ 名前",
]
HOSTILE_SCHEMA = "sch\"ema'; DROP TABLE victim; --"
#: psycopg takes a % anywhere in a statement run with parameters for a placeholder, also inside a quoted
#: identifier (sql.Identifier does not double it: psycopg/psycopg2#825 describes the same for psycopg 2).
PERCENT_ATTRIBUTES = ["%s", "%(x)s", "100%", "%%"]


def add_victim(url: str) -> None:
    with connect(url) as conn:
        conn.execute("CREATE TABLE victim (id int); INSERT INTO victim VALUES (42)")


def assert_victim_intact(url: str) -> None:
    with connect(url) as conn:
        assert conn.execute("SELECT id FROM public.victim").fetchall() == [(42,)]


def test_hostile_names_stay_names(ddb_server: Any, ddb: Any, pg_url: str, create_table: Any, tmp_path: Path) -> None:
    add_victim(pg_url)
    pk, sk, ix = 'k"; DROP TABLE victim; --', "'); DELETE FROM podyn.columns; --", 'i"); DROP TABLE victim; --'
    items = [
        {pk: {"S": f"key {i}'; DROP TABLE victim; --"}, sk: {"N": str(i)}, ix: {"S": "$$ DROP TABLE victim $$"}}
        | {name: {"S": f"value of {name}; DROP TABLE victim; --"} for name in HOSTILE_ATTRIBUTES}
        for i in range(5)
    ]
    # DynamoDB table and index names allow only [a-zA-Z0-9_.-]: a dot is the hostile part (a qualified name).
    table = create_table(
        key=((pk, "S"), (sk, "N")),
        name="public.victim",
        stream_view_type=STREAM,
        gsis=[{"name": "public.victim--", "key": ((ix, "S"),)}],
        items=items,
    )
    base = ["--endpoint-url", ddb_server.endpoint_url, "--no-progress", "-u", pg_url, "-t", table]
    loads = run_all([[*base, "-s", "-d"], [*base, "-s", "-d", "--pg-schema", HOSTILE_SCHEMA, "-m", "jsonb"]])
    assert [r.returncode for r in loads] == [0, 0], [r.output[-2000:] for r in loads]
    assert table_differences(ddb, pg_url, table) == []
    assert table_differences(ddb, pg_url, table, schema=HOSTILE_SCHEMA) == []
    verifies = run_all([[*base, "--verify"], [*base, "--verify", "--pg-schema", HOSTILE_SCHEMA]])
    assert [r.returncode for r in verifies] == [0, 0], [r.output[-2000:] for r in verifies]
    assert_victim_intact(pg_url)
    with connect(pg_url) as conn:
        schemas = {r[0] for r in conn.execute("SELECT target_schema FROM podyn.tables")}
        index = conn.execute(
            "SELECT count(*) FROM pg_indexes WHERE schemaname = 'public' AND tablename = %s AND indexname = %s",
            (table, f"{table}_public.victim--"),
        ).fetchone()
    assert schemas == {"public", HOSTILE_SCHEMA}
    assert index == (1,), "the GSI's index is missing or misnamed"

    service = Service(ddb_server.endpoint_url, pg_url, table, tmp_path / "changes.log", "-c")
    try:
        service.wait_for_log(f"table {table}: live")
        ddb.put_item(
            TableName=table,
            Item={pk: {"S": "new"}, sk: {"N": "9"}, "new'); DROP TABLE victim; --": {"N": "1"}, ix: {"S": "x"}},
        )
        ddb.delete_item(TableName=table, Key={pk: {"S": "key 0'; DROP TABLE victim; --"}, sk: {"N": "0"}})
        wait_equal(ddb, pg_url, table, schema="public")
        assert service.stop() == 0
    finally:
        service.stop(signal.SIGKILL)
    (verify,) = run_all([[*base, "--verify"]])
    assert verify.returncode == 0, verify.output
    assert_victim_intact(pg_url)


def test_percent_signs_in_names_are_not_placeholders(
    ddb_server: Any, ddb: Any, pg_url: str, create_table: Any, tmp_path: Path
) -> None:
    """Attribute names with % in every statement podyn runs with parameters: the load's upsert (rows already
    there), change replication (upsert and delete, a key attribute named with %), and --verify."""
    pk = "pk%s"
    items = [{pk: {"S": f"k{i}"}} | {name: {"S": f"{name} {i}"} for name in PERCENT_ATTRIBUTES} for i in range(3)]
    table = create_table(key=((pk, "S"),), name=short("percent"), stream_view_type=STREAM, items=items)
    base = ["--endpoint-url", ddb_server.endpoint_url, "--no-progress", "-u", pg_url, "-t", table]
    (schema,) = run_all([[*base, "-s"]])
    assert schema.returncode == 0, schema.output
    with connect(pg_url) as conn:  # an application wrote one of the rows already: the load upserts that page
        conn.execute(sql.SQL("INSERT INTO {} ({}) VALUES ('k1')").format(sql.Identifier(table), sql.Identifier(pk)))
    (load,) = run_all([[*base, "-d", "-n", "1"]])
    assert load.returncode == 0, load.output
    assert table_differences(ddb, pg_url, table) == []

    service = Service(ddb_server.endpoint_url, pg_url, table, tmp_path / "changes.log", "-c")
    try:
        wait_for_state(pg_url, table, "live", service=service)
        ddb.put_item(TableName=table, Item={pk: {"S": "new"}, "50%": {"N": "50"}, "%s": {"S": "changed"}})
        ddb.delete_item(TableName=table, Key={pk: {"S": "k0"}})
        wait_equal(ddb, pg_url, table, schema="public")
        assert service.stop() == 0
    finally:
        service.stop(signal.SIGKILL)
    (verify,) = run_all([[*base, "--verify"]])
    assert verify.returncode == 0, verify.output


# -- least privilege ---------------------------------------------------------------------------------------------


@dataclass
class Role:
    name: str
    url: str
    admin_url: str  # the superuser, in the same database
    database: str

    def admin(self, statement: str) -> None:
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute(sql.SQL(statement).format(role=sql.Identifier(self.name), db=sql.Identifier(self.database)))


@pytest.fixture
def app_role(pg_url: str) -> Iterator[Role]:
    """A login role without any privilege of its own; the database's default PUBLIC privileges are revoked too, so
    what the role can do is exactly what a test grants."""
    name = short("podyn_app")
    database = conninfo_to_dict(pg_url)["dbname"]
    assert isinstance(database, str)
    role = Role(name, make_conninfo(pg_url, user=name), pg_url, database)
    role.admin("CREATE ROLE {role} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE")
    role.admin("REVOKE ALL ON DATABASE {db} FROM PUBLIC")
    yield role
    role.admin("DROP OWNED BY {role}")  # its objects and privileges in this database
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(name)))


def cli(ddb_server: Any, url: str, *args: str) -> list[str]:
    return ["--endpoint-url", ddb_server.endpoint_url, "--no-progress", "-u", url, *args]


def clear_failure(run: Run, code: int, message: str) -> None:
    assert run.returncode == code, f"exit {run.returncode}, expected {code}:\n{run.output}"
    assert message in run.output and "Traceback" not in run.output, run.output


def test_least_privilege_role_runs_load_changes_verify_and_status(
    ddb_server: Any, ddb: Any, app_role: Role, create_table: Any, tmp_path: Path
) -> None:
    """The minimal set, found by trying: CONNECT, CREATE and TEMPORARY on the database (CREATE for podyn's own
    schema, which podyn creates on every run; TEMPORARY for --verify), USAGE and CREATE on the target schema. The
    role owns what it creates, so ALTER TABLE for new attributes needs nothing more."""
    table = create_table(
        name=short("priv"),
        stream_view_type=STREAM,
        items=[{"pk": {"S": f"k{i}"}, "v": {"N": str(i)}} for i in range(10)],
    )
    role = app_role
    role.admin("GRANT CONNECT, CREATE, TEMPORARY ON DATABASE {db} TO {role}")
    role.admin("GRANT USAGE, CREATE ON SCHEMA public TO {role}")

    # Without one privilege: a clear error naming it, no traceback; nothing half done. podyn's own schema is made
    # (or migrated) before any table, so lacking CREATE on the database is an error of the run (1), not a table's.
    role.admin("REVOKE CREATE ON DATABASE {db} FROM {role}")
    (run,) = run_all([cli(ddb_server, role.url, "-s", "-d", "-t", table)])
    clear_failure(run, 1, "permission denied for database")
    role.admin("GRANT CREATE ON DATABASE {db} TO {role}")
    role.admin("REVOKE CREATE ON SCHEMA public FROM {role}")
    (run,) = run_all([cli(ddb_server, role.url, "-s", "-d", "-t", table)])
    clear_failure(run, 3, "permission denied for schema public")
    role.admin("GRANT CREATE ON SCHEMA public TO {role}")

    (load,) = run_all([cli(ddb_server, role.url, "-s", "-d", "-t", table)])
    assert load.returncode == 0, load.output
    assert table_differences(ddb, role.admin_url, table) == []

    service = Service(ddb_server.endpoint_url, role.url, table, tmp_path / "changes.log", "-c")
    try:
        wait_for_state(role.admin_url, table, "live", service=service)
        ddb.put_item(TableName=table, Item={"pk": {"S": "new"}, "fresh": {"SS": ["a"]}})  # ALTER TABLE as owner
        ddb.delete_item(TableName=table, Key={"pk": {"S": "k1"}})
        wait_equal(ddb, role.admin_url, table, schema="public")
        assert service.stop() == 0
    finally:
        service.stop(signal.SIGKILL)

    verify, status = run_all([cli(ddb_server, role.url, "--verify"), cli(ddb_server, role.url, "--status")])
    assert verify.returncode == 0 and "equal" in verify.output, verify.output
    # The role can read every state it needs: here, that no process replicates the table any more (exit 3).
    assert status.returncode == 3 and f"{table}: not running" in status.output, status.output

    role.admin("REVOKE TEMPORARY ON DATABASE {db} FROM {role}")
    (run,) = run_all([cli(ddb_server, role.url, "--verify")])
    clear_failure(run, 3, "permission denied to create temporary tables")


def test_pre_created_schemas_need_no_create_on_the_database(
    ddb_server: Any, ddb: Any, app_role: Role, create_table: Any
) -> None:
    """A DBA who creates the ``podyn`` schema and the target schema for the role, owned by it, should not have to
    grant CREATE on the whole database as well: podyn's metadata DDL is IF NOT EXISTS, and there is nothing left for
    it to create outside those schemas."""
    table = create_table(name=short("precreated"), items=[{"pk": {"S": f"k{i}"}, "v": {"N": str(i)}} for i in range(3)])
    role = app_role
    role.admin("GRANT CONNECT, TEMPORARY ON DATABASE {db} TO {role}")
    role.admin("CREATE SCHEMA podyn AUTHORIZATION {role}")
    role.admin("CREATE SCHEMA app AUTHORIZATION {role}")
    (load,) = run_all([cli(ddb_server, role.url, "-s", "-d", "-t", table, "--pg-schema", "app")])
    assert load.returncode == 0, load.output
    assert table_differences(ddb, role.admin_url, table, schema="app") == []
    (verify,) = run_all([cli(ddb_server, role.url, "--verify", "--pg-schema", "app")])
    assert verify.returncode == 0, verify.output
