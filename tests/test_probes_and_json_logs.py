"""/healthz, /readyz and --log-format json end to end: the real CLI against DynamoDB Local and PostgreSQL.

A stalled loop is made the way it happens in production: an application's transaction holds the row a change must
be written to, so the replicator's transaction waits on PostgreSQL's row lock for as long as the application keeps
it (podyn sets no lock timeout on a batch's transaction), and nothing else in the process is wrong. The change
brings no new attribute: adding a column waits for its lock with a timeout and retries, which is not a stall.
"""

from __future__ import annotations

import json
import secrets
import urllib.error
import urllib.request
from datetime import datetime
from typing import Any

import psycopg
from helpers import STREAM, assert_exit, fresh, increment, items, podyn, wait_equal, wait_for, wait_for_state
from psycopg import sql

from podyn_py.demo_services import free_port


def probe(port: int, path: str) -> tuple[int, dict[str, Any]] | None:
    """The status and JSON body of ``path``; None while the port does not answer yet."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return int(response.status), json.loads(response.read())
    except urllib.error.HTTPError as error:
        return int(error.code), json.loads(error.read())
    except OSError:
        return None


def wait_probe(port: int, path: str, status: int, check: Any = None, *, service: Any, timeout: float = 60) -> Any:
    """Wait until ``path`` answers ``status`` (and ``check(body)`` holds); return the body."""
    last: list[Any] = [None]

    def answered() -> Any:
        last[0] = probe(port, path)
        if last[0] is None or last[0][0] != status or (check is not None and not check(last[0][1])):
            return None
        return last[0][1]

    return wait_for(answered, lambda: f"{path} answering {status} (last: {last[0]})", timeout=timeout, service=service)


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        return str(response.read().decode())


def test_readyz_waits_for_live_and_healthz_and_metrics_answer_throughout(
    ddb: Any, pg_url: str, create_table: Any, services: Any
) -> None:
    """A load slowed by --scan-rate keeps the table out of "live" for seconds: /readyz says 503 with the state
    podyn committed (loading), then 200 once the table is live; /healthz is 200 and lists the loops."""
    padded = [{**item, "pad": {"S": "p" * 900}} for item in items(200)]
    table = create_table(name=fresh(), stream_view_type=STREAM, items=padded)
    port = free_port()
    service = services(pg_url, table, "-s", "-d", "-c", "-r", "4", "-n", "2", "--metrics-port", str(port))
    loading = wait_probe(
        port, "/readyz", 503, lambda body: body["tables"].get(table, {}).get("state") == "loading", service=service
    )
    assert loading["status"] == "not ready" and loading["max_lag_seconds"] == 60.0
    assert loading["tables"][table]["ready"] is False
    status, body = probe(port, "/healthz") or (0, {})
    assert status == 200 and body["status"] == "ok", body
    wait_for_state(pg_url, table, "live", timeout=90, service=service)
    ready = wait_probe(port, "/readyz", 200, service=service)
    assert ready["tables"][table]["state"] == "live" and ready["tables"][table]["lag_seconds"] <= 60.0
    alive = wait_probe(port, "/healthz", 200, service=service)
    assert {loop["loop"] for loop in alive["loops"]} == {f"changes {table}", f"stream reader {table}"}
    assert f'podyn_table_state{{state="live",table="{table}"}} 1.0' in scrape(port)
    assert service.stop() == 0


def test_a_replicator_blocked_on_a_lock_fails_healthz_until_the_lock_is_gone(
    ddb: Any, pg_url: str, create_table: Any, services: Any
) -> None:
    table = create_table(name=fresh(), stream_view_type=STREAM, items=items(5))
    port = free_port()
    args = ("-s", "-d", "-c", "--metrics-port", str(port), "--health-max-stall", "5", "--ready-max-lag", "5")
    service = services(pg_url, table, *args)
    wait_for_state(pg_url, table, "live", service=service)
    wait_probe(port, "/readyz", 200, service=service)
    wait_probe(port, "/healthz", 200, service=service)
    with psycopg.connect(pg_url) as app:  # not autocommit: the row stays locked until the rollback
        app.execute(sql.SQL("SELECT * FROM {} WHERE pk = 'k1' FOR UPDATE").format(sql.Identifier(table)))
        ddb.put_item(TableName=table, Item={"pk": {"S": "k1"}, "v": {"N": "100"}, "s": {"S": "changed"}})
        stalled = wait_probe(port, "/healthz", 503, service=service)
        assert stalled["stalled"] == [f"changes {table}"], stalled
        (changes,) = [loop for loop in stalled["loops"] if loop["loop"] == f"changes {table}"]
        assert changes["table"] == table and changes["seconds_since_progress"] > 5
        not_ready = wait_probe(port, "/readyz", 503, service=service)
        assert not_ready["tables"][table]["state"] == "live" and not_ready["tables"][table]["lag_seconds"] > 5
        assert "podyn_table_state" in scrape(port)  # the metrics are still served
        app.rollback()
    wait_probe(port, "/healthz", 200, service=service)
    wait_equal(ddb, pg_url, table, service=service)
    wait_probe(port, "/readyz", 200, service=service)
    assert service.stop() == 0


def json_lines(text: str) -> list[dict[str, Any]]:
    """Every line of ``text`` as a JSON object (a line that does not parse fails the test, naming it)."""
    events = []
    for line in text.splitlines():
        try:
            event = json.loads(line)
        except ValueError as exc:
            raise AssertionError(f"not a JSON line: {line!r}") from exc
        assert isinstance(event, dict) and {"time", "level", "logger", "message"} <= set(event), line
        datetime.fromisoformat(event["time"])
        events.append(event)
    return events


def test_json_logs_of_a_service_parse_carry_the_table_and_no_password(
    ddb: Any, pg_url: str, create_table: Any, services: Any
) -> None:
    """The test PostgreSQL trusts local connections, so the URL may carry any password: podyn must never show it."""
    password = f"pw-{secrets.token_hex(8)}"
    url = pg_url.replace("postgresql://postgres@", f"postgresql://postgres:{password}@")
    table = create_table(name=fresh(), stream_view_type=STREAM, items=items(20))
    service = services(url, table, "-s", "-d", "-c", "--log-format", "json")
    wait_for_state(pg_url, table, "live", service=service)
    increment(ddb, table, "k3")
    wait_equal(ddb, pg_url, table, service=service)
    service.wait_for_log('"upserts":1')
    assert service.stop() == 0
    text = service.text()
    assert password not in text
    events = json_lines(text)
    about = [e for e in events if e.get("table") == table]
    states = {e["state"] for e in about if e["logger"] == "podyn_py.target.postgres" and "state" in e}
    assert {"loading", "loaded", "catching up", "live"} <= states, about
    (loaded,) = [e for e in about if e["logger"] == "podyn_py.load" and "items" in e and "seconds" in e]
    assert loaded["items"] == 20 and loaded["level"] == "info"
    applied = [e for e in about if e.get("upserts") == 1]
    assert applied and applied[0]["records"] == 1 and applied[0]["deletes"] == 0
    stopped = [e for e in about if "changes" in e]
    assert stopped and stopped[-1]["message"].endswith(f"stopped on request after {stopped[-1]['changes']} changes")
    assert any("postgres:***@" in e["message"] or "user=postgres" in e["message"] for e in events), events[:3]


def test_json_logs_of_a_failed_connection_hide_the_password_and_the_aws_secret(ddb_server: Any) -> None:
    """-v: debug logging of every library (botocore's included), and the traceback as a field."""
    password = f"pw-{secrets.token_hex(8)}"
    aws_secret = f"aws-{secrets.token_hex(16)}"
    for url in (
        f"postgresql://app:{password}@127.0.0.1:1/app",
        f"jdbc:postgresql://127.0.0.1:1/app?user=app&password={password}",
        f"host=127.0.0.1 port=1 dbname=app user=app password={password}",
    ):
        result = assert_exit(
            podyn(ddb_server, url, "-s", "--log-format", "json", "-v", env={"AWS_SECRET_ACCESS_KEY": aws_secret}), 1
        )
        assert password not in result.stderr and aws_secret not in result.stderr
        assert result.stdout == ""
        events = json_lines(result.stderr)
        assert any(e["logger"].startswith("botocore") for e in events), "botocore's debug logs are there"
        (failed,) = [e for e in events if "exception" in e]
        assert failed["level"] == "error" and "cannot connect to PostgreSQL" in failed["message"]
        assert failed["exception"]["traceback"].startswith("Traceback") and password not in json.dumps(failed)


def test_progress_bars_do_not_go_with_json_logs(ddb_server: Any) -> None:
    result = assert_exit(podyn(ddb_server, None, "-s", "--log-format", "json", "--progress"), 2)
    assert "not with --log-format json" in result.stderr
