"""Redis backend (also Memorystore and ElastiCache): see :mod:`.backend` for the layout and its reasons."""

from precompute.adapters.redis.backend import RedisBackend
from precompute.adapters.redis.reader import RedisReader

__all__ = ["RedisBackend", "RedisReader"]
