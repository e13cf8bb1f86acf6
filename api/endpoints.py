"""The endpoints: the three predictions, written once around :func:`answered`, and a model's readiness.

:func:`answered` turns an :data:`Answer` into a Starlette endpoint and is the one place that times a
request, records it in the metrics, and turns :class:`~precompute.api.responses.LookupFailed` into its JSON
error. The hot path stays as short as it was: the endpoint awaits the lookup's answer coroutine directly
(:class:`Predictions` returns it without awaiting it), so a hit runs no more coroutine frames than the
closures this replaces did, one less in fact.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from precompute.api.live import LiveVersion
from precompute.api.lookup import Lookup
from precompute.api.metrics import Metrics
from precompute.api.responses import LookupFailed
from precompute.config import Config

if TYPE_CHECKING:
    from precompute.api.fallback import OnlineModel

Endpoint = Callable[[Request], Awaitable[Response]]
Answer = Callable[[Request, float], Awaitable[tuple[bytes, str]]]
"""``answer(request, started)`` -> (JSON body, source); raises LookupFailed. ``started``: perf_counter at
the start of the request, from which the request's deadline counts."""
Record = Callable[[str, int, float], None]
"""``record(source, status, seconds)``: :meth:`Metrics.request`, or :func:`not_recorded`."""


def not_recorded(source: str, status: int, seconds: float) -> None:
    """The ``record`` of ``[serve] metrics = false``."""


def answered(answer: Answer, record: Record) -> Endpoint:
    """The endpoint for ``answer``: timed, recorded, and a LookupFailed answered as its JSON error."""
    clock = time.perf_counter

    async def endpoint(request: Request) -> Response:
        started = clock()
        try:
            body, source = await answer(request, started)
        except LookupFailed as exc:
            record(exc.source, exc.status, clock() - started)
            return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)
        record(source, 200, clock() - started)
        return Response(body, media_type="application/json")

    return endpoint


class Predictions:
    """``GET /predict/{key}``, ``GET /predict?feature=value...`` and ``POST /predict``, as :data:`Answer`."""

    def __init__(self, lookup: Lookup, max_body_bytes: int) -> None:
        self.lookup = lookup
        self.max_body_bytes = max_body_bytes

    def key(self, request: Request, started: float) -> Awaitable[tuple[bytes, str]]:
        return self.lookup.one(request.path_params["key"], started)

    def features(self, request: Request, started: float) -> Awaitable[tuple[bytes, str]]:
        return self.lookup.by_features(single_values(request), started)

    async def batch(self, request: Request, started: float) -> tuple[bytes, str]:
        payload = await read_json(request, self.max_body_bytes)
        return await self.lookup.many(payload, started), "batch"


class Operations:
    """One model's readiness, as ``/readyz`` answers it (api/models.py answers for every model)."""

    def __init__(
        self, config: Config, live: LiveVersion, lookup: Lookup, metrics: Metrics, online: OnlineModel | None
    ) -> None:
        self.store = config.store_url.redacted()
        self.live = live
        self.lookup = lookup
        self.metrics = metrics
        self.online = online

    def readiness(self) -> dict[str, Any]:
        """This model's readiness in this process."""
        live = self.live
        online_ready = self.online is not None and self.online.model is not None
        # Degraded: the store cannot answer (or nothing is published) and the model does. A version refused
        # for its format is not that: the store answers, with data this release must not serve.
        degraded = not live.ready and live.refused is None and online_ready and self.lookup.online_may_answer()
        state: dict[str, Any] = {
            "ready": live.ready or degraded,
            "model_version": live.version,
            "store": self.store,
            "fallback": self.lookup.fallback,
        }
        if live.error is not None:
            state["error"] = live.error
        elif live.refused is not None:
            state["error"] = live.refused
        elif live.version is None:
            state["error"] = "nothing is published yet: run `precompute run`"
        if degraded:
            state["degraded"] = "the store cannot answer; the online model does"
        return state


def single_values(request: Request) -> dict[str, str]:
    """The query's features; a feature given twice is ambiguous (which one is the key?), so 400."""
    items = request.query_params.multi_items()
    values = dict(items)
    if len(values) != len(items):
        twice = sorted(name for name, count in Counter(name for name, _ in items).items() if count > 1)
        raise LookupFailed(400, f"feature(s) given more than once: {', '.join(twice)}; give each once")
    return values


async def read_json(request: Request, limit: int) -> object:
    """The request's JSON body, at most ``limit`` bytes (413 above, also without a Content-Length); a body
    not declared as JSON is 415."""
    kind = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if kind != "application/json" and not kind.endswith("+json"):
        raise LookupFailed(415, f"the body must be sent as Content-Type: application/json, not {kind or 'none'!r}")
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > limit:
        raise LookupFailed(413, f"the body is {length} bytes; at most {limit}")
    chunks = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise LookupFailed(413, f"the body is over {limit} bytes")
        chunks.append(chunk)
    try:
        return json.loads(b"".join(chunks))
    except (ValueError, RecursionError):  # not JSON, not UTF-8, or nested deeper than the parser goes
        raise LookupFailed(400, 'the body must be JSON: {"keys": [...]} or {"features": [{...}]}') from None


async def http_error(request: Request, exc: Exception) -> Response:
    """Starlette's own errors (no route: e.g. a key with a newline, which no path pattern matches; a wrong
    method) in the same JSON shape as ours, rather than plain text."""
    assert isinstance(exc, HTTPException)
    return JSONResponse({"error": exc.detail}, status_code=exc.status_code, headers=exc.headers)
