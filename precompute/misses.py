"""Growing a grid space from its misses: the off-grid keys the API recorded, scored into a run's version.

The API counts every answered request for a key off the grid (``[serve] record_misses``, api/misses.py) in
the store (:meth:`~precompute.store.backend.Backend.add_misses`). A run with ``[space] include_misses =
true`` reads them (:func:`select`): a key answered at least ``misses_min_count`` times is included, the most
answered first, up to ``misses_max``. Each is decoded with the grid space, as the API decodes it, and scored
on the driver (:func:`score`) with the run's model through the same conversion and encoding the API uses
online (:class:`~precompute.model.FeatureArrays`, :func:`~precompute.values.encode_finite`). They are few by
construction (capped twice), so the driver scores them in batches of ``[run] batch_size`` rather than
through the actor pool, and the run writes them into the new version after the grid.

Included keys stay recorded: every later run includes them again (a version never loses a key the one
before it served), and their count keeps the place they hold under the API's cap. What a run clears, once
its version is published, is what no longer belongs: keys the grid now covers, and keys that no longer
decode to the space (a feature renamed, a category removed).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from precompute.config import MissesConfig
from precompute.model import FeatureArrays, Model
from precompute.space import GridSpace, SpaceError
from precompute.store import Backend, Item, StoreError
from precompute.store.codec import InvalidKey, encode_key
from precompute.values import encode_finite

log = logging.getLogger("precompute")


@dataclass
class Selection:
    """What a run made of the recorded misses."""

    min_count: int
    recorded: int = 0
    included: list[tuple[str, dict[str, str | float]]] = field(default_factory=list)  # key, features
    below_min_count: int = 0
    over_max: int = 0
    in_grid: list[bytes] = field(default_factory=list)  # cleared once the version is published
    not_in_space: list[bytes] = field(default_factory=list)  # cleared likewise
    non_finite: int = 0  # included, but the model answers NaN or infinity: not stored
    cleared: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "recorded": self.recorded,
            "included": len(self.included) - self.non_finite,
            "min_count": self.min_count,
            "below_min_count": self.below_min_count,
            "over_max": self.over_max,
            "in_grid": len(self.in_grid),
            "not_in_space": len(self.not_in_space),
            "non_finite": self.non_finite,
            "cleared": self.cleared,
        }


def select(backend: Backend, space: GridSpace, config: MissesConfig) -> Selection:
    """The recorded misses a run includes: off the grid, canonical, counted ``min_count`` times or more."""
    recorded = backend.misses()
    chosen = Selection(config.min_count, recorded=len(recorded))
    candidates: list[tuple[int, str, dict[str, str | float]]] = []
    for raw, count in recorded.items():
        try:
            key = raw.decode("utf-8")
            decoded = space.decode(key)
        except (UnicodeDecodeError, SpaceError):
            chosen.not_in_space.append(raw)
            continue
        if decoded.in_space:
            chosen.in_grid.append(raw)
            continue
        if decoded.key != key:  # not a key the API records for these features
            chosen.not_in_space.append(raw)
            continue
        if count < config.min_count:
            chosen.below_min_count += 1
            continue
        candidates.append((count, key, decoded.features))
    candidates.sort(key=lambda c: (-c[0], c[1]))
    chosen.included = [(key, features) for _, key, features in candidates[: config.max_keys]]
    chosen.over_max = max(0, len(candidates) - config.max_keys)
    return chosen


def score(model: Model, space: GridSpace, selection: Selection, batch_size: int) -> list[Item]:
    """The rows of the included misses, scored as the API scores them online. A key the model answers
    with NaN or infinity is left out (counted in ``selection.non_finite``): the API answers it 422 too."""
    arrays = FeatureArrays(space, model.signature)
    rows: list[Item] = []
    selection.non_finite = 0
    for start in range(0, len(selection.included), batch_size):
        chunk = selection.included[start : start + batch_size]
        keys = [key for key, _ in chunk]
        values = encode_finite(model.predict(arrays([features for _, features in chunk])), keys)
        for key, value in zip(keys, values, strict=True):
            if value is None:
                selection.non_finite += 1
                continue
            try:
                rows.append((encode_key(key), value))
            except InvalidKey:  # recorded by an API with a longer max_key_bytes; cannot be stored
                selection.non_finite += 1
    return rows


def clear_stale(backend: Backend, selection: Selection) -> None:
    """After the version is published: forget the keys the grid now covers and those that no longer fit
    the space. A store that fails here fails nothing (the next run clears them)."""
    stale = [*selection.in_grid, *selection.not_in_space]
    if not stale:
        return
    try:
        backend.clear_misses(stale)
    except StoreError as exc:
        log.warning("[misses] could not clear %d recorded misses that no longer apply: %s", len(stale), exc)
        return
    selection.cleared = len(stale)
