"""Where the time of a big ``precompute run`` goes: the stages, Ray Data's per-operator stats, and (with
--py-spy) sampled stacks of the driver, the scoring actors and the write tasks.

    python bench/profile_run.py --store redis [--rows 10287198] [--py-spy]

Runs bench/limits.py's grid in this process (a fresh redis-server of its own, or a fresh SQLite file), prints
the run summary's stages and ``Dataset.stats()`` of the write. With --py-spy the run goes under
``py-spy record --subprocesses`` and each process's samples are summarized: where its threads were, by
the innermost frame of this project, of Ray, of Arrow, of TensorFlow or of SQLite/Redis I/O.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from limits import grid_text, redis_server  # noqa: E402  (bench/limits.py, beside this script)


def inner(rows: int, store: str) -> None:
    from precompute import run as run_module
    from precompute.config import load_config

    captured: list[Any] = []
    pipeline = run_module._pipeline

    def keep(*args: Any) -> Any:
        ds = pipeline(*args)
        captured.append(ds)
        return ds

    run_module._pipeline = keep  # type: ignore[assignment]
    with tempfile.TemporaryDirectory(prefix="precompute-profile-") as name, contextlib.ExitStack() as stack:
        tmp = Path(name)
        if store == "redis":
            url = f"redis://127.0.0.1:{stack.enter_context(redis_server(tmp))}/0"
        else:
            url = f"sqlite:///{tmp / 'profile.db'}"
        config = tmp / "profile.toml"
        config.write_text(grid_text(rows, url))
        summary = run_module.run(load_config(config, env={}))
    print(summary.render())
    write = getattr(captured[0], "_write_ds", None) if captured else None
    print("\nRay Data stats of the write:\n" + (write.stats() if write is not None else "(none)"))


def pieces(rows: int) -> None:
    """The per-row work of the actors and of a Redis write task, piece by piece, in this one process."""
    import time

    import numpy as np
    import pyarrow as pa

    from precompute.adapters.redis.layout import ROWS_PER_BUCKET, Layout
    from precompute.adapters.redis.writes import hset_pieces
    from precompute.config import load_config
    from precompute.model import Model, grid_inputs
    from precompute.scoring import grid_keys
    from precompute.space import GridSpace
    from precompute.values import encode_values

    with tempfile.TemporaryDirectory() as name:
        config = Path(name) / "grid.toml"
        config.write_text(grid_text(10_287_198, "sqlite:///unused.db"))
        cfg = load_config(config, env={})
    space = cfg.space
    assert isinstance(space, GridSpace)
    model = Model(cfg.model.local_path(), cfg.model.signature, cfg.model.outputs)
    inputs = grid_inputs(space, model.signature)
    layout = Layout(b"p:v:x:", -(-space.size // ROWS_PER_BUCKET), None)
    spent: dict[str, float] = collections.defaultdict(float)
    batch = 16_384
    for start in range(0, rows, batch):
        t = [time.perf_counter()]
        indices = space.indices(np.arange(start, start + batch, dtype=np.int64))
        features = {n: v[indices[n]] for n, v in inputs.items()}
        t.append(time.perf_counter())
        out = model.predict(features)
        t.append(time.perf_counter())
        keys = grid_keys(space, indices)
        t.append(time.perf_counter())
        values = encode_values(out, keys)
        t.append(time.perf_counter())
        kb = keys.cast(pa.binary())
        items = list(zip(kb.to_pylist(), values.to_pylist(), strict=True))
        t.append(time.perf_counter())
        for _ in hset_pieces(layout, items):
            pass
        t.append(time.perf_counter())
        for label, a, b in zip(
            [
                "indices+features",
                "model.predict",
                "grid_keys",
                "encode_values",
                "to_pylist+zip (sink)",
                "hset_pieces (group+pack)",
            ],
            t,
            t[1:],
            strict=False,
        ):
            spent[label] += b - a
    done = -(-rows // batch) * batch
    print(f"per-row work, {done:,} rows in batches of {batch:,}, one process:")
    for label, secs in spent.items():
        print(f"    {label:<28} {secs:6.2f} s  {secs / done * 1e6:6.2f} us/row  ({done / secs:>12,.0f} rows/s)")


def _process_name(frame: str) -> str:
    """``process 123:"python .../default_worker.py ..."`` -> ``process 123`` plus what it is."""
    pid, _, cmd = frame.partition(":")
    if "default_worker.py" in cmd:
        return f"{pid} (Ray worker)"
    return f"{pid} ({cmd.strip(chr(34))[:80]})"


def summarize(raw: Path, top: int) -> None:
    """py-spy's raw (collapsed) stacks, per process: samples, and the innermost frames that matter."""
    per_process: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    totals: collections.Counter[str] = collections.Counter()
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = stack.split(";")
        at = max(i for i, frame in enumerate(frames) if frame.startswith("process "))
        process, frames = _process_name(frames[at]), frames[at + 1 :] or ["(no frame)"]
        n = int(count)
        totals[process] += n
        idle = any(word in frames[-1] for word in ("wait (", "select (", "poll (", "_wait_", "sleep", "recv ("))
        if idle:
            per_process[process]["(waiting: " + frames[-1].split(" (")[0] + ")"] += n
            continue
        per_process[process][frames[-1]] += n
    for process, n in totals.most_common():
        if n < 50:
            continue
        print(f"\n{process}: {n} samples")
        for frame, k in per_process[process].most_common(top):
            print(f"    {k / n:6.1%}  {frame}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_287_198)
    parser.add_argument("--store", choices=["redis", "sqlite"], default="redis")
    parser.add_argument("--py-spy", action="store_true", help="sample every process with py-spy record")
    parser.add_argument("--rate", type=int, default=10, help="py-spy samples per second (40 falls behind on 2 cores)")
    parser.add_argument("--keep", type=Path, help="keep py-spy's raw stacks in this file")
    parser.add_argument("--summarize", type=Path, help="only summarize raw stacks kept earlier")
    parser.add_argument("--top", type=int, default=12)
    parser.add_argument("--pieces", type=int, help="time the per-row pieces on this many rows, in one process")
    parser.add_argument("--inner", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if args.pieces:
        pieces(args.pieces)
        return
    if args.summarize:
        summarize(args.summarize, args.top)
        return
    if args.inner or not args.py_spy:
        inner(args.rows, args.store)
        return
    spy = Path(sys.executable).parent / "py-spy"
    with tempfile.TemporaryDirectory(prefix="precompute-pyspy-") as name:
        raw = Path(name) / "stacks.txt"
        cmd = [str(spy), "record", "--subprocesses", "--format", "raw", "--rate", str(args.rate)]
        cmd += ["-o", str(raw), "--", sys.executable, __file__, "--inner", "--rows", str(args.rows)]
        subprocess.run([*cmd, "--store", args.store], check=True)
        summarize(raw, args.top)
        if args.keep:
            args.keep.write_bytes(raw.read_bytes())


if __name__ == "__main__":
    main()
