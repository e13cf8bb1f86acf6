"""Where the Redis backend puts things: key names and bucketing.

Everything that decides a key name lives here, so the writer, the reader and gc can never disagree::

    <prefix>alias                  string  the live version id; flipped by one Lua compare-and-set
    <prefix>records                hash    version id -> version record (JSON)
    <prefix>lock                   string  run-lock owner, SET with PX; renewed/released by owner in Lua
    <prefix>misses                 hash    off-grid key -> times answered online (HINCRBY in one Lua script)
    <prefix>v:<version>:layout     string  {"buckets": B, "expires_at": ...}, written first, deleted last
    <prefix>v:<version>:<b>        hash    field = key, value = value, for every key with crc32(key) % B == b

Why small hashes rather than one string per row: a row costs ~59 bytes in a bucket hash (Redis packs a
hash of at most 128 short fields into one listpack allocation) against ~127 bytes as its own string
key (dict entry, key object and value object each), measured by bench/redis_load.py on 1 M and 10 M
rows of ``True:25:Single(1):39:12`` -> ``{"weight_pounds":7.31}``. Less than half the memory is less
than half the Memorystore bill. It also makes gc exact and cheap: a version's keys are ``0..B-1``, so
dropping one needs no SCAN over the whole keyspace and unlinks 48 times fewer keys. B is
``expected_rows / 48`` when the run announces its size (``Backend.create_version``), else 65,536 (fine
to ~4 M rows; beyond that buckets turn into regular hashes: still correct, no longer compact).

Bucket keys carry no hash tag, so on a cluster a version spreads over every slot and node; every key the
alias, lock and CAS touch is a single key, so publish stays atomic on a cluster.
"""

from __future__ import annotations

import json
import math
import re
import time
import zlib
from dataclasses import dataclass

from precompute.store import StoreError
from precompute.store.codec import check_version

#: Average fields per bucket hash. Redis keeps a hash as one compact listpack while it holds at most
#: ``hash-max-listpack-entries`` (128 by default) fields of at most ``hash-max-listpack-value`` (64)
#: bytes. With 48 on average, the fullest of a million buckets (Poisson tail) still stays under 128.
ROWS_PER_BUCKET = 48
#: Buckets of a version whose size nobody announced: good for ~4 M rows before buckets outgrow a
#: listpack (they still work then, they just take hashtable memory).
DEFAULT_BUCKETS = 65_536
MAX_BUCKETS = 1 << 26
#: Layouts a process remembers (a few versions are alive at a time; the cap only bounds a leak).
LAYOUT_CACHE = 256


@dataclass(frozen=True)
class Keys:
    """The key names of one store (one prefix)."""

    prefix: bytes

    @property
    def alias(self) -> bytes:
        return self.prefix + b"alias"

    @property
    def records(self) -> bytes:
        return self.prefix + b"records"

    @property
    def lock(self) -> bytes:
        return self.prefix + b"lock"

    @property
    def misses(self) -> bytes:
        return self.prefix + b"misses"

    def version(self, version: str) -> bytes:
        """The prefix of every key of ``version`` (a valid version id, else :class:`VersionError`)."""
        return self.prefix + b"v:" + check_version(version).encode() + b":"

    def layout(self, version: str) -> bytes:
        return self.version(version) + b"layout"

    def scan_pattern(self, version: str) -> bytes:
        """SCAN MATCH pattern for every key of ``version`` (the prefix is the user's, so escape it)."""
        return re.sub(rb"([\\*?\[\]])", rb"\\\1", self.version(version)) + b"*"


@dataclass(frozen=True)
class Layout:
    """How one version is bucketed, fixed when the version is created and stored next to it.

    A row lives in field ``key`` of the hash ``<prefix>v:<version>:<crc32(key) % buckets>``.
    """

    base: bytes
    buckets: int
    expires_at: int | None = None

    def bucket_key(self, bucket: int) -> bytes:
        return self.base + b"%d" % bucket

    def key_of(self, key: bytes) -> bytes:
        return self.base + b"%d" % (zlib.crc32(key) % self.buckets)

    def to_bytes(self) -> bytes:
        return json.dumps({"format": 1, "buckets": self.buckets, "expires_at": self.expires_at}).encode()

    @classmethod
    def from_bytes(cls, base: bytes, raw: bytes) -> Layout:
        data = json.loads(raw)
        if data.get("format") != 1:
            raise StoreError(f"version layout {raw[:100]!r} has an unknown format; upgrade precompute to read it")
        return cls(base, int(data["buckets"]), data.get("expires_at"))

    @classmethod
    def new(
        cls,
        keys: Keys,
        version: str,
        expected_rows: int | None,
        buckets: int | None = None,
        ttl_s: float | None = None,
    ) -> Layout:
        """The layout of a new version: ``buckets`` if fixed (option ``buckets``), else sized for ``expected_rows``."""
        if buckets is None:
            if expected_rows is not None and expected_rows > 0:
                buckets = min(MAX_BUCKETS, max(1, math.ceil(expected_rows / ROWS_PER_BUCKET)))
            else:
                buckets = DEFAULT_BUCKETS
        expires = int(time.time() + ttl_s) if ttl_s else None
        return cls(keys.version(version), buckets, expires)


def remember(cache: dict[str, Layout], version: str, layout: Layout) -> Layout:
    """Keep ``layout`` in a per-process cache of at most LAYOUT_CACHE versions (versions are immutable)."""
    if len(cache) >= LAYOUT_CACHE:
        cache.clear()
    cache[version] = layout
    return layout
