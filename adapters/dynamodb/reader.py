"""The API's read side of ``dynamodb://``: one GetItem per lookup, 100-key BatchGetItem requests in
parallel for a batch, on the asyncio client of :mod:`adapters.dynamodb.wire`.

Lookups are eventually consistent by default (half the read units of a strongly consistent read): a
version is published only after its load is complete, long past the second or so replication takes.
``consistent_reads=true`` in the URL makes them strongly consistent. The alias is always read
strongly consistent: it is what a publish changes.
"""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import Sequence
from typing import Any

from precompute.adapters.dynamodb.layout import ALIAS_KEY
from precompute.adapters.dynamodb.options import KEY_ATTR, VALUE_ATTR, connection, parse_settings
from precompute.adapters.dynamodb.writes import READ_REQUEST_KEYS
from precompute.store import Reader, StoreUnavailable, StoreURL


class DynamoDBReader(Reader):
    # Ten 100-key BatchGetItem requests in flight at once.
    max_read_batch = 1_000  # read_batch gathers 100-key BatchGetItem requests, all in flight together

    def __init__(self, url: StoreURL) -> None:
        super().__init__(url)
        # Imported here so that writer processes (Ray tasks) never load the HTTP stack they do not use.
        from precompute.adapters.dynamodb.wire import AsyncDynamoDB, TableMissing

        self.settings = parse_settings(url)
        self._api = AsyncDynamoDB(connection(self.settings), self.settings)
        self._missing = TableMissing

    async def get_alias(self) -> str | None:
        payload = {"TableName": self.settings.meta_table, "Key": ALIAS_KEY, "ConsistentRead": True}
        try:
            answer = await self._api.call("GetItem", payload)
        except self._missing:
            return None
        item = answer.get("Item")
        return str(item["version"]["S"]) if item else None

    async def read_one(self, version: str, key: bytes) -> bytes | None:
        payload: dict[str, Any] = {
            "TableName": self.settings.version_table(version),
            "Key": {KEY_ATTR: {"B": _b64(key)}},
            "ProjectionExpression": VALUE_ATTR,
        }
        if self.settings.consistent_reads:
            payload["ConsistentRead"] = True
        try:
            answer = await self._api.call("GetItem", payload)
        except self._missing:
            return None
        item = answer.get("Item")
        return base64.b64decode(item[VALUE_ATTR]["B"]) if item else None

    async def records(self) -> dict[str, bytes]:
        return await asyncio.to_thread(self._sync_records)

    def _sync_records(self) -> dict[str, bytes]:
        from precompute.adapters import open_backend

        backend = open_backend(self.url)
        try:
            return backend.records()
        finally:
            backend.close()

    async def read_batch(self, version: str, keys: Sequence[bytes]) -> list[bytes | None]:
        table = self.settings.version_table(version)
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
        deadline = time.monotonic() + self._api.deadline_s
        attempt = 0
        while True:
            try:
                answer = await self._api.call("BatchGetItem", {"RequestItems": {table: request}})
            except self._missing:
                return {}
            for item in answer.get("Responses", {}).get(table, []):
                found[base64.b64decode(item[KEY_ATTR]["B"])] = base64.b64decode(item[VALUE_ATTR]["B"])
            unprocessed = answer.get("UnprocessedKeys", {}).get(table)
            if not unprocessed or not unprocessed.get("Keys"):
                return found
            request = unprocessed
            attempt += 1
            if time.monotonic() >= deadline:
                raise StoreUnavailable(f"BatchGetItem from {table}: {len(request['Keys'])} keys still unprocessed")
            await asyncio.sleep(self._api.backoff(attempt))

    async def aclose(self) -> None:
        await self._api.close()


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")
