"""redis-py's exceptions, translated into the store's: one table, :data:`EXCEPTIONS`.

redis-py turns some error replies into exception classes of its own and strips the reply's first word
(``LOADING ...`` becomes ``BusyLoadingError("Redis is loading ...")``). Such a class maps to that word, and
the meaning comes from the wire's reply table (:data:`.wire.protocol.REPLIES`), so an error reply means the
same on the redis-py side as on the API's connections. A plain ``ResponseError`` is looked up there by its
text. Failures below redis-py (a socket, TLS) mean what :data:`.wire.sockets.SOCKET_FAILURES` says.

One rule across the chain of causes: bad configuration wins. A connection error caused by a certificate
that does not verify, or a cluster client that gave up because every node refused the password, is a
:class:`~precompute.store.errors.StoreConfigError` (fix the URL), never "unreachable" (retry later).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from redis import exceptions

from precompute.adapters.redis.wire.protocol import REPLIES, Failure, reply_failure
from precompute.adapters.redis.wire.sockets import socket_failure
from precompute.store import StoreConfigError, StoreError, StoreUnavailable

#: redis-py's exceptions, looked up by class (most specific first): a reply code of REPLIES, or a Failure.
EXCEPTIONS: dict[type[BaseException], str | Failure] = {
    # Error replies redis-py turned into classes of their own.
    exceptions.BusyLoadingError: "LOADING",
    exceptions.ReadOnlyError: "READONLY",
    exceptions.OutOfMemoryError: "OOM",
    exceptions.NoPermissionError: "NOPERM",
    exceptions.MasterDownError: "MASTERDOWN",
    exceptions.ClusterDownError: "CLUSTERDOWN",
    exceptions.TryAgainError: "TRYAGAIN",
    exceptions.MovedError: "MOVED",
    exceptions.AskError: "ASK",
    # NOAUTH, WRONGPASS and the "no password is set" replies all arrive as this class.
    exceptions.AuthenticationError: REPLIES["WRONGPASS"],
    exceptions.AuthenticationWrongNumberOfArgsError: Failure(
        StoreConfigError,
        "has no ACL users (Redis before 6). Fix: give only the password, redis://:PASSWORD@host",
    ),
    # Failures of the connection itself.
    exceptions.TimeoutError: Failure(
        StoreUnavailable, "did not answer in time (options connect_timeout= and timeout=)"
    ),
    exceptions.ConnectionError: Failure(StoreUnavailable, "is unreachable"),
    exceptions.RedisClusterException: Failure(
        StoreUnavailable, "is a cluster with no reachable node or no complete slot map"
    ),
    exceptions.ClusterError: Failure(StoreUnavailable, "kept redirecting or failing over on every attempt"),
    # Anything else the server or the client refused.
    exceptions.ResponseError: Failure(StoreError, "refused the command"),
    exceptions.RedisError: Failure(StoreError, "failed"),
}

#: Exceptions :func:`translated` turns into store errors (RedisClusterException is not a RedisError).
CAUGHT = (exceptions.RedisError, exceptions.RedisClusterException, OSError)


def _failure(exc: BaseException) -> tuple[Failure, str] | None:
    """What one exception means, with the detail for the message; ``None`` for one that is none of ours."""
    text = str(exc) or type(exc).__name__
    for cls in type(exc).__mro__:
        entry = EXCEPTIONS.get(cls)
        if entry is None:
            continue
        if isinstance(entry, str):  # put back the word redis-py took off the reply
            return REPLIES[entry], f"{entry} {text}"
        if isinstance(exc, exceptions.ResponseError | exceptions.AuthenticationError):
            # A reply's text: precise where the table knows it (redis-py strips a leading "ERR ").
            found = reply_failure(text) or reply_failure("ERR " + text)
            if found is not None:
                return found, text
        return entry, text
    failure = socket_failure(exc)
    return (failure, text) if failure is not None else None


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    link: BaseException | None = exc
    while link is not None and id(link) not in seen:
        seen.add(id(link))
        yield link
        link = link.__cause__ or link.__context__


def translate(exc: BaseException, what: str) -> StoreError:
    """The store's error for ``exc``; ``what`` names the server (and the call) in the message."""
    if isinstance(exc, StoreError):
        return exc
    explained = [found for link in _chain(exc) if (found := _failure(link)) is not None]
    for failure, detail in explained:
        if issubclass(failure.kind, StoreConfigError):
            return failure.error(what, detail)
    if explained:
        failure, detail = explained[0]
        return failure.error(what, detail)
    return StoreError(f"{what} failed ({type(exc).__name__}: {exc})")


@contextmanager
def translated(what: str) -> Iterator[None]:
    """Re-raise redis-py's (and the socket layer's) errors as the store's own, naming ``what``."""
    try:
        yield
    except StoreError:
        raise
    except CAUGHT as exc:
        raise translate(exc, what) from exc
