from __future__ import annotations

from precompute.store.retry import Backoff


def test_backoff_is_jittered_exponential_and_bounded() -> None:
    slept: list[float] = []
    attempts = list(Backoff(base_s=0.1, cap_s=1.0, deadline_s=60, max_attempts=6).delays(sleep=slept.append))
    assert attempts == [1, 2, 3, 4, 5, 6]
    assert len(slept) == 5
    assert all(0 <= s <= min(1.0, 0.1 * 2**i) for i, s in enumerate(slept, start=1))


def test_backoff_stops_at_the_deadline() -> None:
    attempts = list(Backoff(base_s=0.01, deadline_s=0.0, max_attempts=100).delays(sleep=lambda s: None))
    assert attempts == [1]
