"""The embedded SQLite backend's own cases; everything shared is in tests/store/test_contract.py."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pyarrow as pa
import pytest

from precompute.adapters import open_backend, open_reader
from precompute.adapters.sqlite import _json_pairs
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


@pytest.mark.parametrize(
    ("rows", "as_json"),
    [
        # JSON carries these: quotes, backslashes, an escaped unicode lookalike, non-ASCII UTF-8.
        ([(b'a"b', b'{"y":1}'), (b"c\\d", b"\\u0041"), ("é:ü".encode(), "ß→".encode()), (b"plain", b"")], True),
        # JSON cannot: not UTF-8, and control characters; these rows take the other way, the same bytes back.
        ([(b"\xff\xfe", b"\x00\x01"), (b"tab\tkey", b"new\nline"), (b"ok", b"\x7f")], False),
    ],
    ids=["json", "not-json"],
)
def test_columns_read_back_byte_for_byte(tmp_path: Path, rows: list[tuple[bytes, bytes]], as_json: bool) -> None:
    backend = open_backend(f"sqlite:///{tmp_path}/s.db")
    backend.create_version("v1")
    with_duplicate = [*rows, (rows[0][0], b"later")]  # the later row of a key wins
    keys = pa.array([k for k, _ in with_duplicate], pa.binary())
    values = pa.array([v for _, v in with_duplicate], pa.binary())
    assert (_json_pairs(keys, values) is not None) == as_json
    backend.write_columns("v1", keys, values)
    want = dict(with_duplicate)
    assert backend.read("v1", list(want)) == list(want.values())
    assert backend.count("v1") == len(want)


def test_columns_load_in_chunks_of_the_write_batch(tmp_path: Path) -> None:
    backend = open_backend(f"sqlite:///{tmp_path}/s.db")
    backend.create_version("v1")
    n = backend.max_write_batch * 2 + 3
    keys = pa.array([b"k%d" % i for i in range(n)], pa.binary())
    values = pa.array([b'{"y":%d}' % i for i in range(n)], pa.binary())
    backend.write_columns("v1", keys.slice(1), values.slice(1))  # a slice: offsets that do not start at 0
    assert backend.count("v1") == n - 1
    assert backend.read("v1", [b"k0", b"k1", b"k%d" % (n - 1)]) == [None, b'{"y":1}', b'{"y":%d}' % (n - 1)]
