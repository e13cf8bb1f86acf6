"""Structured logs for the API, all off the hot path.

Nothing is logged per request by default (uvicorn's access log halves lookup throughput; ``[serve]
access_log = true`` turns it back on). What is logged: start-up (fallback mode, model), version changes,
store outages and recoveries, write-back failures (at most one line a minute), and one summary line a
minute while requests arrive (counts by source and status since the previous line, deadline misses,
fallbacks, cache hit ratio), which is what an operator reads when ``/metrics`` is not scraped.

``log_format = "json"`` (the default) writes one JSON object per line: ``ts``, ``level``, ``logger``,
``msg`` and the event's ``fields``; ``"text"`` writes the message and its fields as ``key=value``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any

from precompute.api.cache import HotCache
from precompute.api.metrics import Metrics

log = logging.getLogger("precompute.api")
SUMMARY_SECONDS = 60.0


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            entry.update(fields)
        if record.exc_info:
            entry["error"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        text = record.getMessage()
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict) and fields:
            text += " " + " ".join(f"{k}={v}" for k, v in fields.items())
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return text


def configure(log_format: str) -> None:
    """Give the API's logger its own handler and format (the CLI's root format stays for everything else)."""
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    logger = logging.getLogger("precompute.api")
    logger.handlers[:] = [handler]
    logger.setLevel(logging.INFO)
    logger.propagate = False


class Summary:
    """Logs request counts once a period, and nothing while idle."""

    def __init__(self, metrics: Metrics, cache: HotCache | None, period: float = SUMMARY_SECONDS) -> None:
        self.metrics = metrics
        self.cache = cache
        self.period = period
        self._last: dict[tuple[str, int], int] = {}
        self._last_late = 0
        self._last_fallbacks = 0

    def line(self) -> dict[str, Any] | None:
        now = self.metrics.request_counts()
        delta = {k: v - self._last.get(k, 0) for k, v in now.items() if v != self._last.get(k, 0)}
        self._last = now
        late = self.metrics.total(self.metrics.late)
        fallbacks = self.metrics.total(self.metrics.fallbacks)
        fields: dict[str, Any] = {
            "requests": sum(delta.values()),
            "by_source_status": {f"{s}:{c}": n for (s, c), n in sorted(delta.items())},
            "late": late - self._last_late,
            "fallbacks": fallbacks - self._last_fallbacks,
        }
        self._last_late, self._last_fallbacks = late, fallbacks
        if self.cache is not None:
            fields["cache_hit_ratio"] = round(self.cache.hit_ratio, 4)
        if self.metrics.labels:  # several models: one line each
            fields["model"] = self.metrics.model
        return fields if fields["requests"] else None

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.period)
            started = time.perf_counter()
            fields = self.line()
            if fields is not None:
                fields["summary_ms"] = round((time.perf_counter() - started) * 1000, 3)
                log.info("requests in the last %.0f s", self.period, extra={"fields": fields})
