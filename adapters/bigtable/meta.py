"""The bookkeeping rows of a ``bigtable://`` store: version records, the live alias and the run lock.

Both the alias and the lock are one cell each, changed only by ``CheckAndMutateRow`` whose predicate is
"this column holds exactly the value I read" (or "this column is empty"): a compare-and-swap that
Bigtable applies atomically to the row. The lock keeps owner and expiry in that one cell, so renewing,
taking over an expired lease and releasing are each one swap of the exact lease that was read, and a
holder that lost its lease can never delete its successor's.
"""

from __future__ import annotations

import time
from typing import Any

from google.api_core import exceptions as core_exceptions
from google.cloud.bigtable.data import DeleteAllFromRow, Mutation, ReadRowsQuery, RowRange, SetCell, Table
from google.cloud.bigtable.data.row_filters import RowFilter

from precompute.adapters.bigtable.client import TableMissing, errors
from precompute.adapters.bigtable.layout import (
    ALIAS_COLUMN,
    ALIAS_ROW,
    CELL_TIMESTAMP,
    LEASE_COLUMN,
    LOCK_ROW,
    META_FAMILY,
    RECORD_COLUMN,
    RECORD_PREFIX,
    column,
    column_equals,
    decode_lease,
    encode_lease,
    first_cell,
    prefix_end,
    record_row,
    version_prefix,
)
from precompute.store import StoreError

#: Swaps lost in a row before acquire gives up; each loss means another owner changed the lease.
LOCK_TURNS = 10


class MetaRows:
    def __init__(self, table: Table, timeout_s: float) -> None:
        self.table = table
        self.timeout_s = timeout_s

    def _set(self, qualifier: bytes, value: bytes) -> SetCell:
        return SetCell(META_FAMILY, qualifier, value, CELL_TIMESTAMP)

    def _swap(
        self,
        row: bytes,
        predicate: RowFilter,
        if_matched: Mutation | None = None,
        otherwise: Mutation | None = None,
    ) -> bool:
        matched: Any = self.table.check_and_mutate_row(
            row,
            predicate,
            true_case_mutations=if_matched,
            false_case_mutations=otherwise,
            operation_timeout=self.timeout_s,
        )
        return bool(matched)

    def table_exists(self) -> bool:
        """One data read, no admin call: the job needs no admin rights once the table is there."""
        try:
            with errors("looking for the table"):
                self.table.read_row(
                    ALIAS_ROW, row_filter=column(META_FAMILY, ALIAS_COLUMN), operation_timeout=self.timeout_s
                )
        except TableMissing:
            return False
        return True

    def read(self, row: bytes, qualifier: bytes) -> bytes | None:
        try:
            with errors(f"reading {row.decode()}"):
                found = self.table.read_row(
                    row, row_filter=column(META_FAMILY, qualifier), operation_timeout=self.timeout_s
                )
        except TableMissing:
            return None
        return first_cell(found, META_FAMILY, qualifier)

    # -- records ---------------------------------------------------------------------------------

    def put_record(self, version: str, record: bytes) -> None:
        with errors(f"storing the record of {version}"):
            self.table.mutate_row(
                record_row(version), self._set(RECORD_COLUMN, record), operation_timeout=self.timeout_s
            )

    def records(self) -> dict[str, bytes]:
        query = ReadRowsQuery(row_ranges=RowRange(RECORD_PREFIX, prefix_end(RECORD_PREFIX)))
        try:
            with errors("listing version records"):
                rows = self.table.read_rows(query, operation_timeout=self.timeout_s)
        except TableMissing:
            return {}
        found = {
            bytes(r.row_key)[len(RECORD_PREFIX) :].decode(): first_cell(r, META_FAMILY, RECORD_COLUMN) for r in rows
        }
        return {version: record for version, record in found.items() if record is not None}

    def delete_record(self, version: str) -> None:
        try:
            with errors(f"deleting the record of {version}"):
                self.table.mutate_row(record_row(version), DeleteAllFromRow(), operation_timeout=self.timeout_s)
        except TableMissing:
            return

    # -- live alias ------------------------------------------------------------------------------

    def get_alias(self) -> str | None:
        value = self.read(ALIAS_ROW, ALIAS_COLUMN)
        return value.decode() if value is not None else None

    def swap_alias(self, expected: str | None, new: str) -> bool:
        version_prefix(new)
        write = self._set(ALIAS_COLUMN, new.encode())
        try:
            if expected is None:  # only while there is no alias cell at all
                return not self._swap(ALIAS_ROW, column(META_FAMILY, ALIAS_COLUMN), otherwise=write)
            return self._swap(ALIAS_ROW, column_equals(META_FAMILY, ALIAS_COLUMN, expected.encode()), if_matched=write)
        except core_exceptions.GoogleAPIError as exc:
            # CheckAndMutateRow is never retried (not idempotent), and a lost reply leaves unknown whether
            # the flip happened; the alias itself says.
            current = self.get_alias()
            if current == new and expected != new:
                return True
            if current != expected:
                return False
            with errors("flipping the live alias"):
                raise exc

    # -- run lock --------------------------------------------------------------------------------

    def acquire_lock(self, owner: str, ttl_s: float) -> str | None:
        for _ in range(LOCK_TURNS):
            current = self.read(LOCK_ROW, LEASE_COLUMN)
            now_ms = int(time.time() * 1000)
            lease = self._set(LEASE_COLUMN, encode_lease(owner, now_ms + int(ttl_s * 1000)))
            with errors("taking the run lock"):
                if current is None:
                    taken = not self._swap(LOCK_ROW, column(META_FAMILY, LEASE_COLUMN), otherwise=lease)
                else:
                    expires_ms, holder = decode_lease(current)
                    if holder != owner and expires_ms > now_ms:
                        return holder
                    taken = self._swap(LOCK_ROW, column_equals(META_FAMILY, LEASE_COLUMN, current), if_matched=lease)
            if taken:
                return None
        raise StoreError(f"the run lock changed hands {LOCK_TURNS} times while it was being taken")

    def release_lock(self, owner: str) -> None:
        current = self.read(LOCK_ROW, LEASE_COLUMN)
        if current is None or decode_lease(current)[1] != owner:
            return
        with errors("releasing the run lock"):
            # Only the exact lease we read: one that expired and was taken since stays with its new owner.
            self._swap(LOCK_ROW, column_equals(META_FAMILY, LEASE_COLUMN, current), if_matched=DeleteAllFromRow())
