"""The bookkeeping rows of a ``bigtable://`` store: version records, the live alias, the run lock and the
recorded misses.

Both the alias and the lock are one cell each, changed only by ``CheckAndMutateRow`` whose predicate is
"this column holds exactly the value I read" (or "this column is empty"): a compare-and-swap that
Bigtable applies atomically to the row. The lock keeps owner and expiry in that one cell, so renewing,
taking over an expired lease and releasing are each one swap of the exact lease that was read, and a
holder that lost its lease can never delete its successor's.

The misses are one row, ``~misses``: a cell per key (its count) and a ``gen`` token. Every change reads the
row, computes the new counts (a new key only while fewer than the cap are recorded) and writes them with
``CheckAndMutateRow`` on "gen is still the token I read", replacing the token: counts from concurrent API
processes add up exactly and the cap holds exactly, at the price of reading the whole row per flush (about
40 bytes a key: 4 MB at 100,000 keys; Bigtable's limit for a row is 256 MB). ``ReadModifyWriteRow`` would
increment without the read, but it cannot be made conditional, so it could not keep the cap.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager
from typing import Any

from google.cloud.bigtable.data import DeleteAllFromRow, DeleteRangeFromColumn, Mutation, SetCell, Table
from google.cloud.bigtable.data.row_filters import CellsColumnLimitFilter, RowFilter

from precompute.adapters.bigtable.errors import SDK_ERRORS, TableMissing, translated
from precompute.adapters.bigtable.layout import (
    ALIAS_COLUMN,
    ALIAS_ROW,
    CELL_TIMESTAMP,
    DATA_FAMILY,
    GEN_COLUMN,
    LEASE_COLUMN,
    LOCK_ROW,
    META_FAMILY,
    MISSES_ROW,
    RECORD_COLUMN,
    column,
    column_equals,
    decode_lease,
    encode_lease,
    first_cell,
    record_row,
    records_of,
    records_query,
    version_prefix,
)
from precompute.store import StoreError
from precompute.store.backend import Meta, admitted
from precompute.store.retry import Backoff

#: Taking the lock when a swap is lost: each loss means another owner changed the lease meanwhile, so the
#: lease is read again after a short jittered pause (owners taking turns spread out instead of colliding
#: again), until 10 swaps are lost in a row.
LOCK_CONTENTION = Backoff(base_s=0.01, cap_s=0.2, deadline_s=5.0, max_attempts=10)
#: Changing the misses row when a swap is lost to another API process's flush (they take turns).
MISSES_CONTENTION = Backoff(base_s=0.01, cap_s=0.5, deadline_s=30.0, max_attempts=100)
#: Keys per swap of the misses row: one CheckAndMutateRow takes at most 100,000 mutations.
MISSES_PER_SWAP = 20_000


class MetaRows(Meta):
    """The records, alias and lock rows of one table, through the data API only (no admin rights needed)."""

    def __init__(self, table: Table, timeout_s: float, where: str) -> None:
        #: The data API's table handle; tests wrap it to inject faults.
        self.table = table
        self.timeout_s = timeout_s
        self.where = where

    def _doing(self, what: str) -> AbstractContextManager[None]:
        return translated(f"{what} in {self.where}")

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
            with self._doing("looking for the table"):
                self.table.read_row(
                    ALIAS_ROW, row_filter=column(META_FAMILY, ALIAS_COLUMN), operation_timeout=self.timeout_s
                )
        except TableMissing:
            return False
        return True

    def read(self, row: bytes, qualifier: bytes, what: str) -> bytes | None:
        try:
            with self._doing(what):
                found = self.table.read_row(
                    row, row_filter=column(META_FAMILY, qualifier), operation_timeout=self.timeout_s
                )
        except TableMissing:
            return None
        return first_cell(found, META_FAMILY, qualifier)

    # -- records ---------------------------------------------------------------------------------

    def put_record(self, version: str, record: bytes) -> None:
        with self._doing(f"storing the record of {version}"):
            self.table.mutate_row(
                record_row(version), self._set(RECORD_COLUMN, record), operation_timeout=self.timeout_s
            )

    def records(self) -> dict[str, bytes]:
        try:
            with self._doing("listing version records"):
                rows = self.table.read_rows(records_query(), operation_timeout=self.timeout_s)
        except TableMissing:
            return {}
        return records_of(rows)

    def delete_record(self, version: str) -> None:
        try:
            with self._doing(f"deleting the record of {version}"):
                self.table.mutate_row(record_row(version), DeleteAllFromRow(), operation_timeout=self.timeout_s)
        except TableMissing:
            return

    # -- live alias ------------------------------------------------------------------------------

    def get_alias(self) -> str | None:
        value = self.read(ALIAS_ROW, ALIAS_COLUMN, "reading the live alias")
        return value.decode() if value is not None else None

    def swap_alias(self, expected: str | None, new: str) -> bool:
        version_prefix(new)
        write = self._set(ALIAS_COLUMN, new.encode())
        try:
            if expected is None:  # only while there is no alias cell at all
                return not self._swap(ALIAS_ROW, column(META_FAMILY, ALIAS_COLUMN), otherwise=write)
            return self._swap(ALIAS_ROW, column_equals(META_FAMILY, ALIAS_COLUMN, expected.encode()), if_matched=write)
        except SDK_ERRORS as exc:
            # CheckAndMutateRow is never retried (not idempotent), and a lost reply leaves unknown whether
            # the flip happened; the alias itself says.
            current = self.get_alias()
            if current == new and expected != new:
                return True
            if current != expected:
                return False
            with self._doing("flipping the live alias"):
                raise exc

    # -- run lock --------------------------------------------------------------------------------

    def acquire_lock(self, owner: str, ttl_s: float) -> str | None:
        for _attempt in LOCK_CONTENTION.delays():
            current = self.read(LOCK_ROW, LEASE_COLUMN, "reading the run lock")
            now_ms = int(time.time() * 1000)
            lease = self._set(LEASE_COLUMN, encode_lease(owner, now_ms + int(ttl_s * 1000)))
            with self._doing("taking the run lock"):
                if current is None:
                    taken = not self._swap(LOCK_ROW, column(META_FAMILY, LEASE_COLUMN), otherwise=lease)
                else:
                    expires_ms, holder = decode_lease(current)
                    if holder != owner and expires_ms > now_ms:
                        return holder
                    taken = self._swap(LOCK_ROW, column_equals(META_FAMILY, LEASE_COLUMN, current), if_matched=lease)
            if taken:
                return None
        raise StoreError(
            f"the run lock of {self.where} changed hands {LOCK_CONTENTION.max_attempts} times while it was being taken"
        )

    def release_lock(self, owner: str) -> None:
        current = self.read(LOCK_ROW, LEASE_COLUMN, "reading the run lock")
        if current is None or decode_lease(current)[1] != owner:
            return
        with self._doing("releasing the run lock"):
            # Only the exact lease we read: one that expired and was taken since stays with its new owner.
            self._swap(LOCK_ROW, column_equals(META_FAMILY, LEASE_COLUMN, current), if_matched=DeleteAllFromRow())

    # -- misses ------------------------------------------------------------------------------------

    def _misses_row(self) -> tuple[dict[bytes, int], bytes | None]:
        """The recorded counts and the row's ``gen`` token (None: the row was never written)."""
        try:
            with self._doing("reading the misses"):
                row = self.table.read_row(
                    MISSES_ROW, row_filter=CellsColumnLimitFilter(1), operation_timeout=self.timeout_s
                )
        except TableMissing:
            return {}, None
        counts: dict[bytes, int] = {}
        gen = None
        for cell in row.cells if row is not None else ():
            if cell.family == DATA_FAMILY:
                counts[bytes(cell.qualifier)] = int.from_bytes(cell.value, "big", signed=True)
            elif cell.family == META_FAMILY and cell.qualifier == GEN_COLUMN:
                gen = bytes(cell.value)
        return counts, gen

    def _swap_misses(self, gen: bytes | None, mutations: list[Mutation], what: str) -> bool:
        """``mutations`` applied if the row's token is still ``gen``; False when another change came first."""
        token = secrets.token_bytes(8)
        changes = [*mutations, self._set(GEN_COLUMN, token)]
        try:
            if gen is None:  # only while the row has no token at all
                absent = column(META_FAMILY, GEN_COLUMN)
                matched: Any = self.table.check_and_mutate_row(
                    MISSES_ROW, absent, false_case_mutations=changes, operation_timeout=self.timeout_s
                )
                return not matched
            same = column_equals(META_FAMILY, GEN_COLUMN, gen)
            matched = self.table.check_and_mutate_row(
                MISSES_ROW, same, true_case_mutations=changes, operation_timeout=self.timeout_s
            )
            return bool(matched)
        except SDK_ERRORS as exc:
            # Not retried (not idempotent); a lost reply leaves unknown whether it landed: the token says.
            _, now = self._misses_row()
            if now == token:
                return True
            if now != gen:
                return False
            with self._doing(what):
                raise exc

    def increment_misses(self, counts: Mapping[bytes, int], cap: int) -> int:
        ordered = sorted(counts, key=lambda key: (-counts[key], key))
        refused = 0
        for start in range(0, len(ordered), MISSES_PER_SWAP):
            chunk = ordered[start : start + MISSES_PER_SWAP]
            for _attempt in MISSES_CONTENTION.delays():
                recorded, gen = self._misses_row()
                new = {key: counts[key] for key in chunk if key not in recorded}
                room = admitted(new, cap - len(recorded))
                changed = [key for key in chunk if key in recorded] + room
                cells: list[Mutation] = [self._set_data(key, recorded.get(key, 0) + counts[key]) for key in changed]
                if not cells or self._swap_misses(gen, cells, f"recording {len(changed)} misses"):
                    refused += len(new) - len(room)
                    break
            else:
                raise StoreError(f"the misses row of {self.where} kept changing while {len(chunk)} misses were added")
        return refused

    def _set_data(self, key: bytes, count: int) -> SetCell:
        return SetCell(DATA_FAMILY, key, count.to_bytes(8, "big", signed=True), CELL_TIMESTAMP)

    def read_misses(self) -> dict[bytes, int]:
        return self._misses_row()[0]

    def delete_misses(self, keys: Sequence[bytes]) -> None:
        for start in range(0, len(keys), MISSES_PER_SWAP):
            chunk = keys[start : start + MISSES_PER_SWAP]
            for _attempt in MISSES_CONTENTION.delays():
                recorded, gen = self._misses_row()
                cells: list[Mutation] = [DeleteRangeFromColumn(DATA_FAMILY, key) for key in chunk if key in recorded]
                if not cells or self._swap_misses(gen, cells, f"clearing {len(cells)} misses"):
                    break
            else:
                raise StoreError(f"the misses row of {self.where} kept changing while {len(chunk)} misses were cleared")
