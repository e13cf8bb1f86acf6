"""Where things live in a ``bigtable://`` store: row keys, column families, cells and the lease format.

One table holds every version and the store's bookkeeping::

    <version>#<key>        v:v     the value, exactly the bytes the API returns
    ~alias                 m:alias the live version id
    ~lock                  m:lease "<expiry ms, 16 digits>|<owner>", the run lock as one cell
    ~record#<version>      m:r     the version record (JSON from store.versions)
    ~misses                v:<key> times the key was answered online off the grid (8-byte big-endian)
                           m:gen   a random token, replaced by every change of the row (its compare-and-swap)

Why a prefix per version rather than a table per version. Both make publish atomic the same way (one
``CheckAndMutateRow`` on the alias row) and both drop a version with one admin call
(``DropRowRange(prefix)`` or ``DeleteTable``). They differ in what a run costs:

* creating a version is free with a prefix, but a table per version is a ``CreateTable`` per run. Table
  creation and deletion are admin operations under a small per-project daily quota, and Google's quota
  page asks that admin calls not grow with usage;
* ``DropRowRange`` needs only ``bigtable.tables.mutateRows``, the permission the writer already has,
  whereas a table per version needs create/delete rights on the instance for every job;
* one table means one set of settings (GC, replication, app profiles, IAM) made once by the operator,
  and one table handle in the reader for every version.

The price: on a replicated instance ``DropRowRange`` makes the replicas work harder than a
``DeleteTable``, and only one may run per table at a time (a concurrent one is refused: retried).

Version ids follow :func:`precompute.store.codec.check_version` (``[A-Za-z0-9_-]``), so ``<version>#``
never prefixes another version's rows and no version's rows reach the ``~`` rows ('~' sorts after every
id character). Every cell is written at timestamp 0: a rewrite lands on the same cell and replaces it
instead of stacking a newer version, and no client clock takes part in ordering (two machines with skewed
clocks cannot hide each other's alias flip). The families' GC rule (one version) only matters for cells
someone writes out of band.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from google.cloud.bigtable.data import ReadRowsQuery, Row, RowRange, row_filters

from precompute.store.codec import check_version

DATA_FAMILY = "v"
VALUE_COLUMN = b"v"
META_FAMILY = "m"
ALIAS_COLUMN = b"alias"
LEASE_COLUMN = b"lease"
RECORD_COLUMN = b"r"
CELL_TIMESTAMP = 0
#: Both families keep one cell version: what ``ensure_table`` creates and ``cbt createtable`` is told.
FAMILIES = (DATA_FAMILY, META_FAMILY)
GC_RULE = {"max_num_versions": 1}

ALIAS_ROW = b"~alias"
LOCK_ROW = b"~lock"
RECORD_PREFIX = b"~record#"
MISSES_ROW = b"~misses"
GEN_COLUMN = b"gen"


def version_prefix(version: str) -> bytes:
    """``<version>#``, the prefix of every data row of ``version`` (a bad id is a ``VersionError``)."""
    return check_version(version).encode() + b"#"


def record_row(version: str) -> bytes:
    return RECORD_PREFIX + check_version(version).encode()


def prefix_end(prefix: bytes) -> bytes:
    """The first row key after every key starting with ``prefix`` (which ends below 0xff here)."""
    return prefix[:-1] + bytes([prefix[-1] + 1])


def records_query() -> ReadRowsQuery:
    """Every ``~record#`` row: one range scan, the version records and nothing else."""
    return ReadRowsQuery(row_ranges=RowRange(RECORD_PREFIX, prefix_end(RECORD_PREFIX)))


def records_of(rows: Iterable[Row]) -> dict[str, bytes]:
    """``{version: record}`` from the rows of :func:`records_query` (a row without a record cell is skipped)."""
    found = {bytes(r.row_key)[len(RECORD_PREFIX) :].decode(): first_cell(r, META_FAMILY, RECORD_COLUMN) for r in rows}
    return {version: record for version, record in found.items() if record is not None}


def batch_query(prefix: bytes, keys: Sequence[bytes]) -> ReadRowsQuery:
    """The rows of ``keys`` under ``prefix``, each asked for once."""
    # Never call this with no keys: ReadRows without keys or ranges scans the whole table.
    return ReadRowsQuery(row_keys=[prefix + key for key in dict.fromkeys(keys)])


def values_in_order(prefix: bytes, keys: Sequence[bytes], rows: Iterable[Row]) -> list[bytes | None]:
    """One value per key of a :func:`batch_query`, in input order; a miss is ``None``."""
    found = {bytes(row.row_key)[len(prefix) :]: first_cell(row, DATA_FAMILY, VALUE_COLUMN) for row in rows}
    return [found.get(key) for key in keys]


def encode_lease(owner: str, expires_ms: int) -> bytes:
    # Fixed-width expiry first: a person reading the row with `cbt read` sees when it runs out.
    return f"{expires_ms:016d}|{owner}".encode()


def decode_lease(cell: bytes) -> tuple[int, str]:
    expires, _, owner = cell.decode().partition("|")
    return int(expires), owner


def column(family: str, qualifier: bytes) -> row_filters.RowFilter:
    """Cells of exactly one column (a range, not a regex: nothing to escape)."""
    return row_filters.ColumnRangeFilter(family, qualifier, qualifier, inclusive_start=True, inclusive_end=True)


def column_equals(family: str, qualifier: bytes, value: bytes) -> row_filters.RowFilter:
    """The cell of one column if its value is exactly ``value``: the compare of compare-and-swap."""
    exact = row_filters.ValueRangeFilter(value, value, inclusive_start=True, inclusive_end=True)
    return row_filters.RowFilterChain([column(family, qualifier), exact])


def first_cell(row: Row | None, family: str, qualifier: bytes) -> bytes | None:
    """The value of one column of ``row``, newest cell first (there is one: every write lands on timestamp 0).

    A plain scan, not ``Row.get_cells``: that one raises when the column is absent and builds an index
    per row, which a 1,000-key batch pays a thousand times.
    """
    if row is None:
        return None
    for cell in row.cells:
        if cell.family == family and cell.qualifier == qualifier:
            return bytes(cell.value)
    return None
