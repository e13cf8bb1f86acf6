"""The live version, resolved in the background so that a lookup costs one store round trip.

A task re-reads the store's alias every ``refresh_seconds``: a newly published version (or a rollback) is
served within that delay, without a restart. The same task tracks whether the store answers, which is what
``/readyz`` reports; it keeps trying, so the API recovers by itself when the store comes back.

Before a new live version is served, its record is read through the reader (``Reader.records``, on the
loop) and checked (:meth:`~precompute.store.versions.VersionRecord.check_readable`). A version written in
a format newer than this release reads is not served: the process keeps serving the version it served
before (if any), ``/readyz`` turns false with the reason, and one line is logged. The record of each version
served is kept: the online fallback reads the model it was scored with from it (``meta["model"]``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from prometheus_client.core import Metric

from precompute.api.metrics import gauge
from precompute.store import Reader, StoreError, VersionError, VersionRecord

log = logging.getLogger("precompute.api")

#: Records of versions served, kept for answers still in flight for an earlier version.
KEPT_RECORDS = 16


class LiveVersion:
    def __init__(self, reader: Reader, refresh_seconds: float) -> None:
        self.reader = reader
        self.refresh_seconds = refresh_seconds
        self.version: str | None = None  # the version served
        self.error: str | None = "not checked yet"  # why the store cannot be read, None while it can
        self.refused: str | None = None  # why the alias's version is not served, None when it is
        self.checked_at = 0.0
        self._failing = False  # the last refresh failed and that was logged
        self._records: dict[str, VersionRecord] = {}  # of the versions served, oldest first
        self._unreadable: tuple[str, str] | None = None  # (version, why): its formats will not change
        self._task: asyncio.Task[None] | None = None

    @property
    def ready(self) -> bool:
        return self.version is not None and self.error is None and self.refused is None

    def record(self, version: str) -> VersionRecord | None:
        """The record of a version this process served (any thread: one dict read)."""
        return self._records.get(version)

    async def refresh(self) -> None:
        try:
            version = await self.reader.get_alias()
            refusal = await self._check(version) if version is not None and version != self.version else None
        except StoreError as exc:
            self._failed(str(exc))
            return
        except Exception as exc:  # an SDK error the adapter did not translate: still only a failed refresh
            self._failed(f"{type(exc).__name__}: {exc}", untranslated=True)
            return
        if self._failing:
            log.warning("store reachable again")
            self._failing = False
        self.error = None
        self.checked_at = time.time()
        if refusal is not None:
            if refusal != self.refused:
                log.error("not serving version %s: %s", version, refusal, extra={"fields": {"serving": self.version}})
            self.refused = refusal
            return
        self.refused = None
        if version != self.version:
            log.info("serving version %s (was %s)", version, self.version)
        self.version = version

    def _failed(self, why: str, untranslated: bool = False) -> None:
        """Note a failed refresh: logged once when the store stops answering (at start-up too), not on every
        retry; the recovery is logged once as well."""
        self.error = why
        if not self._failing:
            self._failing = True
            log.warning(
                "store unavailable: %s%s", why, " (an error the store adapter did not translate)" * untranslated
            )

    async def _check(self, version: str) -> str | None:
        """Why ``version`` cannot be served, or None (its record is then kept). Raises StoreError."""
        if self._unreadable is not None and self._unreadable[0] == version:
            return self._unreadable[1]
        raw = (await self.reader.records()).get(version)
        if raw is None:  # read again at the next refresh
            return f"version {version} has no record in the store, so its formats are unknown"
        try:
            record = VersionRecord.from_bytes(raw)
            record.check_readable()
        except VersionError as exc:
            self._unreadable = (version, str(exc))
            return str(exc)
        except (ValueError, TypeError, KeyError) as exc:  # not JSON, or fields this release does not know
            self._unreadable = (version, f"the record of version {version} cannot be read by this release: {exc}")
            return self._unreadable[1]
        self._records[version] = record
        while len(self._records) > KEPT_RECORDS:
            del self._records[next(iter(self._records))]
        return None

    def families(self) -> list[Metric]:
        """Read at scrape time."""
        version = self.version
        return [
            gauge("precompute_ready", "1 when a version is live and the store answers.", int(self.ready)),
            gauge("precompute_store_up", "0 while the store's alias cannot be read.", int(self.error is None)),
            gauge(
                "precompute_live_version_info",
                "The version being served.",
                1 if version is not None else None,
                {"version": version} if version is not None else None,
            ),
        ]

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
