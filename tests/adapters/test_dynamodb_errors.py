"""How ``dynamodb://`` fails: every SDK error becomes the store's, on the batch side and in the API alike.

* a store that cannot be reached (nothing listening, or a server that never answers) raises
  ``StoreUnavailable`` from every call within seconds, never an SDK exception or a hang;
* bad or missing credentials and refused permissions are ``StoreConfigError`` naming the fix, at once;
* server failures are retried, then ``StoreUnavailable``; other refusals a plain ``StoreError``.

The failures are real: a closed loopback port, a socket that never answers, and errors answered by the
fault-injecting proxy in front of DynamoDB Local, through the same HTTP stack as in production.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from precompute.adapters import open_backend
from precompute.store import (
    Backend,
    Reader,
    StoreConfigError,
    StoreError,
    StoreUnavailable,
    WriteError,
)
from precompute.store.codec import encode_key, encode_value
from tests.servers.dynamodb import FAST_FAILURE, FaultProxy, store_url
from tests.store.helpers import with_reader

#: What the contract promises for a store that is down: the error, within this many seconds.
WITHIN_S = 10.0
ROWS = [(encode_key(f"k:{i}"), encode_value({"y": i / 4})) for i in range(30)]
DATA_OPS = frozenset({"GetItem", "BatchGetItem", "BatchWriteItem", "PutItem", "UpdateItem", "Query"})

SYNC_CALLS: dict[str, Callable[[Backend], object]] = {
    "get_alias": lambda b: b.get_alias(),
    "records": lambda b: b.records(),
    "write": lambda b: b.write("v1", ROWS),
    "read": lambda b: b.read("v1", [k for k, _ in ROWS]),
    "swap_alias": lambda b: b.swap_alias(None, "v1"),
    "acquire_lock": lambda b: b.acquire_lock("owner", 30),
    "release_lock": lambda b: b.release_lock("owner"),
    "put_record": lambda b: b.put_record("v1", b"{}"),
    "create_version": lambda b: b.create_version("v1"),
    "drop_version": lambda b: b.drop_version("v1"),
}
ASYNC_CALLS: dict[str, Callable[[Reader], Awaitable[object]]] = {
    "get_alias": lambda r: r.get_alias(),
    "records": lambda r: r.records(),
    "get": lambda r: r.get("v1", ROWS[0][0]),
    "get_many": lambda r: r.get_many("v1", [k for k, _ in ROWS] * 50),  # 1 500 keys: two read_batch calls
}


def timed(fn: Callable[[], object]) -> tuple[BaseException | None, float]:
    began = time.monotonic()
    try:
        fn()
    except BaseException as exc:
        return exc, time.monotonic() - began
    return None, time.monotonic() - began


# -- a store that cannot be reached ---------------------------------------------------------------


@pytest.fixture(params=["dynamodb_down_url", "dynamodb_silent_url"], ids=["refused", "silent"])
def unreachable_url(request: pytest.FixtureRequest) -> str:
    url: str = request.getfixturevalue(request.param)
    return url


@pytest.mark.parametrize("name", sorted(SYNC_CALLS))
def test_every_backend_call_on_an_unreachable_store_is_unavailable_within_seconds(
    unreachable_url: str, name: str
) -> None:
    error, took = timed(lambda: open_backend(unreachable_url))
    assert error is None  # opening sends nothing
    assert took < WITHIN_S
    backend = open_backend(unreachable_url)
    try:
        error, took = timed(lambda: SYNC_CALLS[name](backend))
    finally:
        backend.close()
    assert isinstance(error, StoreUnavailable), repr(error)
    assert "DynamoDB unreachable" in str(error)
    assert took < WITHIN_S


@pytest.mark.parametrize("name", sorted(ASYNC_CALLS))
def test_every_reader_call_on_an_unreachable_store_is_unavailable_within_seconds(
    unreachable_url: str, name: str
) -> None:
    error, took = timed(lambda: with_reader(unreachable_url, ASYNC_CALLS[name]))
    assert isinstance(error, StoreUnavailable), repr(error)
    assert "DynamoDB unreachable" in str(error)
    assert took < WITHIN_S


# -- credentials and permissions ------------------------------------------------------------------


@pytest.fixture
def wrong_secret(monkeypatch: pytest.MonkeyPatch, dynamodb_proxy: FaultProxy, dynamodb_prefix: str) -> str:
    """A store URL on the proxy (which checks signatures) whose credentials, from the environment, have the
    right key ID and the wrong secret."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "precomputelocal")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong")
    # timeout=7: no client cached by another test (keyed by the settings) signs for this one.
    return store_url(dynamodb_prefix, dynamodb_proxy.endpoint, credentials="default", timeout=7)


@pytest.mark.server
def test_a_wrong_secret_is_a_configuration_error_naming_the_fix_and_not_retried(
    wrong_secret: str, dynamodb_proxy: FaultProxy
) -> None:
    backend = open_backend(wrong_secret)
    try:
        for call in (SYNC_CALLS["get_alias"], SYNC_CALLS["write"], SYNC_CALLS["swap_alias"]):
            dynamodb_proxy.faults.seen.clear()
            with pytest.raises(StoreConfigError, match=r"InvalidSignatureException.*Fix: the secret key does not"):
                call(backend)
            assert 1 <= dynamodb_proxy.faults.seen["bad_signature"] <= 2  # write: one per 25 items, no retry
    finally:
        backend.close()
    for name in ("get_alias", "records", "get_many"):
        dynamodb_proxy.faults.seen.clear()
        with pytest.raises(StoreConfigError, match=r"InvalidSignatureException.*Fix: the secret key does not"):
            with_reader(wrong_secret, ASYNC_CALLS[name])
        assert 1 <= dynamodb_proxy.faults.seen["bad_signature"] <= 2  # get_many: one per read_batch


def test_no_credentials_at_all_is_a_configuration_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # no instance-role lookup off the loopback
    url = store_url(f"p{uuid.uuid4().hex[:8]}", f"http://127.0.0.1:9/{uuid.uuid4().hex}", credentials="default")
    backend = open_backend(url)
    try:
        with pytest.raises(StoreConfigError, match=r"no AWS credentials found.*credentials=placeholder"):
            backend.get_alias()
    finally:
        backend.close()
    with pytest.raises(StoreConfigError, match="no AWS credentials found"):
        with_reader(url, ASYNC_CALLS["get"])


@pytest.fixture
def injected(dynamodb_proxy: FaultProxy, dynamodb_prefix: str) -> Iterator[tuple[str, Backend, FaultProxy]]:
    """A store on the proxy that gives up fast, with its backend; the test chooses the error to inject."""
    url = store_url(dynamodb_prefix, dynamodb_proxy.endpoint, **FAST_FAILURE)
    backend = open_backend(url)
    backend.create_version("v1")
    backend.write("v1", ROWS)
    dynamodb_proxy.faults.ops = DATA_OPS
    dynamodb_proxy.faults.seen.clear()
    yield url, backend, dynamodb_proxy
    backend.close()


CALLS_BOTH_SIDES = ["get_alias", "records", "write", "swap_alias", "reader get", "reader get_many", "reader records"]


def _call(url: str, backend: Backend, name: str) -> Any:
    if name.startswith("reader "):
        return with_reader(url, ASYNC_CALLS[name.removeprefix("reader ")])
    return SYNC_CALLS[name](backend)


@pytest.mark.server
@pytest.mark.parametrize("name", CALLS_BOTH_SIDES)
def test_access_denied_is_a_configuration_error_naming_the_permissions(
    injected: tuple[str, Backend, FaultProxy], name: str
) -> None:
    url, backend, proxy = injected
    proxy.faults.error = (400, "AccessDeniedException")
    with pytest.raises(StoreConfigError, match=r"AccessDeniedException.*Fix: grant these credentials the IAM actions"):
        _call(url, backend, name)
    assert 1 <= proxy.faults.seen["failed"] <= 2  # not retried (get_many: one request per 100 keys at most)


@pytest.mark.server
@pytest.mark.parametrize("name", [n for n in CALLS_BOTH_SIDES if n != "write"])
def test_server_failures_are_retried_then_unavailable(injected: tuple[str, Backend, FaultProxy], name: str) -> None:
    url, backend, proxy = injected
    proxy.faults.error = (500, "InternalServerError")
    error, took = timed(lambda: _call(url, backend, name))
    assert isinstance(error, StoreUnavailable), repr(error)
    assert "InternalServerError" in str(error)
    assert proxy.faults.seen["failed"] > 2  # retried
    assert took < WITHIN_S


@pytest.mark.server
def test_a_write_the_server_keeps_failing_names_its_keys(injected: tuple[str, Backend, FaultProxy]) -> None:
    _url, backend, proxy = injected
    proxy.faults.error = (500, "InternalServerError")
    with pytest.raises(WriteError, match=r"30 of 30 items did not land.*InternalServerError") as caught:
        backend.write("v1", ROWS)
    assert set(caught.value.failed_keys) == {k for k, _ in ROWS}
    assert proxy.faults.seen["failed"] > 2


@pytest.mark.server
@pytest.mark.parametrize("name", CALLS_BOTH_SIDES)
def test_other_refusals_are_store_errors_at_once(injected: tuple[str, Backend, FaultProxy], name: str) -> None:
    url, backend, proxy = injected
    proxy.faults.error = (400, "ValidationException")
    with pytest.raises(StoreError, match="ValidationException: injected failure") as caught:
        _call(url, backend, name)
    assert not isinstance(caught.value, StoreUnavailable | StoreConfigError)
    assert 1 <= proxy.faults.seen["failed"] <= 2
