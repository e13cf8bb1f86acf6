"""Google Cloud Bigtable backend: ``bigtable://PROJECT/INSTANCE/TABLE[?app_profile=ID&timeout=SECONDS...]``.

For request spaces that do not fit in memory: hundreds of millions of keys, millisecond reads at any
scale. Credentials come the standard Google way (application default credentials), never from the URL;
``BIGTABLE_EMULATOR_HOST=host:port`` (or the URL option ``emulator=host:port``) points every client at
the emulator instead. The options are in :mod:`.options`.

The package, one role a module: :mod:`.options` (the URL), :mod:`.layout` (row keys and cells: one table,
a row-key prefix per version, and why), :mod:`.client` (the SDK clients), :mod:`.errors` (SDK errors to
store errors), :mod:`.writes` (bulk writes), :mod:`.meta` (records, alias, lock), this module (the
synchronous :class:`~precompute.store.backend.Backend`) and :mod:`.reader` (the API's async reads).

Writes: ``bulk_mutate_rows`` with every per-row status checked, failed rows retried with backoff and
then raised (:mod:`.writes`). Ray write tasks each hold their own process-wide client (:mod:`.client`),
so tasks write in parallel.

Measured against the emulator on this shared 2-core machine (``bench/bigtable_load.py``, three runs of
3 medians each; other work kept the load average at 4-12, so wall-clock rates moved by half between runs
and CPU time per row is the steadier figure): a writer costs 24-28k rows per CPU-second, 0.93-1.00x the
bare client sending the same rows unchecked, so checking every row's status costs at most a few percent.
Half of that CPU is the client building entries and converting them to protobuf: a writer is CPU-bound,
so parallelism comes from more Ray write tasks, not from concurrent calls inside one. The emulator is one
Go process; these figures orient, they do not predict a cluster.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from google.api_core import exceptions as core_exceptions
from google.cloud import bigtable_admin_v2

from precompute.adapters.bigtable.client import AdminClient, admin_client, close_admin, shared_data_client
from precompute.adapters.bigtable.errors import SDK_ERRORS, TableMissing, translate, translated
from precompute.adapters.bigtable.layout import FAMILIES, GC_RULE, batch_query, values_in_order, version_prefix
from precompute.adapters.bigtable.meta import MetaRows
from precompute.adapters.bigtable.options import BACKEND_TIMEOUT_S, Settings
from precompute.adapters.bigtable.writes import write_rows
from precompute.store import Backend, Item, StoreConfigError, StoreURL
from precompute.store.retry import Backoff

#: Time budget of an admin call (creating the table, reading its schema).
ADMIN_TIMEOUT_S = 60.0

#: Refusals of DropRowRange worth waiting out (one runs per table at a time; a second is refused).
_DROP_AGAIN = (
    core_exceptions.FailedPrecondition,
    core_exceptions.ServiceUnavailable,
    core_exceptions.DeadlineExceeded,
    core_exceptions.Aborted,
    core_exceptions.TooManyRequests,
)


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

    meta: MetaRows

    def __init__(self, url: StoreURL) -> None:
        super().__init__(url)
        self.settings = Settings.from_url(url)
        where = self.settings
        #: The data API's table handle (on the process-wide client); tests wrap it to inject faults.
        self.table = shared_data_client(where).get_table(where.instance, where.table, app_profile_id=where.app_profile)
        self.timeout_s = where.timeout(BACKEND_TIMEOUT_S)
        self.meta = MetaRows(self.table, self.timeout_s, where.table_path)
        #: How long failed rows of a bulk write, and a refused drop, are retried before raising.
        self.retry_policy = Backoff(base_s=0.1, cap_s=5.0, deadline_s=where.deadline_s, max_attempts=12)
        #: Rows that write_batch had to send more than once, over this backend's life.
        self.resent_rows = 0
        self._admin: AdminClient | None = None
        self._table_ready = False

    def _admin_client(self) -> AdminClient:
        if self._admin is None:
            self._admin = admin_client(self.settings)
        return self._admin

    def _ensure_table(self) -> None:
        # Driver-side calls only (version, record, alias, lock), once per backend; an admin call only when
        # the table is missing, so runs against an existing table need no admin rights or quota.
        if not self._table_ready:
            if not self.meta.table_exists():
                self.create_table()
            self._table_ready = True

    def create_table(self) -> None:
        """Create the table with both families (GC: keep one cell version); if it appeared meanwhile, add
        the families it lacks. Admin calls are quota'd per project per day: this runs only when the table
        is missing."""
        where, admin = self.settings, self._admin_client()
        families = {name: {"gc_rule": GC_RULE} for name in FAMILIES}
        timeout = where.timeout(ADMIN_TIMEOUT_S)
        try:
            spec = {"column_families": families}
            admin.create_table(
                request={"parent": where.instance_path, "table_id": where.table, "table": spec}, timeout=timeout
            )
            return
        except core_exceptions.AlreadyExists:
            pass  # made meanwhile (another run, an operator): check its families below
        except core_exceptions.PermissionDenied as exc:
            columns = ",".join(f"{name}:maxversions=1" for name in FAMILIES)
            raise StoreConfigError(
                f"no permission to create {where.table_path} ({exc.message}); create it once with "
                f"`cbt -project {where.project} -instance {where.instance} createtable {where.table} "
                f"families={columns}` or grant bigtable.tables.create"
            ) from exc
        except core_exceptions.NotFound as exc:  # the instance itself is not there
            raise StoreConfigError(
                f"Bigtable: creating {where.table_path} failed: {exc.message}. Fix: check PROJECT and INSTANCE in "
                f"the URL (`cbt -project {where.project} listinstances` lists the instances)"
            ) from exc
        except SDK_ERRORS as exc:
            raise translate(exc, f"creating {where.table_path}") from exc
        with translated(f"reading the schema of {where.table_path}"):
            table = admin.get_table(
                request={"name": where.table_path, "view": bigtable_admin_v2.Table.View.SCHEMA_VIEW}, timeout=timeout
            )
            missing = [name for name in families if name not in table.column_families]
            if missing:
                modifications = [{"id": name, "create": families[name]} for name in missing]
                admin.modify_column_families(
                    request={"name": where.table_path, "modifications": modifications}, timeout=timeout
                )

    # -- data ------------------------------------------------------------------------------------

    def create_version(self, version: str, expected_rows: int | None = None) -> None:
        version_prefix(version)  # a version is a key prefix: nothing to create but the table itself
        self._ensure_table()

    def write_batch(self, version: str, items: Sequence[Item]) -> None:
        if items:
            prefix = version_prefix(version)
            where = self.settings.table_path
            self.resent_rows += write_rows(self.table, prefix, items, self.retry_policy, self.timeout_s, where)

    def read_batch(self, version: str, keys: Sequence[bytes]) -> list[bytes | None]:
        if not keys:
            return []
        prefix = version_prefix(version)
        try:
            with translated(f"reading {len(keys)} keys of {version} in {self.settings.table_path}"):
                rows = self.table.read_rows(batch_query(prefix, keys), operation_timeout=self.timeout_s)
        except TableMissing:
            return [None] * len(keys)
        return values_in_order(prefix, keys, rows)

    def drop_version(self, version: str) -> None:
        request = {"name": self.settings.table_path, "row_key_prefix": version_prefix(version)}
        try:
            with translated(f"dropping version {version} of {self.settings.table_path}"):
                admin = self._admin_client()
                # A large range takes the server a while; the call returns when the rows are gone.
                self.retry_policy.call(
                    lambda: admin.drop_row_range(request=request, timeout=max(self.timeout_s, 600.0)),
                    retry_on=lambda exc: isinstance(exc, _DROP_AGAIN),
                )
        except TableMissing:
            return  # no table, so no rows

    # -- records, alias, lock: .meta (Backend delegates), the table made on the first driver-side write --

    def put_record(self, version: str, record: bytes) -> None:
        self._ensure_table()
        self.meta.put_record(version, record)

    def swap_alias(self, expected: str | None, new: str) -> bool:
        self._ensure_table()
        return self.meta.swap_alias(expected, new)

    def acquire_lock(self, owner: str, ttl_s: float) -> str | None:
        self._ensure_table()
        return self.meta.acquire_lock(owner, ttl_s)

    def increment_misses(self, counts: Mapping[bytes, int], cap: int) -> int:
        self._ensure_table()
        return self.meta.increment_misses(counts, cap)

    def close(self) -> None:
        # The data client is the process's, closed at exit; only this backend's own parts go here.
        table: Any = self.table  # Table.close() is untyped
        table.close()
        if self._admin is not None:
            close_admin(self._admin)
            self._admin = None
