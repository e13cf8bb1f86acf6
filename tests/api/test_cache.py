"""The hot-key and negative caches: bounds, invalidation by version, and what the API serves through them."""

from __future__ import annotations

import time

from starlette.testclient import TestClient

from precompute.api import create_app
from precompute.api.cache import ENTRY_OVERHEAD, HotCache, NegativeCache
from precompute.store import Reader
from tests.api.conftest import FailingReader, memory_config, publish, wait_for

KEY = "True:25:Single(1):39"


def test_hot_cache_is_bounded_by_bytes_and_evicts_the_least_recently_used() -> None:
    entry = ENTRY_OVERHEAD + 2 + 10  # a 2-character key and a 10-byte body
    cache = HotCache(max_bytes=3 * entry)
    for key in ("k1", "k2", "k3"):
        assert cache.get("v1", key) is None
        cache.put("v1", key, b"0123456789")
    assert cache.get("v1", "k1") == b"0123456789"  # k1 is now the most recently used
    cache.put("v1", "k4", b"0123456789")
    assert cache.bytes <= 3 * entry
    assert cache.get("v1", "k2") is None  # evicted: the least recently used
    assert cache.get("v1", "k1") is not None
    assert cache.evictions == 1
    cache.put("v1", "big", b"x" * (4 * entry))  # larger than the whole cache: not stored, nothing evicted
    assert cache.get("v1", "big") is None
    assert cache.evictions == 1
    assert cache.hits == 2
    assert cache.misses == 5
    assert abs(cache.hit_ratio - 2 / 7) < 1e-9


def test_hot_cache_is_emptied_by_a_version_change_and_ignores_late_answers_for_the_old_one() -> None:
    cache = HotCache(max_bytes=10_000)
    cache.get("v1", "k")
    cache.put("v1", "k", b"old")
    assert cache.get("v1", "k") == b"old"
    assert cache.get("v2", "k") is None  # the live version moved
    assert cache.invalidations == 1
    assert cache.bytes == 0
    cache.put("v1", "k", b"old")  # an answer computed for v1 arriving after the switch
    assert cache.get("v2", "k") is None


def test_negative_cache_expires_and_follows_the_version() -> None:
    negative = NegativeCache(ttl_seconds=0.2, max_entries=2)
    assert not negative.contains("v1", "a")
    negative.add("v1", "a")
    assert negative.contains("v1", "a")
    negative.add("v1", "b")
    negative.add("v1", "c")  # over max_entries: the oldest goes
    assert not negative.contains("v1", "a")
    assert negative.contains("v1", "c")
    assert not negative.contains("v2", "c")  # another version: forgotten
    negative.add("v2", "c")
    time.sleep(0.25)
    assert not negative.contains("v2", "c")


def test_a_publish_invalidates_the_cache_and_the_new_version_is_served() -> None:
    config = memory_config(refresh_seconds=0.05)
    first = publish(config, {KEY: b'{"weight_pounds":7.31}'})
    with TestClient(create_app(config)) as client:
        assert client.get(f"/predict/{KEY}").json()["model_version"] == first
        assert client.get(f"/predict/{KEY}").json()["model_version"] == first  # from the cache
        cache = client.app.state.cache  # type: ignore[attr-defined]
        assert cache.hits == 1
        second = publish(config, {KEY: b'{"weight_pounds":8.0}'})
        assert wait_for(lambda: client.get(f"/predict/{KEY}").json()["model_version"] == second)
        answer = client.get(f"/predict/{KEY}").json()
        assert answer["prediction"] == {"weight_pounds": 8.0}
        assert cache.invalidations == 1
        metrics = client.get("/metrics").text
    assert f'precompute_live_version_info{{version="{second}"}} 1' in metrics
    assert 'precompute_requests_total{source="cache",status="200"}' in metrics
    assert "precompute_cache_hit_ratio " in metrics


def test_cache_off_reads_the_store_every_time() -> None:
    config = memory_config(cache_bytes=0)
    publish(config, {KEY: b'{"weight_pounds":7.31}'})
    with TestClient(create_app(config)) as client:
        for _ in range(3):
            assert client.get(f"/predict/{KEY}").status_code == 200
        assert client.app.state.cache is None  # type: ignore[attr-defined]
        assert client.app.state.metrics.value("precompute_store_read_seconds_count") == 3  # type: ignore[attr-defined]


class CountingReader(FailingReader):
    """Counts single-key reads (the primitive under every template method); can fail them, as FailingReader."""

    def __init__(self, inner: Reader) -> None:
        super().__init__(inner)
        self.reads = 0

    async def read_one(self, version: str, key: bytes) -> bytes | None:
        self.reads += 1
        return await super().read_one(version, key)


def test_absent_keys_are_remembered_briefly() -> None:
    from precompute.adapters import open_reader

    config = memory_config(negative_ttl_seconds=0.3)
    publish(config, {KEY: b'{"weight_pounds":7.31}'})
    absent = "False:30:Twins(2):40"
    reader = CountingReader(open_reader(config.store_url))
    with TestClient(create_app(config, reader=reader)) as client:
        for _ in range(5):
            response = client.get(f"/predict/{absent}")
            assert response.status_code == 404
            assert "not in version" in response.json()["error"]
        assert reader.reads == 1
        time.sleep(0.35)
        assert client.get(f"/predict/{absent}").status_code == 404
        assert reader.reads == 2
        metrics = client.get("/metrics").text
    assert 'precompute_requests_total{source="negative",status="404"} 4' in metrics
