"""Where things live in a ``bigtable://`` store: the URL, row keys, cells and the lease format.

One table holds every version and the store's bookkeeping (the reasons are in :mod:`adapters.bigtable`)::

    <version>#<key>        v:v     the value, exactly the bytes the API returns
    ~alias                 m:alias the live version id
    ~lock                  m:lease "<expiry ms, 16 digits>|<owner>", the run lock as one cell
    ~record#<version>      m:r     the version record (JSON from store.versions)

Version ids are ``[A-Za-z0-9_-]``, so ``<version>#`` never prefixes another version's rows and no
version's rows reach the ``~`` rows ('~' sorts after every id character). Every cell is written at
timestamp 0: a rewrite lands on the same cell and replaces it instead of stacking a newer version, and
no client clock takes part in ordering (two machines with skewed clocks cannot hide each other's alias
flip). The families' GC rule (one version) only matters for cells someone writes out of band.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from google.cloud.bigtable.data import Row, row_filters

from precompute.store import StoreError, StoreURL

DATA_FAMILY = "v"
VALUE_COLUMN = b"v"
META_FAMILY = "m"
ALIAS_COLUMN = b"alias"
LEASE_COLUMN = b"lease"
RECORD_COLUMN = b"r"
CELL_TIMESTAMP = 0

ALIAS_ROW = b"~alias"
LOCK_ROW = b"~lock"
RECORD_PREFIX = b"~record#"

_VERSION_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
# Bigtable's own id rules, checked here so a typo fails with the URL in the message.
_INSTANCE_ID = re.compile(r"^[a-z][-a-z0-9]{1,62}$")
_TABLE_ID = re.compile(r"^[-_.a-zA-Z0-9]{1,50}$")
_OPTIONS = {"app_profile", "timeout"}


@dataclass(frozen=True)
class Location:
    """The parsed ``bigtable://PROJECT/INSTANCE/TABLE[?app_profile=ID&timeout=SECONDS]``."""

    project: str
    instance: str
    table: str
    app_profile: str | None
    timeout_s: float | None  # None: the caller's default (the batch side waits longer than a lookup)

    @classmethod
    def from_url(cls, url: StoreURL) -> Location:
        usage = "expected bigtable://PROJECT/INSTANCE/TABLE"
        if url.username or url.password:
            raise StoreError(
                f"{url}: credentials never go in a bigtable:// URL; the client uses application default "
                "credentials (GOOGLE_APPLICATION_CREDENTIALS, gcloud auth application-default login, or the "
                "attached service account)"
            )
        parts = url.path.strip("/").split("/")
        if not url.host or len(parts) != 2 or not all(parts):
            raise StoreError(f"{url}: {usage}")
        instance, table = parts
        if not _INSTANCE_ID.match(instance):
            raise StoreError(f"{url}: {instance!r} is not a Bigtable instance id; {usage}")
        if not _TABLE_ID.match(table):
            raise StoreError(f"{url}: {table!r} is not a Bigtable table id (letters, digits, '-', '_', '.')")
        unknown = set(url.options) - _OPTIONS
        if unknown:
            raise StoreError(f"{url}: unknown option(s) {sorted(unknown)}; known: {sorted(_OPTIONS)}")
        raw_timeout = url.option("timeout")
        try:
            timeout_s = float(raw_timeout) if raw_timeout else None
        except ValueError:
            raise StoreError(f"{url}: timeout must be a number of seconds") from None
        if timeout_s is not None and timeout_s <= 0:
            raise StoreError(f"{url}: timeout must be positive")
        return cls(url.host, instance, table, url.option("app_profile") or None, timeout_s)

    def timeout(self, default: float) -> float:
        return self.timeout_s if self.timeout_s is not None else default

    @property
    def table_path(self) -> str:
        return f"projects/{self.project}/instances/{self.instance}/tables/{self.table}"


def version_prefix(version: str) -> bytes:
    if not _VERSION_ID.match(version):
        raise StoreError(f"invalid version id {version!r}")
    return version.encode() + b"#"


def record_row(version: str) -> bytes:
    return RECORD_PREFIX + version_prefix(version)[:-1]


def prefix_end(prefix: bytes) -> bytes:
    """The first row key after every key starting with ``prefix`` (which ends below 0xff here)."""
    return prefix[:-1] + bytes([prefix[-1] + 1])


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
