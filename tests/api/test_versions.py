"""What the API reads of versions, all through its Reader: the live version's record and its formats (a
version newer than this release reads is not served), ``meta["model"]`` for online answers, and expiring
values (read once, with their expiry, so the hot-key cache keeps none of them). ``store_url`` (tests/conftest.py)
runs a test on every backend in turn."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from precompute.adapters import open_backend, open_reader
from precompute.api import create_app
from precompute.config import Config, load_config
from precompute.model import fingerprint
from precompute.store import Backend, Versions
from precompute.store.codec import VALUE_FORMAT, encode_key, expiring, split_expiry
from tests.api.conftest import memory_config, wait_for
from tests.precompute.conftest import EXAMPLE_CONFIG

KEY = "True:25:Single(1):39"
ROW = {KEY: b'{"weight_pounds":7.31}'}


def config_for(url: str, **serve: Any) -> Config:
    config = load_config(EXAMPLE_CONFIG, env={"PRECOMPUTE_STORE": url})
    for name, value in serve.items():
        object.__setattr__(config.serve, name, value)
    return config


def publish(url: str, rows: dict[str, bytes], value_format: int = VALUE_FORMAT) -> str:
    versions = Versions(open_backend(url))
    record = versions.begin()
    record.value_format = value_format  # what a newer release would record
    versions.backend.write(record.version, [(encode_key(k), v) for k, v in rows.items()])
    versions.mark_ready(record, len(rows))
    versions.publish(record)
    versions.backend.close()
    return record.version


def refusals(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith("not serving version")]


def test_a_version_in_a_newer_format_is_not_served_and_the_previous_one_still_is(
    store_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="precompute.api")
    first = publish(store_url, ROW)
    with TestClient(create_app(config_for(store_url, refresh_seconds=0.05))) as client:
        assert client.get("/readyz").status_code == 200
        newer = publish(store_url, {KEY: b"format 3 bytes"}, value_format=VALUE_FORMAT + 1)
        assert wait_for(lambda: client.get("/readyz").status_code == 503)
        ready = client.get("/readyz").json()
        assert ready["ready"] is False
        assert f"version {newer} stores values in format {VALUE_FORMAT + 1}" in ready["error"]
        assert ready["model_version"] == first
        answer = client.get(f"/predict/{KEY}")  # the previous version keeps being served
        assert answer.status_code == 200
        assert answer.json()["model_version"] == first
        assert answer.json()["prediction"] == {"weight_pounds": 7.31}
        batch = client.post("/predict", json={"keys": [KEY]}).json()
        assert batch["model_version"] == first
        time.sleep(0.2)  # several refreshes see the same version: one log line, not one a refresh
        metrics = client.get("/metrics").text
        assert "precompute_ready 0.0" in metrics
        assert "precompute_store_up 1.0" in metrics  # the store answers; it is the data that is refused
        assert f'precompute_live_version_info{{version="{first}"}} 1.0' in metrics
        assert len(refusals(caplog)) == 1
        assert newer in refusals(caplog)[0]
        assert any(r.levelno == logging.ERROR for r in caplog.records if r.getMessage() in refusals(caplog))

        third = publish(store_url, {KEY: b'{"weight_pounds":8.0}'})
        assert wait_for(lambda: client.get("/readyz").status_code == 200)
        assert client.get("/readyz").json()["model_version"] == third
        assert client.get(f"/predict/{KEY}").json()["prediction"] == {"weight_pounds": 8.0}


def test_with_only_a_newer_format_published_nothing_is_served(store_url: str) -> None:
    newer = publish(store_url, ROW, value_format=VALUE_FORMAT + 1)
    with TestClient(create_app(config_for(store_url))) as client:
        ready = client.get("/readyz")
        answer = client.get(f"/predict/{KEY}")
        batch = client.post("/predict", json={"keys": [KEY]})
    assert ready.status_code == 503
    assert ready.json()["model_version"] is None
    assert f"version {newer} stores values in format {VALUE_FORMAT + 1}" in ready.json()["error"]
    assert "degraded" not in ready.json()
    assert answer.status_code == 503
    assert "upgrade precompute" in answer.json()["error"]
    assert answer.headers["retry-after"] == "1"
    assert batch.status_code == 503


def test_a_live_version_without_a_record_is_not_served_until_its_record_appears(store_url: str) -> None:
    first = publish(store_url, ROW)
    backend = open_backend(store_url)
    with TestClient(create_app(config_for(store_url, refresh_seconds=0.05))) as client:
        raw = backend.records()[first]
        backend.create_version("hand-made")
        backend.write("hand-made", [(encode_key(KEY), b'{"weight_pounds":1.0}')])
        assert backend.swap_alias(first, "hand-made")  # published by hand, without a record
        assert wait_for(lambda: "no record" in client.get("/readyz").json().get("error", ""))
        assert client.get(f"/predict/{KEY}").json()["model_version"] == first
        backend.put_record("hand-made", raw.replace(first.encode(), b"hand-made"))
        assert wait_for(lambda: client.get("/readyz").json()["model_version"] == "hand-made")
        assert client.get(f"/predict/{KEY}").json()["prediction"] == {"weight_pounds": 1.0}
    backend.close()


class CountingOpens:
    """``open_backend`` as the app calls it, counting the synchronous backends it opens."""

    def __init__(self) -> None:
        self.urls: list[str] = []

    def __call__(self, url: Any) -> Backend:
        self.urls.append(str(url))
        return open_backend(url)


def test_online_answers_take_their_model_version_from_the_record_read_by_the_reader(
    formula_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    opens = CountingOpens()
    monkeypatch.setattr("precompute.api.app.open_backend", opens)
    config = memory_config(formula_model, fallback="on")
    versions = Versions(open_backend(config.store_url))
    record = versions.begin({"model": fingerprint(formula_model)})
    versions.mark_ready(record, 0)
    versions.publish(record)
    with TestClient(create_app(config)) as client:
        answer = client.get("/predict/True:51:Single(1):39").json()
        batch = client.post("/predict", json={"keys": ["True:52:Single(1):39"]}).json()
    assert answer["source"] == "online"
    assert answer["model_version"] == record.version
    assert batch["results"][0]["model_version"] == record.version
    assert opens.urls == []  # no write-back: the API opened no synchronous backend

    written = memory_config(formula_model, fallback="on", write_back=True, cache_bytes=0)
    versions = Versions(open_backend(written.store_url))
    record = versions.begin({"model": fingerprint(formula_model)})
    versions.mark_ready(record, 0)
    versions.publish(record)
    with TestClient(create_app(written)) as client:
        assert client.get("/metrics").status_code == 200
        assert opens.urls == []  # opened on the first write-back, not before
        assert client.get("/predict/True:51:Single(1):39").json()["source"] == "online"
        assert wait_for(lambda: client.get("/predict/True:51:Single(1):39").json()["source"] == "precomputed")
    assert len(opens.urls) == 1


def test_the_reader_returns_a_value_with_its_expiry_and_an_expired_one_as_absent(store_url: str) -> None:
    now = time.time()
    rows = {
        "plain": b'{"y":1}',
        "later": expiring(b'{"y":2}', now + 3600),
        "gone": expiring(b'{"y":3}', now - 1),
    }
    version = publish(store_url, rows)
    keys = [b"plain", b"later", b"gone", b"absent"]

    async def reads() -> list[Any]:
        reader = open_reader(store_url)  # on the loop that uses it
        try:
            return [
                [await reader.get_with_expiry(version, key) for key in keys],
                [await reader.get(version, key) for key in keys],
                await reader.get_many(version, keys),
            ]
        finally:
            await reader.aclose()

    with_expiry, values, many = asyncio.run(reads())
    later = with_expiry[1][1]
    assert with_expiry == [(b'{"y":1}', None), (b'{"y":2}', later), (None, None), (None, None)]
    assert isinstance(later, int)
    assert now + 3600 <= later <= now + 3601
    assert values == many == [b'{"y":1}', b'{"y":2}', None, None]


def test_split_expiry_reads_the_mark_once() -> None:
    stored = expiring(b'{"y":2}', 1_795_000_000.2)
    assert split_expiry(stored, 1_795_000_000.9) == (b'{"y":2}', 1_795_000_001)
    assert split_expiry(stored, 1_795_000_001.0) == (None, None)
    assert split_expiry(b'{"y":2}', 2e9) == (b'{"y":2}', None)


def test_an_answer_that_expires_never_enters_the_hot_cache() -> None:
    config = memory_config(cache_bytes=1 << 20)
    versions = Versions(open_backend(config.store_url))
    record = versions.begin()
    versions.backend.write(
        record.version,
        [
            (encode_key(KEY), expiring(b'{"weight_pounds":7.31}', time.time() + 3600)),
            (encode_key("False:30:Twins(2):40"), b'{"weight_pounds":5.5}'),
        ],
    )
    versions.mark_ready(record, 2)
    versions.publish(record)
    with TestClient(create_app(config)) as client:
        for _ in range(3):
            answer = client.get(f"/predict/{KEY}")
            assert answer.json()["prediction"] == {"weight_pounds": 7.31}  # the mark never reaches a client
            assert answer.json()["source"] == "precomputed"
            client.get("/predict/False:30:Twins(2):40")
        cache = client.app.state.cache  # type: ignore[attr-defined]
        assert KEY not in cache.entries
        assert "False:30:Twins(2):40" in cache.entries
        assert cache.hits == 2  # the key that never expires, twice
