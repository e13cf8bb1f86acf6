"""Redis-specific behaviour on real servers: layout, gc, TTL, parallel writers and the fault cases.

The generic contract runs in tests/store/test_contract.py against both fixtures of tests/servers/redis.py.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import threading
import time
from collections.abc import Callable, Iterator, Sequence

import pytest
import redis
import redis.cluster

from precompute.adapters import open_backend, open_reader
from precompute.adapters.redis import RedisBackend
from precompute.adapters.redis.bulk import Command, LinePipeline, hset_fields, pack
from precompute.adapters.redis.layout import DEFAULT_BUCKETS, ROWS_PER_BUCKET, Layout, RedisOptions, expected_rows
from precompute.adapters.redis.writes import BulkRunner, hset_pieces
from precompute.store import StoreError, StoreUnavailable, StoreURL, VersionError, Versions, WriteError
from precompute.store.codec import encode_key, encode_value
from tests.servers.redis import RedisProcess

pytestmark = pytest.mark.server


def rows(n: int, start: int = 0, tag: str = "") -> list[tuple[bytes, bytes]]:
    """Keys and values shaped like the babyweight example: ``True:25:Single(1):39`` -> 22-byte JSON."""
    return [
        (
            encode_key(f"{i % 2 == 0}:{i // 7 % 40}:Single(1):{i}{tag}"),
            encode_value({"weight_pounds": 5 + i % 300 / 100}),
        )
        for i in range(start, start + n)
    ]


@pytest.fixture(params=["redis_store_url", "redis_cluster_store_url"], ids=["redis", "redis_cluster"])
def url(request: pytest.FixtureRequest) -> str:
    value: str = request.getfixturevalue(request.param)
    return value


@pytest.fixture
def backend(url: str) -> Iterator[RedisBackend]:
    b = open_backend(url)
    assert isinstance(b, RedisBackend)
    yield b
    b.close()


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


# -- URL options (pure logic) --------------------------------------------------------------------


def test_url_options_are_parsed_and_checked() -> None:
    o = RedisOptions.parse(StoreURL.parse("rediss://app:s3cret@10.0.0.3:6378/2?prefix=bw:&ttl=86400&timeout=1.5"))
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
    memorystore = RedisOptions.parse(StoreURL.parse("rediss://:auth-string@10.1.2.3:6378?ssl_ca_certs=/ca.pem"))
    assert (memorystore.username, memorystore.password, memorystore.ssl_ca_certs) == (None, "auth-string", "/ca.pem")
    assert RedisOptions.parse(StoreURL.parse("redis+cluster://h:7000")).cluster
    assert RedisOptions.parse(StoreURL.parse("redis://h?cluster=true")).cluster
    assert RedisOptions.parse(StoreURL.parse("redis://h")).port == 6379
    for bad in (
        "redis://h/x",
        "redis+cluster://h/3",
        "redis://h?ttl=-1",
        "redis://h?cluster=maybe",
        "redis://h?buckets=1.5",
    ):
        with pytest.raises(StoreError):
            RedisOptions.parse(StoreURL.parse(bad))


def test_key_names_stay_under_the_prefix_and_reject_odd_version_ids() -> None:
    o = RedisOptions.parse(StoreURL.parse("redis://h?prefix=a*b:"))
    assert o.layout_key("20261122-010203-ab12") == b"a*b:v:20261122-010203-ab12:layout"
    assert o.scan_pattern("v1") == b"a\\*b:v:v1:*"
    with pytest.raises(StoreError, match="invalid version"):
        o.version_prefix("../x")


def test_bucket_count_follows_the_announced_size() -> None:
    o = RedisOptions.parse(StoreURL.parse("redis://h"))
    assert Layout.new(o, "v", None).buckets == DEFAULT_BUCKETS
    assert Layout.new(o, "v", 1_000_000).buckets == -(-1_000_000 // ROWS_PER_BUCKET)
    fixed = RedisOptions.parse(StoreURL.parse("redis://h?buckets=7"))
    assert Layout.new(fixed, "v", 1_000_000).buckets == 7
    assert expected_rows(b'{"meta": {"expected_rows": 5000}}') == 5000
    assert expected_rows(b'{"meta": {}}') is None
    assert expected_rows(b"not json") is None


# -- layout on a real server ---------------------------------------------------------------------


def test_every_key_of_a_version_is_under_its_namespace_and_drop_removes_them_all(
    url: str, backend: RedisBackend
) -> None:
    versions = Versions(backend)
    record = versions.begin({"expected_rows": 20_000})
    data = rows(20_000)
    backend.write(record.version, data)
    prefix = backend.options.prefix
    version_keys = keys_with(url, backend.options.version_prefix(record.version))
    assert len(version_keys) == -(-20_000 // ROWS_PER_BUCKET) + 1  # every bucket, plus the layout key
    assert set(keys_with(url, prefix)) - set(version_keys) == {prefix + b"records"}
    assert backend.count(record.version) == 20_000
    versions.abort(record, "test")
    assert keys_with(url, backend.options.version_prefix(record.version)) == []
    assert backend.read(record.version, [data[0][0]]) == [None]


def test_buckets_stay_compact_listpacks(url: str, backend: RedisBackend) -> None:
    record = Versions(backend).begin({"expected_rows": 50_000})
    backend.write(record.version, rows(50_000))
    encodings: dict[bytes, int] = {}
    for client in server_clients(url):
        for key in client.scan_iter(match=backend.options.version_prefix(record.version) + b"[0-9]*", count=1000):
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
    assert raw.delete(backend.options.layout_key("half")) == 1
    raw.close()
    assert len(keys_with(url, backend.options.version_prefix("half"))) > 0
    backend.drop_version("half")
    assert keys_with(url, backend.options.version_prefix("half")) == []


def test_ttl_applies_to_every_key_of_a_version(url: str) -> None:
    backend = open_backend(url + "&ttl=120")
    assert isinstance(backend, RedisBackend)
    backend.create_version("v1")
    backend.write("v1", rows(2_000))
    ttls: list[int] = []
    for client in server_clients(url):
        ttls.extend(client.ttl(key) for key in client.scan_iter(match=backend.options.version_prefix("v1") + b"*"))
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


# -- faults ----------------------------------------------------------------------------------------


def test_reader_answers_unavailable_while_redis_is_down_and_recovers_by_itself(
    redis_factory: Callable[..., RedisProcess],
) -> None:
    server = redis_factory(start=False)
    url = f"redis://127.0.0.1:{server.port}/0?connect_timeout=0.5&timeout=1"
    data = rows(100)

    async def scenario() -> None:
        reader = open_reader(url)
        try:
            with pytest.raises(StoreUnavailable, match="unreachable"):
                await reader.get_alias()
            with pytest.raises(StoreUnavailable):
                await reader.get_many("v", [b"k"])
            server.start()
            backend = open_backend(url)
            versions = Versions(backend)
            record = versions.begin()
            backend.write(record.version, data)
            versions.mark_ready(record, len(data))
            versions.publish(record)
            assert await reader.get_alias() == record.version
            assert await reader.get(record.version, data[5][0]) == data[5][1]
            server.kill()
            with pytest.raises(StoreUnavailable):
                await reader.get(record.version, data[5][0])
            server.start()  # empty again: no persistence
            assert await reader.get_alias() is None
            backend.close()
        finally:
            await reader.aclose()

    asyncio.run(scenario())


def test_a_load_interrupted_by_a_killed_redis_fails_clearly_and_gc_removes_the_partial_version(
    redis_factory: Callable[..., RedisProcess],
) -> None:
    server = redis_factory("--appendonly", "yes", "--appendfsync", "always")
    url = f"redis://127.0.0.1:{server.port}/0?retry=1&connect_timeout=0.5&timeout=2"
    backend = RedisBackend(StoreURL.parse(url))
    versions = Versions(backend)
    record = versions.begin({"expected_rows": 2_000_000})
    failure: list[BaseException] = []

    def load() -> None:
        try:
            for start in range(0, 2_000_000, 100_000):
                backend.write(record.version, rows(100_000, start=start))
        except BaseException as exc:
            failure.append(exc)

    writer = threading.Thread(target=load)
    writer.start()
    watcher = redis.Redis(port=server.port)
    deadline = time.monotonic() + 60
    while watcher.dbsize() < 1_000 and time.monotonic() < deadline:
        time.sleep(0.02)
    watcher.close()
    server.kill()
    writer.join(60)
    assert not writer.is_alive()
    assert len(failure) == 1, "the load must fail, not finish or hang"
    assert isinstance(failure[0], StoreUnavailable)
    assert record.version in str(failure[0])
    assert "incomplete" in str(failure[0])

    server.start()  # the append-only file brings the partial version back
    assert len(keys_with(url, backend.options.version_prefix(record.version))) > 1
    assert versions.get(record.version).state.value == "writing"
    assert versions.gc(keep=1) == [record.version]
    assert keys_with(url, backend.options.version_prefix(record.version)) == []
    assert backend.records() == {}
    backend.close()


def test_a_full_redis_fails_the_write_before_publish(redis_factory: Callable[..., RedisProcess]) -> None:
    server = redis_factory("--maxmemory", "8mb", "--maxmemory-policy", "noeviction")
    backend = RedisBackend(StoreURL.parse(f"redis://127.0.0.1:{server.port}/0"))
    versions = Versions(backend)
    record = versions.begin({"expected_rows": 400_000})
    with pytest.raises(WriteError, match="maxmemory") as caught:
        backend.write(record.version, rows(400_000))
    assert caught.value.failed_keys, "the error names keys that did not land"
    # Once the load's query buffers are freed the server may dip under its limit; pin it to full.
    admin = redis.Redis(port=server.port)
    admin.config_set("maxmemory", "1")
    with pytest.raises(WriteError, match="maxmemory"):
        backend.put_record(record.version, b"{}")  # a single command is refused the same way
    assert backend.get_alias() is None
    backend.drop_version(record.version)  # UNLINK is allowed when full, and frees the memory
    assert keys_with(f"redis://127.0.0.1:{server.port}", backend.options.version_prefix(record.version)) == []
    assert versions.get(record.version).state.value == "writing"
    admin.close()
    backend.close()


def test_cluster_reader_recovers_after_a_node_restarts(
    redis_cluster_store_url: str, redis_cluster: list[RedisProcess]
) -> None:
    backend = open_backend(redis_cluster_store_url)
    versions = Versions(backend)
    data = rows(300)
    record = versions.begin()
    backend.write(record.version, data)
    versions.mark_ready(record, len(data))
    versions.publish(record)
    node = redis_cluster[2]

    async def scenario() -> None:
        reader = open_reader(redis_cluster_store_url + "&connect_timeout=0.5&timeout=1")
        try:
            assert await reader.get_many(record.version, [k for k, _ in data]) == [v for _, v in data]
            node.kill()
            with pytest.raises(StoreUnavailable):
                await reader.get_many(record.version, [k for k, _ in data])
            node.start()
            deadline = time.monotonic() + 30
            while "cluster_state:ok" not in node.cli("cluster", "info") and time.monotonic() < deadline:
                await asyncio.sleep(0.2)
            got = await reader.get_many(record.version, [k for k, _ in data])
            # The restarted node kept its slots but not its data: its rows read as misses, the rest as before.
            assert [g for g in got if g is not None] == [
                v for (_, v), g in zip(data, got, strict=True) if g is not None
            ]
            assert 0 < sum(g is None for g in got) < len(data)
        finally:
            await reader.aclose()

    try:
        asyncio.run(scenario())
    finally:
        if node.proc is None:
            node.start()
        backend.close()
        deadline = time.monotonic() + 30  # leave the shared cluster healthy for the tests after this one
        while not all("cluster_state:ok" in n.cli("cluster", "info") for n in redis_cluster):
            assert time.monotonic() < deadline, "the test cluster did not recover"
            time.sleep(0.2)


# -- bulk writes ---------------------------------------------------------------------------------


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


class ScriptedPipe(LinePipeline):
    """Answers each run with the next scripted reply lines (pure retry logic, no server)."""

    def __init__(self, script: list[list[bytes] | BaseException]) -> None:
        self.script = script
        self.sent: list[list[Command]] = []

    def run(self, commands: Sequence[Command]) -> list[bytes]:
        self.sent.append(list(commands))
        step = self.script.pop(0)
        if isinstance(step, BaseException):
            raise step
        return step


def test_bulk_runner_retries_moves_and_lost_connections_only_for_what_failed() -> None:
    commands = [(b"b%d" % i, pack(b"HSET", b"b%d" % i, b"k%d" % i, b"v")) for i in range(3)]
    pipe = ScriptedPipe([redis.ConnectionError("reset"), [b":1", b"-MOVED 1 127.0.0.1:7001", b":1"], [b":1"]])
    refreshed: list[bool] = []
    runner = BulkRunner(pipe, "Redis at test", 5.0, lambda: refreshed.append(True))
    assert runner.run(commands, "writing") == [b":1", b":1", b":1"]
    assert [len(sent) for sent in pipe.sent] == [3, 3, 1]
    assert pipe.sent[2] == [commands[1]]
    assert len(refreshed) == 2


def test_bulk_runner_reports_a_full_server_with_the_keys_that_did_not_land() -> None:
    commands = [(b"b%d" % i, pack(b"HSET", b"b%d" % i, b"k%d" % i, b"v", b"j%d" % i, b"w")) for i in range(3)]
    oom = b"-OOM command not allowed when used memory > 'maxmemory'."
    runner = BulkRunner(ScriptedPipe([[b":2", oom, oom]]), "Redis at test", 5.0, lambda: None)
    with pytest.raises(WriteError, match="maxmemory reached") as caught:
        runner.run(commands, "writing 6 rows of version v")
    assert caught.value.failed_keys == [b"k1", b"j1", b"k2", b"j2"]


def test_bulk_runner_gives_up_after_its_deadline_with_a_clear_message() -> None:
    pipe = ScriptedPipe([redis.ConnectionError("refused")] * 100)
    runner = BulkRunner(pipe, "Redis at redis://h:1", 0.3, lambda: None)
    with pytest.raises(StoreUnavailable, match=r"writing 1 rows.*refused.*incomplete"):
        runner.run([(b"b", pack(b"HSET", b"b", b"k", b"v"))], "writing 1 rows of version v")
