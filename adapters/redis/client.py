"""Redis clients built from a store URL, and the translation of redis-py errors into store errors."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import redis
import redis.cluster
from redis.backoff import NoBackoff
from redis.exceptions import (
    BusyLoadingError,
    ClusterDownError,
    OutOfMemoryError,
    RedisClusterException,
    RedisError,
    TryAgainError,
)
from redis.retry import Retry

from precompute.adapters.redis.layout import RedisOptions
from precompute.store import StoreError, StoreUnavailable, WriteError

#: Errors that mean "the server is not there right now" rather than "the request was wrong".
UNAVAILABLE: tuple[type[BaseException], ...] = (
    redis.ConnectionError,
    redis.TimeoutError,
    BusyLoadingError,
    ClusterDownError,
    TryAgainError,
    RedisClusterException,
    OSError,
)
#: Errors a best-effort cleanup (a topology refresh, closing a dead client) may swallow.
QUIET: tuple[type[BaseException], ...] = (*UNAVAILABLE, RedisError)


def _common(o: RedisOptions) -> dict[str, Any]:
    kwargs: dict[str, Any] = {
        "username": o.username,
        "password": o.password,
        "socket_timeout": o.timeout_s,
        "socket_connect_timeout": o.connect_timeout_s,
        "client_name": "precompute",
    }
    if o.tls:
        kwargs.update(
            ssl=True,
            ssl_cert_reqs=o.ssl_cert_reqs,
            ssl_ca_certs=o.ssl_ca_certs,
            ssl_check_hostname=o.ssl_check_hostname and o.ssl_cert_reqs != "none",
        )
    return kwargs


# One immediate retry replaces a pooled connection that died with the server (a restart or a
# failover); anything longer is the caller's decision, so a dead server is reported at once.
def _one_retry() -> Retry:
    return Retry(NoBackoff(), 1)


def sync_client(o: RedisOptions) -> redis.Redis | redis.cluster.RedisCluster:
    if o.cluster:
        return redis.cluster.RedisCluster(host=o.host, port=o.port, retry=_one_retry(), **_common(o))
    return redis.Redis(host=o.host, port=o.port, db=o.db, retry=_one_retry(), **_common(o))


@contextmanager
def translated(where: str) -> Iterator[None]:
    """Re-raise redis-py errors as the store's own (``where`` names the server in the message)."""
    try:
        yield
    except StoreError:
        raise
    except OutOfMemoryError as exc:
        raise WriteError(f"{where} is full (maxmemory reached): {exc}") from exc
    except UNAVAILABLE as exc:
        raise StoreUnavailable(f"{where} is unreachable: {exc}") from exc
    except RedisError as exc:
        raise StoreError(f"{where}: {exc}") from exc
