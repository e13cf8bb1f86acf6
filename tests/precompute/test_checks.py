"""What a run checks before it creates anything: a bad value, too many actors, a Ray that does not answer."""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest

from precompute import cluster
from precompute.adapters import open_backend
from precompute.config import Config, ConfigError
from precompute.model import ModelError
from precompute.run import run
from precompute.space import Categorical, GridSpace
from tests.precompute.conftest import EXAMPLE_CONFIG, example
from tests.servers import free_port

CLI = [sys.executable, "-m", "precompute.cli"]


def with_value(config: Config, feature: str, value: str) -> Config:
    space = config.space
    assert isinstance(space, GridSpace)
    dims = [
        dataclasses.replace(d, values=(*d.values, value)) if d.name == feature and isinstance(d, Categorical) else d
        for d in space.dimensions
    ]
    return dataclasses.replace(config, space=GridSpace(dims, space.template))


@pytest.mark.parametrize(("feature", "value"), [("is_male", "Maybe"), ("plurality", "Sextuplets(6)")])
def test_a_value_the_model_rejects_fails_in_the_check_stage_naming_it(tmp_path: Path, feature: str, value: str) -> None:
    url = f"sqlite:///{tmp_path}/store.db"
    started = time.monotonic()
    with pytest.raises(
        ModelError, match=rf"\[\[space.feature\]\] {feature}: the model rejects the value '{re.escape(value)}'"
    ):
        run(with_value(example(url), feature, value))
    assert time.monotonic() - started < 60  # the model load, not Ray nor a lock nor a version
    assert open_backend(url).records() == {}  # nothing was created in the store


@pytest.mark.ray
def test_too_many_actors_are_refused_before_the_lock_or_a_version(ray_session: Any, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/store.db"
    with pytest.raises(ConfigError, match=r"\[run\] actors"):
        run(example(url, run={"actors": 4, "cpus_per_actor": 1.0}))
    backend = open_backend(url)
    assert backend.records() == {}
    assert backend.acquire_lock("someone-else", 5) is None  # the run took no lock


def test_a_ray_address_that_does_not_answer_fails_fast() -> None:
    started = time.monotonic()
    with pytest.raises(cluster.ClusterUnavailable, match=r"no Ray cluster answers at 127.0.0.1:\d+.*Fix:"):
        cluster.check_reachable(f"127.0.0.1:{free_port()}", timeout=2)
    with pytest.raises(cluster.ClusterUnavailable, match="no Ray cluster answers"):
        cluster.check_reachable(f"ray://127.0.0.1:{free_port()}", timeout=2)
    assert time.monotonic() - started < 10


def test_auto_without_a_recorded_cluster_says_how_to_fix_it(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path))
    assert cluster.recorded_address() is None
    with pytest.raises(cluster.ClusterUnavailable, match="no Ray cluster is recorded on this machine"):
        cluster.check_reachable("auto")


def test_an_empty_address_means_a_local_ray_of_the_runs_own() -> None:
    assert cluster.resolve(None) == "local"
    assert cluster.resolve("") == "local"
    assert cluster.resolve("10.0.0.5:6379") == "10.0.0.5:6379"


@pytest.mark.ray
def test_a_run_never_joins_a_dead_recorded_cluster(tmp_path: Path, redis_store_url: str) -> None:
    # `ray start` leaves its address on the machine; that cluster is gone. A run with no ray_address must
    # start its own Ray (and finish), a run given that address must fail with exit 5 within seconds.
    ray_tmp = Path(tempfile.mkdtemp(prefix="pcray", dir="/tmp"))  # short: Ray's socket paths have a length limit
    (ray_tmp / "ray").mkdir()
    (ray_tmp / "ray" / "ray_current_cluster").write_text(f"127.0.0.1:{free_port()}")
    env = {**os.environ, "PRECOMPUTE_STORE": f"sqlite:///{tmp_path}/store.db", "RAY_TMPDIR": str(ray_tmp)}
    env.pop("RAY_ADDRESS", None)
    done = subprocess.run([*CLI, "run", "--config", str(EXAMPLE_CONFIG)], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "starting a local Ray instance" in done.stderr
    for chatter in ("core_worker.cc", "Execution plan of Dataset", "open an issue on the Ray project"):
        assert chatter not in done.stderr, chatter  # without a terminal, Ray stays quiet too

    env["RAY_ADDRESS"] = "auto"
    env["PRECOMPUTE_STORE"] = redis_store_url  # a store a cluster's workers could reach
    started = time.monotonic()
    refused = subprocess.run([*CLI, "run", "--config", str(EXAMPLE_CONFIG)], env=env, capture_output=True, text=True)
    assert refused.returncode == 5, refused.stderr[-3000:]
    assert "no Ray cluster answers" in refused.stderr
    assert time.monotonic() - started < 60
    assert open_backend(redis_store_url).records() == {}  # nothing was created in the store
