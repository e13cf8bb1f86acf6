"""Optional token auth: ``X-API-Key: <token>`` (``auth = "api-key"``) or ``Authorization: Bearer <token>``
(``auth = "bearer"``), tokens from the environment variable named by ``[serve] auth_tokens_env``.

Tokens are compared as SHA-256 digests with :func:`hmac.compare_digest`, against every configured token
without stopping at a match, so neither the time to answer nor its variation tells how much of a token was
right, or which one. With auth off the endpoints are not wrapped at all: the hit path pays nothing.

``/healthz`` and ``/readyz`` stay open (probes carry no credentials), as does ``/openapi.json``; the
predictions and ``/metrics`` need a token.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Awaitable, Callable

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from precompute.api.metrics import Metrics

Endpoint = Callable[[Request], Awaitable[Response]]


class Tokens:
    def __init__(self, scheme: str, tokens: tuple[str, ...]) -> None:
        if scheme not in ("api-key", "bearer"):
            raise ValueError(f"unknown auth scheme {scheme!r}")
        self.scheme = scheme
        self._digests = [hashlib.sha256(t.encode()).digest() for t in tokens]

    def presented(self, request: Request) -> str | None:
        if self.scheme == "api-key":
            return request.headers.get("x-api-key")
        header = request.headers.get("authorization")
        if header is None:
            return None
        kind, _, token = header.partition(" ")
        return token.strip() if kind.lower() == "bearer" else None

    def accepts(self, token: str | None) -> bool:
        if token is None:
            return False
        digest = hashlib.sha256(token.encode("utf-8", "surrogateescape")).digest()
        accepted = False
        for known in self._digests:
            accepted |= hmac.compare_digest(digest, known)
        return accepted

    def guard(self, endpoint: Endpoint, metrics: Metrics) -> Endpoint:
        challenge = {"WWW-Authenticate": 'Bearer realm="precompute"'} if self.scheme == "bearer" else {}
        where = "an X-API-Key header" if self.scheme == "api-key" else "an Authorization: Bearer header"

        async def guarded(request: Request) -> Response:
            if not self.accepts(self.presented(request)):
                metrics.auth_failure()
                return JSONResponse({"error": f"missing or wrong token: send {where}"}, 401, headers=challenge)
            return await endpoint(request)

        return guarded
