from __future__ import annotations

import pytest

from precompute.adapters import backend_class, open_backend
from precompute.store import StoreURL, UnknownBackend


def test_parts_and_options() -> None:
    url = StoreURL.parse("rediss://user:s%40cret@cache.internal:6380/2?ttl=3600")
    assert (url.scheme, url.username, url.password, url.host, url.port, url.path) == (
        "rediss",
        "user",
        "s@cret",
        "cache.internal",
        6380,
        "/2",
    )
    assert url.option("ttl") == "3600"


def test_passwords_never_reach_logs() -> None:
    url = StoreURL.parse("redis://:hunter2@host:6379/0")
    assert "hunter2" not in str(url)
    assert "hunter2" not in repr(url)
    assert url.redacted() == "redis://:***@host:6379/0"


def test_unknown_scheme_names_the_known_ones() -> None:
    with pytest.raises(UnknownBackend, match=r"known schemes: memory://, sqlite://, redis://"):
        open_backend("cassandra://x/y")
    with pytest.raises(ValueError, match="no scheme"):
        StoreURL.parse("store.db")


def test_backends_are_imported_lazily_by_scheme() -> None:
    assert backend_class("sqlite:///x.db").__name__ == "SQLiteBackend"
    assert backend_class("memory://x").__name__ == "MemoryBackend"
