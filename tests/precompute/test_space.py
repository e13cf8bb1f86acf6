from __future__ import annotations

import itertools

import numpy as np
import pytest

from precompute.config import load_config
from precompute.keys import KeyTemplate
from precompute.scoring import grid_keys
from precompute.space import Categorical, GridSpace, Range, SpaceError
from tests.precompute.conftest import EXAMPLE_CONFIG


@pytest.fixture(scope="module")
def grid() -> GridSpace:
    space = load_config(EXAMPLE_CONFIG).space
    assert isinstance(space, GridSpace)
    return space


def test_babyweight_grid_has_the_declared_size(grid: GridSpace) -> None:
    assert grid.size == 3 * 39 * 6 * 31 == 21_762
    assert grid.feature_names == ["is_male", "mother_age", "plurality", "gestation_weeks"]


def test_ids_enumerate_the_cross_product_exactly_once(grid: GridSpace) -> None:
    keys = grid_keys(grid, grid.indices(np.arange(grid.size, dtype=np.int64))).to_pylist()
    expected = [
        f"{m}:{a}:{p}:{w}"
        for m, a, p, w in itertools.product(
            ["True", "False", "Unknown"],
            range(12, 51),
            ["Single(1)", "Twins(2)", "Triplets(3)", "Quadruplets(4)", "Quintuplets(5)", "Multiple(2+)"],
            range(17, 48),
        )
    ]
    assert keys == expected
    assert grid.key_for_id(0) == "True:12:Single(1):17"
    assert grid.key_for_id(grid.size - 1) == "Unknown:50:Multiple(2+):47"


def test_keys_decode_back_to_features(grid: GridSpace) -> None:
    decoded = grid.decode("True:25:Single(1):39")
    assert decoded.in_space
    assert decoded.key == "True:25:Single(1):39"
    assert decoded.features == {
        "is_male": "True",
        "mother_age": 25.0,
        "plurality": "Single(1)",
        "gestation_weeks": 39.0,
    }


def test_equivalent_numbers_canonicalize(grid: GridSpace) -> None:
    assert grid.decode("False:25.0:Twins(2):039").key == "False:25:Twins(2):39"


def test_off_grid_keys_decode_but_are_outside_the_space(grid: GridSpace) -> None:
    decoded = grid.decode("True:51:Single(1):39")
    assert not decoded.in_space
    assert decoded.features["mother_age"] == 51.0
    assert decoded.reason is not None
    assert "mother_age=51" in decoded.reason
    assert not grid.decode("True:25.5:Single(1):39").in_space


@pytest.mark.parametrize(
    ("key", "canonical"),
    [
        ("True:51:Single(1):39", "True:51:Single(1):39"),  # off the grid and already canonical: kept as it is
        ("True:51.0:Single(1):39", "True:51:Single(1):39"),
        ("True:051:Single(1):39.0", "True:51:Single(1):39"),
        ("True:25.50:Single(1):39", "True:25.5:Single(1):39"),
        ("True:1e2:Single(1):1E1", "True:100:Single(1):10"),
        ("True:-0.0:Twins(2):48", "True:0:Twins(2):48"),
        ("True:2.5e-7:Single(1):39", "True:2.5e-07:Single(1):39"),
        ("True:1e16:Single(1):39", "True:1e+16:Single(1):39"),
        ("False:25.0:Twins(2):039", "False:25:Twins(2):39"),  # on the grid
    ],
)
def test_a_decoded_key_is_canonical_on_the_grid_or_off_it(grid: GridSpace, key: str, canonical: str) -> None:
    decoded = grid.decode(key)
    assert decoded.key == canonical
    assert grid.key_of_features(decoded.features) == canonical  # the key the API answers, records and stores
    assert grid.decode(canonical).key == canonical


@pytest.mark.parametrize(
    ("key", "malformed", "message"),
    [
        ("True:25:Single(1)", True, "does not match the template"),
        ("True:abc:Single(1):39", True, "not a number"),
        ("True:nan:Single(1):39", True, "not a finite number"),
        ("Maybe:25:Single(1):39", False, "is not one of"),
        ("True:25:Sextuplets(6):39", False, "is not one of"),
    ],
)
def test_bad_keys_say_what_is_wrong(grid: GridSpace, key: str, malformed: bool, message: str) -> None:
    with pytest.raises(SpaceError, match=message) as info:
        grid.decode(key)
    assert info.value.malformed is malformed


def test_raw_features_snap_to_the_nearest_grid_key(grid: GridSpace) -> None:
    raw = {"is_male": True, "mother_age": 25.4, "plurality": "Twins(2)", "gestation_weeks": "38.6"}
    assert grid.snap(raw) == "True:25:Twins(2):39"
    with pytest.raises(SpaceError, match="outside"):
        grid.snap({**raw, "mother_age": 70})
    with pytest.raises(SpaceError, match="missing"):
        grid.snap({"is_male": "True"})


def test_fractional_steps_render_with_the_step_decimals() -> None:
    r = Range.of("x", 0, 1, 0.25)
    assert r.labels() == ["0.00", "0.25", "0.50", "0.75", "1.00"]
    space = GridSpace([r, Categorical("c", ("a", "b"))], KeyTemplate.parse("{c}|{x}"))
    assert space.decode("a|0.5").key == "a|0.50"
    assert not space.decode("a|0.3").in_space


def _decodes_unchanged(space: GridSpace, key: str) -> bool:
    try:
        decoded = space.decode(key)
    except SpaceError:
        return False
    return decoded.in_space and decoded.key == key


@pytest.mark.parametrize(
    ("template", "labels"),
    [
        ("{c}:{x}:{d}", ("a", "b", "c")),  # one separator
        ("{c}:{x}:{d}", ("a", "b:", "b")),  # a label holding the separator (refused by the config, not here)
        ("{c}::{x}::{d}", ("a", "b", ":b")),  # a separator that overlaps itself
        ("id-{c}-{x}-{d}", ("a", "b", "c")),  # text before the first field: the pattern decides
        ("{c}/{x}|{d}", ("a", "b", "c")),  # two separators
        ("{c}-{x}-{d}", ("a", "b", "c")),  # with negative numbers in x: "-" is also the separator
    ],
)
def test_canonical_is_exactly_decoding_to_itself_in_the_space(template: str, labels: tuple[str, ...]) -> None:
    """GridSpace.canonical (the batch path's test) agrees with decode on canonical keys, their other
    spellings, off-grid values and malformed keys, for several shapes of template."""
    space = GridSpace(
        [Categorical("c", labels[:2]), Range.of("x", -2, 2, 1), Categorical("d", (labels[2], "e"))],
        KeyTemplate.parse(template),
    )
    literals = space.template.literals
    pieces = ["", "a", "b", "e", "-1", "-1.0", "0", "+1", "1", "2", "3", "01", ":", "::", "-", "/", "|", "b:", ":b"]
    pieces += list(labels)
    keys = {space.key_for_id(i) for i in range(space.size)}
    for values in itertools.product(pieces, repeat=3):
        keys.add(literals[0] + "".join(v + lit for v, lit in zip(values, literals[1:], strict=True)))
    keys |= {key + literals[1] for key in list(keys)[:500]} | {literals[1] + key for key in list(keys)[:500]}
    for key in keys:
        assert space.canonical(key) == _decodes_unchanged(space, key), key
    # Every key of the grid, except those a label holding the separator makes ambiguous.
    assert sum(space.canonical(key) for key in keys) >= space.size // 2


def test_canonical_with_an_empty_label_leaves_the_split_to_the_pattern() -> None:
    space = GridSpace([Categorical("c", ("", "a")), Categorical("d", ("b",))], KeyTemplate.parse("{c}:{d}"))
    for key in (":b", "a:b", "a:", "", ":", "a:b:"):
        assert space.canonical(key) == _decodes_unchanged(space, key), key
