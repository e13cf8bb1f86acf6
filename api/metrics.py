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
    """A labelled Counter's children by label values, each resolved once by ``labels()``; ``prefix``: the
    values of the labels every child has (the model's name, with several models)."""

    def __init__(self, counter: Counter, prefix: tuple[str, ...] = ()) -> None:
        super().__init__()
        self.counter = counter
        self.prefix = prefix

    def __missing__(self, values: tuple[str | int, ...]) -> Counter:
        child = self[values] = self.counter.labels(*self.prefix, *(str(v) for v in values))
        return child


class ScrapeTime:
    """The custom collector for numbers owned elsewhere (cache, batcher, live version), read when scraped.

    A source added for a model (several models served) has ``model="<name>"`` added to its samples, and the
    families of the same name from every model are merged into one, as the text format wants."""

    def __init__(self) -> None:
        self.sources: list[tuple[str | None, Families]] = []

    def collect(self) -> Iterable[Metric]:
        if all(model is None for model, _ in self.sources):
            for _, source in self.sources:
                yield from source()
            return
        merged: dict[str, Metric] = {}
        for model, source in self.sources:
            for family in source():
                target = merged.get(family.name)
                if target is None:
                    target = merged[family.name] = Metric(family.name, family.documentation, family.type)
                extra = {"model": model} if model is not None else {}
                target.samples.extend(sample._replace(labels={**extra, **sample.labels}) for sample in family.samples)
        yield from merged.values()


class _Exposed:
    """The registry as ``/metrics`` renders it: without the ``*_created`` samples (see the module docstring)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry

    def collect(self) -> Iterable[Metric]:
        for family in self.registry.collect():
            # collect() builds new families each time: trimming them changes nothing kept.
            family.samples = [s for s in family.samples if not s.name.endswith("_created")]
            yield family


class Instruments:
    """The Counters and Histograms of one registry, shared by every model an app serves. With ``labelled``
    (several models) each has the label ``model`` first; with one model none has it, so that a single-model
    exposition is what it always was. Each model counts through its own :class:`Metrics`."""

    def __init__(self, registry: CollectorRegistry | None = None, labelled: bool = False) -> None:
        self.registry = registry = registry if registry is not None else CollectorRegistry()
        self.labelled = labelled
        first = ("model",) if labelled else ()
        self.requests = Counter(
            "precompute_requests_total",
            "Requests answered, by where the answer came from and HTTP status.",
            (*first, "source", "status"),
            registry=registry,
        )
        self.request_seconds = Histogram(
            "precompute_request_seconds",
            "Time to answer a request, from routing to response.",
            first,
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.store_seconds = Histogram(
            "precompute_store_read_seconds",
            "Time of one store read (a key or a batch of keys).",
            first,
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.model_seconds = Histogram(
            "precompute_model_call_seconds",
            "Time of one model call on a batch of online requests.",
            first,
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.batch_size = Histogram(
            "precompute_batch_size", "Online requests per model call.", first, buckets=BATCH_BUCKETS, registry=registry
        )
        self.fallbacks = Counter(
            "precompute_fallback_total",
            "Requests sent to the online model, by reason.",
            (*first, "reason"),
            registry=registry,
        )
        self.late = Counter(
            "precompute_late_total",
            "Online requests the model could not answer in time, by cause.",
            (*first, "cause"),
            registry=registry,
        )
        self.writebacks = Counter(
            "precompute_writeback_total",
            "Online answers written back into the store.",
            (*first, "outcome"),
            registry=registry,
        )
        self.auth_failures = Counter(
            "precompute_auth_failures_total", "Requests refused for a missing or wrong token.", first, registry=registry
        )
        self.misses = Counter(
            "precompute_misses_total",
            "Off-grid keys answered: counted in memory, dropped (memory bound), flushed or refused (store cap).",
            (*first, "outcome"),
            registry=registry,
        )
        self.miss_flush_failures = Counter(
            "precompute_misses_flush_failures_total",
            "Flushes of the counted misses the store refused.",
            first,
            registry=registry,
        )
        self.scrape_time = ScrapeTime()
        registry.register(self.scrape_time)
        # What render() writes out; with several workers, api/workers.py puts all of theirs here.
        self.exposed: Collector = _Exposed(registry)

    def render(self) -> bytes:
        """The Prometheus text exposition (:data:`CONTENT_TYPE`)."""
        return generate_latest(self.exposed)


class Metrics:
    """What one model counts, into :class:`Instruments` (new ones, with their own registry, unless given;
    ``model``: the model's name, which labels its samples when the instruments are labelled)."""

    def __init__(
        self, registry: CollectorRegistry | None = None, *, shared: Instruments | None = None, model: str = ""
    ) -> None:
        self.shared = shared = shared if shared is not None else Instruments(registry)
        self.registry = shared.registry
        self.model = model
        self.labels = labels = {"model": model} if shared.labelled else {}
        prefix = (model,) if shared.labelled else ()
        self.requests = shared.requests
        self.fallbacks = shared.fallbacks
        self.late = shared.late
        self.writebacks = shared.writebacks
        self.misses = shared.misses
        self.request_seconds = shared.request_seconds.labels(*prefix) if prefix else shared.request_seconds
        self.store_seconds = shared.store_seconds.labels(*prefix) if prefix else shared.store_seconds
        self.model_seconds = shared.model_seconds.labels(*prefix) if prefix else shared.model_seconds
        self.batch_size = shared.batch_size.labels(*prefix) if prefix else shared.batch_size
        self.auth_failures = shared.auth_failures.labels(*prefix) if prefix else shared.auth_failures
        self.miss_flush_failures = shared.miss_flush_failures.labels(*prefix) if prefix else shared.miss_flush_failures
        self._requests = _Children(self.requests, prefix)
        self._fallbacks = _Children(self.fallbacks, prefix)
        self._late = _Children(self.late, prefix)
        # Resolved up front: they are exported at 0 before the first write-back, and the write-back thread
        # then only reads this dict.
        self._writebacks = {o: self.writebacks.labels(*prefix, o) for o in ("written", "skipped", "failed")}
        self._misses = {o: self.misses.labels(*prefix, o) for o in ("counted", "dropped", "flushed", "refused")}
        self._labelled = bool(labels)

    @property
    def scrape_time(self) -> ScrapeTime:
        return self.shared.scrape_time

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
        """Families read from their owner at every scrape (labelled with this model's name, with several)."""
        self.shared.scrape_time.sources.append((self.model if self._labelled else None, families))

    def render(self) -> bytes:
        """The Prometheus text exposition (:data:`CONTENT_TYPE`) of every model."""
        return self.shared.render()

    def value(self, name: str, **labels: str) -> float:
        """One of this model's samples' value as ``/metrics`` shows it (0 when it has none yet)."""
        value = self.registry.get_sample_value(name, {**self.labels, **labels})
        return 0.0 if value is None else value

    def mine(self, counter: Counter) -> Iterable[tuple[dict[str, str], float]]:
        """This model's ``*_total`` samples of ``counter``: (labels, value)."""
        for family in counter.collect():
            for sample in family.samples:
                if sample.name.endswith("_total") and (not self._labelled or sample.labels["model"] == self.model):
                    yield sample.labels, sample.value

    def request_counts(self) -> dict[tuple[str, int], int]:
        """This model's requests so far by (source, status), for the summary log line."""
        return {(labels["source"], int(labels["status"])): int(value) for labels, value in self.mine(self.requests)}

    def total(self, counter: Counter) -> int:
        """This model's samples of ``counter`` summed over their labels."""
        return int(sum(value for _, value in self.mine(counter)))


def gauge(name: str, help: str, value: float | None = None, labels: Mapping[str, str] | None = None) -> Metric:
    """A gauge family with one sample (``value``, with ``labels`` if any), or none when ``value`` is None."""
    family = GaugeMetricFamily(name, help, labels=list(labels) if labels else None)
    if value is not None:
        family.add_metric(list(labels.values()) if labels else [], value)
    return family


def counter(name: str, help: str, value: float) -> Metric:
    """A counter family with one sample, for a count kept by its owner (``name`` ends in ``_total``)."""
    return CounterMetricFamily(name, help, value=value)
