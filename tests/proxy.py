"""An HTTP forwarding proxy in front of DynamoDB Local that counts requests and injects errors.

DynamoDB Local never throttles, so retry behaviour is tested by putting this proxy between the real boto3
client and the real server: ``throttle("Scan", 2)`` answers the next two Scan requests the way DynamoDB does
when it throttles; everything else is relayed unchanged. Clients may also use it as their HTTP proxy
(HTTP_PROXY): requests then arrive in absolute form, which DynamoDB Local accepts as they are, and their
Proxy-Authorization values are recorded. Test code only, stdlib only; plain HTTP with a Content-Length body, which
is what botocore sends.
"""

from __future__ import annotations

import collections
import contextlib
import http.client
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Self
from urllib.parse import urlsplit

THROTTLING_TYPE = "com.amazonaws.dynamodb.v20120810#ProvisionedThroughputExceededException"
THROTTLING_MESSAGE = (
    "The level of configured provisioned throughput for the table was exceeded. "
    "Consider increasing your provisioning level with the UpdateTable API."
)
JSON_CONTENT_TYPE = "application/x-amz-json-1.0"

# Headers that describe one connection, not the message; http.client and the server set their own.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailers",
        "transfer-encoding",
        "upgrade",
        "content-length",
    }
)


def operation_of(target: str | None) -> str:
    """``DynamoDB_20120810.Scan`` -> ``Scan``; requests without a target count as ``""``."""
    return (target or "").rpartition(".")[2]


def forward(
    upstream: tuple[str, int], request: BaseHTTPRequestHandler, body: bytes
) -> tuple[int, list[tuple[str, str]], bytes]:
    """Send ``request`` (its method, path, headers and ``body``) on to ``upstream``; its status, headers and body,
    or a 502 when it cannot be reached."""
    connection = http.client.HTTPConnection(*upstream, timeout=60)
    try:
        # Host is part of the SigV4 signature, so it is forwarded as the client sent it.
        connection.putrequest(request.command, request.path, skip_host=True, skip_accept_encoding=True)
        for name, value in request.headers.items():
            if name.lower() not in HOP_BY_HOP:
                connection.putheader(name, value)
        connection.putheader("Content-Length", str(len(body)))
        connection.endheaders(body)
        response = connection.getresponse()
        return response.status, response.getheaders(), response.read()
    except OSError as exc:
        return 502, [("Content-Type", "text/plain")], f"upstream failed: {exc}".encode()
    finally:
        connection.close()


class ThrottlingProxy:
    def __init__(self, upstream_url: str) -> None:
        upstream = urlsplit(upstream_url)
        if upstream.scheme != "http" or upstream.hostname is None:
            raise ValueError(f"upstream must be http://host:port, not {upstream_url!r}")
        self._upstream = (upstream.hostname, upstream.port or 80)
        self._lock = threading.Lock()
        self._counts: collections.Counter[str] = collections.Counter()
        self._faults: dict[str, collections.deque[tuple[int, bytes]]] = collections.defaultdict(collections.deque)
        #: Per operation, the Proxy-Authorization values received (when clients use this as their HTTP proxy).
        self.proxy_authorization: dict[str, set[str]] = collections.defaultdict(set)
        #: Per operation, the JSON body of every request received (what was asked: TableName, Limit, Segment...).
        self.requests: dict[str, list[dict[str, object]]] = collections.defaultdict(list)
        #: Per operation, (time.monotonic() of the answer, CapacityUnits) of each answer that told its consumed
        #: capacity (ReturnConsumedCapacity): what the clients behind this proxy consumed, and when.
        self._consumed: dict[str, list[tuple[float, float]]] = collections.defaultdict(list)
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def endpoint_url(self) -> str:
        if self._server is None:
            raise RuntimeError("proxy is not started")
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def throttle(self, operation: str, times: int = 1) -> None:
        """Answer the next ``times`` requests of ``operation`` with DynamoDB's throttling error."""
        self.fail(operation, times, status=400, type=THROTTLING_TYPE, message=THROTTLING_MESSAGE)

    def fail(
        self,
        operation: str,
        times: int = 1,
        *,
        status: int = 500,
        type: str = "InternalServerError",
        message: str = "Internal server error (injected by the test proxy)",
    ) -> None:
        """Answer the next ``times`` requests of ``operation`` with an error; they never reach DynamoDB."""
        body = json.dumps({"__type": type, "message": message}, separators=(",", ":")).encode()
        with self._lock:
            self._faults[operation].extend([(status, body)] * times)

    def count(self, operation: str) -> int:
        """Requests of ``operation`` received so far, including the ones answered with an injected error."""
        with self._lock:
            return self._counts[operation]

    @property
    def counts(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)

    def consumed(self, operation: str) -> list[tuple[float, float]]:
        """(time of the answer, capacity units) of every answer to ``operation`` that told its consumed capacity."""
        with self._lock:
            return list(self._consumed[operation])

    def _record_consumed(self, operation: str, body: bytes) -> None:
        try:
            answer = json.loads(body)
        except ValueError:
            return
        consumed = answer.get("ConsumedCapacity") if isinstance(answer, dict) else None
        if isinstance(consumed, dict) and "CapacityUnits" in consumed:
            with self._lock:
                self._consumed[operation].append((time.monotonic(), float(consumed["CapacityUnits"])))

    def pending_faults(self, operation: str) -> int:
        with self._lock:
            return len(self._faults[operation])

    def reset(self) -> None:
        with self._lock:
            self._counts.clear()
            self._faults.clear()
            self.requests.clear()
            self._consumed.clear()

    def _take(self, operation: str) -> tuple[int, bytes] | None:
        with self._lock:
            self._counts[operation] += 1
            queue = self._faults.get(operation)
            return queue.popleft() if queue else None

    def start(self) -> Self:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            # HTTP/1.1 lets botocore keep its pooled connections open, as it would against AWS.
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                self._relay()

            def do_GET(self) -> None:
                self._relay()

            def log_message(self, format: str, *args: object) -> None:
                pass

            def _reply(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
                self.send_response(status)
                for name, value in headers:
                    if name.lower() not in HOP_BY_HOP and name.lower() not in ("server", "date"):
                        self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _relay(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                operation = operation_of(self.headers.get("X-Amz-Target"))
                if "Proxy-Authorization" in self.headers:
                    with proxy._lock:
                        proxy.proxy_authorization[operation].add(self.headers["Proxy-Authorization"])
                with proxy._lock, contextlib.suppress(ValueError):
                    proxy.requests[operation].append(json.loads(body or b"{}"))
                fault = proxy._take(operation)
                if fault is not None:
                    status, fault_body = fault
                    self._reply(status, [("Content-Type", JSON_CONTENT_TYPE)], fault_body)
                    return
                status, headers, answer = forward(proxy._upstream, self, body)
                if status == 200:
                    proxy._record_consumed(operation, answer)
                self._reply(status, headers, answer)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, name="throttling-proxy", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def __enter__(self) -> Self:
        if self._server is None:
            self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
