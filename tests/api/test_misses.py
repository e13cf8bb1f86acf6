"""Recording misses ([serve] record_misses): which answers are counted, the flushes into a real SQLite store,
both bounds (in memory and the store's cap), and a store that fails while lookups go on."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from pathlib import Path

from starlette.testclient import TestClient

from precompute.adapters import open_backend
from precompute.adapters.memory import MemoryBackend
from precompute.api import create_app
from precompute.api.metrics import Metrics
from precompute.api.misses import MissRecorder
from precompute.config import Config
from precompute.model import fingerprint
from precompute.store import StoreUnavailable, StoreURL
from precompute.store.codec import encode_key
from tests.api.conftest import memory_config, publish, wait_for

KEY = "True:25:Single(1):39"  # published
ABSENT = "False:30:Twins(2):40"  # on the grid, not published: a failed load, not a space to grow
OFF = "True:51:Single(1):39"  # mother_age 51: off the 12..50 grid
OTHER = "False:55:Single(1):30"


def sqlite_config(tmp_path: Path, model: Path, **serve: object) -> Config:
    env = {"PRECOMPUTE_STORE": f"sqlite:///{tmp_path / 'store.db'}"}
    return memory_config(model, env=env, fallback="on", record_misses=True, **serve)


def flush(client: TestClient) -> None:
    """One flush of the app's recorder now, on the app's own event loop."""
    assert client.portal is not None
    client.portal.call(client.app.state.misses.flush)  # type: ignore[attr-defined]


def metric(client: TestClient, name: str) -> float:
    for line in client.get("/metrics").text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    raise AssertionError(f"{name} not exported")


def test_off_grid_answers_are_counted_and_flushed_into_the_store(tmp_path: Path, formula_model: Path) -> None:
    config = sqlite_config(tmp_path, formula_model, misses_flush_seconds=0.1)
    publish(config, {KEY: b'{"weight_pounds":7.31}'}, {"model": fingerprint(formula_model)})
    backend = open_backend(config.store_url)
    with TestClient(create_app(config)) as client:
        for key in (OFF, OFF, "True:51.0:Single(1):39", OTHER, KEY, ABSENT):
            assert client.get(f"/predict/{key}").status_code == 200, key
        assert client.get("/predict/Maybe:51:Single(1):39").status_code == 404  # no features: not counted
        by_features = {"is_male": "False", "mother_age": "55", "plurality": "Single(1)", "gestation_weeks": "30"}
        assert client.get("/predict", params=by_features).json()["source"] == "online"
        batch = client.post("/predict", json={"keys": [OTHER, KEY, ABSENT]}).json()
        assert [item["source"] for item in batch["results"]] == ["online", "precomputed", "online"]
        expected = {encode_key(OFF): 3, encode_key(OTHER): 3}
        assert wait_for(lambda: backend.misses() == expected), backend.misses()
        # One more request is one more count, added to the store's by the next flush.
        client.get(f"/predict/{OFF}")
        assert wait_for(lambda: backend.misses().get(encode_key(OFF)) == 4)
        assert metric(client, 'precompute_misses_total{outcome="counted"}') == 7.0
        assert metric(client, 'precompute_misses_total{outcome="flushed"}') >= 3.0
        assert metric(client, 'precompute_misses_total{outcome="refused"}') == 0.0


def test_the_hot_cache_does_not_hide_repeated_misses(tmp_path: Path, formula_model: Path) -> None:
    config = sqlite_config(tmp_path, formula_model, misses_flush_seconds=60.0)  # flushed at shutdown only
    publish(config, {KEY: b'{"weight_pounds":7.31}'}, {"model": fingerprint(formula_model)})
    with TestClient(create_app(config)) as client:
        sources = [client.get(f"/predict/{OFF}").json()["source"] for _ in range(4)]
        assert sources == ["online"] * 4  # the body the cache keeps says how it was made
        assert metric(client, 'precompute_requests_total{source="cache",status="200"}') == 3.0
        assert open_backend(config.store_url).misses() == {}
    assert open_backend(config.store_url).misses() == {encode_key(OFF): 4}


def test_the_store_cap_refuses_new_keys_the_most_answered_first(tmp_path: Path, formula_model: Path) -> None:
    config = sqlite_config(tmp_path, formula_model, misses_flush_seconds=60.0, misses_max_keys=2)
    publish(config, {KEY: b'{"weight_pounds":7.31}'}, {"model": fingerprint(formula_model)})
    keys = [f"True:{age}:Single(1):39" for age in (51, 52, 53)]
    with TestClient(create_app(config)) as client:
        for key, times in zip(keys, (1, 3, 2), strict=True):
            for _ in range(times):
                assert client.get(f"/predict/{key}").status_code == 200
        flush(client)
        assert metric(client, 'precompute_misses_total{outcome="refused"}') == 1.0
        assert metric(client, 'precompute_misses_total{outcome="flushed"}') == 2.0
    assert open_backend(config.store_url).misses() == {encode_key(keys[1]): 3, encode_key(keys[2]): 2}


class Breakable(MemoryBackend):
    """The in-memory store, whose misses cannot be written while ``down`` is set."""

    down = False

    def increment_misses(self, counts: Mapping[bytes, int], cap: int) -> int:
        if self.down:
            raise StoreUnavailable("connection refused")
        return super().increment_misses(counts, cap)


def test_a_store_that_cannot_record_misses_breaks_no_lookup(formula_model: Path) -> None:
    config = memory_config(formula_model, fallback="on", record_misses=True, misses_flush_seconds=60.0, cache_bytes=0)
    publish(config, {KEY: b'{"weight_pounds":7.31}'}, {"model": fingerprint(formula_model)})
    store = Breakable(StoreURL.parse(config.store.url))
    store.down = True
    with TestClient(create_app(config, backend=store)) as client:
        for _ in range(2):
            assert client.get(f"/predict/{OFF}").json()["source"] == "online"
            flush(client)  # fails: the counts stay in memory
        assert client.get(f"/predict/{KEY}").json()["source"] == "precomputed"
        assert metric(client, "precompute_misses_flush_failures_total") == 2.0
        assert metric(client, "precompute_misses_pending") == 1.0
        assert store.misses() == {}
        store.down = False
        assert client.get(f"/predict/{OFF}").status_code == 200
        flush(client)
        assert store.misses() == {encode_key(OFF): 3}  # nothing lost while it was down
        assert metric(client, "precompute_misses_pending") == 0.0


def test_memory_holds_at_most_max_pending_keys_between_flushes() -> None:
    store = MemoryBackend(StoreURL.parse("memory://misses-bound"))
    metrics = Metrics()
    recorder = MissRecorder(lambda: store, metrics, flush_seconds=60.0, store_cap=100, max_pending=2)
    for key in ("a:1", "b:2", "a:1", "c:3", "d:4"):
        recorder.add(key)
    assert metrics.misses.labels("dropped")._value.get() == 2.0
    asyncio.run(recorder.flush())
    assert store.misses() == {b"a:1": 2, b"b:2": 1}
    recorder.add("c:3")  # room again after the flush
    asyncio.run(recorder.flush())
    assert store.misses()[b"c:3"] == 1


def test_nothing_is_recorded_unless_asked(tmp_path: Path, formula_model: Path) -> None:
    config = sqlite_config(tmp_path, formula_model, misses_flush_seconds=0.1)
    off = memory_config(formula_model, env={"PRECOMPUTE_STORE": config.store.url}, fallback="on")
    publish(off, {KEY: b'{"weight_pounds":7.31}'}, {"model": fingerprint(formula_model)})
    app = create_app(off)
    assert app.state.misses is None
    with TestClient(app) as client:
        assert client.get(f"/predict/{OFF}").json()["source"] == "online"
    assert open_backend(config.store_url).misses() == {}


def test_a_version_that_includes_misses_serves_them_in_every_mode(formula_model: Path) -> None:
    for fallback in ("off", "store-down", "on"):
        config = memory_config(formula_model, fallback=fallback)
        rows = {KEY: b'{"weight_pounds":7.31}', OFF: b'{"weight_pounds":8.5}'}
        version = publish(config, rows, {"model": fingerprint(formula_model), "misses_included": 1})
        with TestClient(create_app(config)) as client:
            body = client.get("/predict/True:51.0:Single(1):39").json()
            assert (body["key"], body["source"], body["model_version"]) == (OFF, "precomputed", version), fallback
            assert body["prediction"] == {"weight_pounds": 8.5}
            other = client.get(f"/predict/{OTHER}")
            assert other.status_code == (200 if fallback == "on" else 404), fallback
        # Without the mark, an off-grid key is never looked up in the store.
        plain = memory_config(formula_model, fallback=fallback)
        publish(plain, rows, {"model": fingerprint(formula_model)})
        with TestClient(create_app(plain)) as client:
            answer = client.get(f"/predict/{OFF}")
            assert (answer.status_code, answer.json().get("source")) == (
                (200, "online") if fallback == "on" else (404, None)
            ), fallback
