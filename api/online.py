"""Online answers for a lookup: requests handed to the batcher, awaited until their deadline, and what a
request gets when the model cannot answer in time (a 503 with its cause, or the configured default)."""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import math
import time
from typing import TYPE_CHECKING

from precompute.api.batching import Overloaded, TooLate
from precompute.api.metrics import Metrics
from precompute.api.responses import NON_FINITE, RETRY, LookupFailed, batch_error, batch_item, splice
from precompute.space import Decoded

if TYPE_CHECKING:
    from precompute.api.batching import Batcher
    from precompute.api.fallback import Online, Scored

log = logging.getLogger("precompute.api")


class OnlineAnswers:
    def __init__(self, batcher: Batcher[Online, Scored], metrics: Metrics, deadline_ms: float) -> None:
        self.batcher = batcher
        self.metrics = metrics
        self.deadline = deadline_ms / 1000
        self.deadline_ms = deadline_ms
        self.default: bytes | None = None  # set once the model is loaded and the default checked against it
        self.deadlines = Deadlines()
        self._last_error = 0.0
        # Imported here, once: the fallback's module is loaded only when the fallback is on, and an import
        # statement in a function costs ~2 us on every call.
        from precompute.api.fallback import Online

        self._online = Online

    async def scored(self, items: list[tuple[str, Decoded]], version: str | None, started: float) -> list[Scored | str]:
        """Each item's answer, or why there is none: "overloaded", "deadline" or "model_error"."""
        remaining = self.deadline - (time.perf_counter() - started)
        outcome: list[Scored | str] = ["overloaded"] * len(items)
        futures: dict[asyncio.Future[Scored], int] = {}
        for i, (key, decoded) in enumerate(items):
            try:
                futures[self.batcher.submit(self._online(key, decoded.features, version), remaining)] = i
            except Overloaded:
                self.metrics.late_answer("overloaded")
        if not futures:
            return outcome
        done, pending = await asyncio.wait(futures, timeout=max(remaining, 0.0))
        for future in pending:
            future.cancel()  # the batcher skips it if it is still queued
            outcome[futures[future]] = "deadline"
            self.metrics.late_answer("deadline")
        for future in done:
            exc = future.exception()
            if exc is None:
                outcome[futures[future]] = future.result()
                continue
            cause = "model_error"
            if isinstance(exc, Overloaded):
                cause = "deadline" if isinstance(exc, TooLate) else "overloaded"
            outcome[futures[future]] = cause
            self.metrics.late_answer(cause)
            if cause == "model_error" and time.monotonic() - self._last_error > 60:  # one traceback a minute
                self._last_error = time.monotonic()
                log.error("the online model failed", exc_info=exc)
        return outcome

    async def one(self, key: str, decoded: Decoded, version: str | None, started: float) -> Scored | str:
        """:meth:`scored` for a single request (``GET /predict``): the same outcomes, with one future and an
        entry in :class:`Deadlines` instead of ``asyncio.wait``'s waiter, callbacks, sets and timer. A miss
        storm runs this once per request on the event loop, which it shares with the HTTP parsing of every
        other request."""
        remaining = self.deadline - (time.perf_counter() - started)
        try:
            future = self.batcher.submit(self._online(key, decoded.features, version), remaining)
        except Overloaded:
            self.metrics.late_answer("overloaded")
            return "overloaded"
        self.deadlines.add(future, remaining)
        try:
            return await future
        except Expired:
            cause = "deadline"
        except TooLate:
            cause = "deadline"
        except Overloaded:
            cause = "overloaded"
        except asyncio.CancelledError:
            future.cancel()  # the client went away: the batcher skips it if it is still queued
            raise
        except Exception as exc:
            cause = "model_error"
            if time.monotonic() - self._last_error > 60:  # one traceback a minute
                self._last_error = time.monotonic()
                log.error("the online model failed", exc_info=exc)
        self.metrics.late_answer(cause)
        return cause

    def message(self, cause: str) -> str:
        if cause == "deadline":
            return f"the model did not answer within the {self.deadline_ms:g} ms deadline"
        if cause == "model_error":
            return "the model failed on this request (see the server log)"
        return "too many online requests are waiting for the model (or the server is shutting down)"

    def late(self, key: str, cause: str) -> tuple[bytes, str]:
        """The response to a request the model could not answer: the default, or a 503 saying why."""
        if self.default is not None:
            return splice(key, self.default, b"default", None), "default"
        raise LookupFailed(503, self.message(cause), source="online", headers=RETRY, key=key, cause=cause)

    def item(self, key: str, scored: Scored | str) -> bytes:
        """One item of a POST /predict answer, its prediction spliced in as the model's bytes."""
        if isinstance(scored, str):
            if self.default is not None:
                return batch_item(key, self.default, b"default", None)
            return batch_error({"key": key, "error": self.message(scored), "cause": scored, "status": 503})
        if scored.value is None:
            return batch_error({"key": key, "error": NON_FINITE, "status": 422})
        return batch_item(key, scored.value, b"online", scored.model_version)


class Expired(Exception):
    """Set on a request's future when its deadline passes first; the batcher skips a future already done."""


class Deadlines:
    """Every waiting request's deadline under one timer: a future still waiting when its deadline passes
    fails with :class:`Expired`. A timer of its own per request (``call_later``, then ``cancel``) cost 2.7 us
    of the event loop's time per online answer under uvloop, a heap entry about 1 us. An answered request's
    entry stays until its deadline (a few thousand entries at the storm rates measured in docs/serving.md),
    or until the heap has doubled since it was last swept of answered entries."""

    # Due entries are expired up to this early: the timer of a loop on libuv fires on whole milliseconds.
    EARLY = 0.001
    SWEEP_AT = 16_384  # the fewest entries worth sweeping

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, asyncio.Future[Scored]]] = []
        self._order = itertools.count()
        # call_at's handle: uvloop's is a plain Handle (no ``when()``) when the time is already due.
        self._timer: asyncio.Handle | None = None
        self._armed_at = math.inf
        self._loop: asyncio.AbstractEventLoop | None = None
        self._sweep_at = self.SWEEP_AT

    def __len__(self) -> int:
        return len(self._heap)

    def add(self, future: asyncio.Future[Scored], seconds: float) -> None:
        loop = future.get_loop()
        if loop is not self._loop:  # an app started again on another loop: the old one's timer never fires
            self._heap.clear()
            self._timer, self._armed_at = None, math.inf
            self._loop = loop
        if len(self._heap) >= self._sweep_at:  # long deadlines at a high rate: drop what is answered
            self._heap = [entry for entry in self._heap if not entry[2].done()]
            heapq.heapify(self._heap)
            self._sweep_at = max(self.SWEEP_AT, 2 * len(self._heap))
        at = loop.time() + max(seconds, 0.0)
        heapq.heappush(self._heap, (at, next(self._order), future))
        if at < self._armed_at:
            self._arm(loop, at)

    def _arm(self, loop: asyncio.AbstractEventLoop, at: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer, self._armed_at = loop.call_at(at, self._expire, loop), at

    def _expire(self, loop: asyncio.AbstractEventLoop) -> None:
        heap = self._heap
        due = loop.time() + self.EARLY
        while heap and heap[0][0] <= due:
            future = heapq.heappop(heap)[2]
            if not future.done():
                future.set_exception(Expired())
        self._timer, self._armed_at = None, math.inf
        if heap:
            self._arm(loop, heap[0][0])
