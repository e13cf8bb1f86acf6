"""Version records, the live alias, the run lock and the recorded misses of the Redis backend.

The records are one hash (``<prefix>records``: version id -> JSON). The alias is one string key flipped by
a Lua compare-and-set, and the lock one string key with a PX lease, renewed and released by its owner in
Lua. The misses are one hash (``<prefix>misses``: key -> count), incremented by a Lua script that admits a
new key only while the hash holds fewer than the cap. Each script touches a single key, so it runs
unchanged, and atomically, on a Redis Cluster.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
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


# ARGV: the cap, then key, count pairs: keys already recorded first, then new ones in admission order.
ADD_MISSES = """
local cap = tonumber(ARGV[1])
local recorded = redis.call('HLEN', KEYS[1])
local refused = 0
for i = 2, #ARGV, 2 do
  if redis.call('HEXISTS', KEYS[1], ARGV[i]) == 1 then
    redis.call('HINCRBY', KEYS[1], ARGV[i], ARGV[i + 1])
  elseif recorded < cap then
    redis.call('HINCRBY', KEYS[1], ARGV[i], ARGV[i + 1])
    recorded = recorded + 1
  else
    refused = refused + 1
  end
end
return refused
"""

#: Keys per ADD_MISSES call or HDEL: each holds the server for well under a millisecond.
MISSES_PER_CALL = 1_000


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

    def increment_misses(self, counts: Mapping[bytes, int], cap: int) -> int:
        # The script admits in the order it is given: the most counted new keys first, as every backend does.
        ordered = sorted(counts, key=lambda key: (-counts[key], key))
        refused = 0
        with translated(self.where):
            add = self.client.script(ADD_MISSES)
            for start in range(0, len(ordered), MISSES_PER_CALL):
                args: list[Any] = [cap]
                for key in ordered[start : start + MISSES_PER_CALL]:
                    args += [key, counts[key]]
                refused += int(add(keys=[self.keys.misses], args=args))
        return refused

    def read_misses(self) -> dict[bytes, int]:
        with translated(self.where):
            # HSCAN, not HGETALL: a large hash is read in steps, and lookups interleave between them.
            return {bytes(k): int(v) for k, v in self.client.get().hscan_iter(self.keys.misses, count=MISSES_PER_CALL)}

    def delete_misses(self, keys: Sequence[bytes]) -> None:
        with translated(self.where):
            client = self.client.get()
            for start in range(0, len(keys), MISSES_PER_CALL):
                client.hdel(self.keys.misses, *keys[start : start + MISSES_PER_CALL])
