"""Errors raised by the store layer and its adapters.

Every adapter translates its SDK's exceptions into these, so callers (the batch job, the API, the CLI)
handle one small hierarchy whatever the backend.
"""

from __future__ import annotations


class StoreError(Exception):
    """Base class for every store failure."""


class StoreUnavailable(StoreError):
    """The store could not be reached (connection refused, timeout, DNS). Usually worth retrying later."""


class StoreConfigError(StoreError, ValueError):
    """A store URL or option that cannot work (unknown option, bad value, unusable path).

    Bad configuration, not an outage: the CLI exits 2 ("fix the config"), never 5 ("retry later").
    """


class UnknownBackend(StoreConfigError):
    """A store URL names a scheme no adapter handles, or one whose SDK is not installed."""


class WriteError(StoreError):
    """Some items of a bulk write still failed after every retry.

    ``failed_keys`` holds (up to a few hundred of) the keys that did not land, so the message can name
    them; nothing is ever dropped silently.
    """

    def __init__(self, message: str, failed_keys: list[bytes] | None = None) -> None:
        super().__init__(message)
        self.failed_keys = failed_keys or []


class WriteUnavailable(WriteError, StoreUnavailable):
    """Items still not written after every retry because the store could not be reached (or kept throttling).

    Both a :class:`WriteError` (it names the keys that did not land) and a :class:`StoreUnavailable` (an
    outage: worth retrying later, exit 5).
    """


class StoreFull(WriteError):
    """The store refuses writes because it is out of memory, space or quota (a full Redis under
    ``noeviction``, a capacity limit). Retrying as it is cannot help: free room or grow the store (exit 8).
    Names the keys that did not land, like every :class:`WriteError`."""


class ItemTooLarge(WriteError):
    """An item exceeds what the backend accepts for one value (checked before anything is sent)."""


class VersionError(StoreError):
    """A version operation is not allowed (unknown version, wrong state, nothing to roll back to)."""


class LockHeld(StoreError):
    """Another run holds the run lock of this store."""
