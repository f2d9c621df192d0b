"""Prometheus metrics (prometheus-client), updated by the load, the change replication and verify (its scan).

The metrics live in their own registry, so importing podyn never touches the process-wide default one; the CLI
serves it on ``--metrics-port`` when asked, on 127.0.0.1 unless ``--metrics-address`` says otherwise (table names
and progress are nobody else's business by default).
"""

from __future__ import annotations

from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

REGISTRY = CollectorRegistry(auto_describe=True)

ITEMS_LOADED = Counter("podyn_items_loaded", "Items copied by the initial load", ["table"], registry=REGISTRY)
ITEMS_REJECTED = Counter(
    "podyn_items_rejected",
    "Items kept in podyn.rejected, not convertible",
    ["table"],
    registry=REGISTRY,
)
CHANGES_APPLIED = Counter(
    "podyn_changes_applied", "Stream records applied, by kind (upsert, delete)", ["table", "kind"], registry=REGISTRY
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


def serve(port: int, address: str = "127.0.0.1") -> WSGIServer:
    """Serve /metrics on ``port`` (0: any free port, see ``server_port``) from a daemon thread until ``shutdown()``."""
    server, _ = start_http_server(port, addr=address, registry=REGISTRY)
    return server
