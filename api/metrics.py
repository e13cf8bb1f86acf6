"""Counters and histograms for ``/metrics``, through ``prometheus_client``, in one registry per app.

Two kinds of numbers:

* **Counted as they happen**: requests by source and status, the four histograms (request, store read,
  model call, batch size), fallbacks, late answers, write-backs, recorded misses and auth failures. These are
  ``prometheus_client`` Counters and Histograms in the app's own :class:`CollectorRegistry` (so that several
  apps in one process, as in the tests, never clash). They are thread-safe (the write-back thread counts its
  own outcomes). A labelled child is resolved once and kept (``labels()`` costs 0.75 us; ``inc()`` on a kept
  child 0.27 us).
* **Read at scrape time** from the objects that own them: the live version, readiness, the caches' sizes and
  hit counts, the batcher's limit and queue. Each owner has a ``families()`` method returning metric families
  (:func:`gauge`, :func:`counter`); :class:`ScrapeTime` is the custom collector that calls them, so nothing
  is counted twice and nothing costs anything between scrapes. The caches count their hits in plain ints,
  because those counts are taken on every lookup.

Names, labels and help texts are the ones the hand-written exposition had. What differs in the text: values
are written as floats (``1.0``), a labelled family's samples in the order they first appeared rather than
sorted, and integer histogram bounds as ``prometheus_client`` writes them (``le="1.0"`` for ``le="1"``, the
form Prometheus 3 normalises ``le`` to anyway). ``*_created`` series are left out: the 0.0.4 text format has
no place for them, and they would double the number of counter series.

Several worker processes (``[serve] workers``, api/workers.py) keep this layout: with
``PROMETHEUS_MULTIPROC_DIR`` set before ``prometheus_client`` is imported, the Counters and Histograms keep
their values in per-process files, and :attr:`Metrics.exposed` renders all the workers' files instead of
this registry. The scrape-time families are per process: each worker copies them into multiprocess
Counters and Gauges on a timer, which :func:`gauge`/:func:`counter` callers do not need to know about.

Measured (bench/serving.py ``--only metrics --against DIR``, in CPU time on a shared, busy 2-core VM;
docs/serving.md has the tables): what a store hit pays for its metrics, one counter and two histogram
observations, is 2.1 us in-process (median of eight runs, 1.7-3.1) against 0.34 us (0.29-0.56) for the
hand-written counters this replaced: 5.6x (5.1-7.2x). Through the whole app in-process, metrics on costs
+1.4 us per cache hit and +2.1 us per store hit over metrics off (the hand-written ones: +0.2 and +0.3), against
the 50-65 us of CPU the server spends on a request over HTTP: 2-4% where it was under 1%. Over HTTP that stays
below what the machine's noise lets wrk resolve (metrics on served 82-109% of the requests of metrics off in
six runs; the hand-written counters 85-109%). Rendering ``/metrics`` costs 0.4-0.7 ms of CPU (0.03-0.06 ms
before): under 1% of a core even scraped every 0.1 s.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Protocol

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

# Request and store latencies are sub-millisecond on a hit and up to the deadline on a fallback.
LATENCY_BUCKETS = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

Families = Callable[[], Iterable[Metric]]


class Observer(Protocol):
    """What the hot path observes into: a Histogram, or :class:`Unobserved` with metrics off."""

    def observe(self, amount: float) -> None: ...


class Unobserved:
    """A histogram nobody reads (``[serve] metrics = false``): it keeps the hit path free of a branch."""

    def observe(self, amount: float) -> None:
        pass


class _Children(dict[tuple[str | int, ...], Counter]):
    """A labelled Counter's children by label values, each resolved once by ``labels()``."""

    def __init__(self, counter: Counter) -> None:
        super().__init__()
        self.counter = counter

    def __missing__(self, values: tuple[str | int, ...]) -> Counter:
        child = self[values] = self.counter.labels(*(str(v) for v in values))
        return child


class ScrapeTime:
    """The custom collector for numbers owned elsewhere (cache, batcher, live version), read when scraped."""

    def __init__(self) -> None:
        self.sources: list[Families] = []

    def collect(self) -> Iterable[Metric]:
        for source in self.sources:
            yield from source()


class _Exposed:
    """The registry as ``/metrics`` renders it: without the ``*_created`` samples (see the module docstring)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry

    def collect(self) -> Iterable[Metric]:
        for family in self.registry.collect():
            # collect() builds new families each time: trimming them changes nothing kept.
            family.samples = [s for s in family.samples if not s.name.endswith("_created")]
            yield family


class Metrics:
    """Every number ``/metrics`` exports, in :attr:`registry` (a new one per app unless one is given)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry = registry if registry is not None else CollectorRegistry()
        self.requests = Counter(
            "precompute_requests_total",
            "Requests answered, by where the answer came from and HTTP status.",
            ("source", "status"),
            registry=registry,
        )
        self.request_seconds = Histogram(
            "precompute_request_seconds",
            "Time to answer a request, from routing to response.",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.store_seconds = Histogram(
            "precompute_store_read_seconds",
            "Time of one store read (a key or a batch of keys).",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.model_seconds = Histogram(
            "precompute_model_call_seconds",
            "Time of one model call on a batch of online requests.",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.batch_size = Histogram(
            "precompute_batch_size", "Online requests per model call.", buckets=BATCH_BUCKETS, registry=registry
        )
        self.fallbacks = Counter(
            "precompute_fallback_total", "Requests sent to the online model, by reason.", ("reason",), registry=registry
        )
        self.late = Counter(
            "precompute_late_total",
            "Online requests the model could not answer in time, by cause.",
            ("cause",),
            registry=registry,
        )
        self.writebacks = Counter(
            "precompute_writeback_total", "Online answers written back into the store.", ("outcome",), registry=registry
        )
        self.auth_failures = Counter(
            "precompute_auth_failures_total", "Requests refused for a missing or wrong token.", registry=registry
        )
        self.misses = Counter(
            "precompute_misses_total",
            "Off-grid keys answered: counted in memory, dropped (memory bound), flushed or refused (store cap).",
            ("outcome",),
            registry=registry,
        )
        self.miss_flush_failures = Counter(
            "precompute_misses_flush_failures_total",
            "Flushes of the counted misses the store refused.",
            registry=registry,
        )
        self.scrape_time = ScrapeTime()
        registry.register(self.scrape_time)
        self._requests = _Children(self.requests)
        self._fallbacks = _Children(self.fallbacks)
        self._late = _Children(self.late)
        # Resolved up front: they are exported at 0 before the first write-back, and the write-back thread
        # then only reads this dict.
        self._writebacks = {outcome: self.writebacks.labels(outcome) for outcome in ("written", "skipped", "failed")}
        self._misses = {
            outcome: self.misses.labels(outcome) for outcome in ("counted", "dropped", "flushed", "refused")
        }
        # What render() writes out; with several workers, api/workers.py puts all of theirs here.
        self.exposed: Collector = _Exposed(registry)

    # -- counting (the first one on every request) ----------------------------------------------------

    def request(self, source: str, status: int, seconds: float) -> None:
        self._requests[(source, status)].inc()
        self.request_seconds.observe(seconds)

    def fallback(self, reason: str, count: int = 1) -> None:
        self._fallbacks[(reason,)].inc(count)

    def late_answer(self, cause: str) -> None:
        self._late[(cause,)].inc()

    def writeback(self, outcome: str, count: int) -> None:
        """``written``, ``skipped`` or ``failed`` (from the write-back thread)."""
        self._writebacks[outcome].inc(count)

    def miss(self, outcome: str, count: int = 1) -> None:
        """``counted``, ``dropped`` (answers), ``flushed`` or ``refused`` (keys), see api/misses.py."""
        self._misses[outcome].inc(count)

    def miss_flush_failed(self) -> None:
        self.miss_flush_failures.inc()

    def auth_failure(self) -> None:
        self.auth_failures.inc()
        self._requests[("none", 401)].inc()

    # -- reading --------------------------------------------------------------------------------------

    def add_source(self, families: Families) -> None:
        """Families read from their owner at every scrape."""
        self.scrape_time.sources.append(families)

    def render(self) -> bytes:
        """The Prometheus text exposition (:data:`CONTENT_TYPE`)."""
        return generate_latest(self.exposed)

    def value(self, name: str, **labels: str) -> float:
        """One sample's value as ``/metrics`` shows it (0 when it has none yet)."""
        value = self.registry.get_sample_value(name, labels)
        return 0.0 if value is None else value

    def request_counts(self) -> dict[tuple[str, int], int]:
        """Requests so far by (source, status), for the summary log line."""
        return {
            (sample.labels["source"], int(sample.labels["status"])): int(sample.value)
            for family in self.requests.collect()
            for sample in family.samples
            if sample.name.endswith("_total")
        }

    @staticmethod
    def total(counter: Counter) -> int:
        """A counter's samples summed over its labels."""
        return int(sum(s.value for f in counter.collect() for s in f.samples if s.name.endswith("_total")))


def gauge(name: str, help: str, value: float | None = None, labels: Mapping[str, str] | None = None) -> Metric:
    """A gauge family with one sample (``value``, with ``labels`` if any), or none when ``value`` is None."""
    family = GaugeMetricFamily(name, help, labels=list(labels) if labels else None)
    if value is not None:
        family.add_metric(list(labels.values()) if labels else [], value)
    return family


def counter(name: str, help: str, value: float) -> Metric:
    """A counter family with one sample, for a count kept by its owner (``name`` ends in ``_total``)."""
    return CounterMetricFamily(name, help, value=value)
