"""Several worker processes on one port: ``[serve] workers = N`` (or ``--workers N``; ``"auto"``: one per core).

The supervisor (the ``precompute serve`` process) binds the socket once and runs uvicorn's process manager,
which spawns N workers, forwards SIGTERM and SIGINT to them and replaces a worker that dies. A worker gets
its app through an import string (:func:`app`), so what the supervisor knows reaches it through the
environment: the config files (``PRECOMPUTE_CONFIG``: the job configs or the serve file, precompute/served.py;
each worker reads them itself, with the same environment overrides), the number of workers
(``PRECOMPUTE_WORKERS``), and ``PROMETHEUS_MULTIPROC_DIR``, a private directory the supervisor creates
before the first worker starts and removes when it stops. With one worker none of this runs: api/server.py
serves in-process, as before.

``/metrics`` and ``/readyz`` answer for every worker, whichever one takes the request:

* Counters and histograms counted as they happen (requests, latencies, fallbacks, ...) are kept by
  ``prometheus_client`` in one mmap file per process; ``/metrics`` adds up all the files, those of workers
  that died included, so no total goes down when a worker is killed and replaced.
* The scrape-time families (caches, batcher, live version: the owners' ``families()``) live in each
  process. :class:`Published` copies them into multiprocess metrics every :data:`PUBLISH_SECONDS`: counts
  as Counters, by their increase since the last copy (so a dead worker's last copy stays in the totals, and
  they never go down); states as Gauges over the live workers (:data:`GAUGE_MODES`: sizes and queues
  added up, ``store_up`` the lowest, the live version and modes the highest). They are therefore at most
  :data:`PUBLISH_SECONDS` old, and a worker killed with SIGKILL takes the counts of its last period with it
  (a graceful stop copies them a last time). ``precompute_ready`` and ``precompute_cache_hit_ratio`` are
  computed when scraped, from all workers.
* Readiness: every period each worker writes ``ready-PID.json`` (ready or not, and when). ``/readyz`` is
  200 only when N live workers are ready (this one as it is now; each other by a file at most
  :data:`FRESH_SECONDS` old whose pid exists), else 503 saying "1 of 2 workers ready". With several models
  the file also says which models the worker has ready, and ``precompute_ready{model=...}`` counts those.

Memory: each worker holds its own caches and, with the online fallback, its own copy of the model.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
import re
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from prometheus_client import Counter, Gauge
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

from precompute.api.metrics import Instruments, gauge

if TYPE_CHECKING:
    from starlette.applications import Starlette

    from precompute.served import Served

CONFIG_ENV = "PRECOMPUTE_CONFIG"
WORKERS_ENV = "PRECOMPUTE_WORKERS"
METRICS_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"
#: How often a worker copies its scrape-time families and its readiness into the shared directory: the
#: most those numbers can lag behind the worker.
PUBLISH_SECONDS = 1.0
#: A readiness file older than this does not count (its worker is stuck, or gone without a trace).
FRESH_SECONDS = 5.0

GaugeMode = Literal["livesum", "livemin", "livemax"]
#: How a scrape-time gauge adds up over the live workers; any other gauge (a size, a queue) is summed.
GAUGE_MODES: dict[str, GaugeMode] = {
    "precompute_store_up": "livemin",  # 0 while any worker cannot read the store
    "precompute_live_version_info": "livemax",  # every version some worker serves (two during a flip)
    "precompute_fallback_mode": "livemax",  # the same in every worker
    "precompute_batch_limit": "livemax",  # the largest worker's limit
}
#: Computed across workers when scraped, never published per worker.
COMPUTED = frozenset({"precompute_ready", "precompute_cache_hit_ratio"})
#: Families whose samples at 0 are left out: a version no worker serves any more.
SHOWN_WHEN_SET = frozenset({"precompute_live_version_info"})
_LIVE_GAUGE_FILE = re.compile(r"gauge_live[a-z]+_(\d+)\.db$")

State = dict[str, Any]
log = logging.getLogger("precompute.api")


def supervise(served: Served, host: str, port: int, workers: int) -> None:
    """Serve with ``workers`` processes until SIGTERM or SIGINT, which drain every worker; then return."""
    import uvicorn
    from uvicorn.config import STARTUP_FAILURE
    from uvicorn.supervisors.multiprocess import Multiprocess

    from precompute.api.logs import configure

    directory = tempfile.mkdtemp(prefix="precompute-metrics-")
    # Before any worker starts, hence before any of them imports prometheus_client.
    os.environ.update({CONFIG_ENV: served.to_env(), WORKERS_ENV: str(workers), METRICS_DIR_ENV: directory})
    serve = served.serve
    configure(serve.log_format)
    settings = uvicorn.Config(
        f"{__name__}:app",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        access_log=serve.access_log,
        loop=serve.loop,
        log_level="info",
        timeout_graceful_shutdown=math.ceil(serve.shutdown_seconds),
    )
    try:
        supervisor = Multiprocess(settings, sockets=[settings.bind_socket()])
        supervisor.run()
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    if any(process.exitcode == STARTUP_FAILURE for process in supervisor.processes):
        sys.exit(STARTUP_FAILURE)  # the exit status uvicorn gives one worker whose start-up failed


def app() -> Starlette:
    """One worker's app (uvicorn calls this in each worker process), from what :func:`supervise` set."""
    from precompute.api.app import create_served_app
    from precompute.api.logs import configure
    from precompute.served import from_env

    served = from_env(os.environ[CONFIG_ENV])
    configure(served.serve.log_format)
    workers = Workers(Path(os.environ[METRICS_DIR_ENV]), int(os.environ[WORKERS_ENV]))
    return create_served_app(served, workers=workers)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, as another user's
        return True
    return True


class Workers:
    """This worker's part in the workers' shared ``/metrics`` and ``/readyz`` (the module docstring)."""

    def __init__(self, directory: Path, expected: int, period: float = PUBLISH_SECONDS) -> None:
        self.directory = directory
        self.expected = expected
        self.period = period
        self.pid = os.getpid()
        self.parent = os.getppid()
        self.header = {"X-Worker": str(self.pid)}  # on /readyz and /metrics: which worker answered
        self._own: Callable[[], State] = lambda: {"ready": False}
        self._models: Callable[[], dict[str, bool]] | None = None
        self._published: Published | None = None
        self._task: asyncio.Task[None] | None = None

    def bind(
        self, instruments: Instruments, own: Callable[[], State], models: Callable[[], dict[str, bool]] | None = None
    ) -> None:
        """``own``: this worker's readiness state (``/readyz``'s body before :meth:`combine`); ``models``:
        with several models, which are ready in this worker."""
        self._own = own
        self._models = models
        self._published = Published(instruments.scrape_time.collect)
        instruments.exposed = Exposition(self)

    # -- readiness ------------------------------------------------------------------------------------

    def state(self) -> State:
        """``/readyz``'s body: this worker's state, ready only when every worker is."""
        return self.combine(self._own())

    def combine(self, state: State) -> State:
        ready = self.ready_workers(bool(state["ready"]))
        state["workers"] = {"expected": self.expected, "ready": ready, "worker": self.pid}
        if state["ready"] and ready < self.expected:
            state["ready"] = False
            state["error"] = f"{ready} of {self.expected} workers ready"
        return state

    def ready_workers(self, own_ready: bool, model: str | None = None) -> int:
        """Workers ready now (``model`` ready in, with several models): this one as it is, each other one by
        its file (fresh, its pid alive)."""
        count = int(own_ready)
        now = time.time()
        for path in self.directory.glob("ready-*.json"):
            try:
                entry = json.loads(path.read_text())
            except (OSError, ValueError):  # removed meanwhile (its worker stopped)
                continue
            pid = entry.get("pid")
            ready = entry.get("ready") if model is None else entry.get("models", {}).get(model)
            if pid == self.pid or not isinstance(pid, int) or not ready:
                continue
            if now - float(entry.get("at", 0)) <= FRESH_SECONDS and alive(pid):
                count += 1
        return count

    def models_ready(self) -> dict[str, bool] | None:
        """With several models: each one's readiness over every worker (ready in all of them), else None."""
        if self._models is None:
            return None
        return {name: self.ready_workers(ready, name) == self.expected for name, ready in self._models().items()}

    def _write_readiness(self, ready: bool) -> None:
        path = self.directory / f"ready-{self.pid}.json"
        partial = path.with_suffix(".partial")  # written whole, then renamed: a reader never sees half
        entry: dict[str, Any] = {"pid": self.pid, "ready": ready, "at": time.time()}
        if self._models is not None:
            entry["models"] = self._models()
        partial.write_text(json.dumps(entry))
        os.replace(partial, path)

    # -- publishing -----------------------------------------------------------------------------------

    def publish(self) -> None:
        if self._published is not None:
            self._published.publish()
        self._write_readiness(bool(self._own()["ready"]))

    def sweep(self) -> None:
        """Forget the live gauges (and readiness) of workers that are gone, whoever stopped them."""
        for path in self.directory.iterdir():
            match = _LIVE_GAUGE_FILE.match(path.name)
            if match is not None and not alive(int(match.group(1))):
                mark_process_dead(int(match.group(1)), str(self.directory))  # type: ignore[no-untyped-call]
            elif path.name.startswith("ready-") and path.suffix == ".json":
                pid = path.stem.removeprefix("ready-")
                if pid.isdigit() and not alive(int(pid)):
                    path.unlink(missing_ok=True)

    async def start(self) -> None:
        self.publish()  # ready now, not a period later
        self._task = asyncio.create_task(self._loop(), name="precompute-workers-publish")

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.period)
            self.publish()
            if os.getppid() != self.parent:  # the supervisor is gone (SIGKILL): stop as on SIGTERM, draining
                log.warning("the supervisor (pid %d) is gone: stopping", self.parent)
                signal.raise_signal(signal.SIGTERM)
                return

    async def stop(self) -> None:
        """After the app has drained: the last counts copied, and this worker no longer counted as ready."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._published is not None:
            self._published.publish()
        (self.directory / f"ready-{self.pid}.json").unlink(missing_ok=True)


class Published:
    """A worker's scrape-time families, copied into multiprocess metrics (never rendered from here)."""

    def __init__(self, families: Callable[[], Iterable[Metric]]) -> None:
        self.families = families
        self._counters: dict[str, Counter] = {}
        self._gauges: dict[str, Gauge] = {}
        self._counted: dict[tuple[str, tuple[str, ...]], float] = {}
        self._shown: dict[str, set[tuple[str, ...]]] = {}

    def publish(self) -> None:
        for family in self.families():
            if family.name in COMPUTED:
                continue
            if family.type == "counter":
                self._count(family)
            elif family.type == "gauge":
                self._show(family)

    def _count(self, family: Metric) -> None:
        for sample in family.samples:
            if not sample.name.endswith("_total"):
                continue
            names = tuple(sorted(sample.labels))
            counter = self._counters.get(family.name)
            if counter is None:
                counter = self._counters[family.name] = Counter(family.name, family.documentation, names, registry=None)
            key = (family.name, tuple(sample.labels[name] for name in names))
            increase = sample.value - self._counted.get(key, 0.0)
            if increase > 0:
                (counter.labels(*key[1]) if names else counter).inc(increase)
            self._counted[key] = sample.value

    def _show(self, family: Metric) -> None:
        shown: set[tuple[str, ...]] = set()
        for sample in family.samples:
            names = tuple(sorted(sample.labels))
            values = tuple(sample.labels[name] for name in names)
            target = self._gauge(family, names)
            (target.labels(*values) if names else target).set(sample.value)
            shown.add(values)
        gauge_ = self._gauges.get(family.name)
        for gone in self._shown.get(family.name, set()) - shown:  # e.g. the version served before
            if gauge_ is not None:
                (gauge_.labels(*gone) if gone else gauge_).set(0)
        self._shown[family.name] = shown

    def _gauge(self, family: Metric, names: tuple[str, ...]) -> Gauge:
        found = self._gauges.get(family.name)
        if found is None:
            mode = GAUGE_MODES.get(family.name, "livesum")
            found = self._gauges[family.name] = Gauge(
                family.name, family.documentation, names, registry=None, multiprocess_mode=mode
            )
        return found


class Exposition:
    """``/metrics`` in a worker: every worker's files added up, with the families computed across workers."""

    def __init__(self, workers: Workers) -> None:
        self.workers = workers

    def collect(self) -> Iterable[Metric]:
        self.workers.sweep()
        counts: dict[str | None, dict[str, float]] = {}  # by model (None: one model, no label)
        files = MultiProcessCollector(None, str(self.workers.directory))  # type: ignore[no-untyped-call]
        for family in files.collect():  # type: ignore[no-untyped-call]
            if family.name in COMPUTED:
                continue
            if family.name in SHOWN_WHEN_SET:
                family.samples = [sample for sample in family.samples if sample.value]
            if family.name in ("precompute_cache_hits", "precompute_cache_misses"):
                for sample in family.samples:
                    if sample.name.endswith("_total"):
                        by_name = counts.setdefault(sample.labels.get("model"), {})
                        by_name[family.name] = by_name.get(family.name, 0.0) + sample.value
            yield family
        models = self.workers.models_ready()
        ready: dict[str | None, float] = (
            {None: int(bool(self.workers.state()["ready"]))}
            if models is None
            else {name: int(value) for name, value in models.items()}
        )
        yield _labelled_gauge("precompute_ready", "1 when a version is live and the store answers.", ready)
        ratios: dict[str | None, float] = {}
        for model, by_name in counts.items():
            hits, looked = by_name.get("precompute_cache_hits", 0.0), sum(by_name.values())
            ratios[model] = hits / looked if looked else 0.0
        if ratios:
            yield _labelled_gauge("precompute_cache_hit_ratio", "Hot-key cache hits / lookups since start.", ratios)


def _labelled_gauge(name: str, help: str, values: dict[str | None, float]) -> Metric:
    """One sample per model (``model="<name>"``), or one without labels for the key None."""
    if list(values) == [None]:
        return gauge(name, help, values[None])
    family = GaugeMetricFamily(name, help, labels=["model"])
    for model, value in values.items():
        family.add_metric([str(model)], value)
    return family
