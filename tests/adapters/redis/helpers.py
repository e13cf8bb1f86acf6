"""Rows, raw clients and small runners shared by the Redis adapter's tests."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

import redis

from precompute.adapters import open_backend, open_reader
from precompute.adapters.redis.options import RedisOptions
from precompute.adapters.redis.reader import RedisReader
from precompute.store import StoreURL, Versions
from precompute.store.codec import encode_key, encode_value
from tests.servers.redis import RedisProcess


def rows(n: int, start: int = 0, tag: str = "") -> list[tuple[bytes, bytes]]:
    """Keys and values shaped like the babyweight example: ``True:25:Single(1):39`` -> 22-byte JSON."""
    return [
        (
            encode_key(f"{i % 2 == 0}:{i // 7 % 40}:Single(1):{i}{tag}"),
            encode_value({"weight_pounds": 5 + i % 300 / 100}),
        )
        for i in range(start, start + n)
    ]


def small_rows(n: int) -> list[tuple[bytes, bytes]]:
    return [(encode_key(f"k{i}"), encode_value({"v": i})) for i in range(n)]


def port_of(url: str) -> int:
    port = StoreURL.parse(url).port
    assert port is not None
    return port


def server_clients(url: str) -> list[redis.Redis]:
    """Plain clients on every server behind ``url`` (each node of a cluster), to look at raw keys."""
    o = RedisOptions.parse(StoreURL.parse(url))
    if not o.cluster:
        return [redis.Redis(port=o.port)]
    seed = redis.Redis(port=o.port)
    nodes = seed.cluster("nodes").keys()
    seed.close()
    return [redis.Redis(port=int(node.split("@")[0].split(":")[1])) for node in nodes]


def keys_with(url: str, prefix: bytes) -> list[bytes]:
    found: list[bytes] = []
    for client in server_clients(url):
        found.extend(client.scan_iter(match=prefix + b"*", count=1000))
        client.close()
    return found


def publish(url: str, data: list[tuple[bytes, bytes]]) -> str:
    """A new version holding ``data``, published; its id."""
    backend = open_backend(url)
    try:
        versions = Versions(backend)
        record = versions.begin(expected_rows=len(data))
        backend.write(record.version, data)
        versions.mark_ready(record, len(data))
        versions.publish(record)
        return record.version
    finally:
        backend.close()


def reading(
    url: str,
    scenario: Callable[[RedisReader], Coroutine[Any, Any, None]],
    loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = None,
) -> None:
    """Run ``scenario`` with a reader on ``url`` in a fresh event loop (asyncio's own, or one made by
    ``loop_factory``), closing the reader after it."""

    async def run() -> None:
        reader = open_reader(url)
        assert isinstance(reader, RedisReader)
        try:
            await scenario(reader)
        finally:
            await reader.aclose()

    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(run())


def node_ids(nodes: list[RedisProcess]) -> dict[int, str]:
    """Port -> cluster node id of every node."""
    with redis.Redis(port=nodes[0].port) as client:
        listing: dict[str, dict[str, Any]] = client.cluster("nodes")
    return {int(address.split("@")[0].rsplit(":", 1)[1]): info["node_id"] for address, info in listing.items()}


def reshard(nodes: list[RedisProcess], slots: int) -> None:
    """Move ``slots`` slots, with their keys, from the first node to the second."""
    ids = node_ids(nodes)
    first, second = nodes[0].port, nodes[1].port
    nodes[0].cli("--cluster", "reshard", f"127.0.0.1:{first}", "--cluster-from", ids[first],
                 "--cluster-to", ids[second], "--cluster-slots", str(slots), "--cluster-yes")  # fmt: skip
