"""RedisReader (adapters/redis/reader.py) on real servers: a Redis down when the API starts, a restart,
a cluster node that restarts under the reader.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import pytest

from precompute.adapters import open_backend
from precompute.store import Reader, StoreUnavailable, Versions
from tests.adapters.redis.helpers import rows
from tests.servers.redis import RedisProcess
from tests.store.helpers import published, with_reader

pytestmark = pytest.mark.server


def test_reader_answers_unavailable_while_redis_is_down_and_recovers_by_itself(
    redis_factory: Callable[..., RedisProcess],
) -> None:
    server = redis_factory(start=False)
    url = f"redis://127.0.0.1:{server.port}/0?connect_timeout=0.5&timeout=1"
    data = rows(100)

    async def scenario(reader: Reader) -> None:
        with pytest.raises(StoreUnavailable, match="unreachable"):
            await reader.get_alias()
        with pytest.raises(StoreUnavailable):
            await reader.get_many("v", [b"k"])
        with pytest.raises(StoreUnavailable, match="unreachable"):
            await reader.records()
        server.start()
        backend = open_backend(url)
        version = published(Versions(backend), data)
        assert await reader.get_alias() == version
        assert await reader.get(version, data[5][0]) == data[5][1]
        assert set(await reader.records()) == {version}
        server.kill()
        with pytest.raises(StoreUnavailable):
            await reader.get(version, data[5][0])
        server.start()  # empty again: no persistence
        assert await reader.get_alias() is None
        backend.close()

    with_reader(url, scenario)


def test_cluster_reader_recovers_after_a_node_restarts(
    redis_cluster_store_url: str, redis_cluster: list[RedisProcess]
) -> None:
    backend = open_backend(redis_cluster_store_url)
    data = rows(300)
    version = published(Versions(backend), data)
    node = redis_cluster[2]

    async def scenario(reader: Reader) -> None:
        assert await reader.get_many(version, [k for k, _ in data]) == [v for _, v in data]
        node.kill()
        with pytest.raises(StoreUnavailable):
            await reader.get_many(version, [k for k, _ in data])
        node.start()
        deadline = time.monotonic() + 30
        while "cluster_state:ok" not in node.cli("cluster", "info") and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        got = await reader.get_many(version, [k for k, _ in data])
        # The restarted node kept its slots but not its data: its rows read as misses, the rest as before.
        assert [g for g in got if g is not None] == [v for (_, v), g in zip(data, got, strict=True) if g is not None]
        assert 0 < sum(g is None for g in got) < len(data)

    try:
        with_reader(redis_cluster_store_url + "&connect_timeout=0.5&timeout=1", scenario)
    finally:
        if node.proc is None:
            node.start()
        backend.close()
        deadline = time.monotonic() + 30  # leave the shared cluster healthy for the tests after this one
        while not all("cluster_state:ok" in n.cli("cluster", "info") for n in redis_cluster):
            assert time.monotonic() < deadline, "the test cluster did not recover"
            time.sleep(0.2)
