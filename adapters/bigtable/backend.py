"""Google Cloud Bigtable backend: ``bigtable://PROJECT/INSTANCE/TABLE[?app_profile=ID&timeout=SECONDS]``.

For request spaces that do not fit in memory: hundreds of millions of keys, millisecond reads at any
scale. Credentials come the standard Google way (application default credentials), never from the URL;
``BIGTABLE_EMULATOR_HOST=host:port`` points every client at the emulator instead.

Layout: one table, a row-key prefix per version (details in :mod:`adapters.bigtable.layout`)::

    <version>#<key>  -> v:v = value       ~alias -> m:alias       ~lock -> m:lease       ~record#<version> -> m:r

Why a prefix per version rather than a table per version. Both make publish atomic the same way (one
``CheckAndMutateRow`` on the alias row) and both drop a version with one admin call
(``DropRowRange(prefix)`` or ``DeleteTable``). They differ in what a run costs:

* creating a version is free with a prefix, but a table per version is a ``CreateTable`` per run. Table
  creation and deletion are admin operations under a small per-project daily quota, and Google's quota
  page asks that admin calls not grow with usage;
* ``DropRowRange`` needs only ``bigtable.tables.mutateRows``, the permission the writer already has,
  whereas a table per version needs create/delete rights on the instance for every job;
* one table means one set of settings (GC, replication, app profiles, IAM) made once by the operator,
  and one table handle in the reader for every version.

The price: on a replicated instance ``DropRowRange`` makes the replicas work harder than a
``DeleteTable``, and only one may run per table at a time (a concurrent one is refused: retried here).

Writes: ``bulk_mutate_rows`` with every per-row status checked, failed rows retried with backoff and
then raised (:mod:`adapters.bigtable.writes`). Ray write tasks each hold their own process-wide client
(:mod:`adapters.bigtable.client`), so tasks write in parallel. Reads: ``read_row`` for one key,
``read_rows`` with a row-key set for a batch, answers put back in input order.

Measured against the emulator on this shared 2-core machine (``bench/bigtable_load.py``, three runs of
3 medians each; other work kept the load average at 4-12, so wall-clock rates moved by half between runs
and CPU time per row is the steadier figure): a writer costs 24-28k rows per CPU-second, 0.93-1.00x the
bare client sending the same rows unchecked, so checking every row's status costs at most a few percent.
Half of that CPU is the client building entries and converting them to protobuf: a writer is CPU-bound,
so parallelism comes from more Ray write tasks, not from concurrent calls inside one. A point read takes
0.75-0.93 ms at p50 (1.02-1.03x a bare ``read_row``); a 1,000-key batch 1.02-1.20x a bare ``read_rows``.
The emulator is one Go process; these figures orient, they do not predict a cluster.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from google.api_core import exceptions as core_exceptions
from google.cloud.bigtable.data import BigtableDataClientAsync, ReadRowsQuery, Row, TableAsync

from precompute.adapters.bigtable.client import (
    AdminClient,
    TableMissing,
    admin_client,
    async_data_client,
    close_admin,
    ensure_table,
    errors,
    shared_data_client,
)
from precompute.adapters.bigtable.layout import (
    ALIAS_COLUMN,
    ALIAS_ROW,
    DATA_FAMILY,
    META_FAMILY,
    VALUE_COLUMN,
    Location,
    first_cell,
    version_prefix,
)
from precompute.adapters.bigtable.meta import MetaRows
from precompute.adapters.bigtable.writes import write_rows
from precompute.store import Backend, Item, Reader, StoreURL
from precompute.store.retry import Backoff

#: Time budget of one data call, the client's own retries included, unless the URL sets ``timeout``: the
#: batch side can wait out a blip; a lookup should fail fast and let the caller answer 503.
BACKEND_TIMEOUT_S = 30.0
READER_TIMEOUT_S = 5.0
RETRY_POLICY = Backoff(base_s=0.1, cap_s=5.0, deadline_s=120.0, max_attempts=12)

#: Refusals of DropRowRange worth waiting out (one runs per table at a time; a second is refused).
_DROP_AGAIN = (
    core_exceptions.FailedPrecondition,
    core_exceptions.ServiceUnavailable,
    core_exceptions.DeadlineExceeded,
    core_exceptions.Aborted,
    core_exceptions.TooManyRequests,
)


def _batch_query(prefix: bytes, keys: Sequence[bytes]) -> ReadRowsQuery:
    # Never an empty key set: ReadRows without keys or ranges scans the whole table.
    return ReadRowsQuery(row_keys=[prefix + key for key in dict.fromkeys(keys)])


def _in_order(prefix: bytes, keys: Sequence[bytes], rows: Sequence[Row]) -> list[bytes | None]:
    found = {bytes(row.row_key)[len(prefix) :]: first_cell(row, DATA_FAMILY, VALUE_COLUMN) for row in rows}
    return [found.get(key) for key in keys]


class BigtableBackend(Backend):
    # Client CPU per row is flat from 5k to 20k rows a call in bench/bigtable_load.py (1k-2.5k cost up to
    # ~15 % more); within that, 10k suits a remote cluster: one MutateRows call of ~0.6 MB, few round
    # trips, far below the call's 100,000-mutation limit.
    max_write_batch = 10_000
    # Per key, 1k-key ReadRows calls cost 58-87 us in the same benchmark, 100-key calls 86-128 us; 2k
    # keys gained nothing steady.
    max_read_batch = 1_000
    # Bigtable takes cells up to 100 MiB but advises at most 10 MB per cell; a prediction is ~100 bytes.
    max_value_bytes = 10 * 1024 * 1024

    def __init__(self, url: StoreURL) -> None:
        super().__init__(url)
        self.where = Location.from_url(url)
        #: The data API's table handle (on the process-wide client); tests wrap it to inject faults.
        self.table = shared_data_client(self.where.project).get_table(
            self.where.instance, self.where.table, app_profile_id=self.where.app_profile
        )
        self.timeout_s = self.where.timeout(BACKEND_TIMEOUT_S)
        self.meta = MetaRows(self.table, self.timeout_s)
        #: How long failed rows of a bulk write, and a refused drop, are retried before raising.
        self.retry_policy = RETRY_POLICY
        #: Rows that write_batch had to send more than once, over this backend's life.
        self.resent_rows = 0
        self._admin: AdminClient | None = None
        self._table_ready = False

    def _admin_client(self) -> AdminClient:
        if self._admin is None:
            self._admin = admin_client()
        return self._admin

    def _ensure_table(self) -> None:
        # Driver-side calls only (version, record, alias, lock), once per backend; an admin call only when
        # the table is missing, so runs against an existing table need no admin rights or quota.
        if not self._table_ready:
            if not self.meta.table_exists():
                ensure_table(self._admin_client(), self.where)
            self._table_ready = True

    # -- data ------------------------------------------------------------------------------------

    def create_version(self, version: str, expected_rows: int | None = None) -> None:
        version_prefix(version)  # a version is a key prefix: nothing to create but the table itself
        self._ensure_table()

    def write_batch(self, version: str, items: Sequence[Item]) -> None:
        if items:
            prefix = version_prefix(version)
            where = self.where
            self.resent_rows += write_rows(
                self.table, prefix, items, self.retry_policy, self.timeout_s, where.table_path
            )

    def read_batch(self, version: str, keys: Sequence[bytes]) -> list[bytes | None]:
        if not keys:
            return []
        prefix = version_prefix(version)
        try:
            with errors(f"reading {len(keys)} keys of {version}"):
                rows = self.table.read_rows(_batch_query(prefix, keys), operation_timeout=self.timeout_s)
        except TableMissing:
            return [None] * len(keys)
        return _in_order(prefix, keys, rows)

    def drop_version(self, version: str) -> None:
        request = {"name": self.where.table_path, "row_key_prefix": version_prefix(version)}
        admin = self._admin_client()
        refused: Exception | None = None
        try:
            with errors(f"dropping version {version}"):
                for _ in self.retry_policy.delays():
                    try:
                        # A large range takes the server a while; the call returns when the rows are gone.
                        admin.drop_row_range(request=request, timeout=max(self.timeout_s, 600.0))
                        return
                    except _DROP_AGAIN as exc:
                        refused = exc
                assert refused is not None
                raise refused
        except TableMissing:
            return  # no table, so no rows

    # -- version records, alias, lock: see adapters.bigtable.meta ---------------------------------

    def put_record(self, version: str, record: bytes) -> None:
        self._ensure_table()
        self.meta.put_record(version, record)

    def records(self) -> dict[str, bytes]:
        return self.meta.records()

    def delete_record(self, version: str) -> None:
        self.meta.delete_record(version)

    def get_alias(self) -> str | None:
        return self.meta.get_alias()

    def swap_alias(self, expected: str | None, new: str) -> bool:
        self._ensure_table()
        return self.meta.swap_alias(expected, new)

    def acquire_lock(self, owner: str, ttl_s: float) -> str | None:
        self._ensure_table()
        return self.meta.acquire_lock(owner, ttl_s)

    def release_lock(self, owner: str) -> None:
        self.meta.release_lock(owner)

    def close(self) -> None:
        # The data client is the process's, closed at exit; only this backend's own parts go here.
        table: Any = self.table  # Table.close() is untyped
        table.close()
        if self._admin is not None:
            close_admin(self._admin)
            self._admin = None


class BigtableReader(Reader):
    """Async reads for the API: one async data client per reader, created on the API's event loop."""

    max_read_batch = BigtableBackend.max_read_batch

    def __init__(self, url: StoreURL) -> None:
        super().__init__(url)
        self.where = Location.from_url(url)
        self.timeout_s = self.where.timeout(READER_TIMEOUT_S)
        self._client: BigtableDataClientAsync | None = None
        self._table: TableAsync | None = None

    def _handle(self) -> TableAsync:
        if self._table is None:
            client = self._client = async_data_client(self.where.project)
            self._table = client.get_table(self.where.instance, self.where.table, app_profile_id=self.where.app_profile)
        return self._table

    async def _read_row(self, row_key: bytes, what: str) -> Row | None:
        try:
            with errors(what):
                row: Row | None = await self._handle().read_row(row_key, operation_timeout=self.timeout_s)
        except TableMissing:
            return None
        return row

    async def get_alias(self) -> str | None:
        value = first_cell(await self._read_row(ALIAS_ROW, "reading the live alias"), META_FAMILY, ALIAS_COLUMN)
        return value.decode() if value is not None else None

    async def read_one(self, version: str, key: bytes) -> bytes | None:
        row = await self._read_row(version_prefix(version) + key, f"reading a key of {version}")
        return first_cell(row, DATA_FAMILY, VALUE_COLUMN)

    async def read_batch(self, version: str, keys: Sequence[bytes]) -> list[bytes | None]:
        if not keys:
            return []
        prefix = version_prefix(version)
        try:
            with errors(f"reading {len(keys)} keys of {version}"):
                query = _batch_query(prefix, keys)
                rows = await self._handle().read_rows(query, operation_timeout=self.timeout_s)
        except TableMissing:
            return [None] * len(keys)
        return _in_order(prefix, keys, rows)

    async def records(self) -> dict[str, bytes]:
        return await asyncio.to_thread(self._sync_records)

    def _sync_records(self) -> dict[str, bytes]:
        from precompute.adapters import open_backend

        backend = open_backend(self.url)
        try:
            return backend.records()
        finally:
            backend.close()

    async def aclose(self) -> None:
        table, client = self._table, self._client
        self._table = self._client = None
        if table is not None:
            await table.close()
        if client is not None:
            await client.close()
