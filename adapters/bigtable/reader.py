"""The API's async reads of a ``bigtable://`` store, on one async data client per reader.

``read_row`` for one key, ``read_rows`` with a row-key set for a batch (answers put back in input order),
one range scan of the ``~record#`` rows for the version records. Measured against the emulator on a
shared 2-core machine (``bench/bigtable_load.py``, three runs of 3 medians each): a point read takes
0.75-0.93 ms at p50, 1.02-1.03x a bare ``read_row`` of the same client; a 1,000-key batch 1.02-1.20x a
bare ``read_rows``. The emulator is one Go process; these figures orient, they do not predict a cluster.

The client is made on first use, on the event loop that uses it (an async client is bound to its loop).
Nothing here blocks that loop: finding Google credentials can take seconds (files, then the GCE
metadata server, probed with retries), so it runs in a thread, once for all the lookups that wait for it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from google.cloud.bigtable.data import BigtableDataClientAsync, Row, TableAsync

from precompute.adapters.bigtable.backend import BigtableBackend
from precompute.adapters.bigtable.client import async_data_client, credentials_for
from precompute.adapters.bigtable.errors import TableMissing, translated
from precompute.adapters.bigtable.layout import (
    ALIAS_COLUMN,
    ALIAS_ROW,
    DATA_FAMILY,
    META_FAMILY,
    VALUE_COLUMN,
    batch_query,
    first_cell,
    records_of,
    records_query,
    values_in_order,
    version_prefix,
)
from precompute.adapters.bigtable.options import READER_TIMEOUT_S, Settings
from precompute.store import Reader, StoreURL


class BigtableReader(Reader):
    """Async reads for the API: one async data client per reader, created on the API's event loop."""

    max_read_batch = BigtableBackend.max_read_batch

    def __init__(self, url: StoreURL) -> None:
        super().__init__(url)
        self.settings = Settings.from_url(url)
        self.timeout_s = self.settings.timeout(READER_TIMEOUT_S)
        self._client: BigtableDataClientAsync | None = None
        self._table: TableAsync | None = None
        self._opening: asyncio.Future[TableAsync] | None = None

    async def _open(self) -> TableAsync:
        """The table handle, made once; lookups that arrive meanwhile wait for the same attempt."""
        if self._table is not None:
            return self._table
        if self._opening is None:
            self._opening = asyncio.ensure_future(self._connect())
            # Its error is read even if every lookup that waited for it was cancelled meanwhile.
            self._opening.add_done_callback(lambda done: done.cancelled() or done.exception())
        opening = self._opening
        try:
            # Shielded: a lookup that is cancelled (its request timed out) leaves the others' attempt alone.
            return await asyncio.shield(opening)
        finally:
            if opening.done() and self._opening is opening:
                self._opening = None  # made (kept in _table) or failed (the next lookup tries again)

    async def _connect(self) -> TableAsync:
        credentials = await asyncio.to_thread(credentials_for, self.settings)
        client = async_data_client(self.settings, credentials)
        where = self.settings
        table: TableAsync = client.get_table(where.instance, where.table, app_profile_id=where.app_profile)
        self._client, self._table = client, table
        return table

    async def _read_row(self, row_key: bytes, what: str) -> Row | None:
        table = self._table or await self._open()
        try:
            with translated(f"{what} in {self.settings.table_path}"):
                row: Row | None = await table.read_row(row_key, operation_timeout=self.timeout_s)
        except TableMissing:
            return None
        return row

    async def get_alias(self) -> str | None:
        value = first_cell(await self._read_row(ALIAS_ROW, "reading the live alias"), META_FAMILY, ALIAS_COLUMN)
        return value.decode() if value is not None else None

    async def records(self) -> dict[str, bytes]:
        table = self._table or await self._open()
        try:
            with translated(f"listing version records in {self.settings.table_path}"):
                rows = await table.read_rows(records_query(), operation_timeout=self.timeout_s)
        except TableMissing:
            return {}
        return records_of(rows)

    async def read_one(self, version: str, key: bytes) -> bytes | None:
        row = await self._read_row(version_prefix(version) + key, f"reading a key of {version}")
        return first_cell(row, DATA_FAMILY, VALUE_COLUMN)

    async def read_batch(self, version: str, keys: Sequence[bytes]) -> list[bytes | None]:
        if not keys:
            return []
        prefix = version_prefix(version)
        table = self._table or await self._open()
        try:
            with translated(f"reading {len(keys)} keys of {version} in {self.settings.table_path}"):
                rows = await table.read_rows(batch_query(prefix, keys), operation_timeout=self.timeout_s)
        except TableMissing:
            return [None] * len(keys)
        return values_in_order(prefix, keys, rows)

    async def aclose(self) -> None:
        opening, table, client = self._opening, self._table, self._client
        self._opening = self._table = self._client = None
        if opening is not None and not opening.done():
            opening.cancel()  # a client made after this point would never be closed
        if table is not None:
            await table.close()
        if client is not None:
            await client.close()
