"""Batch-side figures: `precompute run` end to end against raw model scoring, on the same machine.

    python bench/e2e.py [--runs 3] [--rows-10m] [--lookups]

* raw model scoring: the example SavedModel called in one process on 16,384-row batches of grid features
  (no Ray, no keys, no store): the ceiling for scoring alone.
* `precompute run` of the babyweight example (21,762 rows) into a fresh SQLite store: Ray start, actor start,
  scoring, bulk load, verification and publish, end to end, in a subprocess as a scheduler runs it.
* with --rows-10m: the same model over a synthetic 10.3 M-row grid (finer mother_age and gestation steps).
* with --lookups: bench/lookup.py against the example store (needs wrk).

Every figure is the median of --runs runs.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

EXAMPLE = ROOT / "examples/babyweight/precompute.toml"


def config_for(tmp: Path, name: str, fine: bool) -> Path:
    text = EXAMPLE.read_text().replace('path = "model"', f'path = "{ROOT / "examples/babyweight/model"}"')
    text = text.replace('url = "sqlite:///var/babyweight.db"', f'url = "sqlite:///{name}.db"')
    if fine:  # 3 x 761 x 6 x 751 = 10,287,198 rows
        text = text.replace("stop = 50\nstep = 1", "stop = 50\nstep = 0.05").replace(
            "stop = 47\nstep = 1", "stop = 47\nstep = 0.04"
        )
    path = tmp / f"{name}.toml"
    path.write_text(text)
    return path


def precompute_run(config: Path) -> dict[str, float]:
    db = config.with_suffix(".db")
    for suffix in ("", "-wal", "-shm"):
        Path(str(db) + suffix).unlink(missing_ok=True)
    summary = config.with_suffix(".json")
    cmd = [
        sys.executable,
        "-m",
        "precompute.cli",
        "run",
        "--config",
        str(config),
        "--quiet",
        "--summary-json",
        str(summary),
    ]
    start = time.perf_counter()
    subprocess.run(
        cmd,
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "PRECOMPUTE_STORE": ""},
    )
    wall = time.perf_counter() - start
    data = json.loads(summary.read_text())
    return {"rows": data["rows"], "wall": wall, **{f"stage_{k}": v for k, v in data["seconds"].items()}}


def raw_scoring(rows: int) -> float:
    """Rows/s of the bare model on grid features, one process, batches of 16,384."""
    import numpy as np

    from precompute.config import load_config
    from precompute.model import Model, grid_inputs
    from precompute.space import GridSpace

    config = load_config(EXAMPLE, env={})
    space = config.space
    assert isinstance(space, GridSpace)
    model = Model(config.model.path, config.model.signature, config.model.outputs)
    inputs = grid_inputs(space, model.signature)
    batch = 16_384
    ids = np.arange(batch, dtype=np.int64)
    idx = space.indices(ids % space.size)
    features = {n: v[idx[n]] for n, v in inputs.items()}
    model.predict(features)  # warm-up (graph tracing)
    start = time.perf_counter()
    done = 0
    while done < rows:
        model.predict(features)
        done += batch
    return done / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--rows-10m", action="store_true", help="also run the 10.3 M-row grid")
    parser.add_argument("--lookups", action="store_true", help="also run bench/lookup.py on the example store")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="precompute-e2e-"))

    raw = statistics.median(raw_scoring(10_000_000) for _ in range(args.runs))
    print(f"raw model scoring, one process:        {raw:>12,.0f} rows/s  (median of {args.runs})", flush=True)

    cases = [("example", False)] + ([("grid-10m", True)] if args.rows_10m else [])
    for name, fine in cases:
        config = config_for(tmp, name, fine)
        runs = [precompute_run(config) for _ in range(args.runs)]
        rows = runs[0]["rows"]
        wall = statistics.median(r["wall"] for r in runs)
        stages = {
            k.removeprefix("stage_"): statistics.median(r[k] for r in runs) for k in runs[0] if k.startswith("stage_")
        }
        print(
            f"precompute run, {name:<9} {rows:>11,.0f} rows: {rows / wall:>12,.0f} rows/s end to end "
            f"({wall:.1f} s wall; {rows / wall / raw:.1%} of raw scoring)",
            flush=True,
        )
        print("    stages (median s): " + "  ".join(f"{k} {v:.2f}" for k, v in stages.items()), flush=True)

    if args.lookups:
        config = config_for(tmp, "example", False)
        precompute_run(config)
        subprocess.run(
            [sys.executable, str(ROOT / "bench/lookup.py"), "--config", str(config), "--runs", str(args.runs)],
            check=True,
        )


if __name__ == "__main__":
    main()
