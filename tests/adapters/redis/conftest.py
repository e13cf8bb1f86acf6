from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from precompute.adapters.redis import RedisBackend
from tests.servers import find_binary, free_port
from tests.servers.redis import RedisProcess, create_cluster, redis_binary
from tests.store.helpers import opened


@pytest.fixture(params=["redis_store_url", "redis_cluster_store_url"], ids=["redis", "redis_cluster"])
def url(request: pytest.FixtureRequest) -> str:
    """A fresh store on the shared standalone server, then on the shared 3-node cluster."""
    value: str = request.getfixturevalue(request.param)
    return value


@pytest.fixture
def backend(url: str) -> Iterator[RedisBackend]:
    yield from opened(url, RedisBackend)


@pytest.fixture
def certificates(tmp_path: Path) -> dict[str, Path]:
    """A throwaway CA and a server certificate for 127.0.0.1, made with the openssl command."""
    openssl = find_binary("openssl", "apt-get install openssl")
    files = {name: tmp_path / name for name in ("ca.key", "ca.crt", "server.key", "server.csr", "server.crt")}
    san = tmp_path / "san.ext"
    san.write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")

    def run(*args: str) -> None:
        subprocess.run([openssl, *args], check=True, capture_output=True, timeout=60)

    ca_key, ca_crt, key, csr, crt = (str(f) for f in files.values())
    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=precompute-test-ca",
        "-keyout", ca_key, "-out", ca_crt)  # fmt: skip
    run("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=localhost", "-keyout", key, "-out", csr)
    run("x509", "-req", "-days", "1", "-in", csr, "-CA", ca_crt, "-CAkey", ca_key, "-CAcreateserial",
        "-out", crt, "-extfile", str(san))  # fmt: skip
    return files


@pytest.fixture
def tls_port(redis_factory: Callable[..., RedisProcess], certificates: dict[str, Path]) -> int:
    """The TLS port of a fresh server that presents ``certificates["server.crt"]`` (clients need none)."""
    port = free_port()
    redis_factory(
        "--tls-port", str(port), "--tls-cert-file", str(certificates["server.crt"]),
        "--tls-key-file", str(certificates["server.key"]), "--tls-ca-cert-file", str(certificates["ca.crt"]),
        "--tls-auth-clients", "no",
    )  # fmt: skip
    return port


@pytest.fixture
def own_cluster(tmp_path: Path) -> Iterator[list[RedisProcess]]:
    """A 3-node cluster for this test alone: its slots get moved."""
    nodes = create_cluster(redis_binary(), tmp_path)
    yield nodes
    for node in nodes:
        node.stop()
