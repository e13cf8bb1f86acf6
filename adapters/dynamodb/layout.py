"""Where things live in a ``dynamodb://PREFIX`` store: its tables, their keys and attribute names.

One table per version, ``PREFIX.v.VERSION`` (partition key ``k``, binary; value ``v``, binary), plus one
small table ``PREFIX.meta`` (``pk``/``sk`` strings) that holds the live alias (``alias/live``), the run
lock (``lock/run``), one record per version (``record/VERSION``) and the recorded misses (``miss/S/KEY``,
``S`` one of 16 shards, and their number in ``misses/count``); :mod:`.meta` reads and writes it.

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
* The costs: CreateTable takes seconds on AWS (:meth:`Tables.create` waits for ACTIVE; once per run), and
  an account holds 2 500 tables per region by default, so ``precompute gc`` must keep running.

The prefix holds no dots (:mod:`.options` checks it) and version ids follow
:func:`precompute.store.codec.check_version` (letters, digits, ``-`` and ``_``): ``.`` only ever separates
the prefix from ``meta`` and ``v.VERSION``, so every table name parses one way and two prefixes never
share a table.
"""

from __future__ import annotations

import contextlib
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from precompute.adapters.dynamodb.client import call
from precompute.adapters.dynamodb.errors import TableInUse, TableMissing
from precompute.adapters.dynamodb.options import Settings
from precompute.store import StoreError
from precompute.store.codec import check_version
from precompute.store.retry import Backoff

#: Largest item DynamoDB stores: attribute names and values together, 400 KiB.
MAX_ITEM_BYTES = 400 * 1024
#: Largest partition-key value.
MAX_KEY_BYTES = 2048
#: The attributes of a version table's items: the encoded key and the encoded value, both binary.
KEY_ATTR = "k"
VALUE_ATTR = "v"
#: (name, key type, attribute type) of each table's key.
VERSION_SCHEMA = [(KEY_ATTR, "HASH", "B")]
META_SCHEMA = [("pk", "HASH", "S"), ("sk", "RANGE", "S")]
#: The meta table's items (see :mod:`.meta`).
ALIAS_KEY: dict[str, Any] = {"pk": {"S": "alias"}, "sk": {"S": "live"}}
LOCK_KEY: dict[str, Any] = {"pk": {"S": "lock"}, "sk": {"S": "run"}}
RECORD_PK = "record"
RECORD_ATTR = "record"
#: The misses: one item per key, spread over this many partition keys (one partition takes ~1,000 writes/s).
MISS_SHARDS = 16
MISS_COUNT_ATTR = "c"
#: The number of recorded misses, kept with every key added or removed (in the same transaction).
MISSES_COUNTER: dict[str, Any] = {"pk": {"S": "misses"}, "sk": {"S": "count"}}
MISSES_COUNTER_ATTR = "n"


def record_key(version: str) -> dict[str, Any]:
    return {"pk": {"S": RECORD_PK}, "sk": {"S": check_version(version)}}


def miss_shard(shard: int) -> str:
    return f"miss/{shard:x}"


def miss_key(key: bytes) -> dict[str, Any]:
    """The item of one miss: a store key is UTF-8 text of at most 1,024 bytes, as a sort key must be."""
    return {"pk": {"S": miss_shard(zlib.crc32(key) % MISS_SHARDS)}, "sk": {"S": key.decode("utf-8")}}


def item_size(key: bytes, value: bytes) -> int:
    """DynamoDB's size of one stored item: attribute names plus values."""
    return len(KEY_ATTR) + len(key) + len(VALUE_ATTR) + len(value)


@dataclass(frozen=True)
class Layout:
    """The table names of one store."""

    prefix: str

    @property
    def meta_table(self) -> str:
        return f"{self.prefix}.meta"

    def version_table(self, version: str) -> str:
        """The table of ``version``, ``<prefix>.v.<version>`` (``VersionError`` for an invalid id)."""
        return f"{self.prefix}.v.{check_version(version)}"


class Tables:
    """CreateTable / DeleteTable, waiting for the table to settle (both are asynchronous on AWS)."""

    def __init__(self, client: Any, settings: Settings) -> None:
        self.client = client
        self.settings = settings
        self._known: set[str] = set()
        # Polling a table that is being created or deleted: boto3's waiters poll every 20 s, while a fresh
        # on-demand table is usually ACTIVE within a few. CreateTable gets at least 5 minutes.
        self._settle = Backoff(base_s=0.05, cap_s=2.0, deadline_s=settings.deadline_s, max_attempts=1_000_000)
        self._create = Backoff(
            base_s=0.05, cap_s=2.0, deadline_s=max(settings.deadline_s, 300.0), max_attempts=1_000_000
        )

    def create(self, table: str, keys: list[tuple[str, str, str]], provisioned: bool) -> None:
        """Create ``table`` (name, key type, attribute type per key) unless it exists; wait until ACTIVE."""
        if table in self._known:
            return
        billing: dict[str, Any] = {"BillingMode": "PAY_PER_REQUEST"}
        if provisioned:
            billing = {
                "BillingMode": "PROVISIONED",
                "ProvisionedThroughput": {
                    "ReadCapacityUnits": self.settings.read_capacity,
                    "WriteCapacityUnits": self.settings.write_capacity,
                },
            }
        with contextlib.suppress(TableInUse):  # it exists already: idempotent
            self._call(
                f"CreateTable {table}",
                self.client.create_table,
                TableName=table,
                KeySchema=[{"AttributeName": name, "KeyType": kind} for name, kind, _ in keys],
                AttributeDefinitions=[{"AttributeName": name, "AttributeType": type_} for name, _, type_ in keys],
                **billing,
            )
        status = None
        for _attempt in self._create.delays():
            status = self.status(table)
            if status == "ACTIVE":
                self._known.add(table)
                return
        raise StoreError(f"DynamoDB table {table} is still {status}; it did not become ACTIVE")

    def drop(self, table: str) -> None:
        """Delete ``table`` and wait until it is gone (or, past the deadline, until AWS has accepted it)."""
        self._known.discard(table)
        requested = False
        status = None
        for _attempt in self._settle.delays():
            status = self.status(table)
            if status is None:
                return
            if status != "DELETING" and not requested:
                try:
                    self._call(f"DeleteTable {table}", self.client.delete_table, TableName=table)
                    requested = True
                except TableMissing:
                    return
                except TableInUse:
                    pass  # still being created or updated: wait, then delete
        if requested:  # an accepted DeleteTable finishes by itself
            return
        raise StoreError(f"DeleteTable {table}: the table stayed {status} for {self.settings.deadline_s} s")

    def status(self, table: str) -> str | None:
        """The table's status (ACTIVE, CREATING, ...), or ``None`` when it does not exist."""
        try:
            answer = self._call(f"DescribeTable {table}", self.client.describe_table, TableName=table)
        except TableMissing:
            return None
        status: str = answer["Table"]["TableStatus"]
        return status

    def _call(self, what: str, method: Callable[..., dict[str, Any]], **kwargs: Any) -> dict[str, Any]:
        return call(self.settings.call_backoff, what, lambda: method(**kwargs))
