"""The API's pipelined Redis connections (adapters/redis/wire/) against real servers.

Many lookups in flight on one socket, callers that give up, a server that stops answering, AUTH (password
and ACL user), database numbers, TLS, uvloop (what ``precompute serve`` runs on), and on a cluster, slots
that move (MOVED) or are being migrated (ASK).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest
import redis
import uvloop

from precompute.adapters.redis.reader import RedisReader
from precompute.adapters.redis.wire.protocol import key_slot
from precompute.store import StoreConfigError, StoreError, StoreUnavailable
from tests.adapters.redis.helpers import node_ids, port_of, publish, reading, reshard
from tests.adapters.redis.helpers import small_rows as rows
from tests.servers.redis import RedisProcess

pytestmark = pytest.mark.server


def test_concurrent_lookups_share_one_connection_and_each_gets_its_own_answer(redis_store_url: str) -> None:
    data = rows(3000)
    version = publish(redis_store_url, data)

    async def scenario(reader: RedisReader) -> None:
        assert await reader.get_alias() == version
        answers = await asyncio.gather(*(reader.get(version, key) for key, _ in data), reader.get(version, b"absent"))
        assert answers == [value for _, value in data] + [None]
        halves = await asyncio.gather(
            reader.get_many(version, [key for key, _ in data[:1500]]),
            reader.get_many(version, [key for key, _ in data[1500:]] + [b"absent"]),
        )
        assert halves[0] + halves[1] == [value for _, value in data] + [None]
        port = port_of(redis_store_url)
        with redis.Redis(port=port) as admin:
            names = [c["name"] for c in admin.client_list() if c["name"] == "precompute"]
        assert len(names) == 1, names  # every lookup above went through one socket

    reading(redis_store_url, scenario)


def test_a_caller_that_gives_up_does_not_shift_the_answers_of_the_others(redis_store_url: str) -> None:
    data = rows(400)
    version = publish(redis_store_url, data)

    async def scenario(reader: RedisReader) -> None:
        await reader.get_alias()
        tasks = [asyncio.create_task(reader.get(version, key)) for key, _ in data]
        await asyncio.sleep(0)  # every command is queued; now every third caller gives up before its reply
        for task in tasks[::3]:
            task.cancel()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        for i, ((_, value), result) in enumerate(zip(data, results, strict=True)):
            assert isinstance(result, asyncio.CancelledError) if i % 3 == 0 else result == value
        assert await reader.get(version, data[7][0]) == data[7][1]

    reading(redis_store_url, scenario)


def test_a_server_that_stops_answering_fails_lookups_within_the_timeout_and_the_reader_recovers(
    redis_factory: Callable[..., RedisProcess],
) -> None:
    server = redis_factory()
    url = f"redis://127.0.0.1:{server.port}/0?timeout=0.3"
    data = rows(10)
    version = publish(url, data)

    async def scenario(reader: RedisReader) -> None:
        assert await reader.get(version, data[0][0]) == data[0][1]
        server.cli("CLIENT", "PAUSE", "1500", "ALL")
        started = time.monotonic()
        with pytest.raises(StoreUnavailable, match=r"did not answer within 0\.3 s"):
            await reader.get(version, data[1][0])
        assert time.monotonic() - started < 1.2
        await asyncio.sleep(1.5)
        assert await reader.get(version, data[1][0]) == data[1][1]

    reading(url, scenario)


def test_an_error_reply_is_a_store_error_naming_the_server(redis_store_url: str) -> None:
    data = rows(5)
    version = publish(redis_store_url, data)
    port = port_of(redis_store_url)

    async def scenario(reader: RedisReader) -> None:
        layout = await reader.layout(version)
        assert layout is not None
        with redis.Redis(port=port) as admin:  # a bucket that is not a hash: HGET answers WRONGTYPE
            admin.delete(layout.key_of(data[0][0]))
            admin.set(layout.key_of(data[0][0]), b"not a hash")
        for call in (reader.get(version, data[0][0]), reader.get_many(version, [data[0][0]])):
            with pytest.raises(StoreError, match=r"Redis at redis://127\.0\.0\.1:\d+/0.*WRONGTYPE"):
                await call

    reading(redis_store_url, scenario)


def config_error(match: str) -> Callable[[RedisReader], Coroutine[Any, Any, None]]:
    """A scenario for ``reading``: the reader's first command fails with a StoreConfigError matching ``match``."""

    async def scenario(reader: RedisReader) -> None:
        with pytest.raises(StoreConfigError, match=match):
            await reader.get_alias()

    return scenario


def test_password_acl_user_and_database_number_are_sent_on_connect(
    redis_factory: Callable[..., RedisProcess],
) -> None:
    server = redis_factory()
    server.cli("ACL", "SETUSER", "app", "on", ">app-pass", "~*", "&*", "+@all")
    server.cli("CONFIG", "SET", "requirepass", "s3cret")
    base = f"127.0.0.1:{server.port}"
    data = rows(20)
    version = publish(f"redis://app:app-pass@{base}/3", data)

    wrong_password = config_error(r"refused the user name or password in the URL.*WRONGPASS")
    no_password = config_error(r"requires a password and the URL gives none.*NOAUTH")

    async def in_db3(reader: RedisReader) -> None:
        assert await reader.get_alias() == version
        assert await reader.get(version, data[4][0]) == data[4][1]

    async def in_db0(reader: RedisReader) -> None:
        assert await reader.get_alias() is None

    reading(f"redis://:wrong@{base}/3", wrong_password)
    reading(f"redis://app:wrong@{base}/3", wrong_password)
    reading(f"redis://{base}/3", no_password)  # no password at all: NOAUTH on the first command
    reading(f"redis://app:app-pass@{base}/3", in_db3)
    reading(f"redis://:s3cret@{base}/3", in_db3)  # the default user's password (Memorystore's AUTH string)
    reading(f"redis://:s3cret@{base}/0", in_db0)


def test_tls_reads_verify_the_server_certificate(certificates: dict[str, Path], tls_port: int) -> None:
    url = f"rediss://127.0.0.1:{tls_port}/0?ssl_ca_certs={certificates['ca.crt']}"
    data = rows(50)
    version = publish(url, data)  # the batch side's client over TLS too

    async def reads(reader: RedisReader) -> None:
        assert await reader.get_alias() == version
        assert await reader.get_many(version, [key for key, _ in data]) == [value for _, value in data]

    refused = config_error(r"does not verify\. Fix: ssl_ca_certs=.*certificate verify failed")
    missing_ca = config_error(r"option ssl_ca_certs='/nonexistent/ca\.pem' cannot be read")

    reading(url, reads)
    reading(f"rediss://127.0.0.1:{tls_port}/0", refused)  # the system CAs do not know this server
    reading(f"rediss://127.0.0.1:{tls_port}/0?ssl_cert_reqs=none", reads)
    reading(f"rediss://127.0.0.1:{tls_port}/0?ssl_ca_certs=/nonexistent/ca.pem", missing_ca)


def test_lookups_on_uvloop(redis_store_url: str) -> None:
    data = rows(100)
    version = publish(redis_store_url, data)

    async def scenario(reader: RedisReader) -> None:
        assert await reader.get_alias() == version
        answers = await asyncio.gather(*(reader.get(version, key) for key, _ in data))
        assert answers == [value for _, value in data]
        assert await reader.get_many(version, [data[3][0], b"absent"]) == [data[3][1], None]

    reading(redis_store_url, scenario, loop_factory=uvloop.new_event_loop)


# -- Redis Cluster: one pipelined connection per primary --------------------------------------------


def owner(nodes: list[RedisProcess], slot: int) -> int:
    with redis.Redis(port=nodes[0].port) as client:
        for start, end, primary, *_ in client.execute_command("CLUSTER", "SLOTS"):
            if start <= slot <= end:
                return int(primary[1])
    raise AssertionError(f"slot {slot} has no owner")


def test_cluster_lookups_follow_moved_slots_and_a_migration_in_progress(own_cluster: list[RedisProcess]) -> None:
    url = f"redis+cluster://127.0.0.1:{own_cluster[0].port}?prefix=t:"
    data = rows(2000)
    version = publish(url, data)
    keys = [key for key, _ in data]
    values = [value for _, value in data]
    ids = node_ids(own_cluster)

    async def scenario(reader: RedisReader) -> None:
        assert await reader.get_many(version, keys) == values  # the slot map is read and cached here
        # Move 3,000 slots with their keys: the reader's map is now stale, and MOVED replies correct it.
        reshard(own_cluster, 3000)
        assert [await reader.get(version, key) for key in keys[:200]] == values[:200]
        assert await reader.get_many(version, keys) == values

        # A slot half-way through a migration: its owner answers ASK for a key that already left.
        layout = await reader.layout(version)
        assert layout is not None
        bucket = layout.key_of(keys[0])
        slot = key_slot(bucket)
        source = owner(own_cluster, slot)
        target = next(n.port for n in own_cluster if n.port != source)
        with redis.Redis(port=source) as src, redis.Redis(port=target) as dst:
            dst.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", ids[source])
            src.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", ids[target])
            src.execute_command("MIGRATE", "127.0.0.1", target, "", 0, 5000, "KEYS", bucket)
            # What the reader gets from the slot's owner now (redis-py before 6 has no AskError outside a cluster).
            with pytest.raises(redis.exceptions.ResponseError) as asked:
                src.hget(bucket, keys[0])
            assert isinstance(asked.value, redis.exceptions.AskError) or str(asked.value).startswith("ASK ")
        assert await reader.get(version, keys[0]) == values[0]
        assert await reader.get_many(version, keys[:50]) == values[:50]

    reading(url, scenario)


def test_cluster_reader_reports_a_cluster_it_cannot_reach(redis_factory: Callable[..., RedisProcess]) -> None:
    down = redis_factory(start=False)

    async def scenario(reader: RedisReader) -> None:
        with pytest.raises(StoreUnavailable, match="no node answered CLUSTER SLOTS"):
            await reader.get_alias()

    reading(f"redis+cluster://127.0.0.1:{down.port}?connect_timeout=0.5", scenario)


def test_a_cluster_url_on_a_server_without_cluster_mode_is_a_configuration_error(redis_store_url: str) -> None:
    async def scenario(reader: RedisReader) -> None:
        with pytest.raises(StoreConfigError, match=r"is not a Redis Cluster\. Fix: redis://"):
            await reader.get_alias()

    reading(redis_store_url.replace("redis://", "redis+cluster://").replace("/0?", "?"), scenario)


def test_the_slot_of_a_key_is_the_one_redis_computes(redis_cluster: list[RedisProcess]) -> None:
    keys = [b"pc:v:20261122-010203-ab12:%d" % i for i in range(0, 200_000, 997)]
    keys += [b"{user1000}.following", b"foo{}{bar}", b"foo{{bar}}zap", b"{}", b"", "é".encode()]
    with redis.Redis(port=redis_cluster[0].port) as client:
        assert [key_slot(k) for k in keys] == [client.execute_command("CLUSTER", "KEYSLOT", k) for k in keys]
