"""Recording misses: the off-grid keys this process answered, counted, so that a run can grow the space.

A grid is fixed when the run is configured; real traffic asks for what it asks for. With ``[serve]
record_misses = true`` every answered request for a key that decodes to features off the grid (``mother_age``
51 on a 12..50 grid), whether the model, the hot-key cache or the store answered it, adds one to that key's
count here. A key of the grid is never counted (a grid key absent from the live version is a failed load,
not a space to grow), and neither is a request that failed (late, non-finite, 404).

Bounded twice:

* in memory: at most ``max_pending`` distinct keys between two flushes (10,000 by default); a request for
  another key is not counted (``precompute_misses_total{outcome="dropped"}``);
* in the store: every ``misses_flush_seconds`` the counts are added to the store's misses
  (:meth:`~precompute.store.backend.Backend.add_misses`, atomic per key, so the counts of every API
  process add up) from a thread, through the API's one synchronous backend; a key the store has no room for
  (``misses_max_keys`` distinct keys recorded) is refused (``outcome="refused"``).

A store that cannot be written never breaks a lookup: the flush fails in its thread, the counts go back into
memory (up to the same bound), the failure is logged once until a flush works again and counted in
``precompute_misses_flush_failures_total``. The counts are flushed once more at shutdown, within
``shutdown_seconds``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from prometheus_client.core import Metric

from precompute.api.metrics import Metrics, gauge
from precompute.store import Backend, StoreError
from precompute.store.codec import encode_key

log = logging.getLogger("precompute.api")

#: Distinct keys counted in memory between two flushes.
MAX_PENDING_KEYS = 10_000


class MissRecorder:
    def __init__(
        self,
        backend: Callable[[], Backend],
        metrics: Metrics,
        flush_seconds: float,
        store_cap: int,
        max_pending: int = MAX_PENDING_KEYS,
    ) -> None:
        self._backend = backend
        self.metrics = metrics
        self.flush_seconds = flush_seconds
        self.store_cap = store_cap
        self.max_pending = max_pending
        self._pending: dict[str, int] = {}  # touched on the event loop only
        self._failing = False  # the last flush failed, and that was logged
        self._task: asyncio.Task[None] | None = None

    # -- on the event loop, per answered request ----------------------------------------------------

    def add(self, key: str) -> None:
        """Count one answer for ``key`` (a canonical off-grid key)."""
        pending = self._pending
        if key in pending:
            pending[key] += 1
        elif len(pending) < self.max_pending:
            pending[key] = 1
        else:
            self.metrics.miss("dropped")
            return
        self.metrics.miss("counted")

    def families(self) -> list[Metric]:
        """Read at scrape time."""
        return [gauge("precompute_misses_pending", "Distinct misses counted since the last flush.", len(self._pending))]

    # -- flushing -----------------------------------------------------------------------------------

    async def flush(self) -> None:
        """Add what was counted since the last flush to the store (the write runs in a thread)."""
        if not self._pending:
            return
        taken, self._pending = self._pending, {}
        try:
            refused = await asyncio.to_thread(self._write, taken)
        except Exception as exc:  # a store error, or one its adapter did not translate: never the lookups' problem
            self.metrics.miss_flush_failed()
            self._put_back(taken)
            if not self._failing:
                self._failing = True
                untranslated = "" if isinstance(exc, StoreError) else f" ({type(exc).__name__})"
                log.warning("recording misses failed, counting in memory meanwhile: %s%s", exc, untranslated)
            return
        if self._failing:
            self._failing = False
            log.warning("recording misses works again")
        self.metrics.miss("flushed", len(taken) - refused)
        if refused:
            self.metrics.miss("refused", refused)

    def _write(self, taken: dict[str, int]) -> int:
        counts = {encode_key(key): count for key, count in taken.items()}
        return self._backend().add_misses(counts, self.store_cap)

    def _put_back(self, taken: dict[str, int]) -> None:
        """Counts that could not be written, merged with those counted meanwhile, within the same bound."""
        pending = self._pending
        dropped = 0
        for key, count in taken.items():
            if key in pending:
                pending[key] += count
            elif len(pending) < self.max_pending:
                pending[key] = count
            else:
                dropped += count
        if dropped:
            self.metrics.miss("dropped", dropped)

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.flush_seconds)
            await self.flush()

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="precompute-misses")

    async def close(self, timeout_s: float) -> None:
        """Stop flushing on a timer, then flush once more, waiting at most ``timeout_s``."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        try:
            await asyncio.wait_for(self.flush(), timeout_s)
        except TimeoutError:
            log.warning("the misses counted since the last flush were not recorded: the store did not answer in time")
