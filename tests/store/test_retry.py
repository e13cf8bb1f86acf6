from __future__ import annotations

import asyncio

import pytest

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


def test_call_retries_what_retry_on_accepts_then_raises_the_last_error() -> None:
    calls: list[int] = []

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise ConnectionError(f"attempt {len(calls)}")
        return "ok"

    policy = Backoff(base_s=0.001, cap_s=0.001, max_attempts=5)
    assert policy.call(flaky, lambda exc: isinstance(exc, ConnectionError)) == "ok"
    assert len(calls) == 3

    def always() -> str:
        calls.append(1)
        raise ConnectionError(f"attempt {len(calls)}")

    calls.clear()
    with pytest.raises(ConnectionError, match="attempt 5"):
        policy.call(always, lambda exc: isinstance(exc, ConnectionError))
    calls.clear()
    with pytest.raises(ConnectionError, match="attempt 1"):
        policy.call(always, lambda exc: False)


def test_acall_and_adelays_are_the_same_policy_for_async_code() -> None:
    calls: list[int] = []

    async def flaky() -> str:
        calls.append(1)
        if len(calls) < 2:
            raise TimeoutError("slow")
        return "ok"

    async def attempts(policy: Backoff) -> list[int]:
        return [attempt async for attempt in policy.adelays()]

    policy = Backoff(base_s=0.001, cap_s=0.001, max_attempts=4)
    assert asyncio.run(policy.acall(flaky, lambda exc: isinstance(exc, TimeoutError))) == "ok"
    assert asyncio.run(attempts(policy)) == [1, 2, 3, 4]
    assert asyncio.run(attempts(Backoff(deadline_s=0.0))) == [1]
