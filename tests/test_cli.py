"""The command line as a user (or a scheduler) runs it: real processes, real Ray, real TensorFlow."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.precompute.conftest import EXAMPLE_CONFIG
from tests.servers import free_port, wait_for_port
from tests.servers.redis import RedisProcess

pytestmark = pytest.mark.ray
CLI = [sys.executable, "-m", "precompute.cli"]


def cli(*args: str, store: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PRECOMPUTE_STORE": store}
    return subprocess.run([*CLI, *args], env=env, capture_output=True, text=True, timeout=timeout)


def versions(store: str) -> list[dict[str, object]]:
    result = cli("versions", "--config", str(EXAMPLE_CONFIG), "--json", store=store)
    assert result.returncode == 0, result.stderr
    rows: list[dict[str, object]] = json.loads(result.stdout)
    return rows


def get(port: int, path: str) -> tuple[int, dict[str, object]]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_run_serve_interrupt_rollback(tmp_path: Path) -> None:
    store = f"sqlite:///{tmp_path}/store.db"
    summary_file = tmp_path / "summary.json"

    done = cli("run", "--config", str(EXAMPLE_CONFIG), "--summary-json", str(summary_file), store=store)
    assert done.returncode == 0, done.stderr
    assert "published version" in done.stdout
    summary = json.loads(summary_file.read_text())
    assert summary["rows"] == 21_762
    first = summary["version"]

    # An interrupted run (SIGTERM, as a CronJob deadline sends) leaves the live version alone and cleans up.
    env = {**os.environ, "PRECOMPUTE_STORE": store}
    proc = subprocess.Popen([*CLI, "run", "--config", str(EXAMPLE_CONFIG)], env=env, stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    for line in proc.stderr:
        if "[score]" in line and "actor(s)" in line:  # Ray is up and scoring has started
            break
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=120)  # drains stderr, so a chatty shutdown cannot block on a full pipe
    assert proc.returncode == 143
    listed = versions(store)
    live = [v["version"] for v in listed if v["live"]]
    assert live == [first]
    assert [v["state"] for v in listed if v["version"] != first] in ([], ["failed"])

    port = free_port()
    server = subprocess.Popen(
        [*CLI, "serve", "--config", str(EXAMPLE_CONFIG), "--port", str(port)], env=env, stderr=subprocess.DEVNULL
    )
    try:
        wait_for_port(port, server)  # type: ignore[arg-type]
        deadline = time.monotonic() + 10
        while get(port, "/readyz")[0] != 200 and time.monotonic() < deadline:
            time.sleep(0.1)
        status, body = get(port, "/predict/True:25:Single(1):39")
        assert status == 200
        assert body["model_version"] == first
        assert body["source"] == "precomputed"
        assert isinstance(body["prediction"], dict)
        assert 5.0 < float(body["prediction"]["weight_pounds"]) < 10.0  # type: ignore[arg-type]
        assert get(port, "/predict/True:25:Single(1)")[0] == 400
        assert get(port, "/predict/True:25:Single(1):99")[0] == 404

        second = cli("run", "--config", str(EXAMPLE_CONFIG), "--quiet", store=store)
        assert second.returncode == 0, second.stderr
        newest = next(v["version"] for v in versions(store) if v["live"])
        deadline = time.monotonic() + 5
        while get(port, "/readyz")[1]["model_version"] != newest and time.monotonic() < deadline:
            time.sleep(0.1)
        assert get(port, "/predict/True:25:Single(1):39")[1]["model_version"] == newest

        rolled = cli("rollback", "--config", str(EXAMPLE_CONFIG), store=store)
        assert rolled.returncode == 0, rolled.stderr
        deadline = time.monotonic() + 5
        while get(port, "/readyz")[1]["model_version"] != first and time.monotonic() < deadline:
            time.sleep(0.1)
        assert get(port, "/predict/True:25:Single(1):39")[1]["model_version"] == first
    finally:
        server.terminate()
        server.wait(timeout=20)

    found = cli("get", "--config", str(EXAMPLE_CONFIG), "True:25.0:Single(1):39", store=store)
    assert found.returncode == 0
    assert json.loads(found.stdout)["key"] == "True:25:Single(1):39"


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["run", "--config", "nowhere.toml"], 2, "configuration error: config file nowhere.toml does not exist"),
        (["get", "--config", str(EXAMPLE_CONFIG), "True:25"], 2, "does not match the template"),
        (["rollback", "--config", str(EXAMPLE_CONFIG)], 2, "nothing is published yet"),
        (["versions", "--config", str(EXAMPLE_CONFIG)], 0, ""),
    ],
)
def test_exit_codes_tell_a_scheduler_what_happened(tmp_path: Path, args: list[str], code: int, message: str) -> None:
    result = cli(*args, store=f"sqlite:///{tmp_path}/absent/store.db")
    assert result.returncode == code, result.stderr
    assert message in result.stderr


def test_bad_model_is_exit_3_and_unknown_store_exit_2(tmp_path: Path) -> None:
    config = tmp_path / "precompute.toml"
    config.write_text(EXAMPLE_CONFIG.read_text().replace('path = "model"', f'path = "{tmp_path / "none"}"'))
    result = cli("run", "--config", str(config), store=f"sqlite:///{tmp_path}/store.db")
    assert result.returncode == 3
    assert "model error: no TensorFlow SavedModel" in result.stderr
    result = cli("versions", "--config", str(config), store="cassandra://x")
    assert result.returncode == 2
    assert "known schemes: memory://, sqlite://" in result.stderr


def test_schema_needs_no_config_and_prints_the_files_json_schema(tmp_path: Path) -> None:
    result = cli("schema", store=f"sqlite:///{tmp_path}/unused.db")
    assert result.returncode == 0, result.stderr
    schema = json.loads(result.stdout)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["title"] == "precompute.toml"
    assert set(schema["properties"]) == {"model", "space", "store", "run", "verify", "serve", "refresh"}
    assert schema["additionalProperties"] is False


def test_get_and_serve_exit_codes_say_what_is_true(tmp_path: Path) -> None:
    store = f"sqlite:///{tmp_path}/store.db"
    assert cli("versions", "--config", str(EXAMPLE_CONFIG), store=store).returncode == 0  # an empty store
    empty = cli("get", "--config", str(EXAMPLE_CONFIG), "True:25:Single(1):39", store=store)
    assert empty.returncode == 7, empty.stderr  # the store answered: nothing is published
    assert "nothing is published" in empty.stderr
    outside = cli("get", "--config", str(EXAMPLE_CONFIG), "Maybe:25:Single(1):39", store=store)
    assert outside.returncode == 7, outside.stderr  # HTTP says 404 for it too
    assert "Maybe" in outside.stderr

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        busy = cli("serve", "--config", str(EXAMPLE_CONFIG), "--port", str(port), store=store, timeout=60)
    assert busy.returncode == 2, busy.stderr
    assert f"cannot listen on 127.0.0.1:{port}" in busy.stderr
    assert "Fix:" in busy.stderr


def test_serve_with_the_fallback_and_no_tensorflow_is_one_line_and_exit_3(tmp_path: Path) -> None:
    hidden = tmp_path / "no-tensorflow"
    (hidden / "tensorflow").mkdir(parents=True)
    (hidden / "tensorflow" / "__init__.py").write_text("raise ImportError('No module named tensorflow')\n")
    env = {
        **os.environ,
        "PRECOMPUTE_STORE": f"sqlite:///{tmp_path}/store.db",
        "PRECOMPUTE_FALLBACK": "on",
        "PYTHONPATH": os.pathsep.join([str(hidden), os.environ.get("PYTHONPATH", "")]),
    }
    args = [*CLI, "serve", "--config", str(EXAMPLE_CONFIG), "--port", str(free_port())]
    result = subprocess.run(args, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 3, result.stderr
    assert result.stderr.strip().splitlines() == [
        "precompute: model error: TensorFlow is not installed: pip install 'precompute[cpu]' (or 'precompute[gpu]' "
        "for CUDA)"
    ]


def test_a_run_into_a_full_redis_is_exit_8_and_changes_nothing(redis_factory: Callable[..., RedisProcess]) -> None:
    server = redis_factory("--maxmemory", "2mb", "--maxmemory-policy", "noeviction")
    store = f"redis://127.0.0.1:{server.port}/0"
    result = cli("run", "--config", str(EXAMPLE_CONFIG), store=store)
    assert result.returncode == 8, result.stderr[-3000:]
    assert "store full" in result.stderr
    assert "maxmemory" in result.stderr
    assert versions(store) == [] or all(not row["live"] for row in versions(store))


def test_misses_are_listed_and_cleared_and_get_finds_an_included_one(tmp_path: Path) -> None:
    from precompute.adapters import open_backend
    from precompute.store import Versions
    from precompute.store.codec import encode_key

    store = f"sqlite:///{tmp_path}/store.db"
    config = ["--config", str(EXAMPLE_CONFIG)]
    backend = open_backend(store)
    assert "no misses recorded" in cli("misses", *config, store=store).stdout
    backend.add_misses({encode_key("True:51:Single(1):39"): 7, encode_key("False:55:Single(1):30"): 2}, cap=10)
    listed = cli("misses", *config, "--top", "1", store=store)
    assert listed.returncode == 0, listed.stderr
    assert "2 recorded miss(es), answered 9 times" in listed.stdout
    assert "         7  True:51:Single(1):39" in listed.stdout
    assert "False:55" not in listed.stdout
    as_json = json.loads(cli("misses", *config, "--json", store=store).stdout)
    assert as_json == [{"key": "True:51:Single(1):39", "count": 7}, {"key": "False:55:Single(1):30", "count": 2}]

    # A version that holds an off-grid key (a run with include_misses): `get` finds it in canonical form.
    versions = Versions(backend)
    record = versions.begin({"misses_included": 1})
    backend.write(record.version, [(encode_key("True:51:Single(1):39"), b'{"weight_pounds":7.0}')])
    versions.mark_ready(record, 1)
    versions.publish(record)
    found = cli("get", *config, "True:51.0:Single(1):39", store=store)
    assert found.returncode == 0, found.stderr
    assert json.loads(found.stdout)["prediction"] == {"weight_pounds": 7.0}

    cleared = cli("misses", *config, "--clear", store=store)
    assert cleared.returncode == 0, cleared.stderr
    assert "cleared 2 recorded miss(es)" in cleared.stdout
    assert backend.misses() == {}
