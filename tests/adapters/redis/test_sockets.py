"""Sockets (adapters/redis/wire/sockets.py): TCP keepalive on every connection the adapter opens."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import uvloop

from precompute.adapters import open_backend, open_reader
from precompute.adapters.redis import RedisBackend
from precompute.adapters.redis.wire.sockets import KEEPALIVE_IDLE_S
from precompute.store import Versions
from tests.adapters.redis.helpers import rows
from tests.servers.redis import RedisProcess

pytestmark = pytest.mark.server


def client_sockets(port: int) -> list[tuple[int, float]]:
    """(timer kind, seconds to its expiry) of every established TCP connection to 127.0.0.1:``port``."""
    found = []
    ticks = os.sysconf("SC_CLK_TCK")
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        remote, state, timer = fields[2], fields[3], fields[5]
        if state == "01" and int(remote.split(":")[1], 16) == port:
            kind, when = timer.split(":")
            found.append((int(kind, 16), int(when, 16) / ticks))
    return found


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads the kernel's table of TCP connections")
@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_every_socket_to_redis_has_keepalive_on(redis_factory: Callable[..., RedisProcess], loop: str) -> None:
    server = redis_factory()
    url = f"redis://127.0.0.1:{server.port}/0"
    backend = open_backend(url)
    assert isinstance(backend, RedisBackend)
    versions = Versions(backend)
    record = versions.begin(expected_rows=100)
    backend.write(record.version, rows(100))  # the bulk pipeline's socket, and redis-py's for the layout

    async def scenario() -> list[tuple[int, float]]:
        reader = open_reader(url)
        try:
            await reader.get(record.version, b"k")  # the reader's socket
            return client_sockets(server.port)
        finally:
            await reader.aclose()

    factory: Any = uvloop.new_event_loop if loop == "uvloop" else None
    with asyncio.Runner(loop_factory=factory) as runner:
        sockets = runner.run(scenario())
    backend.close()
    assert len(sockets) >= 3, sockets
    keepalive_timer = 2  # /proc/net/tcp's timer kinds: 0 none, 1 retransmit, 2 keepalive
    assert all(kind == keepalive_timer and when <= KEEPALIVE_IDLE_S + 1 for kind, when in sockets), sockets
