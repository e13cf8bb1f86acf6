"""Bulk writes (adapters/redis/writes.py and wire/lines.py) on real servers: chunks in flight, packing,
retries within the ``retry`` window (a Redis restarted mid-write), and the faults that must fail a run.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest
import redis

from precompute.adapters import open_backend
from precompute.adapters.redis import RedisBackend
from precompute.adapters.redis.layout import Layout
from precompute.adapters.redis.wire.protocol import pack
from precompute.adapters.redis.writes import hset_fields, hset_pieces
from precompute.store import StoreFull, StoreUnavailable, StoreURL, Versions, WriteError
from precompute.store.codec import encode_key
from tests.adapters.redis.helpers import keys_with, reshard, rows
from tests.servers.redis import RedisProcess

pytestmark = pytest.mark.server


def load_in_background(
    backend: RedisBackend, version: str, total: int, step: int
) -> tuple[threading.Thread, list[BaseException]]:
    """Write ``total`` rows to ``version`` in calls of ``step`` rows on a started thread; the thread and
    the list that receives what the load raised (empty while it has not failed)."""
    failure: list[BaseException] = []

    def load() -> None:
        try:
            for start in range(0, total, step):
                backend.write(version, rows(step, start=start))
        except BaseException as exc:
            failure.append(exc)

    writer = threading.Thread(target=load)
    writer.start()
    return writer, failure


def wait_for_keys(server: RedisProcess, keys: int, poll_s: float) -> None:
    """Wait (60 s at most) until ``server`` holds at least ``keys`` keys: a load is under way."""
    watcher = redis.Redis(port=server.port)
    deadline = time.monotonic() + 60
    while watcher.dbsize() < keys and time.monotonic() < deadline:
        time.sleep(poll_s)
    watcher.close()


@pytest.mark.parametrize("buckets", [16, 100_000], ids=["dense-buckets", "sparse-buckets"])
def test_a_write_of_many_chunks_keeps_every_chunk_in_flight_order(url: str, buckets: int) -> None:
    class SmallChunks(RedisBackend):
        max_write_batch = 700  # 15 chunks: each collected while the next one is being sent

    backend = SmallChunks(StoreURL.parse(f"{url}&buckets={buckets}"))
    backend.create_version("v1")
    data = rows(10_000)
    backend.write("v1", data)
    newer = [(k, b'{"weight_pounds":1}') for k, _ in data[::3]]
    backend.write("v1", newer)  # a later call wins over an earlier one
    expected = dict(data) | dict(newer)
    assert backend.read("v1", list(expected)) == list(expected.values())
    assert backend.count("v1") == 10_000
    backend.close()


@pytest.mark.parametrize("buckets", [8, 1_000], ids=["dense-buckets", "sparse-buckets"])
def test_packing_sends_every_row_once_to_its_bucket_and_expires_each_bucket(buckets: int) -> None:
    layout = Layout(b"p:v:x:", buckets, expires_at=1_900_000_000)
    data = rows(100)
    commands = [command for piece in hset_pieces(layout, data) for command in piece]
    stored: list[bytes] = []
    expiring: set[bytes] = set()
    for key, payload in commands:
        fields = hset_fields(payload)
        if fields:
            assert all(layout.key_of(field) == key for field in fields)
            stored.extend(fields)
        else:
            assert payload == pack(b"EXPIREAT", key, b"1900000000")
            expiring.add(key)
    assert sorted(stored) == sorted(k for k, _ in data)
    assert expiring == {layout.key_of(k) for k, _ in data}
    assert len(commands) == 2 * len(expiring)  # one HSET and one EXPIREAT per bucket


def test_of_two_rows_with_one_key_in_one_call_the_later_wins(url: str, backend: RedisBackend) -> None:
    backend.create_version("v1")
    key = encode_key("True:25:Single(1):39")
    backend.write("v1", [(key, b'{"y":1}'), *rows(50), (key, b'{"y":2}')])
    assert backend.read("v1", [key]) == [b'{"y":2}']


def test_a_write_follows_slots_moved_under_it_and_loses_no_row(own_cluster: list[RedisProcess]) -> None:
    class SmallChunks(RedisBackend):
        max_write_batch = 2_000  # the next chunk is in flight while MOVED replies of the last are retried

    backend = SmallChunks(StoreURL.parse(f"redis+cluster://127.0.0.1:{own_cluster[0].port}?prefix=t:&buckets=3000"))
    backend.create_version("v1")
    backend.write("v1", rows(1_000))  # the bulk pipeline reads the slot map here, and keeps it
    reshard(own_cluster, 3_000)  # now stale for a sixth of the buckets
    data = rows(30_000)
    backend.write("v1", data)
    assert backend.count("v1") == 30_000
    assert backend.read("v1", [k for k, _ in data]) == [v for _, v in data]
    backend.close()


# -- faults that fail a run -------------------------------------------------------------------


def test_a_load_interrupted_by_a_killed_redis_fails_clearly_and_gc_removes_the_partial_version(
    redis_factory: Callable[..., RedisProcess],
) -> None:
    server = redis_factory("--appendonly", "yes", "--appendfsync", "always")
    url = f"redis://127.0.0.1:{server.port}/0?retry=1&connect_timeout=0.5&timeout=2"
    backend = RedisBackend(StoreURL.parse(url))
    versions = Versions(backend)
    record = versions.begin(expected_rows=2_000_000)
    writer, failure = load_in_background(backend, record.version, total=2_000_000, step=100_000)
    wait_for_keys(server, 1_000, poll_s=0.02)
    server.kill()
    writer.join(60)
    assert not writer.is_alive()
    assert len(failure) == 1, "the load must fail, not finish or hang"
    assert isinstance(failure[0], StoreUnavailable)
    assert record.version in str(failure[0])
    assert "incomplete" in str(failure[0])

    server.start()  # the append-only file brings the partial version back
    assert len(keys_with(url, backend.keys.version(record.version))) > 1
    assert versions.get(record.version).state.value == "writing"
    assert versions.gc(keep=1) == [record.version]
    assert keys_with(url, backend.keys.version(record.version)) == []
    assert backend.records() == {}
    backend.close()


def test_a_full_redis_fails_the_write_before_publish(redis_factory: Callable[..., RedisProcess]) -> None:
    server = redis_factory("--maxmemory", "8mb", "--maxmemory-policy", "noeviction")
    backend = RedisBackend(StoreURL.parse(f"redis://127.0.0.1:{server.port}/0"))
    versions = Versions(backend)
    record = versions.begin(expected_rows=400_000)
    with pytest.raises(WriteError, match="maxmemory") as caught:
        backend.write(record.version, rows(400_000))
    assert caught.value.failed_keys, "the error names keys that did not land"
    assert isinstance(caught.value, StoreFull)  # exit 8: retrying as it is cannot help
    # Once the load's query buffers are freed the server may dip under its limit; pin it to full.
    admin = redis.Redis(port=server.port)
    admin.config_set("maxmemory", "1")
    with pytest.raises(StoreFull, match="maxmemory"):
        backend.put_record(record.version, b"{}")  # a single command is refused the same way
    assert backend.get_alias() is None
    backend.drop_version(record.version)  # UNLINK is allowed when full, and frees the memory
    assert keys_with(f"redis://127.0.0.1:{server.port}", backend.keys.version(record.version)) == []
    assert versions.get(record.version).state.value == "writing"
    admin.close()
    backend.close()


# -- a Redis restarted inside the retry window ----------------------------------------------------


def persistent(redis_factory: Callable[..., RedisProcess]) -> RedisProcess:
    """A server whose data outlives a restart: every acknowledged write is on disk before its reply."""
    return redis_factory("--appendonly", "yes", "--appendfsync", "always")


def restart_later(server: RedisProcess, after_s: float) -> threading.Thread:
    def restart() -> None:
        time.sleep(after_s)
        server.start()

    thread = threading.Thread(target=restart)
    thread.start()
    return thread


def test_a_write_task_that_starts_while_redis_is_down_waits_for_it_within_the_retry_window(
    redis_factory: Callable[..., RedisProcess],
) -> None:
    server = persistent(redis_factory)
    url = f"redis://127.0.0.1:{server.port}/0?retry=15&connect_timeout=0.5&timeout=2"
    driver = open_backend(url)
    record = Versions(driver).begin(expected_rows=50_000)
    driver.close()
    data = rows(50_000)
    server.stop()
    restarter = restart_later(server, 3.0)
    task = open_backend(url)  # what a Ray write task does: a fresh backend, whose first call is the layout read
    started = time.monotonic()
    try:
        task.write(record.version, data)
        waited = time.monotonic() - started
    finally:
        restarter.join()
    assert waited > 2.0, "the write cannot have finished while the server was down"
    assert task.count(record.version) == len(data)
    sample = data[::487]
    assert task.read(record.version, [k for k, _ in sample]) == [v for _, v in sample]
    task.close()


@pytest.mark.parametrize("chunk_rows", [1_000_000, 20_000], ids=["one-call", "chunks-in-flight"])
def test_a_write_survives_redis_stopped_and_restarted_in_the_middle_of_it(
    redis_factory: Callable[..., RedisProcess], chunk_rows: int
) -> None:
    server = persistent(redis_factory)
    url = f"redis://127.0.0.1:{server.port}/0?retry=15&connect_timeout=0.5&timeout=2"

    class Chunked(RedisBackend):
        max_write_batch = chunk_rows

    backend = Chunked(StoreURL.parse(url))
    versions = Versions(backend)
    total = 600_000
    record = versions.begin(expected_rows=total)
    writer, failure = load_in_background(backend, record.version, total=total, step=200_000)
    wait_for_keys(server, 2_000, poll_s=0.01)
    server.stop()  # SIGTERM: replies in flight are lost, acknowledged writes are on disk
    time.sleep(1.0)
    server.start()
    writer.join(120)
    assert not writer.is_alive()
    assert failure == []
    assert backend.count(record.version) == total
    sample = rows(total)[::4999]
    assert backend.read(record.version, [k for k, _ in sample]) == [v for _, v in sample]
    backend.close()
