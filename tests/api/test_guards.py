"""Guard rails and operations: auth on and off, request limits, /metrics, the [serve] settings, graceful
shutdown of a real uvicorn server with a request in flight."""

from __future__ import annotations

import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from starlette.testclient import TestClient

from precompute.api import create_app
from precompute.api.auth import Tokens
from precompute.api.logs import JsonFormatter, Summary
from precompute.api.metrics import Metrics
from precompute.config import ConfigError, load_config
from tests.api.conftest import NAP, memory_config, publish, wait_for
from tests.precompute.conftest import EXAMPLE_CONFIG
from tests.servers import free_port

KEY = "True:25:Single(1):39"
ROW = {KEY: b'{"weight_pounds":7.31}'}


JSON = {"content-type": "application/json"}


def test_auth_off_needs_no_token() -> None:
    config = memory_config()
    publish(config, ROW)
    with TestClient(create_app(config)) as client:
        assert client.get(f"/predict/{KEY}").status_code == 200
        assert client.get("/metrics").status_code == 200


@pytest.mark.parametrize(
    ("scheme", "good", "bad"),
    [
        ("api-key", {"X-API-Key": "s3cret"}, {"X-API-Key": "s3cre"}),
        ("bearer", {"Authorization": "Bearer s3cret"}, {"Authorization": "Basic s3cret"}),
    ],
)
def test_auth_on_refuses_missing_and_wrong_tokens(scheme: str, good: dict[str, str], bad: dict[str, str]) -> None:
    config = memory_config(auth=scheme, auth_tokens=("other", "s3cret"))
    publish(config, ROW)
    with TestClient(create_app(config)) as client:
        assert client.get(f"/predict/{KEY}", headers=good).status_code == 200
        assert client.post("/predict", json={"keys": [KEY]}, headers=good).status_code == 200
        for headers in ({}, bad):
            refused = client.get(f"/predict/{KEY}", headers=headers)
            assert refused.status_code == 401
            assert "token" in refused.json()["error"]
            assert client.post("/predict", json={"keys": [KEY]}, headers=headers).status_code == 401
            assert client.get("/metrics", headers=headers).status_code == 401
        if scheme == "bearer":
            assert refused.headers["www-authenticate"].startswith("Bearer")
        assert client.get("/healthz").status_code == 200  # probes stay open
        assert client.get("/readyz").status_code == 200
        assert client.get("/openapi.json").json()["security"] == [{"token": []}]
        metrics = client.get("/metrics", headers=good).text
    assert "precompute_auth_failures_total 6" in metrics


def test_tokens_come_from_the_environment_and_never_show_in_reprs(tmp_path: Path) -> None:
    # Tokens no object address or path in a repr could contain by chance (a short one like "a1" can).
    env = {"PRECOMPUTE_STORE": "memory://x", "PRECOMPUTE_API_TOKENS": " token-first ,token-second,, "}
    text = EXAMPLE_CONFIG.read_text().replace("[serve]\n", '[serve]\nauth = "bearer"\n')
    config_file = tmp_path / "precompute.toml"
    config_file.write_text(text.replace('path = "model"', f'path = "{EXAMPLE_CONFIG.parent / "model"}"'))
    config = load_config(config_file, env=env)
    assert config.serve.auth_tokens == ("token-first", "token-second")
    assert "token-" not in repr(config)
    with pytest.raises(ConfigError, match="PRECOMPUTE_API_TOKENS"):
        load_config(config_file, env={"PRECOMPUTE_STORE": "memory://x"})


def test_token_comparison_checks_every_token() -> None:
    tokens = Tokens("api-key", ("first", "second"))
    assert tokens.accepts("second")
    assert tokens.accepts("first")
    assert not tokens.accepts("secon")
    assert not tokens.accepts("")
    assert not tokens.accepts(None)


def test_request_size_limits() -> None:
    config = memory_config(max_key_bytes=40, max_batch_keys=3, max_body_bytes=200)
    publish(config, ROW)
    with TestClient(create_app(config)) as client:
        assert client.get("/predict/" + "x" * 41).status_code == 414
        assert client.get("/predict/" + "é" * 21).status_code == 414  # 42 bytes in UTF-8
        assert client.post("/predict", json={"keys": [KEY] * 4}).status_code == 413
        big = client.post("/predict", content=b'{"keys": ["' + b"x" * 300 + b'"]}', headers=JSON)
        assert big.status_code == 413
        chunked = client.post("/predict", content=iter([b'{"keys": ["', b"x" * 300, b'"]}']), headers=JSON)  # no length
        assert chunked.status_code == 413
        assert client.post("/predict", json=[KEY]).status_code == 400
        assert client.post("/predict", content=b"\xff\xfe", headers=JSON).status_code == 400
        assert client.post("/predict", json={"keys": [KEY]}).status_code == 200


def test_deeply_nested_json_is_a_400_not_a_crash() -> None:
    config = memory_config(max_body_bytes=10_000_000)
    publish(config, ROW)
    with TestClient(create_app(config)) as client:
        response = client.post("/predict", content=b"[" * 1_000_000 + b"]" * 1_000_000, headers=JSON)
    assert response.status_code == 400


@pytest.mark.parametrize(
    ("serve", "env", "message"),
    [
        ('fallback = "maybe"', {}, r"\[serve\] fallback: 'maybe' is not one of"),
        ("", {"PRECOMPUTE_FALLBACK": "yes"}, "environment variable PRECOMPUTE_FALLBACK"),
        ("deadline_ms = 100\nbatch_target_ms = 100", {}, "batch_target_ms: 100.0 must be below deadline_ms"),
        ("deadline_ms = -1", {}, r"deadline_ms: must be positive"),
        ("cache_bytes = -1", {}, r"cache_bytes: must be 0 or more"),
        ('deadline_default = { weight_pounds = "heavy" }', {}, "deadline_default: expected a table"),
        ("max_key_bytes = 5000", {}, "above the store's limit"),
        ('batch_policy = "magic"', {}, r"batch_policy: 'magic' is not one of"),
        ("write_bak = true", {}, "did you mean `write_back`"),
    ],
)
def test_bad_serve_settings_name_the_field(tmp_path: Path, serve: str, env: dict[str, str], message: str) -> None:
    text = EXAMPLE_CONFIG.read_text().replace("[serve]\n", f"[serve]\n{serve}\n")
    text = text.replace('path = "model"', f'path = "{EXAMPLE_CONFIG.parent / "model"}"')
    (tmp_path / "precompute.toml").write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_config(tmp_path / "precompute.toml", env=env)


def test_environment_overrides_the_fallback_mode_of_the_file(tmp_path: Path) -> None:
    text = EXAMPLE_CONFIG.read_text().replace("[serve]\n", '[serve]\nfallback = "store-down"\n')
    (tmp_path / "precompute.toml").write_text(text)
    assert load_config(tmp_path / "precompute.toml", env={}).serve.fallback == "store-down"
    for mode in ("off", "on", "store-down"):
        assert load_config(tmp_path / "precompute.toml", env={"PRECOMPUTE_FALLBACK": mode}).serve.fallback == mode


def test_metrics_are_prometheus_text_and_off_means_off() -> None:
    config = memory_config()
    version = publish(config, ROW)
    with TestClient(create_app(config)) as client:
        client.get(f"/predict/{KEY}")
        client.get("/predict/nope")
        response = client.get("/metrics")
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    text = response.text
    assert 'precompute_requests_total{source="precomputed",status="200"} 1' in text
    assert 'precompute_requests_total{source="none",status="400"} 1' in text
    assert 'precompute_request_seconds_bucket{le="+Inf"} 2' in text
    assert "precompute_store_read_seconds_count 1" in text
    assert f'precompute_live_version_info{{version="{version}"}} 1' in text
    for line in text.splitlines():  # every sample line is `name{labels} number`
        if not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            float(value)
            assert name.startswith("precompute_")
    off = memory_config(metrics=False)
    publish(off, ROW)
    with TestClient(create_app(off)) as client:
        assert client.get(f"/predict/{KEY}").status_code == 200
        assert client.get("/metrics").status_code == 404


def test_histogram_buckets_are_cumulative_with_le_inclusive() -> None:
    metrics = Metrics()
    for value in (0.0001, 0.0003, 0.001, 3.0):
        metrics.request_seconds.observe(value)
    lines = metrics.render().decode().splitlines()
    assert 'precompute_request_seconds_bucket{le="0.0001"} 1.0' in lines
    assert 'precompute_request_seconds_bucket{le="0.001"} 3.0' in lines
    assert 'precompute_request_seconds_bucket{le="2.5"} 3.0' in lines
    assert 'precompute_request_seconds_bucket{le="+Inf"} 4.0' in lines
    assert "precompute_request_seconds_count 4.0" in lines


def test_every_app_counts_in_its_own_registry_and_exports_no_created_series() -> None:
    first, second = Metrics(), Metrics()
    first.request("cache", 200, 0.001)
    first.writeback("written", 3)
    assert first.value("precompute_requests_total", source="cache", status="200") == 1
    assert second.value("precompute_requests_total", source="cache", status="200") == 0
    text = first.render().decode()
    assert 'precompute_writeback_total{outcome="written"} 3.0' in text
    assert 'precompute_writeback_total{outcome="failed"} 0.0' in text  # exported before the first failure
    assert "_created" not in text


def test_the_summary_log_line_is_structured_and_silent_when_idle() -> None:
    import json
    import logging

    metrics = Metrics()
    summary = Summary(metrics, None)
    assert summary.line() is None
    metrics.request("cache", 200, 0.001)
    metrics.request("online", 503, 0.2)
    metrics.late_answer("deadline")
    fields = summary.line()
    assert fields is not None
    assert fields["requests"] == 2
    assert fields["by_source_status"] == {"cache:200": 1, "online:503": 1}
    assert fields["late"] == 1
    assert summary.line() is None
    record = logging.LogRecord("precompute.api", logging.INFO, __file__, 1, "hello %s", ("x",), None)
    record.fields = {"version": "v1"}
    assert json.loads(JsonFormatter().format(record)) | {"ts": 0} == {
        "ts": 0,
        "level": "info",
        "logger": "precompute.api",
        "msg": "hello x",
        "version": "v1",
    }


def test_graceful_shutdown_finishes_the_request_in_flight(slow_model: Path) -> None:
    config = memory_config(slow_model, fallback="on", deadline_ms=5000, batch_target_ms=1000)
    publish(config, ROW)
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(create_app(config), host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    )
    thread = threading.Thread(target=server.run)
    thread.start()
    try:
        assert wait_for(lambda: server.started, timeout=60)
        answers: list[tuple[int, bytes]] = []

        def ask() -> None:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/predict/True:51:Single(1):39", timeout=10) as r:
                answers.append((r.status, r.read()))

        NAP["seconds"] = 0.5
        request = threading.Thread(target=ask)
        request.start()
        time.sleep(0.15)  # the request is waiting for the model
        server.should_exit = True  # what SIGTERM does
        request.join(timeout=10)
        thread.join(timeout=10)
    finally:
        NAP["seconds"] = 0.0
        server.should_exit = True
        thread.join(timeout=10)
    assert not thread.is_alive()
    assert answers
    assert answers[0][0] == 200
    assert b'"source":"online"' in answers[0][1]
    with pytest.raises(urllib.error.URLError):  # and the server is gone
        urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2)


@pytest.mark.parametrize(
    ("request_args", "status", "message"),
    [
        (
            {"url": "/predict?is_male=True&mother_age=25&mother_age=30&plurality=Single(1)&gestation_weeks=39"},
            400,
            "given more than once: mother_age",
        ),
        ({"url": "/predict/True:2_5:Single(1):39"}, 400, "not a number"),
        ({"url": "/predict/True:%EF%BC%92%EF%BC%95:Single(1):39"}, 400, "not a number"),  # full-width 25
        ({"url": "/predict/True:%2025%20:Single(1):39"}, 400, "not a number"),  # spaces around 25
        (
            {"url": "/predict?is_male=True&mother_age=25%0A&plurality=Single(1)&gestation_weeks=39"},
            400,
            "not a number",
        ),  # a trailing newline
        (
            {"url": "/predict", "method": "POST", "content": b'{"keys": ["True:25:Single(1):39"]}'},
            415,
            "Content-Type: application/json",
        ),
        (
            {
                "url": "/predict",
                "method": "POST",
                "json": {
                    "features": [
                        {"is_male": "True", "mother_age": True, "plurality": "Single(1)", "gestation_weeks": 39}
                    ]
                },
            },
            200,
            "is not a number",
        ),  # reported per item in the batch answer
    ],
    ids=["duplicate-query", "underscore", "full-width", "spaces", "newline", "not-json-type", "json-boolean"],
)
def test_ambiguous_input_is_refused_not_guessed(request_args: dict[str, Any], status: int, message: str) -> None:
    config = memory_config()
    publish(config, ROW)
    args = dict(request_args)
    with TestClient(create_app(config)) as client:
        response = client.request(args.pop("method", "GET"), args.pop("url"), **args)
    assert response.status_code == status, response.text
    assert message in response.text
