"""A lean asyncio client for the few DynamoDB calls the API makes (GetItem, BatchGetItem, Query).

DynamoDB's wire protocol is one signed JSON POST per call. This module sends it with aiohttp, signs it
with botocore's own SigV4 signer and credentials (so the standard AWS credential chain, refresh of
temporary credentials included, is unchanged) and parses the JSON answer itself.

Why not boto3: measured with ``bench/dynamodb_load.py`` against DynamoDB Local on a 2-core VM
(20 000 items, 2 000 lookups one after another, medians of 5 runs; the server shares the cores):

==========================  =========  =========  ==========  ===============  ==========
client                      p50 ms     p99 ms     CPU ms      batch of 100     64 in
                                                  per lookup  p50 ms           flight/s
==========================  =========  =========  ==========  ===============  ==========
boto3 ``get_item``          0.92       7.03       0.80        5.14             961
boto3 in a thread pool      1.05       6.00       0.92        5.65             785
this client (aiohttp)       0.47       3.79       0.31        3.23             2 061
==========================  =========  =========  ==========  ===============  ==========

boto3's per-call CPU (parameter validation, the event hooks, the response parser) is the cost; a thread
pool adds a hop per lookup on top. aiobotocore 3.10, measured in a separate environment, sat between
(p50 0.8-1.2 ms, 0.6-1.1 ms CPU, ~850/s) and pins botocore below 1.43.118, older than the boto3 here.

Failures are classified by the same table as boto3's (:mod:`.errors`): an error answer is a
:class:`~.errors.ServiceError` with DynamoDB's code, no answer a :class:`~.errors.TransportError`; both
are retried by ``Settings.lookup_backoff`` while transient, then translated into the store's errors.
"""

from __future__ import annotations

import asyncio
import functools
import json
import zlib
from typing import Any
from urllib.parse import urlsplit
from urllib.request import getproxies, proxy_bypass

import aiohttp
import botocore.exceptions
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest

from precompute.adapters.dynamodb.client import Connection
from precompute.adapters.dynamodb.errors import ServiceError, TableMissing, TransportError, is_retryable, translated
from precompute.adapters.dynamodb.options import Settings

_TARGET = "DynamoDB_20120810."


class AsyncDynamoDB:
    """One aiohttp connection pool per process and event loop, reused by every lookup."""

    def __init__(self, connection: Connection, settings: Settings, pool_size: int = 64) -> None:
        self.url = connection.endpoint_url.rstrip("/") + "/"
        self.region = connection.region
        self._credentials = connection.session.get_credentials()
        self._timeout = aiohttp.ClientTimeout(total=settings.timeout_s)
        self._pool_size = pool_size
        self._proxy = _proxy_for(self.url)
        self._session: aiohttp.ClientSession | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        # A lookup is on a user's request path: retry throttling briefly, then answer with an error.
        self.backoff = settings.lookup_backoff

    async def call(self, operation: str, payload: dict[str, Any]) -> dict[str, Any]:
        """One call's answer, retried while it fails transiently; a missing table is :class:`TableMissing`,
        every other failure the store's error for it (:mod:`.errors`)."""
        body = json.dumps(payload, separators=(",", ":")).encode()
        with translated(f"DynamoDB {operation}"):
            return await self.backoff.acall(functools.partial(self._attempt, operation, body), is_retryable)

    async def _attempt(self, operation: str, body: bytes) -> dict[str, Any]:
        try:
            status, data, crc = await self._send(operation, body)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise TransportError(f"{type(exc).__name__}: {exc} ({self.url})") from exc
        if crc is not None and zlib.crc32(data) != crc:
            raise TransportError("response CRC32 mismatch")
        if status == 200:
            try:
                answer: dict[str, Any] = json.loads(data)
            except ValueError as exc:  # a proxy's page, a cut-off body: no answer from DynamoDB
                raise TransportError(f"unreadable answer: {data[:200]!r}") from exc
            return answer
        code, message = _error(data)
        if code == "ResourceNotFoundException":
            raise TableMissing(message)
        raise ServiceError(code, message, status)

    async def _send(self, operation: str, body: bytes) -> tuple[int, bytes, int | None]:
        request = AWSRequest(
            "POST",
            self.url,
            data=body,
            headers={"Content-Type": "application/x-amz-json-1.0", "X-Amz-Target": _TARGET + operation},
        )
        SigV4Auth(await self._frozen_credentials(), "dynamodb", self.region).add_auth(request)
        headers = dict(request.headers.items())
        headers["Accept-Encoding"] = "identity"  # the CRC32 DynamoDB sends covers the uncompressed body
        async with self._client().post(self.url, data=body, headers=headers, proxy=self._proxy) as response:
            data = await response.read()
            crc = response.headers.get("x-amz-crc32")
            return response.status, data, int(crc) if crc is not None else None

    async def _frozen_credentials(self) -> Any:
        credentials = self._credentials
        if credentials is None:
            raise botocore.exceptions.NoCredentialsError()  # translated with its fix, as boto3's would be
        # Refreshing temporary credentials is a blocking HTTP call: keep it off the event loop.
        refresh_needed = getattr(credentials, "refresh_needed", None)
        if refresh_needed is not None and refresh_needed():
            return await asyncio.to_thread(credentials.get_frozen_credentials)
        return credentials.get_frozen_credentials()

    def _client(self) -> aiohttp.ClientSession:
        loop = asyncio.get_running_loop()
        if self._session is None or self._session.closed or self._loop is not loop:
            # A session belongs to the loop it was made on; a new loop (a test, a restarted server) gets its own.
            connector = aiohttp.TCPConnector(limit=self._pool_size, ttl_dns_cache=300, keepalive_timeout=30)
            self._session = aiohttp.ClientSession(connector=connector, timeout=self._timeout)
            self._loop = loop
        return self._session

    async def close(self) -> None:
        if self._session is not None and self._loop is asyncio.get_running_loop():
            await self._session.close()
        self._session = None
        self._loop = None


def _proxy_for(url: str) -> str | None:
    """The HTTP(S)_PROXY that applies to ``url`` (honouring NO_PROXY), as boto3 would use it.

    Resolved once: aiohttp's ``trust_env`` looks it up again on every request, on a worker thread, which
    measured 0.3 ms of CPU per lookup (0.58 -> 0.26 ms without it).
    """
    parts = urlsplit(url)
    if parts.hostname is None or proxy_bypass(parts.hostname):
        return None
    return getproxies().get(parts.scheme)


def _error(data: bytes) -> tuple[str, str]:
    try:
        raw = json.loads(data)
    except ValueError:
        return "HTTPError", data[:200].decode("utf-8", "replace")
    code = str(raw.get("__type", "UnknownError")).rsplit("#", 1)[-1]
    message = str(raw.get("message") or raw.get("Message") or "")
    return code, message
