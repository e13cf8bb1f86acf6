"""Backends, chosen by the scheme of a store URL and imported lazily.

Memory and SQLite are single modules; every server backend is a package with the same modules
(``options``, ``layout``, ``client``, ``errors``, ``writes``, ``meta``, ``backend``, ``reader``) that
exports one :class:`~precompute.store.Backend` and one :class:`~precompute.store.Reader` subclass. The table
below maps a scheme to "module:BackendClass:ReaderClass". Only the module a URL needs is imported, so a
Redis user never imports the Bigtable SDK.
"""

from __future__ import annotations

import importlib

from precompute.store import Backend, Reader, StoreURL, UnknownBackend

BACKENDS: dict[str, str] = {
    "memory": "precompute.adapters.memory:MemoryBackend:MemoryReader",
    "sqlite": "precompute.adapters.sqlite:SQLiteBackend:SQLiteReader",
    "redis": "precompute.adapters.redis:RedisBackend:RedisReader",
    "rediss": "precompute.adapters.redis:RedisBackend:RedisReader",
    "redis+cluster": "precompute.adapters.redis:RedisBackend:RedisReader",
    "rediss+cluster": "precompute.adapters.redis:RedisBackend:RedisReader",
    "bigtable": "precompute.adapters.bigtable:BigtableBackend:BigtableReader",
    "dynamodb": "precompute.adapters.dynamodb:DynamoDBBackend:DynamoDBReader",
}

#: The pip extra that installs each module's SDK, named in the error when it is missing.
EXTRAS = {
    "precompute.adapters.redis": "redis",
    "precompute.adapters.bigtable": "bigtable",
    "precompute.adapters.dynamodb": "dynamodb",
}


def _classes(url: StoreURL) -> tuple[type[Backend], type[Reader]]:
    try:
        target = BACKENDS[url.scheme]
    except KeyError:
        known = ", ".join(f"{scheme}://" for scheme in BACKENDS)
        raise UnknownBackend(f"unknown store scheme {url.scheme!r} in {url}; known schemes: {known}") from None
    module_name, backend_name, reader_name = target.split(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        extra = EXTRAS.get(module_name)
        hint = f"; install it with: pip install 'precompute[{extra}]'" if extra else ""
        raise UnknownBackend(f"the {url.scheme}:// backend needs a package that is missing ({exc}){hint}") from exc
    backend: type[Backend] = getattr(module, backend_name)
    reader: type[Reader] = getattr(module, reader_name)
    return backend, reader


def backend_class(url: str | StoreURL) -> type[Backend]:
    return _classes(url if isinstance(url, StoreURL) else StoreURL.parse(url))[0]


def open_backend(url: str | StoreURL) -> Backend:
    parsed = url if isinstance(url, StoreURL) else StoreURL.parse(url)
    return _classes(parsed)[0](parsed)


def open_reader(url: str | StoreURL) -> Reader:
    parsed = url if isinstance(url, StoreURL) else StoreURL.parse(url)
    return _classes(parsed)[1](parsed)


__all__ = ["BACKENDS", "backend_class", "open_backend", "open_reader"]
