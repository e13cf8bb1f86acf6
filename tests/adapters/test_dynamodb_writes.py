"""The bulk path of ``dynamodb://``: DynamoDB's hard request limits, partial failures (through the
fault-injecting proxy of tests/servers/dynamodb.py), parallel writers and the write-rate cap."""

from __future__ import annotations

import multiprocessing
import time
from concurrent.futures import ThreadPoolExecutor

import botocore.exceptions
import pytest

from precompute.adapters import open_backend
from precompute.adapters.dynamodb import DynamoDBBackend
from precompute.adapters.dynamodb.layout import MAX_ITEM_BYTES
from precompute.adapters.dynamodb.writes import RateLimiter
from precompute.store import ItemTooLarge, Reader, WriteError
from precompute.store.codec import MAX_KEY_BYTES, encode_key, encode_value
from tests.servers.dynamodb import FaultProxy, create_key_table, local_client, scan_table, store_url
from tests.store.helpers import with_reader


def rows(n: int, prefix: str = "k") -> list[tuple[bytes, bytes]]:
    return [(encode_key(f"True:{i % 40}:{prefix}:{i}"), encode_value({"weight_pounds": i / 8})) for i in range(n)]


def test_rate_limiter_holds_the_rate_across_threads() -> None:
    limiter = RateLimiter(1000)
    started = time.monotonic()

    def take() -> None:
        for _ in range(10):
            limiter.acquire(25)

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda _: take(), range(4)))
    # 1 000 items at 1 000/s after a burst of 25: at least 0.975 s, however the threads interleave.
    assert time.monotonic() - started >= 0.95


# -- request limits -------------------------------------------------------------------------------


@pytest.mark.server
def test_the_largest_item_fits_exactly_and_larger_ones_never_leave_the_process(
    dynamodb_proxied: DynamoDBBackend, dynamodb_proxy: FaultProxy
) -> None:
    backend = dynamodb_proxied
    backend.create_version("v")
    longest_key = encode_key("k" * MAX_KEY_BYTES)
    largest = (longest_key, b"x" * backend.max_value_bytes)
    backend.write("v", [largest])  # 400 KiB to the byte, accepted by the real server
    assert backend.read("v", [longest_key]) == [largest[1]]

    dynamodb_proxy.faults.seen.clear()
    with pytest.raises(ItemTooLarge, match="'huge'") as caught:
        backend.write("v", [*rows(3), (b"huge", b"x" * (backend.max_value_bytes + 1))])
    assert caught.value.failed_keys == [b"huge"]
    # A key past the codec's limit makes the item too large even though its value is within limits.
    with pytest.raises(ItemTooLarge, match="b'longkkk"):
        backend.write_batch("v", [(b"long" + b"k" * 2000, b"x" * backend.max_value_bytes)])
    assert dynamodb_proxy.faults.seen["BatchWriteItem"] == 0
    assert backend.read("v", [k for k, _ in rows(3)]) == [None, None, None]


@pytest.mark.server
def test_dynamodb_local_enforces_the_limits_we_respect(dynamodb_local: str, dynamodb_prefix: str) -> None:
    """The server is a faithful stand-in: a request past AWS's limits is refused, not quietly served."""
    client = local_client(dynamodb_local)
    table = f"{dynamodb_prefix}.limits"
    create_key_table(client, table)
    puts = [{"PutRequest": {"Item": {"k": {"B": k}, "v": {"B": v}}}} for k, v in rows(26)]
    with pytest.raises(botocore.exceptions.ClientError, match="Too many items"):
        client.batch_write_item(RequestItems={table: puts})
    keys = [{"k": {"B": k}} for k, _ in rows(101)]
    with pytest.raises(botocore.exceptions.ClientError, match="Too many items"):
        client.batch_get_item(RequestItems={table: {"Keys": keys}})
    over = MAX_ITEM_BYTES - len("k") - len("key") - len("v") + 1
    with pytest.raises(botocore.exceptions.ClientError, match="Item size has exceeded"):
        client.put_item(TableName=table, Item={"k": {"B": b"key"}, "v": {"B": b"x" * over}})
    client.put_item(TableName=table, Item={"k": {"B": b"key"}, "v": {"B": b"x" * (over - 1)}})


@pytest.mark.server
def test_requests_stay_within_25_puts_and_100_keys(
    dynamodb_proxied: DynamoDBBackend, dynamodb_proxy: FaultProxy
) -> None:
    backend = dynamodb_proxied
    data = rows(1234)
    backend.create_version("v")
    backend.write("v", data)
    keys = [k for k, _ in data]
    assert backend.read("v", keys) == [v for _, v in data]

    assert with_reader(backend.url, lambda reader: reader.get_many("v", keys)) == [v for _, v in data]
    assert dynamodb_proxy.faults.largest["BatchWriteItem"] == 25
    assert dynamodb_proxy.faults.largest["BatchGetItem"] == 100
    assert dynamodb_proxy.faults.seen["bad_signature"] == 0


@pytest.mark.server
def test_two_items_with_one_key_in_a_call_are_not_refused(dynamodb_proxied: DynamoDBBackend) -> None:
    dynamodb_proxied.create_version("v")
    key = encode_key("dup")
    dynamodb_proxied.write("v", [(key, b'{"y":1}'), *rows(30), (key, b'{"y":2}')])
    assert dynamodb_proxied.read("v", [key, key]) in ([b'{"y":1}'] * 2, [b'{"y":2}'] * 2)


# -- partial failures -----------------------------------------------------------------------------


@pytest.mark.server
def test_every_item_lands_despite_unprocessed_items_and_throttling(
    dynamodb_proxied: DynamoDBBackend, dynamodb_proxy: FaultProxy, dynamodb_prefix: str, dynamodb_local: str
) -> None:
    data = rows(2000)
    dynamodb_proxied.create_version("v")
    dynamodb_proxy.faults.unprocessed = 0.3
    dynamodb_proxy.faults.throttle = 0.2
    dynamodb_proxied.write("v", data)
    seen = dynamodb_proxy.faults.seen
    assert seen["unprocessed_items"] > 100
    assert seen["throttled"] > 5
    stored = scan_table(dynamodb_local, f"{dynamodb_prefix}.v.v")
    assert stored == dict(data)


@pytest.mark.server
def test_every_key_is_read_despite_unprocessed_keys_and_throttling(
    dynamodb_proxied: DynamoDBBackend, dynamodb_proxy: FaultProxy
) -> None:
    backend = dynamodb_proxied
    data = rows(1500)
    backend.create_version("v")
    backend.write("v", data)
    keys = [k for k, _ in data] + [b"absent"]
    expected = [v for _, v in data] + [None]
    dynamodb_proxy.faults.unprocessed = 0.3
    dynamodb_proxy.faults.throttle = 0.2

    assert backend.read("v", keys) == expected
    backend_faults = dynamodb_proxy.faults.seen["unprocessed_keys"]

    async def lookups(reader: Reader) -> tuple[list[bytes | None], list[bytes | None]]:
        many = await reader.get_many("v", keys)
        singles = [await reader.get("v", k) for k in keys[:200]]
        return many, singles

    many, singles = with_reader(backend.url, lookups)
    assert many == expected
    assert singles == expected[:200]
    assert backend_faults > 100
    assert dynamodb_proxy.faults.seen["unprocessed_keys"] > backend_faults + 100
    assert dynamodb_proxy.faults.seen["throttled"] > 20


@pytest.mark.server
@pytest.mark.parametrize("fault", ["throttle", "unprocessed"])
def test_a_write_that_never_gets_through_is_raised_with_its_keys(
    dynamodb_proxy: FaultProxy, dynamodb_prefix: str, fault: str
) -> None:
    backend = open_backend(store_url(dynamodb_prefix, dynamodb_proxy.endpoint, deadline=1))
    try:
        backend.create_version("v")
        data = rows(60)
        setattr(dynamodb_proxy.faults, fault, 1.0)
        dynamodb_proxy.faults.ops = frozenset({"BatchWriteItem"})
        started = time.monotonic()
        with pytest.raises(WriteError, match="60 of 60 items did not land") as caught:
            backend.write("v", data)
        assert time.monotonic() - started < 30
        assert set(caught.value.failed_keys) == {k for k, _ in data}
    finally:
        backend.close()


# -- writers in parallel, the rate cap ------------------------------------------------------------


def _write_part(url: str, part: int, n: int) -> None:
    backend = open_backend(url)
    try:
        backend.write("v", rows(n, prefix=f"p{part}"))
    finally:
        backend.close()


@pytest.mark.server
def test_writers_in_several_processes_all_land(dynamodb_store_url: str, dynamodb_local: str) -> None:
    backend = open_backend(dynamodb_store_url)
    backend.create_version("v")
    context = multiprocessing.get_context("spawn")
    processes = [context.Process(target=_write_part, args=(dynamodb_store_url, part, 800)) for part in range(3)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=120)
        assert process.exitcode == 0
    expected = {k: v for part in range(3) for k, v in rows(800, prefix=f"p{part}")}
    assert isinstance(backend, DynamoDBBackend)
    assert scan_table(dynamodb_local, backend.layout.version_table("v")) == expected
    backend.close()


@pytest.mark.server
def test_write_rate_caps_a_load(dynamodb_local: str, dynamodb_prefix: str) -> None:
    backend = open_backend(store_url(dynamodb_prefix, dynamodb_local, write_rate=400))
    try:
        backend.create_version("v")
        data = rows(1000)
        started = time.monotonic()
        backend.write("v", data)
        # 1 000 items at 400/s after a burst of one request: at least 2.44 s.
        assert time.monotonic() - started >= 2.4
        assert backend.read("v", [k for k, _ in data]) == [v for _, v in data]
    finally:
        backend.close()
