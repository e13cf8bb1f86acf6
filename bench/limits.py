"""The batch path against its limits: four ratios, each measured beside its baseline in the same run.

    python bench/limits.py                          # 10.3 M rows, 3 runs of each (about 15 minutes)
    python bench/limits.py --rows 1000000 --runs 1  # a quick pass

(a) Redis: ``precompute run`` of the grid into a fresh redis-server of its own, rows / run total, against
    ``redis-cli --pipe`` of one SET per row of the same keys and values into another fresh server.
(b) SQLite: ``precompute run`` of the same grid into a fresh SQLite file, against a bare bulk insert of the
    same rows in one process, as the adapter stores them (one WITHOUT ROWID table, INSERT OR REPLACE in
    50,000-row transactions, the adapter's pragmas, the final checkpoint included): ``executemany``, and
    also the adapter's own way of loading (one ``json_each`` statement per chunk).
(c) Fixed cost: ``precompute run`` of an 11,160-row grid (the example, mother_age in steps of 2), process
    start to exit, against bench/floor.py (import TensorFlow, load and call the model, start and stop Ray).
(d) Memory: peak RSS (VmHWM) of the driver and of every Ray worker process of the big Redis and SQLite
    runs, sampled from /proc, and of a Redis run of half the rows, to show whether it grows with the space.

Runs alternate baseline and change (pipe, run, bare insert, run, floor, small run) and report medians.
The machine is a shared 2-core VM: expect noise; compare ratios, not absolute figures.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import redis  # noqa: E402

from tests.servers import free_port  # noqa: E402

EXAMPLE = ROOT / "examples/babyweight/precompute.toml"
FULL_GESTATION = 751  # 3 x 761 x 6 x 751 = 10,287,198 rows (bench/e2e.py's 10 M grid)
PER_GESTATION = 3 * 761 * 6
SQLITE_CHUNK = 50_000  # SQLiteBackend.max_write_batch: one transaction per chunk


def grid_text(rows: int, store_url: str) -> str:
    """bench/e2e.py's fine grid (mother_age step 0.05, gestation_weeks step 0.04), cut to about ``rows``."""
    text = EXAMPLE.read_text().replace('path = "model"', f'path = "{ROOT / "examples/babyweight/model"}"')
    text = text.replace('url = "sqlite:///var/babyweight.db"', f'url = "{store_url}"')
    weeks = max(1, min(FULL_GESTATION, round(rows / PER_GESTATION)))
    stop = round(17 + (weeks - 1) * 0.04, 2)
    return text.replace("stop = 50\nstep = 1", "stop = 50\nstep = 0.05").replace(
        "stop = 47\nstep = 1", f"stop = {stop:g}\nstep = 0.04"
    )


def small_text(store_url: str) -> str:
    """The example with mother_age in steps of 2: 3 x 20 x 6 x 31 = 11,160 rows."""
    text = EXAMPLE.read_text().replace('path = "model"', f'path = "{ROOT / "examples/babyweight/model"}"')
    text = text.replace('url = "sqlite:///var/babyweight.db"', f'url = "{store_url}"')
    return text.replace("stop = 50\nstep = 1", "stop = 50\nstep = 2")


# -- memory of a process tree, from /proc ---------------------------------------------------------


def _status(pid: int) -> dict[str, int]:
    out: dict[str, int] = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            name, _, rest = line.partition(":")
            if name in ("VmHWM", "VmRSS"):
                out[name] = int(rest.split()[0]) * 1024
    except OSError:
        pass
    return out


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        tree.setdefault(ppid, []).append(int(entry.name))
    return tree


def _title(pid: int) -> str:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return ""
    parts = [p.decode(errors="replace") for p in raw.split(b"\0") if p]
    if not parts:
        return ""
    if parts[0].startswith("ray::"):
        return parts[0].split(" ")[0]
    if any(p.endswith("default_worker.py") for p in parts):
        return "ray::IDLE"
    return Path(parts[0]).name if not parts[0].endswith("python") else " ".join(parts[:3])


@dataclass
class Proc:
    titles: set[str] = field(default_factory=set)
    hwm: int = 0


class MemorySampler:
    """Samples the peak RSS of ``root`` and all its descendants every ``every`` seconds until stopped."""

    def __init__(self, root: int, every: float = 0.25) -> None:
        self.root, self.every = root, every
        self.procs: dict[int, Proc] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            tree = _children()
            todo = [self.root]
            while todo:
                pid = todo.pop()
                todo += tree.get(pid, [])
                status = _status(pid)
                if not status:
                    continue
                proc = self.procs.setdefault(pid, Proc())
                title = "driver" if pid == self.root else _title(pid)
                if title:
                    proc.titles.add(title)
                proc.hwm = max(proc.hwm, status.get("VmHWM", 0), status.get("VmRSS", 0))
            self._stop.wait(self.every)

    def stop(self) -> dict[str, int]:
        """Peak RSS: the driver, the largest Ray worker, and per worker process (keyed by what it ran)."""
        self._stop.set()
        self._thread.join()
        out: dict[str, int] = {}
        workers = 0
        for pid, proc in self.procs.items():
            ray_titles = sorted(t for t in proc.titles if t.startswith("ray::"))
            if pid == self.root:
                out["driver"] = proc.hwm
            elif ray_titles:
                workers += 1
                named = [t for t in ray_titles if t != "ray::IDLE"] or ray_titles
                out[f"worker {pid} ({', '.join(t.removeprefix('ray::') for t in named)})"] = proc.hwm
        out["largest worker"] = max((v for k, v in out.items() if k.startswith("worker")), default=0)
        out["workers"] = workers
        return out


# -- servers, runs, baselines -----------------------------------------------------------------------


@contextlib.contextmanager
def redis_server(workdir: Path) -> Iterator[int]:
    """A fresh redis-server of its own on a free loopback port, stopped on exit."""
    port = free_port()
    binary = shutil.which("redis-server") or "/usr/bin/redis-server"
    args = ["--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(workdir)]
    proc = subprocess.Popen([binary, *args], stdout=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                redis.Redis(port=port).ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        yield port
    finally:
        proc.terminate()
        proc.wait()


@dataclass
class RunResult:
    rows: int
    wall: float  # process start to exit
    total: float  # the run summary's total
    seconds: dict[str, float]
    memory: dict[str, int]


def precompute_run(config: Path) -> RunResult:
    """``precompute run`` in a subprocess: wall, the summary's stage seconds, and the peak RSS of its tree."""
    summary = config.with_suffix(".json")
    cmd = [sys.executable, "-m", "precompute.cli", "run", "--config", str(config), "--quiet"]
    cmd += ["--summary-json", str(summary)]
    env = {**os.environ, "PRECOMPUTE_STORE": "", "PYTHONPATH": str(ROOT)}
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, cwd=ROOT)
    sampler = MemorySampler(proc.pid)
    code = proc.wait()
    wall = time.perf_counter() - started
    memory = sampler.stop()
    if code != 0:
        raise RuntimeError(f"precompute run --config {config} exited {code}")
    data = json.loads(summary.read_text())
    return RunResult(data["rows"], wall, data["seconds"]["total"], data["seconds"], memory)


def grid_rows(config: Path, chunk: int) -> Iterator[tuple[pa.Array, pa.Array]]:
    """The (key, value) rows of the grid, as the actors make them, in chunks of ids (scored here)."""
    from precompute.config import load_config
    from precompute.model import Model, grid_inputs
    from precompute.scoring import grid_keys
    from precompute.space import GridSpace
    from precompute.values import encode_values

    cfg = load_config(config, env={})
    space = cfg.space
    assert isinstance(space, GridSpace)
    model = Model(cfg.model.local_path(), cfg.model.signature, cfg.model.outputs)
    inputs = grid_inputs(space, model.signature)
    for start in range(0, space.size, chunk):
        indices = space.indices(np.arange(start, min(space.size, start + chunk), dtype=np.int64))
        keys = grid_keys(space, indices)
        values = encode_values(model.predict({n: v[indices[n]] for n, v in inputs.items()}), keys)
        yield keys.cast(pa.binary()), values


def _contiguous(array: pa.Array) -> bytes:
    offsets = np.frombuffer(array.buffers()[1], dtype=np.int32)[array.offset : array.offset + len(array) + 1]
    data: bytes = array.buffers()[2].to_pybytes()
    return data[offsets[0] : offsets[-1]]


def write_pipe_file(config: Path, path: Path) -> int:
    """One ``SET b:s:<key> <value>`` per row in RESP, built column-wise with Arrow."""
    rows = 0
    with path.open("wb") as out:
        for keys, values in grid_rows(config, 262_144):
            k, v = keys.cast(pa.string()), values.cast(pa.string())
            klen = pc.cast(pc.add(pc.binary_length(k), 4), pa.string())
            vlen = pc.cast(pc.binary_length(v), pa.string())
            head = pa.scalar("*3\r\n$3\r\nSET\r\n$")
            resp = pc.binary_join_element_wise(head, klen, "\r\nb:s:", k, "\r\n$", vlen, "\r\n", v, "\r\n", "")
            out.write(_contiguous(resp))
            rows += len(keys)
    return rows


def time_pipe(path: Path, workdir: Path) -> float:
    cli = shutil.which("redis-cli") or "/usr/bin/redis-cli"
    with redis_server(workdir) as port, path.open("rb") as data:
        started = time.perf_counter()
        subprocess.run([cli, "-p", str(port), "--pipe"], stdin=data, stdout=subprocess.DEVNULL, check=True)
        return time.perf_counter() - started


def time_redis_run(rows: int, tmp: Path) -> RunResult:
    with redis_server(tmp) as port:
        config = tmp / "redis.toml"
        config.write_text(grid_text(rows, f"redis://127.0.0.1:{port}/0"))
        return precompute_run(config)


def time_sqlite_run(rows: int, tmp: Path) -> RunResult:
    db = tmp / "run.db"
    for suffix in ("", "-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    config = tmp / "sqlite.toml"
    config.write_text(grid_text(rows, f"sqlite:///{db}"))
    return precompute_run(config)


def time_bare_sqlite(config: Path, tmp: Path, as_json: bool = False) -> float:
    """Only the inserts, commits and final checkpoint are timed; the rows are made (scored) in between.
    ``executemany`` of Python tuples, or (``as_json``) the adapter's own way: one ``json_each`` statement
    per chunk (SQLiteBackend.write_columns)."""
    from precompute.adapters.sqlite import _json_pairs, json_insert

    db = tmp / "bare.db"
    for suffix in ("", "-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    spent = 0.0
    started = time.perf_counter()
    conn = sqlite3.connect(db, isolation_level=None)
    for pragma in ("journal_mode=WAL", "synchronous=NORMAL", "cache_size=-262144", "wal_autocheckpoint=100000"):
        conn.execute(f"PRAGMA {pragma}")
    conn.execute("CREATE TABLE v (k BLOB PRIMARY KEY, v BLOB NOT NULL) WITHOUT ROWID")
    spent += time.perf_counter() - started
    bulk = json_insert("v")
    for keys, values in grid_rows(config, SQLITE_CHUNK):
        items = list(zip(keys.to_pylist(), values.to_pylist(), strict=True))
        started = time.perf_counter()
        if as_json:
            conn.execute(bulk, (_json_pairs(keys, values),))  # making the document is timed: it is the insert
        else:
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany("INSERT OR REPLACE INTO v (k, v) VALUES (?, ?)", items)
            conn.execute("COMMIT")
        spent += time.perf_counter() - started
    started = time.perf_counter()
    conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
    conn.close()
    return spent + time.perf_counter() - started


def time_floor() -> float:
    started = time.perf_counter()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    subprocess.run([sys.executable, str(ROOT / "bench/floor.py")], check=True, env=env, capture_output=True)
    return time.perf_counter() - started


def time_small_run(tmp: Path) -> RunResult:
    db = tmp / "small.db"
    for suffix in ("", "-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    config = tmp / "small.toml"
    config.write_text(small_text(f"sqlite:///{db}"))
    return precompute_run(config)


def _mb(n: int) -> str:
    return f"{n / 2**20:,.0f} MB"


def _print_load(label: str, n: int, runs: list[RunResult], baseline: str, base: float, goal: float) -> None:
    """One load's line: the runs' median rate (of the run summary's total, and on wall time) beside its baseline."""
    total = statistics.median(r.total for r in runs)
    wall = statistics.median(r.wall for r in runs)
    rate = n / total
    print(
        f"{label}, {n:,} rows: precompute run {rate:,.0f} rows/s ({total:.1f} s run total, {wall:.1f} s "
        f"with process start) vs {baseline} {base:,.0f} rows/s: ratio {rate / base:.2f} "
        f"(goal >= {goal:.2f}; {n / wall / base:.2f} on wall)",
        flush=True,
    )
    print(f"    stages (median s): {_stages(runs)}", flush=True)


def _stages(runs: list[RunResult]) -> str:
    med = {n: statistics.median(r.seconds.get(n, 0.0) for r in runs) for n in runs[0].seconds}
    return "  ".join(f"{n} {v:.2f}" for n, v in med.items())


def print_memory(label: str, memory: dict[str, int]) -> None:
    print(
        f"    {label}: driver {_mb(memory['driver'])}, largest Ray worker {_mb(memory['largest worker'])} "
        f"({memory['workers']} worker processes)"
    )
    for name, peak in sorted(memory.items()):
        if name.startswith("worker "):
            print(f"        {name:<70} {_mb(peak)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_287_198, help="rows of the big grid (about; default 10.3 M)")
    parser.add_argument("--runs", type=int, default=3, help="runs of each measurement (medians)")
    parser.add_argument(
        "--only",
        nargs="+",
        choices=["redis", "sqlite", "small", "memory"],
        default=["redis", "sqlite", "small", "memory"],
    )
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # the runs and the floor alike
    print(
        f"{os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f} at the start: a shared, noisy VM; compare the ratios, "
        f"each measured beside its baseline in the same run (median of {args.runs})",
        flush=True,
    )
    with tempfile.TemporaryDirectory(prefix="precompute-limits-") as name:
        tmp = Path(name)
        big = tmp / "big.toml"
        big.write_text(grid_text(args.rows, "sqlite:///unused.db"))
        full: dict[str, dict[str, int]] = {}
        if "redis" in args.only:
            pipe = tmp / "set.resp"
            n = write_pipe_file(big, pipe)
            pipes: list[float] = []
            runs: list[RunResult] = []
            for _ in range(args.runs):
                pipes.append(time_pipe(pipe, tmp))
                runs.append(time_redis_run(args.rows, tmp))
            pipe.unlink()
            _print_load("(a) Redis", n, runs, "redis-cli --pipe SET", n / statistics.median(pipes), 0.70)
            full["redis"] = runs[-1].memory
        if "sqlite" in args.only:
            bares: list[float] = []
            bare_json: list[float] = []
            runs = []
            for _ in range(args.runs):
                bares.append(time_bare_sqlite(big, tmp))
                bare_json.append(time_bare_sqlite(big, tmp, as_json=True))
                runs.append(time_sqlite_run(args.rows, tmp))
            n = runs[0].rows
            _print_load("(b) SQLite", n, runs, "bare bulk insert (executemany)", n / statistics.median(bares), 0.80)
            json_rate = n / statistics.median(bare_json)
            run_rate = n / statistics.median(r.total for r in runs)
            print(
                f"    and vs a bare insert the adapter's own way (one json_each statement per chunk) {json_rate:,.0f} "
                f"rows/s: ratio {run_rate / json_rate:.2f}",
                flush=True,
            )
            full["sqlite"] = runs[-1].memory
        if "small" in args.only:
            floors: list[float] = []
            runs = []
            for _ in range(args.runs):
                floors.append(time_floor())
                runs.append(time_small_run(tmp))
            floor = statistics.median(floors)
            wall = statistics.median(r.wall for r in runs)
            print(
                f"(c) 11,160-row run: {wall:.1f} s process start to exit vs the floor (import TF, load and call the "
                f"model, start and stop Ray) {floor:.1f} s: {wall / floor:.2f}x (goal <= 1.20x)",
                flush=True,
            )
            print(f"    stages (median s): {_stages(runs)}", flush=True)
        if "memory" in args.only:
            half = time_redis_run(args.rows // 2, tmp)
            print(
                f"(d) peak RSS (VmHWM, sampled every 0.25 s), Redis run of {half.rows:,} rows (half):",
                flush=True,
            )
            print_memory("half rows, Redis", half.memory)
            for store, memory in full.items():
                print_memory(f"all rows, {store}", memory)
            if "redis" in full:
                m, h = full["redis"], half.memory
                print(
                    f"    all / half rows (Redis): driver {m['driver'] / h['driver']:.2f}, largest worker "
                    f"{m['largest worker'] / h['largest worker']:.2f} (flat: ~1.0)",
                    flush=True,
                )
    print(f"load {os.getloadavg()[0]:.1f} at the end", flush=True)


if __name__ == "__main__":
    main()
