"""The embedded SQLite backend's own cases; everything shared is in tests/store/test_contract.py."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from precompute.adapters import open_backend, open_reader
from precompute.store import StoreConfigError, StoreUnavailable


def test_a_path_that_cannot_be_created_is_bad_configuration_naming_the_path() -> None:
    with pytest.raises(StoreConfigError, match=r"/proc/nope/x\.db.*Fix: point \[store\] url"):
        open_backend("sqlite:////proc/nope/x.db")


@pytest.mark.parametrize(
    ("query", "message"),
    [("timeout=soon", r"option timeout='soon' must be a number >= 0"), ("timout=1", r"did you mean 'timeout'")],
)
def test_url_options_are_checked(tmp_path: Path, query: str, message: str) -> None:
    with pytest.raises(StoreConfigError, match=message):
        open_backend(f"sqlite:///{tmp_path}/s.db?{query}")


def test_a_reader_before_the_first_run_says_so(tmp_path: Path) -> None:
    reader = open_reader(f"sqlite:///{tmp_path}/absent.db")
    with pytest.raises(StoreUnavailable, match="run `precompute run` first"):
        asyncio.run(reader.get_alias())
