"""The per-process boto3 client of ``dynamodb://``, and one boto3 call retried and translated.

Building a client costs ~90 ms of CPU, so each process builds one per set of settings and every backend
and reader of the process shares it (boto3 clients are thread-safe). The API's reader takes its session's
credentials and resolved endpoint to sign its own requests (:mod:`.wire`).

botocore's own retries are off (one attempt per call): every retry is :class:`precompute.store.retry.Backoff`,
bounded by the URL's ``deadline``, so one policy decides how long a call keeps trying, instead of
botocore's attempts multiplied by ours.
"""

from __future__ import annotations

import difflib
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import boto3
import botocore.config

from precompute.adapters.dynamodb.errors import is_retryable, translated
from precompute.adapters.dynamodb.options import Settings
from precompute.store import StoreConfigError
from precompute.store.retry import Backoff

T = TypeVar("T")
PLACEHOLDER_KEY = "precomputelocal"  # DynamoDB Local takes letters and digits only


@dataclass(frozen=True)
class Connection:
    """A boto3 client and the session it came from (the async reader signs with the same credentials)."""

    client: Any
    session: boto3.session.Session

    @property
    def region(self) -> str:
        region: str = self.client.meta.region_name
        return region

    @property
    def endpoint_url(self) -> str:
        endpoint: str = self.client.meta.endpoint_url
        return endpoint


_CONNECTIONS: dict[tuple[object, ...], Connection] = {}
_CONNECTIONS_MUTEX = threading.Lock()


def connection(settings: Settings) -> Connection:
    """The process's client for these settings, built on first use.

    The pool is sized for every write thread plus the lock-renewal thread.
    """
    key = (
        os.getpid(),
        settings.region,
        settings.endpoint,
        settings.profile,
        settings.placeholder_credentials,
        settings.write_threads,
        settings.timeout_s,
    )
    with _CONNECTIONS_MUTEX:
        found = _CONNECTIONS.get(key)
        if found is None:
            found = _connect(settings)
            _CONNECTIONS[key] = found
        return found


def _connect(settings: Settings) -> Connection:
    placeholder = PLACEHOLDER_KEY if settings.placeholder_credentials else None
    with translated("dynamodb://"):
        session = boto3.session.Session(
            profile_name=settings.profile,
            region_name=settings.region,
            aws_access_key_id=placeholder,
            aws_secret_access_key=placeholder,
        )
        client = session.client(
            "dynamodb",
            endpoint_url=settings.endpoint,
            config=botocore.config.Config(
                max_pool_connections=settings.write_threads + 4,
                retries={"mode": "standard", "total_max_attempts": 1},
                connect_timeout=settings.timeout_s,
                read_timeout=settings.timeout_s,
                tcp_keepalive=True,
            ),
        )
    if settings.endpoint is None and not _endpoint_from_environment():
        _check_region(session, client.meta.region_name)
    return Connection(client, session)


def _endpoint_from_environment() -> bool:
    return bool(os.environ.get("AWS_ENDPOINT_URL_DYNAMODB") or os.environ.get("AWS_ENDPOINT_URL"))


def _check_region(session: boto3.session.Session, region: str) -> None:
    """A region AWS does not have resolves to a host name that does not exist: every call would fail as
    "unreachable" until its deadline. Refuse it up front, naming the closest region."""
    known = {r for p in session.get_available_partitions() for r in session.get_available_regions("dynamodb", p)}
    if known and region not in known:
        close = difflib.get_close_matches(region, sorted(known), n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise StoreConfigError(
            f"dynamodb://: region {region!r} is not a DynamoDB region; {hint}Fix region= (or AWS_REGION); for a "
            "region newer than this botocore, give its endpoint= as well"
        )


def call(backoff: Backoff, what: str, fn: Callable[[], T], retried: list[BaseException] | None = None) -> T:
    """``fn()`` (one boto3 call), retried while it fails transiently, its failure translated
    (:mod:`.errors`); ``what`` names the call in the error. Each failure that was retried is appended to
    ``retried``: a conditional write uses it to tell its own earlier attempt from somebody else's write."""

    def retry_on(exc: BaseException) -> bool:
        if not is_retryable(exc):
            return False
        if retried is not None:
            retried.append(exc)
        return True

    with translated(what):
        return backoff.call(fn, retry_on)
