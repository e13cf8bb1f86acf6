"""The API's read side of ``dynamodb://``: one GetItem per lookup, 100-key BatchGetItem requests in
parallel for a batch, the version records by Query, on the asyncio client of :mod:`.wire`.

Lookups are eventually consistent by default (half the read units of a strongly consistent read): a
version is published only after its load is complete, long past the second or so replication takes.
``consistent_reads=true`` in the URL makes them strongly consistent. The alias and the records are
always read strongly consistent: they are what a publish changes.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Sequence
from typing import Any

from precompute.adapters.dynamodb.client import connection
from precompute.adapters.dynamodb.errors import TableMissing
from precompute.adapters.dynamodb.layout import ALIAS_KEY, KEY_ATTR, RECORD_ATTR, RECORD_PK, VALUE_ATTR, Layout
from precompute.adapters.dynamodb.options import parse_settings
from precompute.adapters.dynamodb.writes import READ_REQUEST_KEYS
from precompute.store import Reader, StoreUnavailable, StoreURL


class DynamoDBReader(Reader):
    """Async lookups of ``dynamodb://`` for the API (see the module docstring)."""

    # read_batch sends ten 100-key BatchGetItem requests, all in flight together.
    max_read_batch = 1_000

    def __init__(self, url: StoreURL) -> None:
        super().__init__(url)
        # Imported here so that writer processes (Ray tasks) never load the HTTP stack they do not use.
        from precompute.adapters.dynamodb.wire import AsyncDynamoDB

        self.settings = parse_settings(url)
        self.layout = Layout(self.settings.prefix)
        self._api = AsyncDynamoDB(connection(self.settings), self.settings)

    async def get_alias(self) -> str | None:
        payload = {"TableName": self.layout.meta_table, "Key": ALIAS_KEY, "ConsistentRead": True}
        try:
            answer = await self._api.call("GetItem", payload)
        except TableMissing:
            return None  # not even the meta table exists: nothing was published here
        item = answer.get("Item")
        return str(item["version"]["S"]) if item else None

    async def records(self) -> dict[str, bytes]:
        found: dict[str, bytes] = {}
        payload: dict[str, Any] = {
            "TableName": self.layout.meta_table,
            "KeyConditionExpression": "pk = :p",
            "ExpressionAttributeValues": {":p": {"S": RECORD_PK}},
            "ConsistentRead": True,
        }
        while True:  # pages of the Query (1 MB each), not retries
            try:
                page = await self._api.call("Query", payload)
            except TableMissing:
                return found
            for item in page.get("Items", []):
                found[item["sk"]["S"]] = base64.b64decode(item[RECORD_ATTR]["B"])
            start = page.get("LastEvaluatedKey")
            if not start:
                return found
            payload = {**payload, "ExclusiveStartKey": start}

    async def read_one(self, version: str, key: bytes) -> bytes | None:
        payload: dict[str, Any] = {
            "TableName": self.layout.version_table(version),
            "Key": {KEY_ATTR: {"B": _b64(key)}},
            "ProjectionExpression": VALUE_ATTR,
        }
        if self.settings.consistent_reads:
            payload["ConsistentRead"] = True
        try:
            answer = await self._api.call("GetItem", payload)
        except TableMissing:
            return None  # a version that was never written or has been dropped
        item = answer.get("Item")
        return base64.b64decode(item[VALUE_ATTR]["B"]) if item else None

    async def read_batch(self, version: str, keys: Sequence[bytes]) -> list[bytes | None]:
        table = self.layout.version_table(version)
        # BatchGetItem refuses a request that names one key twice.
        unique = list(dict.fromkeys(keys))
        chunks = [unique[i : i + READ_REQUEST_KEYS] for i in range(0, len(unique), READ_REQUEST_KEYS)]
        found: dict[bytes, bytes] = {}
        for part in await asyncio.gather(*(self._get_chunk(table, chunk) for chunk in chunks)):
            found.update(part)
        return [found.get(key) for key in keys]

    async def _get_chunk(self, table: str, keys: list[bytes]) -> dict[bytes, bytes]:
        request: dict[str, Any] = {
            "Keys": [{KEY_ATTR: {"B": _b64(key)}} for key in keys],
            "ProjectionExpression": f"{KEY_ATTR}, {VALUE_ATTR}",
        }
        if self.settings.consistent_reads:
            request["ConsistentRead"] = True
        found: dict[bytes, bytes] = {}
        # Errors are retried inside each call; this loop resends the keys the server left unprocessed.
        async for _attempt in self._api.backoff.adelays():
            try:
                answer = await self._api.call("BatchGetItem", {"RequestItems": {table: request}})
            except TableMissing:
                return {}
            for item in answer.get("Responses", {}).get(table, []):
                found[base64.b64decode(item[KEY_ATTR]["B"])] = base64.b64decode(item[VALUE_ATTR]["B"])
            unprocessed = answer.get("UnprocessedKeys", {}).get(table)
            if not unprocessed or not unprocessed.get("Keys"):
                return found
            request = unprocessed
        raise StoreUnavailable(f"BatchGetItem from {table}: {len(request['Keys'])} keys still unprocessed")

    async def aclose(self) -> None:
        await self._api.close()


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")
