"""Vectorized encoding of model outputs into stored values (see :mod:`store.codec` for the format).

A value is the compact JSON object the API returns, built column-wise with Arrow so that millions of rows
never pass through Python one by one. Floats are float32 in their shortest round-trip decimal form.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc


class NonFiniteOutput(ValueError):
    """The model produced NaN or infinity: such a version is never published."""


def encode_values(outputs: dict[str, npt.NDArray[np.float32]], keys: pa.Array | Sequence[str]) -> pa.Array:
    """``{"out1":v1,"out2":v2}`` per row, as a binary Arrow array. ``keys`` names rows in errors."""
    pieces: list[pa.Array | pa.Scalar] = []
    for i, (name, column) in enumerate(outputs.items()):
        finite = np.isfinite(column)
        if not finite.all():
            row = int(np.argmin(finite))
            key = keys[row].as_py() if isinstance(keys, pa.Array) else keys[row]
            raise NonFiniteOutput(f"the model returned {column[row]} for output {name!r} at key {key!r}")
        prefix = ("{" if i == 0 else ",") + json.dumps(name) + ":"
        pieces += [pa.scalar(prefix), pc.cast(pa.array(column), pa.string())]
    pieces.append(pa.scalar("}"))
    joined = pc.binary_join_element_wise(*pieces, "")
    return joined.cast(pa.binary())


def encode_finite(outputs: dict[str, npt.NDArray[np.float32]], keys: list[str]) -> list[bytes | None]:
    """:func:`encode_values` row by row for keys scored one at a time or a few (online answers, recorded
    misses): ``None`` for a row where the model returned NaN or infinity, instead of failing them all."""
    finite = np.ones(len(keys), dtype=bool)
    for column in outputs.values():
        finite &= np.isfinite(column)
    if finite.all():
        return list(encode_values(outputs, keys).to_pylist())
    kept = {name: column[finite] for name, column in outputs.items()}
    encoded = iter(encode_values(kept, [key for key, ok in zip(keys, finite, strict=True) if ok]).to_pylist())
    return [next(encoded) if ok else None for ok in finite]
