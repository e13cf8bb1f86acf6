"""The store URL (adapters/redis/options.py) and the key names and bucketing (adapters/redis/layout.py)."""

from __future__ import annotations

import pytest

from precompute.adapters.redis.layout import DEFAULT_BUCKETS, MAX_BUCKETS, ROWS_PER_BUCKET, Keys, Layout
from precompute.adapters.redis.options import RedisOptions
from precompute.store import StoreConfigError, StoreURL, VersionError


def parse(url: str) -> RedisOptions:
    return RedisOptions.parse(StoreURL.parse(url))


def test_url_options_are_parsed_and_checked() -> None:
    o = parse("rediss://app:s3cret@10.0.0.3:6378/2?prefix=bw:&ttl=86400&timeout=1.5")
    assert (o.host, o.port, o.db, o.username, o.password, o.tls, o.cluster) == (
        "10.0.0.3",
        6378,
        2,
        "app",
        "s3cret",
        True,
        False,
    )
    assert (o.prefix, o.ttl_s, o.timeout_s, o.ssl_cert_reqs) == (b"bw:", 86400.0, 1.5, "required")
    memorystore = parse("rediss://:auth-string@10.1.2.3:6378?ssl_ca_certs=/ca.pem")
    assert (memorystore.username, memorystore.password, memorystore.ssl_ca_certs) == (None, "auth-string", "/ca.pem")
    assert parse("redis+cluster://h:7000").cluster
    assert parse("redis://h?cluster=true").cluster
    assert parse("redis://h").port == 6379
    assert parse("redis://h?db=3").db == 3
    defaults = parse("redis://h")
    assert (defaults.prefix, defaults.timeout_s, defaults.connect_timeout_s, defaults.retry_s) == (b"pc:", 5, 2, 15)
    assert (defaults.ttl_s, defaults.buckets, defaults.ssl_check_hostname) == (None, None, True)
    assert parse("redis://h?retry=0").retry_s == 0
    assert parse(f"redis://h?buckets={MAX_BUCKETS}").buckets == MAX_BUCKETS


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("redis://h/x", "the path selects a database number"),
        ("redis+cluster://h/3", "only database 0"),
        ("redis://h?ttl=-1", "option ttl='-1' must be a number >= 1"),
        ("redis://h?cluster=maybe", "option cluster='maybe' must be a boolean"),
        ("redis://h?buckets=1.5", "option buckets='1.5' must be a whole number"),
        (f"redis://h?buckets={MAX_BUCKETS + 1}", "option buckets="),
        ("redis://h?timeout=0", "option timeout='0' must be a number >= 0.01"),
        ("redis://h?retry=soon", "option retry='soon' must be a number"),
        ("rediss://h?ssl_cert_reqs=maybe", "option ssl_cert_reqs='maybe' must be one of required, optional, none"),
        ("redis://h?timout=1", "unknown option 'timout'; did you mean 'timeout'?"),
        ("redis://h?ssl_ca_certs=/ca.pem", "option ssl_ca_certs applies to TLS connections only. Fix: rediss://"),
        ("redis://h?ssl_check_hostname=false", "option ssl_check_hostname applies to TLS connections only"),
    ],
)
def test_a_bad_option_is_a_configuration_error_naming_it(url: str, message: str) -> None:
    with pytest.raises(StoreConfigError, match=message.replace("?", r"\?").replace("(", r"\(")):
        parse(url)


def test_key_names_stay_under_the_prefix_and_version_ids_follow_the_one_rule() -> None:
    keys = Keys(parse("redis://h?prefix=a*b:").prefix)
    assert (keys.alias, keys.records, keys.lock) == (b"a*b:alias", b"a*b:records", b"a*b:lock")
    assert keys.layout("20261122-010203-ab12") == b"a*b:v:20261122-010203-ab12:layout"
    assert keys.scan_pattern("v1") == b"a\\*b:v:v1:*"
    for bad in ("../x", "v.1", "", "x" * 65):
        with pytest.raises(VersionError, match="invalid version id"):
            keys.version(bad)


def test_bucket_count_follows_the_announced_size() -> None:
    keys = Keys(b"p:")
    assert Layout.new(keys, "v", None).buckets == DEFAULT_BUCKETS
    assert Layout.new(keys, "v", 0).buckets == DEFAULT_BUCKETS
    assert Layout.new(keys, "v", 1_000_000).buckets == -(-1_000_000 // ROWS_PER_BUCKET)
    assert Layout.new(keys, "v", 10**12).buckets == MAX_BUCKETS
    assert Layout.new(keys, "v", 1_000_000, buckets=7).buckets == 7
    layout = Layout.new(keys, "v", 10, ttl_s=60)
    assert layout.expires_at is not None
    assert Layout.from_bytes(layout.base, layout.to_bytes()) == layout
