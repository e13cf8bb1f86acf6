from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from precompute.config import Config, load_config

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "babyweight"
EXAMPLE_CONFIG = EXAMPLE / "precompute.toml"


def example(url: str, **sections: dict[str, Any]) -> Config:
    """The example's config on the store ``url``, with fields of its sections replaced, e.g.
    ``example(url, model={"path": elsewhere}, run={"actors": 4})``."""
    config = load_config(EXAMPLE_CONFIG, env={"PRECOMPUTE_STORE": url})
    changes = {name: dataclasses.replace(getattr(config, name), **fields) for name, fields in sections.items()}
    return dataclasses.replace(config, **changes)
