"""Golden tests: these bytes are the stored format (version 1). Changing them breaks every existing store."""

from __future__ import annotations

import json
import struct

import numpy as np
import pyarrow as pa
import pytest

from precompute.store import State, VersionError, VersionRecord
from precompute.store.codec import (
    InvalidKey,
    decode_value,
    encode_key,
    encode_value,
    expiring,
    format_float32,
    unexpired,
)
from precompute.values import NonFiniteOutput, encode_values


def f32(x: float) -> float:
    return float(struct.unpack("<f", struct.pack("<f", x))[0])


def test_keys_are_utf8_of_the_canonical_string() -> None:
    assert encode_key("True:25:Single(1):39") == b"True:25:Single(1):39"
    assert encode_key("naïve") == b"na\xc3\xafve"


@pytest.mark.parametrize(("key", "message"), [("", "empty"), ("x" * 1025, "at most 1024"), ("a\nb", "control")])
def test_bad_keys_are_refused(key: str, message: str) -> None:
    with pytest.raises(InvalidKey, match=message):
        encode_key(key)


def test_values_are_compact_json_in_the_shape_the_api_returns() -> None:
    assert encode_value({"weight_pounds": 7.31}) == b'{"weight_pounds":7.31}'
    assert encode_value({"a": 1.0, "b": 0.1, "label": "x"}) == b'{"a":1,"b":0.1,"label":"x"}'
    assert decode_value(b'{"weight_pounds":7.31}') == {"weight_pounds": 7.31}


def test_floats_are_the_shortest_text_that_reads_back_to_the_same_float32() -> None:
    assert format_float32(7.309999942779541) == "7.31"
    assert format_float32(1 / 3) == "0.33333334"
    assert format_float32(1e-7) == "1e-7"
    with pytest.raises(ValueError, match="non-finite"):
        format_float32(float("nan"))


def test_vectorized_encoding_matches_the_scalar_codec() -> None:
    rng = np.random.default_rng(3)
    column = np.concatenate([rng.normal(7, 2, 5000), 10.0 ** rng.uniform(-4, 6, 5000)]).astype(np.float32)
    keys = pa.array([f"k{i}" for i in range(len(column))])
    encoded = encode_values({"weight_pounds": column, "other": -column}, keys).to_pylist()
    for raw, value in zip(encoded, column, strict=True):
        assert raw.startswith(b'{"weight_pounds":')
        parsed = json.loads(raw)
        scalar = decode_value(encode_value({"weight_pounds": float(value), "other": -float(value)}))
        assert list(parsed) == ["weight_pounds", "other"]
        assert f32(parsed["weight_pounds"]) == f32(scalar["weight_pounds"]) == float(value)
        assert f32(parsed["other"]) == -float(value)
    assert encoded[0] == encode_value({"weight_pounds": float(column[0]), "other": -float(column[0])})


def test_non_finite_outputs_name_the_key() -> None:
    with pytest.raises(NonFiniteOutput, match="nan for output 'y' at key 'b'"):
        encode_values({"y": np.array([1.0, np.nan], dtype=np.float32)}, pa.array(["a", "b"]))


def test_an_expiring_value_carries_its_expiry_and_reads_as_absent_from_then_on() -> None:
    value = encode_value({"weight_pounds": 7.31})
    stored = expiring(value, 1_795_000_000.2)
    assert stored == b"~1795000001~" + value  # golden: whole seconds, rounded up
    assert unexpired(stored, 1_795_000_000.9) == value
    assert unexpired(stored, 1_795_000_001.0) is None
    assert unexpired(value, 2e9) == value  # a value without an expiry never expires


def test_a_record_from_a_newer_release_reads_and_says_its_format_is_newer() -> None:
    newer = {**json.loads(VersionRecord("v1", State.READY, 1.0).to_bytes()), "value_format": 3, "added_later": 1}
    record = VersionRecord.from_bytes(json.dumps(newer).encode())
    with pytest.raises(VersionError, match="stores values in format 3; this release of precompute reads"):
        record.check_readable()
