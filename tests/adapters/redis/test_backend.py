"""Redis-specific behaviour of RedisBackend (adapters/redis/backend.py) on real servers: the layout, gc,
TTL, parallel writer processes, and the version records read back by the reader.

The generic contract runs in tests/store/test_contract.py against both fixtures of tests/servers/redis.py.
"""

from __future__ import annotations

import asyncio
import multiprocessing
from collections.abc import Callable

import pytest
import redis
import redis.cluster

from precompute.adapters import open_backend, open_reader
from precompute.adapters.redis import RedisBackend
from precompute.adapters.redis.layout import ROWS_PER_BUCKET
from precompute.store import RunLock, VersionError, Versions
from tests.adapters.redis.helpers import keys_with, rows, server_clients
from tests.servers.redis import RedisProcess
from tests.store.helpers import with_reader

pytestmark = pytest.mark.server


def test_every_key_of_a_version_is_under_its_namespace_and_drop_removes_them_all(
    url: str, backend: RedisBackend
) -> None:
    versions = Versions(backend)
    record = versions.begin(expected_rows=20_000)
    data = rows(20_000)
    backend.write(record.version, data)
    prefix = backend.keys.prefix
    version_keys = keys_with(url, backend.keys.version(record.version))
    assert len(version_keys) == -(-20_000 // ROWS_PER_BUCKET) + 1  # every bucket, plus the layout key
    assert set(keys_with(url, prefix)) - set(version_keys) == {prefix + b"records"}
    assert backend.count(record.version) == 20_000
    versions.abort(record, "test")
    assert keys_with(url, backend.keys.version(record.version)) == []
    assert backend.read(record.version, [data[0][0]]) == [None]


def test_buckets_stay_compact_listpacks(url: str, backend: RedisBackend) -> None:
    record = Versions(backend).begin(expected_rows=50_000)
    backend.write(record.version, rows(50_000))
    encodings: dict[bytes, int] = {}
    for client in server_clients(url):
        for key in client.scan_iter(match=backend.keys.version(record.version) + b"[0-9]*", count=1000):
            encoding = client.object("encoding", key)
            encodings[encoding] = encodings.get(encoding, 0) + 1
        client.close()
    assert encodings == {b"listpack": -(-50_000 // ROWS_PER_BUCKET)}


def test_cluster_writes_spread_over_every_node(redis_cluster_store_url: str) -> None:
    backend = open_backend(redis_cluster_store_url)
    backend.create_version("v1")
    backend.write("v1", rows(5_000))
    per_node = [client.dbsize() for client in server_clients(redis_cluster_store_url)]
    assert len(per_node) == 3
    assert all(n > 0 for n in per_node), per_node
    backend.close()


def test_drop_finds_the_keys_of_a_version_whose_layout_key_is_gone(url: str, backend: RedisBackend) -> None:
    backend.create_version("half")
    backend.write("half", rows(3_000))
    raw = (
        redis.cluster.RedisCluster(host="127.0.0.1", port=backend.options.port)
        if backend.options.cluster
        else server_clients(url)[0]
    )
    assert raw.delete(backend.keys.layout("half")) == 1
    raw.close()
    assert len(keys_with(url, backend.keys.version("half"))) > 0
    backend.drop_version("half")
    assert keys_with(url, backend.keys.version("half")) == []


def test_ttl_applies_to_every_key_of_a_version(url: str) -> None:
    backend = open_backend(url + "&ttl=120")
    assert isinstance(backend, RedisBackend)
    backend.create_version("v1")
    backend.write("v1", rows(2_000))
    ttls: list[int] = []
    for client in server_clients(url):
        ttls.extend(client.ttl(key) for key in client.scan_iter(match=backend.keys.version("v1") + b"*"))
        client.close()
    assert len(ttls) > 1
    assert all(0 < t <= 120 for t in ttls), sorted(set(ttls))
    backend.close()


def test_writing_a_version_that_was_never_created_is_refused(backend: RedisBackend) -> None:
    with pytest.raises(VersionError, match="does not exist"):
        backend.write("nope", rows(3))


def _write_part(url: str, version: str, start: int, n: int) -> None:
    backend = open_backend(url)  # each writer process opens its own client, as a Ray task does
    backend.write(version, rows(n, start=start))
    backend.close()


def test_parallel_writer_processes_load_one_version(url: str, backend: RedisBackend) -> None:
    backend.create_version("v1")
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_write_part, args=(url, "v1", i * 10_000, 10_000)) for i in range(3)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(120)
    assert [w.exitcode for w in workers] == [0, 0, 0]
    assert backend.count("v1") == 30_000
    sample = rows(30_000)[::997]
    assert backend.read("v1", [k for k, _ in sample]) == [v for _, v in sample]


def test_the_reader_reads_every_version_record_as_the_backend_does(url: str, backend: RedisBackend) -> None:
    versions = Versions(backend)
    first = versions.begin()
    second = versions.begin(expected_rows=10)
    backend.put_record("odd-one", b"\x00 not json \xff")  # records are opaque bytes to the adapter

    stored = with_reader(url, lambda reader: reader.records())
    assert stored == backend.records()
    assert set(stored) == {first.version, second.version, "odd-one"}
    assert stored["odd-one"] == b"\x00 not json \xff"


#: The ACL of docs/redis.md (Access): keys of the prefix, and only the commands the adapter sends.
ACL = [
    "on", ">pc-pass", "resetkeys", "~pc:*", "resetchannels", "-@all",
    "+get", "+set", "+del", "+unlink", "+expireat", "+scan",
    "+hset", "+hget", "+hgetall", "+hdel", "+hlen",
    "+evalsha", "+script|load", "+select", "+client|setname",
    "+cluster|slots", "+command", "+asking",
]  # fmt: skip


def full_cycle(url: str, admin: redis.Redis | redis.cluster.RedisCluster) -> None:
    """Every call of the backend and the reader, as a run, the API and gc make them (``admin``: a raw client)."""
    backend = open_backend(url)
    assert isinstance(backend, RedisBackend)
    versions = Versions(backend)
    with RunLock(backend, ttl_s=30):
        data = rows(3_000)
        record = versions.begin(expected_rows=len(data))
        backend.write(record.version, data)
        assert backend.count(record.version) == len(data)
        assert backend.read(record.version, [data[5][0]]) == [data[5][1]]
        versions.mark_ready(record, len(data))
        versions.publish(record)
    assert backend.acquire_lock("the next run", 5) is None, "the lock was released"
    backend.release_lock("the next run")

    async def read() -> None:
        reader = open_reader(url)
        try:
            assert await reader.get_alias() == record.version
            assert await reader.get(record.version, data[7][0]) == data[7][1]
            assert await reader.get_many(record.version, [data[1][0], b"absent"]) == [data[1][1], None]
            assert set(await reader.records()) == {record.version}
        finally:
            await reader.aclose()

    asyncio.run(read())
    newer = versions.begin()
    backend.write(newer.version, data[:10])
    versions.mark_ready(newer, 10)
    versions.publish(newer)
    assert versions.gc(keep=1) == [record.version]
    backend.create_version("no-layout")
    backend.write("no-layout", data[:10])
    assert admin.delete(backend.keys.layout("no-layout")) == 1
    backend.drop_version("no-layout")  # found by SCAN
    assert keys_with(url, backend.keys.version("no-layout")) == []
    backend.close()


def test_the_documented_acl_is_enough_for_every_call(redis_factory: Callable[..., RedisProcess]) -> None:
    server = redis_factory()
    server.cli("ACL", "SETUSER", "pc", *ACL)
    with redis.Redis(port=server.port) as admin:
        full_cycle(f"redis://pc:pc-pass@127.0.0.1:{server.port}/0?ttl=600", admin)


def test_the_documented_acl_is_enough_for_every_call_on_a_cluster(own_cluster: list[RedisProcess]) -> None:
    for node in own_cluster:
        node.cli("ACL", "SETUSER", "pc", *ACL)
    with redis.cluster.RedisCluster(host="127.0.0.1", port=own_cluster[0].port) as admin:
        full_cycle(f"redis+cluster://pc:pc-pass@127.0.0.1:{own_cluster[0].port}?ttl=600", admin)
