"""Bulk writes and reads for ``dynamodb://`` on boto3, inside DynamoDB's hard request limits.

A Ray write task hands :class:`BatchIO` thousands of items at once. They are de-duplicated (a
BatchWriteItem with two puts of one key is refused whole), size-checked against the 400 KiB item limit
before anything is sent, cut into 25-item BatchWriteItem requests and sent from a small thread pool, so
several requests are in flight per process. ``bench/dynamodb_load.py`` (DynamoDB Local on a 2-core VM,
medians of 3 runs): one process loads 7 963 items/s against 4 460 for boto3's ``batch_writer()``, which
has one request in flight; by thread count, 1: 3 919, 4: 8 371, 8: 6 866 items/s (the server on the same
cores is the limit there). The default of 8 is for AWS, where a request takes milliseconds: 8 requests
of 25 items keep a process busy on boto3's CPU (55-100 us per item) rather than waiting on the network.

Whatever the server leaves in ``UnprocessedItems`` (or throttles outright) is sent again with
exponential backoff and full jitter (``Settings.bulk_backoff``, :mod:`precompute.store.retry`) until it
lands or the URL's ``deadline`` passes; then the keys that did not land are raised in a
:class:`~store.errors.WriteError` that names them (an endpoint that stopped answering altogether is
:class:`~store.errors.StoreUnavailable`, as for every other call). boto3's own batch writer, by contrast,
re-sends unprocessed items at once with no backoff (feeding the throttling), and when a request finally
raises, the items it carried are already out of its buffer with no record of which they were. Reads go
the same way in 100-key BatchGetItem requests, ``UnprocessedKeys`` retried.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

from precompute.adapters.dynamodb.errors import (
    SDK_ERRORS,
    TableMissing,
    error_code,
    is_retryable,
    translate,
    unreachable,
)
from precompute.adapters.dynamodb.layout import KEY_ATTR, MAX_ITEM_BYTES, MAX_KEY_BYTES, VALUE_ATTR, item_size
from precompute.adapters.dynamodb.options import Settings
from precompute.store import Item, ItemTooLarge, StoreUnavailable, WriteError, WriteUnavailable

#: DynamoDB's limits per request: 25 puts in a BatchWriteItem, 100 keys in a BatchGetItem.
WRITE_REQUEST_ITEMS = 25
READ_REQUEST_KEYS = 100
R = TypeVar("R")


def check_sizes(items: dict[bytes, bytes]) -> None:
    for key, value in items.items():
        size = item_size(key, value)
        if size > MAX_ITEM_BYTES or len(key) > MAX_KEY_BYTES:
            raise ItemTooLarge(
                f"the item of key {key[:200]!r} is {size} bytes (key {len(key)}); DynamoDB stores at most "
                f"{MAX_ITEM_BYTES} bytes per item and {MAX_KEY_BYTES} per key",
                [key],
            )


class RateLimiter:
    """At most ``rate`` items per second across the threads of one process, after a burst of one request.

    Each caller books its items at once and sleeps off whatever debt that leaves, so threads queue
    fairly without holding the mutex while they wait.
    """

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.capacity = float(WRITE_REQUEST_ITEMS)
        self._tokens = self.capacity
        self._last = time.monotonic()
        self._mutex = threading.Lock()

    def acquire(self, n: int) -> None:
        with self._mutex:
            now = time.monotonic()
            self._tokens = min(self.capacity, self._tokens + (now - self._last) * self.rate)
            self._last = now
            self._tokens -= n
            wait = -self._tokens / self.rate if self._tokens < 0 else 0.0
        if wait > 0:
            time.sleep(wait)


class BatchIO:
    """BatchWriteItem / BatchGetItem requests of one process, several in flight, retried until done."""

    def __init__(self, client: Any, settings: Settings) -> None:
        self.client = client
        self.settings = settings
        self._pool = ThreadPoolExecutor(settings.write_threads, thread_name_prefix="precompute-dynamodb")
        self._limiter = RateLimiter(settings.write_rate) if settings.write_rate else None
        self._backoff = settings.bulk_backoff

    # -- writes ----------------------------------------------------------------------------------

    def write(self, table: str, items: Sequence[Item]) -> None:
        unique = dict(items)
        check_sizes(unique)
        requests = [
            {"PutRequest": {"Item": {KEY_ATTR: {"B": key}, VALUE_ATTR: {"B": value}}}} for key, value in unique.items()
        ]
        chunks = [requests[i : i + WRITE_REQUEST_ITEMS] for i in range(0, len(requests), WRITE_REQUEST_ITEMS)]
        failed: list[bytes] = []
        reasons: set[str] = set()
        for keys, reason in self._run(self._write_chunk, table, chunks):
            failed.extend(keys)
            if reason:
                reasons.add(reason)
        if failed:
            raise WriteError(
                f"{len(failed)} of {len(unique)} items did not land in DynamoDB table {table} after "
                f"{self.settings.deadline_s:g} s of retries ({'; '.join(sorted(reasons))}); first keys: "
                f"{', '.join(repr(k[:100]) for k in failed[:5])}",
                failed[:500],
            )

    def _write_chunk(self, table: str, requests: list[dict[str, Any]]) -> tuple[list[bytes], str]:
        """Send one request until every item landed; answer the keys that did not and why."""
        what = f"BatchWriteItem into {table}"
        pending = requests
        last: BaseException | None = None
        for _attempt in self._backoff.delays():
            if self._limiter is not None:
                self._limiter.acquire(len(pending))
            try:
                response = self.client.batch_write_item(RequestItems={table: pending})
            except SDK_ERRORS as exc:
                if not is_retryable(exc):
                    raise translate(exc, what) from exc
                last = exc
                continue
            last = None
            pending = response.get("UnprocessedItems", {}).get(table, [])
            if not pending:
                return [], ""
        keys = [bytes(r["PutRequest"]["Item"][KEY_ATTR]["B"]) for r in pending]
        if last is not None and unreachable(last):
            # Not one answer at the end: an outage like any other call's, not items the server refused.
            cause = translate(last, what)
            raise WriteUnavailable(
                f"{len(pending)} items not written after {self.settings.deadline_s:g} s: {cause}", keys[:500]
            ) from last
        reason = (error_code(last) or type(last).__name__) if last is not None else "left unprocessed by the server"
        return keys, reason

    # -- reads -----------------------------------------------------------------------------------

    def read(self, table: str, keys: Sequence[bytes], consistent: bool) -> list[bytes | None]:
        # BatchGetItem refuses a request that names one key twice.
        unique = list(dict.fromkeys(keys))
        chunks = [unique[i : i + READ_REQUEST_KEYS] for i in range(0, len(unique), READ_REQUEST_KEYS)]
        found: dict[bytes, bytes] = {}
        for part in self._run(self._read_chunk, table, chunks, consistent):
            found.update(part)
        return [found.get(key) for key in keys]

    def _read_chunk(self, table: str, keys: list[bytes], consistent: bool) -> dict[bytes, bytes]:
        what = f"BatchGetItem from {table}"
        request: dict[str, Any] = {
            "Keys": [{KEY_ATTR: {"B": key}} for key in keys],
            "ConsistentRead": consistent,
            "ProjectionExpression": f"{KEY_ATTR}, {VALUE_ATTR}",
        }
        found: dict[bytes, bytes] = {}
        last: BaseException | None = None
        for _attempt in self._backoff.delays():
            try:
                response = self.client.batch_get_item(RequestItems={table: request})
            except SDK_ERRORS as exc:
                error = translate(exc, what)
                if isinstance(error, TableMissing):
                    return {}  # the version was never written or has been dropped
                if not is_retryable(exc):
                    raise error from exc
                last = exc
                continue
            last = None
            for item in response.get("Responses", {}).get(table, []):
                found[bytes(item[KEY_ATTR]["B"])] = bytes(item[VALUE_ATTR]["B"])
            unprocessed = response.get("UnprocessedKeys", {}).get(table)
            if not unprocessed or not unprocessed.get("Keys"):
                return found
            request = unprocessed
        if last is not None:
            raise translate(last, what) from last
        raise StoreUnavailable(
            f"{what}: {len(request['Keys'])} keys still unprocessed after {self.settings.deadline_s:g} s of retries"
        )

    # -- plumbing --------------------------------------------------------------------------------

    def _run(self, fn: Callable[..., R], table: str, chunks: Sequence[Any], *args: Any) -> list[R]:
        """``fn(table, chunk, *args)`` for every chunk, on the pool; the first exception cancels the rest."""
        if len(chunks) <= 1:
            return [fn(table, chunk, *args) for chunk in chunks]
        futures: list[Future[R]] = [self._pool.submit(fn, table, chunk, *args) for chunk in chunks]
        try:
            return [future.result() for future in futures]
        except BaseException:
            for future in futures:
                future.cancel()
            raise

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
