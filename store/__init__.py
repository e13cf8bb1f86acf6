"""The store contract: backends, versions, the run lock, key and value codecs (standard library only)."""

from precompute.store.backend import Backend, Item, Reader
from precompute.store.errors import (
    ItemTooLarge,
    LockHeld,
    StoreConfigError,
    StoreError,
    StoreFull,
    StoreUnavailable,
    UnknownBackend,
    VersionError,
    WriteError,
    WriteUnavailable,
)
from precompute.store.url import StoreURL, URLOptions
from precompute.store.versions import RunLock, State, VersionRecord, Versions, VersionView

__all__ = [
    "Backend",
    "Item",
    "ItemTooLarge",
    "LockHeld",
    "Reader",
    "RunLock",
    "State",
    "StoreConfigError",
    "StoreError",
    "StoreFull",
    "StoreURL",
    "StoreUnavailable",
    "URLOptions",
    "UnknownBackend",
    "VersionError",
    "VersionRecord",
    "VersionView",
    "Versions",
    "WriteError",
    "WriteUnavailable",
]
