"""The meta table of a ``dynamodb://`` store: version records, the live alias and the run lock.

The meta table ``PREFIX.meta`` (string keys ``pk``/``sk``) holds three kinds of item:

* ``alias/live``: the live version, swapped with one conditional write, so a reader sees the old version
  or the new one and nothing in between;
* ``lock/run``: the run lock, taken with one conditional PutItem (absent, expired, or the same owner);
  expiry compares the clocks of the machines that take it;
* ``record/VERSION``: each version's record, listed with one Query;
* ``miss/S/KEY`` and ``misses/count``: the recorded misses, one item per key (``S``: one of 16 shards, so
  that flushes from many API processes spread over partitions) and how many there are. A known key is one
  ``UpdateItem ... ADD c :n`` (atomic, conditional on the item existing); a new key is one
  ``TransactWriteItems`` that creates it and adds 1 to the count on the condition that the count is below
  the cap, so the cap holds exactly whatever the concurrency. Clearing a key removes it and subtracts 1 in
  one transaction too. One call per key: a flush of many distinct keys is as many round trips.

It is created on the first write to it and is always on demand: every API process polls the alias, and
a provisioned meta table would be one more capacity number to get right for a few items.

Every call is retried (``Settings.call_backoff``) when it fails transiently. A conditional write whose
first attempt may have landed before its answer was lost is checked on refusal: a retried alias swap
that finds the alias already at the new version has succeeded; a retried lock take is its own owner's
renewal and passes its condition anyway.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from precompute.adapters.dynamodb.client import call
from precompute.adapters.dynamodb.errors import ConditionFailed, TableMissing, TransactionCanceled
from precompute.adapters.dynamodb.layout import (
    ALIAS_KEY,
    LOCK_KEY,
    META_SCHEMA,
    MISS_COUNT_ATTR,
    MISS_SHARDS,
    MISSES_COUNTER,
    MISSES_COUNTER_ATTR,
    RECORD_ATTR,
    RECORD_PK,
    Tables,
    miss_key,
    miss_shard,
    record_key,
)
from precompute.store import StoreError
from precompute.store.backend import Meta
from precompute.store.retry import Backoff


class MetaTable(Meta):
    """The alias, the run lock and the version records (see the module docstring)."""

    def __init__(self, client: Any, table: str, tables: Tables, backoff: Backoff) -> None:
        self.client = client
        self.table = table
        self.tables = tables
        self.backoff = backoff
        # A lock that changes hands between the refused PutItem and the GetItem that reads its holder.
        self._handovers = Backoff(base_s=0.01, cap_s=0.1, deadline_s=backoff.deadline_s, max_attempts=5)
        # A miss that other processes keep adding or transacting on while this one adds it.
        self._miss_turns = Backoff(base_s=0.01, cap_s=0.2, deadline_s=max(backoff.deadline_s, 10.0), max_attempts=50)

    # -- version records -------------------------------------------------------------------------

    def put_record(self, version: str, record: bytes) -> None:
        self._call("put_item", create=True, Item={**record_key(version), RECORD_ATTR: {"B": record}})

    def records(self) -> dict[str, bytes]:
        return {item["sk"]["S"]: bytes(item[RECORD_ATTR]["B"]) for item in self._partition(RECORD_PK)}

    def delete_record(self, version: str) -> None:
        self._call("delete_item", create=False, Key=record_key(version))

    # -- live alias ------------------------------------------------------------------------------

    def get_alias(self) -> str | None:
        found = self._call("get_item", create=False, Key=ALIAS_KEY, ConsistentRead=True)
        item = (found or {}).get("Item")
        return str(item["version"]["S"]) if item else None

    def swap_alias(self, expected: str | None, new: str) -> bool:
        retried: list[BaseException] = []
        try:
            if expected is None:
                self._call(
                    "put_item",
                    create=True,
                    retried=retried,
                    Item={**ALIAS_KEY, "version": {"S": new}},
                    ConditionExpression="attribute_not_exists(pk)",
                )
            else:
                self._call(
                    "update_item",
                    create=True,
                    retried=retried,
                    Key=ALIAS_KEY,
                    UpdateExpression="SET #v = :new",
                    ConditionExpression="#v = :expected",
                    ExpressionAttributeNames={"#v": "version"},
                    ExpressionAttributeValues={":new": {"S": new}, ":expected": {"S": expected}},
                )
        except ConditionFailed:
            # Version ids are unique per run, so an alias already at ``new`` after a retry is our own write.
            return bool(retried) and self.get_alias() == new
        return True

    # -- run lock --------------------------------------------------------------------------------

    def acquire_lock(self, owner: str, ttl_s: float) -> str | None:
        for _attempt in self._handovers.delays():
            now = time.time()
            try:
                self._call(
                    "put_item",
                    create=True,
                    Item={**LOCK_KEY, "owner": {"S": owner}, "expires": {"N": f"{now + ttl_s:.6f}"}},
                    ConditionExpression="attribute_not_exists(pk) OR #e < :now OR #o = :owner",
                    ExpressionAttributeNames={"#e": "expires", "#o": "owner"},
                    ExpressionAttributeValues={":now": {"N": f"{now:.6f}"}, ":owner": {"S": owner}},
                    ReturnValuesOnConditionCheckFailure="ALL_OLD",
                )
                return None
            except ConditionFailed as failed:
                holder = failed.item
                if holder is None:  # a server that does not send the refusing item back
                    holder = (self._call("get_item", create=False, Key=LOCK_KEY, ConsistentRead=True) or {}).get("Item")
                if holder:
                    return str(holder["owner"]["S"])
                # Released between the two calls: try again.
        raise StoreError("could not take or read the run lock: it changed hands five times in a row")

    def release_lock(self, owner: str) -> None:
        with contextlib.suppress(ConditionFailed):  # somebody else's lock, or none: nothing to release
            self._call(
                "delete_item",
                create=False,
                Key=LOCK_KEY,
                ConditionExpression="#o = :owner",
                ExpressionAttributeNames={"#o": "owner"},
                ExpressionAttributeValues={":owner": {"S": owner}},
            )

    # -- misses ------------------------------------------------------------------------------------

    def increment_misses(self, counts: Mapping[bytes, int], cap: int) -> int:
        refused = 0
        for key in sorted(counts, key=lambda key: (-counts[key], key)):  # the most counted new keys first
            if not self._add_miss(key, counts[key], cap):
                refused += 1
        return refused

    def _add_miss(self, key: bytes, count: int, cap: int) -> bool:
        """False when the cap refused the key."""
        add: dict[str, Any] = {
            "UpdateExpression": "ADD #c :n",
            "ExpressionAttributeNames": {"#c": MISS_COUNT_ATTR},
            "ExpressionAttributeValues": {":n": {"N": str(count)}},
        }
        for _attempt in self._miss_turns.delays():
            try:  # a known key: one atomic increment
                known = {"Key": miss_key(key), "ConditionExpression": "attribute_exists(pk)", **add}
                self._call("update_item", create=True, **known)
                return True
            except ConditionFailed:
                if cap <= 0:
                    return False
            actions = [
                {
                    "Update": {
                        "TableName": self.table,
                        "Key": MISSES_COUNTER,
                        "UpdateExpression": "ADD #n :one",
                        "ConditionExpression": "attribute_not_exists(#n) OR #n < :cap",
                        "ExpressionAttributeNames": {"#n": MISSES_COUNTER_ATTR},
                        "ExpressionAttributeValues": {":one": {"N": "1"}, ":cap": {"N": str(cap)}},
                    }
                },
                {
                    "Update": {
                        "TableName": self.table,
                        "Key": miss_key(key),
                        "ConditionExpression": "attribute_not_exists(pk)",
                        **add,
                    }
                },
            ]
            try:
                self._transact(actions, f"recording a miss in {self.table}")
                return True
            except TransactionCanceled as cancelled:
                counter, item = [*cancelled.reasons, "None", "None"][:2]
                if item == "ConditionalCheckFailed":
                    continue  # another process added the key meanwhile: increment it
                if counter == "ConditionalCheckFailed":
                    return False
                # TransactionConflict: a concurrent transaction on the same items; try again
        raise StoreError(f"could not record the miss {key[:100]!r} in {self.table}: it kept changing")

    def read_misses(self) -> dict[bytes, int]:
        return {
            item["sk"]["S"].encode("utf-8"): int(item[MISS_COUNT_ATTR]["N"])
            for shard in range(MISS_SHARDS)
            for item in self._partition(miss_shard(shard))
        }

    def delete_misses(self, keys: Sequence[bytes]) -> None:
        for key in keys:
            actions = [
                {
                    "Delete": {
                        "TableName": self.table,
                        "Key": miss_key(key),
                        "ConditionExpression": "attribute_exists(pk)",
                    }
                },
                {
                    "Update": {
                        "TableName": self.table,
                        "Key": MISSES_COUNTER,
                        "UpdateExpression": "ADD #n :minus",
                        "ExpressionAttributeNames": {"#n": MISSES_COUNTER_ATTR},
                        "ExpressionAttributeValues": {":minus": {"N": "-1"}},
                    }
                },
            ]
            try:
                self._transact(actions, f"clearing a miss in {self.table}")
            except TransactionCanceled as cancelled:
                if "ConditionalCheckFailed" not in cancelled.reasons:
                    raise
            except TableMissing:
                return

    def _transact(self, actions: list[dict[str, Any]], what: str) -> None:
        """One TransactWriteItems, retried with the same request token: a retry after a lost answer is not
        applied twice (DynamoDB remembers a token for ten minutes)."""
        token = uuid.uuid4().hex
        call(
            self.backoff,
            what,
            lambda: self.client.transact_write_items(TransactItems=actions, ClientRequestToken=token),
        )

    # -- plumbing --------------------------------------------------------------------------------

    def _partition(self, pk: str) -> Iterator[dict[str, Any]]:
        """Every item of one partition of the meta table, a consistent Query page (1 MB) at a time; none when
        the table does not exist (nothing was ever written here)."""
        start: dict[str, Any] | None = None
        while True:  # pages, not retries
            query: dict[str, Any] = {
                "KeyConditionExpression": "pk = :p",
                "ExpressionAttributeValues": {":p": {"S": pk}},
                "ConsistentRead": True,
            }
            if start:
                query["ExclusiveStartKey"] = start
            page = self._call("query", create=False, **query)
            if page is None:
                return
            yield from page.get("Items", [])
            start = page.get("LastEvaluatedKey")
            if not start:
                return

    def _call(
        self, method: str, create: bool, retried: list[BaseException] | None = None, **kwargs: Any
    ) -> dict[str, Any] | None:
        """``client.<method>`` on the meta table, retried and translated. A missing table is created first
        when ``create``; otherwise the call answers ``None`` (nothing was ever published here). Each
        transient failure that was retried is appended to ``retried``."""
        send: Callable[..., dict[str, Any]] = getattr(self.client, method)
        what = f"{method} on {self.table}"
        try:
            return call(self.backoff, what, lambda: send(TableName=self.table, **kwargs), retried)
        except TableMissing:
            if not create:
                return None
        self.tables.create(self.table, META_SCHEMA, provisioned=False)
        return call(self.backoff, what, lambda: send(TableName=self.table, **kwargs), retried)
