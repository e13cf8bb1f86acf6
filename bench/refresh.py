"""`precompute refresh --follow` on a Redis Stream: the Dataflow streaming experiment, redone; and a refresh
against a full `precompute run` of the same entities.

    python bench/refresh.py [--messages 10000] [--rates 50 100 500 0] [--entities 100000] [--runs 3]
                            [--refresh-seconds 0.2] [--store URL]

Everything runs on this machine: a redis-server of its own for the stream (a free port), the SQLite store
(or --store), `precompute serve` and `precompute refresh --follow` as subprocesses, as they would be
deployed, with the babyweight model over a table of synthetic entities.

* Streaming: for each rate (messages/s; 0 is as fast as one client can XADD, pipelined), --messages changed
  entities are sent into the stream. Total time runs from the first XADD to the last answer written (the
  refresh's precompute_refresh_records_total, scraped every 10 ms), against the sending time. Freshness
  lag: for up to 200 of the messages, from its XADD to the API's GET /predict/<key> answering the new value
  (polled every few ms), p50 and p99. The API's hot-key cache is on; for a table space it keeps an entry at
  most [serve] refresh_seconds (--refresh-seconds).
* Refresh against run: the same --entities re-scored by `precompute run` (a subprocess, Ray started, end to
  end, from its summary) and by `precompute refresh --from FILE.parquet` (a subprocess, end to end: the
  model load included) and at the max rate through the stream; rows/s of each, medians of --runs.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

from tests.servers import free_port  # noqa: E402
from tests.servers.redis import RedisProcess, redis_binary  # noqa: E402

MODEL = ROOT / "examples/babyweight/model"
PLURALITY = ["Single(1)", "Twins(2)", "Triplets(3)", "Quadruplets(4)", "Quintuplets(5)", "Multiple(2+)"]
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "3"}


def entities(n: int, seed: int, prefix: str = "e-") -> dict[str, list[Any]]:
    rng = np.random.default_rng(seed)
    return {
        "id": [f"{prefix}{i}" for i in range(n)],
        "is_male": rng.choice(["True", "False", "Unknown"], n).tolist(),
        "mother_age": rng.integers(15, 45, n).astype(float).tolist(),
        "plurality": rng.choice(PLURALITY, n).tolist(),
        "gestation_weeks": rng.integers(30, 44, n).astype(float).tolist(),
    }


def write_config(tmp: Path, table: str, store: str, refresh_seconds: float) -> Path:
    path = tmp / f"{Path(table).stem}.toml"
    path.write_text(
        f'[model]\npath = "{MODEL}"\n[space]\ntype = "table"\npath = "{table}"\nkey_column = "id"\n'
        f'[store]\nurl = "{store}"\n[serve]\nrefresh_seconds = {refresh_seconds}\nlog_format = "text"\n'
    )
    return path


def cli(*args: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "precompute.cli", *args]
    return subprocess.run(command, env=ENV, capture_output=True, text=True, check=False, **kwargs)


def precompute_run(config: Path) -> dict[str, Any]:
    summary = config.with_suffix(".run.json")
    done = cli("run", "-c", str(config), "-q", "--summary-json", str(summary), "--force")
    if done.returncode != 0:
        raise SystemExit(f"precompute run failed ({done.returncode}): {done.stderr[-2000:]}")
    data: dict[str, Any] = json.loads(summary.read_text())
    return data


def refresh_file(config: Path, source: Path) -> tuple[float, dict[str, Any]]:
    os.utime(source)  # a new modification time: the file is read again, not resumed after its end
    start = time.perf_counter()
    done = cli("refresh", "-c", str(config), "-q", "--from", str(source), "--json")
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"precompute refresh failed ({done.returncode}): {done.stderr[-2000:]}")
    data: dict[str, Any] = json.loads(done.stdout)
    return wall, data


def scrape(port: int, name: str) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    found = re.search(rf"^{name} ([0-9.e+]+)$", text, re.M)
    return float(found.group(1)) if found else 0.0


def wait_http(port: int, path: str, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise SystemExit(f"nothing answered http://127.0.0.1:{port}{path} in {timeout:.0f} s")
        time.sleep(0.1)


class Poller(threading.Thread):
    """Polls the API for sampled keys until each answers its new value; records XADD -> fresh answer."""

    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        self.waiting: dict[str, tuple[float, bytes]] = {}  # key -> (sent at, the old prediction)
        self.lags: list[float] = []
        self.lock = threading.Lock()
        self.done = threading.Event()

    def watch(self, key: str, sent_at: float, old: bytes) -> None:
        with self.lock:
            self.waiting[key] = (sent_at, old)

    def run(self) -> None:
        while not self.done.is_set():
            with self.lock:
                keys = list(self.waiting)
            if not keys:
                time.sleep(0.001)
                continue
            time.sleep(0.002)  # a sweep every few ms: polling flat out would starve the refresh of CPU
            for key in keys:
                self.conn.request("GET", f"/predict/{key}")
                body = self.conn.getresponse().read()
                sent_at, old = self.waiting[key]
                prediction = json.loads(body).get("prediction")
                if prediction is not None and json.dumps(prediction).encode() != old:
                    self.lags.append(time.perf_counter() - sent_at)
                    with self.lock:
                        del self.waiting[key]

    def pending(self) -> int:
        with self.lock:
            return len(self.waiting)


def old_prediction(port: int, key: str) -> bytes:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/predict/{key}", timeout=5) as r:
        return json.dumps(json.loads(r.read())["prediction"]).encode()


def stream_round(
    client: Any, stream: str, rate: float, rows: dict[str, list[Any]], metrics_port: int, api_port: int, round_: int
) -> dict[str, float]:
    """Send len(rows) messages at ``rate`` (0: as fast as possible); returns the round's figures."""
    n = len(rows["id"])
    every = max(1, n // 200)
    sampled = set(range(0, n, every))
    olds = {i: old_prediction(api_port, rows["id"][i]) for i in sampled}  # the API's answer before (cached)
    poller = Poller(api_port)
    poller.start()
    before = scrape(metrics_port, "precompute_refresh_records_total")
    messages = [{name: str(values[i]) for name, values in rows.items()} for i in range(n)]
    start = time.perf_counter()
    if rate == 0:
        pipe = client.pipeline(transaction=False)
        for i, message in enumerate(messages):
            pipe.xadd(stream, message)
            if i in sampled:
                poller.watch(rows["id"][i], time.perf_counter(), olds[i])
            if (i + 1) % 500 == 0:
                pipe.execute()
        pipe.execute()
    else:
        for i, message in enumerate(messages):
            due = start + i / rate
            pause = due - time.perf_counter()
            if pause > 0:
                time.sleep(pause)
            sent = time.perf_counter()
            client.xadd(stream, message)
            if i in sampled:
                poller.watch(rows["id"][i], sent, olds[i])
    sending = time.perf_counter() - start
    deadline = time.perf_counter() + 300
    while scrape(metrics_port, "precompute_refresh_records_total") < before + n:
        if time.perf_counter() > deadline:
            raise SystemExit(f"round {round_}: the refresh did not write {n} answers within 300 s of the sending")
        time.sleep(0.01)
    total = time.perf_counter() - start
    while poller.pending() and time.perf_counter() < deadline:
        time.sleep(0.01)
    poller.done.set()
    poller.join()
    lags = sorted(poller.lags)
    return {
        "rate": rate,
        "messages": n,
        "sending_s": sending,
        "total_s": total,
        "over_s": total - sending,
        "ratio": total / sending,
        "entities_per_s": n / total,
        "fresh_p50_ms": 1000 * float(np.quantile(lags, 0.5)) if lags else float("nan"),
        "fresh_p99_ms": 1000 * float(np.quantile(lags, 0.99)) if lags else float("nan"),
        "fresh_samples": len(lags),
    }


def changed(rows: dict[str, list[Any]], round_: int) -> dict[str, list[Any]]:
    """The same entities, each with a gestation length that moves its answer."""
    weeks = [float(30 + (w - 30 + 3 + round_) % 14) for w in rows["gestation_weeks"]]
    return {**rows, "gestation_weeks": weeks}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=10_000, help="changed entities per streaming round")
    parser.add_argument("--rates", type=float, nargs="+", default=[50, 100, 500, 0], help="msg/s; 0: max")
    parser.add_argument("--max-runs", type=int, default=3, help="rounds at the max rate (median)")
    parser.add_argument("--entities", type=int, default=100_000, help="entities of the refresh-vs-run comparison")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--refresh-seconds", type=float, default=0.2, help="[serve] refresh_seconds of the API")
    parser.add_argument("--store", help="a store URL (default: a fresh SQLite file)")
    parser.add_argument("--skip-stream", action="store_true")
    parser.add_argument("--skip-run", action="store_true")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="precompute-bench-refresh-") as root:
        tmp = Path(root)
        store = args.store or f"sqlite:///{tmp / 'store.db'}"
        redis = RedisProcess(redis_binary(), tmp / "redis").start()
        try:
            if not args.skip_stream:
                streaming(args, tmp, store, redis)
            if not args.skip_run:
                against_run(args, tmp, store, redis)
        finally:
            redis.stop()


def streaming(args: argparse.Namespace, tmp: Path, store: str, redis: RedisProcess) -> None:
    import redis as redis_py

    rows = entities(args.messages, seed=1)
    table = tmp / "stream.parquet"
    pq.write_table(pa.table(rows), table)
    config = write_config(tmp, str(table), store, args.refresh_seconds)
    summary = precompute_run(config)
    print(f"live version {summary['version']}: {summary['rows']:,} entities, published by precompute run")
    api_port, metrics_port = free_port(), free_port()
    stream_url = f"redis://127.0.0.1:{redis.port}/0?stream=changes&group=refresh"
    serve = subprocess.Popen(
        [sys.executable, "-m", "precompute.cli", "serve", "-c", str(config), "-q", "--port", str(api_port)],
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    command = [sys.executable, "-m", "precompute.cli", "refresh", "-c", str(config), "-q", "--from", stream_url]
    follow = subprocess.Popen(
        [*command, "--follow", "--metrics-port", str(metrics_port)],
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    client = redis_py.Redis(port=redis.port)
    try:
        wait_http(api_port, "/readyz")
        wait_http(metrics_port, "/metrics")  # served from the start, while the model still loads
        client.xadd("changes", {name: str(values[0]) for name, values in rows.items()})  # running once it is written
        deadline = time.monotonic() + 120
        while scrape(metrics_port, "precompute_refresh_records_total") < 1:
            if time.monotonic() > deadline or follow.poll() is not None:
                raise SystemExit(
                    f"precompute refresh --follow is not running: {follow.stderr.read() if follow.stderr else ''}"
                )
            time.sleep(0.05)
        results = []
        round_ = 0
        for rate in args.rates:
            for _ in range(args.max_runs if rate == 0 else 1):
                round_ += 1
                figures = stream_round(client, "changes", rate, changed(rows, round_), metrics_port, api_port, round_)
                results.append(figures)
                label = "max" if rate == 0 else f"{rate:g}"
                print(
                    f"  rate {label:>4} msg/s: {figures['messages']:,} messages sent in {figures['sending_s']:.2f}s, "
                    f"all written {figures['total_s']:.2f}s after the first (+{figures['over_s']:.2f}s, "
                    f"x{figures['ratio']:.3f}), {figures['entities_per_s']:,.0f} entities/s; fresh in the API "
                    f"p50 {figures['fresh_p50_ms']:.0f} ms, p99 {figures['fresh_p99_ms']:.0f} ms "
                    f"({figures['fresh_samples']} sampled)",
                    flush=True,
                )
        maxed = [r for r in results if r["rate"] == 0]
        if maxed:
            print(
                f"max rate, median of {len(maxed)}: {statistics.median(r['entities_per_s'] for r in maxed):,.0f} "
                f"entities/s, +{statistics.median(r['over_s'] for r in maxed):.2f}s over the sending time"
            )
        print(f"pending entries at the end: {client.xpending('changes', 'refresh')['pending']}")
    finally:
        follow.terminate()
        serve.terminate()
        follow.wait(timeout=30)
        serve.wait(timeout=30)


def against_run(args: argparse.Namespace, tmp: Path, store: str, redis: RedisProcess) -> None:
    import redis as redis_py

    rows = entities(args.entities, seed=2, prefix="r-")
    table = tmp / "compare.parquet"
    pq.write_table(pa.table(rows), table)
    config = write_config(tmp, str(table), store.replace("store.db", "compare.db"), args.refresh_seconds)
    source = tmp / "compare-changes.parquet"
    pq.write_table(pa.table(changed(rows, 1)), source)
    run_rates, stage_rates, file_rates, file_loop_rates, stream_rates = [], [], [], [], []
    client = redis_py.Redis(port=redis.port)
    for i in range(args.runs):
        summary = precompute_run(config)
        run_rates.append(summary["rows"] / summary["seconds"]["total"])
        stage_rates.append(summary["rows"] / summary["seconds"]["score"])
        wall, refreshed = refresh_file(config, source)
        assert refreshed["written"] == args.entities, refreshed
        file_rates.append(args.entities / wall)
        file_loop_rates.append(refreshed["records_per_second"])
        stream = f"compare-{i}"
        pipe = client.pipeline(transaction=False)
        for j, message in enumerate(zip(*changed(rows, 2 + i).values(), strict=True)):
            pipe.xadd(stream, dict(zip(rows, map(str, message), strict=True)))
            if (j + 1) % 1000 == 0:
                pipe.execute()
        pipe.execute()
        url = f"redis://127.0.0.1:{redis.port}/0?stream={stream}&group=refresh"
        start = time.perf_counter()
        done = cli("refresh", "-c", str(config), "-q", "--from", url, "--json")
        wall = time.perf_counter() - start
        if done.returncode != 0:
            raise SystemExit(done.stderr[-2000:])
        stream_rates.append(json.loads(done.stdout)["records_per_second"])
        print(
            f"  run {i + 1}: precompute run {run_rates[-1]:,.0f} rows/s end to end ({stage_rates[-1]:,.0f} in its "
            f"score stage); refresh from Parquet {file_rates[-1]:,.0f} rows/s end to end "
            f"({file_loop_rates[-1]:,.0f} once loaded), from a stream {stream_rates[-1]:,.0f} rows/s once loaded "
            f"({wall:.1f}s wall)",
            flush=True,
        )
    run, stage = statistics.median(run_rates), statistics.median(stage_rates)
    file_, loop, stream_ = (statistics.median(x) for x in (file_rates, file_loop_rates, stream_rates))
    print(f"{args.entities:,} entities, medians of {args.runs}:")
    print(f"  precompute run, end to end        {run:>10,.0f} rows/s   1.00")
    print(f"  precompute run, score stage       {stage:>10,.0f} rows/s   {stage / run:.2f}")
    print(f"  refresh --from Parquet, end to end {file_:>9,.0f} rows/s   {file_ / run:.2f}")
    print(f"  refresh --from Parquet, loop       {loop:>10,.0f} rows/s   {loop / run:.2f}")
    print(f"  refresh --from a stream, loop      {stream_:>9,.0f} rows/s   {stream_ / run:.2f}")


if __name__ == "__main__":
    main()
