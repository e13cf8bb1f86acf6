"""Retries with exponential backoff, full jitter and a deadline: the one mechanism for sync and async code.

Two shapes cover every retry in the project:

* a whole call that may fail transiently: ``policy.call(fn, retry_on)`` / ``await policy.acall(fn, retry_on)``
  retries while ``retry_on(exc)`` is true and re-raises the last error when attempts or time run out;
* a bulk call that fails in part (unprocessed items, per-row statuses): ``for attempt in policy.delays():``
  (``async for`` over ``policy.adelays()``) sends what is left each time and breaks when nothing is; a loop
  that ends without a break still has failures, which the caller raises (nothing is ever dropped).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class Backoff:
    """Delays of ``base * 2**attempt`` capped at ``cap``, fully jittered, until ``deadline_s`` is spent."""

    base_s: float = 0.05
    cap_s: float = 2.0
    deadline_s: float = 60.0
    max_attempts: int = 20

    def delay(self, attempt: int, elapsed: float) -> float | None:
        """The pause before attempt ``attempt + 1`` (``None``: give up), ``elapsed`` seconds after the first."""
        if attempt >= self.max_attempts or elapsed >= self.deadline_s:
            return None
        delay = random.uniform(0, min(self.cap_s, self.base_s * 2**attempt))
        return min(delay, max(0.0, self.deadline_s - elapsed))

    def _pauses(self, started: float) -> Iterator[float]:
        """The pause before each next attempt, measured from ``started``, while attempts and time remain."""
        attempt = 1
        while (pause := self.delay(attempt, time.monotonic() - started)) is not None:
            yield pause
            attempt += 1

    def delays(self, sleep: Callable[[float], None] = time.sleep) -> Iterator[int]:
        """Attempt numbers from 1, sleeping between them, until attempts or the deadline run out."""
        pauses = self._pauses(time.monotonic())
        yield 1
        for attempt, pause in enumerate(pauses, start=2):
            sleep(pause)
            yield attempt

    async def adelays(self) -> AsyncIterator[int]:
        """:meth:`delays` for async code: the pauses are ``asyncio.sleep``."""
        pauses = self._pauses(time.monotonic())
        yield 1
        for attempt, pause in enumerate(pauses, start=2):
            await asyncio.sleep(pause)
            yield attempt

    def call(self, fn: Callable[[], T], retry_on: Callable[[BaseException], bool]) -> T:
        """``fn()``, retried while it raises an error that ``retry_on`` accepts; the last error is raised."""
        last: Exception | None = None
        for _attempt in self.delays():
            try:
                return fn()
            except Exception as exc:
                if not retry_on(exc):
                    raise
                last = exc
        assert last is not None  # delays() yields at least once
        raise last

    async def acall(self, fn: Callable[[], Awaitable[T]], retry_on: Callable[[BaseException], bool]) -> T:
        """:meth:`call` for a coroutine function."""
        last: Exception | None = None
        async for _attempt in self.adelays():
            try:
                return await fn()
            except Exception as exc:
                if not retry_on(exc):
                    raise
                last = exc
        assert last is not None  # adelays() yields at least once
        raise last
