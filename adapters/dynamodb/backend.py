"""AWS DynamoDB backend: ``dynamodb://TABLE_PREFIX?region=eu-west-1`` (options in :mod:`adapters.dynamodb.options`).

Layout: one table per version, ``PREFIX.v.VERSION`` (partition key ``k``, binary; value ``v``, binary),
plus one small table ``PREFIX.meta`` (``pk``/``sk`` strings) that holds the live alias
(``alias/live``), the run lock (``lock/run``) and one record per version (``record/VERSION``).

Why a table per version rather than one table with version-prefixed keys (``bench/dynamodb_load.py
--layout``: DynamoDB Local on a 2-core VM, 20 000 items per version, medians of 3 runs):

==============================  ===================  ========================
layout                          table per version    one table, prefixed keys
==============================  ===================  ========================
load, items/s                   5 976                6 996
GetItem p50                     1.10 ms              1.35 ms
drop one version                0.07 s, 3 requests   5.26 s, 803 requests
write units billed by the drop  0                    20 000
==============================  ===================  ========================

* Loads and lookups are the same within the noise of a shared machine; dropping is not. In a shared
  table one version's items can only be found by scanning every version (a hash key cannot be
  range-queried), then deleted 25 per request, each billed as a write. A version table goes with one
  DeleteTable, whatever its size.
* A load writes a table nobody reads yet, so it cannot eat the live table's capacity, and a provisioned
  version table gets its own units (``billing=provisioned``).
* The costs: CreateTable takes seconds on AWS (``create_version`` waits for ACTIVE; once per run), and
  an account holds 2 500 tables per region by default, so ``precompute gc`` must keep running.

The live alias, the run lock and the version records live in the meta table
(:mod:`adapters.dynamodb.layout`); bulk writes and reads and their retries in
:mod:`adapters.dynamodb.writes`.

Reads: the batch side (``Backend.read``, verification and the CLI) uses boto3 with strongly consistent
BatchGetItem; the API's :class:`DynamoDBReader` uses the lean aiohttp client of
:mod:`adapters.dynamodb.wire`, chosen on figures (p50 0.47 against 0.92 ms, 0.31 against 0.80 ms of CPU
per lookup, 2.1x the lookups/s of boto3). ``count`` is ``None``: DynamoDB's ItemCount is refreshed
every ~6 hours and a Scan would read the whole table.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from precompute.adapters.dynamodb.layout import MetaTable, Tables
from precompute.adapters.dynamodb.options import KEY_ATTR, MAX_ITEM_BYTES, Settings, connection, parse_settings
from precompute.adapters.dynamodb.reader import DynamoDBReader
from precompute.adapters.dynamodb.writes import BatchIO, item_size
from precompute.store import Backend, Item, StoreURL
from precompute.store.codec import MAX_KEY_BYTES as CODEC_MAX_KEY_BYTES

__all__ = ["DynamoDBBackend", "DynamoDBReader"]


class DynamoDBBackend(Backend):
    # Ray write tasks hand over big chunks; each becomes 25-item requests on the write threads.
    max_write_batch = 5_000
    # Ten 100-key BatchGetItem requests in parallel.
    max_read_batch = 1_000
    # Any value up to this fits whatever its key: 400 KiB less the longest key and the attribute names.
    max_value_bytes = MAX_ITEM_BYTES - item_size(b"", b"") - CODEC_MAX_KEY_BYTES

    def __init__(self, url: StoreURL) -> None:
        super().__init__(url)
        self.settings: Settings = parse_settings(url)
        self.client: Any = connection(self.settings).client
        self._batch = BatchIO(self.client, self.settings)
        self._tables = Tables(self.client, self.settings)
        self._meta = MetaTable(self.client, self.settings, self._tables)

    # -- data ------------------------------------------------------------------------------------

    def create_version(self, version: str, expected_rows: int | None = None) -> None:
        table = self.settings.version_table(version)
        self._tables.create(table, [(KEY_ATTR, "HASH", "B")], provisioned=self.settings.provisioned)

    def write(self, version: str, items: Sequence[Item]) -> None:
        # One fan-out for the whole call: cutting it into max_write_batch pieces first would wait for each
        # piece's slowest request (retries included) before starting the next.
        self.check_sizes(items, " (an item is 400 KiB at most, key included)")
        self._batch.write(self.settings.version_table(version), items)

    def write_batch(self, version: str, items: Sequence[Item]) -> None:
        self._batch.write(self.settings.version_table(version), items)

    def read(self, version: str, keys: Sequence[bytes]) -> list[bytes | None]:
        return self.read_batch(version, keys)  # one fan-out, as for write

    def read_batch(self, version: str, keys: Sequence[bytes]) -> list[bytes | None]:
        return self._batch.read(self.settings.version_table(version), keys, consistent=True)

    def drop_version(self, version: str) -> None:
        self._tables.drop(self.settings.version_table(version))

    # -- version records, alias, lock: the meta table --------------------------------------------

    def put_record(self, version: str, record: bytes) -> None:
        self._meta.put_record(version, record)

    def records(self) -> dict[str, bytes]:
        return self._meta.records()

    def delete_record(self, version: str) -> None:
        self._meta.delete_record(version)

    def get_alias(self) -> str | None:
        return self._meta.get_alias()

    def swap_alias(self, expected: str | None, new: str) -> bool:
        return self._meta.swap_alias(expected, new)

    def acquire_lock(self, owner: str, ttl_s: float) -> str | None:
        return self._meta.acquire_lock(owner, ttl_s)

    def release_lock(self, owner: str) -> None:
        self._meta.release_lock(owner)

    def close(self) -> None:
        # The client is shared by every backend of this process; only the write threads are ours.
        self._batch.close()
