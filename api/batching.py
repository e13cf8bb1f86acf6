"""Adaptive micro-batching of online requests (the Clipper idea), with the model off the event loop.

Layout: requests append ``(payload, future)`` to a queue on the event loop; one collector task takes up to
``policy.limit`` of them, hands the batch to ONE worker thread and waits for it. While the model runs, new
requests queue up, so under load the next batch is already formed when the model comes back: batches grow
with the load and add no wait at low load (``max_wait`` = 0, the default). With ``max_wait`` > 0 the
collector also waits up to that long after the oldest request for the batch to fill.

Why one thread: TensorFlow releases the GIL inside a call, so one thread keeps the event loop free, and a
second thread would only split the queue into two half-size batches competing for the same cores.

The batch size limit adapts so that a model call stays under ``target`` seconds (the requests' deadline
leaves room for queueing on top of it):

* :class:`AIMD` (the default): a call over the target cuts the limit by a quarter; a full batch under the
  target raises it by ``step`` (doubling it until the first call over the target). Cheap, robust to noise,
  and it follows a model whose cost changes.
* :class:`LatencyFit`: an exponentially weighted least-squares fit ``latency = a + b * size`` over recent
  calls, limit ``(target - a) / b``; AIMD's decrease guards it while the fit is still poor.
* :class:`Fixed`: always ``max_size`` (``batch_max_size = 1`` is the one-at-a-time baseline).

Shedding: when a batch is formed, a request whose deadline would pass even if this call were as fast as the
previous one fails at once with :class:`TooLate` (a 503 or the default value, right away) instead of taking
a seat in a call whose answer would come too late. Under overload, first-come-first-served would otherwise
spend every call on requests already given up on.

Measured (bench/serving.py, docs/serving.md has the tables): under a miss storm (64 connections, every
request a distinct key off the grid) one model call answers ~34 requests, and throughput is 4.0x the
one-call-per-request rate for the babyweight model and 10.3x for a dense 4x2048 model; 256 requests sent at
once cost 7 model calls. With 300 clients and a model that turns 20x slower per row half-way, a fixed batch
of 256 takes longer than the 200 ms deadline and answers 15 requests/s, while AIMD (883/s) and the latency
fit (876/s) keep answering in time. The two adaptive policies are within noise of each other; AIMD is the
default for having no model to go wrong. ``max_wait`` > 0 only adds latency here: at one client it costs
2 ms per request and cuts throughput by 60%, and with 8 clients the model is busy often enough that
batches form without waiting.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

from prometheus_client.core import Metric

from precompute.api.metrics import Metrics, counter, gauge

P = TypeVar("P")
R = TypeVar("R")
T = TypeVar("T")


class Overloaded(Exception):
    """The queue is full or the batcher is shutting down: the request cannot be answered in time."""


class TooLate(Overloaded):
    """The request's deadline would pass before the model call it could join returns: shed at once."""


class Policy(Protocol):
    limit: int

    def observe(self, size: int, seconds: float) -> None: ...


class Fixed:
    def __init__(self, max_size: int) -> None:
        self.limit = max_size

    def observe(self, size: int, seconds: float) -> None:
        pass


class AIMD:
    """Additive increase while full batches finish under target, multiplicative decrease above it.

    Like TCP, it starts by doubling (slow start) until the first call over the target, so that a model whose
    cost hardly grows with the batch (most small models) reaches large batches in a few calls.
    """

    def __init__(self, max_size: int, target: float, start: int = 16, step: int = 8, decrease: float = 0.75) -> None:
        self.max_size = max_size
        self.target = target
        self.limit = min(start, max_size)
        self.step = step
        self.decrease = decrease
        self.slow_start = True

    def observe(self, size: int, seconds: float) -> None:
        if seconds > self.target:
            self.slow_start = False
            self.limit = max(1, min(self.limit, int(size * self.decrease)))
        elif size >= self.limit:
            grown = self.limit * 2 if self.slow_start else self.limit + self.step
            self.limit = min(self.max_size, grown)


class LatencyFit:
    """``latency ~ a + b * size``, fitted with exponential forgetting; limit = what fits in ``target``."""

    def __init__(self, max_size: int, target: float, start: int = 16, forget: float = 0.9) -> None:
        self.max_size = max_size
        self.target = target
        self.forget = forget
        self.fallback = AIMD(max_size, target, start)
        self.limit = self.fallback.limit
        self.w = self.sn = self.sl = self.snn = self.snl = 0.0

    def observe(self, size: int, seconds: float) -> None:
        f = self.forget
        self.w = f * self.w + 1.0
        self.sn = f * self.sn + size
        self.sl = f * self.sl + seconds
        self.snn = f * self.snn + size * size
        self.snl = f * self.snl + size * seconds
        self.fallback.limit = self.limit
        self.fallback.observe(size, seconds)
        mean_n, mean_l = self.sn / self.w, self.sl / self.w
        var_n = self.snn / self.w - mean_n * mean_n
        if seconds > self.target or var_n < 1.0:  # over target, or sizes too alike to fit a slope: AIMD decides
            self.limit = self.fallback.limit
            return
        slope = (self.snl / self.w - mean_n * mean_l) / var_n
        intercept = mean_l - slope * mean_n
        if slope <= 0:
            self.limit = self.fallback.limit
            return
        fitted = int((self.target - intercept) / slope)
        self.limit = max(1, min(self.max_size, fitted, 2 * max(size, 1)))  # at most double per step: fits drift


def make_policy(name: str, max_size: int, target: float) -> Policy:
    if name == "aimd":
        return AIMD(max_size, target)
    if name == "fit":
        return LatencyFit(max_size, target)
    return Fixed(max_size)


@dataclass(slots=True)
class _Item(Generic[P, R]):
    payload: P
    future: asyncio.Future[R]
    enqueued: float
    deadline: float  # loop time


class Batcher(Generic[P, R]):
    """Runs ``call(payloads) -> results`` (same length, same order) on batches of submitted payloads."""

    def __init__(
        self,
        call: Callable[[Sequence[P]], Sequence[R]],
        policy: Policy,
        metrics: Metrics,
        max_wait: float = 0.0,
        max_pending: int = 4096,
    ) -> None:
        self.call = call
        self.policy = policy
        self.metrics = metrics
        self.max_wait = max_wait
        self.max_pending = max_pending
        self.calls = 0  # model calls made; the tests count them
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="precompute-model")
        self._queue: deque[_Item[P, R]] = deque()
        self._wakeup: asyncio.Future[None] | None = None
        self._full: asyncio.Future[None] | None = None
        self._want = 0
        self._busy = False
        self._closing = False
        self._last_seconds = 0.0
        self._task: asyncio.Task[None] | None = None

    @property
    def pending(self) -> int:
        return len(self._queue)

    def start(self) -> None:
        if self._closing:  # started again after close(): a server may run the app's lifespan more than once
            self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="precompute-model")
            self._closing = False
        self._task = asyncio.create_task(self._run(), name="precompute-batcher")

    def submit(self, payload: P, timeout: float = float("inf")) -> asyncio.Future[R]:
        """Queue ``payload``; the future fails with :class:`TooLate` rather than answer after ``timeout``."""
        if self._closing:
            raise Overloaded("the server is shutting down")
        if len(self._queue) >= self.max_pending:
            raise Overloaded(f"{len(self._queue)} online requests are already queued")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[R] = loop.create_future()
        now = loop.time()
        self._queue.append(_Item(payload, future, now, now + timeout))
        if self._wakeup is not None and not self._wakeup.done():
            self._wakeup.set_result(None)
        if self._full is not None and len(self._queue) >= self._want and not self._full.done():
            self._full.set_result(None)
        return future

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._queue:
                self._wakeup = loop.create_future()
                await self._wakeup
                self._wakeup = None
            limit = self.policy.limit
            if self.max_wait > 0 and len(self._queue) < limit:
                await self._fill(loop, limit)
            batch: list[_Item[P, R]] = []
            # A request that would be late even if this call were as fast as the last one is shed now: under
            # overload, serving the oldest requests first would spend every call on answers nobody waits for.
            cutoff = loop.time() + self._last_seconds
            shed: list[_Item[P, R]] = []
            while self._queue and len(batch) < limit:
                item = self._queue.popleft()
                if item.future.done():  # cancelled by its deadline: do not spend the model on it
                    continue
                (shed if item.deadline < cutoff else batch).append(item)
            if not batch and shed:  # the estimate says nobody makes it: try the freshest, which refreshes it
                batch, shed = shed[-limit:], shed[:-limit]
            for item in shed:
                item.future.set_exception(TooLate("the model could not answer before the deadline"))
            if batch:
                await self._dispatch(loop, batch)

    async def _fill(self, loop: asyncio.AbstractEventLoop, limit: int) -> None:
        remaining = self._queue[0].enqueued + self.max_wait - loop.time()
        if remaining <= 0:
            return
        self._full = loop.create_future()
        self._want = limit
        timer = loop.call_later(remaining, _resolve, self._full)
        try:
            await self._full
        finally:
            timer.cancel()
            self._full = None

    async def _dispatch(self, loop: asyncio.AbstractEventLoop, batch: list[_Item[P, R]]) -> None:
        self._busy = True
        try:
            results, seconds = await loop.run_in_executor(self.executor, self._timed, [i.payload for i in batch])
        except Exception as exc:
            for item in batch:
                if not item.future.done():
                    item.future.set_exception(exc)
            return
        finally:
            self._busy = False
            self.calls += 1
        self.policy.observe(len(batch), seconds)
        self._last_seconds = seconds
        self.metrics.model_seconds.observe(seconds)
        self.metrics.batch_size.observe(len(batch))
        for item, result in zip(batch, results, strict=True):
            if not item.future.done():
                item.future.set_result(result)

    def _timed(self, payloads: Sequence[P]) -> tuple[Sequence[R], float]:
        start = time.perf_counter()
        results = self.call(payloads)
        if len(results) != len(payloads):
            raise RuntimeError(f"the batch call returned {len(results)} results for {len(payloads)} requests")
        return results, time.perf_counter() - start

    async def run_in_worker(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on the model thread (loading and warming the model where it will be called)."""
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn)

    async def close(self, timeout: float) -> None:
        """Refuse new requests, finish the queued ones (up to ``timeout`` seconds), stop the thread."""
        self._closing = True
        deadline = time.monotonic() + timeout
        while (self._queue or self._busy) and time.monotonic() < deadline:
            await asyncio.sleep(0.005)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for item in self._queue:
            if not item.future.done():
                item.future.set_exception(Overloaded("the server is shutting down"))
        self._queue.clear()
        self.executor.shutdown(wait=False, cancel_futures=True)

    def families(self) -> list[Metric]:
        """Read at scrape time."""
        return [
            counter("precompute_model_calls_total", "Model calls (batches) made.", self.calls),
            gauge("precompute_batch_limit", "Current adaptive batch size limit.", self.policy.limit),
            gauge("precompute_batch_queue", "Online requests waiting for the model.", len(self._queue)),
        ]


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
