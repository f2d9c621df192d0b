"""A fast path to DynamoDB's and DynamoDB Streams' JSON API: SigV4-signed HTTP, response bodies parsed by orjson.

botocore parses every response by walking its shape model over each attribute value, and parses timestamps with
dateutil; for Scan and GetRecords that is about two thirds of podyn's CPU. :class:`RawJsonClient` sends the same
signed requests (botocore's ``SigV4Auth``, credentials of the boto3 client it is built from) over a urllib3 pool
and returns the response JSON as it came: binary values as base64 text and timestamps as seconds since the epoch,
both of which ``core.values`` and ``core.changes`` accept.

Code written against a boto3 client keeps working: errors are botocore's ``ClientError`` with the same
``error_response`` shape (so dispatching on ``e.response["Error"]["Code"]`` is unchanged), network failures are
botocore's connection exceptions, and retries follow botocore's ``standard`` mode.

It is not a general AWS client: JSON protocol services only, the endpoint as the client was configured (no endpoint
rules), no parameter validation. The caller passes the proxy and CA bundle boto3 would use
(``source.dynamodb.make_client`` resolves them as botocore does). Everything else stays with boto3.
"""

from __future__ import annotations

import base64
import dataclasses
import http.client
import logging
import random
import time
import urllib.parse
from collections.abc import Callable, Mapping
from types import TracebackType
from typing import Any, Self

import orjson
import urllib3
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from botocore.exceptions import (
    ClientError,
    ConnectionClosedError,
    ConnectTimeoutError,
    EndpointConnectionError,
    HTTPClientError,
    NoCredentialsError,
    ReadTimeoutError,
    SSLError,
)
from botocore.exceptions import ConnectionError as BotoConnectionError
from botocore.parsers import ResponseParserError

from podyn_py import retry

__all__ = ["RawJsonClient"]

_log = logging.getLogger(__name__)

_RETRY_AFTER_EXTRA = 5.0
_CONTENT_TYPE = "application/x-amz-json-1.0"
_NOT_ERROR_FIELDS = frozenset({"__type", "message", "Message"})


def _pool_manager(proxy_url: str | None, **options: Any) -> urllib3.PoolManager:
    """A connection pool, through ``proxy_url`` if given (HTTPS endpoints are tunnelled with CONNECT).

    Credentials in the proxy URL (``http://user:password@proxy:3128``) become a Proxy-Authorization header, as
    botocore sends them.
    """
    if proxy_url is None:
        return urllib3.PoolManager(**options)
    parts = urllib.parse.urlsplit(proxy_url)
    headers = None
    if parts.username is not None:
        user, password = urllib.parse.unquote(parts.username), urllib.parse.unquote(parts.password or "")
        headers = urllib3.make_headers(proxy_basic_auth=f"{user}:{password}")
        proxy_url = parts._replace(netloc=parts.netloc.rpartition("@")[2]).geturl()
    return urllib3.ProxyManager(proxy_url, proxy_headers=headers, **options)


class RawJsonClient:
    """Calls of one JSON-protocol AWS service (``dynamodb`` or ``dynamodbstreams``), answered as wire-shaped dicts.

    Endpoint, region, signing name, JSON target prefix and timeouts come from ``client`` (a boto3 client); so do
    the credentials unless ``credentials`` is given (e.g. ``boto3.Session.get_credentials()``, the public way).
    They are frozen anew for each request, so refreshable credentials keep working. ``pool_size`` (default: the
    client's ``max_pool_connections``) bounds the connections kept open; the client is thread-safe.
    ``max_attempts`` counts every attempt, the first included (botocore's ``max_attempts`` counts retries).
    """

    def __init__(
        self,
        client: Any,
        *,
        credentials: Credentials | None = None,
        pool_size: int | None = None,
        max_attempts: int = 10,
        proxy_url: str | None = None,
        ca_bundle: str | None = None,
        max_backoff: float = 20.0,
        sleep: Callable[[float], None] = time.sleep,
        random: Callable[[], float] = random.random,
    ) -> None:
        if max_attempts < 1:
            raise ValueError(f"max_attempts must be at least 1, not {max_attempts}")
        meta = client.meta
        model = meta.service_model
        if model.protocol != "json":
            raise ValueError(f"{model.service_name} speaks {model.protocol!r}, not the JSON protocol")
        self.endpoint_url: str = meta.endpoint_url
        self.region: str = meta.region_name
        self.signing_name: str = model.signing_name
        self.target_prefix: str = model.metadata["targetPrefix"]
        self.max_attempts = max_attempts
        self._content_type = f"application/x-amz-json-{model.metadata.get('jsonVersion', '1.0')}"
        self._url = self.endpoint_url.rstrip("/") + "/"
        # botocore has no public accessor for a client's credentials; this is the object its own signer refreshes.
        self._credentials: Credentials | None = (
            credentials if credentials is not None else client._request_signer._credentials
        )
        self._throttled_backoff = dataclasses.replace(retry.REQUEST_THROTTLED, cap=max_backoff)
        self._failed_backoff = dataclasses.replace(retry.REQUEST_FAILED, cap=max_backoff)
        self._sleep = sleep
        self._random = random
        config = meta.config
        self._pool = _pool_manager(
            proxy_url,
            num_pools=2,
            maxsize=pool_size or config.max_pool_connections,
            retries=False,
            timeout=urllib3.Timeout(connect=config.connect_timeout, read=config.read_timeout),
            ca_certs=ca_bundle,
        )

    # boto3-style spellings of the calls podyn makes, so this can stand in for a client (e.g. a StreamsClient).
    def scan(self, **params: Any) -> dict[str, Any]:
        return self.call("Scan", params)

    def batch_get_item(self, **params: Any) -> dict[str, Any]:
        return self.call("BatchGetItem", params)

    def describe_stream(self, **params: Any) -> dict[str, Any]:
        return self.call("DescribeStream", params)

    def get_shard_iterator(self, **params: Any) -> dict[str, Any]:
        return self.call("GetShardIterator", params)

    def get_records(self, **params: Any) -> dict[str, Any]:
        return self.call("GetRecords", params)

    def call(self, operation: str, params: Mapping[str, Any]) -> dict[str, Any]:
        """POST one operation and return the response body, parsed and otherwise untouched (no ResponseMetadata).

        ``params`` are in wire form; ``bytes`` anywhere in them (boto3-style binary values, e.g. an
        ``ExclusiveStartKey`` kept from boto3) are sent as base64 text, so keys from either path work.
        """
        body = orjson.dumps(params, default=_bytes_as_base64)
        target = f"{self.target_prefix}.{operation}"
        for attempt in range(1, self.max_attempts + 1):
            try:
                response = self._send(target, body)
            except (BotoConnectionError, HTTPClientError) as error:
                if attempt == self.max_attempts:
                    raise
                delay = self._failed_backoff.delay(attempt, self._random)
                failure = str(error)
            else:
                if response.status == 200:
                    return _parse(response.data)
                error_response = _error_response(response, attempt - 1)
                code = error_response["Error"]["Code"]
                throttled = code in retry.THROTTLING_CODES
                if not (throttled or code in retry.TRANSIENT_CODES or response.status in retry.TRANSIENT_STATUSES):
                    raise ClientError(error_response, operation)  # type: ignore[arg-type]
                if attempt == self.max_attempts:
                    error_response["ResponseMetadata"]["MaxAttemptsReached"] = True
                    raise ClientError(error_response, operation)  # type: ignore[arg-type]
                delay = (self._throttled_backoff if throttled else self._failed_backoff).delay(attempt, self._random)
                delay = _honour_retry_after(delay, response.headers.get("x-amz-retry-after"))
                failure = f"{code}: {error_response['Error']['Message']}"
            _log.debug("%s attempt %d failed (%s); retrying in %.3f s", target, attempt, failure, delay)
            self._sleep(delay)
        raise AssertionError("unreachable")  # pragma: no cover

    def signed_headers(self, target: str, body: bytes) -> dict[str, str]:
        """The headers of one request, signed with SigV4 by freshly frozen credentials."""
        if self._credentials is None:
            raise NoCredentialsError()
        request = AWSRequest(
            method="POST",
            url=self._url,
            data=body,
            headers={
                "Content-Type": self._content_type,
                "X-Amz-Target": target,
                "Accept-Encoding": "identity",
                "User-Agent": "podyn_py-fastpath",
            },
        )
        SigV4Auth(self._credentials.get_frozen_credentials(), self.signing_name, self.region).add_auth(request)
        return dict(request.headers.items())

    def close(self) -> None:
        self._pool.clear()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _send(self, target: str, body: bytes) -> urllib3.BaseHTTPResponse:
        """One attempt; urllib3's failures become the botocore exceptions boto3 callers already catch."""
        headers = self.signed_headers(target, body)
        url = self._url
        try:
            return self._pool.urlopen("POST", url, body=body, headers=headers, retries=False, redirect=False)
        except urllib3.exceptions.NewConnectionError as error:  # before ConnectTimeoutError, its base class
            raise EndpointConnectionError(endpoint_url=url, error=error) from error
        except urllib3.exceptions.ConnectTimeoutError as error:
            raise ConnectTimeoutError(endpoint_url=url, error=error) from error
        except urllib3.exceptions.ReadTimeoutError as error:
            raise ReadTimeoutError(endpoint_url=url, error=error) from error
        except urllib3.exceptions.SSLError as error:
            raise SSLError(endpoint_url=url, error=error) from error
        except urllib3.exceptions.ProtocolError as error:
            raise ConnectionClosedError(endpoint_url=url, error=error) from error
        except urllib3.exceptions.HTTPError as error:
            raise HTTPClientError(error=error) from error


def _bytes_as_base64(value: Any) -> str:
    if isinstance(value, bytes | bytearray | memoryview):
        return base64.b64encode(value).decode("ascii")
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def _parse(data: bytes) -> dict[str, Any]:
    try:
        parsed = orjson.loads(data)
    except orjson.JSONDecodeError as error:
        raise ResponseParserError(f"response is not JSON: {error}") from error
    if not isinstance(parsed, dict):
        raise ResponseParserError(f"response is a JSON {type(parsed).__name__}, not an object")
    return parsed


def _honour_retry_after(delay: float, header: str | None) -> float:
    """botocore raises the delay to ``x-amz-retry-after`` (milliseconds), by at most 5 s."""
    if header is None:
        return delay
    try:
        wanted = int(header) / 1000.0
    except ValueError:
        return delay
    return max(delay, min(wanted, delay + _RETRY_AFTER_EXTRA)) if wanted >= 0 else delay


def _error_response(response: urllib3.BaseHTTPResponse, retries: int) -> dict[str, Any]:
    """What botocore's JSON parser makes of an error response, plus the fields its retry handler adds."""
    try:
        body = orjson.loads(response.data) if response.data else {}
    except orjson.JSONDecodeError:
        body = {}
    if not isinstance(body, dict):
        body = {}
    headers = response.headers
    code = str(body.get("__type") or headers.get("x-amzn-ErrorType") or "")
    code = code.rpartition("#")[2].partition(":")[0]
    message = body.get("message", body.get("Message"))
    if not code:
        code = str(response.status)
        message = message or http.client.responses.get(response.status, "")
    # Modeled exceptions' own fields (e.g. CancellationReasons) sit next to Error, as botocore puts them.
    error_response = {name: value for name, value in body.items() if name not in _NOT_ERROR_FIELDS}
    error_response["Error"] = {"Code": code, "Message": str(message or "")}
    error_response["ResponseMetadata"] = {
        "RequestId": headers.get("x-amzn-RequestId", ""),
        "HTTPStatusCode": response.status,
        "HTTPHeaders": {name.lower(): value for name, value in headers.items()},
        "RetryAttempts": retries,
    }
    return error_response
