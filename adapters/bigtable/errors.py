"""The one translation of google-api-core, gRPC and google-auth errors into the store's, for ``bigtable://``.

=====================================================  ===================================================
What the SDK raises                                     What callers get
=====================================================  ===================================================
UNAVAILABLE, DEADLINE_EXCEEDED (unreachable, timed      :class:`~precompute.store.errors.StoreUnavailable`
out), RESOURCE_EXHAUSTED, ABORTED, INTERNAL, UNKNOWN,   (worth retrying later; the API answers 503, the
CANCELLED, a google-auth transport error                CLI exits 5)
no credentials found (``DefaultCredentialsError``),     :class:`~precompute.store.errors.StoreConfigError`
PERMISSION_DENIED, UNAUTHENTICATED, a token refresh     with one line naming the fix (bad configuration:
refused for good                                        the CLI exits 2)
NOT_FOUND                                               :class:`TableMissing`: the table is not there yet,
                                                        which callers read as an empty store
anything else (INVALID_ARGUMENT, ...)                   :class:`~precompute.store.errors.StoreError`
=====================================================  ===================================================

Every adapter call runs inside :func:`translated`, so no SDK exception reaches a caller. The client's
own retry groups are unwrapped first (:func:`root_cause`): the last attempt's error is the verdict.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import grpc
from google.api_core import exceptions as core_exceptions
from google.auth import exceptions as auth_exceptions
from google.cloud.bigtable.data.exceptions import MutationsExceptionGroup, RetryExceptionGroup

from precompute.store import StoreConfigError, StoreError, StoreUnavailable

_from_grpc_error: Any = core_exceptions.from_grpc_error  # untyped in google-api-core

#: Codes worth another attempt: the server was busy, throttling, restarting or cut the stream. Anything
#: else (bad argument, missing table or family, permissions) fails the same way every time.
TRANSIENT: tuple[type[BaseException], ...] = (
    core_exceptions.ServiceUnavailable,
    core_exceptions.DeadlineExceeded,
    core_exceptions.TooManyRequests,  # RESOURCE_EXHAUSTED: throttled
    core_exceptions.Aborted,
    core_exceptions.InternalServerError,
    core_exceptions.Unknown,
    core_exceptions.Cancelled,
)
#: Failures that say the store could not be reached or could not keep up (rather than that the server
#: looked at a row and refused it): rows still failing with these after every retry are an outage.
UNREACHABLE: tuple[type[BaseException], ...] = (
    core_exceptions.ServiceUnavailable,
    core_exceptions.DeadlineExceeded,
    core_exceptions.TooManyRequests,
)
#: Failures that no retry fixes because the configuration is wrong: no credentials, or no rights.
MISCONFIGURED: tuple[type[BaseException], ...] = (
    auth_exceptions.DefaultCredentialsError,
    core_exceptions.PermissionDenied,
    core_exceptions.Unauthenticated,
)
#: What the SDK raises, caught by :func:`translated`.
SDK_ERRORS: tuple[type[BaseException], ...] = (
    core_exceptions.GoogleAPIError,
    auth_exceptions.GoogleAuthError,
    grpc.RpcError,
    RetryExceptionGroup,
    MutationsExceptionGroup,
)

CREDENTIALS_FIX = (
    "Fix: set BIGTABLE_EMULATOR_HOST (or the URL option emulator=HOST:PORT) for the emulator, or run "
    "`gcloud auth application-default login` / give the workload a service account"
)
PERMISSION_FIX = (
    "Fix: check PROJECT and INSTANCE in the URL, and grant the workload roles/bigtable.user (the batch job) "
    "or roles/bigtable.reader (the API) on that instance"
)


class TableMissing(StoreError):
    """The table does not exist (yet): nothing was ever written to this store."""


def root_cause(exc: BaseException) -> BaseException:
    """The last error of a client-side retry group (a gRPC error as google-api-core's), else ``exc``."""
    while isinstance(exc, RetryExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[-1]
    if isinstance(exc, core_exceptions.RetryError) and exc.cause is not None:
        exc = exc.cause
    if isinstance(exc, grpc.RpcError) and not isinstance(exc, core_exceptions.GoogleAPICallError):
        exc = _from_grpc_error(exc)
    return exc


def is_transient(exc: BaseException) -> bool:
    exc = root_cause(exc)
    if isinstance(exc, core_exceptions.GoogleAPICallError):
        return isinstance(exc, TRANSIENT)
    # Client-side conditions (a stream that ended without a status for the entry, a retry budget that
    # ran out) carry no verdict from the server; another attempt is the safe reading.
    return True


def is_unreachable(exc: BaseException) -> bool:
    return isinstance(root_cause(exc), UNREACHABLE)


def is_misconfigured(exc: BaseException) -> bool:
    return isinstance(root_cause(exc), MISCONFIGURED)


def _line(text: object) -> str:
    return " ".join(str(text).split())  # SDK messages may span lines; a store error is one


def translate(exc: BaseException, what: str) -> StoreError:
    """The store error for ``exc``, raised while doing ``what`` (e.g. "reading the live alias of T")."""
    exc = root_cause(exc)
    cause = _line(exc) or type(exc).__name__
    failed = f"Bigtable: {what} failed"
    if isinstance(exc, auth_exceptions.DefaultCredentialsError):
        return StoreConfigError(f"{failed}: no Google credentials found ({cause}). {CREDENTIALS_FIX}")
    if isinstance(exc, auth_exceptions.RefreshError) and not exc.retryable:
        return StoreConfigError(f"{failed}: the credentials were refused ({cause}). {CREDENTIALS_FIX}")
    if isinstance(exc, core_exceptions.Unauthenticated):
        return StoreConfigError(f"{failed}: the credentials were not accepted ({cause}). {CREDENTIALS_FIX}")
    if isinstance(exc, core_exceptions.PermissionDenied):
        return StoreConfigError(f"{failed}: permission denied ({cause}). {PERMISSION_FIX}")
    if isinstance(exc, core_exceptions.NotFound):
        return TableMissing(f"{failed}: {cause}")
    if isinstance(exc, auth_exceptions.GoogleAuthError):  # transport to the token endpoint, a retryable refresh
        return StoreUnavailable(f"{failed}: getting a Google access token failed ({cause})")
    kind = StoreUnavailable if is_transient(exc) else StoreError
    return kind(f"{failed}: {cause}")


@contextmanager
def translated(what: str) -> Iterator[None]:
    """Raise the SDK's errors as store errors (see the table above); store errors pass through."""
    try:
        yield
    except SDK_ERRORS as exc:
        raise translate(exc, what) from exc
