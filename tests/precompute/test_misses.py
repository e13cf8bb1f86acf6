"""Growing the space from misses, end to end: a published grid, the API answering off-grid keys online and
recording them, then ``precompute run`` with ``include_misses`` scoring them into the next version, which
the API serves as precomputed with the answer it gave online."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from precompute.adapters import open_backend
from precompute.api import create_app
from precompute.model import fingerprint
from precompute.run import run
from precompute.store import Versions
from precompute.store.codec import encode_key
from tests.api.conftest import publish, wait_for
from tests.precompute.conftest import example

pytestmark = pytest.mark.ray

OFTEN = "True:51:Single(1):39"  # mother_age 51: off the 12..50 grid
RARELY = "False:55:Twins(2):30"
ON_GRID = "True:25:Single(1):39"


def test_recorded_misses_are_scored_into_the_next_version(ray_session: Any, tmp_path: Path) -> None:
    config = example(
        f"sqlite:///{tmp_path / 'store.db'}",
        serve={"fallback": "on", "record_misses": True, "misses_flush_seconds": 0.1},
        misses={"include": True, "min_count": 2},
    )
    # A published grid version (one row of it is enough here: the run below scores the whole grid).
    publish(config, {ON_GRID: b'{"weight_pounds":7.5}'}, {"model": fingerprint(config.model.path)})
    backend = open_backend(config.store_url)

    online: dict[str, Any] = {}
    with TestClient(create_app(config)) as client:
        for key in (OFTEN, OFTEN, "True:51.0:Single(1):39", RARELY, ON_GRID):
            body = client.get(f"/predict/{key}").json()
            assert body["source"] == ("precomputed" if key == ON_GRID else "online"), body
            online[body["key"]] = body["prediction"]
        assert wait_for(lambda: backend.misses() == {encode_key(OFTEN): 3, encode_key(RARELY): 1})
    # Recorded by an API with another grid: now inside this one, or no longer in the space at all.
    backend.add_misses({encode_key(ON_GRID): 5, encode_key("Maybe:51:Single(1):39"): 5}, cap=100)

    second = run(config)  # the grid, and the misses answered often enough
    assert second.misses_included == 1
    assert second.rows == 21_763
    assert second.misses is not None
    assert {k: second.misses[k] for k in ("recorded", "included", "below_min_count", "in_grid", "not_in_space")} == {
        "recorded": 4,
        "included": 1,
        "below_min_count": 1,
        "in_grid": 1,
        "not_in_space": 1,
    }
    assert "misses    1 of 4 recorded included (answered online at least 2 times); 1 below that" in second.render()
    assert second.to_dict()["misses_included"] == 1  # in --summary-json and the version's record
    record = Versions(backend).get(second.version or "")
    assert record.rows == 21_763
    assert record.meta["misses_included"] == 1
    stored = backend.read(second.version or "", [encode_key(OFTEN)])[0]
    assert stored is not None
    assert json.loads(stored)["weight_pounds"] == pytest.approx(online[OFTEN]["weight_pounds"], rel=1e-6)
    # The included key stays recorded (the next run includes it again); what no longer applies is cleared.
    assert set(backend.misses()) == {encode_key(OFTEN), encode_key(RARELY)}

    with TestClient(create_app(config)) as client:
        served = client.get(f"/predict/{OFTEN}").json()
        assert served["source"] == "precomputed"
        assert served["model_version"] == second.version
        assert served["prediction"]["weight_pounds"] == pytest.approx(online[OFTEN]["weight_pounds"], rel=1e-6)
        assert client.get(f"/predict/{RARELY}").json()["source"] == "online"  # below the minimum count
