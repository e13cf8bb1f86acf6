"""The API's async reader of ``bigtable://`` (adapters/bigtable/reader.py), against the real emulator."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
from google.cloud.bigtable.data import SetCell

from precompute.adapters import open_reader
from precompute.adapters.bigtable import BigtableBackend, BigtableReader, client
from precompute.adapters.bigtable.layout import META_FAMILY, RECORD_PREFIX
from precompute.store import Versions
from precompute.store.codec import encode_key, encode_value
from tests.store.helpers import opened, with_reader

pytestmark = pytest.mark.server


def rows(n: int) -> list[tuple[bytes, bytes]]:
    return [(encode_key(f"k:{i}"), encode_value({"y": i})) for i in range(n)]


@pytest.fixture
def backend(bigtable_store_url: str) -> Iterator[BigtableBackend]:
    yield from opened(bigtable_store_url, BigtableBackend)


def test_reader_of_a_store_never_written_finds_nothing(bigtable_store_url: str) -> None:
    async def scenario() -> None:
        reader = open_reader(bigtable_store_url)
        assert isinstance(reader, BigtableReader)
        try:
            assert await reader.get_alias() is None
            assert await reader.records() == {}
            assert await reader.get("v1", b"k") is None
            assert await reader.get_many("v1", [b"a", b"b"]) == [None, None]
            assert await reader.get_many("v1", []) == []
        finally:
            await reader.aclose()

    asyncio.run(scenario())


def test_reader_reuses_one_client_across_lookups(bigtable_store_url: str, backend: BigtableBackend) -> None:
    backend.create_version("v1")
    data = rows(50)
    backend.write("v1", data)

    async def scenario() -> None:
        reader = open_reader(bigtable_store_url)
        assert isinstance(reader, BigtableReader)
        try:
            first = await reader.get("v1", data[0][0])
            client = reader._client
            results = await asyncio.gather(*(reader.get("v1", k) for k, _ in data))
            assert first == data[0][1]
            assert results == [v for _, v in data]
            assert reader._client is client
        finally:
            await reader.aclose()

    asyncio.run(scenario())


def test_lookups_that_arrive_together_open_one_client(
    bigtable_store_url: str, backend: BigtableBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    backend.create_version("v1")
    data = rows(20)
    backend.write("v1", data)
    made: list[Any] = []
    real = client.async_data_client

    def counted(*args: Any, **kwargs: Any) -> Any:
        made.append(real(*args, **kwargs))
        return made[-1]

    monkeypatch.setattr("precompute.adapters.bigtable.reader.async_data_client", counted)

    async def scenario() -> None:
        reader = open_reader(bigtable_store_url)
        assert isinstance(reader, BigtableReader)
        try:
            first = [reader.get("v1", k) for k, _ in data]
            results = await asyncio.gather(*first, reader.get_many("v1", [k for k, _ in data]), reader.records())
            assert results[:20] == [v for _, v in data]
            assert results[20] == [v for _, v in data]
            assert results[21] == {}
        finally:
            await reader.aclose()

    asyncio.run(scenario())
    assert len(made) == 1


def test_records_are_read_on_the_readers_own_async_client(
    bigtable_store_url: str, bigtable_emulator: str, backend: BigtableBackend
) -> None:
    versions = Versions(backend)
    first = versions.begin({"model": "a"})
    backend.write(first.version, rows(3))
    versions.mark_ready(first, 3)
    versions.publish(first)
    second = versions.begin({"model": "b"})
    # A record row with no record cell (as `cbt set` could leave) is not a version.
    backend.table.mutate_row(RECORD_PREFIX + b"stray", SetCell(META_FAMILY, b"note", b"x"))
    # The same emulator spelled another way: a synchronous client for it would be a new one in the cache.
    port = bigtable_emulator.rsplit(":", 1)[1]
    url = f"{bigtable_store_url}?emulator=localhost:{port}"
    before = set(client._clients)

    records = with_reader(url, lambda reader: reader.records())
    assert records == backend.records()
    assert set(records) == {first.version, second.version}
    assert set(client._clients) == before  # no synchronous client (nor backend) was opened for it
