"""The translation of failures (adapters/redis/errors.py and the reply table of wire/protocol.py).

On real servers, the redis-py side (RedisBackend) and the wire side (RedisReader, the bulk pipeline) must
say the same thing for the same failure: a server where nothing listens is StoreUnavailable within
seconds, a refused password, a refused ACL permission, a missing database, an untrusted certificate are
StoreConfigError (fix the URL), a busy server is StoreUnavailable.
"""

from __future__ import annotations

import asyncio
import subprocess
import time
from collections.abc import Awaitable, Callable, Iterator

import pytest
import redis
from redis import exceptions

from precompute.adapters import open_backend, open_reader
from precompute.adapters.redis.errors import EXCEPTIONS, translate
from precompute.adapters.redis.options import RedisOptions
from precompute.adapters.redis.wire.lines import LinePipeline
from precompute.adapters.redis.wire.protocol import REPLIES, pack, reply_error, reply_failure
from precompute.adapters.redis.writes import BulkRunner
from precompute.store import StoreConfigError, StoreError, StoreFull, StoreUnavailable, StoreURL
from tests.adapters.redis.helpers import publish, rows
from tests.servers import find_binary
from tests.servers.redis import HINT, RedisProcess

pytestmark = pytest.mark.server


# -- the tables ------------------------------------------------------------------------------------


def test_replies_match_at_a_word_boundary_and_the_longest_prefix_wins() -> None:
    assert reply_failure("BUSY Redis is busy running a script") is REPLIES["BUSY"]
    assert reply_failure("BUSYKEY Target key name already exists.") is None
    assert reply_failure("LOADING") is REPLIES["LOADING"]
    assert reply_failure("ERR max number of clients reached") is REPLIES["ERR max number of clients reached"]
    assert reply_failure("ERR unknown command 'FOO'") is None
    assert isinstance(reply_error("Redis at x", "ERR unknown command 'FOO'"), StoreError)
    for code, kind in [("LOADING", StoreUnavailable), ("NOAUTH", StoreConfigError), ("OOM", StoreFull)]:
        error = reply_error("Redis at x", f"{code} whatever")
        assert type(error) is kind
        assert str(error).startswith("Redis at x ")
        assert str(error).endswith(f"({code} whatever)")


def test_a_redis_py_class_for_an_error_reply_means_what_the_reply_table_says() -> None:
    for cls, entry in EXCEPTIONS.items():
        if not isinstance(entry, str):
            continue
        assert entry in REPLIES, cls
        message = "text" if not issubclass(cls, exceptions.AskError) else "3999 127.0.0.1:6381"
        error = translate(cls(message), "Redis at x")
        assert type(error) is REPLIES[entry].kind, cls
        assert f"({entry} {message})" in str(error), "the reply's first word is put back"
    assert type(translate(exceptions.ResponseError("WRONGTYPE Operation against a key"), "x")) is StoreError
    assert "another program writes there" in str(translate(exceptions.ResponseError("WRONGTYPE x"), "x"))
    assert type(translate(exceptions.ResponseError("BUSY Redis is busy"), "x")) is StoreUnavailable
    assert type(translate(exceptions.ResponseError("DB index is out of range"), "x")) is StoreConfigError
    assert type(translate(exceptions.ConnectionError("Error 111"), "x")) is StoreUnavailable
    assert type(translate(exceptions.TimeoutError("Timeout reading"), "x")) is StoreUnavailable
    assert type(translate(exceptions.RedisClusterException("no node"), "x")) is StoreUnavailable


def test_a_configuration_cause_wins_over_the_connection_error_around_it() -> None:
    try:
        try:
            raise exceptions.AuthenticationError("invalid username-password pair or user is disabled.")
        except exceptions.AuthenticationError as cause:
            raise exceptions.RedisClusterException("Redis Cluster cannot be connected") from cause
    except exceptions.RedisClusterException as exc:
        error = translate(exc, "Redis at x")
    assert type(error) is StoreConfigError
    assert "refused the user name or password" in str(error)


# -- the error-translation contract on a URL where nothing listens ---------------------------------


def test_every_call_on_a_url_where_nothing_listens_is_unavailable_within_seconds(redis_down_url: str) -> None:
    backend = open_backend(redis_down_url)
    calls: dict[str, Callable[[], object]] = {
        "get_alias": backend.get_alias,
        "records": backend.records,
        "write": lambda: backend.write("20260101-000000-abcd", rows(10)),
        "swap_alias": lambda: backend.swap_alias(None, "20260101-000000-abcd"),
        "acquire_lock": lambda: backend.acquire_lock("me", 30),
        "create_version": lambda: backend.create_version("20260101-000000-abcd", 10),
        "count": lambda: backend.count("20260101-000000-abcd"),
    }
    for name, call in calls.items():
        started = time.monotonic()
        with pytest.raises(StoreUnavailable) as caught:
            call()
        assert type(caught.value) is StoreUnavailable, name
        assert time.monotonic() - started < 10, name
    backend.close()

    async def reads() -> None:
        reader = open_reader(redis_down_url)
        calls: dict[str, Callable[[], Awaitable[object]]] = {
            "get_alias": reader.get_alias,
            "records": reader.records,
            "get": lambda: reader.get("20260101-000000-abcd", b"k"),
            "get_many": lambda: reader.get_many("20260101-000000-abcd", [b"k", b"j"]),
        }
        try:
            for name, call in calls.items():
                started = time.monotonic()
                with pytest.raises(StoreUnavailable):
                    await asyncio.wait_for(call(), 10)
                assert time.monotonic() - started < 10, name
        finally:
            await reader.aclose()

    asyncio.run(reads())


# -- the same failure, the same error, on both sides -----------------------------------------------


def both_sides(url: str, kind: type[StoreError], match: str) -> None:
    """``kind`` from the backend (redis-py), the bulk pipeline and the reader (wire) on ``url``."""
    backend = open_backend(url)
    started = time.monotonic()
    for call in (backend.get_alias, lambda: backend.write("20260101-000000-abcd", rows(3))):
        with pytest.raises(kind, match=match):
            call()
    assert time.monotonic() - started < 5, "a configuration error is not retried"
    backend.close()
    bulk = BulkRunner(LinePipeline(RedisOptions.parse(StoreURL.parse(url)), "Redis at test"), "Redis at test", 0.5)
    with pytest.raises(kind, match=match):
        bulk.run([(b"k", pack(b"HLEN", b"k"))], "counting")
    bulk.pipe.close()

    async def read() -> None:
        reader = open_reader(url)
        try:
            with pytest.raises(kind, match=match):
                await reader.get_alias()
        finally:
            await reader.aclose()

    asyncio.run(read())


def test_refused_credentials_a_refused_permission_and_a_missing_database_are_configuration_errors(
    redis_factory: Callable[..., RedisProcess],
) -> None:
    server = redis_factory()
    base = f"127.0.0.1:{server.port}"
    both_sides(f"redis://:nopass@{base}/0", StoreConfigError, "has no password set.*remove the password")
    both_sides(f"redis://{base}/99", StoreConfigError, r"fewer databases than the number in the URL's path")
    server.cli("ACL", "SETUSER", "app", "on", ">app-pass", "~other:*", "+@all")
    both_sides(f"redis://app:app-pass@{base}/0", StoreConfigError, "denies the URL's ACL user.*NOPERM")
    server.cli("CONFIG", "SET", "requirepass", "s3cret")
    both_sides(f"redis://:wrong@{base}/0", StoreConfigError, "refused the user name or password")
    both_sides(f"redis://app:wrong@{base}/0", StoreConfigError, "refused the user name or password")
    both_sides(f"redis://{base}/0", StoreConfigError, r"Authentication required|NOAUTH")


def test_an_untrusted_certificate_and_an_unreadable_ca_file_are_configuration_errors(tls_port: int) -> None:
    both_sides(f"rediss://127.0.0.1:{tls_port}/0", StoreConfigError, "certificate that does not verify")
    both_sides(f"rediss://127.0.0.1:{tls_port}/0?ssl_ca_certs=/nonexistent/ca.pem", StoreConfigError, "ssl_ca_certs")


@pytest.fixture
def busy(redis_factory: Callable[..., RedisProcess]) -> Iterator[RedisProcess]:
    """A server stuck in a Lua loop: it answers BUSY to everything but SCRIPT KILL."""
    server = redis_factory()
    server.cli("CONFIG", "SET", "busy-reply-threshold", "50")
    yield server
    with redis.Redis(port=server.port) as admin:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                admin.script_kill()
                return
            except exceptions.ResponseError as exc:  # NOTBUSY: nothing left to kill
                if "NOTBUSY" in str(exc):
                    return
                time.sleep(0.05)


def test_a_busy_server_is_unavailable_on_both_sides(busy: RedisProcess) -> None:
    url = f"redis://127.0.0.1:{busy.port}/0?timeout=5&retry=0.5"
    version = publish(url, rows(10))
    backend = open_backend(url)
    assert backend.get_alias() == version  # connected before the server gets stuck

    async def scenario() -> None:
        reader = open_reader(url)
        try:
            assert await reader.get_alias() == version
            loop = subprocess.Popen(
                [find_binary("redis-cli", HINT), "-p", str(busy.port), "EVAL", "while true do end", "0"],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            try:
                with redis.Redis(port=busy.port) as probe:
                    deadline = time.monotonic() + 10
                    while True:
                        try:
                            probe.get("x")
                        except exceptions.ResponseError as exc:
                            answer = str(exc)
                            break
                        assert time.monotonic() < deadline, "the server never got busy"
                        time.sleep(0.02)
                assert answer.startswith("BUSY")
                with pytest.raises(StoreUnavailable, match="is busy running a script"):
                    backend.get_alias()
                with pytest.raises(StoreUnavailable, match="is busy running a script"):
                    await reader.get_alias()
                with pytest.raises(StoreUnavailable, match="is busy running a script"):
                    backend.write(version, rows(10))  # retried for retry=0.5 s, then reported
            finally:
                busy.cli("SCRIPT", "KILL")
                loop.wait(10)
            assert await reader.get_alias() == version
        finally:
            await reader.aclose()

    asyncio.run(scenario())
    assert backend.get_alias() == version
    backend.close()


def test_a_refused_password_on_a_cluster_is_a_configuration_error_on_both_sides(
    own_cluster: list[RedisProcess],
) -> None:
    url = f"redis+cluster://nobody:wrong@127.0.0.1:{own_cluster[0].port}?connect_timeout=0.5"
    backend = open_backend(url)
    with pytest.raises(StoreConfigError, match="refused the user name or password"):
        backend.get_alias()  # redis-py's cluster client gives up on every node: the cause decides
    backend.close()

    async def read() -> None:
        reader = open_reader(url)
        try:
            with pytest.raises(StoreConfigError, match=r"refused the user name or password.*WRONGPASS"):
                await reader.get_alias()
        finally:
            await reader.aclose()

    asyncio.run(read())
