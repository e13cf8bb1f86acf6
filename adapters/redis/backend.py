"""Redis backend: ``redis://``, ``rediss://`` (TLS), ``redis+cluster://`` and ``rediss+cluster://``.

Also reaches Google Memorystore and AWS ElastiCache, which speak the same protocol (docs/redis.md).
:class:`RedisBackend` composes the package's parts, each with one role:

* :mod:`.options`: the URL -> :class:`RedisOptions`;
* :mod:`.layout`: key names and bucketing (small hashes, 48 rows per bucket: the measurements are there);
* :mod:`.client` and :mod:`.errors`: redis-py's clients, and its exceptions translated into the store's;
* :mod:`.meta`: version records, the alias compare-and-set and the run-lock lease;
* :mod:`.writes`: bulk writes, their retries within ``retry`` and their failures;
* :mod:`.reader` and :mod:`.wire`: the API's side, over sockets of its own.

Loads pack a write call's rows into one HSET per bucket (grouped in numpy: :mod:`.writes`) and stream
them as hand-packed, non-transactional pipelines while packing (:mod:`.wire.lines`), per node in Cluster
mode, keeping one chunk in flight while the next is packed. drop_version UNLINKs buckets 50 at a time with
one command in flight, so lookups interleave between commands. Figures and their baselines: docs/redis.md.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import pyarrow as pa

from precompute.adapters.redis.client import SyncClient
from precompute.adapters.redis.errors import translated
from precompute.adapters.redis.layout import Layout, remember
from precompute.adapters.redis.meta import RedisMeta
from precompute.adapters.redis.options import RedisOptions
from precompute.adapters.redis.wire.lines import Command, LinePipeline
from precompute.adapters.redis.wire.protocol import pack
from precompute.adapters.redis.writes import BulkRunner, columns, hset_pieces
from precompute.store import Backend, Item, StoreURL, VersionError

#: Buckets per UNLINK: ~2,400 rows, so one command holds the server for about a millisecond and
#: lookups queue behind at most that (1,000 buckets per command measured p99 7 ms on lookups).
_GC_BUCKETS = 50
_GC_BATCH = 1_000

# One round trip for a batch of lookups on a single server: the MGET of the bucketed layout.
MULTI_HGET = """
local out = {}
for i = 1, #KEYS do out[i] = redis.call('HGET', KEYS[i], ARGV[i]) end
return out
"""


class RedisBackend(Backend):
    # The larger a call, the more of its rows share a bucket and an HSET (.writes has the figures);
    # a 1 M-row call of small rows peaks at ~290 MB of Python memory while packed.
    max_write_batch = 1_000_000
    max_read_batch = 1_000

    def __init__(self, url: StoreURL) -> None:
        super().__init__(url)
        self.options = RedisOptions.parse(url)
        self.keys, self.where = self.options.keys, f"Redis at {url.redacted()}"
        self.client = SyncClient(self.options, self.where)
        self.meta = RedisMeta(self.client, self.keys, self.where)
        self.bulk = BulkRunner(LinePipeline(self.options, self.where), self.where, self.options.retry_s)
        self._layouts: dict[str, Layout] = {}

    # -- data ------------------------------------------------------------------------------------

    def create_version(self, version: str, expected_rows: int | None = None) -> None:
        o = self.options
        layout = Layout.new(self.keys, version, expected_rows, o.buckets, o.ttl_s)

        def create() -> None:
            with translated(self.where):
                # NX: a second create (a retried call or task) keeps the bucket count the data was written with.
                self.client.get().set(self.keys.layout(version), layout.to_bytes(), nx=True, exat=layout.expires_at)

        self.bulk.call(create, f"creating version {version}")
        self._layouts.pop(version, None)
        self._require(version)

    def _layout(self, version: str) -> Layout | None:
        layout = self._layouts.get(version)
        if layout is None:
            with translated(self.where):
                raw = self.client.get().get(self.keys.layout(version))
            if not isinstance(raw, bytes):
                return None
            layout = remember(self._layouts, version, Layout.from_bytes(self.keys.version(version), raw))
        return layout

    def _require(self, version: str) -> Layout:
        """The layout of ``version``, read within the retry window (a write task's first store call)."""
        layout = self._layouts.get(version) or self.bulk.call(
            lambda: self._layout(version), f"reading the layout of version {version}"
        )
        if layout is None:
            raise VersionError(f"version {version} does not exist in {self.where} (create_version first)")
        return layout

    def write(self, version: str, items: Sequence[Item]) -> None:
        self.write_columns(version, *columns(items))

    def write_columns(self, version: str, keys: pa.Array, values: pa.Array) -> None:
        self.check_column_sizes(keys, values)  # ItemTooLarge, naming the key, before anything is sent
        self.bulk.load(self._require(version), keys, values, self.max_write_batch, version)

    def write_batch(self, version: str, items: Sequence[Item]) -> None:
        commands = [c for piece in hset_pieces(self._require(version), items) for c in piece]
        self.bulk.run(commands, f"writing {len(items)} rows of version {version}")

    def read_batch(self, version: str, keys: Sequence[bytes]) -> list[bytes | None]:
        layout = self._layout(version)
        if layout is None or not keys:
            return [None] * len(keys)
        with translated(self.where):
            client = self.client.get()
            if self.client.is_cluster:
                pipe: Any = client.pipeline()
                for key in keys:
                    pipe.hget(layout.key_of(key), key)
                return list(pipe.execute())
            return list(self.client.script(MULTI_HGET)(keys=[layout.key_of(k) for k in keys], args=list(keys)))

    def _unlink_commands(self, keys: Sequence[bytes]) -> list[Command]:
        if self.client.is_cluster:  # multi-key commands must not cross slots
            return [(key, pack(b"UNLINK", key)) for key in keys]
        return [(keys[0], pack(b"UNLINK", *keys))] if keys else []

    def drop_version(self, version: str) -> None:
        """Unlink every bucket of ``version``, 50 per command, one command in flight, then its layout key.

        Works on a partially written version (missing buckets cost nothing) and, should the layout
        key itself be gone, falls back to SCAN so no key of the version is left behind.
        """
        self._layouts.pop(version, None)
        what = f"dropping version {version}"
        layout = self.bulk.call(lambda: self._layout(version), what)
        if layout is not None:
            for start in range(0, layout.buckets, _GC_BUCKETS):
                end = min(layout.buckets, start + _GC_BUCKETS)
                self.bulk.run(self._unlink_commands([layout.bucket_key(b) for b in range(start, end)]), what)
        else:
            for batch in self._scan(self.keys.scan_pattern(version)):
                self.bulk.run(self._unlink_commands(batch), what)
        self.bulk.run(self._unlink_commands([self.keys.layout(version)]), what)
        self._layouts.pop(version, None)

    def _scan(self, pattern: bytes) -> Iterable[list[bytes]]:
        batch: list[bytes] = []
        with translated(self.where):
            for key in self.client.get().scan_iter(match=pattern, count=_GC_BATCH):
                batch.append(key)
                if len(batch) >= _GC_BATCH:
                    yield batch
                    batch = []
        if batch:
            yield batch

    def count(self, version: str) -> int | None:
        """Exact: one HLEN per bucket, pipelined (B commands, not a keyspace scan)."""
        layout = self.bulk.call(lambda: self._layout(version), f"counting version {version}")
        if layout is None:
            return 0
        total = 0
        for start in range(0, layout.buckets, 10_000):
            keys = [layout.bucket_key(b) for b in range(start, min(layout.buckets, start + 10_000))]
            lines = self.bulk.run([(k, pack(b"HLEN", k)) for k in keys], f"counting version {version}")
            total += sum(int(line[1:]) for line in lines)
        return total

    def close(self) -> None:
        self.client.close()
        self.bulk.pipe.close()
