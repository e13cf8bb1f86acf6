"""Serving-path figures: online fallback under a miss storm, the hot-key cache on a Zipf stream, the cost of
/metrics, and the batch-size policies. Every figure is printed next to its baseline from the same run, as
a ratio; each is the median of --runs runs.

    python bench/serving.py [--config examples/babyweight/precompute.toml] [--store URL] [--runs 3]
                            [--seconds 5] [--only storm,concurrent,cache,batch,metrics,policy,workers]
                            [--against DIR] [--heavy] [--loop asyncio|uvloop]

Needs `wrk` (Debian package `wrk`) and a published version in the store (`precompute run` first). With
`redis-server` on the PATH, the cache figures are also taken on Redis (the live version is copied into a
throwaway server on a free port). Servers are `precompute serve` processes (access log off), one at a time,
on generated copies of the config that differ only in `[serve]` (and, for the heavy model, `[model]`).

Sections:
  storm       wrk, 64 connections, every miss request a distinct key off the grid (fallback on, the default
              200 ms deadline: a late answer is a 503, counted as non-2xx), in the same rounds as hits
              (grid keys: the hot cache on, and the store read with it off), so the storm's rate is printed
              as a ratio to the hit rate of the same rounds; batching (adaptive, up to 256) and one request
              per model call (batch_max_size = 1). The babyweight example (~0.3 ms a call, flat in batch
              size) and with --heavy a dense model built here (4 x 2048-wide layers). With --against DIR,
              that revision's server takes the same turns; with --loop, this checkout's servers with that
              `[serve] loop` do too.
  concurrent  N requests sent at once (one connection each) and the model calls they cost.
  cache       hits only, keys drawn from Zipf(1.1) over the whole grid: hot cache on, small, off.
  batch       POST /predict with 1,000 distinct keys against single-key GETs, 32 connections each: keys/s,
              p50 and p99, and batch keys/s over single keys/s (GETs with the hot cache off, every key a
              store read, and on, every key a hot hit); on SQLite and, with redis-server, Redis. With
              --against DIR, that revision's server takes the same turns (cache off), so the before and
              after come from one run; with --loop, so do this checkout's servers with that `[serve] loop`.
              wrk opens its connections as a round starts, so a loop that is slow to accept them when
              saturated (uvloop) shows it in the p99.
  metrics     hit throughput with [serve] metrics = false, on, and on while /metrics is scraped
              every 1 s and every 0.1 s; with --against DIR (a checkout of another revision, e.g.
              `git archive REV | tar -x -C DIR`), that revision's server too, metrics on and off, in the
              same turns. Then, in-process and in CPU time (steadier on a shared machine): a request
              through the whole app, metrics on and off, on a cache hit and a store hit (and --against);
              and what a hit pays for its metrics alone: this revision's Metrics against the hand-written
              counters it replaced. Alternating, median of --runs (at least 7).
  metrics-in-process   the in-process half of `metrics` alone (no wrk needed).
  workers     hit throughput of `precompute serve --workers N` against bare Starlette under uvicorn with the
              same N (bench/bare_app.py), for N = 1, 2 and the machine's cores, all servers up at once and
              taking turns; 16 and 64 connections; per round the ratio to bare Starlette with the same N
              and to the same server with one worker; medians over --runs rounds, with their range.
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
from bisect import bisect_left
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lookup import WRK_SCRIPT, cpu_seconds  # noqa: E402  (bench/lookup.py, beside this script)

from precompute.config import Config, load_config  # noqa: E402
from precompute.space import GridSpace  # noqa: E402
from tests.servers import free_port, wait_for_port  # noqa: E402

HIT_SERVE = {"cache_bytes": 0, "negative_ttl_seconds": 0}
PIDS: dict[int, int] = {}  # port -> the server process, for its CPU time


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
def server(config_path: Path, store: str, root: Path = ROOT) -> Iterator[int]:
    """`precompute serve` from the checkout at ``root`` (this one by default)."""
    port = free_port()
    cmd = [sys.executable, "-m", "precompute.cli", "serve", "--config", str(config_path), "--port", str(port), "-q"]
    env = {**os.environ, "PRECOMPUTE_STORE": store, "PYTHONPATH": str(root)}
    proc = subprocess.Popen(cmd, env=env, cwd=root, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    PIDS[port] = proc.pid
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
    timeouts = re.search(r"Socket errors: .*timeout (\d+)", out)
    total = re.search(r"(\d+) requests in", out)
    return {
        "rps": float(found["rps"].group(1)) if found["rps"] else float("nan"),
        # Anchored to the start of a line: "89.99%" at the end of the Stdev column, then the next line, would
        # match an unanchored "99%\s+" and read "Req/Sec" as the latency.
        "p50": _ms(m.group(1)) if (m := re.search(r"^\s*50%\s+(\S+)", out, re.M)) else float("nan"),
        "p99": _ms(m.group(1)) if (m := re.search(r"^\s*99%\s+(\S+)", out, re.M)) else float("nan"),
        "errors": float(errors.group(1)) if errors else 0.0,
        "timeouts": float(timeouts.group(1)) if timeouts else 0.0,
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
def workers_server(config_path: Path, store: str, workers: int) -> Iterator[int]:
    """`precompute serve --workers N` (this checkout)."""
    port = free_port()
    cmd = [sys.executable, "-m", "precompute.cli", "serve", "--config", str(config_path), "--port", str(port)]
    env = {**os.environ, "PRECOMPUTE_STORE": store, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [*cmd, "--workers", str(workers), "-q"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    PIDS[port] = proc.pid
    try:
        wait_ready(port, proc)  # 200 once every worker is ready
        yield port
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@contextmanager
def bare_server(keys_file: Path, workers: int) -> Iterator[int]:
    """bench/bare_app.py: bare Starlette answering the same bodies from a dict, under uvicorn's workers."""
    port = free_port()
    cmd = [sys.executable, str(ROOT / "bench/bare_app.py"), str(keys_file), str(port), str(workers)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    PIDS[port] = proc.pid
    try:
        wait_for_port(port, proc)  # type: ignore[arg-type]
        deadline = time.monotonic() + 60
        while True:  # every worker up: uvicorn's workers accept on the one socket as soon as each has started
            try:
                get(port, "/predict/" + keys_file.read_text().split("\n", 1)[0])
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        time.sleep(2.0 if workers > 1 else 0.0)
        yield port
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def tree_cpu_seconds(pid: int) -> float:
    """CPU time of a process and its live children (a supervisor and its workers)."""
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        children = []
    return cpu_seconds(pid) + sum(tree_cpu_seconds(int(child)) for child in children)


def workers(args: argparse.Namespace, config: Config, space: GridSpace, tmp: Path) -> None:
    import numpy as np

    ids = np.random.default_rng(2).choice(space.size, min(2000, space.size), replace=False)
    keys = [space.key_for_id(int(i)) for i in ids]
    script = key_script(tmp, "workers", keys)
    keys_file = tmp / "workers.txt"
    counts = sorted({1, 2, os.cpu_count() or 1})
    connections = (16, 64)
    path = write_config(args.config, tmp, {})  # the defaults: hot cache on, metrics on

    def measure(name: str, port: int, c: int) -> dict[str, float]:
        before = tree_cpu_seconds(PIDS[port])
        result = wrk(port, script, c, args.seconds)
        result["cpu_us"] = (tree_cpu_seconds(PIDS[port]) - before) / result["requests"] * 1e6
        return result

    print(
        f"\n== --workers N against bare Starlette with N uvicorn workers (hits, hot cache on), {args.runs} x "
        f"{args.seconds}s, {os.cpu_count()} cores (wrk, 1 thread, on the same cores)"
    )
    with ExitStack() as stack:
        ports: dict[str, int] = {}
        for n in counts:
            ports[f"precompute {n}"] = stack.enter_context(workers_server(path, args.store, n))
            ports[f"bare {n}"] = stack.enter_context(bare_server(keys_file, n))
        results = interleaved(ports, connections, args.runs, measure)

    def spread(name: str, base: str, c: int, field: str = "rps") -> str:
        pairs = zip(results[(name, c)], results[(base, c)], strict=True)
        ratios = sorted(a[field] / b[field] for a, b in pairs if b[field])
        return f"{statistics.median(ratios):.2f}x ({ratios[0]:.2f}-{ratios[-1]:.2f})"

    print(
        f"{'server':<14} {'conns':>5} {'req/s':>8} {'(range)':>17} {'p50 ms':>7} {'p99 ms':>7} {'CPU us/req':>10} "
        f"{'vs bare, same N':>21} {'vs 1 worker':>21}"
    )
    for c in connections:
        for n in counts:
            for kind in ("precompute", "bare"):
                name = f"{kind} {n}"
                runs = results[(name, c)]
                rps = sorted(r["rps"] for r in runs)
                row = {f: median(runs, f) for f in ("rps", "p50", "p99", "cpu_us")}
                vs_bare = spread(name, f"bare {n}", c) if kind == "precompute" else ""
                vs_one = spread(name, f"{kind} 1", c) if n != 1 else ""
                print(
                    f"{name:<14} {c:>5} {row['rps']:>8,.0f} {f'({rps[0]:,.0f}-{rps[-1]:,.0f})':>17} "
                    f"{row['p50']:>7.3f} {row['p99']:>7.3f} {row['cpu_us']:>10.1f} {vs_bare:>21} {vs_one:>21}"
                )


@contextmanager
def servers(paths: dict[str, Path], store: str, roots: dict[str, Path] | None = None) -> Iterator[dict[str, int]]:
    """Every variant's server at once: idle ones cost nothing, and runs can then alternate between them.
    ``roots`` names the checkout a variant runs from, where it is not this one."""
    roots = roots or {}
    with ExitStack() as stack:
        yield {name: stack.enter_context(server(path, store, roots.get(name, ROOT))) for name, path in paths.items()}


Measure = Callable[[str, int, int], dict[str, float]]


def interleaved(
    ports: dict[str, int], connections: Sequence[int], runs: int, measure: Measure
) -> dict[tuple[str, int], list[dict[str, float]]]:
    """``runs`` rounds; in each, every variant in turn at every connection count (in reverse order every
    other round). On a shared machine the load drifts over minutes: alternating variants run by run keeps
    their ratios fair."""
    results: dict[tuple[str, int], list[dict[str, float]]] = {}
    for name, port in ports.items():
        measure(name, port, max(connections))  # warm-up, not counted
    for turn in range(runs):
        # Every other round in reverse order, so that no variant always runs right after the same one.
        order = list(ports.items()) if turn % 2 == 0 else list(reversed(ports.items()))
        for c in connections:
            for name, port in order:
                results.setdefault((name, c), []).append(measure(name, port, c))
    return results


def paired(
    results: dict[tuple[str, int], list[dict[str, float]]], name: str, base: str, c: int, field: str = "rps"
) -> float:
    """Median over rounds of the per-round ratio of ``name`` to ``base`` (throughput, or another field)."""
    pairs = zip(results[(name, c)], results[(base, c)], strict=True)
    return statistics.median(a[field] / b[field] if b[field] else float("inf") for a, b in pairs)


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


def ranged(runs: list[dict[str, float]], field: str, fmt: str = ",.0f") -> str:
    """The median of ``field`` over runs with its range: ``4,714 (3,902-5,110)``."""
    values = [r[field] for r in runs]
    return f"{statistics.median(values):{fmt}} ({min(values):{fmt}}-{max(values):{fmt}})"


def paired_spread(
    results: dict[tuple[str, int], list[dict[str, float]]], name: str, base: str, c: int, field: str = "rps"
) -> str:
    """:func:`paired` with the range of the per-round ratios."""
    pairs = [
        a[field] / b[field] if b[field] else float("inf")
        for a, b in zip(results[(name, c)], results[(base, c)], strict=True)
    ]
    return f"{statistics.median(pairs):.2f}x ({min(pairs):.2f}-{max(pairs):.2f})"


def server_prefix(name: str) -> str:
    """``"against: "`` of ``"against: GET, cache off"``: which other server a variant ran on ("" for this one)."""
    return name.split(": ", 1)[0] + ": " if ": " in name else ""


STORM_CONNECTIONS = 64


def storm(args: argparse.Namespace, config: Config, space: GridSpace, tmp: Path) -> None:
    """A miss storm next to hits on the same runs: every miss request a distinct key off the grid (each one
    goes to the model), the default 200 ms deadline (a late answer is a 503, counted in "non-2xx"); hits
    are grid keys read from the store (cache off) and answered by the hot cache (cache on)."""
    misses = key_script(tmp, "offgrid", off_grid_keys(space, 200_000))
    hits = key_script(tmp, "hits", [space.key_for_id(i * 7919 % space.size) for i in range(2000)])
    c = STORM_CONNECTIONS
    common = {**HIT_SERVE, "fallback": "on", "deadline_ms": 200.0, "batch_target_ms": 50.0}
    batched = {"batch_max_size": 256, "batch_policy": "aimd"}
    models: list[tuple[str, Path | None]] = [("babyweight", None)]
    if args.heavy:
        models.append(("dense 4x2048", heavy_model(tmp / "heavy")))
    # variant -> (server, script)
    variants: dict[str, tuple[str, Path]] = {
        "hit, cache on": ("cache on", hits),
        "hit, store (cache off)": ("batched", hits),
        "miss storm, batched": ("batched", misses),
        "miss storm, one at a time": ("one at a time", misses),
    }
    configs = {
        "cache on": {**common, **batched, "cache_bytes": 64 * 1024 * 1024},
        "batched": {**common, **batched},
        "one at a time": {**common, "batch_max_size": 1, "batch_policy": "fixed"},
    }
    roots: dict[str, Path] = {}
    if args.against is not None:
        variants["against: miss storm, batched"] = ("against", misses)
        variants["against: hit, cache on"] = ("against cache on", hits)
        configs["against"] = configs["batched"]
        configs["against cache on"] = configs["cache on"]
        roots = {"against": args.against.resolve(), "against cache on": args.against.resolve()}
    if args.loop is not None:
        variants[f"{args.loop}: miss storm, batched"] = (args.loop, misses)
        variants[f"{args.loop}: hit, cache on"] = (f"{args.loop} cache on", hits)
        configs[args.loop] = {**configs["batched"], "loop": args.loop}
        configs[f"{args.loop} cache on"] = {**configs["cache on"], "loop": args.loop}

    def measure(name: str, port: int, connections: int) -> dict[str, float]:
        before = scrape(port)
        result = wrk(port, variants[name][1], connections, args.seconds)
        after = scrape(port)
        calls = after["precompute_model_calls_total"] - before["precompute_model_calls_total"]
        result["calls_per_request"] = calls / max(result["requests"], 1)
        return result

    print(
        f"\n== miss storm: wrk {c} connections, every miss a distinct off-grid key, deadline 200 ms, next to hits "
        f"in the same rounds; {args.runs} x {args.seconds}s, medians (range)"
    )
    print(
        f"{'model':<13} {'variant':<30} {'req/s (range)':>24} {'p50 ms':>7} {'p99 ms (range)':>22} {'calls/req':>9} "
        f"{'non-2xx':>8}  {'x cache hit':>18}  {'x store hit':>18}"
    )
    for model_name, model in models:
        paths = {server: write_config(args.config, tmp, serve, model) for server, serve in configs.items()}
        with servers(paths, args.store, roots) as by_server:
            ports = {name: by_server[server] for name, (server, _) in variants.items()}
            results = interleaved(ports, (c,), args.runs, measure)
        for name in variants:
            runs = results[(name, c)]
            prefix = server_prefix(name)
            hit = f"{prefix}hit, cache on"
            store_hit = "" if prefix else paired_spread(results, name, "hit, store (cache off)", c)
            print(
                f"{model_name:<13} {name:<30} {ranged(runs, 'rps'):>24} {median(runs, 'p50'):>7.2f} "
                f"{ranged(runs, 'p99', '.1f'):>22} {median(runs, 'calls_per_request'):>9.3f} "
                f"{median(runs, 'errors'):>8.0f}  {paired_spread(results, name, hit, c):>18}  {store_hit:>18}"
            )
        if args.against is not None:
            print(
                f"   this revision / against, miss storm: "
                f"{paired_spread(results, 'miss storm, batched', 'against: miss storm, batched', c)} the req/s, "
                f"{paired_spread(results, 'miss storm, batched', 'against: miss storm, batched', c, 'p99')} the p99"
            )
        if args.loop is not None:
            other = f"{args.loop}: miss storm, batched"
            print(
                f"   this loop / {args.loop}, miss storm: {paired_spread(results, 'miss storm, batched', other, c)} "
                f"the req/s, {paired_spread(results, 'miss storm, batched', other, c, 'p99')} the p99"
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

    port = free_port()
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(tmp)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        url = f"redis://127.0.0.1:{port}/0"
        wait_for_port(port, proc, timeout=10)
        copy_live(config, space, url)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def copy_live(config: Config, space: GridSpace, url: str) -> None:
    """The live version of the config's store copied into the store at ``url`` and published there."""
    from precompute.adapters import open_backend
    from precompute.store import Versions
    from precompute.store.codec import encode_key

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


def store_copies(
    stack: ExitStack, wanted: list[str], sqlite_url: str, config: Config, space: GridSpace, tmp: Path
) -> list[tuple[str, str]]:
    """The stores a bench compares, by name: the SQLite store, and copies of its live version into a Redis and
    the Bigtable and DynamoDB emulators of their own (kept open by ``stack``); a server not installed is said."""
    stores = [("sqlite", sqlite_url)] if "sqlite" in wanted else []
    redis_url = stack.enter_context(redis_copy(config, space, tmp)) if "redis" in wanted else None
    if redis_url is not None:
        stores.append(("redis", redis_url))
    for emulated in ("bigtable", "dynamodb"):
        if emulated in wanted:
            url = stack.enter_context(emulator_copy(emulated, config, space))
            if url is None:
                print(f"   ({emulated}: its local server is not installed, skipped)")
            else:
                stores.append((emulated, url))
    return stores


@contextmanager
def emulator_copy(name: str, config: Config, space: GridSpace) -> Iterator[str | None]:
    """The live version copied into a throwaway Bigtable emulator or DynamoDB Local (the servers the tests
    start, tests/servers/), or None where that server is not installed."""
    from tests.servers import stop

    port = free_port()
    if name == "bigtable":
        from tests.servers.bigtable import INSTANCE, PROJECT, find_emulator

        binary = find_emulator()
        if binary is None:
            yield None
            return
        cmd, cwd = [binary, "-host", "127.0.0.1", "-port", str(port)], None
        url = f"bigtable://{PROJECT}/{INSTANCE}/bench?emulator=127.0.0.1:{port}"
    else:
        from tests.servers.dynamodb import local_dir, store_url

        folder, java = local_dir(), shutil.which("java")
        if java is None or not (folder / "DynamoDBLocal.jar").exists():
            yield None
            return
        jar = ["-Xmx1g", "-Djava.library.path=DynamoDBLocal_lib", "-jar", "DynamoDBLocal.jar", "-inMemory"]
        cmd, cwd = [java, *jar, "-sharedDb", "-disableTelemetry", "-port", str(port)], folder
        url = store_url("bench", f"http://127.0.0.1:{port}")
    proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_port(port, proc, timeout=90)
        copy_live(config, space, url)
        yield url
    finally:
        stop(proc)


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

    wanted = args.stores.split(",")
    with ExitStack() as stack:
        stores = store_copies(stack, wanted, args.store, config, space, tmp)
        redis_url = dict(stores).get("redis")
        print(f"\n== hot-key cache: hits only, Zipf(1.1) over {space.size:,} keys, {args.runs} x {args.seconds}s")
        if "redis" in wanted and redis_url is None:
            print("   (redis-server not found: no Redis rows)")
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


BATCH_SCRIPT = """
local bodies = {}
for line in io.lines("%s") do bodies[#bodies + 1] = line end
local headers = {["Content-Type"] = "application/json"}
local i = 0
request = function()
  i = (i %% #bodies) + 1
  return wrk.format("POST", "/predict", headers, bodies[i])
end
"""
BATCH_KEYS = 1000
BATCH_CONNECTIONS = 32


def batch(args: argparse.Namespace, config: Config, space: GridSpace, tmp: Path) -> None:
    """Keys/s of POST /predict with 1,000 keys against single-key GETs, both at 32 connections."""
    import json

    import numpy as np

    rng = np.random.default_rng(2)
    n = min(BATCH_KEYS, space.size)
    bodies = tmp / "batch-bodies.txt"
    bodies.write_text(
        "".join(
            json.dumps({"keys": [space.key_for_id(int(i)) for i in rng.choice(space.size, n, replace=False)]}) + "\n"
            for _ in range(50)
        )
    )
    post = tmp / "batch.lua"
    post.write_text(BATCH_SCRIPT % bodies)
    get_script = key_script(tmp, "batch-single", [space.key_for_id(int(i)) for i in rng.permutation(space.size)])
    c = BATCH_CONNECTIONS
    # variant -> (server, keys per request); a server answers both its GETs and its POSTs.
    variants = {
        "GET, cache off": ("cache off", 1),
        "GET, cache on": ("cache on", 1),
        f"POST {n:,} keys": ("cache off", n),
    }
    configs = {"cache off": {"cache_bytes": 0}, "cache on": {}}
    roots: dict[str, Path] = {}
    if args.against is not None:
        variants |= {"against: GET, cache off": ("against", 1), f"against: POST {n:,} keys": ("against", n)}
        configs["against"] = {"cache_bytes": 0}
        roots["against"] = args.against.resolve()
    if args.loop is not None:
        variants |= {f"{args.loop}: GET, cache off": (args.loop, 1), f"{args.loop}: POST {n:,} keys": (args.loop, n)}
        configs[args.loop] = {"cache_bytes": 0, "loop": args.loop}

    def measure(name: str, port: int, connections: int) -> dict[str, float]:
        keys = variants[name][1]
        before = cpu_seconds(PIDS[port])
        result = wrk(port, post if keys > 1 else get_script, connections, args.seconds)
        result["keys"] = result["rps"] * keys
        result["cpu_us"] = (cpu_seconds(PIDS[port]) - before) / max(result["requests"] * keys, 1) * 1e6
        return result

    wanted = args.stores.split(",")
    with ExitStack() as stack:
        stores = store_copies(stack, wanted, args.store, config, space, tmp)
        redis_url = dict(stores).get("redis")
        print(
            f"\n== batch lookups: POST /predict with {n:,} distinct keys against single-key GETs, {c} connections, "
            f"{args.runs} x {args.seconds}s"
        )
        if "redis" in wanted and redis_url is None:
            print("   (redis-server not found: no Redis rows)")
        if args.against is not None:
            print(f"   against: the server of {args.against}")
        print(
            f"{'store':<7} {'variant':<26} {'req/s':>8} {'keys/s (range)':>26} {'p50 ms':>8} {'p99 ms (range)':>22} "
            f"{'errors':>6} {'timeouts':>8} {'CPU us/key':>10} {'x GET off (range)':>18} {'x GET on':>8}"
        )
        for store_name, url in stores:
            assert url is not None
            paths = {server: write_config(args.config, tmp, serve) for server, serve in configs.items()}
            with servers(paths, url, roots) as by_server:
                ports = {name: by_server[server] for name, (server, _) in variants.items()}
                results = interleaved(ports, (c,), args.runs, measure)
            for name in variants:
                row = {f: median(results[(name, c)], f) for f in ("rps", "keys", "p50", "p99", "errors", "timeouts")}
                cpu = median(results[(name, c)], "cpu_us")
                base = f"{server_prefix(name)}GET, cache off"
                runs = results[(name, c)]
                off = paired_spread(results, name, base, c, "keys")
                on = f"{paired(results, name, 'GET, cache on', c, 'keys'):>7.1f}x"
                print(
                    f"{store_name:<7} {name:<26} {row['rps']:>8,.0f} {ranged(runs, 'keys'):>26} {row['p50']:>8.2f} "
                    f"{ranged(runs, 'p99', '.1f'):>22} {row['errors']:>6.0f} {row['timeouts']:>8.0f} {cpu:>10.2f} "
                    f"{off:>18} {on}"
                )
            if args.against is not None:
                name = f"POST {n:,} keys"
                ratio = paired(results, name, f"against: {name}", c, "keys")
                p99 = paired(results, name, f"against: {name}", c, "p99")
                cpu = paired(results, name, f"against: {name}", c, "cpu_us")
                print(
                    f"   {store_name}: this revision / against, POST {n:,} keys: {ratio:.2f}x the keys/s, {p99:.2f}x "
                    f"the p99, {cpu:.2f}x the CPU per key"
                )
            if args.loop is not None:
                name, other = f"POST {n:,} keys", f"{args.loop}: POST {n:,} keys"
                print(
                    f"   {store_name}: this loop / {args.loop}, POST {n:,} keys: "
                    f"{paired_spread(results, name, other, c, 'keys')} the keys/s, "
                    f"{paired_spread(results, name, other, c, 'p99')} the p99; GET (cache off): "
                    f"{paired_spread(results, 'GET, cache off', f'{args.loop}: GET, cache off', c, 'keys')} the keys/s"
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
    roots: dict[str, Path] = {}
    if args.against is not None:
        for name, enabled in (("against: false", False), ("against: true", True)):
            variants[name] = (enabled, None)
            roots[name] = args.against.resolve()
    scrape_ms: list[float] = []

    def measure(name: str, port: int, connections: int) -> dict[str, float]:
        stop = threading.Event()
        thread = threading.Thread(target=_scraper, args=(port, variants[name][1], stop, scrape_ms), daemon=True)
        thread.start()
        before = cpu_seconds(PIDS[port])
        try:
            result = wrk(port, script, connections, args.seconds)
        finally:
            stop.set()
            thread.join()
        result["cpu_us"] = (cpu_seconds(PIDS[port]) - before) / result["requests"] * 1e6
        return result

    print(f"\n== cost of /metrics on hit throughput (16 connections, hot cache on), {args.runs} x {args.seconds}s")
    if args.against is not None:
        print(f"   against: the server of {args.against}")
    print(f"{'variant':<20} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'vs off':>7} {'CPU us/req':>10} {'vs off':>7}")
    paths = {name: write_config(args.config, tmp, {"metrics": enabled}) for name, (enabled, _) in variants.items()}
    with servers(paths, args.store, roots) as ports:
        results = interleaved(ports, (16,), args.runs, measure)
    for name in variants:
        row = {f: median(results[(name, 16)], f) for f in ("rps", "p50", "p99", "cpu_us")}
        base = "against: false" if name.startswith("against") else "metrics = false"
        ratio = paired(results, name, base, 16)
        cpu = paired(results, name, base, 16, "cpu_us")
        print(
            f"{name:<20} {row['rps']:>8,.0f} {row['p50']:>8.3f} {row['p99']:>8.3f} {ratio:>6.0%} "
            f"{row['cpu_us']:>10.1f} {cpu:>6.0%}"
        )
    if args.against is not None:
        rps = paired(results, "metrics = true", "against: true", 16)
        cpu = paired(results, "metrics = true", "against: true", 16, "cpu_us")
        print(f"   this revision / against, metrics on: {rps:.0%} of the requests/s, {cpu:.0%} of the CPU per request")
    if scrape_ms:
        print(f"   one scrape of /metrics under load: median {statistics.median(scrape_ms):.2f} ms")
    metrics_in_process(args, tmp, median(results[("metrics = false", 16)], "rps"))


def metrics_in_process(args: argparse.Namespace, tmp: Path, base_rps: float = 24_000.0) -> None:
    """The metrics' cost without HTTP, in CPU time: steady enough to resolve a microsecond on a busy machine."""
    asgi_rounds(args, tmp)
    rounds = [(_instrumentation_us(), _hand_written_us(), _clock_reads_us()) for _ in range(max(args.runs, 7))]
    ours, hand, clocks = (statistics.median(r[i] for r in rounds) for i in range(3))
    print(
        "   what a hit on the store pays for metrics, in-process (1 counter, 2 histogram observations; the 4 "
        f"clock reads, {clocks:.2f} us, apart):\n"
        f"     prometheus_client {ours - clocks:.2f} us, {(ours - clocks) * base_rps / 1e6:.1%} of one core at "
        f"{base_rps:,.0f} req/s\n"
        f"     hand-written      {hand - clocks:.2f} us, {(hand - clocks) * base_rps / 1e6:.1%}   "
        f"({(ours - clocks) / (hand - clocks):.1f}x)"
    )


# Run by `python -c` with a checkout's root first on the path: this revision's app or another's.
ASGI_PROBE = """
import asyncio, dataclasses, sys, time
root, config_path, metrics = sys.argv[1], sys.argv[2], sys.argv[3] == "1"
cache_bytes, n = int(sys.argv[4]), int(sys.argv[5])
sys.path.insert(0, root)
from precompute.api import create_app
from precompute.config import load_config
config = load_config(config_path)
config = dataclasses.replace(config, serve=dataclasses.replace(config.serve, metrics=metrics, cache_bytes=cache_bytes))
paths = [f"/predict/{config.space.key_for_id(i * 7919 % config.space.size)}" for i in range(2000)]
scopes = [{"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET", "scheme": "http",
           "path": p, "raw_path": p.encode(), "query_string": b"", "root_path": "", "headers": [(b"host", b"x")],
           "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80)} for p in paths]
app = create_app(config)
async def receive():
    return {"type": "http.request", "body": b"", "more_body": False}
async def send(message):
    if message["type"] == "http.response.start" and message["status"] != 200:
        raise SystemExit(f"status {message['status']}")
async def main():
    async with app.router.lifespan_context(app):
        for scope in scopes:  # and the hot cache, when on, is full
            await app(dict(scope), receive, send)
        took = []
        for _ in range(5):
            started = time.thread_time()
            for i in range(n):
                await app(dict(scopes[i % len(scopes)]), receive, send)
            took.append((time.thread_time() - started) / n * 1e6)
        started = time.thread_time()
        for _ in range(100):
            app.state.metrics.render()
        print(min(took), (time.thread_time() - started) / 100 * 1e3)
asyncio.run(main())
"""


def asgi_us(
    root: Path, config_path: Path, store: str, metrics: bool, cache_bytes: int, n: int = 8000
) -> tuple[float, float]:
    """CPU us per hit through the whole app in-process (routing, lookup, response; no HTTP server), the best
    of 5 passes: CPU time of the one thread, so the neighbours' load hardly moves it. And the CPU ms of one
    rendering of /metrics after those requests."""
    args = [str(root), str(config_path), "1" if metrics else "0", str(cache_bytes), str(n)]
    env = {**os.environ, "PRECOMPUTE_STORE": store, "PYTHONPATH": str(root)}
    done = subprocess.run([sys.executable, "-c", ASGI_PROBE, *args], env=env, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"the in-process probe failed: {done.stderr[-2000:]}")
    us, render_ms = done.stdout.split()[-2:]
    return float(us), float(render_ms)


def asgi_rounds(args: argparse.Namespace, tmp: Path) -> None:
    """Metrics on and off, cache hit and store hit, this revision (and --against), alternating, --runs rounds
    (at least 7)."""
    config_path = write_config(args.config, tmp, {})
    roots = {"this": ROOT} | ({"against": args.against.resolve()} if args.against is not None else {})
    rows: dict[tuple[str, str, bool], list[float]] = {}
    render: dict[str, list[float]] = {}
    for _ in range(max(args.runs, 7)):
        for hit, cache_bytes in (("cache hit", 64 * 1024 * 1024), ("store hit", 0)):
            for name, root in roots.items():
                for enabled in (True, False):
                    value, render_ms = asgi_us(root, config_path, args.store, enabled, cache_bytes)
                    rows.setdefault((hit, name, enabled), []).append(value)
                    if enabled:
                        render.setdefault(name, []).append(render_ms)
    print(
        "\n   in-process, through the whole app (no HTTP server), CPU us per request, "
        f"median of {max(args.runs, 7)} rounds:"
    )
    print(f"   {'hit':<10} {'revision':<8} {'metrics on':>10} {'off':>7} {'on - off':>9}")
    for hit in ("cache hit", "store hit"):
        for name in roots:
            on, off = rows[(hit, name, True)], rows[(hit, name, False)]
            delta = statistics.median(a - b for a, b in zip(on, off, strict=True))
            on_us, off_us = statistics.median(on), statistics.median(off)
            print(f"   {hit:<10} {name:<8} {on_us:>10.2f} {off_us:>7.2f} {delta:>+9.2f}")
        if "against" in roots:
            for enabled in (True, False):
                pairs = zip(rows[(hit, "this", enabled)], rows[(hit, "against", enabled)], strict=True)
                state = "on" if enabled else "off"
                delta = statistics.median(a - b for a, b in pairs)
                print(f"   {hit}: this - against, metrics {state}: {delta:+.2f} us")
    for name, took in render.items():
        print(f"   one rendering of /metrics, {name}: {statistics.median(took):.3f} ms of CPU")


def _instrumentation_us(n: int = 200_000) -> float:
    """A store hit's metrics as the API records them: the store read's and the request's histograms, the
    request counter, and the four clock reads around them."""
    from precompute.api.metrics import Metrics

    m = Metrics()
    clock = time.perf_counter
    started = time.thread_time()  # CPU time: the neighbours' load does not count
    for _ in range(n):
        t0 = clock()
        t1 = clock()
        m.store_seconds.observe(clock() - t1)
        m.request("precomputed", 200, clock() - t0)
    return (time.thread_time() - started) / n * 1e6


class _HandWritten:
    """The counters before prometheus_client, as they were in api/metrics.py: a dict of ints, and histograms
    that are a bisect into their bounds and two updates."""

    def __init__(self) -> None:
        from collections import defaultdict

        from precompute.api.metrics import LATENCY_BUCKETS

        self.bounds = LATENCY_BUCKETS
        self.requests: defaultdict[tuple[str, int], int] = defaultdict(int)
        self.request_counts = [0] * (len(self.bounds) + 1)
        self.store_counts = [0] * (len(self.bounds) + 1)
        self.request_total = self.store_total = 0.0

    def store(self, value: float) -> None:
        self.store_counts[bisect_left(self.bounds, value)] += 1
        self.store_total += value

    def request(self, source: str, status: int, seconds: float) -> None:
        self.requests[(source, status)] += 1
        self.request_counts[bisect_left(self.bounds, seconds)] += 1
        self.request_total += seconds


def _hand_written_us(n: int = 200_000) -> float:
    m = _HandWritten()
    clock = time.perf_counter
    started = time.thread_time()
    for _ in range(n):
        t0 = clock()
        t1 = clock()
        m.store(clock() - t1)
        m.request("precomputed", 200, clock() - t0)
    return (time.thread_time() - started) / n * 1e6


def _clock_reads_us(n: int = 200_000) -> float:
    clock = time.perf_counter
    started = time.thread_time()
    for _ in range(n):
        t0 = clock()
        t1 = clock()
        _ = clock() - t1
        _ = clock() - t0
    return (time.thread_time() - started) / n * 1e6


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
    parser.add_argument("--only", default="storm,concurrent,cache,batch,metrics,policy")
    parser.add_argument(
        "--against", type=Path, help="storm, metrics, batch: also run the server of this checkout (another revision)"
    )
    parser.add_argument(
        "--stores",
        default="sqlite,redis",
        help="batch: among sqlite,redis,bigtable,dynamodb (the last two on the Bigtable emulator and DynamoDB "
        "Local, started here like the tests' servers, with the live version copied in)",
    )
    parser.add_argument("--heavy", action="store_true", help="storm: also the dense 4x2048 model (slow to build)")
    parser.add_argument(
        "--loop",
        choices=["asyncio", "uvloop"],
        help="storm, batch: also run this checkout's servers with this [serve] loop, in the same turns",
    )
    args = parser.parse_args()
    sections = set(args.only.split(","))
    if sections - {"policy", "metrics-in-process"} and not shutil.which("wrk"):
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
        if "batch" in sections:
            batch(args, config, space, tmp)
        if "metrics" in sections:
            metrics(args, config, space, tmp)
        elif "metrics-in-process" in sections:
            print("\n== cost of the metrics in-process (the in-process half of the metrics section)")
            metrics_in_process(args, tmp)
        if "policy" in sections:
            policy(args)
        if "workers" in sections:
            workers(args, config, space, tmp)


if __name__ == "__main__":
    main()
