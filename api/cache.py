"""In-process caches in front of the store: hot keys (LRU, bounded by bytes) and absent keys (short TTL).

Both are keyed by (version, key) in the cheapest form that is exact: one dict per cache for the version it
holds, emptied as soon as a lookup names another version. A publish or a rollback therefore invalidates
everything at the first request that sees the new live version, with no callback and no tuple built per
lookup.

* :class:`HotCache` holds whole response bodies, so a cache hit skips the store read *and* the splice.
  Entries are charged ``len(key) + len(body) + ENTRY_OVERHEAD`` bytes (the Python objects and the LRU
  links: measured with ``tracemalloc`` at ~150 bytes per babyweight entry beyond its payload). LRU by
  ``OrderedDict.move_to_end``: ~0.1 us per hit.
* :class:`NegativeCache` remembers keys that are valid but absent from a version, so a client retrying a
  missing key does not cost a store round trip each time. The TTL is short because absent keys can appear
  within a version (online answers written back, by this process or another one).

A table space's live version changes under the API: ``precompute refresh`` writes re-scored entities
into it (docs/refresh.md). For such a version both caches keep an entry at most ``ttl_seconds`` (the API
sets ``[serve] refresh_seconds``), counted from when the store read that filled it *began*: a read that
started before a refresh was written may return the old answer, and that answer is then dropped no later
than ``refresh_seconds`` after the refresh. A grid version never changes once published, so its entries
have no expiry and pay nothing for it.

What the hot cache buys, measured by ``bench/serving.py`` on a Zipf(1.1) stream over the 21,762 babyweight
keys (docs/serving.md has the table): on SQLite, whose reads take microseconds, 1.25x the throughput at one
connection and 1.2x at 16; on Redis on loopback, where every read is a round trip, 2.5x and 1.9x, with p50
down from 0.135 to 0.057 ms at one connection. A cache holding 10% of the keys already answers 81% of that
stream.
"""

from __future__ import annotations

import time
from collections import OrderedDict

from prometheus_client.core import Metric

from precompute.api.metrics import counter, gauge

ENTRY_OVERHEAD = 160


class HotCache:
    def __init__(self, max_bytes: int, ttl_seconds: float | None = None) -> None:
        self.max_bytes = max_bytes
        self.ttl = ttl_seconds  # None: entries stay until evicted or the version changes
        self.version: str | None = None
        self.entries: OrderedDict[str, bytes] = OrderedDict()
        self.expires: dict[str, float] = {}  # with a ttl: key -> perf_counter() time it is dropped at
        self.bytes = 0
        self.hits = 0
        self.misses = 0
        self.evictions = 0
        self.invalidations = 0

    def get(self, version: str, key: str) -> bytes | None:
        if version != self.version:
            self._switch(version)
        body = self.entries.get(key)
        if body is None:
            self.misses += 1
            return None
        if self.ttl is not None and self.expires[key] <= time.perf_counter():
            self._remove(key)
            self.misses += 1
            return None
        self.entries.move_to_end(key)
        self.hits += 1
        return body

    def put(self, version: str, key: str, body: bytes, read_at: float | None = None) -> None:
        """Keep ``body``; ``read_at`` is the ``time.perf_counter()`` at which the store read that produced it
        began (default now): with a ttl, the entry expires ``ttl`` after it."""
        if version != self.version:
            return  # an answer for a version that is no longer the one being cached: never store it
        size = len(key) + len(body) + ENTRY_OVERHEAD
        if size > self.max_bytes:
            return
        if key in self.entries:
            self._remove(key)
        self.entries[key] = body
        if self.ttl is not None:
            self.expires[key] = (time.perf_counter() if read_at is None else read_at) + self.ttl
        self.bytes += size
        while self.bytes > self.max_bytes:
            evicted, value = self.entries.popitem(last=False)
            self.expires.pop(evicted, None)
            self.bytes -= len(evicted) + len(value) + ENTRY_OVERHEAD
            self.evictions += 1

    def _remove(self, key: str) -> None:
        old = self.entries.pop(key)
        self.expires.pop(key, None)
        self.bytes -= len(key) + len(old) + ENTRY_OVERHEAD

    def _switch(self, version: str) -> None:
        if self.version is not None:
            self.invalidations += 1
        self.version = version
        self.entries.clear()
        self.expires.clear()
        self.bytes = 0

    @property
    def hit_ratio(self) -> float:
        looked = self.hits + self.misses
        return self.hits / looked if looked else 0.0

    def families(self) -> list[Metric]:
        """Read at scrape time (the counts are plain ints: they are taken on every lookup)."""
        return [
            counter("precompute_cache_hits_total", "Hot-key cache hits.", self.hits),
            counter("precompute_cache_misses_total", "Hot-key cache misses.", self.misses),
            gauge("precompute_cache_hit_ratio", "Hot-key cache hits / lookups since start.", self.hit_ratio),
            gauge("precompute_cache_bytes", "Bytes charged to the hot-key cache.", self.bytes),
            gauge("precompute_cache_entries", "Entries in the hot-key cache.", len(self.entries)),
            counter("precompute_cache_evictions_total", "Entries evicted for space.", self.evictions),
            counter(
                "precompute_cache_invalidations_total",
                "Times the cache was emptied by a version change.",
                self.invalidations,
            ),
        ]


class NegativeCache:
    def __init__(self, ttl_seconds: float, max_entries: int = 65_536) -> None:
        self.ttl = ttl_seconds
        self.max_entries = max_entries
        self.version: str | None = None
        # Insertion order is expiry order (one TTL for all), so the oldest entry is always the first.
        self.expiry: OrderedDict[str, float] = OrderedDict()
        self.hits = 0

    def contains(self, version: str, key: str) -> bool:
        if version != self.version:
            self.version = version
            self.expiry.clear()
            return False
        expires = self.expiry.get(key)
        if expires is None:
            return False
        if expires <= time.perf_counter():
            del self.expiry[key]
            return False
        self.hits += 1
        return True

    def add(self, version: str, key: str, read_at: float | None = None) -> None:
        """Remember ``key`` as absent; ``read_at``: the ``time.perf_counter()`` at which the store read that
        found it absent began (default now). It is forgotten ``ttl`` after that."""
        if version != self.version:
            return
        self.expiry.pop(key, None)
        self.expiry[key] = (time.perf_counter() if read_at is None else read_at) + self.ttl
        if len(self.expiry) > self.max_entries:
            self.expiry.popitem(last=False)

    def families(self) -> list[Metric]:
        return [
            counter("precompute_negative_cache_hits_total", "404s answered from the negative cache.", self.hits),
            gauge("precompute_negative_cache_entries", "Keys in the negative cache.", len(self.expiry)),
        ]
