"""The Redis backend's read side for the API: one asyncio connection (or cluster client) per process.

A lookup is one HGET; the live alias and each version's layout are read once and cached (versions are
immutable), with :meth:`RedisReader.get_alias` warming the cache from the API's background refresh.
A standalone server (Memorystore, ElastiCache without cluster mode) is read over one pipelined
connection (:mod:`adapters.redis_wire`); a Redis Cluster through redis-py's asyncio cluster client,
which routes each key to its node.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any

import hiredis

from adapters.redis_client import QUIET, async_cluster_client, translated
from adapters.redis_layout import Layout, RedisOptions, remember
from adapters.redis_wire import PipelinedConnection, reply_error
from store import Reader, StoreUnavailable, StoreURL


class RedisReader(Reader):
    """The API's side: one pipelined connection (standalone) or cluster client per process, opened on first use.

    Connection failures raise StoreUnavailable; the next call reconnects by itself (a cluster client
    that lost its nodes is rebuilt from the URL).
    """

    max_read_batch = 1_000

    def __init__(self, url: StoreURL) -> None:
        super().__init__(url)
        self.options = RedisOptions.parse(url)
        self.where = f"Redis at {url.redacted()}"
        self._wire = None if self.options.cluster else PipelinedConnection(self.options, self.where)
        self._client: Any = None  # the cluster client
        self._layouts: dict[str, Layout] = {}

    def _connection(self) -> Any:
        if self._client is None:
            self._client = async_cluster_client(self.options)
        return self._client

    async def _lost(self) -> None:
        # A cluster client may keep a stale slot map: start over from the URL.
        if self._client is not None:
            client, self._client = self._client, None
            with contextlib.suppress(*QUIET):
                await client.aclose()

    async def _call(self, *args: bytes | str) -> Any:
        if self._wire is not None:
            return await self._wire.call(*args)
        client = self._connection()
        try:
            with translated(self.where):
                return await client.execute_command(*args)
        except StoreUnavailable:
            await self._lost()
            raise

    async def _layout(self, version: str) -> Layout | None:
        layout = self._layouts.get(version)
        if layout is None:
            raw = await self._call("GET", self.options.layout_key(version))
            if raw is None:
                return None
            layout = remember(self._layouts, version, Layout.from_bytes(self.options.version_prefix(version), raw))
        return layout

    async def get_alias(self) -> str | None:
        raw = await self._call("GET", self.options.alias_key)
        if raw is None:
            return None
        version: str = raw.decode()
        await self._layout(version)  # warm, so the first lookup on a new version is one round trip too
        return version

    async def get(self, version: str, key: bytes) -> bytes | None:
        layout = self._layouts.get(version) or await self._layout(version)
        if layout is None:
            return None
        value: bytes | None = await self._call("HGET", layout.key_of(key), key)
        return value

    async def get_batch(self, version: str, keys: Sequence[bytes]) -> list[bytes | None]:
        layout = await self._layout(version)
        if layout is None or not keys:
            return [None] * len(keys)
        if self._wire is not None:  # one pipeline: one write, one round trip
            values = await self._wire.call_many([(b"HGET", layout.key_of(k), k) for k in keys])
            for value in values:
                if isinstance(value, hiredis.ReplyError):
                    raise reply_error(self.where, value)
            return values
        client = self._connection()
        try:
            with translated(self.where):
                pipe = client.pipeline()
                for key in keys:
                    pipe.hget(layout.key_of(key), key)
                return list(await pipe.execute())
        except StoreUnavailable:
            await self._lost()
            raise

    async def aclose(self) -> None:
        if self._wire is not None:
            await self._wire.aclose()
        if self._client is not None:
            client, self._client = self._client, None
            await client.aclose()
