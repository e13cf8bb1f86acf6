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


def _root_of_age(is_male: Any, mother_age: Any, plurality: Any, gestation_weeks: Any) -> Any:
    import tensorflow as tf

    return tf.sqrt(mother_age) + gestation_weeks * 0.0  # NaN for a negative age


def test_selection_ranks_bounds_and_skips_what_cannot_be_stored(tmp_path: Path) -> None:
    """Without Ray: which recorded misses a run takes, and a key the model answers NaN for is left out."""
    from precompute.adapters.memory import MemoryBackend
    from precompute.config import MissesConfig
    from precompute.misses import score, select
    from precompute.model import Model
    from precompute.space import GridSpace
    from precompute.store import StoreURL
    from tests.precompute.models import save_formula_model

    config = example("sqlite:///unused.db")
    space = config.space
    assert isinstance(space, GridSpace)
    backend = MemoryBackend(StoreURL.parse(f"memory://{tmp_path.name}"))
    recorded = {"True:51:Single(1):39": 9, "True:-4:Single(1):39": 8, "True:52:Single(1):39": 5, RARELY: 1}
    backend.add_misses({encode_key(k): n for k, n in recorded.items()}, cap=100)
    backend.add_misses({encode_key("True:51.0:Single(1):39"): 3, encode_key(ON_GRID): 3}, cap=100)

    chosen = select(backend, space, MissesConfig(include=True, min_count=2, max_keys=2))
    assert [key for key, _ in chosen.included] == ["True:51:Single(1):39", "True:-4:Single(1):39"]
    assert (chosen.recorded, chosen.below_min_count, chosen.over_max) == (6, 1, 1)
    assert chosen.in_grid == [encode_key(ON_GRID)]
    assert chosen.not_in_space == [encode_key("True:51.0:Single(1):39")]  # not a key the API records

    model = Model(save_formula_model(tmp_path / "root", _root_of_age))
    rows = score(model, space, chosen, batch_size=1)
    assert rows == [(encode_key("True:51:Single(1):39"), b'{"weight_pounds":7.1414285}')]
    assert chosen.non_finite == 1
    assert chosen.to_dict()["included"] == 1
