"""Turning a request into an answer: canonical keys, one version per request, then the first source that
answers: the hot-key cache, the store, the online model.

The order for one key (``GET /predict/{key}``)::

    canonical key        400 malformed, 404 outside the space (unless the fallback may answer it), 414 too long
    hot cache            (version, key) -> the whole response body
    negative cache       (version, key) known absent a moment ago -> 404 without a store read
    store                one read of the live version
    online model         on a miss (fallback "on") or a store failure (fallback "on" or "store-down"), queued
                         for the batcher, awaited until the request's deadline; then 503 or the default value

Only what a hit needs happens before the store read, and every step that is off is skipped by a test of a
``None``. Measured with bench/lookup.py's keys against the API as it was before the fallback, cache and
metrics (the two servers alternated run by run, 8 rounds): 1.15x its throughput at one connection and 1.12x
at 16 on SQLite, the hot cache saving more than the metrics cost (docs/serving.md).
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING

from prometheus_client.core import Metric

from precompute.api.cache import HotCache, NegativeCache
from precompute.api.live import LiveVersion
from precompute.api.metrics import Metrics, Observer, Unobserved, gauge
from precompute.api.online import OnlineAnswers
from precompute.api.responses import (
    NON_FINITE,
    PRECOMPUTED_ITEM,
    RETRY,
    LookupFailed,
    batch_body,
    batch_error,
    quoted,
    splice,
)
from precompute.config import Config
from precompute.space import Categorical, Decoded, GridSpace, Space, SpaceError
from precompute.store import Reader, StoreError
from precompute.store.codec import MAX_KEY_BYTES, InvalidKey, control_free, encode_key

if TYPE_CHECKING:
    from precompute.api.batching import Batcher
    from precompute.api.fallback import Online, Scored
    from precompute.api.misses import MissRecorder


class Lookup:
    def __init__(
        self,
        config: Config,
        reader: Reader,
        live: LiveVersion,
        metrics: Metrics,
        cache: HotCache | None = None,
        negative: NegativeCache | None = None,
        batcher: Batcher[Online, Scored] | None = None,
        misses: MissRecorder | None = None,
    ) -> None:
        self.space = config.space
        self.reader = reader
        self.live = live
        self.metrics = metrics
        # With metrics off, store reads are timed into a histogram nobody reads (it keeps the hit path branch-free).
        self.store_seconds: Observer = metrics.store_seconds if config.serve.metrics else Unobserved()
        self.cache = cache
        self.negative = negative
        self.batcher = batcher
        serve = config.serve
        self.fallback = serve.fallback if batcher is not None else "off"
        self.write_back = serve.write_back and batcher is not None
        # Answers that expire in the store must not outlive their TTL in the hot cache (it has no expiry).
        self.cache_online = serve.write_back_ttl_seconds is None
        self.answers = OnlineAnswers(batcher, metrics, serve.deadline_ms) if batcher is not None else None
        self.misses = misses  # counts every answered off-grid key (``[serve] record_misses``)
        self.max_batch = serve.max_batch_keys
        self.max_key = serve.max_key_bytes
        self.quick_key, self.quick_limit = quick_keys(self.space, self.max_key)

    # -- keys ---------------------------------------------------------------------------------------

    def online_may_answer(self) -> bool:
        return self.fallback == "on" or (self.fallback == "store-down" and self.live.error is not None)

    def off_grid_stored(self, version: str | None) -> bool:
        """Whether ``version`` may hold keys off the grid: answers written back into it, or the recorded misses
        a run included (``[space] include_misses``, noted in its record). Otherwise an off-grid key is never
        read from the store."""
        if self.write_back:
            return True
        record = self.live.record(version) if version is not None else None
        return record is not None and bool(record.meta.get("misses_included"))

    def off_grid_answerable(self) -> bool:
        return self.online_may_answer() or self.off_grid_stored(self.live.version)

    def families(self) -> list[Metric]:
        """Read at scrape time."""
        mode = ("off", "on", "store-down").index(self.fallback)
        return [gauge("precompute_fallback_mode", "0 off, 1 on, 2 store-down.", mode)]

    def unavailable(self) -> str:
        """Why no version can be read, for a 503."""
        return self.live.error or self.live.refused or "nothing is published yet"

    def resolve(self, key: str) -> tuple[str, Decoded | None]:
        """The canonical key and its features (None for a table space); raises 400, 404 or 414."""
        if len(key) > self.max_key or (not key.isascii() and len(key.encode("utf-8", "surrogatepass")) > self.max_key):
            raise LookupFailed(414, f"a key is at most {self.max_key} bytes", key=key[:100])
        decoded = None
        if isinstance(self.space, GridSpace):
            try:
                decoded = self.space.decode(key)
            except SpaceError as exc:
                raise LookupFailed(400 if exc.malformed else 404, str(exc), key=key) from None
            if not decoded.in_space and not self.off_grid_answerable():
                raise LookupFailed(404, f"key is outside the precomputed space: {decoded.reason}", key=key)
            key = decoded.key
        try:
            encode_key(key)
        except (InvalidKey, UnicodeEncodeError) as exc:
            raise LookupFailed(400, f"invalid key: {exc}", key=key[:100]) from None
        return key, decoded

    def from_features(self, features: Mapping[str, object]) -> tuple[str, Decoded | None]:
        """The grid key nearest to raw feature values; off the grid, their own key when the model may answer."""
        if not isinstance(self.space, GridSpace):
            raise LookupFailed(400, "lookups by features need a grid space; this one is a table: use /predict/{key}")
        try:
            return self.space.snap(features), None
        except SpaceError as exc:
            if exc.malformed or not self.off_grid_answerable():
                raise LookupFailed(400 if exc.malformed else 404, str(exc)) from None
        from precompute.api.fallback import from_raw_features

        try:
            decoded = from_raw_features(self.space, dict(features))
        except SpaceError as exc:
            raise LookupFailed(400 if exc.malformed else 404, str(exc)) from None
        return decoded.key, decoded

    # -- one key ------------------------------------------------------------------------------------

    # ``one`` and ``by_features`` are plain functions returning the answer's coroutine: the key is resolved
    # (or refused, raising LookupFailed) right away, and the endpoint awaits :meth:`answer` itself, one
    # coroutine frame less per request.

    def one(self, raw_key: str, started: float) -> Awaitable[tuple[bytes, str]]:
        """(response body, source) for ``GET /predict/{key}``; raises LookupFailed."""
        key, decoded = self.resolve(raw_key)
        return self.answer(key, decoded, started)

    def by_features(self, features: Mapping[str, object], started: float) -> Awaitable[tuple[bytes, str]]:
        """(response body, source) for ``GET /predict?feature=value...``; raises LookupFailed."""
        key, decoded = self.from_features(features)
        if decoded is None and isinstance(self.space, GridSpace):
            decoded = self.space.decode(key)
        return self.answer(key, decoded, started)

    async def answer(self, key: str, decoded: Decoded | None, started: float) -> tuple[bytes, str]:
        """(response body, source) for a canonical key; raises LookupFailed."""
        version = self.live.version
        if version is None:
            if decoded is not None and self.online_may_answer():
                return await self.online(
                    key, decoded, None, started, "store_down" if self.live.error else "unpublished"
                )
            raise LookupFailed(503, self.unavailable(), headers=RETRY)
        cache = self.cache
        if cache is not None:
            body = cache.get(version, key)
            if body is not None:
                if self.misses is not None and decoded is not None and not decoded.in_space:
                    self.misses.add(key)
                return body, "cache"
        if decoded is not None and not decoded.in_space and not self.off_grid_stored(version):
            if not self.online_may_answer():
                raise LookupFailed(404, f"key is outside the precomputed space: {decoded.reason}", key=key)
            return await self.online(key, decoded, version, started, "off_grid")  # never in the store
        negative = self.negative
        if negative is not None and negative.contains(version, key):
            raise LookupFailed(
                404, f"key is not in version {version}", source="negative", key=key, model_version=version
            )
        read_at = time.perf_counter()
        try:
            # With its expiry: the store reads an expired answer as absent, and the cache keeps no answer
            # that expires (it has no per-entry expiry).
            value, expires_at = await self.reader.get_with_expiry(version, key.encode())
        except StoreError as exc:
            self.store_seconds.observe(time.perf_counter() - read_at)
            if decoded is not None and self.fallback != "off":
                return await self.online(key, decoded, version, started, "store_down")
            raise LookupFailed(503, f"store unavailable: {exc}", source="precomputed", headers=RETRY, key=key) from None
        self.store_seconds.observe(time.perf_counter() - read_at)
        if value is None:
            if decoded is not None and self.fallback == "on":
                return await self.online(key, decoded, version, started, "miss" if decoded.in_space else "off_grid")
            if negative is not None:
                negative.add(version, key, read_at)
            raise LookupFailed(
                404, f"key is not in version {version}", source="precomputed", key=key, model_version=version
            )
        body = splice(key, value, b"precomputed", version)
        if cache is not None and expires_at is None:
            cache.put(version, key, body, read_at)
        if self.misses is not None and decoded is not None and not decoded.in_space:
            self.misses.add(key)
        return body, "precomputed"

    # -- the online model ---------------------------------------------------------------------------

    async def online(
        self, key: str, decoded: Decoded, version: str | None, started: float, reason: str
    ) -> tuple[bytes, str]:
        assert self.answers is not None
        self.metrics.fallback(reason)
        scored = await self.answers.one(key, decoded, version, started)
        if isinstance(scored, str):
            return self.answers.late(key, scored)
        if scored.value is None:
            raise LookupFailed(422, NON_FINITE, source="online", key=key)
        if self.misses is not None and not decoded.in_space:
            self.misses.add(key)
        body = splice(key, scored.value, b"online", scored.model_version)
        if self.cache is not None and version is not None and self.cache_online:
            self.cache.put(version, key, body)
        return body, "online"

    # -- many keys ----------------------------------------------------------------------------------

    async def many(self, payload: object, started: float) -> bytes:
        """The body of ``POST /predict``: one item per requested key (or features), in order, all from one
        version, each an answer or its own error; raises LookupFailed for the request as a whole.

        A key already in canonical form and in the space (what clients send) is taken as it is
        (:func:`quick_keys`); any other goes through :meth:`resolve`, as a single key would. Then one
        ``get_many`` for every key, and each hit's stored bytes spliced into its item."""
        if not isinstance(payload, dict) or not (("keys" in payload) ^ ("features" in payload)):
            raise LookupFailed(400, 'expected {"keys": ["k1", ...]} or {"features": [{"name": value, ...}, ...]}')
        requested = payload.get("keys", payload.get("features"))
        if not isinstance(requested, list):
            raise LookupFailed(400, '"keys" (or "features") must be a list')
        if len(requested) > self.max_batch:
            raise LookupFailed(413, f"at most {self.max_batch} keys per request, got {len(requested)}")
        version = self.live.version
        if version is None and not self.online_may_answer():
            raise LookupFailed(503, self.unavailable(), headers=RETRY)
        by_key = "keys" in payload
        quick = self.quick_key if by_key else None
        limit = self.quick_limit
        items: list[bytes] = []  # one JSON object per requested item; b"" until it is answered
        wanted: list[tuple[int, str, Decoded | None]] = []
        for item in requested:
            if quick is not None and type(item) is str and len(item) <= limit and item.isascii() and quick(item):
                wanted.append((len(items), item, None))
                items.append(b"")
                continue
            try:
                if by_key:
                    if not isinstance(item, str):
                        raise LookupFailed(400, f"a key must be a string, got {json.dumps(item)[:100]}")
                    key, decoded = self.resolve(item)
                else:
                    if not isinstance(item, dict):
                        raise LookupFailed(400, "each features entry must be an object")
                    key, decoded = self.from_features(item)
            except LookupFailed as exc:
                named = item if isinstance(item, str) else None
                items.append(batch_error({"key": named, **exc.body(), "status": exc.status}))
                continue
            wanted.append((len(items), key, decoded))
            items.append(b"")
        values: list[bytes | None] = [None] * len(wanted)
        reason = "miss"
        if version is None:
            reason = "store_down" if self.live.error else "unpublished"
        elif wanted:
            read_at = time.perf_counter()
            try:
                values = await self.reader.get_many(version, [key.encode() for _, key, _ in wanted])
            except StoreError as exc:
                if self.fallback == "off":
                    raise LookupFailed(503, f"store unavailable: {exc}", source="precomputed", headers=RETRY) from None
                reason = "store_down"
            finally:
                self.store_seconds.observe(time.perf_counter() - read_at)
        online: list[tuple[int, str, Decoded]] = []
        may_score = self.fallback == "on" or (reason == "store_down" and self.fallback != "off")
        misses = self.misses
        for (index, key, decoded), value in zip(wanted, values, strict=True):
            if value is not None:
                items[index] = PRECOMPUTED_ITEM % (quoted(key), value)
                if misses is not None and decoded is not None and not decoded.in_space:
                    misses.add(key)
                continue
            if may_score:
                if decoded is None and isinstance(self.space, GridSpace):
                    decoded = self.space.decode(key)
                if decoded is not None:
                    online.append((index, key, decoded))
                    continue
            items[index] = batch_error({"key": key, "error": f"key is not in version {version}", "status": 404})
        if online:
            assert self.answers is not None
            self.metrics.fallback(reason, len(online))
            outcome = await self.answers.scored([(key, decoded) for _, key, decoded in online], version, started)
            for (index, key, decoded), scored in zip(online, outcome, strict=True):
                items[index] = self.answers.item(key, scored)
                if misses is not None and not decoded.in_space and not isinstance(scored, str) and scored.value:
                    misses.add(key)
        return batch_body(version, items)


def quick_keys(space: Space, max_key: int) -> tuple[Callable[[str], bool] | None, int]:
    """``(test, limit)``: an ASCII key of at most ``limit`` characters that passes ``test`` is what
    :meth:`Lookup.resolve` would return unchanged, with no error and nothing to decode (a batch takes it as
    it is); ``test`` is None where no key can be taken so.

    On a grid: the canonical key of a point of the grid (:meth:`GridSpace.canonical`), made only of its
    labels and the template's literals. When none of those holds a control character, such a key is one
    :func:`encode_key` accepts as long as it fits both limits. On a table: a non-empty key without control
    characters."""
    limit = min(max_key, MAX_KEY_BYTES)
    if isinstance(space, GridSpace):
        labels = [value for d in space.dimensions if isinstance(d, Categorical) for value in d.values]
        texts = [*space.template.literals, *labels]
        return (space.canonical if all(control_free(text) for text in texts) else None), limit
    return (lambda key: bool(key) and control_free(key)), limit
