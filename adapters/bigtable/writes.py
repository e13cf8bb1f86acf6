"""Bulk writes for ``bigtable://`` that account for every row.

``Table.bulk_mutate_rows`` sends one MutateRows call and reads back a status for every entry. After its
own retries it raises ``MutationsExceptionGroup`` with one ``FailedMutationEntryError`` (index + cause)
per entry that did not land. What it retries by itself (read from the client's ``_mutate_rows``): only
idempotent entries (ours are: every cell has an explicit timestamp) and only for DEADLINE_EXCEEDED and
UNAVAILABLE. A throttled entry (RESOURCE_EXHAUSTED), an ABORTED or INTERNAL one comes back on the
first attempt. So :func:`write_rows` looks at every failed entry: transient ones are sent again, alone,
with jittered exponential backoff; a permanent one (missing family, bad argument) fails the write at
once; what is still failing when the backoff runs out is raised as :class:`~store.errors.WriteError`
naming the keys (a :class:`~precompute.store.errors.WriteUnavailable`, also a
``StoreUnavailable``, when every one of them failed because the store could not be reached or kept
throttling). The batch job then never publishes the version, so a version is never served with rows
missing.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from google.cloud.bigtable.data import FailedMutationEntryError, MutationsExceptionGroup, RowMutationEntry, SetCell

from precompute.adapters.bigtable.errors import (
    SDK_ERRORS,
    is_misconfigured,
    is_transient,
    is_unreachable,
    root_cause,
    translate,
)
from precompute.adapters.bigtable.layout import CELL_TIMESTAMP, DATA_FAMILY, VALUE_COLUMN
from precompute.store import Item, WriteError, WriteUnavailable
from precompute.store.retry import Backoff

#: MutateRows takes at most 100,000 mutations and a few hundred MB; split well below the byte limit.
MAX_CALL_BYTES = 32 * 1024 * 1024
#: Keys named in a WriteError message (the exception carries up to this many).
NAMED_KEYS = 200


class BulkTable(Protocol):
    """The one method of the data client's ``Table`` this module needs (tests wrap it to inject faults)."""

    def bulk_mutate_rows(self, mutation_entries: list[RowMutationEntry], *, operation_timeout: float) -> object: ...


def entries_for(prefix: bytes, items: Sequence[Item]) -> list[RowMutationEntry]:
    return [
        RowMutationEntry(prefix + key, [SetCell(DATA_FAMILY, VALUE_COLUMN, value, CELL_TIMESTAMP)])
        for key, value in items
    ]


def _calls(entries: list[RowMutationEntry], sizes: list[int]) -> list[list[int]]:
    """Indices of ``entries`` grouped into calls of at most :data:`MAX_CALL_BYTES`."""
    calls: list[list[int]] = [[]]
    used = 0
    for index, size in enumerate(sizes):
        if calls[-1] and used + size > MAX_CALL_BYTES:
            calls.append([])
            used = 0
        calls[-1].append(index)
        used += size
    return calls if calls[0] else []


def write_rows(
    table: BulkTable,
    prefix: bytes,
    items: Sequence[Item],
    policy: Backoff,
    timeout_s: float,
    where: str,
) -> int:
    """Write ``items`` under ``prefix``; returns how many entries had to be sent again.

    Raises :class:`WriteError` when an entry fails permanently or is still failing when ``policy`` runs
    out; nothing is reported written that the server did not acknowledge.
    """
    entries = entries_for(prefix, items)
    sizes = [len(key) + len(value) + 32 for key, value in items]
    pending = list(range(len(entries)))
    failures: dict[int, BaseException] = {}
    resent = 0
    for attempt in policy.delays():
        if attempt > 1:
            resent += len(pending)
        failures = {}
        for call in _calls([entries[i] for i in pending], [sizes[i] for i in pending]):
            indices = [pending[i] for i in call]
            failures.update(_send(table, entries, indices, timeout_s))
        permanent = {i: exc for i, exc in failures.items() if not is_transient(exc)}
        refused = next((exc for exc in permanent.values() if is_misconfigured(exc)), None)
        if refused is not None:  # no credentials or no rights: a configuration to fix, not rows to name
            raise translate(refused, f"writing {len(items)} rows to {where}") from refused
        if permanent:
            raise _error(items, permanent, f"{len(permanent)} of {len(items)} rows were refused by {where}")
        if not failures:
            return resent
        pending = sorted(failures)
    raise _error(
        items,
        failures,
        f"{len(failures)} of {len(items)} rows still failed after {policy.max_attempts} attempts or "
        f"{policy.deadline_s:g} s of retries against {where}",
        unavailable=all(is_unreachable(exc) for exc in failures.values()),
    )


def _send(
    table: BulkTable, entries: list[RowMutationEntry], indices: list[int], timeout_s: float
) -> dict[int, BaseException]:
    """One MutateRows call; returns the failed entries as {index into entries: cause}."""
    batch = [entries[i] for i in indices]
    try:
        table.bulk_mutate_rows(batch, operation_timeout=timeout_s)
    except MutationsExceptionGroup as group:
        failed: dict[int, BaseException] = {}
        for error in group.exceptions:
            cause = root_cause(error.__cause__ or error)
            position = error.index if isinstance(error, FailedMutationEntryError) else None
            if position is None or not 0 <= position < len(batch):
                # An error the group could not tie to an entry: every entry of the call is in doubt.
                return dict.fromkeys(indices, cause)
            failed[indices[position]] = cause
        return failed
    except SDK_ERRORS as exc:  # the call failed as a whole: every entry of it is in doubt
        return dict.fromkeys(indices, root_cause(exc))
    return {}


def _error(
    items: Sequence[Item], failures: dict[int, BaseException], summary: str, unavailable: bool = False
) -> WriteError:
    keys = [items[i][0] for i in sorted(failures)[:NAMED_KEYS]]
    causes = sorted({f"{type(exc).__name__}: {' '.join(str(exc).split())}" for exc in failures.values()})[:5]
    shown = ", ".join(repr(k[:100]) for k in keys[:5])
    kind = WriteUnavailable if unavailable else WriteError
    return kind(f"{summary}; keys {shown}{' ...' if len(failures) > 5 else ''}; causes: {causes}", keys)
