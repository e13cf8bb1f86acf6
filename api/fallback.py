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

from precompute.api.writeback import WriteBack
from precompute.config import Config
from precompute.model import FeatureArrays, Model, ModelError, fingerprint, grid_inputs
from precompute.space import Decoded, GridSpace
from precompute.store import VersionRecord
from precompute.store.codec import encode_value
from precompute.values import encode_finite

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
        self.arrays: FeatureArrays | None = None
        self.fingerprint = ""
        self.default: bytes | None = None

    # -- on the model thread ----------------------------------------------------------------------

    def load(self) -> None:
        """Load, check against the space, and warm up. Raises ModelError."""
        cfg = self.config.model
        self.fingerprint = fingerprint(cfg.path)
        self.model = Model(cfg.path, cfg.signature, cfg.outputs)
        grid_inputs(self.space, self.model.signature)  # the same check as the batch job's
        self.arrays = FeatureArrays(self.space, self.model.signature)
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
        assert self.arrays is not None
        outputs = self.model.predict(self.arrays([item.features for item in batch]))
        return encode_finite(outputs, [item.key for item in batch])

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


def from_raw_features(space: GridSpace, raw: dict[str, object]) -> Decoded:
    """Features given by value (``/predict?mother_age=51``) that are off the grid, for an online answer.

    Raises SpaceError like :meth:`GridSpace.snap`: malformed (400) or an unknown category (404).
    """
    features = space.features(raw)
    return Decoded(space.key_of_features(features), features, False, "off the grid")
