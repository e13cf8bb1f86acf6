"""``precompute run`` in-process, on the shared Ray instance, with the real example model."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.csv
import pytest
from starlette.testclient import TestClient

from precompute.adapters import open_backend, open_reader
from precompute.api import create_app
from precompute.config import load_config
from precompute.model import Model, ModelError
from precompute.run import VerificationFailed, run
from precompute.space import GridSpace
from precompute.store import LockHeld, RunLock, State, Versions
from precompute.store.codec import encode_key
from tests.precompute.conftest import EXAMPLE, example
from tests.precompute.models import save_formula_model

pytestmark = pytest.mark.ray


def direct(keys: list[str]) -> list[float]:
    """The model's own answer for grid keys, scored here without Ray, the store or the API."""
    space = example("sqlite:///unused.db").space
    assert isinstance(space, GridSpace)
    features: dict[str, list[Any]] = {name: [] for name in space.feature_names}
    for key in keys:
        for name, value in space.decode(key).features.items():
            features[name].append(value.encode() if isinstance(value, str) else value)
    arrays = {n: np.array(v, dtype=object if isinstance(v[0], bytes) else np.float32) for n, v in features.items()}
    return [float(x) for x in Model(EXAMPLE / "model").predict(arrays)["weight_pounds"]]


def test_run_scores_the_whole_space_and_the_api_serves_it(ray_session: Any, shared_store_url: str) -> None:
    config = example(shared_store_url)
    summary = run(config)

    assert summary.rows == 21_762
    backend = open_backend(shared_store_url)
    assert backend.get_alias() == summary.version
    record = Versions(backend).get(summary.version)
    assert record.state is State.READY
    assert record.rows == 21_762
    assert record.meta["summary"]["version"] == summary.version

    space = config.space
    assert isinstance(space, GridSpace)
    sample = [space.key_for_id(i) for i in np.random.default_rng(7).choice(space.size, 300, replace=False)]
    stored = backend.read(summary.version, [encode_key(k) for k in sample])
    expected = direct(sample)
    for key, value, want in zip(sample, stored, expected, strict=True):
        assert value is not None, key
        assert json.loads(value)["weight_pounds"] == pytest.approx(want, rel=1e-4), key

    with TestClient(create_app(config)) as client:
        response = client.get(f"/predict/{sample[0]}")
    assert response.status_code == 200
    body = response.json()
    assert body["source"] == "precomputed"
    assert body["model_version"] == summary.version
    assert body["prediction"]["weight_pounds"] == pytest.approx(expected[0], rel=1e-4)


def test_predictions_are_plausible_birth_weights(ray_session: Any, tmp_path: Path) -> None:
    term, preterm, twins = direct(["True:25:Single(1):39", "True:25:Single(1):28", "True:25:Twins(2):39"])
    assert 6.0 < term < 9.5
    assert preterm < term - 2
    assert twins < term


def test_a_failed_run_changes_nothing_served(ray_session: Any, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/store.db"
    versions = Versions(open_backend(url))
    live = versions.begin()
    versions.backend.write(live.version, [(b"True:25:Single(1):39", b'{"weight_pounds":7.5}')])
    versions.mark_ready(live, 1)
    versions.publish(live)

    # Infinite for mother_age 50: the actors must refuse to store it, and the run must fail.
    broken = save_formula_model(tmp_path / "broken", lambda m, age, p, weeks: weeks / (age - 50.0))
    with pytest.raises(VerificationFailed, match="the model returned inf for output 'weight_pounds' at key"):
        run(example(url, model={"path": broken}))

    assert versions.live() == live.version
    failed = [r for r in versions.records() if r.version != live.version]
    assert [r.state for r in failed] == [State.FAILED]
    assert versions.backend.count(failed[0].version) == 0

    async def served() -> bytes | None:
        reader = open_reader(url)
        try:
            return await reader.get(live.version, b"True:25:Single(1):39")
        finally:
            await reader.aclose()

    assert asyncio.run(served()) == b'{"weight_pounds":7.5}'


def test_a_second_run_is_refused_while_one_holds_the_lock(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/store.db"
    with RunLock(open_backend(url), owner="nightly-run-on-host-a"), pytest.raises(LockHeld, match="host-a"):
        run(example(url))
    assert Versions(open_backend(url)).records() == []


def test_a_missing_model_fails_before_anything_is_written(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/store.db"
    with pytest.raises(ModelError, match="no TensorFlow SavedModel"):
        run(example(url, model={"path": tmp_path / "nowhere"}))
    assert Versions(open_backend(url)).records() == []


def test_a_model_that_does_not_fit_the_space_is_refused(tmp_path: Path) -> None:
    config = example(f"sqlite:///{tmp_path}/store.db")
    space = config.space
    assert isinstance(space, GridSpace)
    renamed = dataclasses.replace(space.dimensions[1], name="age")
    bad = GridSpace([space.dimensions[0], renamed, *space.dimensions[2:]], space.template)
    with pytest.raises(ModelError, match=r"no \[\[space.feature\]\] for \['mother_age'\]"):
        run(dataclasses.replace(config, space=bad))


def test_a_table_of_entities(ray_session: Any, tmp_path: Path) -> None:
    table = pa.table(
        {
            "patient": ["p-1", "p-2", "p-3"],
            "sex": ["True", "False", "Unknown"],
            "mother_age": [25.0, 31.0, 40.0],
            "plurality": ["Single(1)", "Twins(2)", "Single(1)"],
            "gestation_weeks": [39.0, 35.0, 41.0],
        }
    )
    pyarrow.csv.write_csv(table, tmp_path / "patients.csv")
    (tmp_path / "precompute.toml").write_text(
        f'[model]\npath = "{EXAMPLE / "model"}"\n'
        '[space]\ntype = "table"\npath = "patients.csv"\nkey_column = "patient"\n'
        '[space.columns]\nis_male = "sex"\n'
        '[store]\nurl = "sqlite:///store.db"\n'
    )
    config = load_config(tmp_path / "precompute.toml", env={})
    summary = run(config)
    assert summary.rows == 3
    stored = open_backend(config.store_url).read(summary.version, [b"p-2", b"p-9"])
    assert stored[1] is None
    assert stored[0] is not None
    assert json.loads(stored[0])["weight_pounds"] == pytest.approx(direct(["False:31:Twins(2):35"])[0], rel=1e-4)


def test_ray_datas_no_progress_timeout_is_a_cluster_failure_naming_the_setting() -> None:
    # Pure logic: the stall itself needs a lost node (tests/cluster); this is how it is reported.
    from ray.data.exceptions import ExecutionTimeoutError

    from precompute.cli import Exit, _failure
    from precompute.cluster import ClusterUnavailable
    from precompute.run import _cause

    stalled = ExecutionTimeoutError("Dataset execution made no progress for at least 30s\nOperators still running:")
    try:
        raise RuntimeError("wrapped") from stalled
    except RuntimeError as wrapped:
        error = _cause(wrapped, 30.0)
    assert isinstance(error, ClusterUnavailable)
    assert "no progress for 30 s ([run] stall_timeout_s)" in str(error)
    assert "Operators still running" not in str(error)  # Ray's first line only
    failure = _failure(error)
    assert failure is not None
    assert failure[0] is Exit.STORE  # exit 5: retry later
    other = RuntimeError("other")
    assert _cause(other, 30.0) is other
