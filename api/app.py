"""The HTTP API (Starlette).

    GET  /predict/{key}            one key            -> {"key", "prediction", "source", "model_version"}
    GET  /predict?feature=value..  raw features, snapped to the grid key
    POST /predict                  {"keys": [...]} or {"features": [{...}, ...]} -> {"model_version", "results"}
    GET  /healthz                  the process is up
    GET  /readyz                   the store answers and a version is live (or the online model can answer)
    GET  /metrics                  Prometheus text format
    GET  /openapi.json             the OpenAPI 3 description
    GET  /models                   the models served (api/models.py)
    *    /models/<name>/predict... one model's predictions; with several models the only ones (docs/serving.md)

Errors: a malformed key is 400, a key outside the space 404 (with the reason), a key over the size limit
414, too many keys or too large a body 413, a missing token 401, a non-finite online prediction 422, a store
failure or a late model 503 (with Retry-After). A hit is answered by splicing the stored bytes (already the
JSON the API returns) into the response. ``source`` says where an answer came from: "precomputed" (the
store or the hot-key cache), "online" (the model, on a miss) or "default" (the configured default value,
when the model could not answer within the deadline).

Three pieces, one per concern: :class:`Components` (what the endpoints share, built from the config),
the endpoints (api/endpoints.py) and :class:`Lifespan` (start-up and shutdown); :func:`create_app` puts
them together, and :func:`create_served_app` does so for several models (one Components each). The serving
path, its options and its measurements are described in docs/serving.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import threading
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.routing import Route

from precompute.adapters import open_backend, open_reader
from precompute.api.cache import HotCache, NegativeCache
from precompute.api.endpoints import Endpoint, Predictions, answered, http_error, not_recorded
from precompute.api.live import LiveVersion
from precompute.api.logs import Summary
from precompute.api.lookup import Lookup
from precompute.api.metrics import Instruments, Metrics
from precompute.api.misses import MissRecorder
from precompute.api.models import Catalogue
from precompute.config import Config, ConfigError
from precompute.served import Served
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
    name = config.name
    return create_served_app(
        Served.single(config),
        {name: reader} if reader is not None else None,
        {name: backend} if backend is not None else None,
        workers,
    )


def create_served_app(
    served: Served,
    readers: Mapping[str, Reader] | None = None,
    backends: Mapping[str, Backend] | None = None,
    workers: Workers | None = None,
) -> Starlette:
    """The app for every model of ``served``: with one, the routes of a single model (``/predict...``), and
    also under ``/models/<name>/``; with several, each under ``/models/<name>/`` only (docs/serving.md).
    ``readers`` and ``backends``: by model name, as for :func:`create_app`."""
    serve = served.serve
    instruments = Instruments(labelled=served.several)
    models = [
        Components.build(
            config,
            (readers or {}).get(config.name),
            (backends or {}).get(config.name),
            Metrics(shared=instruments, model=config.name),
        )
        for config in served.models
    ]
    catalogue = Catalogue(served, models, workers)
    if workers is not None:
        workers.bind(instruments, catalogue.readiness, catalogue.models_ready if served.several else None)

    guard: Callable[[Endpoint, Metrics], Endpoint] = lambda endpoint, metrics: endpoint  # noqa: E731
    if serve.auth != "off":  # with auth off the endpoints are not wrapped at all: a hit pays nothing
        from precompute.api.auth import Tokens

        tokens = Tokens(serve.auth, serve.auth_tokens)
        guard = tokens.guard

    def endpoints(parts: Components) -> tuple[Endpoint, Endpoint, Endpoint]:
        """One model's ``GET /predict/{key}``, ``GET /predict?...`` and ``POST /predict``."""
        record = parts.metrics.request if serve.metrics else not_recorded
        answers = Predictions(parts.lookup, parts.config.serve.max_body_bytes)
        metrics = parts.metrics
        return (
            guard(answered(answers.key, record), metrics),
            guard(answered(answers.features, record), metrics),
            guard(answered(answers.batch, record), metrics),
        )

    by_model = {parts.config.name: endpoints(parts) for parts in models}
    first = models[0]
    routes: list[Route] = []
    if not served.several:  # the routes of one model, first: matched as before, at the same cost
        key, features, batch = by_model[first.config.name]
        routes += [
            Route("/predict/{key:path}", key, methods=["GET"]),
            Route("/predict", features, methods=["GET"]),
            Route("/predict", batch, methods=["POST"]),
        ]
    # /models/<name>/...: one route each, dispatching on the name (a dict lookup however many models).
    routes += [
        Route("/models/{name}/predict/{key:path}", catalogue.by_name(by_model, 0), methods=["GET"]),
        Route("/models/{name}/predict", catalogue.by_name(by_model, 1), methods=["GET"]),
        Route("/models/{name}/predict", catalogue.by_name(by_model, 2), methods=["POST"]),
        Route("/healthz", catalogue.healthz, methods=["GET"]),
        Route("/readyz", catalogue.readyz, methods=["GET"]),
        Route("/openapi.json", catalogue.openapi, methods=["GET"]),
        Route("/models", guard(catalogue.listing, first.metrics), methods=["GET"]),
        Route("/models/{name}{rest:path}", catalogue.unknown),  # an unknown name, or a method not allowed
    ]
    if served.several:
        routes.append(Route("/predict{rest:path}", catalogue.no_default))
    if serve.metrics:
        routes.append(Route("/metrics", guard(catalogue.prometheus, first.metrics), methods=["GET"]))
    lifespan = Lifespan(models, workers)
    app = Starlette(routes=routes, lifespan=lifespan, exception_handlers={HTTPException: http_error})
    app.state.models = {parts.config.name: parts for parts in models}
    # The first (with one config, the only) model's pieces, as the tests of a single model read them.
    app.state.live = first.live
    app.state.metrics = first.metrics
    app.state.lookup = first.lookup
    app.state.cache = first.cache
    app.state.batcher = first.batcher
    app.state.online = first.online
    app.state.writeback = first.writeback
    app.state.misses = first.misses
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
    def build(
        cls,
        config: Config,
        reader: Reader | None = None,
        backend: Backend | None = None,
        metrics: Metrics | None = None,
    ) -> Components:
        """One model's pieces, counting into ``metrics`` (new ones unless given)."""
        serve = config.serve
        reader = reader or open_reader(config.store_url)
        live = LiveVersion(reader, serve.refresh_seconds)
        metrics = metrics if metrics is not None else Metrics()
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
    """Start-up and shutdown, as Starlette's ``lifespan``, for every model in turn: the live version's first
    read and refresh task, the summary log task, the online model (loaded and warmed up on its thread); then
    the GC freeze. On the way down, in reverse, for each model: the model's queue drained, the write-back
    queue and the counted misses flushed, the store closed."""

    def __init__(self, models: Sequence[Components], workers: Workers | None = None) -> None:
        self.models = list(models)
        self.workers = workers
        self._summaries: list[asyncio.Task[None]] = []
        self._started: list[Components] = []

    @asynccontextmanager
    async def __call__(self, app: Starlette) -> AsyncIterator[None]:
        try:
            await self.start()
            yield
        finally:
            await self.stop()

    async def start(self) -> None:
        for parts in self.models:
            self._started.append(parts)
            await self._start(parts)
        # What is alive now (modules, the app, the model) lives as long as the process: take it out of the
        # cyclic GC's scans. Lookups in flight get promoted to the oldest generation, so without this a full
        # collection of every loaded object ran about twice a second under load (30 ms each on a Redis
        # backend: p99 35 ms at 16 connections; 1.9 ms frozen, docs/serving.md).
        gc.collect()
        gc.freeze()
        if self.workers is not None:
            await self.workers.start()  # counted as ready from now on

    async def _start(self, parts: Components) -> None:
        await parts.live.start()
        if parts.misses is not None:
            parts.misses.start()
        name = "precompute-log-summary" + (f"-{parts.config.name}" if len(self.models) > 1 else "")
        self._summaries.append(asyncio.create_task(Summary(parts.metrics, parts.cache).run(), name=name))
        if parts.batcher is not None and parts.online is not None:
            parts.batcher.start()
            await parts.batcher.run_in_worker(parts.online.load)  # TensorFlow loads and warms up before serving
            assert parts.lookup.answers is not None
            parts.lookup.answers.default = parts.online.default

    async def stop(self) -> None:
        """Safe after a start that failed half-way (a model that does not load)."""
        gc.unfreeze()  # a process that builds several apps (the tests) must not keep their garbage
        for task in self._summaries:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._summaries = []
        for parts in reversed(self._started):
            await self._stop(parts)
        self._started = []
        if self.workers is not None:
            await self.workers.stop()  # after the drains: their counts are in the last copy

    async def _stop(self, parts: Components) -> None:
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
