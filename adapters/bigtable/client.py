"""The SDK clients of a ``bigtable://`` store: created here, cached per process, closed at exit.

A data client owns a gRPC channel pool and, outside the emulator, a background thread that refreshes it.
Opening one per backend (the batch job opens a backend in every Ray write task) would leak both, so
:func:`shared_data_client` hands every backend of a process the same client, keyed by project and
emulator address, and closes them at exit. A forked child starts its own: gRPC channels do not survive
``fork``.

The async client used by the API is bound to the event loop it was created on; each
:class:`~precompute.adapters.bigtable.BigtableReader` creates one lazily on its loop and keeps it.

Credentials are found once per process, by :func:`credentials_for`, and handed to every client, so no
client looks for them itself. Finding them can block for seconds (files, then the GCE metadata server,
probed with retries), which is why the reader calls it in a thread, never on its event loop. Against
the emulator no credentials are looked for at all. The emulator a client talks to is the store's
setting (:attr:`Settings.emulator <precompute.adapters.bigtable.options.Settings.emulator>`), not
whatever ``BIGTABLE_EMULATOR_HOST`` says when the client happens to be built.
"""

from __future__ import annotations

import atexit
import os
import threading
import warnings
from collections.abc import Callable
from typing import Any, TypeVar

import google.auth
import grpc
from google.auth.credentials import AnonymousCredentials, Credentials
from google.cloud import bigtable_admin_v2
from google.cloud.bigtable.data import BigtableDataClient, BigtableDataClientAsync
from google.cloud.bigtable_admin_v2.services.bigtable_table_admin.transports.grpc import (
    BigtableTableAdminGrpcTransport,
)

from precompute.adapters.bigtable.errors import translated
from precompute.adapters.bigtable.options import Settings

AdminClient = bigtable_admin_v2.BigtableTableAdminClient
_anonymous: Any = AnonymousCredentials  # untyped constructor in google-auth
C = TypeVar("C")


class _StoreEmulator:
    """Makes a data client's emulator the store's setting.

    The SDK's clients read ``BIGTABLE_EMULATOR_HOST`` into ``self._emulator_host`` when they are built,
    and every emulator decision (insecure channel, no metrics exporter, no channel refresh) follows that
    attribute. This property answers the store's setting instead and ignores the variable, so a URL's
    ``emulator=`` option works without touching the process environment (other stores, other threads).
    """

    _store_emulator: str | None = None

    @property
    def _emulator_host(self) -> str | None:
        return self._store_emulator

    @_emulator_host.setter
    def _emulator_host(self, _from_environment: str | None) -> None:
        pass


class _DataClient(_StoreEmulator, BigtableDataClient):
    def __init__(self, emulator: str | None, **kwargs: Any) -> None:
        self._store_emulator = emulator
        super().__init__(**kwargs)


class _AsyncDataClient(_StoreEmulator, BigtableDataClientAsync):
    def __init__(self, emulator: str | None, **kwargs: Any) -> None:
        self._store_emulator = emulator
        super().__init__(**kwargs)


_lock = threading.Lock()  # guards the caches below, held for lookups only
_searching = threading.Lock()  # one search for credentials at a time, held while it runs (seconds)
_clients: dict[tuple[str, str | None], BigtableDataClient] = {}
_credentials: list[Credentials] = []  # the process's application default credentials, once found


def _forked() -> None:
    """In a forked child: forget the parent's clients (their channels are unusable here, and not ours to
    close) and its locks (another thread may have held one at the fork)."""
    global _lock, _searching
    _lock, _searching = threading.Lock(), threading.Lock()
    _clients.clear()
    _credentials.clear()


os.register_at_fork(after_in_child=_forked)


def credentials_for(settings: Settings) -> Credentials:
    """The credentials for ``settings``: none against the emulator, else application default credentials.

    Blocking (files, the GCE metadata server): call it from a thread in async code. Missing credentials
    are a :class:`~precompute.store.errors.StoreConfigError` that names the fix.
    """
    if settings.emulator is not None:
        anonymous: Credentials = _anonymous()
        return anonymous
    with _searching:
        with _lock:
            if _credentials:
                return _credentials[0]
        with translated(f"finding Google credentials for {settings.table_path}"):
            found, _project = google.auth.default()
            # Compute Engine credentials ask the metadata server for their universe domain the first
            # time; the clients read it when they are built, so it is read here, where blocking is fine.
            _ = found.universe_domain
        with _lock:
            _credentials[:] = [found]
        return found


def _quiet(factory: Callable[..., C], **kwargs: Any) -> C:
    # The client warns on every construction against the emulator; the test suite turns warnings into
    # errors, and the message only repeats the emulator address.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Connecting to Bigtable emulator", category=RuntimeWarning)
        return factory(**kwargs)


def shared_data_client(settings: Settings) -> BigtableDataClient:
    """The process's data client for the store's project and emulator (made on first use, then reused)."""
    key = (settings.project, settings.emulator)
    with _lock:
        client = _clients.get(key)
    if client is not None:
        return client
    credentials = credentials_for(settings)  # outside the lock: it may take seconds
    with _lock:
        client = _clients.get(key)
        if client is None:
            with translated(f"opening a Bigtable client for {settings.table_path}"):
                client = _quiet(
                    _DataClient, emulator=settings.emulator, project=settings.project, credentials=credentials
                )
            _clients[key] = client
        return client


def async_data_client(settings: Settings, credentials: Credentials) -> BigtableDataClientAsync:
    """A new async data client. Call it on the event loop that will use it, with ``credentials`` from
    :func:`credentials_for` (found in a thread: this call itself does not block)."""
    with translated(f"opening a Bigtable client for {settings.table_path}"):
        client: BigtableDataClientAsync = _quiet(
            _AsyncDataClient, emulator=settings.emulator, project=settings.project, credentials=credentials
        )
    return client


@atexit.register
def _close_shared_clients() -> None:
    with _lock:
        for client in _clients.values():
            client.close()
        _clients.clear()


def admin_client(settings: Settings) -> AdminClient:
    """A table-admin client for the store: its emulator if it has one, else Google's endpoint."""
    if settings.emulator is not None:
        channel = grpc.insecure_channel(settings.emulator)
        transport = BigtableTableAdminGrpcTransport(host=settings.emulator, channel=channel)
        return AdminClient(transport=transport)
    credentials = credentials_for(settings)
    with translated(f"opening a Bigtable admin client for {settings.table_path}"):
        return AdminClient(credentials=credentials)


def close_admin(admin: AdminClient) -> None:
    transport: Any = admin.transport  # the generated transport's close() is untyped
    transport.close()
