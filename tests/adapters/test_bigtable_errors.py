"""How a ``bigtable://`` store fails (adapters/bigtable/errors.py): down, unreachable, without credentials.

Against real processes only: the emulator from tests/servers/bigtable.py, a loopback port that refuses
connections, and child processes whose environment has no Google credentials at all (nothing leaves the
machine: the metadata server they probe is a closed loopback port).
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from google.api_core import exceptions as core_exceptions
from google.auth import exceptions as auth_exceptions
from google.cloud.bigtable.data.exceptions import RetryExceptionGroup

from precompute.adapters import open_backend, open_reader
from precompute.adapters.bigtable import BigtableBackend
from precompute.adapters.bigtable.errors import TableMissing, translate
from precompute.store import Reader, StoreConfigError, StoreError, StoreUnavailable, Versions, WriteError
from precompute.store.codec import encode_key, encode_value
from precompute.store.retry import Backoff
from tests.precompute.conftest import EXAMPLE_CONFIG
from tests.servers import ROOT
from tests.store.helpers import with_reader

# The SDK's exception constructors are untyped.
api_errors: Any = core_exceptions
auth_errors: Any = auth_exceptions
T = TypeVar("T")
#: What the contract allows a call on a store that is down before it must have failed.
WITHIN_S = 10.0


def rows(n: int) -> list[tuple[bytes, bytes]]:
    return [(encode_key(f"k:{i}"), encode_value({"y": i})) for i in range(n)]


def fails_fast(call: Callable[[], T]) -> StoreUnavailable:
    started = time.monotonic()
    with pytest.raises(StoreUnavailable) as caught:
        call()
    assert time.monotonic() - started < WITHIN_S
    return caught.value


async def afails_fast(call: Callable[[], Awaitable[T]]) -> StoreUnavailable:
    started = time.monotonic()
    with pytest.raises(StoreUnavailable) as caught:
        await call()
    assert time.monotonic() - started < WITHIN_S
    return caught.value


# -- a store that is down --------------------------------------------------------------------------


def test_every_call_on_a_store_that_is_down_is_unavailable_within_seconds(bigtable_down_url: str) -> None:
    backend = open_backend(bigtable_down_url)
    try:
        fails_fast(backend.get_alias)
        fails_fast(backend.records)
        error = fails_fast(lambda: backend.write("v1", rows(3)))
        assert isinstance(error, WriteError)  # it still names the rows that did not land
        assert sorted(error.failed_keys) == sorted(k for k, _ in rows(3))
        fails_fast(lambda: backend.swap_alias(None, "v1"))
        fails_fast(lambda: backend.acquire_lock("run-1", 30))
        fails_fast(lambda: backend.read("v1", [b"k"]))
    finally:
        backend.close()

    async def lookups() -> None:
        reader = open_reader(bigtable_down_url)
        try:
            assert "live alias" in str(await afails_fast(reader.get_alias))
            await afails_fast(reader.records)
            await afails_fast(lambda: reader.get("v1", b"k"))
            await afails_fast(lambda: reader.get_many("v1", [b"a", b"b"]))
        finally:
            await reader.aclose()

    asyncio.run(lookups())


@pytest.mark.server
def test_a_store_that_is_down_leaves_the_other_stores_of_the_process_alone(
    bigtable_store_url: str, bigtable_down_url: str
) -> None:
    up = open_backend(bigtable_store_url)
    down = open_backend(bigtable_down_url)
    try:
        versions = Versions(up)
        record = versions.begin()
        up.write(record.version, rows(5))
        fails_fast(down.get_alias)
        versions.mark_ready(record, 5)
        versions.publish(record)
        fails_fast(lambda: down.write("v1", rows(1)))
        assert up.get_alias() == record.version
        assert up.read(record.version, [k for k, _ in rows(5)]) == [v for _, v in rows(5)]
    finally:
        up.close()
        down.close()

    async def lookups() -> None:
        reader, dead = open_reader(bigtable_store_url), open_reader(bigtable_down_url)
        try:
            await afails_fast(dead.get_alias)
            assert await reader.get_alias() == record.version
            await afails_fast(lambda: dead.get(record.version, rows(1)[0][0]))
            assert await reader.get(record.version, rows(1)[0][0]) == rows(1)[0][1]
        finally:
            await reader.aclose()
            await dead.aclose()

    asyncio.run(lookups())


@pytest.fixture
def refused_port() -> Iterator[int]:
    """A loopback port that refuses connections while the test runs (bound, never listened on)."""
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        yield closed.getsockname()[1]


@pytest.mark.server
def test_without_the_option_the_environment_variable_picks_the_emulator(
    monkeypatch: pytest.MonkeyPatch, bigtable_emulator: str, refused_port: int
) -> None:
    monkeypatch.setenv("BIGTABLE_EMULATOR_HOST", f"127.0.0.1:{refused_port}")
    url = "bigtable://test-project/test-instance/down?timeout=1"

    async def scenario(reader: Reader) -> None:
        with pytest.raises(StoreUnavailable, match="live alias"):
            await reader.get_alias()
        with pytest.raises(StoreUnavailable):
            await reader.get("v1", b"k")

    started = time.monotonic()
    with_reader(url, scenario)
    assert time.monotonic() - started < 20

    backend = open_backend(url)
    assert isinstance(backend, BigtableBackend)
    backend.retry_policy = Backoff(base_s=0.001, cap_s=0.01, deadline_s=10.0, max_attempts=4)
    started = time.monotonic()
    with pytest.raises(WriteError, match="3 of 3 rows still failed"):
        backend.write("v1", rows(3))
    with pytest.raises(StoreUnavailable):
        backend.get_alias()
    backend.close()
    assert time.monotonic() - started < 30


@pytest.mark.server
def test_the_urls_emulator_wins_over_the_environment_variable(
    monkeypatch: pytest.MonkeyPatch, bigtable_store_url: str, bigtable_emulator: str, refused_port: int
) -> None:
    monkeypatch.setenv("BIGTABLE_EMULATOR_HOST", f"127.0.0.1:{refused_port}")
    url = f"{bigtable_store_url}?emulator={bigtable_emulator}&timeout=5"
    backend = open_backend(url)
    try:
        backend.create_version("v1")
        backend.write("v1", rows(3))
        assert backend.swap_alias(None, "v1")
    finally:
        backend.close()

    async def lookup() -> bytes | None:
        reader = open_reader(url)
        try:
            assert await reader.get_alias() == "v1"
            return await reader.get("v1", rows(3)[1][0])
        finally:
            await reader.aclose()

    assert asyncio.run(lookup()) == rows(3)[1][1]


# -- the translation table -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raised", "kind", "words"),
    [
        (api_errors.ServiceUnavailable("failed to connect to all addresses"), StoreUnavailable, "connect"),
        (api_errors.DeadlineExceeded("operation_timeout of 1.0s exceeded"), StoreUnavailable, "exceeded"),
        (api_errors.TooManyRequests("quota"), StoreUnavailable, "quota"),
        (
            RetryExceptionGroup([api_errors.ServiceUnavailable("a"), api_errors.Aborted("b")]),
            StoreUnavailable,
            "b",
        ),
        (auth_errors.DefaultCredentialsError("Your default credentials\nwere not found"), StoreConfigError, "login"),
        (api_errors.PermissionDenied("no bigtable.tables.readRows"), StoreConfigError, "roles/bigtable.user"),
        (api_errors.Unauthenticated("invalid token"), StoreConfigError, "application-default login"),
        (auth_errors.RefreshError("invalid_grant"), StoreConfigError, "application-default login"),
        (auth_errors.TransportError("metadata server unreachable"), StoreUnavailable, "access token"),
        (api_errors.NotFound("table not found"), TableMissing, "not found"),
        (api_errors.InvalidArgument("bad filter"), StoreError, "bad filter"),
    ],
)
def test_sdk_errors_become_store_errors_of_one_line(raised: BaseException, kind: type[StoreError], words: str) -> None:
    error = translate(raised, "reading the live alias")
    assert type(error) is kind
    assert words in str(error)
    assert "\n" not in str(error)
    assert str(error).startswith("Bigtable: reading the live alias failed")


# -- no credentials --------------------------------------------------------------------------------

CHILD = """
import asyncio, json, sys, time
import google.auth
from precompute.adapters import open_backend, open_reader
from precompute.store import StoreConfigError

url, out = sys.argv[1], {}
found = google.auth.default
lookups = []
def counted(*args, **kwargs):
    lookups.append(time.monotonic())
    return found(*args, **kwargs)
google.auth.default = counted

async def lookups_on_a_loop():
    reader = open_reader(url)
    gaps, last = [], time.monotonic()
    async def ticker():
        nonlocal last
        while True:
            await asyncio.sleep(0.01)
            now = time.monotonic()
            gaps.append(now - last)
            last = now
    ticking = asyncio.create_task(ticker())
    await asyncio.sleep(0.05)
    started = time.monotonic()
    calls = [reader.get_alias(), reader.records(), reader.get("v1", b"k"), reader.get_many("v1", [b"k"])]
    results = await asyncio.gather(*calls, return_exceptions=True)
    out["reader_s"] = time.monotonic() - started
    ticking.cancel()
    out["max_gap_s"] = max(gaps)
    out["reader"] = [f"{type(r).__name__}: {r}" for r in results]
    out["reader_lookups"] = len(lookups)
    await reader.aclose()

asyncio.run(lookups_on_a_loop())
try:
    open_backend(url).get_alias()
except StoreConfigError as exc:
    out["backend"] = f"{type(exc).__name__}: {exc}"
print(json.dumps(out))
"""


@pytest.fixture
def no_credentials(tmp_path: Path, refused_port: int) -> dict[str, str]:
    """An environment with no emulator and no Google credentials anywhere, the metadata server a closed
    loopback port (so its probe fails at once and nothing leaves the machine)."""
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("BIGTABLE_", "GOOGLE_", "GCE_", "CLOUDSDK_", "NO_GCE_CHECK"))
    }
    (tmp_path / "home").mkdir()
    env.update(
        HOME=str(tmp_path / "home"),  # no ~/.config/gcloud/application_default_credentials.json
        CLOUDSDK_CONFIG=str(tmp_path / "gcloud"),
        GCE_METADATA_HOST=f"127.0.0.1:{refused_port}",
        GCE_METADATA_IP=f"127.0.0.1:{refused_port}",
        PYTHONPATH=str(ROOT),
    )
    return env


def python(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """``python *args`` in a fresh interpreter with ``env``, from the repository root; its output as text."""
    return subprocess.run([sys.executable, *args], env=env, capture_output=True, text=True, timeout=120, cwd=ROOT)


def child(env: dict[str, str]) -> dict[str, Any]:
    done = python(env, "-c", CHILD, "bigtable://test-project/test-instance/table")
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout)
    return result


@pytest.mark.parametrize("where", ["no file at GOOGLE_APPLICATION_CREDENTIALS", "nothing to find"])
def test_without_credentials_every_call_is_a_config_error_of_one_line_and_the_loop_never_blocks(
    no_credentials: dict[str, str], tmp_path: Path, where: str
) -> None:
    if where.startswith("no file"):
        no_credentials["GOOGLE_APPLICATION_CREDENTIALS"] = str(tmp_path / "missing.json")
    result = child(no_credentials)

    for line in [*result["reader"], result["backend"]]:
        assert line.startswith("StoreConfigError: Bigtable: finding Google credentials"), line
        assert "no Google credentials found" in line
        assert "BIGTABLE_EMULATOR_HOST" in line
        assert "gcloud auth application-default login" in line
        assert "\n" not in line
    # Four lookups at once wait for one search for credentials, made in a thread: the loop kept ticking.
    assert result["reader_lookups"] == 1
    assert result["max_gap_s"] < 0.5, result
    assert result["reader_s"] < 30


def test_without_credentials_the_cli_exits_2_with_one_line_naming_the_fix(no_credentials: dict[str, str]) -> None:
    no_credentials["PRECOMPUTE_STORE"] = "bigtable://test-project/test-instance/table"
    for command in (["versions"], ["get", "True:25:Single(1):39"]):
        done = python(no_credentials, "-m", "precompute.cli", *command, "--config", str(EXAMPLE_CONFIG))
        assert done.returncode == 2, done.stderr
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1, done.stderr
        assert "no Google credentials found" in lines[0]
        assert "gcloud auth application-default login" in lines[0]
        assert "Traceback" not in done.stderr
