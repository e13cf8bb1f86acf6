"""The contract every backend implements.

A backend is split by who calls it, not doubled into sync and async twins:

* :class:`Backend` is synchronous. The batch job uses it on the driver (versions, lock, publish) and
  inside Ray write tasks (bulk writes); the CLI uses it for admin commands.
* :class:`Reader` is asynchronous and used by the API. A lookup is one round trip: the caller resolves
  the live version once (and refreshes it in the background) and passes it to every read.

Adapters move opaque bytes. Keys and values are encoded once, in :mod:`store.codec`; versions, the run
lock and the publish protocol are implemented once, in :mod:`store.versions`, on top of the small set of
primitives below.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, ClassVar

from precompute.store.codec import EXPIRING, split_expiry, unexpired
from precompute.store.errors import ItemTooLarge
from precompute.store.url import StoreURL

if TYPE_CHECKING:
    import pyarrow as pa

Item = tuple[bytes, bytes]
"""One row of a version: (encoded key, encoded value)."""


def column_items(keys: pa.Array, values: pa.Array) -> list[Item]:
    """The rows of two binary Arrow columns as ``(key, value)`` items."""
    return list(zip(keys.to_pylist(), values.to_pylist(), strict=True))


def admitted(new: Mapping[bytes, int], room: int) -> list[bytes]:
    """The keys of ``new`` (not recorded yet) that fit in ``room`` free places: the most counted first, then
    by key, so that every backend admits the same ones."""
    if room <= 0:
        return []
    return sorted(new, key=lambda key: (-new[key], key))[:room]


class Meta(ABC):
    """The small, strongly consistent part of a store: version records, the live alias and the run lock.

    A server backend implements it in its ``meta.py`` and sets it as :attr:`Backend.meta`.
    """

    # -- version records -------------------------------------------------------------------------

    @abstractmethod
    def put_record(self, version: str, record: bytes) -> None:
        """Store the metadata record of ``version`` (JSON from :mod:`store.versions`), replacing any."""

    @abstractmethod
    def records(self) -> dict[str, bytes]:
        """Every stored version record, by version id."""

    @abstractmethod
    def delete_record(self, version: str) -> None:
        """Forget the record of ``version``. Idempotent."""

    # -- live alias ------------------------------------------------------------------------------

    @abstractmethod
    def get_alias(self) -> str | None:
        """The live version id, or ``None`` before the first publish."""

    @abstractmethod
    def swap_alias(self, expected: str | None, new: str) -> bool:
        """Atomically point the alias at ``new`` if it still points at ``expected``.

        Returns False, changing nothing, when somebody else moved it first.
        """

    # -- run lock --------------------------------------------------------------------------------

    @abstractmethod
    def acquire_lock(self, owner: str, ttl_s: float) -> str | None:
        """Take the run lock for ``ttl_s`` seconds.

        Returns ``None`` on success (also when ``owner`` already holds it, which renews it), or the
        current holder's owner string when somebody else holds an unexpired lock.
        """

    @abstractmethod
    def release_lock(self, owner: str) -> None:
        """Release the lock if ``owner`` holds it; otherwise do nothing."""

    # -- misses: off-grid keys answered online, counted (see Backend.add_misses) -----------------

    @abstractmethod
    def increment_misses(self, counts: Mapping[bytes, int], cap: int) -> int:
        """Add each count to its key's, atomically. A key not recorded yet is added only while fewer than
        ``cap`` keys are recorded (the most counted first: :func:`admitted`); returns how many keys were
        refused. ``counts`` is non-empty, every count positive (:meth:`Backend.add_misses` checks)."""

    @abstractmethod
    def read_misses(self) -> dict[bytes, int]:
        """Every recorded miss and its count."""

    @abstractmethod
    def delete_misses(self, keys: Sequence[bytes]) -> None:
        """Forget ``keys`` (non-empty, no duplicates); a key that is not recorded is ignored."""


class Backend(ABC):
    """Synchronous side of a backend: data writes, version records, the live alias and the run lock."""

    #: Items per :meth:`write` call the adapter handles best (callers chunk to this).
    max_write_batch: ClassVar[int] = 10_000
    #: Keys per :meth:`read` call the adapter handles best.
    max_read_batch: ClassVar[int] = 1_000
    #: Largest encoded value the backend accepts; larger items are rejected before anything is sent.
    max_value_bytes: ClassVar[int] = 16 * 1024 * 1024
    #: False for a store that lives in one process (``memory://``): Ray workers cannot write to it.
    shared_across_processes: ClassVar[bool] = True
    #: True for a store on one machine's disk (``sqlite://``): a remote Ray cluster cannot write to it.
    local_only: ClassVar[bool] = False
    #: Most write tasks worth running at once (``None``: no limit). A single-writer store says 1, so that
    #: Ray does not start tasks that would only queue on its lock.
    max_writers: ClassVar[int | None] = None

    #: Records, alias and lock, where the backend keeps them in a :class:`Meta` of its own.
    meta: Meta

    def __init__(self, url: StoreURL) -> None:
        self.url = url

    # -- data ------------------------------------------------------------------------------------

    @abstractmethod
    def create_version(self, version: str, expected_rows: int | None = None) -> None:
        """Create the empty namespace (table, prefix, ...) for ``version``. Idempotent.

        ``expected_rows`` is the size the run announces (``None``: unknown); a backend may size its layout
        from it (Redis sizes its buckets), and must work, less compactly, when more rows arrive.
        """

    def write(self, version: str, items: Sequence[Item]) -> None:
        """Upsert ``items`` into ``version``.

        Every value is checked against :attr:`max_value_bytes` before anything is sent
        (:class:`~store.errors.ItemTooLarge` names the key). The items then go out in chunks of
        :attr:`max_write_batch` through :meth:`write_batch`.
        """
        self.check_sizes(items)
        for start in range(0, len(items), self.max_write_batch):
            self.write_batch(version, items[start : start + self.max_write_batch])

    def write_columns(self, version: str, keys: pa.Array, values: pa.Array) -> None:
        """:meth:`write` of two binary Arrow columns of the same length: the rows ``(keys[i], values[i])``.

        The batch job's write tasks call this with the scored blocks' columns. This default makes the
        Python items :meth:`write` takes; a backend that loads columns itself (Redis, SQLite) overrides it
        and makes no Python object per row.
        """
        self.write(version, column_items(keys, values))

    def check_column_sizes(self, keys: pa.Array, values: pa.Array) -> None:
        """:meth:`check_sizes` of columns: the longest value is found in C, and the rows become Python items
        only to name the key of one that is too large."""
        import pyarrow.compute as pc

        if len(values) and pc.max(pc.binary_length(values)).as_py() > self.max_value_bytes:
            self.check_sizes(column_items(keys, values))

    def check_sizes(self, items: Sequence[Item], note: str = "") -> None:
        """Raise :class:`~store.errors.ItemTooLarge`, naming the key, for a value over :attr:`max_value_bytes`."""
        for key, value in items:
            if len(value) > self.max_value_bytes:
                raise ItemTooLarge(
                    f"the value of key {key[:200]!r} is {len(value)} bytes; {self.url.scheme}:// takes at most "
                    f"{self.max_value_bytes}{note}",
                    [key],
                )

    @abstractmethod
    def write_batch(self, version: str, items: Sequence[Item]) -> None:
        """Upsert at most :attr:`max_write_batch` items into ``version``.

        Idempotent: writing the same item twice leaves one row; of two items with the same key in one
        call, either may win. Items the server reports as failed (throttled, unprocessed) are retried
        with backoff; whatever still fails is raised as :class:`~store.errors.WriteError`. Nothing is
        dropped silently.
        """

    def read(self, version: str, keys: Sequence[bytes]) -> list[bytes | None]:
        """One result per key, in input order; a missing key is ``None``. Duplicates are answered twice."""
        results: list[bytes | None] = []
        for start in range(0, len(keys), self.max_read_batch):
            results.extend(self.read_batch(version, keys[start : start + self.max_read_batch]))
        return results

    @abstractmethod
    def read_batch(self, version: str, keys: Sequence[bytes]) -> list[bytes | None]:
        """Like :meth:`read` for at most :attr:`max_read_batch` keys."""

    @abstractmethod
    def drop_version(self, version: str) -> None:
        """Delete every row of ``version`` (cheaply where the backend allows). Idempotent."""

    def count(self, version: str) -> int | None:
        """Rows stored in ``version``, or ``None`` where counting would mean a full scan."""
        return None

    # -- version records, live alias, run lock: delegated to .meta ------------------------------
    # Server backends keep these in their meta.py (a Meta); the embedded ones override them directly.

    def put_record(self, version: str, record: bytes) -> None:
        """See :meth:`Meta.put_record`."""
        self.meta.put_record(version, record)

    def records(self) -> dict[str, bytes]:
        """See :meth:`Meta.records`."""
        return self.meta.records()

    def delete_record(self, version: str) -> None:
        """See :meth:`Meta.delete_record`."""
        self.meta.delete_record(version)

    def get_alias(self) -> str | None:
        """See :meth:`Meta.get_alias`."""
        return self.meta.get_alias()

    def swap_alias(self, expected: str | None, new: str) -> bool:
        """See :meth:`Meta.swap_alias`."""
        return self.meta.swap_alias(expected, new)

    def acquire_lock(self, owner: str, ttl_s: float) -> str | None:
        """See :meth:`Meta.acquire_lock`."""
        return self.meta.acquire_lock(owner, ttl_s)

    def release_lock(self, owner: str) -> None:
        """See :meth:`Meta.release_lock`."""
        self.meta.release_lock(owner)

    # -- misses: keys the API answered online because they are off the grid -------------------------
    # Counted by every API process (``[serve] record_misses``), read by ``precompute run`` with
    # ``[space] include_misses``. Bounded twice: ``cap`` distinct keys in the store, and what each API
    # process keeps between flushes. Small and strongly consistent, like the records: server backends keep
    # them in their meta.py, next to the alias.

    def add_misses(self, counts: Mapping[bytes, int], cap: int) -> int:
        """Add ``counts`` (key -> times answered online) to the recorded misses; returns how many keys were
        refused because ``cap`` distinct keys are recorded already.

        Each key's count is incremented atomically, so concurrent callers (API workers and replicas) add up
        exactly; a key not recorded yet is admitted only while fewer than ``cap`` keys are.
        """
        if cap < 0:
            raise ValueError(f"cap must be 0 or more, not {cap}")
        bad = [key for key, count in counts.items() if not isinstance(count, int) or count < 1]
        if bad:
            raise ValueError(f"a miss count is a positive integer; {bad[0][:100]!r} has {counts[bad[0]]!r}")
        if not counts:
            return 0
        return self.increment_misses(counts, cap)

    def misses(self) -> dict[bytes, int]:
        """Every recorded miss and its count."""
        return self.read_misses()

    def clear_misses(self, keys: Iterable[bytes]) -> None:
        """Forget ``keys`` (their counts start again from zero). Keys that are not recorded are ignored."""
        unique = list(dict.fromkeys(keys))
        if unique:
            self.delete_misses(unique)

    # Delegated to .meta, as the records are; the embedded backends override them directly.

    def increment_misses(self, counts: Mapping[bytes, int], cap: int) -> int:
        """See :meth:`Meta.increment_misses`."""
        return self.meta.increment_misses(counts, cap)

    def read_misses(self) -> dict[bytes, int]:
        """See :meth:`Meta.read_misses`."""
        return self.meta.read_misses()

    def delete_misses(self, keys: Sequence[bytes]) -> None:
        """See :meth:`Meta.delete_misses`."""
        self.meta.delete_misses(keys)

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections. Optional."""


class Reader(ABC):
    """Asynchronous read side used by the API. Implementations keep one client (pool) per process.

    Adapters implement the primitives :meth:`get_alias`, :meth:`records`, :meth:`read_one` and
    :meth:`read_batch`. Callers use :meth:`get`, :meth:`get_with_expiry` and :meth:`get_many`, written once
    here: they chunk batches and read an expired value (:func:`~precompute.store.codec.expiring`) as
    absent, so no caller parses the expiry mark.
    """

    #: Keys per :meth:`read_batch` call.
    max_read_batch: ClassVar[int] = 1_000

    def __init__(self, url: StoreURL) -> None:
        self.url = url

    # -- what callers use ------------------------------------------------------------------------

    async def get(self, version: str, key: bytes) -> bytes | None:
        """The value of ``key`` in ``version``, or ``None`` (absent or expired). One round trip."""
        stored = await self.read_one(version, key)
        if stored is None or stored[:1] != EXPIRING:
            return stored
        return unexpired(stored, time.time())

    async def get_with_expiry(self, version: str, key: bytes) -> tuple[bytes | None, int | None]:
        """``(value, expires_at)``: like :meth:`get`, and the unix second from which the value reads as
        absent, ``None`` for a value that never expires (and for an absent one). One round trip.

        For a caller that keeps values (the API's hot-key cache): what expires must not be kept past it.
        """
        stored = await self.read_one(version, key)
        if stored is None or stored[:1] != EXPIRING:  # the common case: no mark to parse, no call
            return stored, None
        return split_expiry(stored, time.time())

    async def get_many(self, version: str, keys: Sequence[bytes]) -> list[bytes | None]:
        """One result per key, in input order; a miss (or an expired value) is ``None``. All from ``version``."""
        if len(keys) <= self.max_read_batch:
            stored = await self.read_batch(version, keys)
        else:
            stored = []
            for start in range(0, len(keys), self.max_read_batch):
                stored.extend(await self.read_batch(version, keys[start : start + self.max_read_batch]))
        now = time.time()
        return [v if v is None or v[:1] != EXPIRING else unexpired(v, now) for v in stored]

    # -- what adapters implement -----------------------------------------------------------------

    @abstractmethod
    async def get_alias(self) -> str | None:
        """The live version id (the API calls this in the background, not per lookup)."""

    @abstractmethod
    async def records(self) -> dict[str, bytes]:
        """Every stored version record, by version id (as :meth:`Backend.records`)."""

    @abstractmethod
    async def read_one(self, version: str, key: bytes) -> bytes | None:
        """The stored bytes of ``key`` in ``version`` (expiry mark included), or ``None``. One round trip."""

    @abstractmethod
    async def read_batch(self, version: str, keys: Sequence[bytes]) -> list[bytes | None]:
        """Stored bytes for at most :attr:`max_read_batch` keys: one per key, in input order, a miss ``None``."""

    async def aclose(self) -> None:  # noqa: B027 - optional hook
        """Release connections. Optional."""
