"""The HTTP API (Starlette).

    GET  /predict/{key}            one key            -> {"key", "prediction", "source", "model_version"}
    GET  /predict?feature=value..  raw features, snapped to the grid key
    POST /predict                  {"keys": [...]} or {"features": [{...}, ...]} -> {"model_version", "results"}
    GET  /healthz                  the process is up
    GET  /readyz                   the store answers and a version is live (or the online model can answer)
    GET  /metrics                  Prometheus text format
    GET  /openapi.json             the OpenAPI 3 description

Errors: a malformed key is 400, a key outside the space 404 (with the reason), a key over the size limit
414, too many keys or too large a body 413, a missing token 401, a non-finite online prediction 422, a store
failure or a late model 503 (with Retry-After). A hit is answered by splicing the stored bytes (already the
JSON the API returns) into the response. ``source`` says where an answer came from: "precomputed" (the
store or the hot-key cache), "online" (the model, on a miss) or "default" (the configured default value,
when the model could not answer within the deadline).

The serving path, its options and its measurements are described in docs/serving.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from precompute.adapters import open_backend, open_reader
from precompute.api.cache import HotCache, NegativeCache
from precompute.api.live import LiveVersion
from precompute.api.logs import Summary
from precompute.api.lookup import Lookup
from precompute.api.metrics import CONTENT_TYPE, Metrics, escape, gauge
from precompute.api.openapi import describe
from precompute.api.responses import LookupFailed
from precompute.config import Config, ConfigError
from precompute.space import GridSpace
from precompute.store import Backend, Reader

if TYPE_CHECKING:
    from precompute.api.batching import Batcher
    from precompute.api.fallback import Online, OnlineModel, Scored
    from precompute.api.writeback import WriteBack

Endpoint = Callable[[Request], Awaitable[Response]]


def create_app(config: Config, reader: Reader | None = None, backend: Backend | None = None) -> Starlette:
    """The app for ``config``. ``reader`` and ``backend`` replace the ones opened from the store URL (tests
    inject faults through them); the backend is used only by the fallback (version records, write-back)."""
    serve = config.serve
    reader = reader or open_reader(config.store_url)
    live = LiveVersion(reader, serve.refresh_seconds)
    metrics = Metrics()
    cache = HotCache(serve.cache_bytes) if serve.cache_bytes else None
    negative = NegativeCache(serve.negative_ttl_seconds) if serve.negative_ttl_seconds else None
    opened: list[Backend] = []

    def store_backend() -> Backend:
        if backend is not None:
            return backend
        opened.append(open_backend(config.store_url))
        return opened[-1]

    batcher: Batcher[Online, Scored] | None = None
    online: OnlineModel | None = None
    writeback: WriteBack | None = None
    if serve.fallback != "off":
        if not isinstance(config.space, GridSpace):
            raise ConfigError(
                f'[serve] fallback = "{serve.fallback}": the keys of a table space carry no features, so a miss '
                'cannot be scored online. Fix: fallback = "off"'
            )
        # Imported here: with the fallback off, serving never imports the model code (nor TensorFlow).
        from precompute.api.batching import Batcher, make_policy
        from precompute.api.fallback import OnlineModel
        from precompute.api.writeback import WriteBack

        writeback = WriteBack(store_backend, metrics, serve.write_back_ttl_seconds) if serve.write_back else None
        online = OnlineModel(config, store_backend, writeback)
        policy = make_policy(serve.batch_policy, serve.batch_max_size, serve.batch_target_ms / 1000)
        batcher = Batcher(online.score, policy, metrics, serve.batch_max_wait_ms / 1000, serve.max_pending)
    lookup = Lookup(config, reader, live, metrics, cache, negative, batcher)
    record = metrics.request if serve.metrics else _not_recorded
    clock = time.perf_counter

    async def predict_key(request: Request) -> Response:
        started = clock()
        try:
            body, source = await lookup.one(request.path_params["key"], started)
        except LookupFailed as exc:
            record(exc.source, exc.status, clock() - started)
            return _error(exc)
        record(source, 200, clock() - started)
        return Response(body, media_type="application/json")

    async def predict_features(request: Request) -> Response:
        started = clock()
        try:
            body, source = await lookup.by_features(dict(request.query_params), started)
        except LookupFailed as exc:
            record(exc.source, exc.status, clock() - started)
            return _error(exc)
        record(source, 200, clock() - started)
        return Response(body, media_type="application/json")

    async def predict_batch(request: Request) -> Response:
        started = clock()
        try:
            payload = await _json_body(request, serve.max_body_bytes)
            body = await lookup.many(payload, started)
        except LookupFailed as exc:
            record(exc.source, exc.status, clock() - started)
            return _error(exc)
        record("batch", 200, clock() - started)
        return Response(body, media_type="application/json")

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz(request: Request) -> Response:
        online_ready = online is not None and online.model is not None
        degraded = not live.ready and online_ready and lookup.online_may_answer()
        state: dict[str, Any] = {
            "ready": live.ready or degraded,
            "model_version": live.version,
            "store": config.store_url.redacted(),
            "fallback": lookup.fallback,
        }
        if live.error is not None:
            state["error"] = live.error
        elif live.version is None:
            state["error"] = "nothing is published yet: run `precompute run`"
        if degraded:
            state["degraded"] = "the store cannot answer; the online model does"
        return JSONResponse(state, status_code=200 if state["ready"] else 503)

    async def metrics_endpoint(request: Request) -> Response:
        return Response(metrics.render(), media_type=CONTENT_TYPE)

    openapi_body = json.dumps(describe(config)).encode()

    async def openapi(request: Request) -> Response:
        return Response(openapi_body, media_type="application/json")

    def live_lines() -> list[str]:
        lines = gauge("precompute_ready", "1 when a version is live and the store answers.", int(live.ready))
        lines += gauge("precompute_store_up", "0 while the store's alias cannot be read.", int(live.error is None))
        lines += [
            "# HELP precompute_live_version_info The version being served.",
            "# TYPE precompute_live_version_info gauge",
        ]
        if live.version is not None:
            lines.append(f'precompute_live_version_info{{version="{escape(live.version)}"}} 1')
        lines += gauge(
            "precompute_fallback_mode", "0 off, 1 on, 2 store-down.", ("off", "on", "store-down").index(lookup.fallback)
        )
        return lines

    metrics.gauges.append(live_lines)
    if cache is not None:
        metrics.gauges.append(cache.metrics)
    if negative is not None:
        metrics.gauges.append(negative.metrics)
    if batcher is not None:
        metrics.gauges.append(batcher.metrics_lines)

    guard: Callable[[Endpoint], Endpoint] = lambda endpoint: endpoint  # noqa: E731
    if serve.auth != "off":
        from precompute.api.auth import Tokens

        tokens = Tokens(serve.auth, serve.auth_tokens)
        guard = lambda endpoint: tokens.guard(endpoint, metrics)  # noqa: E731

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await live.start()
        summary = asyncio.create_task(Summary(metrics, cache).run(), name="precompute-log-summary")
        try:
            if batcher is not None and online is not None:
                batcher.start()
                await batcher.run_in_worker(online.load)  # TensorFlow loads and warms up before serving
                assert lookup.answers is not None
                lookup.answers.default = online.default
            # What is alive now (modules, the app, the model) lives as long as the process: take it out of
            # the cyclic GC's scans. Lookups in flight get promoted to the oldest generation, so without this
            # a full collection of every loaded object ran about twice a second under load (30 ms each on a
            # Redis backend: p99 35 ms at 16 connections; 1.9 ms frozen, docs/serving.md).
            gc.collect()
            gc.freeze()
            yield
        finally:
            gc.unfreeze()
            summary.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await summary
            if batcher is not None:
                await batcher.close(serve.shutdown_seconds)
            if writeback is not None:
                await asyncio.to_thread(writeback.close)
            await live.stop()
            await reader.aclose()
            for opened_backend in opened:
                opened_backend.close()

    routes = [
        Route("/predict/{key:path}", guard(predict_key), methods=["GET"]),
        Route("/predict", guard(predict_features), methods=["GET"]),
        Route("/predict", guard(predict_batch), methods=["POST"]),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        Route("/openapi.json", openapi, methods=["GET"]),
    ]
    if serve.metrics:
        routes.append(Route("/metrics", guard(metrics_endpoint), methods=["GET"]))
    app = Starlette(routes=routes, lifespan=lifespan, exception_handlers={HTTPException: _http_error})
    app.state.live = live
    app.state.metrics = metrics
    app.state.lookup = lookup
    app.state.cache = cache
    app.state.batcher = batcher
    app.state.online = online
    return app


def _not_recorded(source: str, status: int, seconds: float) -> None:
    pass


async def _json_body(request: Request, limit: int) -> object:
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


async def _http_error(request: Request, exc: Exception) -> Response:
    # Starlette's own errors (no route: e.g. a key with a newline, which no path pattern matches; a wrong
    # method) in the same JSON shape as ours, rather than plain text.
    assert isinstance(exc, HTTPException)
    return JSONResponse({"error": exc.detail}, status_code=exc.status_code, headers=exc.headers)


def _error(exc: LookupFailed) -> Response:
    return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)
