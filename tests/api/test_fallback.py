"""The online fallback with real SavedModels: modes, byte compatibility with the batch job, model_version,
batching under concurrency (model calls counted), deadlines with a deliberately slow model, write-back."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from starlette.testclient import TestClient

from precompute.adapters import open_backend, open_reader
from precompute.api import create_app
from precompute.config import ConfigError, load_config
from precompute.model import fingerprint, grid_inputs
from precompute.scoring import GridScorer
from precompute.space import GridSpace, TableSpace
from precompute.store.codec import encode_key
from tests.api.conftest import NAP, FailingReader, expected_weight, memory_config, publish, running, wait_for
from tests.precompute.conftest import EXAMPLE, EXAMPLE_CONFIG, ROOT

KEY = "True:25:Single(1):39"
OFF_GRID = "True:51:Single(1):39"  # decodes (mother_age 51), outside the grid's 12..50
ABSENT = "False:30:Twins(2):40"  # on the grid, not in the published rows


def test_the_environment_turns_the_fallback_on_for_the_example_model() -> None:
    env = {"PRECOMPUTE_FALLBACK": "on"}
    config = memory_config(env=env)
    assert config.serve.fallback == "on"
    version = publish(config, {KEY: b'{"weight_pounds":7.31}'}, {"model": fingerprint(EXAMPLE / "model")})
    with TestClient(create_app(config)) as client:
        assert client.app.state.online.model is not None  # type: ignore[attr-defined]  # loaded at start-up
        answer = client.get(f"/predict/{OFF_GRID}")
        assert answer.status_code == 200
        body = answer.json()
        assert body["source"] == "online"
        assert body["model_version"] == version  # the loaded model is the one this version was scored with
        assert set(body["prediction"]) == {"weight_pounds"}
        assert client.get("/predict/True:51.0:Single(1):39").json()["key"] == OFF_GRID  # one canonical key
        assert client.get(f"/predict/{KEY}").json()["source"] == "precomputed"
        assert client.get("/predict/Maybe:51:Single(1):39").status_code == 404  # unknown category: no features
        assert client.get("/predict/True:old:Single(1):39").status_code == 400
        by_features = client.get(
            "/predict",
            params={"is_male": "True", "mother_age": "51", "plurality": "Single(1)", "gestation_weeks": "39"},
        )
        assert by_features.json()["source"] == "online"
        assert by_features.json()["prediction"] == body["prediction"]

        # Byte compatibility: an online answer is what the batch job's scorer writes for the same key in a
        # batch of the same size (features converted and values encoded by the same code). Across batch sizes
        # the model itself may differ in the last float32 digit (summation order), as `precompute run` allows.
        space = config.space
        assert isinstance(space, GridSpace)
        scorer = GridScorer.__new__(GridScorer)  # the batch job's scorer, on the model the API loaded
        scorer.model = client.app.state.online.model  # type: ignore[attr-defined]
        scorer.space = space
        scorer.inputs = grid_inputs(space, scorer.model.signature)
        scorer.tag = pa.array(["driver:none"])
        ids = np.random.default_rng(7).choice(space.size, 12, replace=False)
        for row in ids:
            stored = scorer({"id": np.array([row])})
            key = stored.column("key")[0].as_py().decode()
            value = stored.column("value")[0].as_py()
            single = client.get(f"/predict/{key}")
            assert single.json()["source"] == "online"
            assert b'"prediction":' + value + b',"source":"online"' in single.content
            # A batch splices the model's bytes into its items too, rather than decoding and encoding them.
            one = client.post("/predict", json={"keys": [key]})
            assert b'"prediction": ' + value + b', "source": "online", "model_version": ' in one.content
        stored = scorer({"id": ids})
        keys = [k.decode() for k in stored.column("key").to_pylist()]
        results = client.post("/predict", json={"keys": keys}).json()["results"]
        for value, result in zip(stored.column("value").to_pylist(), results, strict=True):
            assert result["source"] == "online"
            assert result["prediction"] == pytest.approx(json.loads(value), rel=1e-6)


def test_fallback_off_keeps_misses_404(formula_model: Path) -> None:
    config = memory_config(formula_model, fallback="off")
    publish(config, {KEY: b'{"weight_pounds":7.31}'})
    with TestClient(create_app(config)) as client:
        assert client.get(f"/predict/{OFF_GRID}").status_code == 404
        assert "outside the precomputed space" in client.get(f"/predict/{OFF_GRID}").json()["error"]
        assert client.get(f"/predict/{ABSENT}").status_code == 404
        assert client.app.state.batcher is None  # type: ignore[attr-defined]


def test_store_down_mode_answers_online_only_while_the_store_fails(formula_model: Path) -> None:
    config = memory_config(formula_model, fallback="store-down", refresh_seconds=0.05)
    version = publish(config, {KEY: b'{"weight_pounds":7.31}'}, {"model": fingerprint(formula_model)})
    reader = FailingReader(open_reader(config.store_url))
    with TestClient(create_app(config, reader=reader)) as client:
        assert client.get(f"/predict/{ABSENT}").status_code == 404  # the store is up: a miss stays a miss
        assert client.get(f"/predict/{OFF_GRID}").status_code == 404
        assert client.get(f"/predict/{ABSENT}").status_code == 404  # remembered absent: no store read
        reader.down = True
        down = client.get("/predict/False:31:Twins(2):40")
        assert down.status_code == 200
        assert down.json()["source"] == "online"
        assert down.json()["model_version"] == version
        assert down.json()["prediction"]["weight_pounds"] == pytest.approx(expected_weight(31, 40), rel=1e-6)
        assert wait_for(lambda: client.get("/readyz").json().get("degraded") is not None)
        assert client.get("/readyz").status_code == 200  # still ready: the model answers
        assert client.get(f"/predict/{OFF_GRID}").json()["source"] == "online"  # the store is known down
        batch = client.post("/predict", json={"keys": ["False:32:Twins(2):40", "nope"]}).json()["results"]
        assert [r["status"] for r in batch] == [200, 400]
        assert batch[0]["source"] == "online"
        reader.down = False
        assert wait_for(lambda: client.get("/readyz").json().get("degraded") is None)
        assert client.get(f"/predict/{OFF_GRID}").status_code == 404
        metrics = client.get("/metrics").text
    assert 'precompute_fallback_total{reason="store_down"}' in metrics


def test_model_version_is_the_fingerprint_when_the_version_was_scored_by_another_model(formula_model: Path) -> None:
    config = memory_config(formula_model, fallback="on")
    publish(config, {KEY: b'{"weight_pounds":7.31}'}, {"model": "sha256:somethingelse"})
    with TestClient(create_app(config)) as client:
        body = client.get(f"/predict/{ABSENT}").json()
    assert body["source"] == "online"
    assert body["model_version"] == fingerprint(formula_model)


def test_non_finite_predictions_are_422_not_500(formula_model: Path) -> None:
    config = memory_config(formula_model, fallback="on")
    publish(config, {KEY: b'{"weight_pounds":7.31}'})
    with TestClient(create_app(config)) as client:
        single = client.get("/predict/True:-5:Single(1):39")  # the formula is NaN for a negative age
        batch = client.post("/predict", json={"keys": ["True:-5:Single(1):39", "True:5:Single(1):39"]})
    assert single.status_code == 422
    assert "non-finite" in single.json()["error"]
    assert [r["status"] for r in batch.json()["results"]] == [422, 200]


def off_grid_keys(n: int) -> list[str]:
    return [f"True:{60 + i}:Single(1):{20 + i % 20}" for i in range(n)]


async def storm(config_kwargs: dict[str, Any], model: Path, n: int) -> tuple[list[dict[str, Any]], int]:
    config = memory_config(model, fallback="on", **config_kwargs)
    publish(config, {KEY: b'{"weight_pounds":7.31}'})
    app = create_app(config)
    async with running(app) as client:
        NAP["seconds"] = 0.03
        try:
            responses = await asyncio.gather(*(client.get(f"/predict/{k}") for k in off_grid_keys(n)))
        finally:
            NAP["seconds"] = 0.0
        calls: int = app.state.batcher.calls
    return [r.json() | {"status": r.status_code} for r in responses], calls


def test_concurrent_misses_are_batched_into_few_model_calls(slow_model: Path) -> None:
    n = 64
    answers, calls = asyncio.run(storm({"deadline_ms": 5000, "batch_target_ms": 1000}, slow_model, n))
    assert all(a["status"] == 200 and a["source"] == "online" for a in answers)
    assert calls <= n // 4, f"{n} concurrent misses took {calls} model calls"
    for key, answer in zip(off_grid_keys(n), answers, strict=True):  # every request got its own answer back
        _, age, _, weeks = key.split(":")
        assert answer["key"] == key
        assert answer["prediction"]["weight_pounds"] == pytest.approx(expected_weight(float(age), float(weeks)))


def test_batching_off_makes_one_model_call_per_miss(slow_model: Path) -> None:
    answers, calls = asyncio.run(storm({"deadline_ms": 10000, "batch_max_size": 1}, slow_model, 16))
    assert all(a["status"] == 200 for a in answers)
    assert calls == 16


def test_a_late_model_is_a_clear_503_and_never_a_hang(slow_model: Path) -> None:
    config = memory_config(slow_model, fallback="on", deadline_ms=150, batch_target_ms=50)
    publish(config, {KEY: b'{"weight_pounds":7.31}'})
    with TestClient(create_app(config)) as client:
        NAP["seconds"] = 0.6
        try:
            started = time.monotonic()
            late = client.get(f"/predict/{OFF_GRID}")
            elapsed = time.monotonic() - started
            batch = client.post("/predict", json={"keys": [KEY, ABSENT]})
        finally:
            NAP["seconds"] = 0.0
        assert late.status_code == 503
        assert late.json()["cause"] == "deadline"
        assert "150 ms deadline" in late.json()["error"]
        assert late.headers["retry-after"] == "1"
        assert elapsed < 0.5, f"answered after {elapsed:.3f} s, the model takes 0.6 s"
        assert [r["status"] for r in batch.json()["results"]] == [200, 503]
        time.sleep(0.7)  # the model finishes the abandoned batches; the queue must not be stuck
        recovered = client.get(f"/predict/{OFF_GRID}")
        assert recovered.status_code == 200
        assert recovered.json()["source"] == "online"
        metrics = client.get("/metrics").text
    assert 'precompute_late_total{cause="deadline"} 2' in metrics
    assert 'precompute_requests_total{source="online",status="503"} 1' in metrics


def test_a_configured_default_answers_when_the_model_is_late(slow_model: Path) -> None:
    config = memory_config(
        slow_model, fallback="on", deadline_ms=100, batch_target_ms=50, deadline_default={"weight_pounds": 7.0}
    )
    publish(config, {KEY: b'{"weight_pounds":7.31}'})
    with TestClient(create_app(config)) as client:
        NAP["seconds"] = 0.4
        try:
            single = client.get(f"/predict/{OFF_GRID}")
            batch = client.post("/predict", json={"keys": [ABSENT]})
        finally:
            NAP["seconds"] = 0.0
    assert single.status_code == 200
    assert single.json() == {
        "key": OFF_GRID,
        "prediction": {"weight_pounds": 7.0},
        "source": "default",
        "model_version": None,
    }
    assert batch.json()["results"][0]["source"] == "default"


def test_a_default_that_does_not_match_the_outputs_stops_the_start(formula_model: Path) -> None:
    from precompute.model import ModelError

    config = memory_config(formula_model, fallback="on", deadline_default={"score": 1.0})
    with pytest.raises(ModelError, match="deadline_default"), TestClient(create_app(config)):
        pass


def test_a_full_queue_is_refused_at_once(slow_model: Path) -> None:
    async def run() -> list[int]:
        config = memory_config(slow_model, fallback="on", max_pending=2, batch_max_size=1, deadline_ms=5000)
        publish(config, {KEY: b'{"weight_pounds":7.31}'})
        app = create_app(config)
        async with running(app) as client:
            NAP["seconds"] = 0.2
            try:
                responses = await asyncio.gather(*(client.get(f"/predict/{k}") for k in off_grid_keys(8)))
            finally:
                NAP["seconds"] = 0.0
        assert all(r.json().get("cause") == "overloaded" for r in responses if r.status_code == 503)
        return [r.status_code for r in responses]

    statuses = asyncio.run(run())
    assert statuses.count(503) >= 4  # one running, two queued: the rest are refused without waiting
    assert statuses.count(200) >= 2


def test_online_answers_are_written_back_and_then_served_from_the_store(formula_model: Path) -> None:
    config = memory_config(formula_model, fallback="on", write_back=True, cache_bytes=0)
    version = publish(config, {KEY: b'{"weight_pounds":7.31}'}, {"model": fingerprint(formula_model)})
    backend = open_backend(config.store_url)
    with TestClient(create_app(config)) as client:
        first = client.get(f"/predict/{OFF_GRID}")
        assert first.json()["source"] == "online"
        assert wait_for(lambda: backend.read(version, [encode_key(OFF_GRID)])[0] is not None)
        second = client.get(f"/predict/{OFF_GRID}")
        assert second.json()["source"] == "precomputed"
        assert second.json()["prediction"] == first.json()["prediction"]
        assert client.get(f"/predict/{ABSENT}").json()["source"] == "online"
        assert wait_for(lambda: client.get(f"/predict/{ABSENT}").json()["source"] == "precomputed")
        metrics = client.get("/metrics").text
    assert 'precompute_writeback_total{outcome="written"} 2' in metrics


def test_written_back_answers_expire_after_their_ttl_and_are_answered_online_again(formula_model: Path) -> None:
    config = memory_config(formula_model, fallback="on", write_back=True, write_back_ttl_seconds=1.0)
    version = publish(config, {KEY: b'{"weight_pounds":7.31}'}, {"model": fingerprint(formula_model)})
    backend = open_backend(config.store_url)
    with TestClient(create_app(config)) as client:
        assert client.get(f"/predict/{OFF_GRID}").json()["source"] == "online"
        assert wait_for(lambda: backend.read(version, [encode_key(OFF_GRID)])[0] is not None)
        stored = backend.read(version, [encode_key(OFF_GRID)])[0]
        assert stored is not None
        assert stored.startswith(b"~")  # the expiry travels with the value, whatever the backend
        hit = client.get(f"/predict/{OFF_GRID}").json()
        assert hit["source"] == "precomputed"
        batch = client.post("/predict", json={"keys": [OFF_GRID]}).json()["results"][0]
        assert batch["source"] == "precomputed"
        assert batch["prediction"] == hit["prediction"]
        sleep_past_expiry(stored)
        assert client.post("/predict", json={"keys": [OFF_GRID]}).json()["results"][0]["source"] == "online"
        # ... written back again with a new expiry, served from the store, then expired again
        assert wait_for(lambda: client.get(f"/predict/{OFF_GRID}").json()["source"] == "precomputed")
        stored_again = backend.read(version, [encode_key(OFF_GRID)])[0]
        assert stored_again is not None
        assert stored_again != stored
        sleep_past_expiry(stored_again)
        assert client.get(f"/predict/{OFF_GRID}").json()["source"] == "online"


def sleep_past_expiry(stored: bytes) -> None:
    expires_at = int(stored[1 : stored.index(b"~", 1)])
    time.sleep(max(0.0, expires_at - time.time()) + 0.05)


def test_answers_from_another_model_are_not_written_back(formula_model: Path) -> None:
    config = memory_config(formula_model, fallback="on", write_back=True, cache_bytes=0)
    version = publish(config, {KEY: b'{"weight_pounds":7.31}'}, {"model": "sha256:another"})
    with TestClient(create_app(config)) as client:
        assert client.get(f"/predict/{OFF_GRID}").json()["source"] == "online"
        time.sleep(0.2)
        assert client.get(f"/predict/{OFF_GRID}").json()["source"] == "online"
    assert open_backend(config.store_url).read(version, [encode_key(OFF_GRID)]) == [None]


def test_write_back_never_lands_in_a_version_replaced_meanwhile(slow_model: Path) -> None:
    config = memory_config(slow_model, fallback="on", write_back=True, deadline_ms=5000, batch_target_ms=1000)
    meta = {"model": fingerprint(slow_model)}
    first = publish(config, {KEY: b'{"weight_pounds":7.31}'}, meta)
    backend = open_backend(config.store_url)
    with TestClient(create_app(config)) as client:
        answers: list[dict[str, object]] = []
        NAP["seconds"] = 0.5
        try:
            request = threading.Thread(target=lambda: answers.append(client.get(f"/predict/{OFF_GRID}").json()))
            request.start()
            time.sleep(0.15)  # the model is scoring the miss for the first version
            second = publish(config, {KEY: b'{"weight_pounds":7.31}'}, meta)
            request.join()
        finally:
            NAP["seconds"] = 0.0
        assert answers[0]["source"] == "online"
        assert answers[0]["model_version"] == first
        metrics = client.app.state.metrics  # type: ignore[attr-defined]
        assert wait_for(lambda: metrics.value("precompute_writeback_total", outcome="skipped") == 1)
    assert metrics.value("precompute_writeback_total", outcome="written") == 0
    assert backend.read(first, [encode_key(OFF_GRID)]) == [None]
    assert backend.read(second, [encode_key(OFF_GRID)]) == [None]


def test_a_table_space_cannot_have_a_fallback() -> None:
    config = memory_config(fallback="on")
    table = dataclasses.replace(config, space=TableSpace(("x.parquet",), "parquet", "id", {}))
    with pytest.raises(ConfigError, match="table space"):
        create_app(table)


def test_tensorflow_is_imported_only_with_the_fallback_on() -> None:
    script = f"""
import sys
sys.path.insert(0, {str(ROOT)!r})
from starlette.testclient import TestClient
from precompute.api import create_app
from precompute.config import load_config
config = load_config({str(EXAMPLE_CONFIG)!r}, env={{"PRECOMPUTE_STORE": "memory://tf-check"}})
with TestClient(create_app(config)) as client:
    client.get("/predict/True:25:Single(1):39")
print("tensorflow" in sys.modules)
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True)
    assert done.stdout.strip() == "False"
    assert load_config(EXAMPLE_CONFIG, env={}).serve.fallback == "off"  # the example's default
