"""precompute.model.Model: the signature's flat call, taken only when it answers as the call by name does."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from precompute.config import load_config
from precompute.model import FeatureArrays, Model
from precompute.space import GridSpace
from tests.precompute.conftest import EXAMPLE, EXAMPLE_CONFIG


def inputs(model: Model, n: int, start: int = 0) -> dict[str, Any]:
    space = load_config(EXAMPLE_CONFIG).space
    assert isinstance(space, GridSpace)
    rows = [space.decode(space.key_for_id((start + i * 37) % space.size)).features for i in range(n)]
    return FeatureArrays(space, model.signature)(rows)


def by_name(model: Model, arrays: dict[str, Any]) -> np.ndarray[Any, Any]:
    tensors = {name: model._tf.constant(arrays[name], dtype=dtype) for name, dtype in model._input_dtypes.items()}
    return np.asarray(model._fn(**tensors)["weight_pounds"].numpy()).reshape(-1)


def test_the_flat_call_is_taken_after_the_first_and_answers_byte_for_byte_as_by_name() -> None:
    model = Model(EXAMPLE / "model")
    assert model._flat is not None
    assert not model._flat_checked
    for n, start in ((1, 0), (32, 5), (257, 11)):
        arrays = inputs(model, n, start)
        got = model.predict(arrays)["weight_pounds"]
        assert got.tobytes() == by_name(model, arrays).astype(np.float32).tobytes()
    assert model._flat_checked
    assert model._flat is not None


@pytest.mark.parametrize("fault", ["different", "raises"])
def test_a_flat_call_that_differs_or_fails_is_never_used(monkeypatch: pytest.MonkeyPatch, fault: str) -> None:
    model = Model(EXAMPLE / "model")
    real = model._flat_call
    calls: list[int] = []

    def flat(tensors: list[Any], captured: Any) -> Any:
        calls.append(1)
        if fault == "raises":
            raise TypeError("not this version's signature")
        out = real(tensors, captured)
        return {name: value + 1.0 for name, value in out.items()}

    monkeypatch.setattr(model, "_flat_call", flat)
    for start in (0, 3):
        arrays = inputs(model, 8, start)
        assert model.predict(arrays)["weight_pounds"].tobytes() == by_name(model, arrays).tobytes()
    assert model._flat is None
    assert len(calls) == 1
