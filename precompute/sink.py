"""The Ray Data Datasink that bulk-loads scored rows into one version of the store.

The sink object carries only picklable configuration (the URL and the version id). Each write task opens
its own backend from the URL, writes its blocks in the backend's preferred chunk size, and returns how many
rows it wrote; the driver adds those up in :meth:`StoreDatasink.on_write_complete` for verification.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from ray.data.block import BlockAccessor
from ray.data.datasource.datasink import Datasink, WriteResult

from precompute.adapters import open_backend

ROWS_PER_WRITE_TASK = 262_144


class StoreDatasink(Datasink[int]):
    def __init__(self, url: str, version: str) -> None:
        self.url = url
        self.version = version
        self.rows_written = 0

    def get_name(self) -> str:
        return "StoreWrite"

    @property
    def min_rows_per_write(self) -> int:
        # Without this every 16 k-row output block is its own write task: ~630 task starts and store
        # connections for 10 M rows. Bundled, a 2 M-row load runs in 4 tasks of ~300 k rows/s each.
        return ROWS_PER_WRITE_TASK

    def write(self, blocks: Iterable[Any], ctx: Any) -> int:
        backend = open_backend(self.url)
        written = 0
        pending: list[tuple[bytes, bytes]] = []
        try:
            # Rows of several blocks go out together: bigger calls let a backend group more (Redis loads
            # 375 k rows/s in 200 k-row calls, 589 k in 1 M-row calls).
            for block in blocks:
                table = BlockAccessor.for_block(block).to_arrow()
                pending.extend(zip(table.column("key").to_pylist(), table.column("value").to_pylist(), strict=True))
                if len(pending) >= backend.max_write_batch:
                    backend.write(self.version, pending)
                    written += len(pending)
                    pending = []
            if pending:
                backend.write(self.version, pending)
                written += len(pending)
        finally:
            backend.close()
        return written

    def on_write_complete(self, write_result: WriteResult[int]) -> None:
        self.rows_written = int(sum(write_result.write_returns))
