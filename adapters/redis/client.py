"""redis-py's synchronous clients (one server, or a Redis Cluster), built from :class:`RedisOptions`.

The batch side uses them for single commands, scripts and SCAN: only redis-py's public API (the bulk
path has its own sockets, :mod:`.wire.lines`). A client is created on first use, so opening a backend
costs nothing and a cluster client's first read of the slot map happens inside a call (a write task's
first call is retried like any other, :mod:`.writes`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import redis
import redis.cluster
from redis.backoff import NoBackoff
from redis.retry import Retry

from precompute.adapters.redis.errors import translated
from precompute.adapters.redis.options import RedisOptions
from precompute.adapters.redis.wire.sockets import keepalive_options, ssl_context

Client = redis.Redis | redis.cluster.RedisCluster


def _kwargs(o: RedisOptions) -> dict[str, Any]:
    kwargs: dict[str, Any] = {
        "username": o.username,
        "password": o.password,
        "socket_timeout": o.timeout_s,
        "socket_connect_timeout": o.connect_timeout_s,
        "socket_keepalive": True,  # the probes of wire.sockets: a silently dead server is noticed
        "socket_keepalive_options": keepalive_options(),
        "client_name": "precompute",
        # RESP2, as the wire code speaks it (redis-py 8 defaults to RESP3): the same handshake (AUTH, not
        # HELLO ... AUTH), so both sides meet the same replies, and the same reply shapes.
        "protocol": 2,
        # One immediate retry replaces a pooled connection that died with the server (a restart or a
        # failover); anything longer is the caller's decision, so a dead server is reported at once.
        "retry": Retry(NoBackoff(), 1),
    }
    if o.tls:
        ssl_context(o)  # the CA file is checked now: a bad one is a StoreConfigError naming the option
        kwargs.update(
            ssl=True,
            ssl_cert_reqs=o.ssl_cert_reqs,
            ssl_ca_certs=o.ssl_ca_certs,
            ssl_check_hostname=o.ssl_check_hostname and o.ssl_cert_reqs != "none",
        )
    return kwargs


def create_client(o: RedisOptions) -> Client:
    """A new redis-py client; a cluster client reads the slot map here (so this can fail like any call)."""
    if o.cluster:
        return redis.cluster.RedisCluster(host=o.host, port=o.port, **_kwargs(o))
    return redis.Redis(host=o.host, port=o.port, db=o.db, **_kwargs(o))


class SyncClient:
    """One redis-py client and its registered Lua scripts, created on first use."""

    def __init__(self, options: RedisOptions, where: str) -> None:
        self.options = options
        self.where = where
        self._client: Client | None = None
        self._scripts: dict[str, Callable[..., Any]] = {}

    def get(self) -> Client:
        if self._client is None:
            with translated(self.where):
                self._client = create_client(self.options)
        return self._client

    @property
    def is_cluster(self) -> bool:
        return self.options.cluster

    def script(self, source: str) -> Callable[..., Any]:
        """``source`` registered once (redis-py sends EVALSHA, and the script itself only when missing)."""
        script = self._scripts.get(source)
        if script is None:
            script = self._scripts[source] = self.get().register_script(source)
        return script

    def close(self) -> None:
        client, self._client = self._client, None
        self._scripts.clear()
        if client is not None:
            client.close()
