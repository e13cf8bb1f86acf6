"""The store contract, run unchanged against every backend (see ``store_url`` in tests/conftest.py).

Each backend adds a fixture in tests/servers/; nothing here knows which backend it is talking to.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from typing import cast

import pyarrow as pa
import pytest

from precompute.adapters import open_backend, open_reader
from precompute.store import (
    Backend,
    ItemTooLarge,
    LockHeld,
    Reader,
    RunLock,
    State,
    StoreConfigError,
    StoreUnavailable,
    VersionError,
    Versions,
)
from precompute.store.codec import encode_key, encode_value
from tests.store.helpers import published, with_reader


@pytest.fixture
def backend(store_url: str) -> Iterator[Backend]:
    b = open_backend(store_url)
    yield b
    b.close()


def items(n: int, prefix: str = "k", start: int = 0) -> list[tuple[bytes, bytes]]:
    return [(encode_key(f"{prefix}:{i}"), encode_value({"y": float(i) / 4})) for i in range(start, start + n)]


def test_empty_store_has_no_alias_and_no_versions(backend: Backend) -> None:
    assert backend.get_alias() is None
    assert backend.records() == {}
    assert Versions(backend).views() == []


def test_read_returns_one_result_per_key_in_input_order(backend: Backend) -> None:
    backend.create_version("v1")
    rows = items(10)
    backend.write("v1", rows)
    keys = [rows[3][0], b"absent", rows[0][0], rows[3][0], rows[9][0]]
    assert backend.read("v1", keys) == [rows[3][1], None, rows[0][1], rows[3][1], rows[9][1]]
    assert backend.read("v1", []) == []


def test_large_writes_and_reads_are_chunked_to_the_backend_limits(backend: Backend) -> None:
    n = max(backend.max_write_batch, backend.max_read_batch) + 37
    n = min(n, 60_000)
    backend.create_version("big")
    rows = items(n)
    backend.write("big", rows)
    keys = [k for k, _ in rows]
    assert backend.read("big", keys) == [v for _, v in rows]
    counted = backend.count("big")
    assert counted is None or counted == n


def test_writes_are_idempotent_upserts(backend: Backend) -> None:
    backend.create_version("v1")
    backend.write("v1", items(5))
    backend.write("v1", items(5))
    counted = backend.count("v1")
    assert counted is None or counted == 5
    newer = [(k, b'{"y":99}') for k, _ in items(1)]
    backend.write("v1", newer)
    assert backend.read("v1", [newer[0][0]]) == [b'{"y":99}']


def test_versions_are_isolated_and_drop_removes_only_one(backend: Backend) -> None:
    backend.create_version("a")
    backend.create_version("b")
    key = encode_key("same")
    backend.write("a", [(key, b'{"v":1}')])
    backend.write("b", [(key, b'{"v":2}')])
    assert backend.read("a", [key]) == [b'{"v":1}']
    assert backend.read("b", [key]) == [b'{"v":2}']
    backend.drop_version("a")
    backend.drop_version("a")  # idempotent
    assert backend.read("a", [key]) == [None]
    assert backend.read("b", [key]) == [b'{"v":2}']


def test_keys_and_values_are_opaque_bytes(backend: Backend) -> None:
    backend.create_version("v1")
    rows = [
        (encode_key("naïve:ключ:鍵"), '{"label":"ü"}'.encode()),
        (encode_key("a b/c?d=e&f#g%20"), b'{"y":-0.5}'),
        (encode_key("x" * 1000), b"{}"),
    ]
    backend.write("v1", rows)
    assert backend.read("v1", [k for k, _ in rows]) == [v for _, v in rows]


def test_a_batch_read_gives_back_keys_of_every_shape_in_order(store_url: str, backend: Backend) -> None:
    """get_many on keys a JSON document or a query could mangle: quotes, backslashes, non-ASCII, a key that
    reads like JSON, and (in a batch of their own) bytes that are not UTF-8 and control characters."""
    text = [b'say "hi"', b"back\\slash", b"\\u0041", b'["k", 1]', encode_key("naïve:ключ:鍵"), b"plain"]
    raw = [b"\xff\xfe", b"a\x01b", b"nul\x00"]
    live = published(Versions(backend), [(key, b"%d" % i) for i, key in enumerate(text + raw)])

    async def scenario(reader: Reader) -> None:
        ask = [text[3], b"absent", *text, text[0], b'"absent"']
        want = [b"3", None, *(b"%d" % i for i in range(len(text))), b"0", None]
        assert await reader.get_many(live, ask) == want
        ask = [raw[0], text[1], raw[1], b"\xffabsent", raw[2]]
        assert await reader.get_many(live, ask) == [b"6", b"1", b"7", None, b"8"]
        assert [await reader.get(live, key) for key in text + raw] == [b"%d" % i for i in range(len(text + raw))]

    with_reader(store_url, scenario)


def test_oversized_value_is_rejected_before_anything_is_written(backend: Backend) -> None:
    backend.create_version("v1")
    ok = items(3)
    too_big = (encode_key("huge"), b"x" * (backend.max_value_bytes + 1))
    with pytest.raises(ItemTooLarge, match="huge"):
        backend.write("v1", [*ok, too_big])
    assert backend.read("v1", [k for k, _ in ok]) == [None, None, None]


def test_arrow_columns_write_as_items_do(backend: Backend) -> None:
    """What the batch job's write tasks call: the same rows as :meth:`write`, a later duplicate winning."""
    backend.create_version("v1")
    rows = [*items(2_000), (encode_key("k:5"), encode_value({"y": -1.0}))]
    keys = pa.array([k for k, _ in rows], pa.binary())
    backend.write_columns("v1", keys, pa.array([v for _, v in rows], pa.binary()))
    want = dict(rows)
    assert backend.read("v1", list(want)) == list(want.values())
    too_big = pa.array([b"x" * (backend.max_value_bytes + 1)], pa.binary())
    with pytest.raises(ItemTooLarge, match="huge"):
        backend.write_columns("v1", pa.array([encode_key("huge")], pa.binary()), too_big)
    assert backend.read("v1", [encode_key("huge")]) == [None]


def test_records_round_trip(backend: Backend) -> None:
    backend.put_record("v1", b'{"a":1}')
    backend.put_record("v2", b'{"a":2}')
    backend.put_record("v1", b'{"a":3}')
    assert backend.records() == {"v1": b'{"a":3}', "v2": b'{"a":2}'}
    backend.delete_record("v1")
    backend.delete_record("v1")
    assert backend.records() == {"v2": b'{"a":2}'}


def test_alias_is_a_compare_and_swap(backend: Backend) -> None:
    assert backend.swap_alias(None, "v1")
    assert backend.get_alias() == "v1"
    assert not backend.swap_alias(None, "v2")
    assert not backend.swap_alias("v0", "v2")
    assert backend.get_alias() == "v1"
    assert backend.swap_alias("v1", "v2")
    assert backend.get_alias() == "v2"


def test_run_lock_excludes_a_second_owner_until_released_or_expired(backend: Backend) -> None:
    assert backend.acquire_lock("first", 30) is None
    assert backend.acquire_lock("first", 30) is None  # renewal
    assert backend.acquire_lock("second", 30) == "first"
    backend.release_lock("second")  # not the holder: no effect
    assert backend.acquire_lock("second", 30) == "first"
    backend.release_lock("first")
    assert backend.acquire_lock("second", 0.5) is None
    time.sleep(1.2)
    assert backend.acquire_lock("third", 30) is None


def test_run_lock_context_refuses_a_concurrent_run(backend: Backend) -> None:
    with RunLock(backend, ttl_s=30, owner="run-1"), pytest.raises(LockHeld, match="run-1"):
        RunLock(backend, ttl_s=30, owner="run-2").acquire()
    with RunLock(backend, ttl_s=30, owner="run-2"):
        pass


def test_publish_flips_the_alias_and_keeps_the_previous_version(backend: Backend) -> None:
    versions = Versions(backend)
    first = published(versions, items(3))
    second = published(versions, items(3, prefix="other"))
    assert backend.get_alias() == second
    views = {v.record.version: v for v in versions.views()}
    assert views[second].live
    assert not views[first].live
    assert views[first].record.state is State.READY
    assert views[second].record.rows == 3


def test_abort_never_touches_the_live_version(backend: Backend) -> None:
    versions = Versions(backend)
    live = published(versions, items(3))
    record = versions.begin()
    backend.write(record.version, items(2, prefix="partial"))
    versions.abort(record, "interrupted")
    assert backend.get_alias() == live
    assert versions.get(record.version).state is State.FAILED
    assert backend.read(record.version, [items(1, prefix="partial")[0][0]]) == [None]


def test_only_a_ready_version_is_published(backend: Backend) -> None:
    versions = Versions(backend)
    record = versions.begin()
    with pytest.raises(VersionError, match="writing"):
        versions.publish(record)
    assert backend.get_alias() is None


def test_rollback_goes_back_and_never_silently_re_promotes(backend: Backend) -> None:
    versions = Versions(backend)
    v1 = published(versions, items(2))
    v2 = published(versions, items(2))
    v3 = published(versions, items(2))
    assert versions.rollback() == (v3, v2)
    assert backend.get_alias() == v2
    assert versions.rollback() == (v2, v1)
    with pytest.raises(VersionError, match="no earlier"):
        versions.rollback()
    states = {v.record.version: v.record.state for v in versions.views()}
    assert states[v3] is State.ROLLED_BACK
    assert states[v2] is State.ROLLED_BACK
    assert versions.rollback(to=v3) == (v1, v3)  # explicit is fine
    assert backend.get_alias() == v3


def test_gc_keeps_the_newest_published_versions_and_drops_failed_ones(backend: Backend) -> None:
    versions = Versions(backend)
    old = [published(versions, items(2)) for _ in range(3)]
    failed = versions.begin()
    versions.abort(failed, "test")
    unfinished = versions.begin()  # a run that died: no lock holder is writing it now
    live = published(versions, items(2))
    dropped = versions.gc(keep=2)
    assert set(dropped) == {old[0], old[1], failed.version, unfinished.version}
    assert [v.record.version for v in versions.views()] == [old[2], live]
    assert backend.read(old[0], [items(1)[0][0]]) == [None]
    with pytest.raises(VersionError, match="live"):
        versions.drop(live)


def test_reader_sees_what_the_backend_wrote(store_url: str, backend: Backend) -> None:
    versions = Versions(backend)
    rows = items(2500)
    live = published(versions, rows)

    async def scenario(reader: Reader) -> None:
        assert await reader.get_alias() == live
        assert await reader.get(live, rows[7][0]) == rows[7][1]
        assert await reader.get(live, b"absent") is None
        keys = [rows[5][0], b"absent", rows[2499][0], rows[5][0]]
        assert await reader.get_many(live, keys) == [rows[5][1], None, rows[2499][1], rows[5][1]]
        all_keys = [k for k, _ in rows]
        assert await reader.get_many(live, all_keys) == [v for _, v in rows]
        assert await reader.get("no-such-version", rows[7][0]) is None
        newer = published(versions, items(1, prefix="new"))
        assert await reader.get_alias() == newer

    with_reader(store_url, scenario)


def _race(backends: list[Backend], expected: str | None, round_: int) -> list[str]:
    """Every backend tries ``swap_alias(expected, ...)`` at the same moment; returns the winners."""
    start = threading.Barrier(len(backends))
    wins: list[str] = []

    def publish(b: Backend, new: str) -> None:
        start.wait()
        if b.swap_alias(expected, new):
            wins.append(new)

    threads = [threading.Thread(target=publish, args=(b, f"w{i}-r{round_}")) for i, b in enumerate(backends)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    return wins


def test_concurrent_compare_and_swap_has_exactly_one_winner(store_url: str) -> None:
    # Eight publishers, each with its own connection, race from the same expected value, twice.
    backends = [open_backend(store_url) for _ in range(8)]
    try:
        expected: str | None = None
        for round_ in range(2):
            wins = _race(backends, expected, round_)
            assert len(wins) == 1, wins
            assert backends[0].get_alias() == wins[0]
            expected = wins[0]
    finally:
        for b in backends:
            b.close()


@pytest.mark.parametrize(
    "bad", ["../etc", "v 1", "a" * 65, "", "v1;DROP", "v.1"], ids=["path", "space", "long", "empty", "sql", "dot"]
)
def test_one_version_id_rule_on_every_backend(backend: Backend, bad: str) -> None:
    with pytest.raises(VersionError, match="invalid version id"):
        backend.create_version(bad)
    with pytest.raises(VersionError, match="invalid version id"):
        backend.write(bad, items(1))


def test_an_unknown_url_option_is_bad_configuration(store_url: str) -> None:
    url = store_url + ("&" if "?" in store_url else "?") + "bogus_option=1"
    with pytest.raises(StoreConfigError, match="unknown option 'bogus_option'"):
        open_backend(url).get_alias()
    with pytest.raises(StoreConfigError, match="unknown option 'bogus_option'"):
        asyncio.run(open_reader(url).get_alias())


def _unavailable(call: Callable[[], object]) -> None:
    started = time.monotonic()
    with pytest.raises(StoreUnavailable):
        call()
    assert time.monotonic() - started < 10, "a store that cannot answer must fail fast, not hang"


def test_a_store_that_cannot_answer_raises_store_unavailable(down_url: str) -> None:
    """Every backend turns its own "down / locked / timed out" into StoreUnavailable, on both sides."""
    try:
        backend = open_backend(down_url)
    except StoreUnavailable:
        backend = None  # refusing to open is also a clean answer
    if backend is not None:
        _unavailable(backend.get_alias)
        _unavailable(backend.records)
        _unavailable(lambda: backend.write("v1", items(3)))
        _unavailable(lambda: backend.swap_alias(None, "v1"))
        _unavailable(lambda: backend.acquire_lock("me", 10))
        _unavailable(lambda: backend.add_misses({b"k": 1}, cap=10))
        _unavailable(backend.misses)
        backend.close()

    async def reads(reader: Reader) -> None:
        for call in (
            reader.get_alias,
            reader.records,
            lambda: reader.get("v1", b"k"),
            lambda: reader.get_many("v1", [b"k", b"j"]),
        ):
            started = time.monotonic()
            with pytest.raises(StoreUnavailable):
                await call()
            assert time.monotonic() - started < 10
        await reader.aclose()

    try:
        reader = open_reader(down_url)
    except StoreUnavailable:
        return
    asyncio.run(reads(reader))


def test_gc_keeps_rolled_back_versions_that_were_published_until_they_age_out(backend: Backend) -> None:
    versions = Versions(backend)
    v1 = published(versions, items(2))
    v2 = published(versions, items(2))
    assert versions.rollback() == (v2, v1)
    assert versions.rollback(to=v2) == (v1, v2)  # rolling forward again
    assert versions.get(v1).state is State.READY  # rolling forward is not rolling back
    assert versions.gc(keep=3) == []
    assert versions.rollback() == (v2, v1)  # still there to go back to
    assert versions.get(v2).state is State.ROLLED_BACK
    v3 = published(versions, items(2))  # a run publishes; its gc keeps the rolled-back v2 too
    assert versions.gc(keep=3) == []
    assert versions.rollback(to=v2) == (v3, v2)
    v4 = published(versions, items(2))
    assert backend.get_alias() == v4
    assert versions.gc(keep=3) == [v1]  # v4 live, v3 rolled back, v2: the three newest ever published


def test_a_refused_version_is_kept_for_review_and_published_only_when_approved(backend: Backend) -> None:
    versions = Versions(backend)
    live = published(versions, items(2))

    def refused() -> str:
        record = versions.begin()
        backend.write(record.version, items(3, prefix="new"))
        versions.refuse(record, 3, ["y: PSI 0.9 is above max_drift 0.25"])
        return record.version

    first, second = refused(), refused()
    assert backend.get_alias() == live
    assert versions.get(second).state is State.REFUSED
    assert versions.get(second).meta["refused"] == ["y: PSI 0.9 is above max_drift 0.25"]
    with pytest.raises(VersionError, match="cannot be served"):
        versions.rollback(to=second)
    assert versions.gc(keep=3) == [first]  # the newest refused one stays for review, an older one goes
    with pytest.raises(VersionError, match=f"version {live} is ready; only a refused one"):
        versions.approve(live)
    record, previous = versions.approve(second)
    assert (record.state, previous, backend.get_alias()) == (State.READY, live, second)
    assert backend.read(second, [encode_key("new:1")]) == [items(3, prefix="new")[1][1]]
    assert versions.rollback() == (second, live)  # an approved version rolls back as any other
    newer = refused()
    published(versions, items(2))  # a later run published: the refused version is out of date
    assert newer in versions.gc(keep=3)


def test_a_lock_whose_renewal_breaks_is_lost_and_says_why(backend: Backend) -> None:
    class Breaking:
        """The backend, except that renewing the lock raises an error no store would (a bug)."""

        url = backend.url
        calls = 0

        def acquire_lock(self, owner: str, ttl_s: float) -> str | None:
            self.calls += 1
            if self.calls > 1:
                raise RuntimeError("a bug in the renewal")
            return backend.acquire_lock(owner, ttl_s)

        def release_lock(self, owner: str) -> None:
            backend.release_lock(owner)

    lock = RunLock(cast(Backend, Breaking()), ttl_s=0.3)
    with lock:
        deadline = time.monotonic() + 5
        while not lock.lost and time.monotonic() < deadline:
            time.sleep(0.02)
    assert lock.lost
    assert "RuntimeError: a bug in the renewal" in lock.why_lost


# -- misses: off-grid keys answered online, counted by API processes, read by a run ------------------


def _misses(n: int, prefix: str = "m") -> list[bytes]:
    return [encode_key(f"{prefix}:{i}:ü") for i in range(n)]


def test_misses_add_up_and_read_back(backend: Backend) -> None:
    assert backend.misses() == {}
    a, b, c = _misses(3)
    assert backend.add_misses({a: 2, b: 1}, cap=10) == 0
    assert backend.add_misses({a: 3, c: 1}, cap=10) == 0
    assert backend.add_misses({}, cap=10) == 0
    assert backend.misses() == {a: 5, b: 1, c: 1}


def test_misses_cap_admits_new_keys_only_while_room_and_most_counted_first(backend: Backend) -> None:
    a, b, c, d, e = _misses(5)
    assert backend.add_misses({a: 1, b: 1}, cap=3) == 0
    # One place left: of the new keys the most counted gets it; known keys are always incremented.
    assert backend.add_misses({a: 4, c: 2, d: 7, e: 1}, cap=3) == 2
    assert backend.misses() == {a: 5, b: 1, d: 7}
    assert backend.add_misses({c: 1}, cap=3) == 1
    assert backend.add_misses({b: 1}, cap=3) == 0
    assert backend.add_misses({e: 1}, cap=0) == 1
    assert backend.misses() == {a: 5, b: 2, d: 7}


def test_misses_clear_forgets_keys_and_frees_their_places(backend: Backend) -> None:
    a, b, c = _misses(3)
    backend.add_misses({a: 3, b: 1}, cap=2)
    backend.clear_misses([a, encode_key("never-recorded"), a])
    assert backend.misses() == {b: 1}
    assert backend.add_misses({c: 1, a: 1}, cap=2) == 1  # one place free again: a tie, the first key wins
    assert backend.misses() == {b: 1, a: 1}
    backend.clear_misses([])
    backend.clear_misses([a, b])
    assert backend.misses() == {}


def test_misses_are_not_version_data(backend: Backend) -> None:
    versions = Versions(backend)
    old = published(versions, items(3))
    (key,) = _misses(1)
    backend.add_misses({key: 1}, cap=5)
    live = published(versions, items(3))
    assert versions.gc(keep=1) == [old]
    assert backend.misses() == {key: 1}
    assert backend.read(live, [key]) == [None]
    assert sorted(backend.records()) == [live]


def test_misses_refuse_bad_counts(backend: Backend) -> None:
    (key,) = _misses(1)
    with pytest.raises(ValueError, match="positive integer"):
        backend.add_misses({key: 0}, cap=5)
    with pytest.raises(ValueError, match="cap"):
        backend.add_misses({key: 1}, cap=-1)
    assert backend.misses() == {}


def test_concurrent_miss_counts_add_up_exactly_and_the_cap_holds(store_url: str) -> None:
    # Four API processes flushing at once, each with its own connection, the same keys and new ones.
    writers, rounds, cap = 4, 5, 12
    shared = _misses(6, prefix="shared")
    backends = [open_backend(store_url) for _ in range(writers)]
    start = threading.Barrier(writers)
    refused: list[int] = []
    errors: list[BaseException] = []

    def flush(b: Backend, w: int) -> None:
        try:
            start.wait()
            for r in range(rounds):
                own = _misses(3, prefix=f"w{w}r{r}")
                refused.append(b.add_misses({**{k: 1 for k in shared}, **{k: 1 for k in own}}, cap=cap))
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=flush, args=(b, w)) for w, b in enumerate(backends)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
        assert not errors, errors
        recorded = backends[0].misses()
    finally:
        for b in backends:
            b.close()
    assert {k: recorded.get(k) for k in shared} == {k: writers * rounds for k in shared}
    assert len(recorded) == cap
    own_keys = writers * rounds * 3
    assert sum(refused) == own_keys - (cap - len(shared))
