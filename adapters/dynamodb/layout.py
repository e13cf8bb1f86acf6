"""Tables of a ``dynamodb://`` store: creating and dropping them, and the small meta table.

The meta table ``PREFIX.meta`` (string keys ``pk``/``sk``) holds three kinds of item:

* ``alias/live``: the live version, swapped with one conditional write, so a reader sees the old version
  or the new one and nothing in between;
* ``lock/run``: the run lock, taken with one conditional PutItem (absent, expired, or the same owner);
  expiry compares the clocks of the machines that take it;
* ``record/VERSION``: each version's record, listed with one Query.

It is created on the first write to it and is always on demand: every API process polls the alias, and
a provisioned meta table would be one more capacity number to get right for a few items.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from typing import Any

import botocore.exceptions

from precompute.adapters.dynamodb.options import Settings, error_code, translate
from precompute.store import StoreError

_BOTO_ERRORS = (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError)
ALIAS_KEY = {"pk": {"S": "alias"}, "sk": {"S": "live"}}
LOCK_KEY = {"pk": {"S": "lock"}, "sk": {"S": "run"}}
META_SCHEMA = [("pk", "HASH", "S"), ("sk", "RANGE", "S")]


def record_key(version: str) -> dict[str, Any]:
    return {"pk": {"S": "record"}, "sk": {"S": version}}


class Tables:
    """CreateTable / DeleteTable, waiting for the table to settle (both are asynchronous on AWS)."""

    def __init__(self, client: Any, settings: Settings) -> None:
        self.client = client
        self.settings = settings
        self._known: set[str] = set()

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
        try:
            self.client.create_table(
                TableName=table,
                KeySchema=[{"AttributeName": name, "KeyType": kind} for name, kind, _ in keys],
                AttributeDefinitions=[{"AttributeName": name, "AttributeType": type_} for name, _, type_ in keys],
                **billing,
            )
        except _BOTO_ERRORS as exc:
            if error_code(exc) != "ResourceInUseException":  # it exists already: idempotent
                raise translate(exc, f"CreateTable {table}") from exc
        # boto3's table_exists waiter polls every 20 s; a fresh on-demand table is usually ACTIVE in a few.
        deadline = time.monotonic() + max(self.settings.deadline_s, 300.0)
        delay = 0.05
        while (status := self.status(table)) != "ACTIVE":
            if time.monotonic() >= deadline:
                raise StoreError(f"DynamoDB table {table} is still {status}; it did not become ACTIVE")
            time.sleep(delay)
            delay = min(delay * 2, 2.0)
        self._known.add(table)

    def drop(self, table: str) -> None:
        """Delete ``table`` and wait until it is gone (or, past the deadline, until AWS has accepted it)."""
        self._known.discard(table)
        deadline = time.monotonic() + self.settings.deadline_s
        delay = 0.05
        requested = False
        while (status := self.status(table)) is not None:
            if status != "DELETING" and not requested:
                try:
                    self.client.delete_table(TableName=table)
                    requested = True
                except _BOTO_ERRORS as exc:
                    code = error_code(exc)
                    if code == "ResourceNotFoundException":
                        return
                    if code != "ResourceInUseException":  # still being created or updated: wait, then delete
                        raise translate(exc, f"DeleteTable {table}") from exc
            if time.monotonic() >= deadline:
                if requested:  # an accepted DeleteTable finishes by itself
                    return
                raise StoreError(f"DeleteTable {table}: the table stayed {status} for {self.settings.deadline_s} s")
            time.sleep(delay)
            delay = min(delay * 2, 2.0)

    def status(self, table: str) -> str | None:
        """The table's status (ACTIVE, CREATING, ...), or ``None`` when it does not exist."""
        try:
            status: str = self.client.describe_table(TableName=table)["Table"]["TableStatus"]
        except _BOTO_ERRORS as exc:
            if error_code(exc) == "ResourceNotFoundException":
                return None
            raise translate(exc, f"DescribeTable {table}") from exc
        return status


class ConditionFailed(Exception):
    """A conditional write was refused; ``item`` is the item that refused it, when the server sent it."""

    def __init__(self, item: dict[str, Any] | None) -> None:
        super().__init__("condition failed")
        self.item = item


class MetaTable:
    """The alias, the run lock and the version records (see the module docstring)."""

    def __init__(self, client: Any, settings: Settings, tables: Tables) -> None:
        self.client = client
        self.table = settings.meta_table
        self.tables = tables

    # -- version records -------------------------------------------------------------------------

    def put_record(self, version: str, record: bytes) -> None:
        self._call("put_item", create=True, Item={**record_key(version), "record": {"B": record}})

    def records(self) -> dict[str, bytes]:
        found: dict[str, bytes] = {}
        start: dict[str, Any] | None = None
        while True:
            page = self._call(
                "query",
                create=False,
                KeyConditionExpression="pk = :p",
                ExpressionAttributeValues={":p": {"S": "record"}},
                ConsistentRead=True,
                **({"ExclusiveStartKey": start} if start else {}),
            )
            if page is None:
                return found
            for item in page.get("Items", []):
                found[item["sk"]["S"]] = bytes(item["record"]["B"])
            start = page.get("LastEvaluatedKey")
            if not start:
                return found

    def delete_record(self, version: str) -> None:
        self._call("delete_item", create=False, Key=record_key(version))

    # -- live alias ------------------------------------------------------------------------------

    def get_alias(self) -> str | None:
        found = self._call("get_item", create=False, Key=ALIAS_KEY, ConsistentRead=True)
        item = (found or {}).get("Item")
        return str(item["version"]["S"]) if item else None

    def swap_alias(self, expected: str | None, new: str) -> bool:
        try:
            if expected is None:
                self._call(
                    "put_item",
                    create=True,
                    Item={**ALIAS_KEY, "version": {"S": new}},
                    ConditionExpression="attribute_not_exists(pk)",
                )
            else:
                self._call(
                    "update_item",
                    create=True,
                    Key=ALIAS_KEY,
                    UpdateExpression="SET #v = :new",
                    ConditionExpression="#v = :expected",
                    ExpressionAttributeNames={"#v": "version"},
                    ExpressionAttributeValues={":new": {"S": new}, ":expected": {"S": expected}},
                )
        except ConditionFailed:
            return False
        return True

    # -- run lock --------------------------------------------------------------------------------

    def acquire_lock(self, owner: str, ttl_s: float) -> str | None:
        for _ in range(5):
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

    # -- plumbing --------------------------------------------------------------------------------

    def _call(self, method: str, create: bool, **kwargs: Any) -> dict[str, Any] | None:
        """``client.<method>`` on the meta table. A missing table is created first when ``create``; otherwise
        the call answers ``None`` (nothing was ever published here)."""
        call: Callable[..., dict[str, Any]] = getattr(self.client, method)
        for attempt in (1, 2):
            try:
                return call(TableName=self.table, **kwargs)
            except _BOTO_ERRORS as exc:
                code = error_code(exc)
                if code == "ConditionalCheckFailedException":
                    raise ConditionFailed(getattr(exc, "response", {}).get("Item")) from None
                if code == "ResourceNotFoundException":
                    if not create:
                        return None
                    if attempt == 1:
                        self.tables.create(self.table, META_SCHEMA, provisioned=False)
                        continue
                raise translate(exc, f"{method} on {self.table}") from exc
        raise AssertionError("unreachable")
