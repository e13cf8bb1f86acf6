"""The live version, resolved in the background so that a lookup costs one store round trip.

A task re-reads the store's alias every ``refresh_seconds``: a newly published version (or a rollback) is
served within that delay, without a restart. The same task tracks whether the store answers, which is what
``/readyz`` reports; it keeps trying, so the API recovers by itself when the store comes back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from precompute.store import Reader, StoreError

log = logging.getLogger("precompute.api")


class LiveVersion:
    def __init__(self, reader: Reader, refresh_seconds: float) -> None:
        self.reader = reader
        self.refresh_seconds = refresh_seconds
        self.version: str | None = None
        self.error: str | None = "not checked yet"
        self.checked_at = 0.0
        self._task: asyncio.Task[None] | None = None

    @property
    def ready(self) -> bool:
        return self.version is not None and self.error is None

    async def refresh(self) -> None:
        try:
            version = await self.reader.get_alias()
        except StoreError as exc:
            if self.error is None:
                log.warning("store unavailable: %s", exc)
            self.error = str(exc)
            return
        except Exception as exc:  # an SDK error the adapter did not translate: still only a failed refresh
            self.error = f"{type(exc).__name__}: {exc}"
            log.exception("refreshing the live version failed")
            return
        if self.error is not None and self.checked_at:
            log.warning("store reachable again")
        if version != self.version:
            log.info("serving version %s (was %s)", version, self.version)
        self.version = version
        self.error = None
        self.checked_at = time.time()

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.refresh_seconds)
            await self.refresh()

    async def start(self) -> None:
        await self.refresh()
        self._task = asyncio.create_task(self._loop(), name="precompute-live-version")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
