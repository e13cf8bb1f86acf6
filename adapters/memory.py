"""In-process reference backend (``memory://NAME``) for unit tests and trying things out.

Every backend and reader opened on the same NAME in one process shares one store. It cannot be written
from Ray workers (other processes), so ``precompute run`` refuses it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from precompute.store import Backend, Item, Reader, StoreURL
from precompute.store.backend import admitted
from precompute.store.codec import check_version


@dataclass
class _Space:
    data: dict[str, dict[bytes, bytes]] = field(default_factory=dict)
    records: dict[str, bytes] = field(default_factory=dict)
    alias: str | None = None
    lock: tuple[str, float] | None = None
    misses: dict[bytes, int] = field(default_factory=dict)
    mutex: threading.Lock = field(default_factory=threading.Lock)


_SPACES: dict[str, _Space] = {}
_SPACES_MUTEX = threading.Lock()


def _space(url: StoreURL) -> _Space:
    url.typed_options(())  # it takes none: a misspelt one is an error, as on every backend
    name = (url.host or "") + url.path
    with _SPACES_MUTEX:
        return _SPACES.setdefault(name, _Space())


class MemoryBackend(Backend):
    shared_across_processes = False

    def __init__(self, url: StoreURL) -> None:
        super().__init__(url)
        self._s = _space(url)

    def create_version(self, version: str, expected_rows: int | None = None) -> None:
        check_version(version)
        with self._s.mutex:
            self._s.data.setdefault(version, {})

    def write_batch(self, version: str, items: Sequence[Item]) -> None:
        check_version(version)
        with self._s.mutex:
            self._s.data.setdefault(version, {}).update(items)

    def read_batch(self, version: str, keys: Sequence[bytes]) -> list[bytes | None]:
        rows = self._s.data.get(version, {})
        return [rows.get(k) for k in keys]

    def drop_version(self, version: str) -> None:
        with self._s.mutex:
            self._s.data.pop(version, None)

    def count(self, version: str) -> int | None:
        return len(self._s.data.get(version, {}))

    def put_record(self, version: str, record: bytes) -> None:
        check_version(version)
        with self._s.mutex:
            self._s.records[version] = record

    def records(self) -> dict[str, bytes]:
        with self._s.mutex:
            return dict(self._s.records)

    def delete_record(self, version: str) -> None:
        with self._s.mutex:
            self._s.records.pop(version, None)

    def get_alias(self) -> str | None:
        return self._s.alias

    def swap_alias(self, expected: str | None, new: str) -> bool:
        with self._s.mutex:
            if self._s.alias != expected:
                return False
            self._s.alias = new
            return True

    def acquire_lock(self, owner: str, ttl_s: float) -> str | None:
        now = time.time()
        with self._s.mutex:
            held = self._s.lock
            if held is not None and held[0] != owner and held[1] > now:
                return held[0]
            self._s.lock = (owner, now + ttl_s)
            return None

    def release_lock(self, owner: str) -> None:
        with self._s.mutex:
            if self._s.lock is not None and self._s.lock[0] == owner:
                self._s.lock = None

    def increment_misses(self, counts: Mapping[bytes, int], cap: int) -> int:
        with self._s.mutex:
            recorded = self._s.misses
            new = {key: count for key, count in counts.items() if key not in recorded}
            room = admitted(new, cap - len(recorded))
            for key in [*(key for key in counts if key in recorded), *room]:
                recorded[key] = recorded.get(key, 0) + counts[key]
            return len(new) - len(room)

    def read_misses(self) -> dict[bytes, int]:
        with self._s.mutex:
            return dict(self._s.misses)

    def delete_misses(self, keys: Sequence[bytes]) -> None:
        with self._s.mutex:
            for key in keys:
                self._s.misses.pop(key, None)


class MemoryReader(Reader):
    def __init__(self, url: StoreURL) -> None:
        super().__init__(url)
        self._s = _space(url)

    async def get_alias(self) -> str | None:
        return self._s.alias

    async def records(self) -> dict[str, bytes]:
        return dict(self._s.records)

    async def read_one(self, version: str, key: bytes) -> bytes | None:
        return self._s.data.get(version, {}).get(key)

    async def read_batch(self, version: str, keys: Sequence[bytes]) -> list[bytes | None]:
        rows = self._s.data.get(version, {})
        return [rows.get(k) for k in keys]
