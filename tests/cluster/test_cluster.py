"""``precompute run`` on a real multi-node Ray cluster (tests/servers/ray_cluster.py), as a user runs it.

Each worker node runs in its own mount namespace where the checkout's package folders and the driver's
folder (model, tables, configs) are empty: every actor and task must get the code and the model through
Ray. The store is a real Redis on loopback, which every node reaches.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from precompute.adapters import open_backend
from precompute.config import load_config
from precompute.model import Model, grid_inputs
from precompute.space import GridSpace
from precompute.store import State, Versions
from precompute.store.codec import encode_key
from tests.precompute.conftest import EXAMPLE, EXAMPLE_CONFIG
from tests.servers.ray_cluster import RayCluster
from tests.servers.redis import RedisProcess, fresh_prefix

pytestmark = [pytest.mark.server, pytest.mark.cluster]
PRECOMPUTE = str(Path(sys.executable).with_name("precompute"))
RUN_TIMEOUT_S = 240  # below the suite's per-test timeout (300 s), which would say less


@dataclass
class Outcome:
    returncode: int
    output: str
    summary: dict[str, Any] | None


def write_job(folder: Path, url: str, model: str = "model", run: str = "", space: str | None = None) -> Path:
    """The example's config with its store, [run] and optionally [space] replaced, in ``folder``."""
    text = EXAMPLE_CONFIG.read_text()
    text = re.sub(r'(?m)^path = "model"$', f"path = {json.dumps(model)}", text)
    text = re.sub(r'(?m)^url = ".*"$', f"url = {json.dumps(url)}", text)
    text = re.sub(r"(?ms)^\[run\].*?(?=^\[serve\])", f"[run]\n{run}\n\n", text)
    if space is not None:
        text = re.sub(r"(?ms)^\[space\].*?(?=^\[store\])", space + "\n\n", text)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "precompute.toml"
    path.write_text(text)
    return path


def run_cli(config: Path, timeout: float = RUN_TIMEOUT_S, on_output: Any = None) -> Outcome:
    """``precompute run`` as a user starts it, from the config's folder; its summary JSON if it wrote one."""
    summary = config.parent / f"summary-{uuid.uuid4().hex[:8]}.json"
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "PRECOMPUTE_STORE")}
    proc = subprocess.Popen(
        [PRECOMPUTE, "run", "--config", str(config), "--summary-json", str(summary)],
        cwd=config.parent,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert proc.stdout is not None
    lines: list[str] = []
    # Killed at the deadline even when it prints nothing, so that a run that hangs fails with its own output.
    timer = threading.Timer(timeout, proc.kill)
    timer.start()
    try:
        for line in proc.stdout:
            lines.append(line)
            if on_output is not None:
                on_output(line)
        proc.wait()
    finally:
        timer.cancel()
    assert proc.returncode != -signal.SIGKILL, f"no end in {timeout} s:\n" + "".join(lines)
    data = json.loads(summary.read_text()) if summary.exists() else None
    return Outcome(proc.returncode, "".join(lines), data)


def every_answer_matches(url: str, version: str, space: GridSpace) -> None:
    """Every key of the grid is in ``version`` with the model's own answer, scored here without Ray."""
    ids = np.arange(space.size)
    keys = [space.key_for_id(int(i)) for i in ids]
    stored = open_backend(url).read(version, [encode_key(k) for k in keys])
    assert all(value is not None for value in stored), "keys missing from the published version"
    model = Model(EXAMPLE / "model")
    indices = space.indices(ids)
    features = {name: values[indices[name]] for name, values in grid_inputs(space, model.signature).items()}
    want = model.predict(features)["weight_pounds"]
    got = np.array([json.loads(v)["weight_pounds"] for v in stored if v is not None])
    np.testing.assert_allclose(got, want, rtol=1e-4)


@pytest.fixture(scope="module")
def store(redis_server: RedisProcess) -> str:
    """One store for the module: the published version of one test is the live version of the next."""
    return f"redis://127.0.0.1:{redis_server.port}/0?prefix={fresh_prefix()}"


@pytest.fixture(scope="module")
def model(driver_dir: Path) -> Path:
    """The example model, copied where only the driver sees it."""
    target = driver_dir / "model"
    shutil.copytree(EXAMPLE / "model", target)
    return target


def test_a_run_on_the_cluster_publishes_every_answer_of_the_model(
    ray_cluster: RayCluster, driver_dir: Path, model: Path, store: str
) -> None:
    # An autoscaling pool (1..2 actors): Ray Data adds the second actor while the first is busy.
    run = f'ray_address = "{ray_cluster.address}"\ndevice = "cpu"\nactors = 1\nmax_actors = 2\ncpus_per_actor = 0.5'
    config = write_job(driver_dir / "grid", store, model=str(model), run=run)
    outcome = run_cli(config)

    assert outcome.returncode == 0, outcome.output
    assert outcome.summary is not None
    assert "No module named" not in outcome.output
    space = grid_of(config)
    version = outcome.summary["version"]
    assert open_backend(store).get_alias() == version
    every_answer_matches(store, version, space)
    # The work ran on the worker nodes (the head has no CPU), and the summary says where.
    nodes = outcome.summary["nodes"]
    assert sum(n["rows_scored"] for n in nodes) == space.size
    assert sum(n["rows_written"] for n in nodes) == space.size
    assert 1 <= sum(n["actors"] for n in nodes) <= 2  # the actors that scored rows (an idle one is not counted)
    assert all(n["cpus"] == 1 for n in nodes if n["rows_scored"] or n["rows_written"])
    assert "node " in outcome.output
    assert "1..2 CPU actor(s) x (0.5 CPU)" in outcome.output
    assert "rows scored" in outcome.output


def test_scoring_actors_run_on_the_gpu_node_and_write_tasks_hold_no_gpu(
    ray_cluster: RayCluster, tmp_path: Path, store: str
) -> None:
    # The model as a URI: a folder every node can read (unlike the driver's folder), read where the actors run.
    shared = tmp_path / "shared-model"
    shutil.copytree(EXAMPLE / "model", shared)
    run = f'ray_address = "{ray_cluster.address}"\ndevice = "gpu"'
    config = write_job(tmp_path / "job", store, model=shared.as_uri(), run=run)
    outcome = run_cli(config)

    assert outcome.returncode == 0, outcome.output
    assert outcome.summary is not None
    scoring = [n for n in outcome.summary["nodes"] if n["rows_scored"]]
    assert len(scoring) == 1
    assert scoring[0]["gpus"] == 1, outcome.summary["nodes"]
    assert scoring[0]["rows_scored"] == outcome.summary["rows"]
    assert outcome.summary["write_task_gpus"] == 0
    assert "1 GPU actor(s) x (1 CPU, 1 GPU)" in outcome.summary["plan"]


def test_a_local_table_is_sent_to_the_cluster(
    ray_cluster: RayCluster, driver_dir: Path, model: Path, redis_store_url: str
) -> None:
    # A table on the driver's disk only: small enough to travel through Ray's object store.
    rng = np.random.default_rng(3)
    n = 500
    table = pa.table(
        {
            "entity": [f"e{i}" for i in range(n)],
            "is_male": rng.choice(["True", "False"], n),
            "mother_age": rng.integers(15, 45, n).astype(np.float32),
            "plurality": rng.choice(["Single(1)", "Twins(2)"], n),
            "gestation_weeks": rng.integers(30, 42, n).astype(np.float32),
        }
    )
    folder = driver_dir / "table"
    folder.mkdir()
    pq.write_table(table, folder / "entities.parquet")
    space = '[space]\ntype = "table"\npath = "entities.parquet"\nkey_column = "entity"'
    url = f"sqlite:///{folder / 'unused.db'}"  # replaced below: SQLite is refused with a cluster
    config = write_job(folder, url, model=str(model), run=f'ray_address = "{ray_cluster.address}"', space=space)
    refused = run_cli(config)
    assert refused.returncode == 2
    assert "Ray cluster's workers cannot write to it" in refused.output

    store = redis_store_url
    config = write_job(folder, store, model=str(model), run=f'ray_address = "{ray_cluster.address}"', space=space)
    outcome = run_cli(config)
    assert outcome.returncode == 0, outcome.output
    assert outcome.summary is not None
    assert outcome.summary["rows"] == n
    backend = open_backend(store)
    stored = backend.read(outcome.summary["version"], [f"e{i}".encode() for i in range(n)])
    assert all(value is not None for value in stored)


def test_without_shipped_code_the_nodes_must_have_the_package(
    ray_cluster: RayCluster, driver_dir: Path, model: Path, store: str
) -> None:
    records = [r.version for r in Versions(open_backend(store)).records()]
    run = f'ray_address = "{ray_cluster.address}"\ndevice = "cpu"\nship_code = false'
    config = write_job(driver_dir / "no-code", store, model=str(model), run=run)
    outcome = run_cli(config)

    assert outcome.returncode == 2, outcome.output
    assert "[run] ship_code" in outcome.output
    assert "not installed" in outcome.output
    assert [r.version for r in Versions(open_backend(store)).records()] == records  # nothing begun


def test_a_node_lost_mid_run_never_publishes_a_partial_version(
    ray_cluster: RayCluster, driver_dir: Path, model: Path, store: str
) -> None:
    backend = open_backend(store)
    live = backend.get_alias()
    assert live is not None, "the first test publishes the live version"
    ray_cluster.add_node("spare", cpus=1)
    # A grid ten times the example's (mother_age in steps of 0.1): long enough to lose a node in the middle.
    space = re.sub(r"(?ms)^\[store\].*", "", EXAMPLE_CONFIG.read_text().split("[space]", 1)[1])
    space = "[space]" + space.replace("stop = 50\nstep = 1", "stop = 50\nstep = 0.1")
    # Five actors of 0.5 CPU on three 1-CPU nodes: at least one of them is on the node that is lost.
    # Ray restarts the lost actors on the nodes left; when they fill them, no read or write task finds room and
    # the run stalls: the stall timeout ends it (a scheduled run never hangs).
    run = f'ray_address = "{ray_cluster.address}"\ndevice = "cpu"\nactors = 5\ncpus_per_actor = 0.5\n'
    run += "stall_timeout_s = 30"
    config = write_job(driver_dir / "node-lost", store, model=str(model), run=run, space=space)
    killed: list[int] = []  # the scoring actors that were working on the node when it was killed

    def kill_when_scoring(line: str) -> None:
        if "[score]" in line:
            threading.Thread(target=kill_spare, daemon=True).start()

    def kill_spare() -> None:
        deadline = time.monotonic() + 120
        while not (busy := ray_cluster.busy_workers("spare", "MapWorker", 4)) and time.monotonic() < deadline:
            time.sleep(0.2)
        ray_cluster.kill_node("spare")
        killed.append(busy)

    outcome = run_cli(config, on_output=kill_when_scoring)

    assert killed, outcome.output
    assert killed[0] >= 1, "no scoring actor was working on the node that was lost"
    records = {r.version: r for r in Versions(backend).records()}
    print(f"node lost mid-run: exit {outcome.returncode}", outcome.summary and outcome.summary["nodes"])
    if outcome.returncode == 0:  # Ray recovered: the new version is whole
        assert outcome.summary is not None
        version = outcome.summary["version"]
        assert backend.get_alias() == version
        assert records[version].state is State.READY
        every_answer_matches(store, version, grid_of(config))
    else:  # failed: nothing published, the live version untouched
        assert backend.get_alias() == live, outcome.output
        assert all(r.state is not State.READY for v, r in records.items() if v != live and v > live)


def grid_of(config: Path) -> GridSpace:
    space = load_config(config, env={}).space
    assert isinstance(space, GridSpace)
    return space
