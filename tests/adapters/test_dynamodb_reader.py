"""The API's side of ``dynamodb://``: ``DynamoDBReader`` on its own asyncio client, against DynamoDB Local
(directly, or through the fault-injecting proxy that also checks every request's signature)."""

from __future__ import annotations

import asyncio

import pytest

from precompute.adapters import open_backend, open_reader
from precompute.adapters.dynamodb import DynamoDBBackend, DynamoDBReader
from precompute.store import StoreUnavailable
from precompute.store.codec import encode_key, encode_value
from tests.servers.dynamodb import FaultProxy, store_url


def rows(n: int) -> list[tuple[bytes, bytes]]:
    return [(encode_key(f"True:{i % 40}:k:{i}"), encode_value({"weight_pounds": i / 8})) for i in range(n)]


@pytest.mark.server
def test_a_throttled_lookup_is_an_error_not_a_miss(
    dynamodb_proxied: DynamoDBBackend, dynamodb_proxy: FaultProxy
) -> None:
    dynamodb_proxied.create_version("v")
    dynamodb_proxied.write("v", rows(5))
    key = rows(1)[0][0]

    async def lookup() -> None:
        reader = open_reader(dynamodb_proxied.url)
        try:
            assert await reader.get("v", key) is not None
            dynamodb_proxy.faults.throttle = 1.0
            with pytest.raises(StoreUnavailable, match="ProvisionedThroughputExceeded"):
                await reader.get("v", key)
            with pytest.raises(StoreUnavailable):
                await reader.get_many("v", [key])
        finally:
            await reader.aclose()

    asyncio.run(lookup())


@pytest.mark.server
def test_reader_before_the_first_publish_and_across_event_loops(dynamodb_store_url: str) -> None:
    reader = open_reader(dynamodb_store_url)
    assert isinstance(reader, DynamoDBReader)
    assert asyncio.run(reader.get_alias()) is None  # not even the meta table exists yet
    assert asyncio.run(reader.records()) == {}
    assert asyncio.run(reader.get("v", b"k")) is None
    backend = open_backend(dynamodb_store_url)
    backend.create_version("v")
    backend.write("v", rows(3))
    assert backend.swap_alias(None, "v")
    # A second asyncio.run is a second event loop: the reader makes a new connection pool for it.
    assert asyncio.run(reader.get_alias()) == "v"
    assert asyncio.run(reader.get("v", rows(1)[0][0])) == rows(1)[0][1]
    asyncio.run(reader.aclose())
    backend.close()


@pytest.mark.server
def test_records_come_through_the_readers_own_client_across_query_pages(
    dynamodb_proxied: DynamoDBBackend, dynamodb_proxy: FaultProxy
) -> None:
    # A Query answers 1 MB at most: 40 records of 30 KB take two pages.
    expected = {f"v{i:02d}": b"{" + bytes([65 + i % 26]) * 30_000 + b"}" for i in range(40)}
    for version, record in expected.items():
        dynamodb_proxied.put_record(version, record)
    dynamodb_proxy.faults.seen.clear()

    async def records() -> dict[str, bytes]:
        reader = open_reader(dynamodb_proxied.url)
        try:
            return await reader.records()
        finally:
            await reader.aclose()

    assert asyncio.run(records()) == expected
    seen = dynamodb_proxy.faults.seen
    assert seen["Query"] >= 2
    assert seen["Query:consistent"] == seen["Query"]  # records change with every publish
    assert seen["Query@Python"] == seen["Query"]  # the reader's aiohttp client, not a boto3 backend
    assert seen["Query@Boto3"] == 0


@pytest.mark.server
@pytest.mark.parametrize("consistent", [False, True])
def test_lookups_are_eventually_consistent_unless_asked(
    dynamodb_proxy: FaultProxy, dynamodb_prefix: str, consistent: bool
) -> None:
    url = store_url(dynamodb_prefix, dynamodb_proxy.endpoint, consistent_reads=str(consistent).lower())
    backend = open_backend(url)
    backend.create_version("v")
    backend.write("v", rows(3))
    assert backend.swap_alias(None, "v")
    dynamodb_proxy.faults.seen.clear()

    async def lookups() -> None:
        reader = open_reader(url)
        try:
            assert await reader.get_alias() == "v"
            assert await reader.get("v", rows(1)[0][0]) == rows(1)[0][1]
            assert await reader.get_many("v", [k for k, _ in rows(3)]) == [v for _, v in rows(3)]
        finally:
            await reader.aclose()

    asyncio.run(lookups())
    seen = dynamodb_proxy.faults.seen
    # The alias is always read strongly consistent; the data only when the URL asks.
    assert seen["GetItem"] == 2
    assert seen["GetItem:consistent"] == (2 if consistent else 1)
    assert seen["BatchGetItem:consistent"] == (1 if consistent else 0)
    backend.close()
