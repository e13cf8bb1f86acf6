"""The Redis backend's read side for the API: pipelined asyncio connections, opened on first use.

A lookup is one HGET (one round trip); the live alias and each version's layout are read once and cached
(versions are immutable), with :meth:`RedisReader.get_alias` warming the cache from the API's background
refresh. A standalone server (Memorystore, ElastiCache without cluster mode) is read over one pipelined
connection that every lookup in flight shares (:mod:`.wire.connection`), a Redis Cluster over one per
primary, keys routed by slot (:mod:`.wire.cluster`). A batch is one pipeline of HGETs (per node in
Cluster mode: buckets spread over all slots).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import hiredis

from precompute.adapters.redis.layout import Layout, remember
from precompute.adapters.redis.options import RedisOptions
from precompute.adapters.redis.wire.cluster import ClusterConnections
from precompute.adapters.redis.wire.connection import PipelinedConnection
from precompute.adapters.redis.wire.protocol import Arg, reply_error
from precompute.store import Reader, StoreURL


class RedisReader(Reader):
    """The API's side. Connection failures raise StoreUnavailable; the next call reconnects by itself."""

    max_read_batch = 1_000

    def __init__(self, url: StoreURL) -> None:
        super().__init__(url)
        self.options = RedisOptions.parse(url)
        self.keys, self.where = self.options.keys, f"Redis at {url.redacted()}"
        self._server = None if self.options.cluster else PipelinedConnection(self.options, self.where)
        self._cluster = ClusterConnections(self.options, self.where) if self.options.cluster else None
        self._layouts: dict[str, Layout] = {}

    async def _call(self, key: bytes, *command: Arg) -> Any:
        """The reply of ``command``, which touches ``key`` (that routes it on a cluster)."""
        if self._server is not None:
            return await self._server.call(*command)
        assert self._cluster is not None
        return await self._cluster.call(key, command)

    async def layout(self, version: str) -> Layout | None:
        """The bucketing of ``version`` (``None``: no such version), read once and cached."""
        layout = self._layouts.get(version)
        if layout is None:
            key = self.keys.layout(version)
            raw = await self._call(key, "GET", key)
            if raw is None:
                return None
            layout = remember(self._layouts, version, Layout.from_bytes(self.keys.version(version), raw))
        return layout

    async def get_alias(self) -> str | None:
        key = self.keys.alias
        raw = await self._call(key, "GET", key)
        if raw is None:
            return None
        version: str = raw.decode()
        await self.layout(version)  # warm, so the first lookup on a new version is one round trip too
        return version

    async def records(self) -> dict[str, bytes]:
        key = self.keys.records
        flat: list[bytes] = await self._call(key, "HGETALL", key)  # field, value, field, value...
        return {field.decode(): value for field, value in zip(flat[::2], flat[1::2], strict=True)}

    async def read_one(self, version: str, key: bytes) -> bytes | None:
        layout = self._layouts.get(version) or await self.layout(version)
        if layout is None:
            return None
        bucket = layout.key_of(key)
        value: bytes | None = await self._call(bucket, "HGET", bucket, key)
        return value

    async def read_batch(self, version: str, keys: Sequence[bytes]) -> list[bytes | None]:
        layout = await self.layout(version)
        if layout is None or not keys:
            return [None] * len(keys)
        buckets = [layout.key_of(k) for k in keys]
        commands: list[tuple[Arg, ...]] = [("HGET", b, k) for b, k in zip(buckets, keys, strict=True)]
        if self._server is not None:  # one pipeline: one write, one round trip
            values = await self._server.call_many(commands)
        else:  # one pipeline per node, all in flight together
            assert self._cluster is not None
            values = await self._cluster.call_many(buckets, commands)
        for value in values:
            if isinstance(value, hiredis.ReplyError):
                raise reply_error(self.where, str(value))
        return values

    async def aclose(self) -> None:
        if self._server is not None:
            await self._server.aclose()
        if self._cluster is not None:
            await self._cluster.aclose()
