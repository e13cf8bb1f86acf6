"""How far two versions' answers are apart: the drift gate of ``precompute run`` and ``precompute diff``.

A sample of keys is read from both versions through the store, and each output is compared:

- the population stability index (:func:`psi`) of B's scores against A's (each side's sampled keys),
- the mean and the p01, p10, p50, p90 and p99 quantiles of each side, and their shifts (B - A),
- the fraction of the keys both hold whose answer moved beyond a tolerance (:func:`changed`),
- histograms of both sides' scores and of the changes, for the run report's pictures,

plus the sampled keys that only one version holds, and what the comparison cost (keys read, seconds).

Which keys: a grid's are spread evenly over its ids (:func:`sample_keys`, as the run's golden keys are
picked); a table's are a random sample of the table, drawn by the run that reads it. Each version's record
keeps a bounded share of its sample (:func:`recorded_sample`), so that a later comparison also reads keys
that only the older version holds (entities that left the table).

:func:`gate` turns a comparison and the ``[verify]`` limits into the reasons to refuse a publish.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from precompute.space import GridSpace, Space
from precompute.store.backend import Backend
from precompute.store.codec import decode_value, unexpired

Floats = npt.NDArray[np.float64]

#: Keys sampled from each version unless told otherwise (capped at the space size).
DEFAULT_SAMPLE = 10_000
#: The tolerances of the run's golden-key check: float32 rounding noise is not a change.
REL_TOL = 1e-4
ABS_TOL = 1e-5
#: The quantiles reported, by name.
QUANTILES: dict[str, float] = {"p01": 0.01, "p10": 0.10, "p50": 0.50, "p90": 0.90, "p99": 0.99}
#: The share given to an empty bin in :func:`psi`, so that the logarithm stays finite.
PSI_EPSILON = 1e-4
#: Bins of the histograms kept for the report's pictures.
HISTOGRAM_BINS = 30
#: How much of its sample a version record keeps (keys, and their bytes in all): a record is one item of
#: the store (DynamoDB's limit is 400 KB), so this is a bounded share, not the whole sample.
RECORD_SAMPLE_KEYS = 1_000
RECORD_SAMPLE_BYTES = 32_768


class DriftError(ValueError):
    """The comparison cannot be made (a table space, a sample smaller than one key)."""


# -- pure functions on arrays --------------------------------------------------------------------


def psi(expected: npt.ArrayLike, actual: npt.ArrayLike, bins: int = 10) -> float:
    """The population stability index of ``actual`` against ``expected``.

    ``PSI = sum over bins of (a_i - e_i) * ln(a_i / e_i)``, where ``e_i`` and ``a_i`` are the shares of
    ``expected`` and ``actual`` in bin ``i``. The bins are the ``bins`` quantile bins of ``expected``
    (the end bins are open, so every value of ``actual`` falls in one; quantiles that coincide, as in
    discrete data, merge their bins; a constant ``expected`` gets the bins below, at and above its value).
    An empty bin counts as a share of :data:`PSI_EPSILON`. 0 means the same distribution; by the usual
    rule of thumb below 0.1 is stable, 0.1 to 0.25 a moderate shift, above 0.25 a significant one.
    """
    e = np.asarray(expected, dtype=np.float64)
    a = np.asarray(actual, dtype=np.float64)
    if bins < 1:
        raise ValueError("psi needs at least one bin")
    if e.size == 0 or a.size == 0:
        raise ValueError("psi needs values on both sides")
    inner = np.unique(np.quantile(e, np.linspace(0.0, 1.0, bins + 1)[1:-1])) if bins > 1 else np.empty(0)
    if e.min() == e.max():  # one value: below it, it, above it
        inner = np.array([e.min(), np.nextafter(e.min(), np.inf)])
    count = inner.size + 1
    e_share = np.bincount(np.searchsorted(inner, e, side="right"), minlength=count) / e.size
    a_share = np.bincount(np.searchsorted(inner, a, side="right"), minlength=count) / a.size
    e_share = np.maximum(e_share, PSI_EPSILON)
    a_share = np.maximum(a_share, PSI_EPSILON)
    return float(np.sum((a_share - e_share) * np.log(a_share / e_share)))


def quantiles(values: npt.ArrayLike) -> dict[str, float]:
    """The :data:`QUANTILES` of ``values`` (linear interpolation, as :func:`numpy.quantile`)."""
    found = np.quantile(np.asarray(values, dtype=np.float64), list(QUANTILES.values()))
    return {name: float(q) for name, q in zip(QUANTILES, found, strict=True)}


def changed(a: npt.ArrayLike, b: npt.ArrayLike, rel_tol: float = REL_TOL, abs_tol: float = ABS_TOL) -> int:
    """How many pairs moved beyond the tolerance: ``|a - b| > max(rel_tol * max(|a|, |b|), abs_tol)``,
    the complement of :func:`math.isclose` (symmetric, unlike :func:`numpy.isclose`)."""
    x = np.asarray(a, dtype=np.float64)
    y = np.asarray(b, dtype=np.float64)
    limit = np.maximum(rel_tol * np.maximum(np.abs(x), np.abs(y)), abs_tol)
    return int(np.count_nonzero(np.abs(x - y) > limit))


def presence(a: Sequence[object | None], b: Sequence[object | None]) -> tuple[int, int, int]:
    """Of keys read from two versions (``None``: absent): (only in A, only in B, in neither)."""
    only_a = sum(1 for x, y in zip(a, b, strict=True) if x is not None and y is None)
    only_b = sum(1 for x, y in zip(a, b, strict=True) if x is None and y is not None)
    neither = sum(1 for x, y in zip(a, b, strict=True) if x is None and y is None)
    return only_a, only_b, neither


# -- the comparison of one output ----------------------------------------------------------------


@dataclass(frozen=True)
class Histogram:
    """Counts of values in bins: ``edges`` has one more entry than each list of counts."""

    edges: tuple[float, ...]
    counts: tuple[tuple[int, ...], ...]

    @classmethod
    def of(cls, *sides: Floats, bins: int = HISTOGRAM_BINS) -> Histogram:
        """One set of bins over the range of every side; a range of one value (give or take float rounding)
        is widened by 0.5 each way, as numpy does."""
        present = [side for side in sides if side.size]
        lo = min((float(side.min()) for side in present), default=0.0)
        hi = max((float(side.max()) for side in present), default=0.0)
        if hi - lo <= 1e-9 * max(1.0, abs(lo), abs(hi)):
            middle = (lo + hi) / 2
            lo, hi = middle - 0.5, middle + 0.5
        edges = np.linspace(lo, hi, bins + 1)
        counts = tuple(tuple(int(c) for c in np.histogram(side, bins=edges)[0]) for side in sides)
        return cls(tuple(float(e) for e in edges), counts)


@dataclass(frozen=True)
class Comparison:
    """One output of the model: each side's distribution on its own sampled keys, and the changes on the
    sampled keys both versions hold (``keys`` of them)."""

    output: str
    keys: int
    keys_a: int
    keys_b: int
    psi: float
    mean_a: float
    mean_b: float
    quantiles_a: dict[str, float]
    quantiles_b: dict[str, float]
    changed: int
    scores: Histogram  # counts: (A, B)
    changes: Histogram  # counts: (B - A,) on the keys in both
    rel_tol: float = REL_TOL
    abs_tol: float = ABS_TOL

    @classmethod
    def of(
        cls,
        output: str,
        a: npt.ArrayLike,
        b: npt.ArrayLike,
        pairs: tuple[npt.ArrayLike, npt.ArrayLike] | None = None,
        rel_tol: float = REL_TOL,
        abs_tol: float = ABS_TOL,
    ) -> Comparison:
        """``a`` and ``b``: each side's values; ``pairs``: the values of the keys both hold, A's then B's
        (default: ``a`` and ``b`` themselves, key by key)."""
        x = np.asarray(a, dtype=np.float64)
        y = np.asarray(b, dtype=np.float64)
        if x.size == 0 or y.size == 0:
            raise ValueError("a comparison needs values on both sides")
        if pairs is None and x.shape != y.shape:
            raise ValueError("without pairs, a comparison needs the same number of values on both sides")
        px, py = (x, y) if pairs is None else (np.asarray(p, dtype=np.float64) for p in pairs)
        return cls(
            output=output,
            keys=int(px.size),
            keys_a=int(x.size),
            keys_b=int(y.size),
            psi=psi(x, y),
            mean_a=float(x.mean()),
            mean_b=float(y.mean()),
            quantiles_a=quantiles(x),
            quantiles_b=quantiles(y),
            changed=changed(px, py, rel_tol, abs_tol),
            scores=Histogram.of(x, y),
            changes=Histogram.of(py - px),
            rel_tol=rel_tol,
            abs_tol=abs_tol,
        )

    @property
    def changed_fraction(self) -> float:
        """Of the keys both versions hold; 0 when they hold none in common (see ``keys``)."""
        return self.changed / self.keys if self.keys else 0.0

    @property
    def mean_shift(self) -> float:
        return self.mean_b - self.mean_a

    @property
    def quantile_shifts(self) -> dict[str, float]:
        return {name: self.quantiles_b[name] - self.quantiles_a[name] for name in QUANTILES}

    def to_dict(self) -> dict[str, Any]:
        return {
            "output": self.output,
            "keys": self.keys,
            "keys_a": self.keys_a,
            "keys_b": self.keys_b,
            "psi": self.psi,
            "changed": self.changed,
            "changed_fraction": self.changed_fraction,
            "rel_tol": self.rel_tol,
            "abs_tol": self.abs_tol,
            "mean": {"a": self.mean_a, "b": self.mean_b, "shift": self.mean_shift},
            "quantiles": {
                name: {"a": self.quantiles_a[name], "b": self.quantiles_b[name], "shift": shift}
                for name, shift in self.quantile_shifts.items()
            },
            "histogram": {
                "edges": list(self.scores.edges),
                "a": list(self.scores.counts[0]),
                "b": list(self.scores.counts[1]),
            },
            "changes": {"edges": list(self.changes.edges), "counts": list(self.changes.counts[0])},
        }

    def render(self) -> str:
        lines = [
            f"  {self.output}: PSI {self.psi:.4f}; {self.changed:,} of {self.keys:,} keys in both changed "
            f"({self.changed_fraction:.2%}) beyond rel {self.rel_tol:g} / abs {self.abs_tol:g}",
            f"    {'':<6} {'A':>14} {'B':>14} {'B - A':>14}",
            f"    {'mean':<6} {self.mean_a:>14.6g} {self.mean_b:>14.6g} {self.mean_shift:>+14.6g}",
        ]
        for name, shift in self.quantile_shifts.items():
            lines.append(
                f"    {name:<6} {self.quantiles_a[name]:>14.6g} {self.quantiles_b[name]:>14.6g} {shift:>+14.6g}"
            )
        return "\n".join(lines)


# -- two versions in a store ----------------------------------------------------------------------


@dataclass(frozen=True)
class Diff:
    """Every output of two versions compared on one sample of keys, and what reading it cost."""

    version_a: str
    version_b: str
    space_size: int
    sample: int
    keys_read: int
    seconds: float
    only_a: int
    only_b: int
    neither: int
    comparisons: tuple[Comparison, ...]
    outputs_only_a: tuple[str, ...] = field(default=())
    outputs_only_b: tuple[str, ...] = field(default=())

    def to_dict(self) -> dict[str, Any]:
        return {
            "version_a": self.version_a,
            "version_b": self.version_b,
            "space_size": self.space_size,
            "sample": self.sample,
            "keys_read": self.keys_read,
            "seconds": round(self.seconds, 3),
            "keys_only_in_a": self.only_a,
            "keys_only_in_b": self.only_b,
            "keys_in_neither": self.neither,
            "outputs_only_in_a": list(self.outputs_only_a),
            "outputs_only_in_b": list(self.outputs_only_b),
            "outputs": [c.to_dict() for c in self.comparisons],
        }

    def brief(self) -> dict[str, Any]:
        """What a version record keeps of its comparison with the version live before it."""
        return {
            "against": self.version_a,
            "psi": max((c.psi for c in self.comparisons), default=None),
            "changed_fraction": max((c.changed_fraction for c in self.comparisons), default=None),
            "keys_only_in_live": self.only_a,
            "keys_only_in_new": self.only_b,
            "sample": self.sample,
        }

    def render(self) -> str:
        space = f" of {self.space_size:,}" if self.space_size else ""
        lines = [
            f"A {self.version_a}  ->  B {self.version_b}",
            f"  sample    {self.sample:,}{space} keys; read {self.keys_read:,} keys in {self.seconds:.2f}s",
            f"  keys      only in A {self.only_a:,}  only in B {self.only_b:,}  in neither {self.neither:,}",
        ]
        if self.outputs_only_a or self.outputs_only_b:
            lines.append(
                f"  outputs   only in A: {', '.join(self.outputs_only_a) or '-'}  "
                f"only in B: {', '.join(self.outputs_only_b) or '-'}"
            )
        if not self.comparisons:
            lines.append("  no output has sampled values in both versions")
        lines += [c.render() for c in self.comparisons]
        return "\n".join(lines)


def sample_keys(space: Space, sample: int = DEFAULT_SAMPLE) -> list[str]:
    """``sample`` keys of a grid spread evenly over its ids (all of them for a smaller grid)."""
    if not isinstance(space, GridSpace):
        raise DriftError(
            "a table space's keys are in its files, which only `precompute run` reads (with Ray): compare the "
            "samples that the versions' records keep instead"
        )
    if sample < 1:
        raise DriftError(f"the sample must be at least 1 key, not {sample}")
    ids = np.unique(np.linspace(0, space.size - 1, num=min(sample, space.size)).astype(np.int64))
    indices = space.indices(ids)
    return [space.key_of({name: int(index[i]) for name, index in indices.items()}) for i in range(ids.size)]


def recorded_sample(keys: Sequence[str]) -> list[str]:
    """The share of a sample that a version record keeps: at most :data:`RECORD_SAMPLE_KEYS` keys and
    :data:`RECORD_SAMPLE_BYTES` in all, taken at an even stride so that they spread as the sample does."""
    if not keys:
        return []
    average = sum(len(key.encode()) + 4 for key in keys) / len(keys)  # + the JSON quotes, comma and space
    room = max(1, min(RECORD_SAMPLE_KEYS, int(RECORD_SAMPLE_BYTES // average)))
    kept: list[str] = []
    size = 0
    for key in keys[:: math.ceil(len(keys) / room)]:
        size += len(key.encode()) + 4
        if size > RECORD_SAMPLE_BYTES:
            break
        kept.append(key)
    return kept


def merge(*samples: Iterable[str]) -> list[str]:
    """Samples joined, each key once, in the order first seen."""
    return list(dict.fromkeys(key for sample in samples for key in sample))


def compare(
    backend: Backend,
    version_a: str,
    version_b: str,
    keys: Sequence[str],
    space_size: int = 0,
    rel_tol: float = REL_TOL,
    abs_tol: float = ABS_TOL,
) -> Diff:
    """Read ``keys`` from both versions (through :meth:`Backend.read`, in its batches) and compare."""
    if not keys:
        raise DriftError("there are no sampled keys to compare")
    encoded = [key.encode() for key in keys]
    started = time.perf_counter()
    now = time.time()
    read_a = _decoded(backend.read(version_a, encoded), now)
    read_b = _decoded(backend.read(version_b, encoded), now)
    seconds = time.perf_counter() - started
    only_a, only_b, neither = presence(read_a, read_b)
    names_a = _names(x for x in read_a if x is not None)
    names_b = _names(y for y in read_b if y is not None)
    comparisons = []
    for name in (n for n in names_a if n in names_b):
        a = [x[name] for x in read_a if x is not None and name in x]
        b = [y[name] for y in read_b if y is not None and name in y]
        both = [(x[name], y[name]) for x, y in zip(read_a, read_b, strict=True) if x and y and name in x and name in y]
        pairs = ([p[0] for p in both], [p[1] for p in both])
        comparisons.append(Comparison.of(name, a, b, pairs, rel_tol, abs_tol))
    return Diff(
        version_a=version_a,
        version_b=version_b,
        space_size=space_size,
        sample=len(keys),
        keys_read=2 * len(keys),
        seconds=seconds,
        only_a=only_a,
        only_b=only_b,
        neither=neither,
        comparisons=tuple(comparisons),
        outputs_only_a=tuple(n for n in names_a if n not in names_b),
        outputs_only_b=tuple(n for n in names_b if n not in names_a),
    )


def gate(diff: Diff, max_drift: float | None, max_changed_fraction: float | None) -> list[str]:
    """Why ``diff``'s version B must not replace A under these limits (None: that limit is off); empty: it
    may. With any limit on, outputs that only one version has refuse too: every answer changed shape."""
    reasons = []
    for c in diff.comparisons:
        if max_drift is not None and c.psi > max_drift:
            reasons.append(f"{c.output}: PSI {c.psi:.4f} is above max_drift {max_drift:g}")
        if max_changed_fraction is not None and c.changed_fraction > max_changed_fraction:
            reasons.append(
                f"{c.output}: {c.changed_fraction:.2%} of the sampled keys changed, above max_changed_fraction "
                f"{max_changed_fraction:g}"
            )
    if max_drift is not None or max_changed_fraction is not None:
        if diff.outputs_only_a:
            reasons.append(f"the new version lacks the output(s) {', '.join(diff.outputs_only_a)}")
        if diff.outputs_only_b:
            reasons.append(f"the new version adds the output(s) {', '.join(diff.outputs_only_b)}")
    return reasons


def _decoded(values: list[bytes | None], now: float) -> list[dict[str, float] | None]:
    out: list[dict[str, float] | None] = []
    for stored in values:
        value = unexpired(stored, now) if stored is not None else None
        if value is None:
            out.append(None)
            continue
        decoded = decode_value(value)
        out.append({k: float(v) for k, v in decoded.items() if isinstance(v, int | float) and math.isfinite(v)})
    return out


def _names(values: Any) -> list[str]:
    """Output names in the order first seen."""
    seen: dict[str, None] = {}
    for value in values:
        for name in value:
            seen.setdefault(name, None)
    return list(seen)
