"""How far two versions' answers are apart: ``precompute diff VERSION_A VERSION_B``.

A sample of keys is read from both versions (evenly spread grid ids, as the run's golden keys are picked),
and each output is compared on the keys present in both:

- the population stability index (:func:`psi`) of B's scores against A's,
- the mean and the p01, p10, p50, p90 and p99 quantiles of each side, and their shifts (B - A),
- the fraction of keys whose answer moved beyond a tolerance (:func:`changed`),

plus the keys of the sample that only one version holds, and what the comparison cost (keys read, seconds).

Only grid spaces are supported: the keys of a table space are in the table files, which only the batch
side reads (with Ray); a table space is refused with :class:`DriftError`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
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
class Comparison:
    """One output of the model, compared on the sampled keys that both versions hold."""

    output: str
    keys: int
    psi: float
    mean_a: float
    mean_b: float
    quantiles_a: dict[str, float]
    quantiles_b: dict[str, float]
    changed: int
    rel_tol: float = REL_TOL
    abs_tol: float = ABS_TOL

    @classmethod
    def of(
        cls, output: str, a: npt.ArrayLike, b: npt.ArrayLike, rel_tol: float = REL_TOL, abs_tol: float = ABS_TOL
    ) -> Comparison:
        x = np.asarray(a, dtype=np.float64)
        y = np.asarray(b, dtype=np.float64)
        if x.shape != y.shape or x.size == 0:
            raise ValueError("a comparison needs the same, non-zero number of values on both sides")
        return cls(
            output=output,
            keys=int(x.size),
            psi=psi(x, y),
            mean_a=float(x.mean()),
            mean_b=float(y.mean()),
            quantiles_a=quantiles(x),
            quantiles_b=quantiles(y),
            changed=changed(x, y, rel_tol, abs_tol),
            rel_tol=rel_tol,
            abs_tol=abs_tol,
        )

    @property
    def changed_fraction(self) -> float:
        return self.changed / self.keys

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
        }

    def render(self) -> str:
        lines = [
            f"  {self.output}: {self.keys:,} keys in both, PSI {self.psi:.4f}, "
            f"{self.changed:,} changed ({self.changed_fraction:.2%}) "
            f"beyond rel {self.rel_tol:g} / abs {self.abs_tol:g}",
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

    def render(self) -> str:
        lines = [
            f"A {self.version_a}  ->  B {self.version_b}",
            f"  sample    {self.sample:,} of {self.space_size:,} keys; read {self.keys_read:,} keys in "
            f"{self.seconds:.2f}s",
            f"  keys      only in A {self.only_a:,}  only in B {self.only_b:,}  in neither {self.neither:,}",
        ]
        if self.outputs_only_a or self.outputs_only_b:
            lines.append(
                f"  outputs   only in A: {', '.join(self.outputs_only_a) or '-'}  "
                f"only in B: {', '.join(self.outputs_only_b) or '-'}"
            )
        if not self.comparisons:
            lines.append("  no sampled key has an output in both versions")
        lines += [c.render() for c in self.comparisons]
        return "\n".join(lines)


def sample_keys(space: Space, sample: int = DEFAULT_SAMPLE) -> list[str]:
    """``sample`` keys of a grid spread evenly over its ids (all of them for a smaller grid)."""
    if not isinstance(space, GridSpace):
        raise DriftError(
            "diff compares grid spaces only: the keys of a table space are in its files, which only "
            "`precompute run` reads (with Ray)"
        )
    if sample < 1:
        raise DriftError(f"the sample must be at least 1 key, not {sample}")
    ids = np.unique(np.linspace(0, space.size - 1, num=min(sample, space.size)).astype(np.int64))
    indices = space.indices(ids)
    return [space.key_of({name: int(index[i]) for name, index in indices.items()}) for i in range(ids.size)]


def compare(
    backend: Backend,
    space: Space,
    version_a: str,
    version_b: str,
    sample: int = DEFAULT_SAMPLE,
    rel_tol: float = REL_TOL,
    abs_tol: float = ABS_TOL,
) -> Diff:
    """Read a sample of keys from both versions (through :meth:`Backend.read`, in its batches) and compare."""
    keys = [key.encode() for key in sample_keys(space, sample)]
    started = time.perf_counter()
    now = time.time()
    read_a = _decoded(backend.read(version_a, keys), now)
    read_b = _decoded(backend.read(version_b, keys), now)
    seconds = time.perf_counter() - started
    only_a, only_b, neither = presence(read_a, read_b)
    both = [(x, y) for x, y in zip(read_a, read_b, strict=True) if x is not None and y is not None]
    names_a = _names(x for x, _ in both)
    names_b = _names(y for _, y in both)
    comparisons = []
    for name in (n for n in names_a if n in names_b):
        pairs = [(x[name], y[name]) for x, y in both if name in x and name in y]
        comparisons.append(Comparison.of(name, [p[0] for p in pairs], [p[1] for p in pairs], rel_tol, abs_tol))
    return Diff(
        version_a=version_a,
        version_b=version_b,
        space_size=space.size if isinstance(space, GridSpace) else 0,
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
