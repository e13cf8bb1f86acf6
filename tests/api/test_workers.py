"""``precompute serve --workers 2``: real processes on a free port, over a SQLite store with one version.

What the workers share is checked from outside, as a scraper and a load balancer see it: every ``/metrics``
scrape counts the lookups of both workers, a worker killed with SIGKILL is replaced without any total going
down, ``/readyz`` says so meanwhile, SIGTERM drains the requests in flight on every worker, and ``[serve] loop``
chooses the event loop of every serving process.
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from prometheus_client.multiprocess import MultiProcessCollector

from precompute.adapters import open_backend
from precompute.config import ConfigError, load_config, worker_count
from precompute.store import StoreURL, Versions
from precompute.store.codec import encode_key
from tests.api.conftest import wait_for
from tests.precompute.conftest import EXAMPLE_CONFIG
from tests.servers import free_port, stop
from tests.store.helpers import published

KEYS = [
    f"{sex}:{age}:Single(1):{weeks}" for sex in ("True", "False") for age in range(20, 40) for weeks in range(30, 40)
]
BODY = b'{"weight_pounds":7.5}'


@dataclass
class Server:
    proc: subprocess.Popen[bytes]
    port: int
    tmp: Path  # the supervisor's TMPDIR: its metrics directory is made in there
    log: Path

    def request(self, method: str, path: str, body: bytes | None = None) -> tuple[int, dict[str, str], bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            headers = {"Content-Type": "application/json"} if body is not None else {}
            conn.request(method, path, body=body, headers=headers)
            response = conn.getresponse()
            return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
        finally:
            conn.close()

    def lookups(self, n: int) -> None:
        """``n`` GETs over 8 concurrent clients, a new connection each (so that both workers take some)."""
        with ThreadPoolExecutor(8) as pool:
            statuses = list(pool.map(lambda i: self.request("GET", f"/predict/{KEYS[i % len(KEYS)]}")[0], range(n)))
        assert statuses == [200] * n

    def scrape(self) -> tuple[int, dict[str, float]]:
        """The answering worker's pid and the exposition's samples, by name with labels."""
        status, headers, body = self.request("GET", "/metrics")
        assert status == 200
        samples = {}
        for line in body.decode().splitlines():
            if line and not line.startswith("#"):
                name, value = line.rsplit(" ", 1)
                samples[name] = float(value)
        return int(headers["x-worker"]), samples

    def ready(self) -> tuple[int, dict[str, object]]:
        status, _, body = self.request("GET", "/readyz")
        return status, json.loads(body)

    def workers(self) -> set[int]:
        """The supervisor's worker processes (multiprocessing's spawned children)."""
        children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text().split()
        found = set()
        for pid in children:
            try:
                if b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes():
                    found.add(int(pid))
            except OSError:  # exited meanwhile
                continue
        return found

    def requests_by_worker(self) -> dict[int, float]:
        """Lookups counted in each worker's own file, read one file at a time."""
        (directory,) = self.tmp.glob("precompute-metrics-*")
        counts = {}
        for path in directory.glob("counter_*.db"):
            alone = self.tmp / f"alone-{path.stem}"
            alone.mkdir()
            shutil.copy(path, alone)
            families = MultiProcessCollector(None, str(alone)).collect()  # type: ignore[no-untyped-call]
            counts[int(path.stem.split("_")[1])] = sum(
                s.value for f in families if f.name == "precompute_requests" for s in f.samples
            )
            shutil.rmtree(alone)
        return counts


def requests_total(samples: dict[str, float]) -> float:
    return sum(v for k, v in samples.items() if k.startswith("precompute_requests_total{"))


def looked_up(samples: dict[str, float]) -> float:
    """Hot-cache hits and misses: scrape-time counts, copied from each worker once a second."""
    return samples.get("precompute_cache_hits_total", 0) + samples.get("precompute_cache_misses_total", 0)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> str:
    url = f"sqlite:///{tmp_path_factory.mktemp('workers')}/store.db"
    published(
        Versions(open_backend(load_config(EXAMPLE_CONFIG, env={"PRECOMPUTE_STORE": url}).store_url)),
        [(encode_key(key), BODY) for key in KEYS],
    )
    return url


@contextmanager
def serving(store: str, tmp_path: Path, workers: int = 2, config: Path = EXAMPLE_CONFIG) -> Iterator[Server]:
    port = free_port()
    log = tmp_path / "serve.log"
    env = {**os.environ, "PRECOMPUTE_STORE": store, "TMPDIR": str(tmp_path)}
    cmd = [sys.executable, "-m", "precompute.cli", "serve", "--config", str(config), "--port", str(port)]
    with log.open("wb") as out:
        proc = subprocess.Popen([*cmd, "--workers", str(workers)], env=env, stdout=out, stderr=subprocess.STDOUT)
    server = Server(proc, port, tmp_path, log)
    try:
        assert wait_for(lambda: _ready(server), timeout=30), log.read_text()[-3000:]
        yield server
    finally:
        if proc.poll() is None:
            stop(proc, timeout=20)


def _ready(server: Server) -> bool:
    assert server.proc.poll() is None, server.log.read_text()[-3000:]
    try:
        return server.ready()[0] == 200
    except OSError:
        return False


def test_every_scrape_counts_the_lookups_of_every_worker(store: str, tmp_path: Path) -> None:
    with serving(store, tmp_path) as server:
        status, state = server.ready()
        assert status == 200
        assert state["workers"] == {"expected": 2, "ready": 2, "worker": state["workers"]["worker"]}  # type: ignore[index]
        server.lookups(300)

        by_worker = server.requests_by_worker()
        assert set(by_worker) == server.workers()
        assert all(count > 0 for count in by_worker.values()), by_worker  # both workers answered
        assert sum(by_worker.values()) == 300

        assert wait_for(lambda: looked_up(server.scrape()[1]) == 300, timeout=3)  # copied within a second
        answered_by = set()
        for _ in range(40):
            pid, samples = server.scrape()
            answered_by.add(pid)
            assert requests_total(samples) == 300
            assert samples["precompute_request_seconds_count"] == 300
            assert looked_up(samples) == 300
            assert samples["precompute_ready"] == 1
            assert samples["precompute_cache_entries"] == 300  # added up: each key read once, cached where it was
            if answered_by == server.workers():
                break
        assert answered_by == server.workers(), "every scrape landed on the same worker"
        (served,) = [k for k in samples if k.startswith("precompute_live_version_info")]  # one, as with one worker

        newer = published(Versions(open_backend(StoreURL.parse(store))), [(encode_key(k), BODY) for k in KEYS])

        def flipped() -> bool:  # every worker serves the new version, and the old one is no longer shown
            versions = [k for k, v in server.scrape()[1].items() if k.startswith("precompute_live_version_info")]
            return versions == [f'precompute_live_version_info{{version="{newer}"}}']

        assert wait_for(flipped, timeout=5), served
        assert server.ready()[1]["model_version"] == newer


def test_a_killed_worker_is_replaced_and_no_total_goes_down(store: str, tmp_path: Path) -> None:
    with serving(store, tmp_path) as server:
        server.lookups(200)
        assert wait_for(lambda: looked_up(server.scrape()[1]) == 200, timeout=3)
        before = server.workers()
        victim = min(before)
        os.kill(victim, signal.SIGKILL)

        said: list[str] = []

        def replaced() -> bool:
            status, state = server.ready()
            if status == 503:
                said.append(str(state.get("error")))
            return status == 200 and len(server.workers() - before) == 1 and victim not in server.workers()

        assert wait_for(replaced, timeout=15), server.log.read_text()[-3000:]
        assert "1 of 2 workers ready" in said  # between the kill and the replacement's start-up
        _, samples = server.scrape()
        assert requests_total(samples) == 200  # the dead worker's counts stay in the totals
        assert samples["precompute_request_seconds_count"] == 200
        assert looked_up(samples) == 200  # its last copy stays too

        server.lookups(100)
        assert wait_for(lambda: looked_up(server.scrape()[1]) == 300, timeout=3)
        for _ in range(10):
            _, samples = server.scrape()
            assert requests_total(samples) == 300
            assert samples["precompute_request_seconds_count"] == 300


def test_sigterm_drains_the_requests_in_flight_on_every_worker(store: str, tmp_path: Path) -> None:
    body = json.dumps({"keys": KEYS[:100]}).encode()
    with serving(store, tmp_path) as server:
        workers = server.workers()
        pinned: dict[int, list[http.client.HTTPConnection]] = {pid: [] for pid in workers}
        for _ in range(200):  # keep-alive connections, two on each worker
            if all(len(conns) >= 2 for conns in pinned.values()):
                break
            conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=20)
            conn.request("GET", "/readyz")
            response = conn.getresponse()
            response.read()
            pinned[int(response.getheader("x-worker", "0"))].append(conn)
        connections = [conn for conns in pinned.values() for conn in conns[:2]]
        assert len(connections) == 4, {pid: len(conns) for pid, conns in pinned.items()}

        for conn in connections:  # each request begun: its headers and half its body sent
            conn.putrequest("POST", "/predict")
            conn.putheader("Content-Type", "application/json")
            conn.putheader("Content-Length", str(len(body)))
            conn.endheaders(body[: len(body) // 2])
        time.sleep(0.3)
        server.proc.send_signal(signal.SIGTERM)
        assert wait_for(lambda: server.log.read_text().count("Shutting down") == 2, timeout=5)
        assert server.proc.poll() is None  # waiting for the requests in flight

        for conn in connections:
            conn.send(body[len(body) // 2 :])
        for conn in connections:
            response = conn.getresponse()
            assert response.status == 200
            assert len(json.loads(response.read())["results"]) == 100
        assert server.proc.wait(timeout=20) == 0, server.log.read_text()[-3000:]
        assert not list(tmp_path.glob("precompute-metrics-*"))  # the metrics directory is removed


def test_workers_whose_supervisor_was_killed_stop_by_themselves(store: str, tmp_path: Path) -> None:
    with serving(store, tmp_path) as server:
        workers = server.workers()
        server.proc.kill()  # SIGKILL: nothing forwards a signal to the workers
        server.proc.wait()

        def gone() -> bool:  # exited: no such process, or a zombie its new parent has not reaped yet
            for pid in workers:
                try:
                    if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
                        return False
                except OSError:
                    continue
            return True

        assert wait_for(gone, timeout=10), server.log.read_text()[-3000:]
        assert "the supervisor (pid" in server.log.read_text()


def with_workers(tmp_path: Path, value: str) -> Path:
    """The example config with ``[serve] workers = value`` (TOML as written)."""
    text = EXAMPLE_CONFIG.read_text().replace('path = "model"', f'path = "{EXAMPLE_CONFIG.parent}/model"')
    assert "\n[serve]\n" in text
    config = tmp_path / "precompute.toml"
    config.write_text(text.replace("\n[serve]\n", f"\n[serve]\nworkers = {value}\n"))
    return config


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("0", r"^\[serve\] workers: must be positive, got 0. Fix: write e.g. `workers = 4`"),
        ('"many"', r'^\[serve\] workers: expected a positive integer or "auto", got \'many\''),
        ("2.5", r'^\[serve\] workers: expected a positive integer or "auto", got 2.5'),
        ('"aut"', r'Fix: did you mean `workers = "auto"`\?'),
    ],
)
def test_workers_must_be_a_positive_number_or_auto(tmp_path: Path, value: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(with_workers(tmp_path, value), env={})


def test_auto_is_the_cores_this_process_may_use(tmp_path: Path) -> None:
    workers = load_config(with_workers(tmp_path, '"auto"'), env={}).serve.workers
    assert workers is None
    assert worker_count(workers) == len(os.sched_getaffinity(0))
    assert load_config(EXAMPLE_CONFIG, env={}).serve.workers == 1
    assert worker_count(3) == 3


def test_the_workers_flag_overrides_the_file() -> None:
    from precompute.cli import _parser

    serve = ["serve", "--config", str(EXAMPLE_CONFIG)]
    assert _parser().parse_args([*serve, "--workers", "3"]).workers == 3
    assert _parser().parse_args([*serve, "--workers", "auto"]).workers is None  # as [serve] workers = "auto"
    assert "workers" not in vars(_parser().parse_args(serve))  # absent: [serve] workers decides


def test_a_bad_workers_flag_is_a_usage_error(tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "precompute.cli", "serve", "--config", str(EXAMPLE_CONFIG), "--workers", "0"]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "'0' is neither a positive number nor \"auto\". Fix: --workers 2" in result.stderr


def with_loop(tmp_path: Path, loop: str) -> Path:
    """The example config with ``[serve] loop`` set (and its model path made absolute for the copy)."""
    text = EXAMPLE_CONFIG.read_text().replace('path = "model"', f'path = "{EXAMPLE_CONFIG.parent / "model"}"', 1)
    path = tmp_path / f"loop-{loop}.toml"
    path.write_text(text.replace("[serve]\n", f'[serve]\nloop = "{loop}"\n', 1))
    return path


def uvloop_loaded(pid: int) -> bool:
    return "uvloop" in Path(f"/proc/{pid}/maps").read_text()


@pytest.mark.parametrize(
    ("loop", "workers", "uvloop"), [("asyncio", 1, False), ("uvloop", 1, True), ("asyncio", 2, False)]
)
def test_the_loop_setting_chooses_the_event_loop_of_every_serving_process(
    store: str, tmp_path: Path, loop: str, workers: int, uvloop: bool
) -> None:
    """``[serve] loop`` reaches uvicorn, with one process and with workers: uvloop's library is loaded in a
    serving process exactly when it runs on uvloop."""
    with serving(store, tmp_path, workers=workers, config=with_loop(tmp_path, loop)) as server:
        server.lookups(16)
        pids = server.workers() if workers > 1 else {server.proc.pid}
        assert len(pids) == workers
        assert {pid: uvloop_loaded(pid) for pid in pids} == {pid: uvloop for pid in pids}
