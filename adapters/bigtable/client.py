"""Bigtable clients for the ``bigtable://`` adapter: one data client per process, and error translation.

A data client owns a gRPC channel pool and, outside the emulator, a background thread that refreshes it.
Opening one per backend (the batch job opens a backend in every Ray write task) would leak both, so
:func:`shared_data_client` hands every backend of a process the same client, keyed by project and
emulator address, and closes them at exit. A forked child starts its own: gRPC channels do not survive
``fork``.

The async client used by the API is bound to the event loop it was created on; each
:class:`~adapters.bigtable.BigtableReader` creates one lazily on its loop and keeps it.
"""

from __future__ import annotations

import atexit
import os
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import grpc
from google.api_core import exceptions as core_exceptions
from google.cloud import bigtable_admin_v2
from google.cloud.bigtable.data import BigtableDataClient, BigtableDataClientAsync, RetryExceptionGroup
from google.cloud.bigtable_admin_v2.services.bigtable_table_admin.transports.grpc import (
    BigtableTableAdminGrpcTransport,
)

from precompute.adapters.bigtable.layout import DATA_FAMILY, META_FAMILY, Location
from precompute.store import StoreError, StoreUnavailable

EMULATOR_ENV = "BIGTABLE_EMULATOR_HOST"
ADMIN_TIMEOUT_S = 60.0
AdminClient = bigtable_admin_v2.BigtableTableAdminClient

#: Codes worth another attempt: the server was busy, throttling, restarting or cut the stream. Anything
#: else (bad argument, missing table or family, permissions) fails the same way every time.
TRANSIENT = (
    core_exceptions.ServiceUnavailable,
    core_exceptions.DeadlineExceeded,
    core_exceptions.TooManyRequests,  # RESOURCE_EXHAUSTED: throttled
    core_exceptions.Aborted,
    core_exceptions.InternalServerError,
    core_exceptions.Unknown,
    core_exceptions.Cancelled,
)

_lock = threading.Lock()
_pid = os.getpid()
_clients: dict[tuple[str, str | None], BigtableDataClient] = {}


def _quiet(factory: Any, **kwargs: Any) -> Any:
    # The client warns on every construction against the emulator; the test suite turns warnings into
    # errors, and the message only repeats BIGTABLE_EMULATOR_HOST.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Connecting to Bigtable emulator", category=RuntimeWarning)
        return factory(**kwargs)


def shared_data_client(project: str) -> BigtableDataClient:
    """The process's data client for ``project`` (created on first use, reused by every backend)."""
    global _pid
    key = (project, os.environ.get(EMULATOR_ENV))
    with _lock:
        if _pid != os.getpid():  # forked: the parent's channels are unusable here, and not ours to close
            _clients.clear()
            _pid = os.getpid()
        client = _clients.get(key)
        if client is None:
            client = _quiet(BigtableDataClient, project=project)
            _clients[key] = client
        return client


def async_data_client(project: str) -> BigtableDataClientAsync:
    """A new async data client; call from the event loop that will use it."""
    client: BigtableDataClientAsync = _quiet(BigtableDataClientAsync, project=project)
    return client


@atexit.register
def _close_shared_clients() -> None:
    with _lock:
        if _pid == os.getpid():
            for client in _clients.values():
                client.close()
        _clients.clear()


def admin_client() -> AdminClient:
    """A table-admin client: the emulator when ``BIGTABLE_EMULATOR_HOST`` is set, else Google's endpoint."""
    host = os.environ.get(EMULATOR_ENV)
    if host:
        transport = BigtableTableAdminGrpcTransport(host=host, channel=grpc.insecure_channel(host))
        return bigtable_admin_v2.BigtableTableAdminClient(transport=transport)
    return bigtable_admin_v2.BigtableTableAdminClient()


def ensure_table(admin: AdminClient, where: Location) -> None:
    """Create the table with both families (GC: keep one cell version); if it appeared meanwhile, add the
    families it lacks. Admin calls are quota'd per project per day: this runs only when the table is missing.
    """
    family = {"gc_rule": {"max_num_versions": 1}}
    families = {DATA_FAMILY: family, META_FAMILY: family}
    parent = f"projects/{where.project}/instances/{where.instance}"
    try:
        admin.create_table(
            request={"parent": parent, "table_id": where.table, "table": {"column_families": families}},
            timeout=where.timeout(ADMIN_TIMEOUT_S),
        )
        return
    except core_exceptions.AlreadyExists:
        pass
    except core_exceptions.PermissionDenied as exc:
        raise StoreError(
            f"no permission to create {where.table_path} ({exc.message}); create it once with "
            f"`cbt -project {where.project} -instance {where.instance} createtable {where.table} "
            f"families={DATA_FAMILY}:maxversions=1,{META_FAMILY}:maxversions=1` or grant bigtable.tables.create"
        ) from exc
    except core_exceptions.GoogleAPICallError as exc:
        raise translate(exc, f"creating {where.table_path}") from exc
    with errors(f"reading the schema of {where.table_path}"):
        table = admin.get_table(
            request={"name": where.table_path, "view": bigtable_admin_v2.Table.View.SCHEMA_VIEW},
            timeout=where.timeout(ADMIN_TIMEOUT_S),
        )
        missing = [name for name in families if name not in table.column_families]
        if missing:
            modifications = [{"id": name, "create": families[name]} for name in missing]
            admin.modify_column_families(
                request={"name": where.table_path, "modifications": modifications},
                timeout=where.timeout(ADMIN_TIMEOUT_S),
            )


def root_cause(exc: BaseException) -> BaseException:
    """The last error of a client-side retry group, else ``exc`` itself."""
    while isinstance(exc, RetryExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[-1]
    return exc


def is_transient(exc: BaseException) -> bool:
    exc = root_cause(exc)
    if isinstance(exc, core_exceptions.GoogleAPICallError):
        return isinstance(exc, TRANSIENT)
    # Client-side conditions (a stream that ended without a status for the entry, a retry budget that
    # ran out) carry no verdict from the server; another attempt is the safe reading.
    return True


class TableMissing(StoreError):
    """The table does not exist (yet): nothing was ever written to this store."""


def translate(exc: BaseException, what: str) -> StoreError:
    exc = root_cause(exc)
    if isinstance(exc, core_exceptions.NotFound):
        return TableMissing(f"Bigtable: {what} failed: {exc}")
    kind = StoreUnavailable if is_transient(exc) else StoreError
    return kind(f"Bigtable: {what} failed: {exc}")


def close_admin(admin: AdminClient) -> None:
    transport: Any = admin.transport  # the generated transport's close() is untyped
    transport.close()


@contextmanager
def errors(what: str) -> Iterator[None]:
    """Raise the SDK's errors as store errors (transient ones as :class:`StoreUnavailable`)."""
    try:
        yield
    except core_exceptions.GoogleAPIError as exc:
        raise translate(exc, what) from exc
