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


def summarize(raw: Path, top: int) -> None:
    """py-spy's raw (collapsed) stacks, per process: samples, and the innermost frames that matter."""
    per_process: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    totals: collections.Counter[str] = collections.Counter()
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = stack.split(";")
        process = frames[0]
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
    parser.add_argument("--rate", type=int, default=40, help="py-spy samples per second")
    parser.add_argument("--top", type=int, default=12)
    parser.add_argument("--inner", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if args.inner or not args.py_spy:
        inner(args.rows, args.store)
        return
    spy = Path(sys.executable).parent / "py-spy"
    with tempfile.TemporaryDirectory(prefix="precompute-pyspy-") as name:
        raw = Path(name) / "stacks.txt"
        cmd = [str(spy), "record", "--subprocesses", "--idle", "--format", "raw", "--rate", str(args.rate)]
        cmd += ["-o", str(raw), "--", sys.executable, __file__, "--inner", "--rows", str(args.rows)]
        subprocess.run([*cmd, "--store", args.store], check=True)
        summarize(raw, args.top)


if __name__ == "__main__":
    main()
