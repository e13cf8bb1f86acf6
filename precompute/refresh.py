"""``precompute refresh``: re-score changed entities of a table space into the live version, between runs.

The loop, on this process alone (no Ray: a refresh is small batches, and a Ray start costs seconds)::

    read     records from a file, standard input or a Redis Stream (precompute.sources), in batches formed
             by size and a window ([refresh] batch_max_size, window_ms), as the API's online batcher does
    check    each record: the key column (a string), every model input (present, of its type); a bad one is
             counted, reported with its position and, from a stream, moved to the dead-letter stream
    score    the model, loaded once, through the same conversions and value encoding as ``precompute run``'s
             table scorer (precompute.scoring, precompute.values): a refreshed value is byte-identical to
             what a run would store for the same row
    write    into the live version, and into every version a concurrent ``precompute run`` is building
             (see :class:`Targets`: written only once that run has loaded its own rows)
    ack      a stream entry is acknowledged only once its answer is in every target: a crash re-delivers it
    record   the counts and the watermark, in the live version's record, at most every record_seconds

Writes are idempotent (one key, one value, last write wins), so a re-delivered entry does no harm. Within a
batch, a key that appears twice keeps its last record.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from precompute.adapters import open_backend
from precompute.config import Config, ConfigError
from precompute.model import Model, ModelError, Signature, error_reason, fingerprint
from precompute.scoring import table_columns
from precompute.sources import Entry, Source, default_consumer, is_stream, open_source, source_name
from precompute.space import TableSpace
from precompute.store import Backend, State, StoreError, VersionError, VersionRecord, Versions
from precompute.store.codec import MAX_KEY_BYTES, control_free
from precompute.store.versions import lock_owner
from precompute.values import encode_values

log = logging.getLogger("precompute")

#: How often the version records are re-read to find runs in progress; and while a run is loading, to see
#: its loaded_at soon (a run may publish well under a second after it).
CHECK_SECONDS = 1.0
LOADING_CHECK_SECONDS = 0.1
#: A run that has not loaded after this long is asked whether it is alive (the run lock), then every as often.
STALE_SECONDS = 10.0
#: How long answers written into the live version are kept, for a run found after it began writing.
JOURNAL_SECONDS = 10.0
#: Bad records kept, with their positions, for the report (all of them are counted).
KEPT_BAD = 100
#: A consumer's entry in a version record is dropped once not updated for this long.
FORGET_S = 7 * 24 * 3600.0
#: The most consumers' entries a version record keeps (the least recently updated go first).
MAX_CONSUMERS = 64
#: Lags kept for the summary's quantiles.
LAGS_KEPT = 100_000
#: How often a progress line is printed.
PROGRESS_SECONDS = 5.0


class RefreshRefused(ConfigError):
    """The space or the model cannot be refreshed (a grid space, a model that is not the live one)."""


@dataclass
class Bad:
    position: str
    reason: str


@dataclass
class RefreshSummary:
    """What a refresh did: ``--json`` prints :meth:`to_dict`."""

    source: str = ""
    store: str = ""
    live: str | None = None
    records: int = 0  # read, good and bad
    written: int = 0  # answers written into the live version (a key written twice counts twice)
    bad: int = 0
    bad_records: list[Bad] = field(default_factory=list)  # the first KEPT_BAD
    batches: int = 0
    into: dict[str, int] = field(default_factory=dict)  # answers written per version (live and concurrent runs)
    watermark: int | str | None = None
    resumed_from: int | str | None = None
    seconds: float = 0.0
    # Seconds from a stream entry's arrival to its answer written, the last LAGS_KEPT (a --follow runs for days).
    lags: deque[float] = field(default_factory=lambda: deque(maxlen=LAGS_KEPT))

    def lag(self, q: float) -> float | None:
        return float(np.quantile(self.lags, q)) if self.lags else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "store": self.store,
            "live": self.live,
            "records": self.records,
            "written": self.written,
            "bad": self.bad,
            "bad_records": [{"position": b.position, "reason": b.reason} for b in self.bad_records],
            "batches": self.batches,
            "into": dict(self.into),
            "watermark": self.watermark,
            "resumed_from": self.resumed_from,
            "seconds": round(self.seconds, 3),
            "records_per_second": round(self.records / max(self.seconds, 1e-9), 1),
            "lag_p50_seconds": self.lag(0.5),
            "lag_p99_seconds": self.lag(0.99),
        }

    def render(self) -> str:
        lines = [
            f"refreshed {self.written:,} answer(s) from {self.records:,} record(s) in {self.seconds:.2f}s "
            f"({self.records / max(self.seconds, 1e-9):,.0f} records/s) into {self.live}",
            f"  source    {self.source}" + (f" (resumed after {self.resumed_from})" if self.resumed_from else ""),
            f"  watermark {self.watermark if self.watermark is not None else '-'}",
        ]
        others = {v: n for v, n in self.into.items() if v != self.live}
        if others:
            lines.append("  also into " + ", ".join(f"{v} ({n:,})" for v, n in others.items()))
        if self.lags:
            lines.append(f"  lag       p50 {self.lag(0.5):.3f}s, p99 {self.lag(0.99):.3f}s (arrival -> written)")
        lines.append(f"  bad       {self.bad:,} record(s)")
        for bad in self.bad_records:
            lines.append(f"            {bad.position}: {bad.reason}")
        if self.bad > len(self.bad_records):
            lines.append(f"            ... and {self.bad - len(self.bad_records):,} more")
        return "\n".join(lines)


# -- records -> features ---------------------------------------------------------------------------------


class Schema:
    """What a record must hold: the key column, a string, and every model input's column, of its type.

    Values are converted as ``precompute run``'s table scorer converts a table's columns: a string input
    takes the text of the value (``str(True)`` is ``"True"``, as a run renders a boolean column); a numeric
    input a number. A stream entry's values are all text, so its numbers are parsed.
    """

    def __init__(self, space: TableSpace, signature: Signature) -> None:
        self.key = space.key_column
        self.columns = table_columns(space, signature)  # input -> column
        self.dtypes = dict(signature.inputs)

    def check(self, entry: Entry) -> tuple[str, dict[str, Any]] | str:
        """(key, features by input), or why the record is bad."""
        fields = entry.fields
        if fields is None:
            return entry.error or "unreadable"
        key = fields.get(self.key)
        if key is None:
            return f"missing the key column {self.key!r}"
        if not isinstance(key, str):
            return f"the key column {self.key!r} holds {type(key).__name__} {key!r}, not a string"
        if not key or len(key.encode()) > MAX_KEY_BYTES or not control_free(key):
            return f"the key {key[:80]!r} is empty, over {MAX_KEY_BYTES} bytes or holds control characters"
        missing = sorted(column for column in self.columns.values() if fields.get(column) is None)
        if missing:
            return f"missing the column {missing[0]!r}" if len(missing) == 1 else f"missing the columns {missing}"
        features: dict[str, Any] = {}
        for name, column in self.columns.items():
            value = fields[column]
            converted = self._convert(value, self.dtypes[name], entry.text)
            if isinstance(converted, _Wrong):
                return f"column {column!r}: {converted.why}"
            features[name] = converted
        return key, features

    @staticmethod
    def _convert(value: Any, dtype: str, text: bool) -> Any:
        if dtype == "string":
            if isinstance(value, (str, bool)):
                return str(value).encode()
            return _Wrong(f"expected a string, got {type(value).__name__} {value!r}")
        if dtype == "bool":
            if isinstance(value, bool):
                return value
            if text and isinstance(value, str) and value.lower() in ("true", "false"):
                return value.lower() == "true"
            return _Wrong(f"expected true or false, got {value!r}")
        integer = dtype.startswith(("int", "uint"))
        if text and isinstance(value, str):
            try:
                value = int(value) if integer else float(value)
            except ValueError:
                return _Wrong(f"expected {'an integer' if integer else 'a number'}, got {value[:80]!r}")
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return _Wrong(f"expected {'an integer' if integer else 'a number'}, got {type(value).__name__} {value!r}")
        if integer and isinstance(value, float):
            if not value.is_integer():
                return _Wrong(f"expected an integer, got {value!r}")
            value = int(value)
        if isinstance(value, float) and not math.isfinite(value):
            return _Wrong(f"expected a finite number, got {value!r}")
        return value


@dataclass(frozen=True)
class _Wrong:
    why: str


class Scorer:
    """The model, loaded once, over checked records: (key, value) items in the store's encoding."""

    def __init__(self, model: Model, schema: Schema) -> None:
        self.model = model
        self.schema = schema

    def score(self, rows: Sequence[tuple[str, dict[str, Any]]]) -> tuple[list[tuple[bytes, bytes] | None], list[str]]:
        """One item per row, or None and the reason where the model cannot answer that row."""
        try:
            return self._score(rows), []
        except Exception:  # the model rejects some row (a category outside its vocabulary): find which, one by one
            pass
        items: list[tuple[bytes, bytes] | None] = []
        reasons: list[str] = []
        for row in rows:
            try:
                items += self._score([row])
                reasons.append("")
            except Exception as exc:
                items.append(None)
                reasons.append(f"the model cannot score it: {error_reason(exc)}")
        return items, reasons

    def _score(self, rows: Sequence[tuple[str, dict[str, Any]]]) -> list[tuple[bytes, bytes] | None]:
        features: dict[str, Any] = {}
        for name, dtype in self.schema.dtypes.items():
            values = [row[1][name] for row in rows]
            features[name] = np.array(values, dtype=object) if dtype == "string" else np.array(values)
        outputs = self.model.predict(features)
        finite = np.logical_and.reduce([np.isfinite(column) for column in outputs.values()])
        keys = pa.array([row[0] for row in rows], pa.string())
        if finite.all():
            values = encode_values(outputs, keys).to_pylist()
            return list(zip(keys.cast(pa.binary()).to_pylist(), values, strict=True))
        if not finite.any():
            raise ValueError("the model returned NaN or infinity")
        index = np.flatnonzero(finite)
        kept = encode_values({n: c[index] for n, c in outputs.items()}, keys.take(pa.array(index))).to_pylist()
        out: list[tuple[bytes, bytes] | None] = [None] * len(rows)
        for i, value in zip(index.tolist(), kept, strict=True):
            out[i] = (rows[i][0].encode(), value)
        return out


# -- where answers go -----------------------------------------------------------------------------------


@dataclass
class _Batch:
    """Entries read together, acknowledged once their answers are in every version in ``waiting``."""

    entries: list[Entry]
    waiting: set[str]
    last: int | str | None = None  # the offset of its last entry: the watermark once it is done
    acked: bool = False


@dataclass
class _Building:
    """A version a concurrent run is writing: answers for it wait here until the run has loaded its rows."""

    version: str
    created_at: float
    found_at: float
    items: dict[bytes, bytes] = field(default_factory=dict)
    batches: list[_Batch] = field(default_factory=list)
    loaded: bool = False
    ignored: str | None = None  # why it gets no answers (another model, a dead run)
    probed_at: float = 0.0


class Targets:
    """The versions a refreshed answer goes into, and the protocol with a concurrent ``precompute run``.

    The live version gets every answer at once. A run in progress has a version in state 'writing'; it
    loads its own rows of the table, which may be older than a refresh, so an answer written into it before
    the run's write of the same key lands would be overwritten. So answers for a 'writing' version are kept
    here (in memory, at most ``backlog_max``) until its record says ``loaded_at``, then written; after
    that, answers go into it directly, as into the live one. The run sets ``loaded_at`` once its own rows
    are written and verified (its row count and golden keys read back), so refreshed answers, which may
    add entities its table lacks or change a golden key, never disturb its verification.

    A run is found by re-reading the records (at most every second), so it may have begun up to a second
    before: answers written into the live version in the last JOURNAL_SECONDS are kept, and those written
    since the run's version was created go into its backlog when it is found.
    """

    def __init__(self, backend: Backend, model_id: str, consumer: str, backlog_max: int, record_seconds: float) -> None:
        self.backend = backend
        self.versions = Versions(backend)
        self.model_id = model_id
        self.consumer = consumer
        self.backlog_max = backlog_max
        self.record_seconds = record_seconds
        self.live: str | None = None
        self.building: dict[str, _Building] = {}
        self.journal: deque[tuple[float, list[tuple[bytes, bytes]]]] = deque()
        self.into: dict[str, int] = {}
        self.checked_at = 0.0
        self.recorded_at = 0.0
        self.state: dict[str, Any] = {}  # this consumer's meta.refresh entry, as last written
        self.base: dict[str, int] = {}  # per version: answers an earlier process of this consumer recorded
        self.owner = lock_owner()

    # -- finding versions --

    def check(self, force: bool = False) -> None:
        """Re-read the alias and the records (at most every CHECK_SECONDS unless forced)."""
        now = time.monotonic()
        loading = any(not b.loaded and b.ignored is None for b in self.building.values())
        if not force and now - self.checked_at < (LOADING_CHECK_SECONDS if loading else CHECK_SECONDS):
            return
        self.checked_at = now
        records = {r.version: r for r in self.versions.records()}
        live = self.backend.get_alias()
        if live is None:
            raise VersionError(f"nothing is published in {self.backend.url}: run `precompute run` first")
        if live != self.live:
            if self.live is not None:
                log.info("[refresh] the live version is now %s (was %s)", live, self.live)
            self.live = live
            self.recorded_at = 0.0  # the new live record gets this consumer's state at the next chance
        for version, building in list(self.building.items()):
            record = records.get(version)
            if version == live:  # published (its backlog was written when it loaded, or is written now)
                self._loaded(building)
                del self.building[version]
            elif record is None or record.state is not State.WRITING:
                why = "dropped" if record is None else str(record.state)
                if building.batches or building.items:
                    log.warning("[refresh] version %s was %s before it loaded; its backlog is discarded", version, why)
                self._release(building)
                del self.building[version]
            elif not building.loaded and record.meta.get("loaded_at") is not None:
                self._loaded(building)
        for version, record in records.items():
            if record.state is State.WRITING and version not in self.building and version != live:
                self._found(record)
        if self.state.get("holding"):
            self.record()  # a heartbeat (every record_seconds): a run waits only for a refresh that is alive

    def _found(self, record: VersionRecord) -> None:
        building = _Building(record.version, record.created_at, time.monotonic())
        self.building[record.version] = building
        model = record.meta.get("model")
        if model is not None and model != self.model_id:
            building.ignored = f"it is scored with another model ({model})"
            log.warning(
                "[refresh] a run is writing version %s with another model (%s); refreshes are not written into it: "
                "send them again after it is published, with its model in the config",
                record.version,
                model,
            )
            return
        log.info("[refresh] a run is writing version %s: its answers wait until it has loaded", record.version)
        self._holding(record.version, True)
        for written_at, items in self.journal:  # written into the live version since that run began
            if written_at >= record.created_at - 1.0:  # 1 s for clocks apart
                building.items.update(items)
        if record.meta.get("loaded_at") is not None:
            self._loaded(building)

    def _loaded(self, building: _Building) -> None:
        """The run has written its own rows: the backlog goes in now, then answers go in directly."""
        building.loaded = True
        if building.ignored is None and building.items:
            items = list(building.items.items())
            if not self._write_building(building, items):
                return
            self.into[building.version] = self.into.get(building.version, 0) + len(items)
            log.info("[refresh] %d backlogged answer(s) written into %s", len(items), building.version)
        building.items.clear()
        self._release(building)

    def _release(self, building: _Building) -> None:
        for batch in building.batches:
            batch.waiting.discard(building.version)
        building.batches.clear()
        if building.version in self.state.get("holding", []):
            self._holding(building.version, False)

    def _holding(self, version: str, holding: bool) -> None:
        """Say in the live record (at once) whether answers for ``version`` wait here: its run waits for them
        to be written before it publishes (:func:`wait_for_refreshes`)."""
        held = [v for v in self.state.get("holding", []) if v != version] + ([version] if holding else [])
        self.state["holding"] = held
        self.record(force=True)

    # -- writing --

    @property
    def backlog(self) -> int:
        return sum(len(b.items) for b in self.building.values())

    def write(self, items: list[tuple[bytes, bytes]], batch: _Batch) -> None:
        """Into the live version, runs' loaded versions, and the backlogs of the others."""
        assert self.live is not None
        if items:
            self.backend.write(self.live, items)
            self.into[self.live] = self.into.get(self.live, 0) + len(items)
            now = time.time()
            self.journal.append((now, items))
            while self.journal and now - self.journal[0][0] > JOURNAL_SECONDS:
                self.journal.popleft()
        for building in self.building.values():
            if building.ignored is not None:
                continue
            if building.loaded:
                if items and self._write_building(building, items):
                    self.into[building.version] = self.into.get(building.version, 0) + len(items)
            else:
                building.items.update(items)
                building.batches.append(batch)
                batch.waiting.add(building.version)

    def _write_building(self, building: _Building, items: list[tuple[bytes, bytes]]) -> bool:
        """Write into a run's version; False (and it is let go) when the run dropped it meanwhile (it failed:
        its rows are gone), which the store reports as an error on the missing namespace."""
        try:
            self.backend.write(building.version, items)
            return True
        except StoreError:
            record = self.backend.records().get(building.version)
            if record is not None and VersionRecord.from_bytes(record).state in (State.WRITING, State.READY):
                raise  # the version is still there: a real store failure
            building.ignored = "its run failed and dropped it"
            building.items.clear()
            self._release(building)
            log.warning(
                "[refresh] version %s was dropped by its run (it failed); no more answers go there", building.version
            )
            return False

    def full(self) -> bool:
        return self.backlog >= self.backlog_max

    def probe_stale(self) -> None:
        """A version still loading after STALE_SECONDS: is its run alive? A free run lock says it is not."""
        now = time.monotonic()
        for building in self.building.values():
            if building.loaded or building.ignored or now - building.found_at < STALE_SECONDS:
                continue
            if now - building.probed_at < STALE_SECONDS:
                continue
            building.probed_at = now
            holder = self.backend.acquire_lock(self.owner, 5.0)
            if holder is None:  # nobody holds it, so no run is writing that version: let it go
                self.backend.release_lock(self.owner)
                building.ignored = "its run holds no run lock (it died)"
                log.warning(
                    "[refresh] version %s is left by a run that died; its backlog is discarded", building.version
                )
                building.items.clear()
                self._release(building)

    # -- the version record --

    def record(self, force: bool = False, watermark: Mapping[str, Any] | None = None) -> None:
        """This consumer's state into the live version's record (re-read first; only ``meta.refresh.<consumer>``
        changes), at most every record_seconds unless forced. Only a record the run that wrote it has
        finished with is written: ready, published and (for a run's version) with its summary."""
        now = time.monotonic()
        if watermark is not None:
            self.state.setdefault("watermarks", {}).update(watermark)
        if not force and now - self.recorded_at < self.record_seconds:
            return
        if self.live is None:
            return
        raw = self.backend.records().get(self.live)
        if raw is None:
            return
        record = VersionRecord.from_bytes(raw)
        if record.state is not State.READY or record.published_at is None:
            return
        if "summary" not in record.meta and "approved_at" not in record.meta and record.meta.get("loaded_at"):
            return  # its run is still writing its record
        refresh = record.meta.setdefault("refresh", {})
        mine = refresh.get(self.consumer, {})
        base = self.base.setdefault(self.live, int(mine.get("written", 0)))
        mine.update(self.state)
        mine["written"] = base + self.into.get(self.live, 0)
        mine["into"] = {v: n for v, n in self.into.items() if v in self.building}  # runs in progress
        now_s = mine["updated_at"] = time.time()
        refresh[self.consumer] = mine
        # A default consumer name is new with every process (a cron job's refresh every minute): consumers gone
        # for a week are forgotten, and beyond MAX_CONSUMERS the least recently updated, so the record (one
        # item of the store: 400 KB on DynamoDB) stays small. A forgotten watermark only means re-reading.
        by_age = sorted(
            (n for n, v in refresh.items() if isinstance(v, dict)), key=lambda n: refresh[n].get("updated_at", 0)
        )
        for index, name in enumerate(by_age):
            old = refresh[name].get("updated_at", 0) < now_s - FORGET_S
            if name != self.consumer and (old or index < len(by_age) - MAX_CONSUMERS):
                del refresh[name]
        self.backend.put_record(self.live, record.to_bytes())
        self.recorded_at = now


def wait_for_refreshes(backend: Backend, live: str | None, version: str, timeout_s: float = 5.0) -> list[str]:
    """Called by ``precompute run`` after setting ``loaded_at``, before its publish: wait (up to ``timeout_s``)
    until no refresh that is alive (its entry in the live record updated in the last 10 s) says it holds
    answers for ``version``, so that the version is published with them. Returns the consumers still
    holding when the wait ran out (their answers follow within their next records check)."""
    deadline = time.monotonic() + timeout_s
    while True:
        raw = backend.records().get(live) if live is not None else None
        meta = VersionRecord.from_bytes(raw).meta if raw is not None else {}
        now = time.time()
        holding = [
            name
            for name, state in meta.get("refresh", {}).items()
            if isinstance(state, dict)
            and version in state.get("holding", [])
            and now - float(state.get("updated_at", 0)) < STALE_SECONDS
        ]
        if not holding or time.monotonic() >= deadline:
            return holding
        time.sleep(0.05)


def recorded_watermark(versions: Versions, name: str) -> int | str | None:
    """The newest watermark recorded for the source ``name``, in any version's record."""
    for record in reversed(versions.records()):
        for state in record.meta.get("refresh", {}).values():
            if isinstance(state, dict) and name in state.get("watermarks", {}):
                found: int | str = state["watermarks"][name]
                return found
    return None


# -- metrics ---------------------------------------------------------------------------------------------

#: From a stream entry's arrival to its answer written: tens of milliseconds when keeping up, seconds behind.
LAG_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)


class RefreshMetrics:
    """The refresh's Prometheus metrics, in a registry of its own (served by ``--metrics-port``)."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        self.records = Counter(
            "precompute_refresh_records", "Answers written into the live version.", registry=self.registry
        )
        self.lag = Histogram(
            "precompute_refresh_lag_seconds",
            "From a stream entry's arrival (its id) to its answer written.",
            buckets=LAG_BUCKETS,
            registry=self.registry,
        )
        self.dead = Counter(
            "precompute_refresh_dead_letters", "Bad records (dead-lettered from a stream).", registry=self.registry
        )
        self.pending_entries = Gauge(
            "precompute_refresh_pending",
            "Entries delivered to the consumer group and not acknowledged (XPENDING).",
            registry=self.registry,
        )

    def batch(self, written: int, lags: Sequence[float]) -> None:
        self.records.inc(written)
        for lag in lags:
            self.lag.observe(lag)

    def dead_letter(self) -> None:
        self.dead.inc()

    def pending(self, count: int | None) -> None:
        if count is not None:
            self.pending_entries.set(count)

    def serve(self, port: int, host: str = "127.0.0.1") -> Any:
        """Serve /metrics on a thread; returns the server (``shutdown()`` stops it)."""
        from prometheus_client import start_http_server

        server, _thread = start_http_server(port, addr=host, registry=self.registry)
        return server


# -- the loop -------------------------------------------------------------------------------------------


@dataclass
class Hooks:
    """For tests and the CLI: called after a batch is scored and before it is written (a crash there must
    leave a stream's entries unacknowledged), and after each batch."""

    after_score: Callable[[int], None] | None = None
    progress: Callable[[RefreshSummary, Source], None] | None = None


def refresh(
    config: Config,
    source_spec: str,
    *,
    follow: bool = False,
    stop: threading.Event | None = None,
    metrics: RefreshMetrics | None = None,
    hooks: Hooks | None = None,
    summary: RefreshSummary | None = None,
) -> RefreshSummary:
    """Consume ``source_spec`` (see precompute.sources) and write the answers. Without ``follow``, ends when
    the source has nothing more; with it, when ``stop`` is set (after the batch in hand). Raises
    RefreshRefused / ConfigError, ModelError, VersionError, StoreError."""
    stop = stop or threading.Event()
    hooks = hooks or Hooks()
    summary = summary if summary is not None else RefreshSummary()
    space = config.space
    if not isinstance(space, TableSpace):
        raise RefreshRefused(
            '[space] type = "grid": a grid key\'s answer depends only on the key and the model, so there is '
            "nothing to refresh (a new model is a new `precompute run`). refresh takes a table space"
        )
    if follow and not is_stream(source_spec):
        raise ConfigError(
            "--follow reads a Redis Stream until stopped; a file or - is read to its end. Fix: drop --follow"
        )
    settings = config.refresh
    local = config.model.local_path()
    model_id = fingerprint(local)
    model = Model(local, config.model.signature, config.model.outputs)
    schema = Schema(space, model.signature)
    scorer = Scorer(model, schema)
    _warm_up(scorer, space)
    backend = open_backend(config.store_url)
    source: Source | None = None
    started = time.monotonic()
    try:
        versions = Versions(backend)
        live = versions.live()
        if live is None:
            raise VersionError(f"nothing is published in {config.store_url}: run `precompute run` first")
        live_record = versions.get(live)
        live_record.check_readable()
        if live_record.meta.get("model") not in (None, model_id):
            raise ModelError(
                f"the live version {live} was scored with model {live_record.meta['model']}, and [model] path "
                f"is model {model_id}: refreshing would mix two models in one version. Fix: refresh with the "
                "live version's model, or `precompute run` the new one"
            )
        name = source_name(source_spec)
        start = recorded_watermark(versions, name)
        summary.resumed_from = start
        summary.store = config.store_url.redacted()
        consumer = settings.consumer or default_consumer()
        source = open_source(
            source_spec, start=start, consumer=consumer, block_ms=settings.block_ms, key_column=space.key_column
        )
        summary.source = source.name
        targets = Targets(backend, model_id, consumer, settings.backlog_max, settings.record_seconds)
        targets.check(force=True)
        summary.live = targets.live
        loop = _Loop(config, source, scorer, targets, summary, metrics, hooks, stop, follow)
        loop.run()
        summary.live = targets.live
        summary.into = dict(targets.into)
        return summary
    finally:
        summary.seconds = time.monotonic() - started
        if source is not None:
            source.close()
        backend.close()


def _warm_up(scorer: Scorer, space: TableSpace) -> None:
    """Score the table's first row once: TensorFlow's first call costs seconds (graph set-up), which would
    otherwise land on the first records of a stream. Skipped for a table that is not a local file."""
    from pathlib import Path

    first = Path(space.paths[0])
    if not first.is_file():
        return
    try:
        import pyarrow.dataset as pads

        rows = pads.dataset(first, format=space.format).head(1).to_pylist()
        checked = scorer.schema.check(Entry("warm-up", 0, rows[0])) if rows else "empty"
        if not isinstance(checked, str):
            scorer.score([checked])
    except Exception as exc:  # only a warm-up: the first batch pays for it instead
        log.debug("[refresh] no warm-up: %s", exc)


class _Loop:
    def __init__(
        self,
        config: Config,
        source: Source,
        scorer: Scorer,
        targets: Targets,
        summary: RefreshSummary,
        metrics: RefreshMetrics | None,
        hooks: Hooks,
        stop: threading.Event,
        follow: bool,
    ) -> None:
        self.settings = config.refresh
        self.source = source
        self.scorer = scorer
        self.targets = targets
        self.summary = summary
        self.metrics = metrics
        self.hooks = hooks
        self.stop = stop
        self.follow = follow
        self.unacked: deque[_Batch] = deque()  # in read order: the watermark is the last of the done prefix
        self.progress_at = time.monotonic()

    def run(self) -> None:
        window = self.settings.window_ms / 1000
        stream = self.source.name.startswith("stream:")
        # Following, a read waits up to block_ms; once, a stream is read without waiting (what is there).
        idle = self.settings.block_ms / 1000 if self.follow else (0.0 if stream else 0.2)
        while not self.stop.is_set():
            self.targets.check()
            self.targets.probe_stale()
            if self.targets.full():  # a run is loading and its backlog is full: read nothing more meanwhile
                self._settle()
                time.sleep(0.2)
                continue
            entries = self._next_batch(idle, window)
            if entries:
                self._process(entries)
            elif not self.follow and (stream or self.source.exhausted):
                if not any(self.unacked_waiting()):
                    break
                time.sleep(0.2)  # what is left waits for a run to finish loading
            self._settle()
            self._progress()
        self._settle()
        self.targets.check(force=True)  # the live version as it is now (a run may have published meanwhile)
        self.targets.record(force=True)
        self._update_pending()

    def unacked_waiting(self) -> list[_Batch]:
        return [batch for batch in self.unacked if batch.waiting]

    def _next_batch(self, idle: float, window: float) -> list[Entry]:
        size = self.settings.batch_max_size
        entries = self.source.read(size, idle)
        if not entries:
            return entries
        deadline = time.monotonic() + window
        while len(entries) < size and not self.source.exhausted:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            more = self.source.read(size - len(entries), left)
            if not more:
                break
            entries += more
        return entries

    def _process(self, entries: list[Entry]) -> None:
        summary = self.summary
        summary.records += len(entries)
        summary.batches += 1
        good: dict[str, tuple[str, dict[str, Any]]] = {}  # by key: the last record of a key wins
        for entry in entries:
            checked = self.scorer.schema.check(entry)
            if isinstance(checked, str):
                self._bad(entry, checked)
            else:
                good.pop(checked[0], None)
                good[checked[0]] = checked
        rows = list(good.values())
        items: list[tuple[bytes, bytes]] = []
        if rows:
            scored, reasons = self.scorer.score(rows)
            by_key = {e.fields.get(self.scorer.schema.key): e for e in entries if e.fields}
            for row, item, reason in zip(rows, scored, reasons or [""] * len(rows), strict=True):
                if item is None:
                    self._bad(by_key[row[0]], reason or "the model returned NaN or infinity")
                else:
                    items.append(item)
        if self.hooks.after_score is not None:
            self.hooks.after_score(summary.batches)
        batch = _Batch(entries, set(), entries[-1].offset)
        self.targets.write(items, batch)
        written_at = time.time()
        summary.written += len(items)
        lags = [written_at - e.arrived for e in entries if e.arrived is not None]
        summary.lags.extend(lags)
        if self.metrics is not None:
            self.metrics.batch(len(items), lags)
        self.unacked.append(batch)

    def _bad(self, entry: Entry, reason: str) -> None:
        summary = self.summary
        summary.bad += 1
        if len(summary.bad_records) < KEPT_BAD:
            summary.bad_records.append(Bad(entry.position, reason))
            log.warning("[refresh] bad record at %s: %s", entry.position, reason)
        self.source.dead_letter(entry, reason)
        if self.metrics is not None:
            self.metrics.dead_letter()

    def _settle(self) -> None:
        """Acknowledge the entries whose answers are in every target; advance the watermark over the batches
        done, in read order (a bad entry was acknowledged with its dead letter: again is harmless)."""
        done = [batch for batch in self.unacked if not batch.waiting and not batch.acked]
        if done:
            self.source.ack([entry for batch in done for entry in batch.entries])
            for batch in done:
                batch.acked = True
                batch.entries = []
        moved = False
        while self.unacked and self.unacked[0].acked:
            self.summary.watermark = self.unacked.popleft().last
            moved = True
        if moved:
            self.targets.record(watermark={self.source.name: self.summary.watermark})

    def _progress(self) -> None:
        now = time.monotonic()
        if now - self.progress_at < PROGRESS_SECONDS:
            return
        self.progress_at = now
        self._update_pending()
        if self.hooks.progress is not None:
            self.hooks.progress(self.summary, self.source)

    def _update_pending(self) -> None:
        if self.metrics is not None:
            self.metrics.pending(self.source.pending())
