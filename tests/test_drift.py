"""The drift measures on arrays, the gate's rules, and ``precompute diff`` on a real SQLite store."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from precompute.adapters import open_backend
from precompute.config import load_config
from precompute.drift import (
    RECORD_SAMPLE_KEYS,
    Comparison,
    Diff,
    DriftError,
    Histogram,
    changed,
    compare,
    gate,
    merge,
    presence,
    psi,
    quantiles,
    recorded_sample,
    sample_keys,
)
from precompute.scoring import grid_keys
from precompute.space import GridSpace, TableSpace
from precompute.store import Versions
from precompute.values import encode_values
from tests.precompute.conftest import EXAMPLE_CONFIG

CLI = [sys.executable, "-m", "precompute.cli"]


# -- the measures ----------------------------------------------------------------------------------


def test_psi_of_one_distribution_is_about_zero_and_of_a_shifted_normal_is_large() -> None:
    rng = np.random.default_rng(7)
    base = rng.normal(0.0, 1.0, 20_000)
    assert psi(base, base) == pytest.approx(0.0, abs=1e-12)
    assert psi(base, rng.normal(0.0, 1.0, 20_000)) < 0.01  # another sample of the same distribution
    assert psi(base, rng.normal(1.0, 1.0, 20_000)) > 0.25  # one standard deviation up


def test_psi_by_hand() -> None:
    # Two bins split at the median 2.5 of [1, 2, 3, 4]: expected shares (0.5, 0.5), actual (0.25, 0.75).
    got = psi([1, 2, 3, 4], [1, 3, 4, 4], bins=2)
    assert got == pytest.approx((0.25 - 0.5) * math.log(0.25 / 0.5) + (0.75 - 0.5) * math.log(0.75 / 0.5))
    # Everything beyond the expected range falls in the open end bin; an empty bin counts as 1e-4.
    got = psi([1, 2, 3, 4], [9, 9, 9, 9], bins=2)
    assert got == pytest.approx((1e-4 - 0.5) * math.log(1e-4 / 0.5) + (1 - 0.5) * math.log(1 / 0.5))


def test_psi_of_a_constant_sees_a_shift_either_way() -> None:
    assert psi([5.0] * 10, [5.0] * 10) == pytest.approx(0.0)
    assert psi([5.0] * 10, [6.0] * 10) > 1
    assert psi([5.0] * 10, [4.0] * 10) > 1
    with pytest.raises(ValueError, match="both sides"):
        psi([], [1.0])


def test_quantiles_interpolate_as_numpy_does() -> None:
    q = quantiles(np.arange(101, dtype=np.float64))  # 0..100: the p-th quantile is p
    assert q == pytest.approx({"p01": 1.0, "p10": 10.0, "p50": 50.0, "p90": 90.0, "p99": 99.0})


def test_changed_counts_moves_beyond_relative_and_absolute_tolerance() -> None:
    a = np.array([1.0, 1.0, 1.0, 0.0, 0.0, 100.0])
    b = np.array([1.0, 1.00005, 1.001, 5e-6, 2e-5, 100.009])
    # equal, within rel 1e-4, beyond it, within abs 1e-5, beyond it, within rel of 100
    assert changed(a, b) == 2
    assert changed(a, b, rel_tol=1e-2) == 1  # 1.001 is now within; 2e-5 is still beyond abs 1e-5
    assert changed(a, b, rel_tol=0.0, abs_tol=0.0) == 5


def test_presence_counts_keys_one_version_lacks() -> None:
    assert presence([b"1", None, b"3", None], [b"1", b"2", None, None]) == (1, 1, 1)


def test_a_table_space_is_refused_with_the_reason() -> None:
    table = TableSpace(paths=("x.parquet",), format="parquet", key_column="id", columns={})
    with pytest.raises(DriftError, match="a table space's keys are in its files"):
        sample_keys(table)


def test_the_sample_spreads_over_the_grid_and_is_capped_at_its_size() -> None:
    space = load_config(EXAMPLE_CONFIG).space
    assert isinstance(space, GridSpace)
    keys = sample_keys(space, 3)
    assert keys == [space.key_for_id(0), space.key_for_id((space.size - 1) // 2), space.key_for_id(space.size - 1)]
    assert len(sample_keys(space, 10**9)) == space.size
    with pytest.raises(DriftError, match="at least 1"):
        sample_keys(space, 0)


def test_histograms_share_bins_and_survive_degenerate_data() -> None:
    h = Histogram.of(np.array([0.0, 1.0, 1.0]), np.array([2.0]), bins=4)
    assert h.edges == (0.0, 0.5, 1.0, 1.5, 2.0)
    assert h.counts == ((1, 0, 2, 0), (0, 0, 0, 1))  # numpy's last bin is closed
    one = Histogram.of(np.array([3.0, 3.0]), bins=2)  # one value: numpy widens the range by 0.5 each way
    assert (one.edges, one.counts) == ((2.5, 3.0, 3.5), ((0, 2),))
    empty = Histogram.of(np.array([]), np.array([1.0]), bins=1)
    assert empty.counts == ((0,), (1,))


def test_a_comparison_uses_each_sides_values_for_the_distribution_and_pairs_for_changes() -> None:
    c = Comparison.of("y", [1.0, 2.0, 3.0, 10.0], [1.0, 2.5, 3.0], pairs=([1.0, 2.0, 3.0], [1.0, 2.5, 3.0]))
    assert (c.keys, c.keys_a, c.keys_b, c.changed) == (3, 4, 3, 1)
    assert c.mean_a == pytest.approx(4.0)
    assert c.changed_fraction == pytest.approx(1 / 3)
    assert sum(c.changes.counts[0]) == 3
    assert sum(c.scores.counts[0]) == 4
    assert sum(c.scores.counts[1]) == 3
    lone = Comparison.of("y", [1.0], [2.0], pairs=([], []))  # no key in both: nothing changed, not 0/0
    assert (lone.keys, lone.changed_fraction) == (0, 0.0)


def _diff(*comparisons: Comparison, only_a: tuple[str, ...] = (), only_b: tuple[str, ...] = ()) -> Diff:
    return Diff("a", "b", 0, 10, 20, 0.01, 0, 0, 0, comparisons, only_a, only_b)


def test_the_gate_names_each_output_over_each_limit() -> None:
    rng = np.random.default_rng(3)
    base = rng.normal(7.0, 1.0, 2_000)
    same = Comparison.of("same", base, base)
    shifted = Comparison.of("moved", base, base + 1.5)
    assert gate(_diff(same, shifted), None, None) == []  # off by default
    assert gate(_diff(same), 0.25, 0.01) == []
    reasons = gate(_diff(same, shifted), 0.25, 0.5)
    assert len(reasons) == 2
    assert reasons[0].startswith("moved: PSI ")
    assert reasons[0].endswith("is above max_drift 0.25")
    assert reasons[1] == "moved: 100.00% of the sampled keys changed, above max_changed_fraction 0.5"
    assert gate(_diff(same, only_b=("extra",)), 0.25, None) == ["the new version adds the output(s) extra"]
    assert gate(_diff(same, only_a=("gone",)), None, 0.5) == ["the new version lacks the output(s) gone"]
    assert gate(_diff(same, only_a=("gone",)), None, None) == []


def test_a_record_keeps_a_bounded_share_of_its_sample() -> None:
    keys = [f"entity-{i}" for i in range(5_000)]
    kept = recorded_sample(keys)
    assert kept == keys[::5]  # spread over the sample as it is
    assert len(kept) == RECORD_SAMPLE_KEYS
    long = [f"{i:04}" + "x" * 996 for i in range(100)]
    assert recorded_sample(long) == long[::4]  # room for 32 keys of 1 KB: every 4th of the 100
    assert recorded_sample(keys[:10]) == keys[:10]
    assert recorded_sample([]) == []
    assert merge(["a", "b"], ["b", "c"], []) == ["a", "b", "c"]


# -- two versions in a real SQLite store -----------------------------------------------------------


def _publish(versions: Versions, space: GridSpace, weights: np.ndarray, drop: int = 0) -> str:
    """A published version of the example grid whose answers are ``weights`` (by grid id), its last
    ``drop`` keys left out."""
    ids = np.arange(space.size, dtype=np.int64)
    keys = grid_keys(space, space.indices(ids))
    values = encode_values({"weight_pounds": weights.astype(np.float32)}, keys)
    items = list(zip(keys.cast(pa.binary()).to_pylist(), values.to_pylist(), strict=True))[: space.size - drop]
    record = versions.begin(meta={"model": "test"}, expected_rows=len(items))
    versions.backend.write(record.version, items)
    versions.mark_ready(record, len(items))
    versions.publish(record)
    return record.version


@pytest.fixture
def store(tmp_path: Path) -> tuple[str, GridSpace, list[str]]:
    """A SQLite store with three versions: a base, the same answers again, and answers 2 lb higher on
    every key with gestation past 40 weeks, 100 keys fewer."""
    url = f"sqlite:///{tmp_path}/store.db"
    space = load_config(EXAMPLE_CONFIG).space
    assert isinstance(space, GridSpace)
    indices = space.indices(np.arange(space.size, dtype=np.int64))
    weeks = space.by_name["gestation_weeks"].values_array()[indices["gestation_weeks"]]  # type: ignore[union-attr]
    base = 0.2 * weeks + 0.01 * indices["mother_age"]
    versions = Versions(open_backend(url))
    published = [
        _publish(versions, space, base),
        _publish(versions, space, base.copy()),
        _publish(versions, space, base + np.where(weeks > 40, 2.0, 0.0), drop=100),
    ]
    versions.backend.close()
    return url, space, published


def test_compare_same_answers_and_shifted_ones(store: tuple[str, GridSpace, list[str]]) -> None:
    url, space, (first, same, shifted) = store
    backend = open_backend(url)
    try:
        alike = compare(backend, first, same, sample_keys(space, 2_000), space_size=space.size)
        moved = compare(backend, first, shifted, sample_keys(space), space_size=space.size)
    finally:
        backend.close()
    assert alike.sample == 2_000
    assert alike.keys_read == 4_000
    assert (alike.only_a, alike.only_b, alike.neither) == (0, 0, 0)
    (c,) = alike.comparisons
    assert c.output == "weight_pounds"
    assert (c.keys, c.changed, c.mean_shift) == (2_000, 0, 0.0)
    assert c.psi == pytest.approx(0.0, abs=1e-9)
    assert set(c.quantile_shifts.values()) == {0.0}

    assert moved.sample == 10_000
    assert moved.only_a > 0  # the last keys of the grid are missing from the shifted version
    assert (moved.only_b, moved.neither) == (0, 0)
    (m,) = moved.comparisons
    assert m.keys == 10_000 - moved.only_a
    assert 0.15 < m.changed_fraction < 0.3  # 7 of 31 gestation weeks are past 40
    assert m.psi > 0.1
    assert (m.keys_a, m.keys_b) == (10_000, m.keys)  # each side's distribution is of the keys it holds
    # so the means are of slightly different keys: about 2 lb times the share of keys moved
    assert m.mean_shift == pytest.approx(2.0 * m.changed_fraction, rel=1e-2)
    assert m.quantile_shifts["p01"] == pytest.approx(0.0, abs=1e-5)
    assert m.quantile_shifts["p99"] == pytest.approx(2.0, abs=1e-2)


def _cli(*args: str, url: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PRECOMPUTE_STORE": url}
    return subprocess.run([*CLI, *args], env=env, capture_output=True, text=True, timeout=120)


def test_the_diff_command(store: tuple[str, GridSpace, list[str]]) -> None:
    url, _, (first, same, shifted) = store
    config = ("--config", str(EXAMPLE_CONFIG))
    alike = _cli("diff", *config, first, same, "--json", url=url)
    assert alike.returncode == 0, alike.stderr
    report = json.loads(alike.stdout)
    assert (report["version_a"], report["version_b"], report["sample"]) == (first, same, 10_000)
    assert report["keys_read"] == 20_000
    (output,) = report["outputs"]
    assert (output["output"], output["changed"]) == ("weight_pounds", 0)
    assert output["psi"] == pytest.approx(0.0, abs=1e-9)

    moved = _cli("diff", *config, first, shifted, "--sample", "500", url=url)
    assert moved.returncode == 0, moved.stderr
    lines = moved.stdout.splitlines()
    assert lines[0] == f"A {first}  ->  B {shifted}"
    assert "500 of 21,762 keys; read 1,000 keys in" in lines[1]
    assert "weight_pounds: " in moved.stdout
    assert "0 changed (0.00%)" not in moved.stdout
    (p99,) = [line.split() for line in lines if line.split()[:1] == ["p99"]]
    assert float(p99[-1]) == pytest.approx(2.0, abs=0.02)

    unknown = _cli("diff", *config, first, "20990101-000000-abcd", url=url)
    assert unknown.returncode == 2, unknown.stderr
    assert "no version '20990101-000000-abcd'" in unknown.stderr
    versions = Versions(open_backend(url))
    failed = versions.begin()
    versions.abort(failed, "a test")
    versions.backend.close()
    dropped = _cli("diff", *config, first, failed.version, url=url)
    assert dropped.returncode == 2
    assert "its rows were dropped" in dropped.stderr
    bad = _cli("diff", *config, first, same, "--sample", "0", url=url)
    assert bad.returncode == 2
    assert "at least 1 key" in bad.stderr
