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

Three pieces, one per concern: :class:`Components` (what the endpoints share, built from the config),
the endpoints (api/endpoints.py) and :class:`Lifespan` (start-up and shutdown); :func:`create_app` puts
them together. The serving path, its options and its measurements are described in docs/serving.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.routing import Route

from precompute.adapters import open_backend, open_reader
from precompute.api.cache import HotCache, NegativeCache
from precompute.api.endpoints import Endpoint, Operations, Predictions, answered, http_error, not_recorded
from precompute.api.live import LiveVersion
from precompute.api.logs import Summary
from precompute.api.lookup import Lookup
from precompute.api.metrics import Metrics
from precompute.api.misses import MissRecorder
from precompute.config import Config, ConfigError
from precompute.space import GridSpace
from precompute.store import Backend, Reader, StoreURL

if TYPE_CHECKING:
    from precompute.api.batching import Batcher
    from precompute.api.fallback import Online, OnlineModel, Scored
    from precompute.api.workers import Workers
    from precompute.api.writeback import WriteBack


def create_app(
    config: Config, reader: Reader | None = None, backend: Backend | None = None, workers: Workers | None = None
) -> Starlette:
    """The app for ``config``. ``reader`` and ``backend`` replace the ones opened from the store URL (tests
    inject faults through them); the backend is used only to write online answers back. ``workers``: this
    process is one of several workers (api/workers.py), whose ``/metrics`` and ``/readyz`` answer for all."""
    parts = Components.build(config, reader, backend)
    serve = config.serve
    record = parts.metrics.request if serve.metrics else not_recorded
    predictions = Predictions(parts.lookup, serve.max_body_bytes)
    operations = Operations(config, parts.live, parts.lookup, parts.metrics, parts.online, workers)
    if workers is not None:
        workers.bind(parts.metrics, operations.readiness)

    guard: Callable[[Endpoint], Endpoint] = lambda endpoint: endpoint  # noqa: E731
    if serve.auth != "off":  # with auth off the endpoints are not wrapped at all: a hit pays nothing
        from precompute.api.auth import Tokens

        tokens = Tokens(serve.auth, serve.auth_tokens)
        guard = lambda endpoint: tokens.guard(endpoint, parts.metrics)  # noqa: E731

    routes = [
        Route("/predict/{key:path}", guard(answered(predictions.key, record)), methods=["GET"]),
        Route("/predict", guard(answered(predictions.features, record)), methods=["GET"]),
        Route("/predict", guard(answered(predictions.batch, record)), methods=["POST"]),
        Route("/healthz", operations.healthz, methods=["GET"]),
        Route("/readyz", operations.readyz, methods=["GET"]),
        Route("/openapi.json", operations.openapi, methods=["GET"]),
    ]
    if serve.metrics:
        routes.append(Route("/metrics", guard(operations.prometheus), methods=["GET"]))
    app = Starlette(routes=routes, lifespan=Lifespan(parts, workers), exception_handlers={HTTPException: http_error})
    app.state.live = parts.live
    app.state.metrics = parts.metrics
    app.state.lookup = parts.lookup
    app.state.cache = parts.cache
    app.state.batcher = parts.batcher
    app.state.online = parts.online
    app.state.writeback = parts.writeback
    app.state.misses = parts.misses
    return app


@dataclass(eq=False)
class Components:
    """What the endpoints and the lifespan share. The online pieces are None with ``fallback = "off"``."""

    config: Config
    reader: Reader
    live: LiveVersion
    metrics: Metrics
    lookup: Lookup
    cache: HotCache | None
    negative: NegativeCache | None
    batcher: Batcher[Online, Scored] | None
    online: OnlineModel | None
    writeback: WriteBack | None
    backend: WriteBackend | None
    misses: MissRecorder | None = None

    @classmethod
    def build(cls, config: Config, reader: Reader | None = None, backend: Backend | None = None) -> Components:
        serve = config.serve
        reader = reader or open_reader(config.store_url)
        live = LiveVersion(reader, serve.refresh_seconds)
        metrics = Metrics()
        # A table space's live version takes refreshed answers (precompute refresh): what the caches keep of
        # it lasts at most refresh_seconds. A grid version never changes once published.
        changing = not isinstance(config.space, GridSpace)
        ttl = serve.refresh_seconds if changing else None
        negative_ttl = (
            min(serve.negative_ttl_seconds, serve.refresh_seconds) if changing else serve.negative_ttl_seconds
        )
        cache = HotCache(serve.cache_bytes, ttl) if serve.cache_bytes else None
        negative = NegativeCache(negative_ttl) if negative_ttl else None
        batcher: Batcher[Online, Scored] | None = None
        online: OnlineModel | None = None
        writeback: WriteBack | None = None
        store: WriteBackend | None = None
        misses: MissRecorder | None = None
        if serve.record_misses and isinstance(config.space, GridSpace):
            store = WriteBackend(config.store_url, backend)
            misses = MissRecorder(store, metrics, serve.misses_flush_seconds, serve.misses_max_keys)
        if serve.fallback != "off":
            if not isinstance(config.space, GridSpace):
                raise ConfigError(
                    f'[serve] fallback = "{serve.fallback}": the keys of a table space carry no features, so a '
                    'miss cannot be scored online. Fix: fallback = "off"'
                )
            # Imported here: with the fallback off, serving never imports the model code (nor TensorFlow).
            from precompute.api.batching import Batcher, make_policy
            from precompute.api.fallback import OnlineModel
            from precompute.api.writeback import WriteBack

            if serve.write_back:
                store = store or WriteBackend(config.store_url, backend)
                writeback = WriteBack(store, metrics, serve.write_back_ttl_seconds)
            online = OnlineModel(config, live.record, writeback)
            policy = make_policy(serve.batch_policy, serve.batch_max_size, serve.batch_target_ms / 1000)
            batcher = Batcher(online.score, policy, metrics, serve.batch_max_wait_ms / 1000, serve.max_pending)
        lookup = Lookup(config, reader, live, metrics, cache, negative, batcher, misses)
        # Read at scrape time, in this order in the exposition.
        metrics.add_source(live.families)
        metrics.add_source(lookup.families)
        if cache is not None:
            metrics.add_source(cache.families)
        if negative is not None:
            metrics.add_source(negative.families)
        if batcher is not None:
            metrics.add_source(batcher.families)
        if misses is not None:
            metrics.add_source(misses.families)
        return cls(config, reader, live, metrics, lookup, cache, negative, batcher, online, writeback, store, misses)


class WriteBackend:
    """The one synchronous backend the API uses, to write: answers written back, and the recorded misses
    (everything the API reads goes through the reader). Opened on first use, on the thread that writes."""

    def __init__(self, url: StoreURL, given: Backend | None = None) -> None:
        self.url = url
        self.given = given
        self._opened: Backend | None = None
        self._lock = threading.Lock()

    def __call__(self) -> Backend:
        if self.given is not None:
            return self.given
        with self._lock:
            if self._opened is None:
                self._opened = open_backend(self.url)
            return self._opened

    def close(self) -> None:
        """Close the backend if this opened it (a given one belongs to whoever gave it)."""
        with self._lock:
            if self._opened is not None:
                self._opened.close()
                self._opened = None


class Lifespan:
    """Start-up and shutdown, as Starlette's ``lifespan``: the live version's first read and refresh task,
    the summary log task, the online model (loaded and warmed up on its thread), the GC freeze; then, in
    reverse, the model's queue drained, the write-back queue and the counted misses flushed, the store
    closed."""

    def __init__(self, parts: Components, workers: Workers | None = None) -> None:
        self.parts = parts
        self.workers = workers
        self._summary: asyncio.Task[None] | None = None

    @asynccontextmanager
    async def __call__(self, app: Starlette) -> AsyncIterator[None]:
        try:
            await self.start()
            yield
        finally:
            await self.stop()

    async def start(self) -> None:
        parts = self.parts
        await parts.live.start()
        if parts.misses is not None:
            parts.misses.start()
        self._summary = asyncio.create_task(Summary(parts.metrics, parts.cache).run(), name="precompute-log-summary")
        if parts.batcher is not None and parts.online is not None:
            parts.batcher.start()
            await parts.batcher.run_in_worker(parts.online.load)  # TensorFlow loads and warms up before serving
            assert parts.lookup.answers is not None
            parts.lookup.answers.default = parts.online.default
        # What is alive now (modules, the app, the model) lives as long as the process: take it out of the
        # cyclic GC's scans. Lookups in flight get promoted to the oldest generation, so without this a full
        # collection of every loaded object ran about twice a second under load (30 ms each on a Redis
        # backend: p99 35 ms at 16 connections; 1.9 ms frozen, docs/serving.md).
        gc.collect()
        gc.freeze()
        if self.workers is not None:
            await self.workers.start()  # counted as ready from now on

    async def stop(self) -> None:
        """Safe after a start that failed half-way (a model that does not load)."""
        parts = self.parts
        gc.unfreeze()  # a process that builds several apps (the tests) must not keep their garbage
        if self._summary is not None:
            self._summary.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._summary
            self._summary = None
        if parts.batcher is not None:
            await parts.batcher.close(parts.config.serve.shutdown_seconds)
        if parts.writeback is not None:
            await asyncio.to_thread(parts.writeback.close)
        if parts.misses is not None:  # after the model's queue: what it answered last is counted too
            await parts.misses.close(parts.config.serve.shutdown_seconds)
        await parts.live.stop()
        await parts.reader.aclose()
        if parts.backend is not None:
            parts.backend.close()
        if self.workers is not None:
            await self.workers.stop()  # after the drains: their counts are in the last copy
