"""Prometheus metrics (prometheus-client), updated by the load, the change replication and verify (its scan).

The metrics live in their own registry, so importing podyn never touches the process-wide default one; the CLI
serves it on ``--metrics-port`` when asked, on 127.0.0.1 unless ``--metrics-address`` says otherwise (table names
and progress are nobody else's business by default), with the health probes (``health.py``) beside /metrics.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterable, Mapping
from socketserver import ThreadingMixIn
from typing import TYPE_CHECKING, Any, cast
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, make_wsgi_app

if TYPE_CHECKING:
    from wsgiref.types import StartResponse, WSGIApplication, WSGIEnvironment

REGISTRY = CollectorRegistry(auto_describe=True)

ITEMS_LOADED = Counter("podyn_items_loaded", "Items copied by the initial load", ["table"], registry=REGISTRY)
ITEMS_REJECTED = Counter(
    "podyn_items_rejected",
    "Items kept in podyn.rejected, not convertible",
    ["table"],
    registry=REGISTRY,
)
CHANGES_APPLIED = Counter(
    "podyn_changes_applied",
    "Stream records applied, by kind (upsert, delete, mark)",
    ["table", "kind"],
    registry=REGISTRY,
)
TTL_DELETES_SEEN = Counter(
    "podyn_ttl_deletes_seen", "Stream records of items DynamoDB's TTL deleted", ["table"], registry=REGISTRY
)
TTL_DELETES = Counter(
    "podyn_ttl_deletes",
    "TTL deletes by what --ttl-deletes made of them (applied, kept, marked)",
    ["table", "outcome"],
    registry=REGISTRY,
)
BATCHES = Counter("podyn_batches", "Transactions committed (pages, batches)", ["table"], registry=REGISTRY)
ERRORS = Counter("podyn_errors", "Errors, retried or not", ["table"], registry=REGISTRY)
THROTTLES = Counter("podyn_throttles", "Requests DynamoDB throttled", ["table"], registry=REGISTRY)
CAPACITY_CONSUMED = Counter(
    "podyn_read_capacity_consumed", "Read capacity units consumed by scans", ["table"], registry=REGISTRY
)
LAG_SECONDS = Gauge(
    "podyn_replication_lag_seconds",
    "Age of the newest applied stream record",
    ["table"],
    registry=REGISTRY,
)
ACTIVE_SHARDS = Gauge("podyn_active_shards", "Stream shards being read", ["table"], registry=REGISTRY)
EXPORT = Info(
    "podyn_export",
    "The export in S3 a table is loaded from (--from-export): its id, format and folder",
    ["table"],
    registry=REGISTRY,
)
EXPORT_TIME = Gauge(
    "podyn_export_time_seconds", "Point in time of the export a table is loaded from", ["table"], registry=REGISTRY
)
EXPORT_SIZE = Gauge(
    "podyn_export_size_bytes", "Billed size of the export a table is loaded from", ["table"], registry=REGISTRY
)
EXPORT_ITEMS = Gauge("podyn_export_items", "Items in the export a table is loaded from", ["table"], registry=REGISTRY)
TABLE_STATE = Gauge(
    "podyn_table_state", "1 for the table's current state, 0 for the others", ["table", "state"], registry=REGISTRY
)

CHANGES_CAPTURED = Counter(
    "podyn_changes_captured",
    "Stream records captured into the spool while the table loads",
    ["table"],
    registry=REGISTRY,
)
CAPTURED_UNTIL = Gauge(
    "podyn_captured_until_timestamp_seconds",
    "Creation time (Unix seconds) of the newest stream record captured into the spool",
    ["table"],
    registry=REGISTRY,
)
SPOOL_ROWS = Gauge("podyn_spool_rows", "Keys whose last change waits in the spool", ["table"], registry=REGISTRY)
FIRST_CHANGE_DELAY = Histogram(
    "podyn_first_change_after_idle_seconds",
    "From the creation of the first stream record after an idle stream to its commit in PostgreSQL",
    ["table"],
    buckets=(0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 7.5, 10.0, 15.0, 30.0, 60.0, 120.0),
    registry=REGISTRY,
)


class _Server(ThreadingMixIn, WSGIServer):
    """A thread per request (a slow scrape does not hold up a probe), none of them keeping the process alive."""

    daemon_threads = True


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """No line per request: probes come every few seconds."""


def serve(port: int, address: str = "127.0.0.1", routes: Mapping[str, WSGIApplication] | None = None) -> WSGIServer:
    """Serve the metrics on ``port`` (0: any free port, see ``server_port``) from a daemon thread until
    ``shutdown()``: ``routes`` (path → WSGI app) answer their paths, the metrics every other path (/metrics).

    As prometheus-client's ``start_http_server``, which takes no other routes: its WSGI app, a threading server,
    IPv6 when the address is one.
    """
    metrics_app = cast("WSGIApplication", make_wsgi_app(REGISTRY))
    paths = dict(routes or {})

    def app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        answer: Iterable[bytes] = paths.get(environ.get("PATH_INFO", ""), metrics_app)(environ, start_response)
        return answer

    family, _, _, _, sockaddr = socket.getaddrinfo(address, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    server_class: type[_Server] = type("MetricsServer", (_Server,), {"address_family": family})
    server: WSGIServer = make_server(str(sockaddr[0]), port, app, server_class, handler_class=_Quiet)
    threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()
    return server
