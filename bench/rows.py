"""The rows the store load benchmarks write: keys shaped like the babyweight space plus an id, 22-byte values."""

from __future__ import annotations

from precompute.store.codec import encode_key, encode_value

PLURALITY = ("Single(1)", "Twins(2)", "Triplets(3)", "Quadruplets(4)", "Quintuplets(5)", "Multiple(2+)")


def babyweight_rows(start: int, stop: int) -> list[tuple[bytes, bytes]]:
    """Rows ``start`` to ``stop - 1``: ``True:25:Single(1):39:<id>`` -> ``{"weight_pounds":7.31}``."""
    out = []
    for i in range(start, stop):
        key = f"{i % 2 == 0}:{15 + i // 2 % 35}:{PLURALITY[i // 70 % 6]}:{17 + i // 420 % 31}:{i // 13020}"
        out.append((encode_key(key), encode_value({"weight_pounds": 5 + (i * 7919 % 500) / 100})))
    return out
