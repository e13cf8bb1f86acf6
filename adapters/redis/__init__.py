"""Redis backend (also Memorystore and ElastiCache): see :mod:`.backend` for how the package's parts fit.

The modules have the same roles in every backend package: ``options`` (the URL), ``layout`` (where data
lives), ``client`` (the SDK's clients), ``errors`` (the SDK's exceptions translated), ``writes`` (bulk
writes), ``meta`` (records, alias, lock), ``backend`` and ``reader`` (the store contract), and ``wire``
(the transport: here the API's sockets and the bulk pipeline's, no redis-py).
"""

from precompute.adapters.redis.backend import RedisBackend
from precompute.adapters.redis.reader import RedisReader

__all__ = ["RedisBackend", "RedisReader"]
