"""Google Bigtable backend: see :mod:`.backend` for the package's modules, :mod:`.layout` for the layout
and its reasons, :mod:`.options` for the URL."""

from precompute.adapters.bigtable.backend import BigtableBackend
from precompute.adapters.bigtable.reader import BigtableReader

__all__ = ["BigtableBackend", "BigtableReader"]
