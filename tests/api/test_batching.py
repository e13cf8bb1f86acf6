"""The batcher and its size policies, on plain Python callables (no model, no HTTP)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from typing import Any

import pytest
import uvloop

from precompute.api.batching import AIMD, Batcher, Fixed, LatencyFit, Overloaded, TooLate
from precompute.api.metrics import Metrics


def sleeping(per_call: float, per_item: float = 0.0) -> tuple[list[int], object]:
    """A batch call that sleeps (releasing the GIL, as a model does) and doubles its inputs."""
    sizes: list[int] = []

    def call(items: Sequence[int]) -> list[int]:
        sizes.append(len(items))
        time.sleep(per_call + per_item * len(items))
        return [2 * i for i in items]

    return sizes, call


def test_concurrent_submissions_share_model_calls_and_keep_their_answers() -> None:
    sizes, call = sleeping(0.02)

    async def storm() -> list[int]:
        batcher: Batcher[int, int] = Batcher(call, Fixed(64), Metrics())  # type: ignore[arg-type]
        batcher.start()
        try:
            return list(await asyncio.gather(*(batcher.submit(i) for i in range(200))))
        finally:
            await batcher.close(1.0)

    answers = asyncio.run(storm())
    assert answers == [2 * i for i in range(200)]
    assert sum(sizes) == 200
    assert len(sizes) <= 5  # 200 requests, batches of at most 64: 4 calls (one more if the first went alone)
    assert max(sizes) == 64


def test_one_at_a_time_makes_one_call_per_request() -> None:
    sizes, call = sleeping(0.0)

    async def storm() -> None:
        batcher: Batcher[int, int] = Batcher(call, Fixed(1), Metrics())  # type: ignore[arg-type]
        batcher.start()
        await asyncio.gather(*(batcher.submit(i) for i in range(20)))
        await batcher.close(1.0)

    asyncio.run(storm())
    assert sizes == [1] * 20


def test_max_wait_lets_a_batch_fill_before_the_call() -> None:
    sizes, call = sleeping(0.0)

    async def trickle() -> None:
        batcher: Batcher[int, int] = Batcher(call, Fixed(8), Metrics(), max_wait=0.2)  # type: ignore[arg-type]
        batcher.start()
        futures = []
        for i in range(8):  # one request every 5 ms: without the wait, most would go alone
            futures.append(batcher.submit(i))
            await asyncio.sleep(0.005)
        await asyncio.gather(*futures)
        await batcher.close(1.0)

    asyncio.run(trickle())
    assert sizes == [8]


def test_cancelled_requests_are_not_sent_to_the_model() -> None:
    sizes, call = sleeping(0.1)

    async def run() -> None:
        batcher: Batcher[int, int] = Batcher(call, Fixed(100), Metrics())  # type: ignore[arg-type]
        batcher.start()
        first = batcher.submit(0)
        await asyncio.sleep(0.02)  # the first call is running; the next ones queue
        queued = [batcher.submit(i) for i in range(1, 11)]
        for future in queued[:7]:
            future.cancel()  # what a request's deadline does
        assert await first == 0
        assert await asyncio.gather(*queued[7:]) == [16, 18, 20]
        await batcher.close(1.0)

    asyncio.run(run())
    assert sizes == [1, 3]


def test_a_full_queue_is_refused_at_once_and_a_failed_call_fails_its_batch_only() -> None:
    calls = 0

    def flaky(items: Sequence[int]) -> list[int]:
        nonlocal calls
        calls += 1
        time.sleep(0.05)
        if calls == 1:
            raise RuntimeError("model exploded")
        return list(items)

    async def run() -> None:
        batcher: Batcher[int, int] = Batcher(flaky, Fixed(10), Metrics(), max_pending=3)
        batcher.start()
        first = batcher.submit(1)
        await asyncio.sleep(0.01)
        queued = [batcher.submit(i) for i in range(3)]
        with pytest.raises(Overloaded):
            batcher.submit(99)
        with pytest.raises(RuntimeError, match="model exploded"):
            await first
        assert await asyncio.gather(*queued) == [0, 1, 2]
        await batcher.close(1.0)

    asyncio.run(run())


def test_close_finishes_queued_requests_then_refuses_new_ones() -> None:
    _, call = sleeping(0.05)

    async def run() -> None:
        batcher: Batcher[int, int] = Batcher(call, Fixed(2), Metrics())  # type: ignore[arg-type]
        batcher.start()
        futures = [batcher.submit(i) for i in range(6)]
        await asyncio.sleep(0)
        await batcher.close(5.0)
        assert all(f.done() for f in futures)
        assert [f.result() for f in futures] == [0, 2, 4, 6, 8, 10]
        with pytest.raises(Overloaded):
            batcher.submit(1)

    asyncio.run(run())


def synthetic(size: int, per_row: float) -> float:
    return 0.002 + per_row * size


@pytest.mark.parametrize("policy_class", [AIMD, LatencyFit])
def test_size_policies_settle_under_the_target_and_follow_a_slower_model(policy_class: type[AIMD]) -> None:
    target = 0.020
    policy = policy_class(1024, target)
    for _ in range(200):  # demand always exceeds the limit: every batch is full
        policy.observe(policy.limit, synthetic(policy.limit, 0.0001))
    fast_limit = policy.limit
    assert synthetic(fast_limit, 0.0001) <= target * 1.1
    assert fast_limit >= 100  # (target - 2 ms) / 0.1 ms = 180 fits; it must get near, not stay at the start
    for _ in range(200):  # the per-row cost quadruples (a noisy neighbour, a larger input)
        policy.observe(policy.limit, synthetic(policy.limit, 0.0004))
    assert synthetic(policy.limit, 0.0004) <= target * 1.1
    assert policy.limit < fast_limit


def test_aimd_does_not_grow_on_batches_that_are_not_full() -> None:
    policy = AIMD(1024, 0.02, start=16)
    for _ in range(50):
        policy.observe(3, 0.001)  # light load: the limit is not what bounds the batches
    assert policy.limit == 16


def test_requests_that_cannot_make_their_deadline_are_shed_before_the_call() -> None:
    sizes, call = sleeping(0.1)

    async def run() -> None:
        batcher: Batcher[int, int] = Batcher(call, Fixed(100), Metrics())  # type: ignore[arg-type]
        batcher.start()
        assert await batcher.submit(0) == 0  # one call: the batcher now expects ~0.1 s per call
        first = batcher.submit(1)
        await asyncio.sleep(0.01)
        hopeless = batcher.submit(2, timeout=0.05)  # queued behind a 0.1 s call, then needs another 0.1 s
        fine = batcher.submit(3, timeout=5.0)
        with pytest.raises(TooLate):
            await hopeless
        assert await first == 2
        assert await fine == 6
        await batcher.close(1.0)

    asyncio.run(run())
    assert sizes == [1, 1, 1]


def test_when_nobody_can_make_it_the_freshest_are_still_tried() -> None:
    sizes, call = sleeping(0.05)

    async def run() -> None:
        batcher: Batcher[int, int] = Batcher(call, Fixed(2), Metrics())  # type: ignore[arg-type]
        batcher.start()
        await batcher.submit(0)
        futures = [batcher.submit(i, timeout=0.01) for i in range(1, 5)]
        results = await asyncio.gather(*futures, return_exceptions=True)
        await batcher.close(1.0)
        assert [isinstance(r, TooLate) for r in results] == [True, True, False, False]
        assert results[2:] == [6, 8]

    asyncio.run(run())
    assert sizes == [1, 2]


def test_a_single_online_request_gets_its_answer_or_the_cause_of_its_failure() -> None:
    """OnlineAnswers.one (GET /predict's path): an answer, or "model_error" / "deadline", each counted."""
    import precompute.api.fallback  # noqa: F401  (imported by the app at start-up; here not inside a deadline)
    from precompute.api.online import OnlineAnswers
    from precompute.space import Decoded

    def call(items: Sequence[object]) -> list[str]:
        key = items[0].key  # type: ignore[attr-defined]
        if key == "raises":
            raise RuntimeError("the model failed")
        if key == "slow":
            time.sleep(1.0)
        return [f"scored {item.key}" for item in items]  # type: ignore[attr-defined]

    decoded = Decoded("k", {"mother_age": 51.0}, False, "off the grid")

    async def ask() -> tuple[list[object], bytes]:
        metrics = Metrics()
        batcher: Batcher[object, str] = Batcher(call, Fixed(1), metrics)  # type: ignore[arg-type]
        answers = OnlineAnswers(batcher, metrics, deadline_ms=400.0)  # type: ignore[arg-type]
        batcher.start()
        try:
            outcomes: list[object] = []
            for key in ("fine", "raises", "slow"):
                outcomes.append(await answers.one(key, decoded, None, time.perf_counter()))
            return outcomes, metrics.render()
        finally:
            await batcher.close(1.0)

    outcomes, rendered = asyncio.run(ask())
    assert outcomes == ["scored fine", "model_error", "deadline"]
    assert b'precompute_late_total{cause="model_error"} 1.0' in rendered
    assert b'precompute_late_total{cause="deadline"} 1.0' in rendered


@pytest.mark.parametrize("run", [asyncio.run, uvloop.run], ids=["asyncio", "uvloop"])
def test_deadlines_expire_every_waiting_future_in_time_and_only_those(run: Callable[[Any], Any]) -> None:
    """One timer for all (OnlineAnswers.one): each future still waiting at its deadline fails with Expired,
    within the timer's resolution; answered ones are left alone, whatever the order they were added in. On
    both loops the server may run (uvloop's handle of a timer already due is a plain Handle)."""
    from precompute.api.online import Deadlines, Expired

    async def expire() -> tuple[dict[str, float], dict[str, object], int]:
        loop = asyncio.get_running_loop()
        deadlines = Deadlines()
        futures = {name: loop.create_future() for name in ("late", "early", "answered", "later", "zero")}
        start = loop.time()
        order = (("zero", -1.0), ("late", 0.15), ("early", 0.05), ("answered", 0.05), ("later", 0.25))
        for name, seconds in order:  # the first is due at once: the one timer is armed for now
            deadlines.add(futures[name], seconds)
        futures["answered"].set_result("yes")
        expired: dict[str, float] = {}
        for name, future in futures.items():
            future.add_done_callback(lambda f, n=name: expired.setdefault(n, loop.time() - start))
        await asyncio.wait(futures.values())
        outcomes = {n: f.exception() if f.exception() else f.result() for n, f in futures.items()}
        return expired, outcomes, len(deadlines)

    expired, outcomes, left = run(expire())
    assert outcomes["answered"] == "yes"
    assert all(isinstance(outcomes[n], Expired) for n in ("late", "early", "later", "zero"))
    for name, seconds in (("early", 0.05), ("late", 0.15), ("later", 0.25)):
        assert seconds - Deadlines.EARLY <= expired[name] < seconds + 0.1, (name, expired[name])
    assert expired["zero"] < 0.05
    assert left == 0  # every entry let go once its deadline passed

    async def again() -> object:  # a new loop (an app started again): its own timer
        loop = asyncio.get_running_loop()
        deadlines = Deadlines()
        first, pending = loop.create_future(), loop.create_future()
        deadlines.add(first, 0.01)
        deadlines.add(pending, 10.0)  # still armed when this loop is closed
        with pytest.raises(Expired):
            await first
        return deadlines

    deadlines = run(again())

    async def on_another_loop() -> None:
        future = asyncio.get_running_loop().create_future()
        deadlines.add(future, 0.01)  # type: ignore[attr-defined]
        with pytest.raises(Expired):
            await asyncio.wait_for(future, 2.0)

    run(on_another_loop())


def test_deadlines_let_go_of_answered_requests_long_before_their_deadline() -> None:
    from precompute.api.online import Deadlines

    async def run() -> tuple[int, bool]:
        loop = asyncio.get_running_loop()
        deadlines = Deadlines()
        waiting = loop.create_future()
        deadlines.add(waiting, 60.0)
        most = 0
        for _ in range(5 * Deadlines.SWEEP_AT):
            answered = loop.create_future()
            deadlines.add(answered, 60.0)
            answered.set_result("yes")
            most = max(most, len(deadlines))
        expired = waiting in [entry[2] for entry in deadlines._heap]
        return most, expired

    most, kept = asyncio.run(run())
    assert most <= Deadlines.SWEEP_AT + 1  # swept at the threshold, not grown to 5x it
    assert kept  # the request still waiting keeps its entry
