"""Several models in one API: each job config a model, named, with its own store, answering under
``/models/<name>/``; ``GET /models``, ``/readyz`` and ``/metrics`` over all of them; the command line with
``--config`` repeated and with a serve file. Stores are SQLite files written through the store API."""

from __future__ import annotations

import http.client
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from precompute.adapters import open_backend, open_reader
from precompute.api import create_app
from precompute.api.app import create_served_app
from precompute.config import ConfigError, load_config
from precompute.served import Served, load_served
from precompute.store import Versions
from precompute.store.codec import encode_key
from tests.api.conftest import FailingReader, wait_for
from tests.precompute.conftest import EXAMPLE, EXAMPLE_CONFIG
from tests.servers import free_port, stop
from tests.store.helpers import published

KEY = "True:25:Single(1):39"
OTHER = "False:30:Twins(2):36"


def job(folder: Path, stem: str, store: Path | None = None, *, name: str | None = None, serve: str = "") -> Path:
    """The example job config as ``folder/stem.toml``, on its own SQLite store (``stem.db`` unless given),
    with ``[model] name`` and ``[serve]`` lines added when given."""
    text = EXAMPLE_CONFIG.read_text()
    text = text.replace('path = "model"', f'path = "{EXAMPLE / "model"}"', 1)
    if name is not None:
        text = text.replace("[model]\n", f'[model]\nname = "{name}"\n', 1)
    text = text.replace('url = "sqlite:///var/babyweight.db"', f'url = "sqlite:///{store or folder / f"{stem}.db"}"')
    text = text.replace("refresh_seconds = 1.0", "refresh_seconds = 0.05")
    for line in serve.splitlines():  # replacing the example's own line for a field it sets
        text, replaced = re.subn(rf"^{line.split('=')[0].strip()} = .*$", line, text, flags=re.MULTILINE)
        if not replaced:
            text = text.replace("[serve]\n", f"[serve]\n{line}\n", 1)
    path = folder / f"{stem}.toml"
    path.write_text(text)
    return path


def publish(config: Path, weight: float, keys: tuple[str, ...] = (KEY, OTHER)) -> str:
    """A version of ``config``'s store answering ``weight`` for every key; its id."""
    url = load_config(config, env={}).store_url
    rows = [(encode_key(key), json.dumps({"weight_pounds": weight}).encode()) for key in keys]
    return published(Versions(open_backend(url)), rows)


@pytest.fixture
def two(tmp_path: Path) -> tuple[Path, Path, str, str]:
    """Two job configs, ``a`` (by its file name) and ``b`` (by ``[model] name``), each with a version."""
    a, b = job(tmp_path, "a"), job(tmp_path, "second", name="b")
    return a, b, publish(a, 1.0), publish(b, 2.0)


def test_two_models_answer_by_name_each_from_its_own_store(two: tuple[Path, Path, str, str]) -> None:
    a, b, va, vb = two
    served = load_served([a, b], env={})
    assert served.names == ["a", "b"]
    with TestClient(create_served_app(served)) as client:
        one = client.get(f"/models/a/predict/{KEY}").json()
        assert one == {"key": KEY, "prediction": {"weight_pounds": 1.0}, "source": "precomputed", "model_version": va}
        other = client.get(f"/models/b/predict/{KEY}").json()
        assert (other["prediction"], other["model_version"]) == ({"weight_pounds": 2.0}, vb)
        query = {"is_male": "False", "mother_age": "30", "plurality": "Twins(2)", "gestation_weeks": "36"}
        assert client.get("/models/b/predict", params=query).json()["key"] == OTHER
        batch = client.post("/models/a/predict", json={"keys": [KEY, OTHER]}).json()
        assert batch["model_version"] == va
        assert [r["prediction"] for r in batch["results"]] == [{"weight_pounds": 1.0}] * 2

        unknown = client.get(f"/models/c/predict/{KEY}")
        assert unknown.status_code == 404
        assert unknown.json()["models"] == ["a", "b"]
        assert "no model named 'c'" in unknown.json()["error"]
        assert client.delete(f"/models/a/predict/{KEY}").status_code == 405
        default = client.get(f"/predict/{KEY}")  # which model is meant cannot be guessed
        assert default.status_code == 404
        assert "/models/a/predict" in default.json()["error"]

        listed = {m["name"]: m for m in client.get("/models").json()["models"]}
        assert list(listed) == ["a", "b"]
        assert (listed["a"]["live_version"], listed["b"]["live_version"]) == (va, vb)
        assert listed["b"]["store"].endswith("second.db")
        assert listed["a"]["store"].endswith("a.db")
        assert listed["a"]["space"] == {
            "type": "grid",
            "size": 3 * 39 * 6 * 31,
            "key_template": "{is_male}:{mother_age}:{plurality}:{gestation_weeks}",
            "features": ["is_male", "mother_age", "plurality", "gestation_weeks"],
        }
        assert listed["a"]["fallback"] == "off"
        assert listed["a"]["ready"] is True

        ready = client.get("/readyz")
        assert ready.status_code == 200
        assert {name: state["model_version"] for name, state in ready.json()["models"].items()} == {"a": va, "b": vb}

        text = client.get("/metrics").text
        assert 'precompute_requests_total{model="a",source="precomputed",status="200"} 1.0' in text
        assert 'precompute_requests_total{model="a",source="batch",status="200"} 1.0' in text
        assert 'precompute_requests_total{model="b",source="precomputed",status="200"} 2.0' in text
        assert 'precompute_requests_total{model="b",source="none",status="404"}' not in text
        assert f'precompute_live_version_info{{model="a",version="{va}"}} 1.0' in text
        assert f'precompute_live_version_info{{model="b",version="{vb}"}} 1.0' in text
        assert 'precompute_request_seconds_count{model="a"} 2.0' in text  # GET + POST
        assert 'precompute_cache_misses_total{model="b"}' in text
        assert text.count("# TYPE precompute_ready gauge") == 1  # one family, a sample per model


def test_readiness_waits_for_every_model_and_one_store_down_leaves_the_other_answering(tmp_path: Path) -> None:
    a, b = job(tmp_path, "a"), job(tmp_path, "b")
    vb = publish(b, 2.0)
    reader = FailingReader(open_reader(load_config(b, env={}).store_url))
    with TestClient(create_served_app(load_served([a, b], env={}), readers={"b": reader})) as client:
        waiting = client.get("/readyz")
        assert waiting.status_code == 503  # a has nothing published yet
        assert waiting.json()["error"].startswith(f"model a: no SQLite store at {tmp_path / 'a.db'}")
        assert waiting.json()["models"]["b"]["ready"] is True
        assert client.get(f"/models/b/predict/{KEY}").status_code == 200

        va = publish(a, 1.0)
        assert wait_for(lambda: client.get("/readyz").status_code == 200)
        assert client.get(f"/models/a/predict/{KEY}").json()["model_version"] == va

        reader.down = True
        assert wait_for(lambda: client.get("/readyz").status_code == 503)
        state = client.get("/readyz").json()
        assert state["error"].startswith("model b: ")
        assert "connection refused" in state["error"]
        assert state["models"]["a"]["ready"] is True
        assert client.get(f"/models/a/predict/{OTHER}").json()["prediction"] == {"weight_pounds": 1.0}
        down = client.get(f"/models/b/predict/{OTHER}")
        assert down.status_code == 503
        assert "store unavailable" in down.json()["error"]
        text = client.get("/metrics").text
        assert 'precompute_store_up{model="a"} 1.0' in text
        assert 'precompute_store_up{model="b"} 0.0' in text
        assert 'precompute_ready{model="a"} 1.0' in text
        assert 'precompute_ready{model="b"} 0.0' in text
        assert client.get("/models").json()["models"][1]["live_version"] == vb  # still the one it served


def test_one_config_keeps_its_routes_and_metrics_and_is_also_under_models(tmp_path: Path) -> None:
    config = load_config(job(tmp_path, "babyweight"), env={})
    version = publish(config.source, 3.0)
    with TestClient(create_app(config)) as client:
        assert client.get(f"/predict/{KEY}").json()["model_version"] == version
        assert client.get(f"/models/babyweight/predict/{KEY}").json()["model_version"] == version
        assert client.get("/models").json()["models"][0]["name"] == "babyweight"
        assert client.get(f"/models/other/predict/{KEY}").json()["models"] == ["babyweight"]
        ready = client.get("/readyz").json()
        assert "models" not in ready
        assert ready["model_version"] == version
        text = client.get("/metrics").text
        assert 'precompute_requests_total{source="precomputed",status="200"} 1.0' in text  # no model label
        assert 'precompute_requests_total{source="cache",status="200"} 1.0' in text
        assert "model=" not in text


def test_the_description_has_each_model_under_its_name(two: tuple[Path, Path, str, str]) -> None:
    a, b, _, _ = two
    with TestClient(create_served_app(load_served([a, b], env={}))) as client:
        paths = client.get("/openapi.json").json()["paths"]
    assert "/predict" not in paths
    assert "/predict/{key}" not in paths
    for name in ("a", "b"):
        assert set(paths[f"/models/{name}/predict"]) == {"get", "post"}
        key = paths[f"/models/{name}/predict/{{key}}"]["get"]["parameters"][0]["schema"]
        assert key["pattern"].startswith("^(True|False|Unknown)")
    assert {"/models", "/readyz", "/healthz", "/metrics"} <= set(paths)


# -- what is refused ------------------------------------------------------------------------------------


def test_two_models_of_one_name_are_refused_naming_both_files(tmp_path: Path) -> None:
    a, b = job(tmp_path, "a", name="same"), job(tmp_path, "b", name="same")
    with pytest.raises(ConfigError, match=r"two models are named 'same': .*a\.toml and .*b\.toml\. Fix: give one"):
        load_served([a, b], env={})
    with pytest.raises(ConfigError, match=r"a\.toml is listed twice"):
        load_served([a, a], env={})
    with pytest.raises(ConfigError, match="no job config to serve"):
        load_served([], env={})


def test_a_process_setting_that_differs_is_refused_naming_both_files(tmp_path: Path) -> None:
    a, b = job(tmp_path, "a"), job(tmp_path, "b", serve="workers = 2")
    with pytest.raises(ConfigError) as caught:
        load_served([a, b], env={})
    message = str(caught.value)
    assert message.startswith(f"[serve] workers is 2 in {b} but 1 in {a} (the first config)")
    assert f"Fix: remove it from {b}" in message
    # Per-model settings may differ, and a process setting only the first config writes is no conflict.
    c = job(tmp_path, "c", serve="deadline_ms = 50.0\nmax_batch_keys = 10")
    served = load_served([job(tmp_path, "d", serve="access_log = true"), c], env={})
    assert [m.serve.max_batch_keys for m in served.models] == [1_000, 10]
    assert [m.serve.access_log for m in served.models] == [True, True]  # the process's value, copied


def test_a_model_name_must_be_url_safe_and_one_store_override_is_refused(tmp_path: Path) -> None:
    with pytest.raises(
        ConfigError, match=r"\[model\] name: 'has space' is not URL-safe: .* Fix: `name = \"has-space\"`"
    ):
        load_config(job(tmp_path, "a", name="has space"), env={})
    assert load_config(job(tmp_path, "job config"), env={}).name == "job-config"  # a file name, made safe
    with pytest.raises(ConfigError, match="PRECOMPUTE_STORE is set, and would point all 2 models at one store"):
        load_served([job(tmp_path, "x"), job(tmp_path, "y")], env={"PRECOMPUTE_STORE": "memory://one"})


def test_a_serve_file_lists_configs_relative_to_itself_and_holds_only_process_settings(tmp_path: Path) -> None:
    (tmp_path / "jobs").mkdir()
    job(tmp_path / "jobs", "a", serve="port = 9000")
    job(tmp_path / "jobs", "b", serve="port = 9001")
    serve_file = tmp_path / "serve.toml"
    serve_file.write_text('models = ["jobs/a.toml", "jobs/b.toml"]\n[serve]\nport = 9001\n')
    with pytest.raises(ConfigError, match=r"\[serve\] port is 9000 in .*a\.toml but 9001 in serve file"):
        load_served([], serve_file, env={})
    serve_file.write_text('models = ["jobs/b.toml"]\n[serve]\nport = 9001\naccess_log = true\n')
    served = load_served([], serve_file, env={})
    assert (served.serve.port, served.serve.access_log, served.names) == (9001, True, ["b"])
    assert served.models[0].serve.access_log is True  # the serve file's, copied into the model's

    serve_file.write_text('models = ["jobs/b.toml"]\n[serve]\ndeadline_ms = 10.0\n')
    with pytest.raises(ConfigError, match=r"serve\.deadline_ms: Extra inputs .* set per-model fields in each job"):
        load_served([], serve_file, env={})
    with pytest.raises(ConfigError, match=r"serve file .*nowhere\.toml does not exist"):
        load_served([], tmp_path / "nowhere.toml", env={})
    serve_file.write_text('models = ["jobs/none.toml"]\n')
    with pytest.raises(ConfigError, match=r"none\.toml does not exist"):
        load_served([], serve_file, env={})


# -- the command line -----------------------------------------------------------------------------------


@contextmanager
def serving(tmp_path: Path, *args: str) -> Iterator[int]:
    port = free_port()
    log = tmp_path / "serve.log"
    env = {k: v for k, v in os.environ.items() if k != "PRECOMPUTE_STORE"}
    cmd = [sys.executable, "-m", "precompute.cli", "serve", *args, "--port", str(port)]
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:

        def ready() -> bool:
            assert proc.poll() is None, log.read_text()[-3000:]
            try:
                return request(port, "/readyz")[0] == 200
            except OSError:
                return False

        assert wait_for(ready, timeout=30), log.read_text()[-3000:]
        yield port
    finally:
        stop(proc, timeout=20)


def request(port: int, path: str) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def test_serve_with_the_config_given_twice(two: tuple[Path, Path, str, str], tmp_path: Path) -> None:
    a, b, va, vb = two
    with serving(tmp_path, "--config", str(a), "--config", str(b)) as port:
        for name, version in (("a", va), ("b", vb)):
            status, body = request(port, f"/models/{name}/predict/{KEY}")
            assert (status, json.loads(body)["model_version"]) == (200, version)
        assert [m["name"] for m in json.loads(request(port, "/models")[1])["models"]] == ["a", "b"]


def test_serve_with_a_serve_file_and_two_workers_adds_up_per_model(
    two: tuple[Path, Path, str, str], tmp_path: Path
) -> None:
    a, b, _, _ = two
    serve_file = tmp_path / "serve.toml"
    serve_file.write_text(f'models = ["{a.name}", "{b.name}"]\n[serve]\nworkers = 2\n')
    with serving(tmp_path, "--serve-file", str(serve_file)) as port:
        for _ in range(10):
            assert request(port, f"/models/a/predict/{KEY}")[0] == 200
        assert request(port, f"/models/b/predict/{OTHER}")[0] == 200

        def counted() -> bool:
            text = request(port, "/metrics")[1].decode()
            answered = {"a": 0.0, "b": 0.0}  # from the store or a worker's cache
            for line in text.splitlines():
                if line.startswith("precompute_requests_total{"):
                    answered[line.split('model="')[1].split('"')[0]] += float(line.rsplit(" ", 1)[1])
            return (
                answered == {"a": 10.0, "b": 1.0}
                and 'precompute_ready{model="a"} 1.0' in text
                and 'precompute_ready{model="b"} 1.0' in text
            )

        assert wait_for(counted, timeout=5), request(port, "/metrics")[1].decode()
        state = json.loads(request(port, "/readyz")[1])
        assert state["workers"]["ready"] == 2
        assert set(state["models"]) == {"a", "b"}


def test_served_from_env_reads_the_same_models(two: tuple[Path, Path, str, str]) -> None:
    from precompute.served import from_env

    a, b, _, _ = two
    served = load_served([a, b], env={})
    again = from_env(served.to_env(), env={})
    assert again.names == served.names
    assert again.serve == served.serve
    assert from_env(str(a), env={}).names == ["a"]  # a plain path: one config, as before
    assert Served.single(load_config(a, env={})).several is False


def test_the_serve_file_has_a_schema(capsys: pytest.CaptureFixture[str]) -> None:
    from precompute.cli import main

    assert main(["schema", "--serve-file"]) == 0
    schema = json.loads(capsys.readouterr().out)
    assert schema["required"] == ["models"]
    assert set(schema["$defs"]["ProcessServeSection"]["properties"]) == {
        "host",
        "port",
        "workers",
        "access_log",
        "loop",
        "log_format",
        "auth",
        "auth_tokens_env",
        "shutdown_seconds",
        "metrics",
    }


def test_each_models_summary_log_line_counts_its_own_requests() -> None:
    from precompute.api.logs import Summary
    from precompute.api.metrics import Instruments, Metrics

    shared = Instruments(labelled=True)
    a, b = Metrics(shared=shared, model="a"), Metrics(shared=shared, model="b")
    a.request("cache", 200, 0.001)
    a.late_answer("deadline")
    b.request("online", 503, 0.2)
    line = Summary(a, None).line()
    assert line is not None
    assert (line["model"], line["requests"], line["by_source_status"], line["late"]) == ("a", 1, {"cache:200": 1}, 1)
    assert b.value("precompute_requests_total", source="online", status="503") == 1
    assert b.value("precompute_requests_total", source="cache", status="200") == 0


def test_serve_takes_configs_or_a_serve_file_not_both(capsys: pytest.CaptureFixture[str]) -> None:
    from precompute.cli import main

    for args in (["serve"], ["serve", "--config", "a.toml", "--serve-file", "s.toml"]):
        with pytest.raises(SystemExit) as caught:
            main(args)
        assert caught.value.code == 2
    assert "argument --serve-file: not allowed with argument --config/-c" in capsys.readouterr().err
