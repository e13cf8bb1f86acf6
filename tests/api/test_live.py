"""The live version's refresh: a store outage is logged once when it starts and once when it ends."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

import pytest

from precompute.api.live import LiveVersion
from precompute.store import Reader, StoreUnavailable, StoreURL


class Flaky(Reader):
    """A store whose alias read fails while ``down`` is set (pure logic: the refresh loop's bookkeeping)."""

    def __init__(self) -> None:
        super().__init__(StoreURL.parse("memory://flaky"))
        self.down: BaseException | None = None

    async def get_alias(self) -> str | None:
        if self.down is not None:
            raise self.down
        return None

    async def records(self) -> dict[str, bytes]:
        return {}

    async def read_one(self, version: str, key: bytes) -> bytes | None:
        return None

    async def read_batch(self, version: str, keys: Sequence[bytes]) -> list[bytes | None]:
        return [None] * len(keys)


@pytest.mark.parametrize("error", [StoreUnavailable("connection refused"), RuntimeError("an SDK's own error")])
def test_an_outage_is_logged_once_from_start_up_and_its_end_once(
    caplog: pytest.LogCaptureFixture, error: BaseException
) -> None:
    reader = Flaky()
    live = LiveVersion(reader, refresh_seconds=1)

    async def scenario() -> None:
        reader.down = error  # down from the very start
        for _ in range(5):
            await live.refresh()
        assert live.error is not None
        reader.down = None
        for _ in range(3):
            await live.refresh()
        assert live.error is None

    with caplog.at_level(logging.INFO, logger="precompute.api"):
        asyncio.run(scenario())
    messages = [r.getMessage() for r in caplog.records]
    assert [m for m in messages if m.startswith("store unavailable")] == [
        next(m for m in messages if m.startswith("store unavailable"))
    ]
    assert str(error) in messages[0]
    assert messages.count("store reachable again") == 1
    assert not any(r.exc_info for r in caplog.records)  # no traceback per refresh
