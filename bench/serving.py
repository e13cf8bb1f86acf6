"""Serving-path figures: online fallback under a miss storm, the hot-key cache on a Zipf stream, the cost of
/metrics, and the batch-size policies. Every figure is printed next to its baseline from the same run, as
a ratio; each is the median of --runs runs.

    python bench/serving.py [--config examples/babyweight/precompute.toml] [--store URL] [--runs 3]
                            [--seconds 5] [--only storm,concurrent,cache,metrics,policy]

Needs `wrk` (Debian package `wrk`) and a published version in the store (`precompute run` first). With
`redis-server` on the PATH, the cache figures are also taken on Redis (the live version is copied into a
throwaway server on a free port). Servers are `precompute serve` processes (access log off), one at a time,
on generated copies of the config that differ only in `[serve]` (and, for the heavy model, `[model]`).

Sections:
  storm       wrk, 64 connections, every request a distinct key off the grid: fallback on, cache off;
              batching (adaptive, up to 256) against one request per model call (batch_max_size = 1).
              Two models: the babyweight example (~0.4 ms a call, flat in batch size) and a heavier
              dense model built here (4 x 2048-wide layers: a call at batch 1 costs milliseconds).
  concurrent  N requests sent at once (one connection each) and the model calls they cost.
  cache       hits only, keys drawn from Zipf(1.1) over the whole grid: hot cache on, small, off.
  metrics     hit throughput with [serve] metrics = false, on, and on while /metrics is scraped
              every 1 s and every 0.1 s.
  policy      in-process, no HTTP: the batcher on a synthetic model whose per-row cost quadruples
              half-way, 200 closed-loop clients, target 20 ms: AIMD, latency fit, fixed 256; and
              max_wait 0 vs 2 ms for a single client.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import tomllib
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lookup import WRK_SCRIPT  # noqa: E402  (bench/lookup.py, beside this script)

from precompute.config import Config, load_config  # noqa: E402
from precompute.space import GridSpace  # noqa: E402
from tests.servers import free_port, wait_for_port  # noqa: E402

HIT_SERVE = {"cache_bytes": 0, "negative_ttl_seconds": 0}


# -- servers and load -----------------------------------------------------------------------------


def get(port: int, path: str, timeout: float = 5) -> bytes:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as response:
        body: bytes = response.read()
        return body


def wait_ready(port: int, proc: subprocess.Popen[bytes], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited: {proc.stderr.read().decode()[-2000:] if proc.stderr else ''}")
        try:
            get(port, "/readyz", timeout=1)
            return
        except OSError:
            time.sleep(0.2)
    raise TimeoutError(f"server on {port} not ready after {timeout} s")


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {_toml_value(v)}" for k, v in value.items()) + " }"
    raise TypeError(f"cannot write {value!r} as TOML")


def write_config(source: Path, directory: Path, serve: dict[str, Any], model: Path | None = None) -> Path:
    """A copy of the config with absolute paths and ``[serve]`` fields replaced (TOML written by hand: the
    standard library reads TOML but does not write it)."""
    raw = tomllib.loads(source.read_text())
    raw["model"]["path"] = str(model or (source.parent / raw["model"]["path"]).resolve())
    if model is not None:
        raw["model"].pop("outputs", None)
    raw.pop("store", None)  # the URL comes from PRECOMPUTE_STORE
    raw["serve"] = {**raw.get("serve", {}), **serve}
    lines: list[str] = []
    for table, fields in raw.items():
        plain = {k: v for k, v in fields.items() if not (isinstance(v, list) and v and isinstance(v[0], dict))}
        lines.append(f"[{table}]")
        lines += [f"{k} = {_toml_value(v)}" for k, v in plain.items()]
        for name, rows in fields.items():
            if name not in plain:
                for row in rows:
                    lines.append(f"[[{table}.{name}]]")
                    lines += [f"{k} = {_toml_value(v)}" for k, v in row.items()]
    path = directory / f"serve-{len(list(directory.glob('serve-*.toml')))}.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


@contextmanager
def server(config_path: Path, store: str) -> Iterator[int]:
    port = free_port()
    cmd = [sys.executable, "-m", "precompute.cli", "serve", "--config", str(config_path), "--port", str(port), "-q"]
    env = {**os.environ, "PRECOMPUTE_STORE": store, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_ready(port, proc)
        yield port
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def _ms(text: str) -> float:
    match = re.match(r"([\d.]+)(us|ms|s|m)$", text)
    if match is None:
        print(f"   (wrk printed a latency this script cannot read: {text!r})", file=sys.stderr)
        return float("nan")
    value, unit = match.groups()
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}[unit]


def wrk(port: int, script: Path, connections: int, seconds: float) -> dict[str, float]:
    cmd = ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--timeout", "10s", "--latency", "-s", str(script)]
    out = subprocess.run([*cmd, f"http://127.0.0.1:{port}"], capture_output=True, text=True, check=True).stdout
    found = {name: re.search(pattern, out) for name, pattern in (("rps", r"Requests/sec:\s+([\d.]+)"),)}
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    total = re.search(r"(\d+) requests in", out)
    return {
        "rps": float(found["rps"].group(1)) if found["rps"] else float("nan"),
        # Anchored to the start of a line: "89.99%" at the end of the Stdev column, then the next line, would
        # match an unanchored "99%\s+" and read "Req/Sec" as the latency.
        "p50": _ms(m.group(1)) if (m := re.search(r"^\s*50%\s+(\S+)", out, re.M)) else float("nan"),
        "p99": _ms(m.group(1)) if (m := re.search(r"^\s*99%\s+(\S+)", out, re.M)) else float("nan"),
        "errors": float(errors.group(1)) if errors else 0.0,
        "requests": float(total.group(1)) if total else float("nan"),
    }


def scrape(port: int) -> dict[str, float]:
    """Sample lines of /metrics without labels, plus the labelled ones keyed by their full name."""
    values = {}
    for line in get(port, "/metrics").decode().splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            values[name] = float(value)
    return values


def key_script(directory: Path, name: str, keys: Sequence[str]) -> Path:
    keys_file = directory / f"{name}.txt"
    keys_file.write_text("\n".join(keys) + "\n")
    script = directory / f"{name}.lua"
    script.write_text(WRK_SCRIPT % keys_file)
    return script


@contextmanager
def servers(paths: dict[str, Path], store: str) -> Iterator[dict[str, int]]:
    """Every variant's server at once: idle ones cost nothing, and runs can then alternate between them."""
    with ExitStack() as stack:
        yield {name: stack.enter_context(server(path, store)) for name, path in paths.items()}


Measure = Callable[[str, int, int], dict[str, float]]


def interleaved(
    ports: dict[str, int], connections: Sequence[int], runs: int, measure: Measure
) -> dict[tuple[str, int], list[dict[str, float]]]:
    """``runs`` rounds; in each, every variant in turn at every connection count. On a shared machine the
    load drifts over minutes: alternating variants run by run keeps their ratios fair."""
    results: dict[tuple[str, int], list[dict[str, float]]] = {}
    for name, port in ports.items():
        measure(name, port, max(connections))  # warm-up, not counted
    for _ in range(runs):
        for c in connections:
            for name, port in ports.items():
                results.setdefault((name, c), []).append(measure(name, port, c))
    return results


def paired(results: dict[tuple[str, int], list[dict[str, float]]], name: str, base: str, c: int) -> float:
    """Median over rounds of the per-round throughput ratio of ``name`` to ``base``."""
    pairs = zip(results[(name, c)], results[(base, c)], strict=True)
    return statistics.median(a["rps"] / b["rps"] if b["rps"] else float("inf") for a, b in pairs)


def _ratio(value: float, base: float) -> str:
    return f"{value / base:.1f}x" if base else ("same" if not value else "inf")


def median(runs: list[dict[str, float]], field: str) -> float:
    return statistics.median(r[field] for r in runs)


# -- models ---------------------------------------------------------------------------------------


def heavy_model(path: Path) -> Path:
    """A dense model with the babyweight signature: 4 layers 2048 wide (~13 M weights), so that one call
    reads ~50 MB of weights: what batching amortizes in larger real models."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    specs = [
        tf.TensorSpec([None], tf.string, name="is_male"),
        tf.TensorSpec([None], tf.float32, name="mother_age"),
        tf.TensorSpec([None], tf.string, name="plurality"),
        tf.TensorSpec([None], tf.float32, name="gestation_weeks"),
    ]
    rng = tf.random.Generator.from_seed(0)

    class Heavy(tf.Module):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__()
            widths = [4, 2048, 2048, 2048, 2048, 1]
            self.layers = [tf.Variable(rng.normal([a, b]) / (a**0.5)) for a, b in itertools.pairwise(widths)]

        @tf.function(input_signature=specs, autograph=False)  # type: ignore[untyped-decorator]
        def serve(self, is_male: Any, mother_age: Any, plurality: Any, gestation_weeks: Any) -> dict[str, Any]:
            male = tf.cast(tf.equal(is_male, "True"), tf.float32)
            single = tf.cast(tf.equal(plurality, "Single(1)"), tf.float32)
            x = tf.stack([male, mother_age / 50.0, single, gestation_weeks / 47.0], axis=1)
            for layer in self.layers[:-1]:
                x = tf.nn.relu(x @ layer)
            return {"weight_pounds": 7.0 + tf.tanh((x @ self.layers[-1])[:, 0])}

    module = Heavy()
    tf.saved_model.save(module, str(path), signatures={"serving_default": module.serve})
    return path


def off_grid_keys(space: GridSpace, n: int) -> list[str]:
    """``n`` distinct keys that decode but lie beyond the last value of the grid's first numeric feature."""
    import numpy as np

    from precompute.space import Range

    numeric = [d for d in space.dimensions if isinstance(d, Range)]
    if not numeric:
        raise SystemExit("the miss storm needs a numeric feature to step off the grid")
    first = numeric[0]
    ids = np.arange(space.size)
    bases = [space.template.split(space.key_for_id(int(i))) for i in ids[space.indices(ids)[first.name] == 0]]
    keys: list[str] = []
    step = 1
    while len(keys) < n:
        for labels in bases:
            assert labels is not None
            keys.append(space.template.render({**labels, first.name: first.render(first.stop + first.step * step)}))
        step += 1
    return keys[:n]


# -- sections -------------------------------------------------------------------------------------


def storm(args: argparse.Namespace, config: Config, space: GridSpace, tmp: Path) -> None:
    script = key_script(tmp, "offgrid", off_grid_keys(space, 60_000))
    common = {**HIT_SERVE, "fallback": "on", "deadline_ms": 2000.0, "batch_target_ms": 100.0}
    models: list[tuple[str, Path | None]] = [("babyweight", None), ("dense 4x2048", heavy_model(tmp / "heavy"))]
    modes = {
        "batched (aimd, <=256)": {"batch_max_size": 256, "batch_policy": "aimd"},
        "one at a time": {"batch_max_size": 1, "batch_policy": "fixed"},
    }
    base = "one at a time"

    def measure(name: str, port: int, connections: int) -> dict[str, float]:
        before = scrape(port)
        result = wrk(port, script, connections, args.seconds)
        after = scrape(port)
        calls = after["precompute_model_calls_total"] - before["precompute_model_calls_total"]
        result["calls_per_request"] = calls / max(result["requests"], 1)
        return result

    print(f"\n== miss storm: wrk 64 connections, every request a distinct off-grid key, {args.runs} x {args.seconds}s")
    print(f"{'model':<14} {'mode':<22} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'calls/req':>9} {'errors':>7} x base")
    for model_name, model in models:
        paths = {mode: write_config(args.config, tmp, {**common, **serve}, model) for mode, serve in modes.items()}
        with servers(paths, args.store) as ports:
            results = interleaved(ports, (64,), args.runs, measure)
        for mode in modes:
            row = {f: median(results[(mode, 64)], f) for f in ("rps", "p50", "p99", "calls_per_request", "errors")}
            print(
                f"{model_name:<14} {mode:<22} {row['rps']:>8,.0f} {row['p50']:>8.2f} {row['p99']:>8.2f} "
                f"{row['calls_per_request']:>9.3f} {row['errors']:>7.0f} {paired(results, mode, base, 64):>5.1f}x"
            )


def concurrent(args: argparse.Namespace, config: Config, space: GridSpace, tmp: Path) -> None:
    import httpx2 as httpx

    keys = off_grid_keys(space, 4096)
    common = {**HIT_SERVE, "fallback": "on", "deadline_ms": 5000.0, "batch_target_ms": 100.0, "max_pending": 8192}
    print("\n== N concurrent misses (one connection each, sent at once) and the model calls they cost")
    print(f"{'N':>5} {'mode':<22} {'model calls':>11} {'calls/N':>8} {'batch limit':>11}")
    for mode, serve in (("batched (aimd, <=256)", {"batch_max_size": 256}), ("one at a time", {"batch_max_size": 1})):
        path = write_config(args.config, tmp, {**common, **serve})
        with server(path, args.store) as port:
            offset = 0
            for n in (16, 64, 256):

                async def burst(batch: list[str], port: int = port) -> None:
                    limits = httpx.Limits(max_connections=len(batch), max_keepalive_connections=len(batch))
                    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", limits=limits, timeout=30) as c:
                        responses = await asyncio.gather(*(c.get(f"/predict/{k}") for k in batch))
                    bad = [r.status_code for r in responses if r.status_code != 200]
                    if bad:
                        raise RuntimeError(f"{len(bad)} requests failed: {bad[:5]}")

                calls: list[float] = []
                biggest = 0.0
                for _ in range(args.runs):
                    before = scrape(port)
                    asyncio.run(burst(keys[offset : offset + n]))
                    offset += n
                    after = scrape(port)
                    calls.append(after["precompute_model_calls_total"] - before["precompute_model_calls_total"])
                    biggest = max(biggest, after["precompute_batch_limit"])
                calls_n = statistics.median(calls)
                print(f"{n:>5} {mode:<22} {calls_n:>11.0f} {calls_n / n:>8.3f} {biggest:>11.0f}")


def zipf_keys(space: GridSpace, n: int, s: float = 1.1, seed: int = 0) -> list[str]:
    import numpy as np

    rng = np.random.default_rng(seed)
    weights = 1.0 / np.arange(1, space.size + 1) ** s
    ranks = rng.choice(space.size, size=n, p=weights / weights.sum())
    ids = rng.permutation(space.size)[ranks]  # which keys are hot: random, not the first rows of the grid
    return [space.key_for_id(int(i)) for i in ids]


@contextmanager
def redis_copy(config: Config, space: GridSpace, tmp: Path) -> Iterator[str | None]:
    """The live version copied into a throwaway redis-server, or None without one."""
    binary = shutil.which("redis-server")
    if binary is None:
        yield None
        return
    from precompute.adapters import open_backend
    from precompute.store import Versions
    from precompute.store.codec import encode_key

    port = free_port()
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(tmp)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        url = f"redis://127.0.0.1:{port}/0"
        wait_for_port(port, proc, timeout=10)
        source = open_backend(config.store_url)
        live = source.get_alias()
        assert live is not None, "nothing is published in the store"
        keys = [encode_key(space.key_for_id(i)) for i in range(space.size)]
        values = source.read(live, keys)
        target = Versions(open_backend(url))
        record = target.begin({"copied_from": live})
        target.backend.write(record.version, [(k, v) for k, v in zip(keys, values, strict=True) if v is not None])
        target.mark_ready(record, len(keys))
        target.publish(record)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def cache(args: argparse.Namespace, config: Config, space: GridSpace, tmp: Path) -> None:
    script = key_script(tmp, "zipf", zipf_keys(space, 200_000))
    variants = {
        "off": {"cache_bytes": 0},
        "small (10% of keys)": {"cache_bytes": int(space.size * 0.1 * 330)},
        "on (64 MiB)": {"cache_bytes": 64 * 1024 * 1024},
    }

    def measure(name: str, port: int, connections: int) -> dict[str, float]:
        before = scrape(port)
        result = wrk(port, script, connections, args.seconds)
        after = scrape(port)
        hits = after.get("precompute_cache_hits_total", 0.0) - before.get("precompute_cache_hits_total", 0.0)
        misses = after.get("precompute_cache_misses_total", 0.0) - before.get("precompute_cache_misses_total", 0.0)
        result["hit_ratio"] = hits / (hits + misses) if hits + misses else 0.0
        return result

    with redis_copy(config, space, tmp) as redis_url:
        stores = [("sqlite", args.store)] + ([("redis", redis_url)] if redis_url else [])
        print(f"\n== hot-key cache: hits only, Zipf(1.1) over {space.size:,} keys, {args.runs} x {args.seconds}s")
        if redis_url is None:
            print("   (redis-server not found: SQLite only)")
        print(
            f"{'store':<7} {'cache':<20} {'conns':>5} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'hit ratio':>9} x off"
        )
        for store_name, url in stores:
            assert url is not None
            paths = {name: write_config(args.config, tmp, serve) for name, serve in variants.items()}
            with servers(paths, url) as ports:
                results = interleaved(ports, (1, 16), args.runs, measure)
            for connections in (1, 16):
                for variant in variants:
                    r = {f: median(results[(variant, connections)], f) for f in ("rps", "p50", "p99", "hit_ratio")}
                    print(
                        f"{store_name:<7} {variant:<20} {connections:>5} {r['rps']:>8,.0f} {r['p50']:>8.3f} "
                        f"{r['p99']:>8.3f} {r['hit_ratio']:>9.3f} {paired(results, variant, 'off', connections):>5.2f}x"
                    )


def metrics(args: argparse.Namespace, config: Config, space: GridSpace, tmp: Path) -> None:
    import numpy as np

    ids = np.random.default_rng(1).choice(space.size, min(2000, space.size), replace=False)
    script = key_script(tmp, "uniform", [space.key_for_id(int(i)) for i in ids])
    variants: dict[str, tuple[bool, float | None]] = {
        "metrics = false": (False, None),
        "metrics = true": (True, None),
        "true, scraped 1/s": (True, 1.0),
        "true, scraped 10/s": (True, 0.1),
    }
    scrape_ms: list[float] = []

    def measure(name: str, port: int, connections: int) -> dict[str, float]:
        stop = threading.Event()
        thread = threading.Thread(target=_scraper, args=(port, variants[name][1], stop, scrape_ms), daemon=True)
        thread.start()
        try:
            return wrk(port, script, connections, args.seconds)
        finally:
            stop.set()
            thread.join()

    print(f"\n== cost of /metrics on hit throughput (16 connections, hot cache on), {args.runs} x {args.seconds}s")
    print(f"{'variant':<20} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'vs off':>7}")
    paths = {name: write_config(args.config, tmp, {"metrics": enabled}) for name, (enabled, _) in variants.items()}
    with servers(paths, args.store) as ports:
        results = interleaved(ports, (16,), args.runs, measure)
    for name in variants:
        row = {f: median(results[(name, 16)], f) for f in ("rps", "p50", "p99")}
        ratio = paired(results, name, "metrics = false", 16)
        print(f"{name:<20} {row['rps']:>8,.0f} {row['p50']:>8.3f} {row['p99']:>8.3f} {ratio:>6.0%}")
    if scrape_ms:
        print(f"   one scrape of /metrics under load: median {statistics.median(scrape_ms):.2f} ms")
    per_request = statistics.median(_instrumentation_us() for _ in range(5))
    base_rps = median(results[("metrics = false", 16)], "rps")
    print(
        f"   what a hit pays for metrics, in-process: {per_request:.2f} us (4 clock reads, 2 histogram observations, "
        f"1 counter), {per_request * base_rps / 1e6:.1%} of one core at {base_rps:,.0f} req/s"
    )


def _instrumentation_us(n: int = 200_000) -> float:
    from precompute.api.metrics import Metrics

    m = Metrics()
    clock = time.perf_counter
    started = clock()
    for _ in range(n):
        t0 = clock()
        t1 = clock()
        m.store_seconds.observe(clock() - t1)
        m.request("cache", 200, clock() - t0)
    return (clock() - started) / n * 1e6


def _scraper(port: int, every: float | None, stop: threading.Event, took_ms: list[float]) -> None:
    """What Prometheus does, at ``every`` seconds (or nothing with None)."""
    while every is not None and not stop.wait(every):
        started = time.perf_counter()
        get(port, "/metrics")
        took_ms.append((time.perf_counter() - started) * 1000)


def policy(args: argparse.Namespace) -> None:
    from precompute.api.batching import AIMD, Batcher, Fixed, LatencyFit, Overloaded, Policy
    from precompute.api.metrics import Metrics

    target, deadline, clients = 0.050, 0.200, 300
    fast, slow = 0.00005, 0.001
    per_row = [fast]
    durations: list[float] = []

    def call(items: Sequence[int]) -> list[int]:
        took = 0.001 + per_row[0] * len(items)
        time.sleep(took)  # sleeps release the GIL, as TensorFlow kernels do
        durations.append(took)
        return list(items)

    async def closed_loop(
        make: Callable[[], Policy], seconds: float, n_clients: int, max_wait: float, change: bool = True
    ) -> dict[str, float]:
        """Answered/s and latency in each half (the model slows down at half time when ``change``)."""
        batcher: Batcher[int, int] = Batcher(call, make(), Metrics(), max_wait=max_wait, max_pending=100_000)
        batcher.start()
        start = time.perf_counter()
        half = start + seconds / 2
        answered: list[tuple[float, float]] = []  # (when, latency)
        late = [0, 0]
        per_row[0] = fast
        durations.clear()

        async def client() -> None:
            while (started := time.perf_counter()) < start + seconds:
                try:
                    await asyncio.wait_for(batcher.submit(1, deadline), deadline)
                    answered.append((started, time.perf_counter() - started))
                except (TimeoutError, Overloaded):
                    late[started >= half] += 1

        async def slow_down() -> None:
            await asyncio.sleep(seconds / 2)
            per_row[0] = slow if change else fast

        await asyncio.gather(slow_down(), *(client() for _ in range(n_clients)))
        await batcher.close(1.0)
        result = {"over": sum(d > target for d in durations) / max(len(durations), 1)}
        for phase, (low, high) in enumerate(((start, half), (half, start + seconds))):
            ordered = sorted(latency for when, latency in answered if low <= when < high)
            result[f"rps{phase}"] = len(ordered) / (seconds / 2)
            result[f"late{phase}"] = late[phase] / (seconds / 2)
            result[f"p50{phase}"] = ordered[len(ordered) // 2] * 1000 if ordered else float("nan")
            result[f"p99{phase}"] = ordered[int(len(ordered) * 0.99)] * 1000 if ordered else float("nan")
        return result

    seconds = max(6.0, float(args.seconds))
    print(
        f"\n== batch size policies (in-process batcher): {clients} closed-loop clients, deadline "
        f"{deadline * 1000:.0f} ms, target {target * 1000:.0f} ms, {args.runs} runs of {seconds:.0f} s\n"
        f"   synthetic model: 1 ms + {fast * 1e6:.0f} us/row, then {slow * 1e6:.0f} us/row for the second half; "
        "answered = within the deadline"
    )
    print(
        f"{'policy':<12} {'answered/s':>10} {'p99 ms':>7}  | slower: {'answered/s':>10} {'late/s':>7} {'p99 ms':>7} "
        f"{'calls>target':>12} {'x fixed':>7}"
    )
    makes: dict[str, Callable[[], Policy]] = {
        "fixed 256": lambda: Fixed(256),
        "aimd": lambda: AIMD(256, target),
        "latency fit": lambda: LatencyFit(256, target),
    }
    rows = {}
    for name, make in makes.items():
        runs = [asyncio.run(closed_loop(make, seconds, clients, 0.0)) for _ in range(args.runs)]
        rows[name] = {f: median(runs, f) for f in runs[0]}
    base = rows["fixed 256"]["rps1"]
    for name, r in rows.items():
        print(
            f"{name:<12} {r['rps0']:>10,.0f} {r['p990']:>7.1f}  |         {r['rps1']:>10,.0f} {r['late1']:>7,.0f} "
            f"{r['p991']:>7.1f} {r['over']:>12.1%} {_ratio(r['rps1'], base):>7}"
        )
    print("\n   max_wait (aimd, the fast model throughout): what waiting for a batch to fill adds")
    print(f"{'clients':>7} {'max_wait':>9} {'answered/s':>10} {'p50 ms':>8} {'p99 ms':>8}")
    for n_clients in (1, 8):
        for wait in (0.0, 0.002):
            runs = [
                asyncio.run(closed_loop(lambda: AIMD(256, target), 2.0, n_clients, wait, change=False))
                for _ in range(args.runs)
            ]
            rps, p50, p99 = (median(runs, f) for f in ("rps0", "p500", "p990"))
            print(f"{n_clients:>7} {wait * 1000:>6.0f} ms {rps:>10,.0f} {p50:>8.2f} {p99:>8.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=ROOT / "examples/babyweight/precompute.toml")
    parser.add_argument("--store", help="store URL (default: the config's; PRECOMPUTE_STORE also works)")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--only", default="storm,concurrent,cache,metrics,policy")
    args = parser.parse_args()
    sections = set(args.only.split(","))
    if sections - {"policy"} and not shutil.which("wrk"):
        sys.exit("wrk is not installed: apt-get install wrk")
    env = dict(os.environ)
    if args.store:
        env["PRECOMPUTE_STORE"] = args.store
    config = load_config(args.config, env=env)
    args.store = config.store.url
    space = config.space
    if not isinstance(space, GridSpace):
        sys.exit("this benchmark draws keys from a grid space")
    print(f"store: {config.store_url.redacted()}   space: {space.size:,} keys   cpus: {os.cpu_count()}")
    with tempfile.TemporaryDirectory(prefix="precompute-serving-") as directory:
        tmp = Path(directory)
        if "storm" in sections:
            storm(args, config, space, tmp)
        if "concurrent" in sections:
            concurrent(args, config, space, tmp)
        if "cache" in sections:
            cache(args, config, space, tmp)
        if "metrics" in sections:
            metrics(args, config, space, tmp)
        if "policy" in sections:
            policy(args)


if __name__ == "__main__":
    main()
