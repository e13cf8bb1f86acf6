"""Immutable versions, one atomic alias, and the run lock, implemented once for every backend.

Life of a version::

    begin()  -> record 'writing', empty namespace created     (nobody reads it)
    write    -> rows land through Backend.write               (from Ray write tasks)
    publish()-> record 'ready', then ONE compare-and-swap of the live alias
    refuse() -> record 'refused', rows kept for review         (the drift gate said no; live alias untouched)
    approve()-> a refused version published deliberately      (``precompute publish VERSION``)
    abort()  -> record 'failed', rows dropped                  (live alias untouched)

The live state is not stored in records: the version the alias points at *is* live. A version that was
live and was rolled back is marked 'rolled_back' before the alias moves, so no later rollback promotes it
again silently (``rollback(to=...)`` can still name it explicitly).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import socket
import threading
import time
from dataclasses import asdict, dataclass, field, fields
from enum import StrEnum
from types import TracebackType
from typing import Any

from precompute.store.backend import Backend
from precompute.store.codec import KEY_FORMAT, VALUE_FORMAT, check_version
from precompute.store.errors import LockHeld, StoreError, VersionError

log = logging.getLogger("precompute")


class State(StrEnum):
    WRITING = "writing"
    READY = "ready"
    FAILED = "failed"
    ROLLED_BACK = "rolled_back"
    REFUSED = "refused"  # complete and verified, but the drift gate kept it from being published


@dataclass
class VersionRecord:
    version: str
    state: State
    created_at: float
    published_at: float | None = None
    rows: int | None = None
    key_format: int = KEY_FORMAT
    value_format: int = VALUE_FORMAT
    meta: dict[str, Any] = field(default_factory=dict)

    def to_bytes(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> VersionRecord:
        raw = json.loads(data)
        raw["state"] = State(raw["state"])
        # Fields a newer release added are left out, so that check_readable() can say what is wrong.
        known = {f.name for f in fields(cls)}
        return cls(**{name: value for name, value in raw.items() if name in known})

    def check_readable(self) -> None:
        """Raise :class:`VersionError` if this version's formats are newer than this release reads."""
        for what, stored, ours in (("keys", self.key_format, KEY_FORMAT), ("values", self.value_format, VALUE_FORMAT)):
            if stored > ours:
                raise VersionError(
                    f"version {self.version} stores {what} in format {stored}; this release of precompute reads "
                    f"formats up to {ours}. Fix: upgrade precompute where it reads this store"
                )


@dataclass(frozen=True)
class VersionView:
    """A record plus whether the alias points at it (what ``precompute versions`` lists)."""

    record: VersionRecord
    live: bool


def new_version_id(now: float | None = None) -> str:
    """``YYYYmmdd-HHMMSS-xxxx`` (UTC, then 16 random bits): sorts by time, valid for :func:`check_version`."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime(now if now is not None else time.time()))
    return check_version(f"{stamp}-{secrets.token_hex(2)}")


def lock_owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"


class Versions:
    """Version lifecycle on top of a backend's primitives."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend

    # -- reading ---------------------------------------------------------------------------------

    def records(self) -> list[VersionRecord]:
        """Every version record, oldest first."""
        records = [VersionRecord.from_bytes(raw) for raw in self.backend.records().values()]
        return sorted(records, key=lambda r: (r.created_at, r.version))

    def get(self, version: str) -> VersionRecord:
        raw = self.backend.records().get(version)
        if raw is None:
            raise VersionError(f"no version {version!r} in {self.backend.url}")
        return VersionRecord.from_bytes(raw)

    def live(self) -> str | None:
        return self.backend.get_alias()

    def views(self) -> list[VersionView]:
        live = self.live()
        return [VersionView(r, r.version == live) for r in self.records()]

    # -- writing ---------------------------------------------------------------------------------

    def begin(self, meta: dict[str, Any] | None = None, expected_rows: int | None = None) -> VersionRecord:
        """Record a new 'writing' version and create its empty namespace, sized for ``expected_rows``."""
        record = VersionRecord(new_version_id(), State.WRITING, time.time(), meta=dict(meta or {}))
        # The record goes first: whatever data exists then has a record, so gc can always find it.
        self.backend.put_record(record.version, record.to_bytes())
        self.backend.create_version(record.version, expected_rows)
        return record

    def mark_ready(self, record: VersionRecord, rows: int) -> None:
        record.state = State.READY
        record.rows = int(rows)
        self.backend.put_record(record.version, record.to_bytes())

    def publish(self, record: VersionRecord) -> str | None:
        """Flip the alias to ``record`` (which must be ready). Returns the version it replaced."""
        if record.state is not State.READY:
            raise VersionError(f"version {record.version} is {record.state}, only a ready version is published")
        previous = self.backend.get_alias()
        if not self.backend.swap_alias(previous, record.version):
            raise VersionError("the live alias moved while publishing; nothing was changed by this run")
        record.published_at = time.time()
        self.backend.put_record(record.version, record.to_bytes())
        return previous

    def refuse(self, record: VersionRecord, rows: int, reasons: list[str]) -> None:
        """Keep a complete version unpublished, for a person to review (and :meth:`approve`)."""
        record.state = State.REFUSED
        record.rows = int(rows)
        record.meta["refused"] = list(reasons)
        self.backend.put_record(record.version, record.to_bytes())

    def approve(self, version: str) -> tuple[VersionRecord, str | None]:
        """Publish a refused version after review. Returns its record and the version it replaced."""
        record = self.get(version)
        if record.state is not State.REFUSED:
            hint = " (`precompute rollback --to` serves a published one again)" if record.state is State.READY else ""
            raise VersionError(f"version {version} is {record.state}; only a refused one is published this way{hint}")
        record.check_readable()
        record.state = State.READY
        record.meta["approved_at"] = time.time()
        self.backend.put_record(record.version, record.to_bytes())
        try:
            return record, self.publish(record)
        except BaseException:
            record.state = State.REFUSED
            self.backend.put_record(record.version, record.to_bytes())
            raise

    def abort(self, record: VersionRecord, reason: str) -> None:
        """Mark a version failed and drop its rows. Never touches the alias."""
        record.state = State.FAILED
        record.meta["failure"] = reason
        self.backend.put_record(record.version, record.to_bytes())
        self.backend.drop_version(record.version)

    # -- admin -----------------------------------------------------------------------------------

    def rollback(self, to: str | None = None) -> tuple[str, str]:
        """Point the alias back at an earlier version. Returns (from, to).

        Without ``to`` the target is the newest version that was published before the live one and was
        not itself rolled back. The version rolled back from is marked 'rolled_back' first.
        """
        current = self.backend.get_alias()
        if current is None:
            raise VersionError("nothing is published yet, so there is nothing to roll back")
        records = {r.version: r for r in self.records()}
        if to is None:
            now = records.get(current)
            limit = now.published_at if now and now.published_at else float("inf")
            candidates = [
                r
                for r in records.values()
                if r.version != current
                and r.state is State.READY
                and r.published_at is not None
                and r.published_at < limit
            ]
            if not candidates:
                raise VersionError(f"no earlier published version to roll back to from {current}")
            target = max(candidates, key=lambda r: r.published_at or 0.0)
        else:
            if to not in records:
                raise VersionError(f"no version {to!r}; `precompute versions` lists them")
            target = records[to]
            if target.state not in (State.READY, State.ROLLED_BACK):
                raise VersionError(f"version {to} is {target.state} and cannot be served")
            if target.version == current:
                raise VersionError(f"version {to} is already live")
        # Going back marks the version left as rolled back (never re-promoted by itself); rolling forward
        # to a newer version, e.g. after a rollback, leaves the older one as it was.
        leaving = records.get(current)
        backwards = leaving is not None and leaving.created_at > target.created_at
        if leaving is not None and backwards:
            leaving.state = State.ROLLED_BACK
            self.backend.put_record(current, leaving.to_bytes())
        if not self.backend.swap_alias(current, target.version):
            if leaving is not None and backwards:
                leaving.state = State.READY
                self.backend.put_record(current, leaving.to_bytes())
            raise VersionError("the live alias moved during rollback; nothing was changed")
        if target.state is State.ROLLED_BACK:  # an explicit re-promotion
            target.state = State.READY
            self.backend.put_record(target.version, target.to_bytes())
        return current, target.version

    def drop(self, version: str) -> None:
        if version == self.backend.get_alias():
            raise VersionError(f"version {version} is live; roll back or publish another one first")
        self.backend.drop_version(version)
        self.backend.delete_record(version)

    def gc(self, keep: int) -> list[str]:
        """Drop versions beyond the ``keep`` newest ever published (the live one always stays).

        Like backup versions: a version that was published and later rolled back still counts and stays
        (``rollback --to`` can name it) until newer ones age it out. The newest refused version stays while
        it is newer than the live one, for review; older refused versions go. Failed and unfinished
        ('writing') versions are always dropped: call this only while holding the run lock, so no run is
        writing one.
        """
        if keep < 1:
            raise VersionError("gc keeps at least 1 version (the live one)")
        records = self.records()
        live = self.backend.get_alias()
        live_created = next((r.created_at for r in records if r.version == live), float("-inf"))
        kept = 1 if live is not None else 0
        kept_refused = False
        dropped = []
        for record in sorted(records, key=lambda r: r.created_at, reverse=True):
            if record.version == live:
                continue
            servable = record.state in (State.READY, State.ROLLED_BACK)
            if servable and record.published_at is not None and kept < keep:
                kept += 1
                continue
            if record.state is State.REFUSED and not kept_refused and record.created_at > live_created:
                kept_refused = True
                continue
            self.drop(record.version)
            dropped.append(record.version)
        return dropped


class RunLock:
    """The store-wide run lock, held as a lease that a background thread renews.

    Two runs cannot publish over each other: the second one fails to acquire and is refused. A run that
    dies stops renewing, and its lease expires after ``ttl_s``. If renewal ever fails, :attr:`lost` is
    set and the run must not publish.
    """

    def __init__(self, backend: Backend, ttl_s: float = 60.0, owner: str | None = None) -> None:
        self.backend = backend
        self.ttl_s = ttl_s
        self.owner = owner or lock_owner()
        self.lost = False
        self.why_lost = ""
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def acquire(self) -> None:
        holder = self.backend.acquire_lock(self.owner, self.ttl_s)
        if holder is not None:
            raise LockHeld(
                f"another run holds the lock on {self.backend.url} (owner {holder}); it expires at most "
                f"{self.ttl_s:.0f} s after that run stops renewing it"
            )
        self._thread = threading.Thread(target=self._renew, name="precompute-lock", daemon=True)
        self._thread.start()

    def _renew(self) -> None:
        renewed = time.monotonic()
        while not self._stop.wait(self.ttl_s / 3):
            try:
                holder = self.backend.acquire_lock(self.owner, self.ttl_s)
            except StoreError as exc:
                if time.monotonic() - renewed < self.ttl_s * 2 / 3:
                    continue  # the store blipped; try again before the lease runs out
                self._lose(f"the store did not answer for {self.ttl_s * 2 / 3:.0f} s ({exc})")
                return
            except Exception as exc:  # never die silently: a run without a renewed lease must not publish
                self._lose(f"renewing it failed: {type(exc).__name__}: {exc}")
                return
            if holder is not None:
                self._lose(f"{holder} took it over")
                return
            renewed = time.monotonic()

    def _lose(self, why: str) -> None:
        self.lost = True
        self.why_lost = why
        log.error("the run lock on %s was lost: %s; the run will not publish", self.backend.url, why)

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        with contextlib.suppress(StoreError):  # the lease expires by itself
            self.backend.release_lock(self.owner)

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()
