"""Steps every backend's tests take the same way: open a backend, publish a version, run a scenario with the
API's reader."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar

from precompute.adapters import open_backend, open_reader
from precompute.store import Backend, Reader, Versions

T = TypeVar("T")
B = TypeVar("B", bound=Backend)


def opened(url: str, kind: type[B]) -> Iterator[B]:
    """For a fixture to ``yield from``: the backend of ``url``, checked to be a ``kind``, closed after the test."""
    backend = open_backend(url)
    assert isinstance(backend, kind)
    yield backend
    backend.close()


def published(versions: Versions, rows: list[tuple[bytes, bytes]], meta: dict[str, Any] | None = None) -> str:
    """A new version holding ``rows`` (written through ``versions.backend``), marked ready and published; its id."""
    record = versions.begin(meta)
    versions.backend.write(record.version, rows)
    versions.mark_ready(record, len(rows))
    versions.publish(record)
    return record.version


def with_reader(url: str, scenario: Callable[[Reader], Awaitable[T]]) -> T:
    """Run ``scenario`` with a reader opened on ``url`` in a fresh event loop, closing the reader after it;
    what the scenario returned."""

    async def run() -> T:
        reader = open_reader(url)
        try:
            return await scenario(reader)
        finally:
            await reader.aclose()

    return asyncio.run(run())
