"""Real Redis servers: one standalone server and one 3-node Redis Cluster on loopback, per session.

Each test gets a fresh, empty store on them through a unique key prefix (``?prefix=t-<uuid>:``), which
works the same on a cluster (no FLUSHALL across nodes) and lets tests run side by side on one server.
``redis_factory`` starts dedicated servers for the fault tests (killed, restarted, full).
``redis_down_url`` (in ``DOWN_FIXTURES``) is a store URL where nothing answers, for the error contract.
"""

from __future__ import annotations

import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.servers import find_binary, free_port, missing, refusing_port, stop, wait_for_port

STORE_FIXTURES = ["redis_store_url", "redis_cluster_store_url"]
#: Store URLs on which every call must fail with StoreUnavailable, quickly (the error-translation contract).
DOWN_FIXTURES = ["redis_down_url"]
HINT = "apt-get install redis-server"


@dataclass
class RedisProcess:
    """One redis-server on 127.0.0.1; ``kill`` and ``start`` again keep its port and directory."""

    binary: str
    directory: Path
    args: tuple[str, ...] = ()
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> RedisProcess:
        self.directory.mkdir(parents=True, exist_ok=True)
        command = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.directory)]
        command += ["--save", "", "--appendonly", "no", "--protected-mode", "no", *self.args]
        log = (self.directory / "redis.log").open("ab")
        self.proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        wait_for_port(self.port, self.proc)
        import redis  # here, not at the top: this plugin loads in every session, with or without redis-py

        deadline = time.monotonic() + 30
        while True:  # a restart replays its append-only file first, answering LOADING meanwhile
            try:
                with redis.Redis(port=self.port, socket_timeout=5) as client:
                    client.ping()
                return self
            except redis.BusyLoadingError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def kill(self) -> None:
        """SIGKILL: the server vanishes mid-request, as in a crash or a lost node."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None

    def stop(self) -> None:
        if self.proc is not None:
            stop(self.proc)
            self.proc = None

    def cli(self, *args: str) -> str:
        cli = find_binary("redis-cli", HINT)
        done = subprocess.run([cli, "-p", str(self.port), *args], capture_output=True, timeout=60, check=True)
        return done.stdout.decode()


def create_cluster(binary: str, root: Path, nodes: int = 3) -> list[RedisProcess]:
    servers = []
    try:
        for i in range(nodes):
            # An explicit bus port: the default (port + 10000) may be taken on a shared machine.
            bus = str(free_port())
            args = ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf", "--cluster-port", bus]
            args += ["--cluster-node-timeout", "5000"]
            servers.append(RedisProcess(binary, root / f"node{i}", tuple(args)).start())
        addresses = [f"127.0.0.1:{s.port}" for s in servers]
        servers[0].cli("--cluster", "create", *addresses, "--cluster-replicas", "0", "--cluster-yes")
        deadline = time.monotonic() + 60
        while not all("cluster_state:ok" in s.cli("cluster", "info") for s in servers):
            if time.monotonic() > deadline:
                raise TimeoutError("the test Redis Cluster did not reach cluster_state:ok in 60 s")
            time.sleep(0.2)
    except BaseException:
        for server in servers:
            server.stop()
        raise
    return servers


def redis_binary() -> str:
    """redis-server's path, once redis-server, redis-cli and redis-py are known to be there."""
    try:
        import redis  # noqa: F401
    except ImportError:
        missing("redis-py", "pip install 'precompute[redis]'")
    find_binary("redis-cli", HINT)
    return find_binary("redis-server", HINT)


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisProcess]:
    binary = redis_binary()
    with tempfile.TemporaryDirectory(prefix="precompute-redis-") as root:
        server = RedisProcess(binary, Path(root)).start()
        yield server
        server.stop()


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[list[RedisProcess]]:
    binary = redis_binary()
    with tempfile.TemporaryDirectory(prefix="precompute-redis-cluster-") as root:
        servers = create_cluster(binary, Path(root))
        yield servers
        for server in servers:
            server.stop()


def fresh_prefix() -> str:
    return f"t-{uuid.uuid4().hex[:12]}:"


@pytest.fixture
def redis_store_url(redis_server: RedisProcess) -> str:
    return f"redis://127.0.0.1:{redis_server.port}/0?prefix={fresh_prefix()}"


@pytest.fixture
def redis_cluster_store_url(redis_cluster: list[RedisProcess]) -> str:
    return f"redis+cluster://127.0.0.1:{redis_cluster[0].port}?prefix={fresh_prefix()}"


@pytest.fixture
def redis_factory(tmp_path: Path) -> Iterator[Callable[..., RedisProcess]]:
    """Dedicated servers, ``redis_factory("--maxmemory", "8mb")``, all stopped after the test.

    ``start=False`` only reserves a port and a directory: the server is down until ``.start()``.
    """
    binary = redis_binary()
    started: list[RedisProcess] = []

    def make(*args: str, start: bool = True) -> RedisProcess:
        server = RedisProcess(binary, tmp_path / f"redis-{len(started)}", args)
        started.append(server)
        return server.start() if start else server

    yield make
    for server in started:
        server.stop()


@pytest.fixture
def redis_down_url() -> Iterator[str]:
    """``redis://127.0.0.1:<closed port>/0`` with options that make every call give up within ~3 s.

    The port is bound and never listened on, for the whole test, so connecting is refused at once and no
    other process can take the port meanwhile. ``connect_timeout=0.5`` and ``timeout=1`` bound one
    attempt, ``retry=2`` the write path's retries (the only calls that retry).
    """
    try:
        import redis  # noqa: F401  (the adapter needs it to open the URL at all)
    except ImportError:
        missing("redis-py", "pip install 'precompute[redis]'")
    with refusing_port() as port:
        yield f"redis://127.0.0.1:{port}/0?timeout=1&connect_timeout=0.5&retry=2&prefix={fresh_prefix()}"
