"""The ``redis://`` store URL, parsed once into :class:`RedisOptions`.

URL: ``redis[s][+cluster]://[[user]:password@]host[:port][/db][?option=value&...]``. ``rediss`` is TLS,
``+cluster`` a Redis Cluster (``?cluster=true`` says the same). Options: ``prefix`` (key prefix, default
``pc:``; one store per prefix), ``ttl`` (seconds a version's data lives after it is created), ``buckets``
(fixed bucket count per version), ``timeout`` / ``connect_timeout`` (socket seconds, default 5 / 2),
``retry`` (seconds a bulk write or gc keeps retrying a lost server, default 15), ``db`` (the database
number, when the path does not give it), and for ``rediss://`` only ``ssl_ca_certs``, ``ssl_cert_reqs``
(required/optional/none) and ``ssl_check_hostname`` (default true). Every option is documented in
docs/redis.md; a mistake is a :class:`~precompute.store.errors.StoreConfigError` naming the option.
"""

from __future__ import annotations

from dataclasses import dataclass

from precompute.adapters.redis.layout import MAX_BUCKETS, Keys
from precompute.store import StoreConfigError, StoreURL

SCHEMES = ("redis", "rediss", "redis+cluster", "rediss+cluster")
TLS_OPTIONS = ("ssl_ca_certs", "ssl_cert_reqs", "ssl_check_hostname")
OPTIONS = ("prefix", "cluster", "db", "ttl", "buckets", "timeout", "connect_timeout", "retry", *TLS_OPTIONS)


@dataclass(frozen=True)
class RedisOptions:
    """The settings of one ``redis://`` store URL."""

    host: str
    port: int
    db: int
    username: str | None
    password: str | None
    tls: bool
    cluster: bool
    prefix: bytes
    ttl_s: float | None
    buckets: int | None
    timeout_s: float
    connect_timeout_s: float
    retry_s: float
    ssl_ca_certs: str | None
    ssl_cert_reqs: str
    ssl_check_hostname: bool

    @property
    def keys(self) -> Keys:
        """The names of this store's keys (under its prefix)."""
        return Keys(self.prefix)

    @classmethod
    def parse(cls, url: StoreURL) -> RedisOptions:
        if url.scheme not in SCHEMES:
            raise StoreConfigError(f"{url}: not a Redis URL (schemes: {', '.join(s + '://' for s in SCHEMES)})")
        options = url.typed_options(OPTIONS)
        tls = url.scheme.startswith("rediss")
        if not tls:
            for name in TLS_OPTIONS:
                if name in url.options:
                    raise StoreConfigError(
                        f"{url}: option {name} applies to TLS connections only. "
                        f"Fix: rediss:// (or rediss+cluster://) for TLS, or drop {name}"
                    )
        cluster = url.scheme.endswith("+cluster") or options.flag("cluster", False)
        path = url.path.strip("/")
        if path and not (path.isascii() and path.isdigit()):
            raise StoreConfigError(f"{url}: the path selects a database number (redis://host:6379/0), not {path!r}")
        db = int(path) if path else options.integer("db", 0)
        if cluster and db != 0:
            raise StoreConfigError(f"{url}: a Redis Cluster has only database 0. Fix: drop /{db} from the URL")
        return cls(
            host=url.host or "127.0.0.1",
            port=url.port or 6379,
            db=db,
            username=url.username,
            password=url.password,
            tls=tls,
            cluster=cluster,
            prefix=(options.text("prefix", "pc:") or "pc:").encode(),
            ttl_s=options.optional_number("ttl", minimum=1),
            buckets=options.optional_integer("buckets", minimum=1, maximum=MAX_BUCKETS),
            timeout_s=options.number("timeout", 5.0, minimum=0.01),
            connect_timeout_s=options.number("connect_timeout", 2.0, minimum=0.01),
            retry_s=options.number("retry", 15.0),
            ssl_ca_certs=options.text("ssl_ca_certs"),
            ssl_cert_reqs=options.choice("ssl_cert_reqs", ("required", "optional", "none"), "required"),
            ssl_check_hostname=options.flag("ssl_check_hostname", True),
        )
