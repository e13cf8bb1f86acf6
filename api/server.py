"""``precompute serve``: the API on uvicorn, tuned for lookups.

No per-request access log unless ``[serve] access_log = true`` (it halves throughput); uvloop and
httptools when installed; the API's own logs are structured (api/logs.py). On SIGTERM or Ctrl-C, uvicorn
stops accepting connections and lets in-flight requests finish (up to ``[serve] shutdown_seconds``), then
the app's shutdown drains the online model's queue and the write-back queue before closing the store.
"""

from __future__ import annotations

import math

import uvicorn

from precompute.api.app import create_served_app
from precompute.api.logs import configure
from precompute.served import Served


def serve(served: Served, host: str | None = None, port: int | None = None) -> None:
    """Serve every model of ``served`` (one config's, or several: precompute/served.py) in this process."""
    settings = served.serve
    configure(settings.log_format)
    uvicorn.run(
        create_served_app(served),
        host=host or settings.host,
        port=port or settings.port,
        access_log=settings.access_log,
        loop=settings.loop,
        log_level="info",
        timeout_graceful_shutdown=math.ceil(settings.shutdown_seconds),
    )
