"""Request spaces: the set of requests a model is scored on ahead of time.

* :class:`GridSpace` is the cross product of feature dimensions (listed values, or numeric ranges with a
  step). Row ``i`` of the grid is decoded from the integer ``i`` (mixed radix, last feature fastest), so
  the batch job only ships integer ranges to the scoring actors and never materializes the grid on the
  driver. A key decodes back to its features, and raw feature values snap to the nearest grid key.
* :class:`TableSpace` is a table of known entities (Parquet, CSV or JSON lines) with a key column; Ray
  Data reads it in parallel.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from functools import cached_property
from operator import contains

import numpy as np
import numpy.typing as npt

from precompute.keys import KeyTemplate


class SpaceError(ValueError):
    """A key or a feature set that does not fit the space. ``malformed`` says whether it is a 400 or a 404."""

    def __init__(self, message: str, *, malformed: bool) -> None:
        super().__init__(message)
        self.malformed = malformed


@dataclass(frozen=True)
class Categorical:
    name: str
    values: tuple[str, ...]

    @property
    def size(self) -> int:
        return len(self.values)

    def labels(self) -> list[str]:
        return list(self.values)

    @property
    def label_list(self) -> tuple[str, ...]:
        return self.values

    @cached_property
    def positions(self) -> dict[str, int]:
        return {label: i for i, label in enumerate(self.values)}

    @cached_property
    def features(self) -> dict[str, str | float]:
        """Each label's feature value: the label itself."""
        return {label: label for label in self.values}

    def index(self, raw: object) -> int | None:
        return self.positions.get(_as_text(raw))


@dataclass(frozen=True)
class Range:
    """``start``, ``start + step``, ... up to ``stop`` inclusive. Rendered with the step's decimals."""

    name: str
    start: float
    stop: float
    step: float
    decimals: int

    @classmethod
    def of(cls, name: str, start: float, stop: float, step: float) -> Range:
        decimals = max(_decimals(start), _decimals(step))
        return cls(name, float(start), float(stop), float(step), decimals)

    @cached_property
    def size(self) -> int:
        return math.floor((self.stop - self.start) / self.step + 1e-9) + 1

    def value(self, index: int) -> float:
        return round(self.start + index * self.step, self.decimals)

    def render(self, value: float) -> str:
        return f"{value:.{self.decimals}f}"

    def labels(self) -> list[str]:
        return list(self.label_list)

    @cached_property
    def label_list(self) -> tuple[str, ...]:
        return tuple(self.render(self.value(i)) for i in range(self.size))

    @cached_property
    def positions(self) -> dict[str, int]:
        return {label: i for i, label in enumerate(self.label_list)}

    @cached_property
    def features(self) -> dict[str, str | float]:
        """Each label's feature value (:meth:`value`)."""
        return {label: self.value(i) for i, label in enumerate(self.label_list)}

    def values_array(self) -> npt.NDArray[np.float64]:
        return np.round(self.start + np.arange(self.size) * self.step, self.decimals)

    def snap(self, value: float) -> int | None:
        """Index of the nearest grid value, or None outside the range (by more than half a step)."""
        index = round((value - self.start) / self.step)
        return index if 0 <= index < self.size else None

    def exact(self, value: float) -> int | None:
        """Index of ``value`` when it lies on the grid, else None."""
        index = self.snap(value)
        if index is None or abs(self.value(index) - value) > abs(self.step) * 1e-6:
            return None
        return index


Dimension = Categorical | Range


@dataclass(frozen=True, slots=True)
class Decoded:
    """A key taken apart. ``key`` is its canonical form, on the grid or off it (:meth:`GridSpace.key_of_features`
    of ``features``); ``in_space`` is False for a well-formed key off the grid (``reason`` says why)."""

    key: str
    features: dict[str, str | float]
    in_space: bool
    # Why the key is off the grid: the message, or the first dimension off it and its text, for the message
    # written only when it is read (a miss storm answers online and never reads it).
    off: str | tuple[Range, str] | None = None

    @property
    def reason(self) -> str | None:
        if isinstance(self.off, tuple):
            dim, raw = self.off
            return (
                f"{dim.name}={raw} is not on the grid {dim.render(dim.start)}..{dim.render(dim.stop)} "
                f"step {dim.render(dim.step)}"
            )
        return self.off


class GridSpace:
    def __init__(self, dimensions: Sequence[Dimension], template: KeyTemplate) -> None:
        self.dimensions = list(dimensions)
        self.template = template
        self.by_name = {d.name: d for d in self.dimensions}
        self.sizes = [d.size for d in self.dimensions]
        self.size = math.prod(self.sizes)
        # Mixed-radix place values: the last dimension changes fastest.
        self.strides = [math.prod(self.sizes[i + 1 :]) for i in range(len(self.sizes))]

    @property
    def feature_names(self) -> list[str]:
        return [d.name for d in self.dimensions]

    # -- vectorized, inside the scoring actors ---------------------------------------------------

    def indices(self, ids: npt.NDArray[np.int64]) -> dict[str, npt.NDArray[np.int64]]:
        """Per-dimension value indices of grid rows ``ids``."""
        return {d.name: (ids // stride) % d.size for d, stride in zip(self.dimensions, self.strides, strict=True)}

    # -- one key at a time, in the API ----------------------------------------------------------

    def key_of(self, indices: Mapping[str, int]) -> str:
        return self.template.render({d.name: d.label_list[indices[d.name]] for d in self.dimensions})

    def key_for_id(self, row: int) -> str:
        return self.key_of({name: int(index[0]) for name, index in self.indices(np.array([row])).items()})

    @cached_property
    def _positions_by_field(self) -> tuple[Mapping[str, int], ...]:
        return tuple(self.by_name[name].positions for name in self.template.fields)

    def canonical(self, key: str) -> bool:
        """Whether ``key`` is a point of the grid written canonically: exactly when :meth:`decode` would
        return it unchanged, in the space. A test that builds nothing, for batches of keys; a key for
        which it is False is decoded as usual."""
        parts = self.template.parts(key)
        return parts is not None and all(map(contains, self._positions_by_field, parts))

    def decode(self, key: str) -> Decoded:
        """Parse ``key``. Raises :class:`SpaceError` (malformed) when it cannot be read as features."""
        parts = self._parts(key)
        if parts is None:
            raise SpaceError(f"key {key!r} does not match the template {self.template.text!r}", malformed=True)
        features: dict[str, str | float] = {}
        labels: dict[str, str] = {}
        off: tuple[Range, str] | None = None
        canonical = True
        for dim, raw in zip(self.dimensions, parts, strict=True):
            feature = dim.features.get(raw)
            if feature is not None:  # the canonical label itself: the common case, no parsing
                labels[dim.name] = raw
                features[dim.name] = feature
                continue
            if isinstance(dim, Categorical):
                if dim.index(raw) is None:
                    choices = ", ".join(dim.values)
                    raise SpaceError(f"{dim.name}={raw!r} is not one of: {choices}", malformed=False)
                features[dim.name] = labels[dim.name] = raw
                continue
            value = _number(dim.name, raw)
            features[dim.name] = value
            index = dim.exact(value)
            if index is None:
                labels[dim.name] = written = _shortest(value)
                canonical = canonical and written == raw  # ``51`` is canonical off the grid; ``51.0`` is not
                off = off or (dim, raw)
            else:
                labels[dim.name] = dim.label_list[index]
                canonical = False
        # Every part canonical: the key is its own canonical form (no need to render it again).
        return Decoded(key if canonical else self.template.render(labels), features, off is None, off)

    def _parts(self, key: str) -> Sequence[str] | None:
        """Each dimension's text in ``key``, in the dimensions' order, or None when it has another shape."""
        parts, order = self.template.parts(key), self._dimension_order
        if parts is None or order is None:
            return parts
        return [parts[i] for i in order]

    @cached_property
    def _dimension_order(self) -> tuple[int, ...] | None:
        """Where each dimension is among the template's fields; None when they are in the same order."""
        order = tuple(self.template.fields.index(dim.name) for dim in self.dimensions)
        return None if order == tuple(range(len(order))) else order

    def features(self, raw: Mapping[str, object]) -> dict[str, str | float]:
        """Raw feature values checked and converted: a category's canonical label, or a finite number.

        Raises :class:`SpaceError`: malformed (a missing feature, not a number) or not (an unknown category).
        """
        missing = [d.name for d in self.dimensions if d.name not in raw]
        if missing:
            raise SpaceError(f"missing feature(s): {', '.join(missing)}", malformed=True)
        features: dict[str, str | float] = {}
        for dim in self.dimensions:
            value = raw[dim.name]
            if isinstance(dim, Categorical):
                found = dim.index(value)
                if found is None:
                    raise SpaceError(f"{dim.name}={value!r} is not one of: {', '.join(dim.values)}", malformed=False)
                features[dim.name] = dim.values[found]
                continue
            features[dim.name] = _number(dim.name, value)
        return features

    def key_of_features(self, features: Mapping[str, str | float]) -> str:
        """The canonical key of decoded features, on the grid or off it (:func:`label`): ``51``, ``51.0`` and
        ``51.00`` are one key, the one the API answers online and records as a miss, and a run stores."""
        return self.template.render({dim.name: label(dim, features[dim.name]) for dim in self.dimensions})

    def snap(self, raw: Mapping[str, object]) -> str:
        """The grid key nearest to raw feature values (``mother_age=25.4`` -> ``...:25:...``)."""
        indices: dict[str, int] = {}
        for dim, value in zip(self.dimensions, self.features(raw).values(), strict=True):
            if isinstance(dim, Categorical):
                indices[dim.name] = dim.positions[str(value)]
                continue
            index = dim.snap(float(value))
            if index is None:
                raise SpaceError(
                    f"{dim.name}={raw[dim.name]} is outside {dim.render(dim.start)}..{dim.render(dim.stop)}",
                    malformed=False,
                )
            indices[dim.name] = index
        return self.key_of(indices)


def label(dim: Dimension, value: str | float) -> str:
    """A feature value as a canonical key writes it: a category's label, a grid value's own label, and the
    shortest form of any other number (``51``, ``51.5``)."""
    if isinstance(dim, Categorical):
        return str(value)
    number = float(value)
    index = dim.exact(number)
    if index is not None:
        return dim.label_list[index]
    return _shortest(number)


def _shortest(number: float) -> str:
    """A number off the grid as a canonical key writes it: ``51``, ``51.5``."""
    if number.is_integer() and abs(number) < 1e15:
        return str(int(number))
    return repr(number)


@dataclass(frozen=True)
class TableSpace:
    """Known entities read from files. ``columns`` maps a model input to the column that feeds it."""

    paths: tuple[str, ...]
    format: str  # parquet | csv | json
    key_column: str
    columns: dict[str, str]

    def decode(self, key: str) -> Decoded:
        # An entity key carries no features: it is in the space exactly when the store has it.
        return Decoded(key, {}, True)


Space = GridSpace | TableSpace


# A number as keys and queries write it: plain ASCII decimal. Python's float() also takes "2_5", full-width
# and other non-ASCII digits, surrounding spaces and a trailing newline; a canonical key must be unambiguous.
_DECIMAL = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")


def _number(name: str, raw: object) -> float:
    """``raw`` as a finite number: an int or float (not a bool), or text in plain ASCII decimal."""
    if isinstance(raw, str) and raw.isascii() and raw.isdigit():  # the common case off the grid: ``51``
        return float(raw)
    if isinstance(raw, bool) or not isinstance(raw, int | float | str):
        raise SpaceError(f"{name}={raw!r} is not a number", malformed=True)
    try:
        value = float(raw)
    except ValueError:
        value = 0.0  # then refused below, as text that is not plain decimal
    if math.isfinite(value) and isinstance(raw, str) and not _DECIMAL.fullmatch(raw):
        raise SpaceError(f"{name}={raw!r} is not a number (plain decimal digits, e.g. 25 or 25.5)", malformed=True)
    if not math.isfinite(value):
        raise SpaceError(f"{name}={raw!r} is not a finite number", malformed=True)
    return value


def _decimals(number: float) -> int:
    exponent = Decimal(str(number)).normalize().as_tuple().exponent
    return max(0, -exponent) if isinstance(exponent, int) else 0


def _as_text(raw: object) -> str:
    if isinstance(raw, bool):
        return "True" if raw else "False"
    return str(raw)
