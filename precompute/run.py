"""``precompute run``: score the whole request space into a new version, verify it, publish it.

Stages, each timed in the run summary::

    check    store URL and options, model and space checked on the driver; every category and range end
             scored once (a value the model rejects fails here, before anything is created); a model URI
             fetched; a local table checked against what a remote cluster can be sent
    ray      a local Ray started, or the cluster joined (bounded in time); actors planned against its resources;
             the model put in Ray's object store (see precompute.shipping: code and model travel through Ray)
    lock     the store's run lock taken; versions left by dead runs cleaned up
    misses   with [space] include_misses: the off-grid keys the API recorded, chosen (precompute.misses)
    score    Ray Data: grid ids (or table rows) -> actor pool (model loaded once per actor) -> Datasink;
             then the chosen misses, scored on the driver as the API scores them online
    verify   rows written == space size, store count where cheap, golden rows read back and compared;
             then the record's loaded_at is set: a concurrent `precompute refresh` writes into the version
             from then on (precompute.refresh)
    drift    a sample of keys read from the new and the live version and compared (precompute.drift); over
             a [verify] limit the version is kept as 'refused' and nothing is published (unless forced)
    publish  one compare-and-swap of the live alias
    gc       versions beyond [store] keep_versions dropped, failed and unfinished ones too; recorded misses
             the grid now covers (or that no longer fit the space) cleared

Any failure after the version is begun marks it failed and drops its rows; the live version never changes
unless every stage passed. The :class:`RunSummary` is filled in as the stages go, so that a failed or
refused run still has one to report (``--summary-json``, ``--report``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from precompute import cluster, drift, misses, shipping
from precompute.adapters import backend_class, open_backend
from precompute.cluster import ClusterUnavailable, Node
from precompute.config import Config, ConfigError
from precompute.model import Model, ModelError, fingerprint, grid_inputs, is_uri
from precompute.model import error_reason as _model_reason
from precompute.plan import IO_TASK_CPUS, ActorPlan, plan_actors
from precompute.scoring import GridScorer, TableScorer, grid_keys, table_columns
from precompute.shipping import ModelSource
from precompute.sink import StoreDatasink, WriteReport
from precompute.space import Categorical, GridSpace, TableSpace
from precompute.store import Backend, RunLock, State, StoreError, VersionRecord, Versions
from precompute.values import NonFiniteOutput, encode_values

log = logging.getLogger("precompute")

# Where the store is, as the Google and AWS SDKs read it from the environment. Ray workers get the driver's
# values even when Ray was started earlier or runs on other machines. Secrets are never forwarded: workers
# use their own credentials (instance roles, workload identity, or their own environment).
FORWARDED_ENV = (
    "BIGTABLE_EMULATOR_HOST",
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_DYNAMODB",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
    "TF_CPP_MIN_LOG_LEVEL",
)


class VerificationFailed(Exception):
    """The written version does not match the space; it was not published."""


class DriftRefused(Exception):
    """The drift gate refused the new version: it is kept as 'refused', and nothing was published."""


@dataclass
class RunSummary:
    """What a run did, filled in stage by stage: complete for a published or refused run, as far as it got
    for a failed one. :meth:`to_dict` is the summary JSON and what the HTML report draws."""

    outcome: str = "running"  # then "published", "refused" or "failed"
    version: str | None = None
    previous: str | None = None  # the live version before the run (the one compared with)
    rows: int = 0
    seconds: dict[str, float] = field(default_factory=dict)
    model: str = ""  # the model's fingerprint
    model_path: str = ""
    store: str = ""
    config: str = ""
    space: str = ""
    plan: str = ""
    started_at: float = field(default_factory=time.time)
    error: str | None = None
    dropped: list[str] = field(default_factory=list)
    nodes: list[dict[str, Any]] = field(default_factory=list)  # per node: id, address, actors, rows scored/written
    write_task_gpus: int = 0  # GPUs held by write tasks, added up (they never ask for one)
    verification: dict[str, Any] | None = None
    gate: dict[str, Any] = field(default_factory=dict)
    drift: dict[str, Any] | None = None  # precompute.drift's Diff of the live version and this one
    misses_included: int = 0  # recorded misses scored into this version ([space] include_misses)
    misses: dict[str, Any] | None = None  # precompute.misses.Selection.to_dict(): what became of the others

    @property
    def rows_per_second(self) -> float:
        return self.rows / max(self.seconds.get("total", 0.0), 1e-9)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "rows_per_second": round(self.rows_per_second, 1)}

    def render(self) -> str:
        stages = "  ".join(f"{name} {secs:.2f}s" for name, secs in self.seconds.items())
        first = {
            "published": f"published version {self.version} (previous: {self.previous or 'none'})",
            "refused": f"refused version {self.version}: kept for review, {self.previous} stays live",
        }.get(self.outcome, f"run {self.outcome}: version {self.version or '-'}")
        lines = [
            first,
            f"  rows      {self.rows:,} at {self.rows_per_second:,.0f} rows/s end to end",
            f"  stages    {stages}",
            f"  model     {self.model}",
            f"  store     {self.store}",
            f"  actors    {self.plan}",
        ]
        for node in self.nodes:
            lines.append(
                f"  node      {node['id'][:8]} ({node['address']}): {node['actors']} actor(s), "
                f"{node['rows_scored']:,} rows scored, {node['rows_written']:,} written"
            )
        if self.gate:
            reasons = "; ".join(self.gate.get("reasons", []))
            lines.append(f"  gate      {self.gate['verdict']}{': ' + reasons if reasons else ''}")
        if self.drift:
            d = self.drift
            lines.append(
                f"  drift     against {d['version_a']}: {d['sample']:,} sampled keys, {d['keys_read']:,} read in "
                f"{d['seconds']:.2f}s; only in live {d['keys_only_in_a']:,}, only in new {d['keys_only_in_b']:,}"
            )
            for o in d["outputs"]:
                lines.append(
                    f"            {o['output']}: PSI {o['psi']:.4f}, {o['changed_fraction']:.2%} of {o['keys']:,} "
                    f"changed, mean {o['mean']['a']:.6g} -> {o['mean']['b']:.6g}"
                )
        if self.misses is not None:
            m = self.misses
            lines.append(
                f"  misses    {m['included']:,} of {m['recorded']:,} recorded included (answered online at least "
                f"{m['min_count']} times); {m['below_min_count']:,} below that, {m['over_max']:,} over misses_max, "
                f"{m['in_grid'] + m['not_in_space']:,} no longer off the grid ({m['cleared']:,} cleared)"
            )
        if self.dropped:
            lines.append(f"  gc        dropped {', '.join(self.dropped)}")
        return "\n".join(lines)


class _Stages:
    def __init__(self, summary: RunSummary) -> None:
        self.seconds = summary.seconds
        self.started = time.perf_counter()

    @contextlib.contextmanager
    def stage(self, name: str, message: str) -> Iterator[None]:
        log.info("[%s] %s", name, message)
        start = time.perf_counter()
        try:
            yield
        finally:  # a failed stage is timed too: the report shows where the time went
            self.seconds[name] = round(self.seconds.get(name, 0.0) + time.perf_counter() - start, 3)

    def finish(self) -> None:
        self.seconds.pop("total", None)  # last, after every stage
        self.seconds["total"] = round(time.perf_counter() - self.started, 3)


@dataclass(frozen=True)
class _Job:
    """What the checks and Ray's start decided, before anything is created in the store."""

    model: Model
    model_id: str
    source: ModelSource
    plan: ActorPlan
    nodes: list[Node]
    runtime_env: dict[str, Any]  # of every task and actor: the package (unless ship_code = false), env vars
    force: bool = False  # publish whatever the drift gate says


def run(config: Config, verbose: bool = False, *, force: bool = False, summary: RunSummary | None = None) -> RunSummary:
    """Run the whole job. Raises ConfigError, ModelError, ClusterUnavailable, LockHeld, StoreError,
    VerificationFailed or DriftRefused; every check that can fail without touching the store runs before the
    lock. ``force`` publishes whatever the drift gate says (the figures are still computed and recorded).
    ``summary``, when given, is filled in as the run goes, also when it fails."""
    summary = summary if summary is not None else RunSummary()
    summary.config, summary.store = str(config.source), config.store_url.redacted()
    summary.model_path, summary.space = config.model.location, _space_size(config)
    stages = _Stages(summary)
    try:
        with stages.stage("check", f"checking the store URL {config.store_url}"):
            cluster.resolve(config.run.ray_address)  # a Ray Client address is refused before anything else
            backend = _open_store(config)
        try:
            (local, model_id, model), ray_started, plan = _check_and_start_ray(config, verbose, stages, summary)
            summary.plan = plan.describe()
            # A Ray this run started on this machine runs its workers as children of this process: they have its
            # environment and import its code. Only a cluster that was already there is sent the package.
            own_ray = ray_started and not config.run.ray_address
            try:
                with stages.stage("ray", "sending the code and the model to the cluster"):
                    nodes = cluster.nodes()
                    if not config.run.ship_code and not own_ray:
                        shipping.check_installed([node.id for node in nodes])
                    source = shipping.ship_model(local, model_id, config.model.uri)
                    env = {name: os.environ[name] for name in FORWARDED_ENV if name in os.environ}
                    runtime_env = {} if own_ray else shipping.runtime_env(config.run.ship_code, env)
                    job = _Job(model, model_id, source, plan, nodes, runtime_env, force)
                return _locked_run(config, job, backend, stages, summary)
            finally:
                if ray_started:
                    import ray

                    ray.shutdown()
        finally:
            backend.close()
    except BaseException as exc:
        if summary.outcome == "running":
            summary.outcome = "failed"
            summary.error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        raise
    finally:
        stages.finish()


def _open_store(config: Config) -> Backend:
    """The backend, its URL and options checked (scheme, options, whether Ray workers can reach it)."""
    url = config.store_url
    cls = backend_class(url)
    if not cls.shared_across_processes:
        raise ConfigError(
            f"[store] url: {url.scheme}:// lives inside one process and Ray workers cannot write to it. "
            "Fix: use sqlite:///path.db (or a server backend)"
        )
    if cls.local_only and config.run.ray_address:
        raise ConfigError(
            f"[store] url: {url.scheme}:// is a file on this machine, so a Ray cluster's workers cannot write "
            "to it. Fix: use redis://, bigtable:// or dynamodb://, or leave ray_address unset"
        )
    return open_backend(url)


def _locked_run(config: Config, job: _Job, backend: Backend, stages: _Stages, summary: RunSummary) -> RunSummary:
    url = config.store_url
    versions = Versions(backend)
    with RunLock(backend, ttl_s=config.store.lock_ttl_seconds) as lock:
        with stages.stage("lock", f"run lock taken on {url}"):
            stale = [r.version for r in versions.records() if r.state in (State.WRITING, State.FAILED)]
            for version in stale:
                versions.drop(version)
            if stale:
                log.info("[lock] removed %d unfinished version(s) left by earlier runs: %s", len(stale), stale)
        meta: dict[str, object] = {
            "model": job.model_id,
            "model_path": config.model.location,
            "config": str(config.source),
        }
        chosen = _choose_misses(config, backend, stages, summary)
        if chosen is not None:
            meta["misses_included"] = len(chosen.included)  # the API reads off-grid keys from such a version
        # The announced size lets a backend size its layout (Redis buckets); a table's size is not counted yet.
        expected = config.space.size if isinstance(config.space, GridSpace) else None
        if expected is not None and chosen is not None:
            expected += len(chosen.included)
        record = versions.begin(meta, expected_rows=expected)
        summary.version = record.version
        log.info("[begin] writing new version %s", record.version)
        try:
            return _score_verify_publish(config, job, backend, versions, record, lock, stages, summary, chosen)
        except DriftRefused:
            raise  # complete and kept, as 'refused'
        except BaseException as exc:
            reason = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            try:
                versions.abort(record, reason)
                log.error(
                    "run failed; the rows of version %s were dropped (its record stays, marked failed, until the "
                    "next run or `precompute gc`); the live version is unchanged",
                    record.version,
                )
            except StoreError as cleanup:
                log.error(
                    "run failed and version %s could not be dropped now (%s): the next run or `precompute gc` "
                    "removes it; the live version is unchanged",
                    record.version,
                    cleanup,
                )
            raise


def _score_verify_publish(
    config: Config,
    job: _Job,
    backend: Backend,
    versions: Versions,
    record: VersionRecord,
    lock: RunLock,
    stages: _Stages,
    summary: RunSummary,
    chosen: misses.Selection | None = None,
) -> RunSummary:
    plan = job.plan
    where = "; ".join(node.describe() for node in job.nodes)
    message = f"scoring {_space_size(config)} into {record.version}: {plan.describe()}, on {len(job.nodes)} node(s): "
    with stages.stage("score", message + where):
        sink = StoreDatasink(config.store.url, record.version)
        # Read (or, a local table on a cluster, sent) once: the count and the golden rows use it too.
        table = _read_table(config, config.space) if isinstance(config.space, TableSpace) else None
        try:
            _pipeline(config, job, table).write_datasink(sink, **_write_args(job, backend))
        except Exception as exc:
            raise _cause(exc, config.run.stall_timeout_s) from exc
        written = sink.rows_written
        summary.nodes = _per_node(job.nodes, sink.reports)
        summary.write_task_gpus = sum(report.gpus for report in sink.reports)
        expected = _expected_rows(config, table)
    golden_misses: dict[bytes, bytes] = {}
    if chosen is not None and chosen.included and isinstance(config.space, GridSpace):
        with stages.stage("score", f"scoring {len(chosen.included):,} recorded misses into {record.version}"):
            rows = misses.score(job.model, config.space, chosen, config.run.batch_size)
            backend.write(record.version, rows)
        written += len(rows)
        expected += len(rows)
        golden_misses = dict(rows[:: max(1, len(rows) // 8)][:8])  # a few of them checked like the grid's
    if chosen is not None:
        summary.misses_included = len(chosen.included) - chosen.non_finite
        summary.misses = chosen.to_dict()
    summary.rows = written
    with stages.stage("verify", f"checking {written:,} written rows"):
        summary.verification = _verify(
            config, job.model, table, backend, record.version, written, expected, golden_misses
        )
    # Verified as loaded: from now on a concurrent `precompute refresh` writes into this version too (its
    # answers would otherwise be overwritten by this run's rows, and would move the counts just checked).
    record.meta["loaded_at"] = time.time()
    backend.put_record(record.version, record.to_bytes())
    live = versions.live()
    summary.previous = live
    with stages.stage("drift", f"comparing a sample of {record.version} with the live version {live or '(none)'}"):
        reasons = _drift(config, versions, record, live, table, expected, summary, job.force)
    if reasons and not job.force:
        versions.refuse(record, written, reasons)
        summary.outcome = "refused"
        with stages.stage("gc", "dropping older refused versions"):
            summary.dropped = versions.gc(config.store.keep_versions)
        _keep_summary(backend, record, summary)
        raise DriftRefused(
            f"{'; '.join(reasons)}. Version {record.version} is kept as refused: compare it with "
            f"`precompute diff {live} {record.version}`, then publish it with `precompute publish {record.version}` "
            "or fix the model or data and run again"
        )
    with stages.stage("publish", f"publishing {record.version}"):
        _await_refreshes(backend, live, record.version)
        if lock.lost:
            raise StoreError(f"the run lock was lost ({lock.why_lost}); not publishing")
        versions.mark_ready(record, written)
        summary.previous = versions.publish(record)
    with stages.stage("gc", f"keeping {config.store.keep_versions} published version(s)"):
        summary.dropped = versions.gc(config.store.keep_versions)
        if chosen is not None:  # only now: a failed or refused run leaves the recorded misses as they were
            misses.clear_stale(backend, chosen)
            summary.misses = chosen.to_dict()
    summary.outcome = "published"
    _keep_summary(backend, record, summary)
    return summary


def _choose_misses(config: Config, backend: Backend, stages: _Stages, summary: RunSummary) -> misses.Selection | None:
    """The recorded misses this run includes (``[space] include_misses``), or None when it includes none."""
    if not config.misses.include or not isinstance(config.space, GridSpace):
        return None
    with stages.stage("misses", f"reading the misses recorded in {config.store_url}"):
        chosen = misses.select(backend, config.space, config.misses)
    summary.misses = chosen.to_dict()
    log.info(
        "[misses] %d recorded, %d included (answered at least %d times), %d below that, %d over misses_max",
        chosen.recorded,
        len(chosen.included),
        chosen.min_count,
        chosen.below_min_count,
        chosen.over_max,
    )
    return chosen


def _await_refreshes(backend: Backend, live: str | None, version: str) -> None:
    """A `precompute refresh` holding answers for this version (kept until loaded_at) writes them before the
    flip: wait for it, a few seconds at most (precompute.refresh.wait_for_refreshes)."""
    from precompute.refresh import wait_for_refreshes

    late = wait_for_refreshes(backend, live, version)
    if late:
        log.warning("[publish] refresh %s has not written its answers for %s yet; publishing anyway", late, version)


def _keep_summary(backend: Backend, record: VersionRecord, summary: RunSummary) -> None:
    """The summary into the version's record (``precompute versions --json`` shows it), stages timed so far."""
    record.meta["summary"] = summary.to_dict()
    backend.put_record(record.version, record.to_bytes())


def _drift(
    config: Config,
    versions: Versions,
    record: VersionRecord,
    live: str | None,
    table: Any,
    rows: int,
    summary: RunSummary,
    force: bool,
) -> list[str]:
    """Compare the new version with the live one on a sample of keys; the gate's reasons to refuse it."""
    limits = config.verify
    gate: dict[str, Any] = {
        "max_drift": limits.max_drift,
        "max_changed_fraction": limits.max_changed_fraction,
        "verdict": "skipped",
        "reasons": [],
    }
    summary.gate = gate
    if limits.sample == 0:
        gate["reasons"] = ["[verify] sample = 0: no comparison"]
        return []
    keys = _drift_sample(config, table, rows)
    record.meta["sample_keys"] = drift.recorded_sample(keys)
    if live is None:
        gate["reasons"] = ["nothing is live yet: the first version passes"]
        return []
    kept = versions.get(live).meta.get("sample_keys", [])  # keys only the live version may hold
    size = config.space.size if isinstance(config.space, GridSpace) else 0  # a table's sample may hold departed keys
    diff = drift.compare(
        versions.backend,
        live,
        record.version,
        drift.merge(keys, kept),
        space_size=size,
        rel_tol=limits.changed_rel_tol,
        abs_tol=limits.changed_abs_tol,
    )
    summary.drift = diff.to_dict()
    reasons = drift.gate(diff, limits.max_drift, limits.max_changed_fraction)
    unlimited = limits.max_drift is None and limits.max_changed_fraction is None
    gate["reasons"] = reasons or (["no [verify] limit is set: figures only"] if unlimited else [])
    gate["verdict"] = ("forced" if force else "refused") if reasons else "passed"
    record.meta["drift"] = {**diff.brief(), "verdict": gate["verdict"]}
    log.info("[drift] %s", diff.render().replace("\n", "\n        "))
    return reasons


def _space_size(config: Config) -> str:
    space = config.space
    return f"{space.size:,} grid keys" if isinstance(space, GridSpace) else f"the table {list(space.paths)}"


def _check_model(config: Config, stages: _Stages, summary: RunSummary) -> tuple[Path, str, Model]:
    """The model (fetched, if given by URI) loaded on the driver and checked against the space."""
    with stages.stage("check", f"checking model {config.model.location} against the request space"):
        local = config.model.local_path()
        model_id = fingerprint(local)
        summary.model = model_id
        model = Model(local, config.model.signature, config.model.outputs)
        if isinstance(config.space, GridSpace):
            grid_inputs(config.space, model.signature)
            _probe(config.space, model)
        else:
            table_columns(config.space, model.signature)
            _check_table(config, config.space)
        return local, model_id, model


def _check_and_start_ray(
    config: Config, verbose: bool, stages: _Stages, summary: RunSummary
) -> tuple[tuple[Path, str, Model], bool, ActorPlan]:
    """The model check (in a daemon thread: an interrupted run does not wait for it) beside Ray's start or
    join: each takes seconds (TensorFlow's import and the model's load; Ray's processes), mostly on different
    cores. A failed check is reported before a failed start: it is the first thing to fix. Returns the check's
    result, whether Ray was started here (and must be shut down) and the actor plan."""
    checked: Future[tuple[Path, str, Model]] = Future()

    def check() -> None:
        try:
            checked.set_result(_check_model(config, stages, summary))
        except BaseException as exc:  # handed to the run's thread by checked.result()
            checked.set_exception(exc)

    threading.Thread(target=check, name="precompute-check", daemon=True).start()
    try:
        with stages.stage("ray", _ray_message(config)):
            started, plan = _ray_and_plan(config, verbose)
    except Exception:
        checked.result()  # raises the check's own error, if it failed too
        raise
    try:
        return checked.result(), started, plan
    except BaseException:
        if started:
            import ray

            ray.shutdown()
        raise


def _ray_message(config: Config) -> str:
    address = config.run.ray_address
    return f"joining the Ray cluster at {address}" if address else "starting a local Ray instance"


def _probe(space: GridSpace, model: Model) -> None:
    """Score every category and both ends of every range before anything is created: a value the model
    rejects (a category outside its vocabulary) fails here in seconds, naming the feature and the value."""
    first = {dim.name: 0 for dim in space.dimensions}
    rows: list[tuple[str, int]] = []
    for dim in space.dimensions:
        edges = range(dim.size) if isinstance(dim, Categorical) else sorted({0, dim.size - 1})
        rows += [(dim.name, i) for i in edges]
    inputs = grid_inputs(space, model.signature)

    def score(picked: list[tuple[str, int]]) -> None:
        indices = {name: np.array([i if n == name else first[name] for n, i in picked]) for name in first}
        model.predict({name: values[indices[name]] for name, values in inputs.items()})

    try:
        score(rows)
        return
    except ModelError:
        raise
    except Exception:  # TensorFlow's own error for a bad input: find which value it was, row by row
        pass
    for name, index in rows:
        try:
            score([(name, index)])
        except Exception as exc:
            label = space.by_name[name].labels()[index]
            detail = _model_reason(exc)
            raise ModelError(
                f"[[space.feature]] {name}: the model rejects the value {label!r} ({detail}). Fix: remove it from "
                "the feature's values, or retrain the model with it"
            ) from None
    raise ModelError("the model fails on the probe rows together but on none alone; check its inputs")


def _cause(exc: BaseException, stall_timeout_s: float) -> BaseException:
    """The error a user can act on, out of the layers Ray wraps around an exception raised in a task.

    Ray Data's no-progress guard (``stall_timeout_s``) becomes :class:`ClusterUnavailable`: Ray restarts the
    actors of a lost node on the nodes left, and when they fill those nodes the read and write tasks find no
    room and nothing moves, for as long as the cluster stays that size.
    """
    from ray.data.exceptions import ExecutionTimeoutError

    seen: BaseException | None = exc
    while seen is not None:
        original = getattr(seen, "cause", None)  # a RayTaskError's own exception, without Ray's traceback text
        if isinstance(original, BaseException) and original is not seen:
            seen = original
            continue
        if isinstance(seen, NonFiniteOutput):
            return VerificationFailed(str(seen))
        if isinstance(seen, (StoreError, ModelError)):
            return seen
        if isinstance(seen, ExecutionTimeoutError):
            return ClusterUnavailable(
                f"scoring and writing made no progress for {stall_timeout_s:g} s ([run] stall_timeout_s): the "
                "cluster has no room for the run's actors and tasks (a node lost? `ray status` shows what is left). "
                "Nothing was published. Fix: run again when the cluster has its nodes back, or with fewer [run] "
                "actors. " + str(seen).split("\n", 1)[0]
            )
        seen = seen.__cause__ or getattr(seen, "cause", None)
    return exc


def _ray_and_plan(config: Config, verbose: bool) -> tuple[bool, ActorPlan]:
    import ray

    started = False
    if not ray.is_initialized():
        cluster.init(config.run.ray_address, verbose)
        started = True
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = True  # bars on a terminal; periodic progress lines under cron
    context.raise_original_map_exception = True  # our own errors, not a generic UserCodeException
    context.execution_no_progress_timeout_s = config.run.stall_timeout_s  # a run never hangs (see _cause)
    try:
        return started, plan_actors(config.run, ray.cluster_resources())  # type: ignore[no-untyped-call]
    except BaseException:
        if started:
            ray.shutdown()
        raise


def _pipeline(config: Config, job: _Job, table: Any) -> Any:
    """Ids (or the rows of ``table``, the table space's Dataset) -> scoring actors."""
    import ray

    space, plan = config.space, job.plan
    pool = (
        ray.data.ActorPoolStrategy(min_size=plan.actors, max_size=plan.max_actors)
        if plan.max_actors
        else ray.data.ActorPoolStrategy(size=plan.actors)
    )
    common: dict[str, Any] = {
        "batch_size": plan.batch_size,
        "compute": pool,
        "num_cpus": plan.cpus_per_actor,
        "num_gpus": plan.gpus_per_actor if plan.device == "gpu" else None,
        "runtime_env": job.runtime_env,
    }
    args = (job.source, config.model.signature, config.model.outputs, space)
    if isinstance(space, GridSpace):
        # Enough blocks that every actor stays busy, small enough that each fits comfortably in memory, and none
        # smaller than a batch (each read is a task, in a worker process of its own when they run at once).
        wanted = max(plan.actors * 4, math.ceil(space.size / 250_000))
        blocks = max(1, min(wanted, math.ceil(space.size / plan.batch_size)))
        from ray.data._internal.datasource.range_datasource import RangeDatasource  # ray.data.range, lighter

        ids = ray.data.read_datasource(
            RangeDatasource(n=space.size, column_name="id"),
            num_cpus=IO_TASK_CPUS,
            override_num_blocks=blocks,
        )
        return ids.map_batches(GridScorer, fn_constructor_args=args, batch_format="numpy", **common)
    return table.map_batches(TableScorer, fn_constructor_args=args, batch_format="pyarrow", **common)


def _local_files(space: TableSpace) -> list[Path]:
    """The files of a table's local paths (folders walked), on the driver."""
    files: list[Path] = []
    for path in (Path(p) for p in space.paths if not is_uri(p)):
        files += sorted(f for f in path.rglob("*") if f.is_file()) if path.is_dir() else [path]
    return files


def _check_table(config: Config, space: TableSpace) -> None:
    """Before anything is created: a local table can reach a remote cluster's nodes only through Ray."""
    if config.run.ray_address is None:
        return
    files = _local_files(space)
    size = sum(f.stat().st_size for f in files if f.exists())
    if size > shipping.SHIP_TABLE_BYTES:
        raise ConfigError(
            f"[space] path: {[p for p in space.paths if not is_uri(p)]} are on this machine ({size / 1e6:,.1f} MB), "
            "where the Ray cluster's nodes cannot read them, and more than the "
            f"{shipping.SHIP_TABLE_BYTES / 1e6:,.1f} MB a run sends through Ray's object store. Fix: put the table "
            "where every node reads it (s3://, gs://, hdfs://, or file:///path on a volume every node mounts)"
        )


def _read_table(config: Config, space: TableSpace) -> Any:
    """The table as a Ray Dataset. URIs are read where the tasks run; a local path with a Ray cluster is
    read here and sent through the object store (small tables only: see :func:`_check_table`)."""
    import ray

    readers = {"parquet": ray.data.read_parquet, "csv": ray.data.read_csv, "json": ray.data.read_json}
    local = [p for p in space.paths if not is_uri(p)]
    if config.run.ray_address is None or not local:
        return readers[space.format](list(space.paths), num_cpus=IO_TASK_CPUS)
    import pyarrow.dataset as pads

    remote = [p for p in space.paths if is_uri(p)]
    shipped = ray.data.from_arrow(pads.dataset(local, format=space.format).to_table())
    parts = [shipped] + ([readers[space.format](remote, num_cpus=IO_TASK_CPUS)] if remote else [])
    return parts[0].union(*parts[1:]) if len(parts) > 1 else parts[0]


def _write_args(job: _Job, backend: Backend) -> dict[str, Any]:
    # Write tasks never hold a GPU (they wait on the store, not on a model).
    remote = {"num_cpus": IO_TASK_CPUS, "num_gpus": 0, "runtime_env": job.runtime_env}
    args: dict[str, Any] = {"ray_remote_args": remote}
    limits = [n for n in (job.plan.write_tasks, backend.max_writers) if n]
    if limits:
        args["concurrency"] = min(limits)
    return args


def _per_node(nodes: list[Node], reports: list[WriteReport]) -> list[dict[str, Any]]:
    """Actors and rows per node, from what the write tasks counted."""
    known = {node.id: node for node in nodes}
    rows: dict[str, dict[str, Any]] = {}

    def entry(node: str) -> dict[str, Any]:
        seen = known.get(node)
        return rows.setdefault(
            node,
            {
                "id": node,
                "address": seen.address if seen else "left the cluster",
                "cpus": seen.cpus if seen else 0,
                "gpus": seen.gpus if seen else 0,
                "actors": 0,
                "rows_scored": 0,
                "rows_written": 0,
            },
        )

    actors: dict[str, set[str]] = {}
    for report in reports:
        entry(report.node)["rows_written"] += report.rows
        for tag, count in report.scored.items():
            node, _, actor = tag.partition(":")
            entry(node)["rows_scored"] += count
            actors.setdefault(node, set()).add(actor)
    for node, found in actors.items():
        rows[node]["actors"] = len(found)
    return sorted(rows.values(), key=lambda r: (r["address"], r["id"]))


def _expected_rows(config: Config, table: Any) -> int:
    if isinstance(config.space, GridSpace):
        return config.space.size
    count: int = table.count()
    return count


def _golden(config: Config, model: Model, table: Any) -> dict[bytes, bytes]:
    """A few rows scored on the driver, to compare with what the pipeline stored."""
    space = config.space
    n = config.run.verify_samples
    if isinstance(space, GridSpace):
        ids = np.unique(np.linspace(0, space.size - 1, num=min(n, space.size)).astype(np.int64))
        indices = space.indices(ids)
        inputs = grid_inputs(space, model.signature)
        features = {name: values[indices[name]] for name, values in inputs.items()}
        keys = grid_keys(space, indices)
    else:
        sample = pa.Table.from_pylist(table.take(n))
        keys = sample.column(space.key_column).cast(pa.string()).combine_chunks()
        features = {}
        for name, column in table_columns(space, model.signature).items():
            data = sample.column(column)
            features[name] = (
                np.array([str(v).encode() for v in data.to_pylist()], dtype=object)
                if model.signature.inputs[name] == "string"
                else data.to_numpy()
            )
    values = encode_values(model.predict(features), keys)
    return dict(zip(keys.cast(pa.binary()).to_pylist(), values.to_pylist(), strict=True))


def _drift_sample(config: Config, table: Any, rows: int) -> list[str]:
    """The new version's keys to compare: spread over a grid's ids, or a random sample of the table."""
    n = config.verify.sample
    space = config.space
    if isinstance(space, GridSpace):
        return drift.sample_keys(space, n)
    keys = table.select_columns([space.key_column])
    if 1.2 * n < rows:  # about 1.2 n keys to the driver (enough despite the randomness), then n of them
        keys = keys.random_sample(1.2 * n / rows, seed=0)
    found = [str(row[space.key_column]) for row in keys.take_all()]
    if len(found) <= n:
        return found
    picked = np.random.default_rng(0).choice(len(found), size=n, replace=False)
    return [found[i] for i in np.sort(picked)]


def _verify(
    config: Config,
    model: Model,
    table: Any,
    backend: Backend,
    version: str,
    written: int,
    expected: int,
    extra_golden: dict[bytes, bytes] | None = None,
) -> dict[str, Any]:
    if written != expected:
        raise VerificationFailed(f"{written:,} rows were written but the space has {expected:,}")
    stored = backend.count(version)
    if stored is not None and stored != expected:
        hint = " (duplicate keys in the table?)" if isinstance(config.space, TableSpace) else ""
        raise VerificationFailed(f"the store holds {stored:,} rows of version {version}, expected {expected:,}{hint}")
    golden = {**_golden(config, model, table), **(extra_golden or {})}
    found = backend.read(version, list(golden))
    for (key, want), got in zip(golden.items(), found, strict=True):
        if got is None:
            raise VerificationFailed(f"golden key {key.decode()!r} is missing from version {version}")
        if not _close(json.loads(want), json.loads(got)):
            raise VerificationFailed(
                f"golden key {key.decode()!r}: stored {got.decode()} but the model says {want.decode()}"
            )
    log.info("[verify] %d rows, %d golden keys match", written, len(golden))
    return {
        "rows_written": written,
        "expected": expected,
        "store_count": stored,
        "golden_keys": len(golden),
        "golden_matched": len(golden),
    }


def _close(want: dict[str, float], got: dict[str, float]) -> bool:
    # Batch size changes float summation order inside the model, so allow float32 rounding noise.
    return want.keys() == got.keys() and all(math.isclose(want[k], got[k], rel_tol=1e-4, abs_tol=1e-5) for k in want)
