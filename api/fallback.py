"""The online fallback: the model loaded in the API process, scoring keys the store cannot answer.

Imported only when ``[serve] fallback`` is not "off", and TensorFlow only when :meth:`OnlineModel.load`
runs (at start-up, on the model thread, followed by warm-up calls so that the first request does not pay
for graph initialisation: ~0.4 ms per call afterwards for the babyweight model, flat up to ~1,000 rows).

An online answer is encoded by :func:`precompute.values.encode_values`, the encoder the batch job uses,
from features converted to the model's dtypes exactly as :func:`precompute.model.grid_inputs` converts
the grid: an online answer for a grid key is byte-for-byte the value the batch job would have stored.

``model_version`` of an online answer: the live version's id when the loaded model's fingerprint equals
the fingerprint recorded in that version's metadata (``meta["model"]``, written by ``precompute run``),
so that clients see one model version whichever way the answer came; otherwise the loaded model's own
fingerprint (``sha256:...``), which says plainly that a different model answered. The record is the one
:class:`~precompute.api.live.LiveVersion` read through the reader before serving that version: the
fallback opens no store connection of its own.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from precompute.api.writeback import WriteBack
from precompute.config import Config
from precompute.model import Array, Model, ModelError, fingerprint, grid_inputs
from precompute.space import Categorical, Decoded, GridSpace, Range
from precompute.store import VersionRecord
from precompute.store.codec import encode_value
from precompute.values import encode_values

log = logging.getLogger("precompute.api")


@dataclass(frozen=True, slots=True)
class Online:
    """One request for the model: the canonical key, its features and the live version it was missed in."""

    key: str
    features: dict[str, str | float]
    version: str | None


@dataclass(frozen=True, slots=True)
class Scored:
    value: bytes | None  # None: the model returned NaN or infinity for these features
    model_version: str


class OnlineModel:
    def __init__(
        self, config: Config, records: Callable[[str], VersionRecord | None], writeback: WriteBack | None
    ) -> None:
        """``records(version)``: the record of a version being served (``LiveVersion.record``)."""
        if not isinstance(config.space, GridSpace):
            raise ValueError("the online fallback needs a grid space")
        self.config = config
        self.space: GridSpace = config.space
        self._records = records
        self.writeback = writeback
        self.model: Model | None = None
        self.fingerprint = ""
        self.default: bytes | None = None
        self._grid = {d.name: d.values_array() for d in self.space.dimensions if isinstance(d, Range)}

    # -- on the model thread ----------------------------------------------------------------------

    def load(self) -> None:
        """Load, check against the space, and warm up. Raises ModelError."""
        cfg = self.config.model
        self.fingerprint = fingerprint(cfg.path)
        self.model = Model(cfg.path, cfg.signature, cfg.outputs)
        grid_inputs(self.space, self.model.signature)  # the same check as the batch job's
        default = self.config.serve.deadline_default
        if default is not None:
            if sorted(default) != sorted(self.model.outputs):
                raise ModelError(
                    f"[serve] deadline_default names {sorted(default)} but the model's outputs are "
                    f"{sorted(self.model.outputs)}. Fix: give one number per output"
                )
            self.default = encode_value({name: default[name] for name in self.model.outputs})
        # Warm-up: the first calls of a loaded signature are slow (graph and kernel set-up); pay at start-up.
        probe = Online(self.space.key_for_id(0), self.space.decode(self.space.key_for_id(0)).features, None)
        for size in (1, min(self.config.serve.batch_max_size, 64), self.config.serve.batch_max_size):
            self.predict([probe] * size)
        log.info(
            "online fallback ready",
            extra={"fields": {"model": self.fingerprint, "mode": self.config.serve.fallback}},
        )

    def predict(self, batch: Sequence[Online]) -> list[bytes | None]:
        assert self.model is not None, "load() first"
        inputs = self.model.signature.inputs
        arrays: dict[str, Array] = {}
        for dim in self.space.dimensions:
            values = [item.features[dim.name] for item in batch]
            dtype = inputs[dim.name]
            if dtype == "string":
                arrays[dim.name] = np.array([_label(dim, v).encode() for v in values], dtype=object)
            elif isinstance(dim, Range):
                # On the grid, the very float64 the batch job feeds (np.round of the range), then the same cast.
                grid = self._grid[dim.name]
                numbers = [grid[i] if (i := dim.exact(float(v))) is not None else float(v) for v in values]
                arrays[dim.name] = np.array(numbers, dtype=np.float64).astype(dtype)
            else:
                arrays[dim.name] = np.array([float(v) for v in values], dtype=np.float64).astype(dtype)
        outputs = self.model.predict(arrays)
        finite = np.ones(len(batch), dtype=bool)
        for column in outputs.values():
            finite &= np.isfinite(column)
        keys = pa.array([item.key for item in batch], pa.string())
        if finite.all():
            return list(encode_values(outputs, keys).to_pylist())
        mask = pa.array(finite)
        encoded = iter(encode_values({k: v[finite] for k, v in outputs.items()}, keys.filter(mask)).to_pylist())
        return [next(encoded) if ok else None for ok in finite]

    def score(self, batch: Sequence[Online]) -> list[Scored]:
        """The batcher's call: predictions, their ``model_version``, and write-backs queued."""
        values = self.predict(batch)
        versions = {item.version: self.model_version(item.version) for item in batch}
        scored = [Scored(value, versions[item.version]) for item, value in zip(batch, values, strict=True)]
        if self.writeback is not None:
            for item, answer in zip(batch, scored, strict=True):
                # Only into the version this model scored: an answer from another model would mix models.
                if answer.value is not None and item.version is not None and answer.model_version == item.version:
                    self.writeback.add(item.version, item.key, answer.value)
        return scored

    def model_version(self, version: str | None) -> str:
        if version is None:
            return self.fingerprint
        record = self._records(version)
        if record is None:  # only for a version served so long ago that its record was let go
            log.warning("no record of version %s at hand; answering with the model fingerprint", version)
            return self.fingerprint
        return version if record.meta.get("model") == self.fingerprint else self.fingerprint


# -- keys and features, on the event loop ---------------------------------------------------------


def off_grid_key(space: GridSpace, features: dict[str, str | float]) -> str:
    """The canonical key of decoded features: grid labels where on the grid, the shortest number otherwise,
    so that ``51``, ``51.0`` and ``51.00`` are one key (one cache entry, one write-back)."""
    labels = {}
    for dim in space.dimensions:
        labels[dim.name] = _label(dim, features[dim.name])
    return space.template.render(labels)


def from_raw_features(space: GridSpace, raw: dict[str, object]) -> Decoded:
    """Features given by value (``/predict?mother_age=51``) that are off the grid, for an online answer.

    Raises SpaceError like :meth:`GridSpace.snap`: malformed (400) or an unknown category (404).
    """
    features = space.features(raw)
    key = off_grid_key(space, features)
    return Decoded(key, features, False, "off the grid")


def _label(dim: Categorical | Range, value: str | float) -> str:
    if isinstance(dim, Categorical):
        return str(value)
    number = float(value)
    index = dim.exact(number)
    if index is not None:
        return dim.label_list[index]
    if number.is_integer() and abs(number) < 1e15:
        return str(int(number))
    return repr(number)
