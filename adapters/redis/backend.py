"""Redis backend: ``redis://``, ``rediss://`` (TLS), ``redis+cluster://`` and ``rediss+cluster://``.

Also reaches Google Memorystore and AWS ElastiCache, which speak the same protocol (docs/redis.md).

URL: ``redis[s][+cluster]://[[user]:password@]host[:port][/db][?option=value&...]``. Options:
``prefix`` (key prefix, default ``pc:``; one store per prefix), ``cluster=true`` (same as the
``+cluster`` schemes), ``ttl`` (seconds a version's data lives after it is created), ``buckets`` (fixed
bucket count per version), ``timeout`` / ``connect_timeout`` (socket seconds, default 5 / 2),
``retry`` (seconds a bulk write or gc keeps retrying a lost server, default 15), ``ssl_ca_certs``,
``ssl_cert_reqs`` (required/optional/none), ``ssl_check_hostname`` (default true).

Layout (names in :mod:`adapters.redis.layout`)::

    <prefix>alias                  string  the live version id; flipped by one Lua compare-and-set
    <prefix>records                hash    version id -> version record (JSON)
    <prefix>lock                   string  run-lock owner, SET with PX; renewed/released by owner in Lua
    <prefix>v:<version>:layout     string  {"buckets": B, "expires_at": ...}, written first, deleted last
    <prefix>v:<version>:<b>        hash    field = key, value = value, for every key with crc32(key) % B == b

Why small hashes rather than one string per row: a row costs ~59 bytes in a bucket hash (Redis packs a
hash of at most 128 short fields into one listpack allocation) against ~127 bytes as its own string
key (dict entry, key object and value object each), measured by bench/redis_load.py on 1 M and 10 M
rows of ``True:25:Single(1):39:12`` -> ``{"weight_pounds":7.31}``. Less than half the memory is less
than half the Memorystore bill. It also makes gc exact and cheap: a version's keys are ``0..B-1``, so
dropping one needs no SCAN over the whole keyspace and unlinks 48 times fewer keys. B is
``expected_rows / 48`` when the run announces its size (``meta.expected_rows`` in the version
record), else 65,536 (fine to ~4 M rows; beyond that buckets turn into regular hashes: still
correct, no longer compact).

A lookup is one HGET (one round trip); the reader resolves the alias and the version's layout in the
background, and every lookup in flight shares one pipelined connection per server
(:mod:`adapters.redis.wire.connection`). A batch is one pipeline of HGETs (per node in Cluster mode: buckets
spread over all slots; every key the alias, lock and CAS touch is a single key, so publish stays
atomic on a cluster). Loads pack a write call's rows into one HSET per bucket (grouped in numpy:
:mod:`adapters.redis.writes`) and stream them as hand-packed, non-transactional pipelines while
packing (:mod:`adapters.redis.bulk`), per node in Cluster mode, keeping one chunk in
flight while the next is packed. drop_version UNLINKs buckets 50 at a time with one command in
flight, so lookups interleave between commands. Figures and their baselines: docs/redis.md.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Sequence
from operator import itemgetter
from typing import Any

import redis
import redis.cluster

from precompute.adapters.redis.bulk import Command, LinePipeline, Ticket, pack
from precompute.adapters.redis.client import QUIET, sync_client, translated
from precompute.adapters.redis.layout import (
    ACQUIRE_LOCK,
    MULTI_HGET,
    RELEASE_LOCK,
    SWAP_ALIAS,
    Layout,
    RedisOptions,
    remember,
)
from precompute.adapters.redis.reader import RedisReader
from precompute.adapters.redis.writes import BulkRunner, hset_pieces
from precompute.store import Backend, Item, StoreURL, VersionError

#: Buckets per UNLINK: ~2,400 rows, so one command holds the server for about a millisecond and
#: lookups queue behind at most that (1,000 buckets per command measured p99 7 ms on lookups).
_GC_BUCKETS = 50
_GC_BATCH = 1_000


def _bytes(value: object) -> bytes | None:
    # The clients are built without decode_responses, so a reply is bytes or None.
    return value if isinstance(value, bytes) else None


class RedisBackend(Backend):
    # The larger a call, the more of its rows share a bucket and an HSET (adapters.redis.writes has
    # the figures); a 1 M-row call of small rows peaks at ~290 MB of Python memory while packed.
    max_write_batch = 1_000_000
    max_read_batch = 1_000

    def __init__(self, url: StoreURL) -> None:
        super().__init__(url)
        self.options = RedisOptions.parse(url)
        self.where = f"Redis at {url.redacted()}"
        with translated(self.where):
            self._client: redis.Redis | redis.cluster.RedisCluster = sync_client(self.options)
        self._pipe = LinePipeline(self._client)
        self._bulk = BulkRunner(self._pipe, self.where, self.options.retry_s, self._refresh)
        self._layouts: dict[str, Layout] = {}
        self._swap = self._client.register_script(SWAP_ALIAS)
        self._acquire = self._client.register_script(ACQUIRE_LOCK)
        self._release = self._client.register_script(RELEASE_LOCK)
        self._mhget = self._client.register_script(MULTI_HGET)

    # -- data ------------------------------------------------------------------------------------

    def create_version(self, version: str, expected_rows: int | None = None) -> None:
        o = self.options
        key = o.layout_key(version)
        with translated(self.where):
            layout = Layout.new(o, version, expected_rows)
            # NX: a second create (a retried task) keeps the bucket count the data was written with.
            self._client.set(key, layout.to_bytes(), nx=True, exat=layout.expires_at)
        self._layouts.pop(version, None)
        self._layout(version)

    def _layout(self, version: str) -> Layout | None:
        layout = self._layouts.get(version)
        if layout is None:
            with translated(self.where):
                raw = _bytes(self._client.get(self.options.layout_key(version)))
            if raw is None:
                return None
            layout = remember(self._layouts, version, Layout.from_bytes(self.options.version_prefix(version), raw))
        return layout

    def write(self, version: str, items: Sequence[Item]) -> None:
        # The base class checks sizes in a Python loop; this does it in C and only searches on a hit.
        if items and max(map(len, map(itemgetter(1), items))) > self.max_value_bytes:
            super().write(version, items)  # raises ItemTooLarge naming the key, before sending anything
        layout = self._require(version)
        previous: tuple[Ticket | None, list[Command], str] | None = None
        try:
            for start in range(0, len(items), self.max_write_batch):
                chunk = items[start : start + self.max_write_batch]
                ticket, commands = self._bulk.submit(hset_pieces(layout, chunk))
                if previous is not None:  # collected only now: the server applied it while we packed
                    self._bulk.settle(*previous)
                previous = (ticket, commands, f"writing {len(chunk)} rows of version {version}")
            if previous is not None:
                self._bulk.settle(*previous)
        except BaseException:
            self._pipe.reset()  # a chunk may still be in flight: its replies must not answer later commands
            raise

    def write_batch(self, version: str, items: Sequence[Item]) -> None:
        commands = [c for piece in hset_pieces(self._require(version), items) for c in piece]
        self._bulk.run(commands, f"writing {len(items)} rows of version {version}")

    def _require(self, version: str) -> Layout:
        layout = self._layout(version)
        if layout is None:
            raise VersionError(f"version {version} does not exist in {self.where} (create_version first)")
        return layout

    def _refresh(self) -> None:
        with contextlib.suppress(*QUIET):  # the next attempt reports the server state
            self._pipe.refresh()

    def read_batch(self, version: str, keys: Sequence[bytes]) -> list[bytes | None]:
        layout = self._layout(version)
        if layout is None or not keys:
            return [None] * len(keys)
        with translated(self.where):
            if isinstance(self._client, redis.cluster.RedisCluster):
                cluster: Any = self._client
                pipe = cluster.pipeline()
                for key in keys:
                    pipe.hget(layout.key_of(key), key)
                return list(pipe.execute())
            return list(self._mhget(keys=[layout.key_of(k) for k in keys], args=list(keys)))

    def _unlink_commands(self, keys: Sequence[bytes]) -> list[Command]:
        if isinstance(self._client, redis.cluster.RedisCluster):  # multi-key commands must not cross slots
            return [(key, pack(b"UNLINK", key)) for key in keys]
        return [(keys[0], pack(b"UNLINK", *keys))] if keys else []

    def drop_version(self, version: str) -> None:
        """Unlink every bucket of ``version``, 50 per command, one command in flight, then its layout key.

        Works on a partially written version (missing buckets cost nothing) and, should the layout
        key itself be gone, falls back to SCAN so no key of the version is left behind.
        """
        self._layouts.pop(version, None)
        layout = self._layout(version)
        what = f"dropping version {version}"
        if layout is not None:
            for start in range(0, layout.buckets, _GC_BUCKETS):
                end = min(layout.buckets, start + _GC_BUCKETS)
                self._bulk.run(self._unlink_commands([layout.bucket_key(b) for b in range(start, end)]), what)
        else:
            for batch in self._scan(self.options.scan_pattern(version)):
                self._bulk.run(self._unlink_commands(batch), what)
        self._bulk.run(self._unlink_commands([self.options.layout_key(version)]), what)
        self._layouts.pop(version, None)

    def _scan(self, pattern: bytes) -> Iterable[list[bytes]]:
        batch: list[bytes] = []
        with translated(self.where):
            for key in self._client.scan_iter(match=pattern, count=_GC_BATCH):
                batch.append(key)
                if len(batch) >= _GC_BATCH:
                    yield batch
                    batch = []
        if batch:
            yield batch

    def count(self, version: str) -> int | None:
        """Exact: one HLEN per bucket, pipelined (B commands, not a keyspace scan)."""
        layout = self._layout(version)
        if layout is None:
            return 0
        total = 0
        for start in range(0, layout.buckets, 10_000):
            keys = [layout.bucket_key(b) for b in range(start, min(layout.buckets, start + 10_000))]
            lines = self._bulk.run([(k, pack(b"HLEN", k)) for k in keys], f"counting version {version}")
            total += sum(int(line[1:]) for line in lines)
        return total

    # -- version records -------------------------------------------------------------------------

    def put_record(self, version: str, record: bytes) -> None:
        with translated(self.where):
            self._client.hset(self.options.records_key, version, record)

    def records(self) -> dict[str, bytes]:
        with translated(self.where):
            raw: dict[Any, Any] = self._client.hgetall(self.options.records_key)
        return {bytes(k).decode(): bytes(v) for k, v in raw.items()}

    def delete_record(self, version: str) -> None:
        with translated(self.where):
            self._client.hdel(self.options.records_key, version)

    # -- live alias ------------------------------------------------------------------------------

    def get_alias(self) -> str | None:
        with translated(self.where):
            raw = _bytes(self._client.get(self.options.alias_key))
        return raw.decode() if raw is not None else None

    def swap_alias(self, expected: str | None, new: str) -> bool:
        args = ["1" if expected is not None else "0", expected or "", new]
        with translated(self.where):
            return bool(self._swap(keys=[self.options.alias_key], args=args))

    # -- run lock --------------------------------------------------------------------------------

    def acquire_lock(self, owner: str, ttl_s: float) -> str | None:
        with translated(self.where):
            holder: Any = self._acquire(keys=[self.options.lock_key], args=[owner, max(1, int(ttl_s * 1000))])
        return holder.decode() if isinstance(holder, bytes) else None

    def release_lock(self, owner: str) -> None:
        with translated(self.where):
            self._release(keys=[self.options.lock_key], args=[owner])

    def close(self) -> None:
        self._client.close()


__all__ = ["RedisBackend", "RedisReader"]
