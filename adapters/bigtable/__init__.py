"""Google Bigtable backend: see :mod:`.backend` for the layout and its reasons."""

from precompute.adapters.bigtable.backend import BigtableBackend, BigtableReader

__all__ = ["BigtableBackend", "BigtableReader"]
