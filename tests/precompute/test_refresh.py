"""``precompute refresh`` on real stores and a real Redis Stream, with the example model.

The live version is made here the way a run leaves one (a record with the model's fingerprint, ready and
published), with placeholder values: each test checks that the refresh replaced them with the model's own
answers. The concurrent-run test runs a real ``precompute run`` on the shared Ray session.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.csv
import pyarrow.parquet
import pytest

from precompute.adapters import open_backend
from precompute.cli import main
from precompute.config import Config, load_config
from precompute.model import Model, fingerprint
from precompute.refresh import FORGET_S, MAX_CONSUMERS, Hooks, RefreshMetrics, RefreshRefused, refresh
from precompute.store import State, Versions
from tests.precompute.conftest import EXAMPLE, EXAMPLE_CONFIG, ROOT
from tests.servers import free_port
from tests.servers.redis import RedisProcess

OLD = b'{"weight_pounds":0}'
ROWS = [
    {"patient": "p-1", "sex": "True", "mother_age": 25.0, "plurality": "Single(1)", "gestation_weeks": 39.0},
    {"patient": "p-2", "sex": "False", "mother_age": 31.0, "plurality": "Twins(2)", "gestation_weeks": 35.0},
    {"patient": "p-3", "sex": "Unknown", "mother_age": 40.0, "plurality": "Single(1)", "gestation_weeks": 41.0},
]


def table_config(tmp_path: Path, store_url: str | None = None, extra: str = "") -> Config:
    pyarrow.csv.write_csv(pa.Table.from_pylist(ROWS), tmp_path / "patients.csv")
    url = store_url or "sqlite:///store.db"
    (tmp_path / "precompute.toml").write_text(
        f'[model]\npath = "{EXAMPLE / "model"}"\n'
        '[space]\ntype = "table"\npath = "patients.csv"\nkey_column = "patient"\n'
        '[space.columns]\nis_male = "sex"\n'
        f'[store]\nurl = "{url}"\n[refresh]\nwindow_ms = 5\nblock_ms = 100\n' + extra
    )
    return load_config(tmp_path / "precompute.toml", env={})


def publish_live(config: Config, keys: list[str]) -> str:
    """A published version as a run leaves it, holding ``keys`` with a placeholder value."""
    backend = open_backend(config.store_url)
    versions = Versions(backend)
    record = versions.begin({"model": fingerprint(config.model.path), "summary": {}})
    backend.write(record.version, [(k.encode(), OLD) for k in keys])
    versions.mark_ready(record, len(keys))
    versions.publish(record)
    backend.close()
    return record.version


def weight(row: dict[str, Any]) -> float:
    """The model's own answer for one entity, without the refresh, the store or the API."""
    features = {
        "is_male": np.array([row["sex"].encode()], dtype=object),
        "mother_age": np.array([float(row["mother_age"])]),
        "plurality": np.array([row["plurality"].encode()], dtype=object),
        "gestation_weeks": np.array([float(row["gestation_weeks"])]),
    }
    return float(Model(EXAMPLE / "model").predict(features)["weight_pounds"][0])


def stored(config: Config, version: str, keys: list[str]) -> list[bytes | None]:
    backend = open_backend(config.store_url)
    try:
        return backend.read(version, [k.encode() for k in keys])
    finally:
        backend.close()


def changed(patient: str, age: float = 30.0, weeks: float = 40.0) -> dict[str, Any]:
    return {"patient": patient, "sex": "True", "mother_age": age, "plurality": "Single(1)", "gestation_weeks": weeks}


BAD_LINES = [
    json.dumps({**changed("p-9"), "patient": 7}),  # the key is not a string
    json.dumps({k: v for k, v in changed("p-8").items() if k != "mother_age"}),  # a column missing
    json.dumps({**changed("p-7"), "mother_age": "old"}),  # a value of the wrong type
    "not json",
    json.dumps({**changed("p-6"), "plurality": "Octuplets(8)"}),  # a category the model does not know
]


def test_a_jsonl_file_is_scored_into_the_live_version_bad_lines_reported_and_a_rerun_resumes(tmp_path: Path) -> None:
    config = table_config(tmp_path)
    live = publish_live(config, ["p-1", "p-2"])
    lines = [json.dumps(changed("p-1")), *BAD_LINES, json.dumps(changed("p-4", 22.0, 37.0))]
    (tmp_path / "changes.jsonl").write_text("\n".join(lines) + "\n")

    summary = refresh(config, str(tmp_path / "changes.jsonl"))

    assert (summary.records, summary.written, summary.bad) == (7, 2, 5)
    assert [(b.position, b.reason.split(":")[0]) for b in summary.bad_records] == [
        ("line 2", "the key column 'patient' holds int 7, not a string"),
        ("line 3", "missing the column 'mother_age'"),
        ("line 4", "column 'mother_age'"),
        ("line 5", "not JSON"),
        ("line 6", "the model cannot score it"),
    ]
    p1, p2, p4 = stored(config, live, ["p-1", "p-2", "p-4"])
    assert p1 is not None
    assert p4 is not None
    assert json.loads(p1)["weight_pounds"] == pytest.approx(weight(changed("p-1")), rel=1e-6)
    assert json.loads(p4)["weight_pounds"] == pytest.approx(weight(changed("p-4", 22.0, 37.0)), rel=1e-6)
    assert p2 == OLD  # not in the file: untouched
    record = Versions(open_backend(config.store_url)).get(live)
    (state,) = record.meta["refresh"].values()
    assert state["written"] == 2
    assert list(state["watermarks"].values()) == [7]

    again = refresh(config, str(tmp_path / "changes.jsonl"))  # the same file: resumed after line 7
    assert (again.resumed_from, again.records) == (7, 0)


def test_the_record_keeps_a_bounded_number_of_consumers(tmp_path: Path) -> None:
    """A default consumer name is new with every process: a refresh run by cron every minute must not grow
    the live version's record without end."""
    config = table_config(tmp_path)
    live = publish_live(config, ["p-1"])
    backend = open_backend(config.store_url)
    versions = Versions(backend)
    record = versions.get(live)
    now = time.time()
    record.meta["refresh"] = {f"host-{i}": {"written": 1, "updated_at": now - i} for i in range(MAX_CONSUMERS + 5)}
    record.meta["refresh"]["gone"] = {"written": 1, "updated_at": now - FORGET_S - 1}
    backend.put_record(live, record.to_bytes())
    (tmp_path / "changes.jsonl").write_text(json.dumps(changed("p-1")) + "\n")

    refresh(config, str(tmp_path / "changes.jsonl"))

    kept = versions.get(live).meta["refresh"]
    backend.close()
    assert len(kept) == MAX_CONSUMERS
    assert "gone" not in kept
    assert "host-0" in kept  # the most recently updated stay
    assert f"host-{MAX_CONSUMERS + 4}" not in kept
    assert sum(1 for name in kept if not name.startswith("host-")) == 1  # this process's own entry


@pytest.mark.parametrize("kind", ["csv", "parquet"])
def test_csv_and_parquet_files_are_read_with_the_types_a_run_reads(tmp_path: Path, kind: str) -> None:
    config = table_config(tmp_path)
    live = publish_live(config, ["p-1"])
    table = pa.Table.from_pylist([changed("007"), changed("p-1", 28.0, 38.0)])
    path = tmp_path / f"changes.{kind}"
    if kind == "csv":
        pyarrow.csv.write_csv(table, path)
    else:
        pyarrow.parquet.write_table(table, path)

    summary = refresh(config, str(path))

    assert (summary.records, summary.written, summary.bad) == (2, 2, 0)
    first, second = stored(config, live, ["007", "p-1"])  # a CSV's key column is text: 007 stays 007
    assert first is not None
    assert second is not None
    assert json.loads(second)["weight_pounds"] == pytest.approx(weight(changed("p-1", 28.0, 38.0)), rel=1e-6)


def test_json_lines_on_standard_input(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = table_config(tmp_path)
    live = publish_live(config, ["p-1"])
    monkeypatch.setattr(sys, "stdin", io.StringIO(json.dumps(changed("p-1")) + "\n\n" + json.dumps(changed("p-5"))))
    summary = refresh(config, "-")
    assert (summary.records, summary.written, summary.bad) == (2, 2, 0)
    assert all(v is not None and v != OLD for v in stored(config, live, ["p-1", "p-5"]))


def test_a_refreshed_value_is_byte_identical_to_what_a_run_stores(ray_session: Any, tmp_path: Path) -> None:
    from precompute.run import run

    config = table_config(tmp_path)
    version = run(config).version
    assert version is not None
    by_run = stored(config, version, [r["patient"] for r in ROWS])
    (tmp_path / "same.jsonl").write_text("\n".join(json.dumps(r) for r in ROWS))
    backend = open_backend(config.store_url)
    backend.write(version, [(r["patient"].encode(), OLD) for r in ROWS])  # so that the refresh has to write them
    backend.close()
    refresh(config, str(tmp_path / "same.jsonl"))
    assert stored(config, version, [r["patient"] for r in ROWS]) == by_run


def test_a_grid_space_is_refused_with_the_reason(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "x.jsonl").write_text("{}\n")
    code = main(["refresh", "--config", str(EXAMPLE_CONFIG), "--from", str(tmp_path / "x.jsonl")])
    assert code == 2
    assert "a grid key's answer depends only on the key and the model" in capsys.readouterr().err
    with pytest.raises(RefreshRefused):
        refresh(load_config(EXAMPLE_CONFIG, env={}), str(tmp_path / "x.jsonl"))


def test_a_bad_source_is_a_usage_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = table_config(tmp_path)
    publish_live(config, ["p-1"])
    for source, message in [
        (str(tmp_path / "nowhere.jsonl"), "no such file"),
        (str(tmp_path / "changes.txt"), "cannot tell the format"),
        ("redis://127.0.0.1:1/0?stream=s", "needs ?stream=NAME&group=GROUP"),
        ("redis://127.0.0.1:1/0?stream=s&group=g&grup=x", "unknown stream option(s) ['grup']"),
    ]:
        code = main(["refresh", "--config", str(tmp_path / "precompute.toml"), "--from", source])
        assert code == 2, source
        assert message in capsys.readouterr().err
    (tmp_path / "changes.jsonl").write_text("{}\n")
    follow = ["--from", str(tmp_path / "changes.jsonl"), "--follow"]
    assert main(["refresh", "--config", str(tmp_path / "precompute.toml"), *follow]) == 2
    assert "--follow reads a Redis Stream until stopped; a file or - is read to its end" in capsys.readouterr().err


def test_a_stream_nobody_answers_is_exit_5(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from tests.servers import refusing_port

    config = table_config(tmp_path)
    publish_live(config, ["p-1"])
    with refusing_port() as port:
        source = f"redis://127.0.0.1:{port}/0?stream=s&group=g"
        assert main(["refresh", "--config", str(tmp_path / "precompute.toml"), "--from", source]) == 5
    assert f"the stream's Redis at redis://127.0.0.1:{port}/0 does not answer" in capsys.readouterr().err


# -- Redis Streams ---------------------------------------------------------------------------------------


def stream_url(server: RedisProcess, stream: str = "changes", group: str = "refresh", **options: str) -> str:
    extra = "".join(f"&{k}={v}" for k, v in options.items())
    return f"redis://127.0.0.1:{server.port}/0?stream={stream}&group={group}{extra}"


def client(server: RedisProcess) -> Any:
    import redis

    return redis.Redis(port=server.port)


def test_a_stream_is_consumed_bad_entries_go_to_the_dead_letter_stream(
    tmp_path: Path, redis_server: RedisProcess
) -> None:
    config = table_config(tmp_path)
    live = publish_live(config, ["p-1"])
    r = client(redis_server)
    stream = f"s-{time.monotonic_ns()}"
    good = r.xadd(stream, changed("p-1"))
    r.xadd(stream, changed("p-2", 33.0, 36.0))
    bad = r.xadd(stream, {**changed("p-3"), "gestation_weeks": "soon"})
    r.xadd(stream, {k: v for k, v in changed("p-4").items() if k != "sex"})
    metrics = RefreshMetrics()

    summary = refresh(config, stream_url(redis_server, stream), metrics=metrics)

    assert (summary.records, summary.written, summary.bad) == (4, 2, 2)
    assert summary.bad_records[0].position == bad.decode()
    assert "column 'gestation_weeks': expected a number, got 'soon'" in summary.bad_records[0].reason
    assert summary.watermark == summary.bad_records[1].position  # the last entry's id
    assert len(summary.lags) == 4
    p1, p2 = stored(config, live, ["p-1", "p-2"])
    assert p2 is not None
    assert json.loads(p2)["weight_pounds"] == pytest.approx(weight(changed("p-2", 33.0, 36.0)), rel=1e-6)
    assert p1 is not None
    assert p1 != OLD
    assert r.xpending(stream, "refresh")["pending"] == 0
    dead = r.xrange(f"{stream}:dead")
    assert [fields[b"id"] for _, fields in dead] == [bad, summary.bad_records[1].position.encode()]
    assert b"expected a number" in dead[0][1][b"reason"]
    assert json.loads(dead[0][1][b"fields"])["gestation_weeks"] == "soon"
    assert metrics.records._value.get() == 2
    assert metrics.dead._value.get() == 2
    assert good  # the first entry was read too (the group starts at 0: the stream's history)


def test_an_entry_is_acknowledged_only_after_its_answer_is_written(tmp_path: Path, redis_server: RedisProcess) -> None:
    config = table_config(tmp_path, extra='consumer = "c1"\n')
    live = publish_live(config, ["p-1"])
    r = client(redis_server)
    stream = f"s-{time.monotonic_ns()}"
    for i in range(5):
        r.xadd(stream, changed(f"k-{i}", 20.0 + i))

    def crash(batch: int) -> None:
        raise RuntimeError("the process died between reading and writing")

    with pytest.raises(RuntimeError, match="died"):
        refresh(config, stream_url(redis_server, stream), hooks=Hooks(after_score=crash))
    assert r.xpending(stream, "refresh")["pending"] == 5  # read, never acknowledged
    assert stored(config, live, ["k-0", "k-4"]) == [None, None]

    summary = refresh(config, stream_url(redis_server, stream))  # the same consumer: its pending entries first
    assert summary.written == 5
    assert r.xpending(stream, "refresh")["pending"] == 0
    assert all(v is not None for v in stored(config, live, [f"k-{i}" for i in range(5)]))


def test_pending_entries_are_read_again_once_each(redis_server: RedisProcess) -> None:
    from precompute.sources import RedisStream

    r = client(redis_server)
    stream = f"s-{time.monotonic_ns()}"
    ids = [r.xadd(stream, {"n": str(i)}).decode() for i in range(5)]
    url = stream_url(redis_server, stream, consumer="c")
    first = RedisStream.from_url(url)
    assert [e.offset for e in first.read(10, 0)] == ids  # delivered, never acknowledged
    again = RedisStream.from_url(url)  # the same consumer after a crash
    seen = [e.offset for e in again.read(2, 0)] + [e.offset for e in again.read(2, 0)]
    seen += [e.offset for e in again.read(2, 0)]  # nothing acknowledged meanwhile: still each entry once
    assert seen == ids
    assert again.read(2, 0) == []  # then new entries only: none yet
    r.xadd(stream, {"n": "5"})
    assert [e.fields for e in again.read(2, 0)] == [{"n": "5"}]


def test_a_new_group_starts_after_the_recorded_watermark(tmp_path: Path, redis_server: RedisProcess) -> None:
    config = table_config(tmp_path)
    publish_live(config, ["p-1"])
    r = client(redis_server)
    stream = f"s-{time.monotonic_ns()}"
    for i in range(3):
        r.xadd(stream, changed(f"a-{i}"))
    first = refresh(config, stream_url(redis_server, stream))
    assert first.records == 3
    r.xgroup_destroy(stream, "refresh")  # the group is lost (a new Redis for the stream, a mistake)
    r.xadd(stream, changed("b-0"))
    second = refresh(config, stream_url(redis_server, stream))
    assert second.resumed_from == first.watermark
    assert second.records == 1


def test_follow_stops_on_sigterm_after_the_batch_in_hand_and_serves_metrics(
    tmp_path: Path, redis_server: RedisProcess
) -> None:
    config = table_config(tmp_path)
    live = publish_live(config, ["p-1"])
    r = client(redis_server)
    stream = f"s-{time.monotonic_ns()}"
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "3"}
    command = [sys.executable, "-m", "precompute.cli", "refresh", "-c", str(tmp_path / "precompute.toml")]
    command += ["--from", stream_url(redis_server, stream), "--follow", "--json", "--metrics-port", str(port)]
    proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        r.xadd(stream, changed("f-1"))
        r.xadd(stream, {"patient": "f-2"})
        deadline = time.monotonic() + 60
        while stored(config, live, ["f-1"]) == [None]:
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            assert time.monotonic() < deadline, "the refresh wrote nothing in 60 s"
            time.sleep(0.1)
        scrape = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
        assert "precompute_refresh_records_total 1.0" in scrape
        assert "precompute_refresh_dead_letters_total 1.0" in scrape
        assert "precompute_refresh_lag_seconds_count 2.0" in scrape
        assert "precompute_refresh_pending" in scrape
        for i in range(50):
            r.xadd(stream, changed(f"g-{i}"))
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    summary = json.loads(out)
    assert summary["bad"] == 1
    assert (
        summary["bad_records"][0]["reason"]
        == "missing the columns ['gestation_weeks', 'mother_age', 'plurality', 'sex']"
    )
    done = summary["written"] - 1  # the g-* entries written before it stopped, all acknowledged
    assert r.xpending(stream, "refresh")["pending"] == 0
    assert sum(v is not None for v in stored(config, live, [f"g-{i}" for i in range(50)])) == done


# -- a concurrent run ------------------------------------------------------------------------------------


def test_a_refresh_during_a_run_lands_in_the_version_it_publishes(
    ray_session: Any, tmp_path: Path, redis_server: RedisProcess
) -> None:
    from precompute.run import run

    config = table_config(tmp_path, extra='consumer = "c-run"\n')
    live = publish_live(config, ["p-1", "p-2", "p-3"])
    r = client(redis_server)
    stream = f"s-{time.monotonic_ns()}"
    stop = threading.Event()
    results: dict[str, Any] = {}

    def refreshing() -> None:
        try:
            results["refresh"] = refresh(config, stream_url(redis_server, stream), follow=True, stop=stop)
        except BaseException as exc:
            results["refresh"] = exc

    def running() -> None:
        try:
            results["run"] = run(config)
        except BaseException as exc:
            results["run"] = exc

    refresher = threading.Thread(target=refreshing)
    refresher.start()
    runner = threading.Thread(target=running)
    backend = open_backend(config.store_url)
    versions = Versions(backend)
    try:
        runner.start()
        deadline = time.monotonic() + 120
        while not (building := [v for v in versions.records() if v.state is State.WRITING]):
            assert time.monotonic() < deadline, results
            assert runner.is_alive(), results
            time.sleep(0.05)
        new = building[0].version
        r.xadd(stream, changed("p-2", 44.0, 42.0))  # an entity of the run's table, changed since
        r.xadd(stream, changed("p-new", 21.0, 36.0))  # an entity the table lacks
        while stored(config, live, ["p-new"]) == [None]:
            assert time.monotonic() < deadline, results
            time.sleep(0.05)
        while versions.get(live).meta["refresh"]["c-run"].get("holding") != [new]:  # found within a second
            assert time.monotonic() < deadline, results
            time.sleep(0.05)
        assert "loaded_at" not in versions.get(new).meta  # its answers wait while the run is loading
        runner.join(timeout=180)
    finally:
        stop.set()
        refresher.join(timeout=30)
    assert not isinstance(results["run"], BaseException), results["run"]
    summary = results["refresh"]
    assert not isinstance(summary, BaseException), summary
    assert results["run"].version == new
    assert backend.get_alias() == new
    p1, p2, p_new = stored(config, new, ["p-1", "p-2", "p-new"])
    assert p2 is not None
    assert json.loads(p2)["weight_pounds"] == pytest.approx(weight(changed("p-2", 44.0, 42.0)), rel=1e-6)
    assert p_new is not None
    assert p1 is not None
    assert json.loads(p1)["weight_pounds"] == pytest.approx(weight(ROWS[0] | {"sex": "True"}), rel=1e-4)
    assert summary.into[new] == 2
    assert results["run"].verification["store_count"] == 3  # counted before the refreshes went in
    assert versions.get(new).meta["refresh"]["c-run"]["holding"] == []
    backend.close()


# -- the API -----------------------------------------------------------------------------------------------


def test_the_api_serves_a_refreshed_answer_within_refresh_seconds_despite_its_caches(tmp_path: Path) -> None:
    from starlette.testclient import TestClient

    from precompute.api import create_app

    config = table_config(tmp_path, extra="[serve]\nrefresh_seconds = 0.3\nnegative_ttl_seconds = 60\n")
    publish_live(config, ["p-1"])
    app = create_app(config)
    with TestClient(app) as api:
        for _ in range(3):
            assert api.get("/predict/p-1").json()["prediction"] == {"weight_pounds": 0}
            assert api.get("/predict/p-9").status_code == 404
        assert app.state.cache.hits >= 2  # the old answer is in the hot-key cache, the missing key in the negative one
        (tmp_path / "changes.jsonl").write_text(json.dumps(changed("p-1")) + "\n" + json.dumps(changed("p-9")))
        refresh(config, str(tmp_path / "changes.jsonl"))
        written = time.monotonic()
        fresh: dict[str, float] = {}
        while len(fresh) < 2:
            for key in ("p-1", "p-9"):
                answer = api.get(f"/predict/{key}")
                if (
                    key not in fresh
                    and answer.status_code == 200
                    and answer.json()["prediction"] != {"weight_pounds": 0}
                ):
                    fresh[key] = time.monotonic() - written
            assert time.monotonic() - written < 0.3 + 0.5, fresh
            time.sleep(0.01)
    assert max(fresh.values()) <= 0.3 + 0.5


def test_a_table_versions_cache_entries_expire_from_the_start_of_their_read() -> None:
    from precompute.api.cache import HotCache, NegativeCache

    grid = HotCache(10_000)
    grid.get("v", "k")
    grid.put("v", "k", b"body", read_at=time.perf_counter() - 3600)
    assert grid.get("v", "k") == b"body"  # a grid version never changes: no expiry
    table = HotCache(10_000, ttl_seconds=0.2)
    table.get("v", "k")
    table.put("v", "k", b"old", read_at=time.perf_counter() - 0.25)  # a read that began 0.25 s ago
    assert table.get("v", "k") is None
    table.put("v", "k", b"new")
    assert table.get("v", "k") == b"new"
    time.sleep(0.21)
    assert table.get("v", "k") is None
    assert table.bytes == 0
    negative = NegativeCache(0.2)
    negative.contains("v", "k")
    negative.add("v", "k", read_at=time.perf_counter() - 0.25)
    assert not negative.contains("v", "k")


def test_a_dead_runs_version_and_another_models_version_get_no_answers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import precompute.refresh

    monkeypatch.setattr(precompute.refresh, "STALE_SECONDS", 0.3)  # a run still loading after this is asked
    config = table_config(tmp_path)
    live = publish_live(config, ["p-1"])
    backend = open_backend(config.store_url)
    versions = Versions(backend)
    dead = versions.begin({"model": fingerprint(config.model.path)})  # 'writing', and nobody holds the run lock
    other = versions.begin({"model": "sha256:another"})
    (tmp_path / "changes.jsonl").write_text(json.dumps(changed("p-1")) + "\n")

    started = time.monotonic()
    summary = refresh(config, str(tmp_path / "changes.jsonl"))

    assert time.monotonic() - started < 10
    assert summary.written == 1
    assert set(summary.into) == {live}
    assert backend.read(dead.version, [b"p-1"]) == [None]
    assert backend.read(other.version, [b"p-1"]) == [None]
    assert backend.acquire_lock("a-run", 5.0) is None  # the probe released the lock it took
    backend.close()


def test_a_run_that_fails_and_drops_its_version_under_the_refresh_does_not_stop_it(tmp_path: Path) -> None:
    from precompute.refresh import Targets, _Batch

    config = table_config(tmp_path)
    live = publish_live(config, ["p-1"])
    backend = open_backend(config.store_url)
    versions = Versions(backend)
    record = versions.begin({"model": fingerprint(config.model.path)})
    record.meta["loaded_at"] = time.time()
    backend.put_record(record.version, record.to_bytes())
    targets = Targets(backend, fingerprint(config.model.path), "c", backlog_max=10, record_seconds=1.0)
    targets.check(force=True)
    targets.write([(b"p-1", b'{"weight_pounds":1}')], _Batch([], set()))
    assert backend.read(record.version, [b"p-1"]) == [b'{"weight_pounds":1}']  # written directly: it had loaded
    versions.abort(record, "the run failed")  # marked failed, its rows dropped, before the refresh looks again
    targets.write([(b"p-1", b'{"weight_pounds":2}')], _Batch([], set()))
    assert backend.read(live, [b"p-1"]) == [b'{"weight_pounds":2}']
    assert targets.building[record.version].ignored == "its run failed and dropped it"
    backend.close()
