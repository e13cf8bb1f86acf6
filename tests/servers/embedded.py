"""The two backends that need no server: the in-memory reference and the embedded SQLite default."""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from precompute.adapters import open_backend

STORE_FIXTURES = ["memory_store_url", "sqlite_store_url"]
DOWN_FIXTURES = ["sqlite_down_url"]


@pytest.fixture
def memory_store_url() -> str:
    return f"memory://test-{uuid.uuid4().hex}"


@pytest.fixture
def sqlite_store_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path}/store.db"


@pytest.fixture
def sqlite_down_url(tmp_path: Path) -> Iterator[str]:
    """A SQLite store that another connection holds locked (SQLite's "down"): every call meets a busy file."""
    url = f"sqlite:///{tmp_path}/store.db"
    open_backend(url).close()  # create it, in WAL mode, with its tables
    holder = sqlite3.connect(tmp_path / "store.db", isolation_level=None)
    holder.execute("PRAGMA locking_mode=EXCLUSIVE")
    holder.execute("BEGIN EXCLUSIVE")
    holder.execute("INSERT INTO records (version, record) VALUES ('held', x'00')")
    yield url + "?timeout=0.3"
    holder.execute("ROLLBACK")
    holder.close()
