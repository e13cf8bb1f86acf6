"""Version records, the live alias and the run lock of the Redis backend.

The records are one hash (``<prefix>records``: version id -> JSON). The alias is one string key flipped by
a Lua compare-and-set, and the lock one string key with a PX lease, renewed and released by its owner in
Lua: each script touches a single key, so it runs unchanged, and atomically, on a Redis Cluster.
"""

from __future__ import annotations

from typing import Any

from precompute.adapters.redis.client import SyncClient
from precompute.adapters.redis.errors import translated
from precompute.adapters.redis.layout import Keys
from precompute.store.backend import Meta

SWAP_ALIAS = """
local current = redis.call('GET', KEYS[1])
if ARGV[1] == '1' then
  if current ~= ARGV[2] then return 0 end
elseif current then
  return 0
end
redis.call('SET', KEYS[1], ARGV[3])
return 1
"""

ACQUIRE_LOCK = """
local holder = redis.call('GET', KEYS[1])
if holder and holder ~= ARGV[1] then return holder end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return false
"""

RELEASE_LOCK = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class RedisMeta(Meta):
    """The records, alias and lock primitives of :class:`~precompute.store.backend.Backend`."""

    def __init__(self, client: SyncClient, keys: Keys, where: str) -> None:
        self.client = client
        self.keys = keys
        self.where = where

    def put_record(self, version: str, record: bytes) -> None:
        with translated(self.where):
            self.client.get().hset(self.keys.records, version, record)

    def records(self) -> dict[str, bytes]:
        with translated(self.where):
            raw: dict[Any, Any] = self.client.get().hgetall(self.keys.records)
        return {bytes(k).decode(): bytes(v) for k, v in raw.items()}

    def delete_record(self, version: str) -> None:
        with translated(self.where):
            self.client.get().hdel(self.keys.records, version)

    def get_alias(self) -> str | None:
        with translated(self.where):
            raw = self.client.get().get(self.keys.alias)
        # The clients are built without decode_responses, so a reply is bytes or None.
        return raw.decode() if isinstance(raw, bytes) else None

    def swap_alias(self, expected: str | None, new: str) -> bool:
        args = ["1" if expected is not None else "0", expected or "", new]
        with translated(self.where):
            return bool(self.client.script(SWAP_ALIAS)(keys=[self.keys.alias], args=args))

    def acquire_lock(self, owner: str, ttl_s: float) -> str | None:
        with translated(self.where):
            holder = self.client.script(ACQUIRE_LOCK)(keys=[self.keys.lock], args=[owner, max(1, int(ttl_s * 1000))])
        return holder.decode() if isinstance(holder, bytes) else None

    def release_lock(self, owner: str) -> None:
        with translated(self.where):
            self.client.script(RELEASE_LOCK)(keys=[self.keys.lock], args=[owner])
