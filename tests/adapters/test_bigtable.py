"""The Bigtable backend beyond the contract suite: layout, per-row failures, compare-and-swap edge cases.

Everything runs against the real emulator (tests/servers/bigtable.py). Faults are injected by wrapping
the real data-API table: either a row is sent with a column family the server does not have, so the
emulator itself rejects that row, or a status the emulator never produces (throttling) is reported for a
row that was held back.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import pytest
from google.api_core import exceptions as core_exceptions
from google.cloud.bigtable.data import (
    FailedMutationEntryError,
    MutationsExceptionGroup,
    RowMutationEntry,
    SetCell,
)

from precompute.adapters import open_backend, open_reader
from precompute.adapters.bigtable import BigtableBackend
from precompute.adapters.bigtable.client import admin_client, close_admin
from precompute.adapters.bigtable.layout import CELL_TIMESTAMP, DATA_FAMILY, META_FAMILY, version_prefix
from precompute.adapters.bigtable.options import Settings
from precompute.store import Reader, State, StoreUnavailable, StoreURL, Versions, WriteError
from precompute.store.codec import encode_key, encode_value
from precompute.store.retry import Backoff
from tests.store.helpers import published, with_reader

# The SDK's exception constructors are untyped.
api_errors: Any = core_exceptions

FAST = Backoff(base_s=0.001, cap_s=0.01, deadline_s=10.0, max_attempts=4)


def rows(n: int, prefix: str = "k", tag: float = 0.0) -> list[tuple[bytes, bytes]]:
    return [(encode_key(f"{prefix}:{i}"), encode_value({"y": i + tag})) for i in range(n)]


@pytest.fixture
def backend(bigtable_store_url: str) -> Iterator[BigtableBackend]:
    b = open_backend(bigtable_store_url)
    assert isinstance(b, BigtableBackend)
    b.retry_policy = FAST
    yield b
    b.close()


class FaultyTable:
    """The real table, except that the rows ``fails(key, attempt)`` picks fail on that attempt.

    ``how="server"`` sends those rows to a column family that does not exist, so the emulator rejects
    them itself (it answers INTERNAL); ``how="throttle"`` holds them back and reports RESOURCE_EXHAUSTED,
    the throttling status the data client does not retry on its own.
    """

    def __init__(self, real: Any, fails: Callable[[bytes, int], bool], how: str = "server") -> None:
        self.real = real
        self.fails = fails
        self.how = how
        self.calls: list[list[bytes]] = []

    def bulk_mutate_rows(self, mutation_entries: list[RowMutationEntry], **kwargs: Any) -> None:
        attempt = len(self.calls) + 1
        self.calls.append([bytes(e.row_key) for e in mutation_entries])
        bad = {i for i, e in enumerate(mutation_entries) if self.fails(bytes(e.row_key), attempt)}
        if self.how == "server":
            sent = [
                RowMutationEntry(e.row_key, [SetCell("no-such-family", b"v", b"x", CELL_TIMESTAMP)]) if i in bad else e
                for i, e in enumerate(mutation_entries)
            ]
            self.real.bulk_mutate_rows(sent, **kwargs)
            return
        kept = [e for i, e in enumerate(mutation_entries) if i not in bad]
        if kept:
            self.real.bulk_mutate_rows(kept, **kwargs)
        if bad:
            throttled = [
                FailedMutationEntryError(i, mutation_entries[i], api_errors.TooManyRequests("throttled"))
                for i in sorted(bad)
            ]
            raise MutationsExceptionGroup(throttled, len(mutation_entries))

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)


def stored(backend: BigtableBackend, version: str, data: list[tuple[bytes, bytes]]) -> list[bool]:
    found = backend.read(version, [k for k, _ in data])
    return [got == value for got, (_, value) in zip(found, data, strict=True)]


# -- layout ----------------------------------------------------------------------------------------


@pytest.mark.server
def test_table_is_created_with_a_one_version_gc_rule_on_both_families(backend: BigtableBackend) -> None:
    backend.create_version("v1")
    admin = admin_client(backend.settings)
    try:
        table = admin.get_table(request={"name": backend.settings.table_path})
    finally:
        close_admin(admin)
    assert set(table.column_families) == {DATA_FAMILY, META_FAMILY}
    for family in table.column_families.values():
        assert family.gc_rule.max_num_versions == 1


@pytest.mark.server
def test_an_existing_table_is_used_without_any_admin_call(
    bigtable_store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    where = Settings.from_url(StoreURL.parse(bigtable_store_url))
    admin = admin_client(where)
    try:  # made by an operator, as `cbt createtable T families=v:maxversions=1,m:maxversions=1` would
        family = {"gc_rule": {"max_num_versions": 1}}
        admin.create_table(
            request={
                "parent": f"projects/{where.project}/instances/{where.instance}",
                "table_id": where.table,
                "table": {"column_families": {DATA_FAMILY: family, META_FAMILY: family}},
            }
        )
    finally:
        close_admin(admin)

    def no_admin() -> None:
        raise AssertionError("an admin client was opened")

    monkeypatch.setattr("precompute.adapters.bigtable.backend.admin_client", no_admin)
    backend = open_backend(bigtable_store_url)
    versions = Versions(backend)
    record = versions.begin()
    backend.write(record.version, rows(10))
    versions.mark_ready(record, 10)
    versions.publish(record)
    assert backend.acquire_lock("job", 30) is None
    assert backend.read(record.version, [rows(10)[3][0]]) == [rows(10)[3][1]]
    backend.close()


@pytest.mark.server
def test_a_table_that_appeared_without_our_families_gets_them(backend: BigtableBackend) -> None:
    where = backend.settings
    admin = admin_client(where)
    try:
        admin.create_table(
            request={
                "parent": f"projects/{where.project}/instances/{where.instance}",
                "table_id": where.table,
                "table": {"column_families": {"other": {}}},
            }
        )
        backend.create_table()
        families = admin.get_table(request={"name": where.table_path}).column_families
    finally:
        close_admin(admin)
    assert set(families) == {"other", DATA_FAMILY, META_FAMILY}
    assert families[DATA_FAMILY].gc_rule.max_num_versions == 1


@pytest.mark.server
def test_a_value_is_one_cell_that_a_rewrite_replaces(backend: BigtableBackend) -> None:
    backend.create_version("v1")
    key = encode_key("True:25:Single(1):39")
    backend.write("v1", [(key, b'{"weight_pounds":7.31}')])
    backend.write("v1", [(key, b'{"weight_pounds":7.5}')])
    # The emulator applies GC rules lazily, like Bigtable: two cells here would mean stacked versions.
    row = backend.table.read_row(version_prefix("v1") + key)
    assert row is not None
    cells = [(c.family, c.qualifier, c.timestamp_micros, c.value) for c in row.cells]
    assert cells == [(DATA_FAMILY, b"v", 0, b'{"weight_pounds":7.5}')]


@pytest.mark.server
def test_cells_written_out_of_band_do_not_confuse_reads(bigtable_store_url: str, backend: BigtableBackend) -> None:
    backend.create_version("v1")
    key, other = encode_key("a"), encode_key("b")
    backend.write("v1", [(key, b'{"y":1}')])
    # As `cbt set` would: another column beside the value, and a row with no value at all.
    backend.table.mutate_row(version_prefix("v1") + key, SetCell(DATA_FAMILY, b"note", b"hand-written"))
    backend.table.mutate_row(version_prefix("v1") + other, SetCell(DATA_FAMILY, b"note", b"hand-written"))
    assert backend.read("v1", [key, other]) == [b'{"y":1}', None]

    async def lookups() -> list[bytes | None]:
        reader = open_reader(bigtable_store_url)
        try:
            return [await reader.get("v1", key), await reader.get("v1", other)]
        finally:
            await reader.aclose()

    assert asyncio.run(lookups()) == [b'{"y":1}', None]


@pytest.mark.server
def test_dropping_a_version_is_one_admin_call_that_spares_the_rest(
    backend: BigtableBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    versions = Versions(backend)
    keep = versions.begin()
    backend.write(keep.version, rows(300))
    versions.mark_ready(keep, 300)
    versions.publish(keep)
    for version in ("v1", "v10", "v1-x"):
        backend.create_version(version)
        backend.write(version, rows(300, tag=1))
    assert backend.acquire_lock("runner", 30) is None

    admin = backend._admin_client()
    sent: list[dict[str, Any]] = []
    real_drop = admin.drop_row_range

    def counting_drop(request: dict[str, Any], **kwargs: Any) -> None:
        sent.append(request)
        real_drop(request=request, **kwargs)

    monkeypatch.setattr(admin, "drop_row_range", counting_drop)
    backend.drop_version("v1")

    assert sent == [{"name": backend.settings.table_path, "row_key_prefix": b"v1#"}]
    assert not any(stored(backend, "v1", rows(300, tag=1)))
    assert all(stored(backend, "v10", rows(300, tag=1)))
    assert all(stored(backend, "v1-x", rows(300, tag=1)))
    assert all(stored(backend, keep.version, rows(300)))
    assert backend.get_alias() == keep.version
    assert set(backend.records()) == {keep.version}
    assert backend.acquire_lock("someone-else", 30) == "runner"


# -- per-row failures ------------------------------------------------------------------------------


@pytest.mark.server
def test_rows_the_server_rejects_once_are_resent_alone_and_land(backend: BigtableBackend) -> None:
    backend.create_version("v1")
    data = rows(2000)
    flaky = {k for i, (k, _) in enumerate(data) if i % 97 == 0}
    faulty = FaultyTable(backend.table, lambda key, attempt: attempt == 1 and key[3:] in flaky)
    backend.table = faulty  # type: ignore[assignment]

    backend.write("v1", data)

    assert all(stored(backend, "v1", data))
    assert len(faulty.calls) == 2
    assert sorted(faulty.calls[1]) == sorted(version_prefix("v1") + k for k in flaky)
    assert backend.resent_rows == len(flaky)


@dataclass(frozen=True)
class RecordedBackoff(Backoff):
    """The fast policy, noting each pause instead of sleeping it."""

    sleeps: list[float] = field(default_factory=list)

    def delays(self, sleep: Callable[[float], None] = time.sleep) -> Iterator[int]:
        return super().delays(self.sleeps.append)


@pytest.mark.server
def test_throttled_rows_are_retried_with_backoff_until_they_land(backend: BigtableBackend) -> None:
    backend.create_version("v1")
    data = rows(500)
    throttled = {data[3][0], data[250][0], data[499][0]}
    faulty = FaultyTable(backend.table, lambda key, attempt: attempt <= 2 and key[3:] in throttled, how="throttle")
    backend.table = faulty  # type: ignore[assignment]
    policy = RecordedBackoff(base_s=0.5, cap_s=1.0, deadline_s=10.0, max_attempts=4)
    backend.retry_policy = policy

    backend.write("v1", data)

    assert all(stored(backend, "v1", data))
    assert [len(call) for call in faulty.calls] == [500, 3, 3]
    assert len(policy.sleeps) == 2  # a pause before each resend
    assert all(0 <= pause <= 1.0 for pause in policy.sleeps)


@pytest.mark.server
def test_rows_that_keep_failing_are_reported_by_key_and_nothing_is_dropped_silently(
    backend: BigtableBackend,
) -> None:
    backend.create_version("v1")
    data = rows(1000)
    doomed = {data[10][0], data[500][0]}
    faulty = FaultyTable(backend.table, lambda key, attempt: key[3:] in doomed)
    backend.table = faulty  # type: ignore[assignment]

    with pytest.raises(WriteError, match="2 of 1000 rows still failed") as caught:
        backend.write("v1", data)

    assert sorted(caught.value.failed_keys) == sorted(doomed)
    assert len(faulty.calls) == FAST.max_attempts
    assert all(len(call) == 2 for call in faulty.calls[1:])
    landed = stored(backend, "v1", data)
    assert {data[i][0] for i, ok in enumerate(landed) if not ok} == doomed


@pytest.mark.server
def test_a_permanent_refusal_fails_at_once_without_retries(backend: BigtableBackend) -> None:
    # No table at all: the server answers NOT_FOUND for every row, which no retry can fix.
    faulty = FaultyTable(backend.table, lambda key, attempt: False)
    backend.table = faulty  # type: ignore[assignment]
    with pytest.raises(WriteError, match="refused") as caught:
        backend.write("v1", rows(50))
    assert len(faulty.calls) == 1
    assert len(caught.value.failed_keys) == 50


@pytest.mark.server
def test_a_run_whose_rows_fail_is_never_published(bigtable_store_url: str, backend: BigtableBackend) -> None:
    versions = Versions(backend)
    old = rows(400)
    live = published(versions, old)

    new = rows(400, tag=0.5)
    record = versions.begin()
    real = backend.table
    backend.table = FaultyTable(real, lambda key, attempt: key.endswith(b":7"))  # type: ignore[assignment]
    with pytest.raises(WriteError) as caught:
        backend.write(record.version, new)
    # What the batch job does with a failed write: the version is aborted, never marked ready.
    versions.abort(record, str(caught.value))
    backend.table = real

    assert backend.get_alias() == live
    assert versions.get(record.version).state is State.FAILED
    assert not any(stored(backend, record.version, new))  # the rows that did land were dropped with it

    async def served(reader: Reader) -> list[bytes | None]:
        version = await reader.get_alias()
        assert version == live
        return await reader.get_many(version, [k for k, _ in new])

    assert with_reader(bigtable_store_url, served) == [v for _, v in old]


# -- compare-and-swap when the reply is lost -------------------------------------------------------


class LostReply:
    """check_and_mutate_row that fails with UNAVAILABLE, after applying the change or before it."""

    def __init__(self, real: Any, applied: bool) -> None:
        self.real = real
        self.applied = applied

    def check_and_mutate_row(self, *args: Any, **kwargs: Any) -> bool:
        if self.applied:
            self.real.check_and_mutate_row(*args, **kwargs)
        raise api_errors.ServiceUnavailable("connection reset")

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)


@pytest.mark.server
def test_a_flip_whose_reply_was_lost_is_read_back_from_the_alias(backend: BigtableBackend) -> None:
    assert backend.swap_alias(None, "v1")
    real = backend.meta.table
    backend.meta.table = LostReply(real, applied=True)  # type: ignore[assignment]
    assert backend.swap_alias("v1", "v2")
    assert backend.get_alias() == "v2"

    backend.meta.table = LostReply(real, applied=False)  # type: ignore[assignment]
    with pytest.raises(StoreUnavailable, match="alias"):
        backend.swap_alias("v2", "v3")
    assert backend.get_alias() == "v2"


@pytest.mark.server
def test_an_expired_lease_is_taken_over_and_its_old_holder_cannot_release_it(backend: BigtableBackend) -> None:
    assert backend.acquire_lock("old", 0.2) is None
    time.sleep(0.4)
    assert backend.acquire_lock("new", 30) is None
    backend.release_lock("old")
    assert backend.acquire_lock("third", 30) == "new"
    backend.release_lock("new")
    assert backend.acquire_lock("third", 30) is None


# -- clients ---------------------------------------------------------------------------------------


@pytest.mark.server
def test_backends_of_one_process_share_one_data_client(bigtable_store_url: str) -> None:
    first, second = open_backend(bigtable_store_url), open_backend(bigtable_store_url)
    assert isinstance(first, BigtableBackend)
    assert isinstance(second, BigtableBackend)
    assert first.table.client is second.table.client
    first.create_version("v1")
    first.write("v1", rows(3))
    first.close()  # closes its own table handle, not the process's client
    assert second.read("v1", [k for k, _ in rows(3)]) == [v for _, v in rows(3)]
    third = open_backend(bigtable_store_url)
    assert isinstance(third, BigtableBackend)
    assert third.table.client is second.table.client
    second.close()
    third.close()


def _write_share(url: str, version: str, start: int, count: int) -> int:
    backend = open_backend(url)
    try:
        backend.write(version, rows(start + count)[start:])
        return count
    finally:
        backend.close()


@pytest.mark.server
def test_writers_in_separate_processes_load_one_version_in_parallel(
    bigtable_store_url: str, backend: BigtableBackend
) -> None:
    backend.create_version("v1")
    data = rows(6000)
    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as pool:
        written = list(pool.map(_write_share, [bigtable_store_url] * 2, ["v1"] * 2, [0, 3000], [3000] * 2))
    assert written == [3000, 3000]
    assert all(stored(backend, "v1", data))
