"""Where the Redis backend puts things: URL options, key names, bucketing and the Lua scripts.

Everything that decides a key name lives here, so the writer, the reader and gc can never disagree.
See :mod:`adapters.redis` for the layout and the measurements behind it.
"""

from __future__ import annotations

import json
import math
import re
import time
import zlib
from dataclasses import dataclass

from precompute.store import StoreError, StoreURL

_VERSION_ID = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}

#: Average fields per bucket hash. Redis keeps a hash as one compact listpack while it holds at most
#: ``hash-max-listpack-entries`` (128 by default) fields of at most ``hash-max-listpack-value`` (64)
#: bytes. With 48 on average, the fullest of a million buckets (Poisson tail) still stays under 128.
ROWS_PER_BUCKET = 48
#: Buckets of a version whose size nobody announced: good for ~4 M rows before buckets outgrow a
#: listpack (they still work then, they just take hashtable memory).
DEFAULT_BUCKETS = 65_536
MAX_BUCKETS = 1 << 26
#: Layouts a process remembers (a few versions are alive at a time; the cap only bounds a leak).
LAYOUT_CACHE = 256


def _flag(url: StoreURL, name: str, default: bool) -> bool:
    raw = url.option(name)
    if raw is None:
        return default
    if raw.lower() in _TRUE:
        return True
    if raw.lower() in _FALSE:
        return False
    raise StoreError(f"{url}: option {name}={raw!r} is not a boolean (true/false)")


def _number(url: StoreURL, name: str, default: float | None, minimum: float = 0.0) -> float | None:
    raw = url.option(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise StoreError(f"{url}: option {name}={raw!r} is not a number") from None
    if not math.isfinite(value) or value < minimum:
        raise StoreError(f"{url}: option {name}={raw!r} must be a number >= {minimum}")
    return value


@dataclass(frozen=True)
class RedisOptions:
    """The parsed ``redis://`` URL. Every option is documented in docs/redis.md."""

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

    @classmethod
    def parse(cls, url: StoreURL) -> RedisOptions:
        scheme = url.scheme
        if scheme not in ("redis", "rediss", "redis+cluster", "rediss+cluster"):
            raise StoreError(f"{url}: not a redis:// URL")
        cluster = scheme.endswith("+cluster") or _flag(url, "cluster", False)
        db_text = url.path.strip("/") or url.option("db", "0") or "0"
        if not db_text.isdigit():
            raise StoreError(f"{url}: the path selects a database number (redis://host:6379/0), not {db_text!r}")
        db = int(db_text)
        if cluster and db != 0:
            raise StoreError(f"{url}: Redis Cluster has only database 0")
        buckets = _number(url, "buckets", None, minimum=1)
        if buckets is not None and (buckets != int(buckets) or buckets > MAX_BUCKETS):
            raise StoreError(f"{url}: option buckets must be a whole number up to {MAX_BUCKETS}")
        cert_reqs = url.option("ssl_cert_reqs", "required") or "required"
        if cert_reqs not in ("required", "optional", "none"):
            raise StoreError(f"{url}: ssl_cert_reqs must be required, optional or none")
        return cls(
            host=url.host or "127.0.0.1",
            port=url.port or 6379,
            db=db,
            username=url.username,
            password=url.password,
            tls=scheme.startswith("rediss"),
            cluster=cluster,
            prefix=(url.option("prefix", "pc:") or "").encode(),
            ttl_s=_number(url, "ttl", None, minimum=1),
            buckets=int(buckets) if buckets is not None else None,
            timeout_s=_number(url, "timeout", 5.0, minimum=0.01) or 5.0,
            connect_timeout_s=_number(url, "connect_timeout", 2.0, minimum=0.01) or 2.0,
            retry_s=_number(url, "retry", 15.0) or 0.0,
            ssl_ca_certs=url.option("ssl_ca_certs"),
            ssl_cert_reqs=cert_reqs,
            ssl_check_hostname=_flag(url, "ssl_check_hostname", True),
        )

    # -- key names -----------------------------------------------------------------------------

    @property
    def alias_key(self) -> bytes:
        return self.prefix + b"alias"

    @property
    def records_key(self) -> bytes:
        return self.prefix + b"records"

    @property
    def lock_key(self) -> bytes:
        return self.prefix + b"lock"

    def version_prefix(self, version: str) -> bytes:
        if not _VERSION_ID.match(version):
            raise StoreError(f"invalid version id {version!r}: letters, digits, '.', '_' and '-' only")
        return self.prefix + b"v:" + version.encode() + b":"

    def layout_key(self, version: str) -> bytes:
        return self.version_prefix(version) + b"layout"

    def scan_pattern(self, version: str) -> bytes:
        """SCAN MATCH pattern for every key of ``version`` (the prefix is the user's, so escape it)."""
        return re.sub(rb"([\\*?\[\]])", rb"\\\1", self.version_prefix(version)) + b"*"


@dataclass(frozen=True)
class Layout:
    """How one version is bucketed, fixed when the version is created and stored next to it.

    A row lives in field ``key`` of the hash ``<prefix>v:<version>:<crc32(key) % buckets>``.
    """

    base: bytes
    buckets: int
    expires_at: int | None = None

    def bucket_key(self, bucket: int) -> bytes:
        return self.base + b"%d" % bucket

    def key_of(self, key: bytes) -> bytes:
        return self.base + b"%d" % (zlib.crc32(key) % self.buckets)

    def to_bytes(self) -> bytes:
        return json.dumps({"format": 1, "buckets": self.buckets, "expires_at": self.expires_at}).encode()

    @classmethod
    def from_bytes(cls, base: bytes, raw: bytes) -> Layout:
        data = json.loads(raw)
        if data.get("format") != 1:
            raise StoreError(f"version layout {raw[:100]!r} has an unknown format; upgrade precompute to read it")
        return cls(base, int(data["buckets"]), data.get("expires_at"))

    @classmethod
    def new(cls, options: RedisOptions, version: str, expected_rows: int | None) -> Layout:
        if options.buckets is not None:
            buckets = options.buckets
        elif expected_rows is not None and expected_rows > 0:
            buckets = min(MAX_BUCKETS, max(1, math.ceil(expected_rows / ROWS_PER_BUCKET)))
        else:
            buckets = DEFAULT_BUCKETS
        expires = int(time.time() + options.ttl_s) if options.ttl_s else None
        return cls(options.version_prefix(version), buckets, expires)


# -- Lua: each touches one key, so it runs unchanged on a Redis Cluster ---------------------------

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

# One round trip for a batch of lookups on a single server: the MGET of the bucketed layout.
MULTI_HGET = """
local out = {}
for i = 1, #KEYS do out[i] = redis.call('HGET', KEYS[i], ARGV[i]) end
return out
"""


def remember(cache: dict[str, Layout], version: str, layout: Layout) -> Layout:
    """Keep ``layout`` in a per-process cache of at most LAYOUT_CACHE versions (versions are immutable)."""
    if len(cache) >= LAYOUT_CACHE:
        cache.clear()
    cache[version] = layout
    return layout
