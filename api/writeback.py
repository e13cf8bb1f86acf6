"""Write-back of online answers into the live version, so that the next lookup (from any replica) is a hit.

Answers queue here from the model thread and are written by a thread of their own, so a slow store never
delays the next model call; everything queued while a write is in progress goes out in the next one.

The version guard: before writing, the store's alias is read again (one round trip per flush, not per
answer), and answers for a version that is no longer live are dropped. The only writes into a replaced
version are those whose alias check ran just before a publish landed: a window of one store round trip,
and harmless, since nobody reads a replaced version (a rollback to it would serve those rows, which came
from the model that version was scored with; nothing else is written back).

With ``[serve] write_back_ttl_seconds``, each answer is written with its expiry (store/codec.py's
``expiring``): lookups read it as absent from then on, so the model answers again and the new answer is
written back over it. The row's storage goes with its version (``precompute gc``), or with the version's
own TTL where the store has one (Redis ``?ttl=``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from precompute.api.metrics import Metrics
from precompute.store import Backend, StoreError
from precompute.store.codec import encode_key, expiring

log = logging.getLogger("precompute.api")


class WriteBack:
    def __init__(self, backend: Callable[[], Backend], metrics: Metrics, ttl_s: float | None = None) -> None:
        self._factory = backend
        self.ttl_s = ttl_s
        self._backend: Backend | None = None
        self.metrics = metrics
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="precompute-writeback")
        self._lock = threading.Lock()
        self._pending: list[tuple[str, str, bytes]] = []
        self._scheduled = False
        self._last_warning = 0.0

    def add(self, version: str, key: str, value: bytes) -> None:
        """Queue one answer (any thread)."""
        with self._lock:
            self._pending.append((version, key, value))
            if self._scheduled:
                return
            self._scheduled = True
        self._executor.submit(self._flush)

    def _flush(self) -> None:
        with self._lock:
            pending, self._pending = self._pending, []
            self._scheduled = False
        by_version: dict[str, dict[bytes, bytes]] = defaultdict(dict)
        expires_at = time.time() + self.ttl_s if self.ttl_s else None
        for version, key, value in pending:
            by_version[version][encode_key(key)] = value if expires_at is None else expiring(value, expires_at)
        for version, items in by_version.items():
            try:
                if self._backend is None:
                    self._backend = self._factory()
                if self._backend.get_alias() != version:
                    self.metrics.writeback("skipped", len(items))
                    continue
                self._backend.write(version, list(items.items()))
                self.metrics.writeback("written", len(items))
            except StoreError as exc:
                self.metrics.writeback("failed", len(items))
                now = time.monotonic()
                if now - self._last_warning > 60:  # one line a minute at most, whatever the request rate
                    self._last_warning = now
                    log.warning("write-back failed: %s", exc, extra={"fields": {"version": version}})

    def close(self) -> None:
        """Write what is queued and stop the thread (a later ``add`` starts a new one)."""
        self._executor.shutdown(wait=True)
        if self._pending:
            self._flush()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="precompute-writeback")
