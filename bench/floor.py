"""The floor of any `precompute run`: one process that imports TensorFlow, loads and calls the example model
and starts and stops a local Ray, as a run does, and nothing else (no store, no Ray Data, no actors).

    python bench/floor.py [--config examples/babyweight/precompute.toml]

bench/limits.py times it in a subprocess, beside an 11 K-row run, as the baseline of a small run's fixed cost.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=ROOT / "examples/babyweight/precompute.toml")
    args = parser.parse_args()

    import numpy as np

    from precompute import cluster
    from precompute.config import load_config
    from precompute.model import Model, grid_inputs
    from precompute.space import GridSpace

    config = load_config(args.config, env={})
    space = config.space
    assert isinstance(space, GridSpace)
    model = Model(config.model.local_path(), config.model.signature, config.model.outputs)  # imports TensorFlow
    inputs = grid_inputs(space, model.signature)
    idx = space.indices(np.arange(min(16, space.size), dtype=np.int64))
    model.predict({n: v[idx[n]] for n, v in inputs.items()})
    import ray

    cluster.init(None)  # the same ray.init a run makes
    ray.shutdown()


if __name__ == "__main__":
    main()
