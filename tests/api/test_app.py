"""The API in-process, over the in-memory reference backend (no model needed: rows are written directly)."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator

import pytest
from starlette.testclient import TestClient

from precompute.adapters import open_backend
from precompute.api import create_app
from precompute.config import Config, load_config
from precompute.store import Versions
from precompute.store.codec import encode_key
from tests.api.conftest import FailingReader
from tests.precompute.conftest import EXAMPLE_CONFIG

KEY = "True:25:Single(1):39"


@pytest.fixture
def config() -> Config:
    return load_config(EXAMPLE_CONFIG, env={"PRECOMPUTE_STORE": f"memory://api-{uuid.uuid4().hex}"})


def publish(config: Config, rows: dict[str, bytes]) -> str:
    versions = Versions(open_backend(config.store_url))
    record = versions.begin()
    versions.backend.write(record.version, [(encode_key(k), v) for k, v in rows.items()])
    versions.mark_ready(record, len(rows))
    versions.publish(record)
    return record.version


@pytest.fixture
def client(config: Config) -> Iterator[TestClient]:
    with TestClient(create_app(config)) as c:
        yield c


def test_a_hit_returns_the_stored_prediction(config: Config) -> None:
    version = publish(config, {KEY: b'{"weight_pounds":7.31}'})
    with TestClient(create_app(config)) as client:
        response = client.get(f"/predict/{KEY}")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.json() == {
        "key": KEY,
        "prediction": {"weight_pounds": 7.31},
        "source": "precomputed",
        "model_version": version,
    }


def test_non_canonical_keys_are_canonicalized(config: Config) -> None:
    publish(config, {KEY: b'{"weight_pounds":7.31}'})
    with TestClient(create_app(config)) as client:
        response = client.get("/predict/True:25.0:Single(1):39.00")
    assert response.status_code == 200
    assert response.json()["key"] == KEY


@pytest.mark.parametrize(
    ("key", "status", "fragment"),
    [
        ("True:25:Single(1)", 400, "does not match the template"),
        ("True:old:Single(1):39", 400, "not a number"),
        ("Maybe:25:Single(1):39", 404, "not one of"),
        ("True:51:Single(1):39", 404, "outside the precomputed space"),
        ("False:30:Twins(2):40", 404, "not in version"),
    ],
)
def test_errors_have_the_right_status_and_a_message(config: Config, key: str, status: int, fragment: str) -> None:
    publish(config, {KEY: b'{"weight_pounds":7.31}'})
    with TestClient(create_app(config)) as client:
        response = client.get(f"/predict/{key}")
    assert response.status_code == status
    assert fragment in response.json()["error"]


def test_lookup_by_raw_features_snaps_to_the_grid(config: Config) -> None:
    publish(config, {KEY: b'{"weight_pounds":7.31}'})
    with TestClient(create_app(config)) as client:
        ok = client.get(
            "/predict",
            params={"is_male": "True", "mother_age": "25.4", "plurality": "Single(1)", "gestation_weeks": "38.7"},
        )
        missing = client.get("/predict", params={"is_male": "True"})
    assert ok.status_code == 200
    assert ok.json()["key"] == KEY
    assert missing.status_code == 400


def test_batch_lookup_answers_in_input_order_from_one_version(config: Config) -> None:
    version = publish(config, {KEY: b'{"weight_pounds":7.31}', "False:30:Twins(2):36": b'{"weight_pounds":5.5}'})
    body = {"keys": ["False:30:Twins(2):36", "bad", KEY, "False:31:Twins(2):36"]}
    with TestClient(create_app(config)) as client:
        response = client.post("/predict", json=body)
        by_features = client.post(
            "/predict",
            json={"features": [{"is_male": "True", "mother_age": 25, "plurality": "Single(1)", "gestation_weeks": 39}]},
        )
        too_many = client.post("/predict", json={"keys": [KEY] * 1001})
        not_json = client.post("/predict", content=b"{nope", headers={"content-type": "application/json"})
    assert response.status_code == 200
    data = response.json()
    assert data["model_version"] == version
    results = data["results"]
    assert [r["status"] for r in results] == [200, 400, 200, 404]
    assert results[0]["prediction"] == {"weight_pounds": 5.5}
    assert results[2]["key"] == KEY
    assert by_features.json()["results"][0]["prediction"] == {"weight_pounds": 7.31}
    assert too_many.status_code == 413
    assert not_json.status_code == 400


def test_batch_items_splice_the_stored_bytes_as_a_single_lookup_does(config: Config) -> None:
    """Each hit's prediction is the stored value as it is (what GET /predict/{key} answers), not decoded and
    encoded again (which wrote 5.5e-05 and escaped the e-acute); everything around it is what json.dumps
    writes, errors per key included."""
    stored = b'{"weight_pounds":5.5e-5,"unit":"lb\xc3\xa9"}'
    version = publish(config, {KEY: stored})
    keys = [KEY, "True:25.0:Single(1):39", "bad", "False:31:Twins(2):36", 5, KEY]
    with TestClient(create_app(config)) as client:
        single = client.get(f"/predict/{KEY}")
        response = client.post("/predict", json={"keys": keys})
    assert b'"prediction":' + stored + b',"source":"precomputed"' in single.content
    hit = b'{"key": "True:25:Single(1):39", "prediction": ' + stored + b', "source": "precomputed", "status": 200}'
    template = "{is_male}:{mother_age}:{plurality}:{gestation_weeks}"
    errors = [
        {"key": "bad", "error": f"key 'bad' does not match the template '{template}'", "status": 400},
        {"key": "False:31:Twins(2):36", "error": f"key is not in version {version}", "status": 404},
        {"key": None, "error": "a key must be a string, got 5", "status": 400},
    ]
    items = [hit, hit, *(json.dumps(error).encode() for error in errors), hit]
    assert response.content == b'{"model_version": "%s", "results": [%s]}' % (version.encode(), b", ".join(items))
    assert response.json()["results"][0]["prediction"] == {"weight_pounds": 5.5e-5, "unit": "lb\u00e9"}


def test_readyz_reports_nothing_published_then_ready(config: Config) -> None:
    with TestClient(create_app(config)) as client:
        assert client.get("/healthz").status_code == 200
        not_ready = client.get("/readyz")
        assert not_ready.status_code == 503
        assert "nothing is published" in not_ready.json()["error"]
        assert client.get(f"/predict/{KEY}").status_code == 503


def test_a_new_version_is_served_without_restart(config: Config) -> None:
    first = publish(config, {KEY: b'{"weight_pounds":7.31}'})
    fast = load_config(EXAMPLE_CONFIG, env={"PRECOMPUTE_STORE": config.store.url})
    object.__setattr__(fast.serve, "refresh_seconds", 0.05)
    with TestClient(create_app(fast)) as client:
        assert client.get(f"/predict/{KEY}").json()["model_version"] == first
        second = publish(config, {KEY: b'{"weight_pounds":8.0}'})
        deadline = time.monotonic() + 5
        while client.get("/readyz").json()["model_version"] != second and time.monotonic() < deadline:
            time.sleep(0.02)
        answer = client.get(f"/predict/{KEY}").json()
    assert answer["model_version"] == second
    assert answer["prediction"] == {"weight_pounds": 8.0}


def test_store_failure_is_503_and_recovers(config: Config) -> None:
    from precompute.adapters import open_reader

    other = "False:30:Twins(2):36"
    publish(config, {KEY: b'{"weight_pounds":7.31}', other: b'{"weight_pounds":5.5}'})
    reader = FailingReader(open_reader(config.store_url))
    with TestClient(create_app(config, reader=reader)) as client:
        assert client.get(f"/predict/{KEY}").status_code == 200
        reader.down = True
        down = client.get(f"/predict/{other}")
        assert down.status_code == 503
        assert "store unavailable" in down.json()["error"]
        # A key already in the hot-key cache is still answered while the store is down.
        assert client.get(f"/predict/{KEY}").json()["prediction"] == {"weight_pounds": 7.31}
        reader.down = False
        assert client.get(f"/predict/{other}").status_code == 200
