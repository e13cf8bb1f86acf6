"""Shared pieces for the serving tests: configs over the in-memory store, publishing rows, and small
SavedModels built once per session (a formula whose answer is known per key, and one that sleeps)."""

from __future__ import annotations

import dataclasses
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx2 as httpx
import pytest
from starlette.applications import Starlette

from precompute.adapters import open_backend
from precompute.config import Config, load_config
from precompute.store import Reader, StoreUnavailable, Versions
from precompute.store.codec import encode_key
from tests.precompute.conftest import EXAMPLE_CONFIG
from tests.precompute.models import save_formula_model

# The slow model's nap, read at every call: tests make it slow only once the app has warmed up.
NAP = {"seconds": 0.0}


def expected_weight(mother_age: float, gestation_weeks: float) -> float:
    """What the formula model answers, computed the way it does (float32)."""
    import numpy as np

    return float(np.float32(mother_age) * np.float32(0.01) + np.float32(gestation_weeks) * np.float32(0.2))


def _formula(is_male: Any, mother_age: Any, plurality: Any, gestation_weeks: Any) -> Any:
    import tensorflow as tf

    # NaN for a negative age, so that the non-finite path can be exercised.
    return mother_age * 0.01 + gestation_weeks * 0.2 + tf.sqrt(tf.minimum(mother_age, 0.0) + 0.0) * 0.0


def _napping(is_male: Any, mother_age: Any, plurality: Any, gestation_weeks: Any) -> Any:
    import tensorflow as tf

    def nap(x: Any) -> Any:
        time.sleep(NAP["seconds"])
        return x

    slept = tf.py_function(nap, [mother_age], tf.float32)
    slept.set_shape([None])
    return slept * 0.01 + gestation_weeks * 0.2


@pytest.fixture(scope="session")
def formula_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_formula_model(tmp_path_factory.mktemp("models") / "formula", _formula)


@pytest.fixture(scope="session")
def slow_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Same answers as the formula model, after sleeping NAP["seconds"] per call (the sleep releases the GIL,
    like TensorFlow's kernels do)."""
    return save_formula_model(tmp_path_factory.mktemp("models") / "slow", _napping)


def memory_config(model: Path | None = None, env: dict[str, str] | None = None, **serve: Any) -> Config:
    """The example config on a fresh in-memory store, with ``[serve]`` fields replaced."""
    config = load_config(EXAMPLE_CONFIG, env={"PRECOMPUTE_STORE": f"memory://api-{uuid.uuid4().hex}", **(env or {})})
    replaced = dataclasses.replace(config, serve=dataclasses.replace(config.serve, **serve))
    if model is not None:
        replaced = dataclasses.replace(replaced, model=dataclasses.replace(config.model, path=model, outputs=None))
    return replaced


def publish(config: Config, rows: dict[str, bytes], meta: dict[str, Any] | None = None) -> str:
    versions = Versions(open_backend(config.store_url))
    record = versions.begin(meta)
    versions.backend.write(record.version, [(encode_key(k), v) for k, v in rows.items()])
    versions.mark_ready(record, len(rows))
    versions.publish(record)
    return record.version


def wait_for(condition: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.01)
    return condition()


@asynccontextmanager
async def running(app: Starlette) -> AsyncIterator[httpx.AsyncClient]:
    """The app with its lifespan, and an async client for concurrent requests in-process."""
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            yield client


class FailingReader(Reader):
    """A reader whose store is down while ``down`` is set: every primitive raises StoreUnavailable.

    The faults sit under the Reader's template methods (``get``, ``get_with_expiry``, ``get_many``), so the
    API reads through the same code as it does on a real store.
    """

    def __init__(self, inner: Reader) -> None:
        super().__init__(inner.url)
        self.inner = inner
        self.down = False

    def _fail_if_down(self) -> None:
        if self.down:
            raise StoreUnavailable("connection refused")

    async def get_alias(self) -> str | None:
        self._fail_if_down()
        return await self.inner.get_alias()

    async def records(self) -> dict[str, bytes]:
        self._fail_if_down()
        return await self.inner.records()

    async def read_one(self, version: str, key: bytes) -> bytes | None:
        self._fail_if_down()
        return await self.inner.read_one(version, key)

    async def read_batch(self, version: str, keys: Sequence[bytes]) -> list[bytes | None]:
        self._fail_if_down()
        return await self.inner.read_batch(version, keys)

    async def aclose(self) -> None:
        await self.inner.aclose()
