from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

# Every module in tests/servers/ is a fixture plugin; each store server lists the store-URL fixtures it provides.
SERVER_MODULES = sorted(
    f"tests.servers.{p.stem}" for p in (Path(__file__).parent / "servers").glob("*.py") if p.stem != "__init__"
)
pytest_plugins = SERVER_MODULES

# Local servers (DynamoDB Local) accept any credentials, but the SDK wants some. Set before Ray starts, so
# its workers inherit them too.
for _name, _value in (
    ("AWS_ACCESS_KEY_ID", "test"),
    ("AWS_SECRET_ACCESS_KEY", "test"),
    ("AWS_DEFAULT_REGION", "us-east-1"),
):
    os.environ.setdefault(_name, _value)

# Ray starts its workers at nice 15 so that its own daemons stay responsive on a busy node. Here the other
# test process shares the same two cores at nice 0, and actors at nice 15 starve behind it (an actor's start
# measured at over four minutes): the tests' Ray workers compete as equals. Inherited by every Ray the tests
# start, the cluster's nodes and `precompute run` subprocesses included.
os.environ.setdefault("RAY_worker_niceness", "0")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    names = [name for module in SERVER_MODULES for name in getattr(sys.modules[module], "STORE_FIXTURES", [])]
    down = [name for module in SERVER_MODULES for name in getattr(sys.modules[module], "DOWN_FIXTURES", [])]
    for fixture, wanted, suffix in (
        ("store_url", names, "_store_url"),
        ("shared_store_url", [n for n in names if n != "memory_store_url"], "_store_url"),
        ("down_url", down, "_down_url"),
    ):
        if fixture in metafunc.fixturenames:
            ids = [n.removesuffix(suffix) for n in wanted]
            metafunc.parametrize(fixture, wanted, indirect=True, ids=ids)


@pytest.fixture
def store_url(request: pytest.FixtureRequest) -> str:
    """A fresh, empty store on every backend in turn: the contract suite's one fixture."""
    url: str = request.getfixturevalue(request.param)
    return url


@pytest.fixture
def shared_store_url(request: pytest.FixtureRequest) -> str:
    """Like ``store_url``, for every backend that other processes (Ray workers) can write to."""
    url: str = request.getfixturevalue(request.param)
    return url


@pytest.fixture
def down_url(request: pytest.FixtureRequest) -> str:
    """A store on every backend in turn whose server cannot answer (down, or locked), with short timeouts."""
    url: str = request.getfixturevalue(request.param)
    return url


@pytest.fixture(scope="session")
def ray_session() -> Iterator[Any]:
    """One Ray instance for the whole test session (``ray.init`` alone takes seconds)."""
    import ray

    # "local": never the cluster `ray start` recorded on the machine (the cluster tests start one).
    # Ray gives its raylet a fixed 30 s to register; with the other test process starting a cluster on the same
    # two cores it has missed that once ("The current node timed out during startup"). One more try then.
    for attempt in (1, 2):
        try:
            ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
            break
        except Exception as error:
            if attempt == 2 or "timed out during startup" not in str(error):
                raise
            ray.shutdown()
    yield ray
    ray.shutdown()
