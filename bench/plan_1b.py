"""A plan for a 1-billion-key space: stage times, store budgets and cost, from rates measured here per core.

    python bench/plan_1b.py                          # measure (about a minute), then print the plan
    python bench/plan_1b.py --save var/plan.json     # ... and keep the measurements
    python bench/plan_1b.py --from-json var/plan.json --keys 2e9 --nodes 8 --window-hours 4   # re-derive

Measured in this one process, on one core (TensorFlow pinned to one intra-op and one inter-op thread,
Arrow to one CPU), as CPU time, so that other work on a shared machine does not count:

* scoring: the steps of ``GridScorer.__call__`` (grid ids -> keys, features -> the babyweight model ->
  values) on batches of ``--batch-size`` consecutive ids at random offsets of a 1.03 B-key babyweight
  grid (mother_age step 0.005, gestation_weeks step 0.004), checked equal to ``GridScorer``'s own output;
* key and value bytes per row of that grid;
* the sink: Arrow columns -> (key, value) tuples, as ``StoreDatasink.write`` does per block;
* Redis, on a throwaway redis-server: ``RedisBackend.write`` of the scored rows in a write task's 1 M-row
  calls into a version laid out for ``--keys`` rows (so a call spreads over as many buckets as at that
  size: about one row per HSET), for the writer's CPU per row; the same rows into a version sized for
  them, in calls as sparse per bucket as at ``--keys`` rows while every bucket fills to ~48 fields, for
  the server's CPU per row (INFO cpu: one shard's ceiling, as a primary applies writes on one thread) and
  the memory per row (INFO used_memory delta / rows); the exact count that verification makes and the
  gc of such a version; and one call of full buckets, what grouping rows by bucket would buy;
* SQLite: ``SQLiteBackend.write`` of the same rows, in id order as a write task sends them; its count and
  its gc (DROP TABLE).

Published figures (Bigtable's write rate per node, DynamoDB, Memorystore and VM prices) and the per-core
client rates of Bigtable and DynamoDB (from bench/bigtable_load.py and bench/dynamodb_load.py, see
docs/bigtable.md and docs/dynamodb.md) are parameters: the plan prints them with their source.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from precompute.config import Config, load_config
from precompute.space import GridSpace, Range

ROOT = Path(__file__).resolve().parents[1]

EXAMPLE = ROOT / "examples/babyweight/precompute.toml"
STEPS = {"mother_age": 0.005, "gestation_weeks": 0.004}  # 3 x 7,601 x 6 x 7,501 = 1,026,271,818 keys
MONTH_HOURS = 730.0


@dataclass
class Measured:
    """Rates measured by this script; ``--save`` writes them, ``--from-json`` reads them back."""

    when: str
    machine: str
    batch_size: int
    rows: int  # rows per scoring repeat and per store load
    grid_keys: int  # the grid whose keys were scored
    layout_keys: int  # the --keys the Redis layout was sized for
    keys_us: float  # CPU microseconds per row: ids -> keys
    model_us: float  # features -> model outputs
    values_us: float  # outputs -> stored values
    wall_us: float  # wall microseconds per row of the three steps (about their CPU time: one thread)
    key_bytes: float
    value_bytes: float
    sink_us: float  # Arrow block -> (key, value) tuples
    redis_rows_s: float  # one writer's 1 M-row calls into a layout for --keys rows: wall, server on the other core
    redis_client_us: float  # ... the writer's CPU per row
    redis_server_us: float  # server CPU per row, calls as dense per bucket as at --keys rows, buckets filling up
    redis_bytes_per_row: float  # used_memory growth per row once the buckets are full
    redis_count_us: float  # count (verification), wall microseconds per row of full buckets
    redis_drop_us: float  # drop_version (gc), wall microseconds per row
    redis_grouped_client_us: float  # one call of full buckets (rows grouped by bucket): client CPU per row
    redis_grouped_server_us: float  # ... and server CPU per row
    sqlite_rows_s: float
    sqlite_us: float
    sqlite_bytes_per_row: float  # the file (and its WAL) after the load
    sqlite_count_us: float  # count(*) (verification), wall microseconds per row
    sqlite_drop_us: float  # DROP TABLE (gc), wall microseconds per row

    @property
    def score_us(self) -> float:
        return self.keys_us + self.model_us + self.values_us


# -- measuring -----------------------------------------------------------------------------------------


def one_core() -> None:
    """TensorFlow and Arrow on one thread each, set before TensorFlow runs anything."""
    import pyarrow as pa

    from precompute.model import tensorflow

    tf = tensorflow()
    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    pa.set_cpu_count(1)


def grid_1b() -> tuple[Config, GridSpace]:
    """The example's config, and its grid with finer mother_age and gestation_weeks steps."""

    config = load_config(EXAMPLE, env={})
    space = config.space
    assert isinstance(space, GridSpace)
    dims = [Range.of(d.name, d.start, d.stop, STEPS[d.name]) if isinstance(d, Range) else d for d in space.dimensions]
    return config, GridSpace(dims, space.template)


def measure_scoring(batch: int, rows: int, repeat: int) -> tuple[dict[str, float], Any, int]:
    """CPU us per row of each GridScorer step (median over repeats), and one repeat's output table."""
    import numpy as np
    import pyarrow as pa

    from precompute.scoring import GridScorer, grid_keys
    from precompute.values import encode_values

    config, space = grid_1b()
    scorer = GridScorer(str(config.model.path), config.model.signature, config.model.outputs, space)
    rng = random.Random(1)
    scorer({"id": np.arange(batch, dtype=np.int64)})  # warm-up: graph tracing
    runs: list[dict[str, float]] = []
    kept: list[pa.Table] = []
    check = np.arange(batch, dtype=np.int64)
    batches = max(1, rows // batch)
    for r in range(repeat):
        spent = {"keys": 0.0, "model": 0.0, "values": 0.0, "wall": -time.perf_counter()}
        start = rng.randrange(space.size - batches * batch)
        for b in range(batches):
            ids = np.arange(start + b * batch, start + (b + 1) * batch, dtype=np.int64)
            t0 = time.process_time()
            indices = space.indices(ids)
            keys = grid_keys(space, indices)
            t1 = time.process_time()
            outputs = scorer.model.predict({name: v[indices[name]] for name, v in scorer.inputs.items()})
            t2 = time.process_time()
            table = pa.table({"key": keys.cast(pa.binary()), "value": encode_values(outputs, keys)})
            t3 = time.process_time()
            spent["keys"] += t1 - t0
            spent["model"] += t2 - t1
            spent["values"] += t3 - t2
            if r == 0:
                kept.append(table)
                if b == 0:
                    check = ids
        spent["wall"] += time.perf_counter()
        runs.append({k: v * 1e6 / (batches * batch) for k, v in spent.items()})
    # The same work as the actors do: GridScorer's own answer for the first batch.
    assert scorer({"id": check}).equals(kept[0]), "the measured steps differ from GridScorer"
    median = {k: statistics.median(run[k] for run in runs) for k in runs[0]}
    return median, pa.concat_tables(kept), space.size


def measure_sink(table: Any) -> tuple[list[tuple[bytes, bytes]], float]:
    spent = []
    for _ in range(3):
        t0 = time.process_time()
        rows = list(zip(table.column("key").to_pylist(), table.column("value").to_pylist(), strict=True))
        spent.append(time.process_time() - t0)
    return rows, statistics.median(spent) * 1e6 / len(rows)


def measure_redis(rows: list[tuple[bytes, bytes]], keys: int, repeat: int) -> dict[str, float]:
    import redis

    from precompute.adapters import open_backend
    from precompute.store import Versions
    from tests.servers.redis import RedisProcess

    binary = shutil.which("redis-server") or "/usr/bin/redis-server"
    with tempfile.TemporaryDirectory(prefix="plan-redis-") as tmp:
        server = RedisProcess(binary, Path(tmp)).start()
        client = redis.Redis(port=server.port)
        backend = open_backend(f"redis://127.0.0.1:{server.port}/0?prefix=plan:")
        versions = Versions(backend)

        def stat(section: str, *names: str) -> float:
            info: dict[str, Any] = client.info(section)
            return sum(float(info[name]) for name in names)

        def load(expected_rows: int, call: int) -> tuple[str, dict[str, float]]:
            """Rows written in calls of ``call`` rows into a version laid out for ``expected_rows``."""
            client.flushall()
            version = versions.begin(expected_rows=expected_rows).version
            memory, server_cpu = stat("memory", "used_memory"), stat("cpu", "used_cpu_user", "used_cpu_sys")
            cpu, wall = time.process_time(), time.perf_counter()
            for at in range(0, len(rows), call):
                backend.write(version, rows[at : at + call])
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            server_cpu = stat("cpu", "used_cpu_user", "used_cpu_sys") - server_cpu
            n = len(rows)
            memory = (stat("memory", "used_memory") - memory) / n
            return version, {
                "rows_s": n / wall,
                "client_us": cpu * 1e6 / n,
                "server_us": server_cpu * 1e6 / n,
                "memory": memory,
            }

        def median(runs: list[dict[str, float]]) -> dict[str, float]:
            return {k: statistics.median(run[k] for run in runs) for k in runs[0]}

        try:
            batch = backend.max_write_batch
            # A write task's call, as at `keys` rows: rows spread over keys / 48 buckets, ~1 row per HSET.
            client_side = median([load(keys, batch)[1] for _ in range(repeat)])
            # The server as at `keys` rows: calls as dense per bucket as there (batch / buckets), filling every
            # bucket to ~48 fields over the load; what is left is one version's memory.
            call = max(1, round(len(rows) * batch / keys))
            server_side = median([load(len(rows), call)[1] for _ in range(repeat)])
            version = versions.begin(expected_rows=len(rows)).version
            backend.write(version, rows)
            started = time.perf_counter()
            assert backend.count(version) == len(rows)  # verification's exact count: one HLEN per bucket
            count_us = (time.perf_counter() - started) * 1e6 / len(rows)
            started = time.perf_counter()
            backend.drop_version(version)
            drop_us = (time.perf_counter() - started) * 1e6 / len(rows)
            # What grouping rows by bucket before the sink would buy: one call of full buckets.
            grouped = load(len(rows), batch)[1]
        finally:
            backend.close()
            client.close()
            server.stop()
    return {
        "redis_rows_s": client_side["rows_s"],
        "redis_client_us": client_side["client_us"],
        "redis_server_us": server_side["server_us"],
        "redis_bytes_per_row": server_side["memory"],
        "redis_count_us": count_us,
        "redis_drop_us": drop_us,
        "redis_grouped_client_us": grouped["client_us"],
        "redis_grouped_server_us": grouped["server_us"],
    }


def measure_sqlite(rows: list[tuple[bytes, bytes]]) -> dict[str, float]:
    from precompute.adapters import open_backend
    from precompute.store import Versions

    with tempfile.TemporaryDirectory(prefix="plan-sqlite-") as tmp:
        backend = open_backend(f"sqlite:///{tmp}/plan.db")
        version = Versions(backend).begin(expected_rows=len(rows)).version
        c0, w0 = time.process_time(), time.perf_counter()
        backend.write(version, rows)
        wall, cpu = time.perf_counter() - w0, time.process_time() - c0
        size = sum(f.stat().st_size for f in Path(tmp).iterdir())
        started = time.perf_counter()
        assert backend.count(version) == len(rows)  # verification's count(*)
        count = time.perf_counter() - started
        started = time.perf_counter()
        backend.drop_version(version)
        drop = time.perf_counter() - started
        backend.close()
    n = len(rows)
    return {
        "sqlite_rows_s": n / wall,
        "sqlite_us": cpu * 1e6 / n,
        "sqlite_bytes_per_row": size / n,
        "sqlite_count_us": count * 1e6 / n,
        "sqlite_drop_us": drop * 1e6 / n,
    }


def measure(args: argparse.Namespace) -> Measured:
    one_core()
    began = time.perf_counter()
    steps, table, size = measure_scoring(args.batch_size, args.rows, args.repeat)
    rows, sink_us = measure_sink(table)
    key_bytes = sum(len(k) for k, _ in rows) / len(rows)
    value_bytes = sum(len(v) for _, v in rows) / len(rows)
    print(f"  scoring measured in {time.perf_counter() - began:.0f} s", file=sys.stderr, flush=True)
    redis = measure_redis(rows, int(args.keys), args.store_repeat)
    print(f"  Redis measured, {time.perf_counter() - began:.0f} s in all", file=sys.stderr, flush=True)
    sqlite = measure_sqlite(rows)
    load = os.getloadavg()[0]
    return Measured(
        when=time.strftime("%Y-%m-%d"),
        machine=f"{os.cpu_count()} CPUs, load average {load:.1f}",
        batch_size=args.batch_size,
        rows=len(rows),
        grid_keys=size,
        layout_keys=int(args.keys),
        keys_us=steps["keys"],
        model_us=steps["model"],
        values_us=steps["values"],
        wall_us=steps["wall"],
        key_bytes=key_bytes,
        value_bytes=value_bytes,
        sink_us=sink_us,
        **redis,
        **sqlite,
    )


# -- the plan ------------------------------------------------------------------------------------------


def duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.1f} min" if seconds < 5400 else f"{seconds / 3600:.1f} h"


def usd(amount: float) -> str:
    return f"${amount:,.2f}" if amount < 100 else f"${amount:,.0f}"


@dataclass
class StorePlan:
    name: str
    rate: float  # rows/s the store takes during the load
    client_us: float  # a writer's CPU per row in the store's client
    load_usd: float  # what the store bills for one load, beyond its monthly cost
    month_usd: float  # the store while it serves, per month
    budget: list[str]


def on_demand_seconds(units: float, start: float, cap: float) -> float:
    """Seconds to write ``units`` into a new on-demand table that at best doubles its rate every 30 minutes."""
    seconds, rate = 0.0, start
    while units > rate * 1800 and rate < cap:
        units, seconds, rate = units - rate * 1800, seconds + 1800, min(2 * rate, cap)
    return seconds + units / rate


def store_plans(m: Measured, a: argparse.Namespace) -> list[StorePlan]:
    keys, window = a.keys, a.window_hours * 3600
    plans = []

    # Redis: memory for the versions resident at once; a primary applies writes on one thread.
    versions = a.redis_keep_versions + 1  # the kept ones (the live one included) + the one loading
    memory_gb = keys * m.redis_bytes_per_row * versions * a.redis_headroom / 1e9
    shard_rate = 1e6 / m.redis_server_us
    shards = max(math.ceil(memory_gb / a.redis_shard_gb), math.ceil(keys / window / shard_rate))
    writers = math.ceil(shard_rate * (m.sink_us + m.redis_client_us) / 1e6)
    plans.append(
        StorePlan(
            "Redis / Memorystore",
            shards * shard_rate,
            m.redis_client_us,
            0.0,
            memory_gb * MONTH_HOURS * a.redis_gb_hour,
            [
                f"memory {memory_gb:,.0f} GB = {versions} versions x {keys * m.redis_bytes_per_row / 1e9:,.1f} GB "
                f"({m.redis_bytes_per_row:.1f} B/row) x {a.redis_headroom:g} headroom",
                f"{shards} shard(s) of <= {a.redis_shard_gb:g} GB, each taking {shard_rate:,.0f} rows/s from "
                f"{writers} writer(s); on one primary (no cluster) the load takes {duration(keys / shard_rate)}",
                f"verify: exact count, {duration(keys * m.redis_count_us / 1e6)} of HLENs; gc of an old version: "
                f"{duration(keys * m.redis_drop_us / 1e6)} of UNLINKs, one at a time",
            ],
        )
    )

    # Bigtable: nodes for the window at the published per-node write rate, back to the serving nodes after.
    nodes = max(a.bigtable_serving_nodes, math.ceil(keys / window / a.bigtable_node_rows_s))
    row_bytes = 21 + m.key_bytes + m.value_bytes + 10  # "<version>#" prefix; family, qualifier, timestamp
    stored_gb = keys * row_bytes * a.keep_versions / 1e9
    load_h = keys / (nodes * a.bigtable_node_rows_s) / 3600
    plans.append(
        StorePlan(
            "Bigtable",
            nodes * a.bigtable_node_rows_s,
            a.bigtable_client_us,
            (nodes - a.bigtable_serving_nodes) * load_h * a.bigtable_node_hour,
            a.bigtable_serving_nodes * MONTH_HOURS * a.bigtable_node_hour + stored_gb * a.bigtable_gb_month,
            [
                f"{nodes} node(s) at {a.bigtable_node_rows_s:,.0f} rows/s each for the load, "
                f"{a.bigtable_serving_nodes} after",
                f"storage {stored_gb:,.0f} GB for {a.keep_versions} versions (~{row_bytes:.0f} B/row uncompressed)",
            ],
        )
    )

    # DynamoDB: a write unit per started KB of item (attribute names count); a new table per version.
    item = 1 + m.key_bytes + 1 + m.value_bytes  # "k" + key, "v" + value
    wru = math.ceil(item / 1024)
    units = keys * wru
    per_million = wru * a.dynamodb_wru_usd
    stored_gb = keys * (item + 100) * a.keep_versions / 1e9  # + 100 B of index overhead per item
    fresh = on_demand_seconds(units, a.dynamodb_new_table_wru, a.dynamodb_table_wcu)
    plans.append(
        StorePlan(
            "DynamoDB on demand",
            keys / fresh,
            a.dynamodb_client_us,
            units / 1e6 * a.dynamodb_wru_usd,
            stored_gb * a.dynamodb_gb_month,
            [
                f"{wru} WRU per {item:.0f} B item: {usd(per_million)} per million writes, "
                f"{usd(units / 1e6 * a.dynamodb_wru_usd)} per full load",
                f"a new table from {a.dynamodb_new_table_wru:,} WRU/s, doubling every 30 min at best up to the "
                f"{a.dynamodb_table_wcu:,} quota; {duration(units / a.dynamodb_table_wcu)} if it started there",
                f"storage {stored_gb:,.0f} GB for {a.keep_versions} versions (+100 B per item)",
            ],
        )
    )
    wcu = math.ceil(units / window)
    capped = min(wcu, a.dynamodb_table_wcu)
    plans.append(
        StorePlan(
            "DynamoDB provisioned",
            capped / wru,
            a.dynamodb_client_us,
            units / 3600 * a.dynamodb_wcu_hour,
            stored_gb * a.dynamodb_gb_month,
            [
                f"{wcu:,} WCU for a {a.window_hours:g} h load"
                + (
                    f", over the {a.dynamodb_table_wcu:,} table quota: {capped:,} (or raise the quota)"
                    if wcu > capped
                    else ""
                ),
                f"a table left at {capped:,} WCU costs {usd(capped * MONTH_HOURS * a.dynamodb_wcu_hour)}/month: "
                "lower it after the load (precompute does not)",
            ],
        )
    )
    plans.append(
        StorePlan(
            "SQLite (one machine)",
            1e6 / (m.sink_us + m.sqlite_us),
            m.sqlite_us,
            0.0,
            0.0,
            [
                f"one writer; a {keys * m.sqlite_bytes_per_row / 1e9:,.0f} GB file per version at "
                f"{m.sqlite_bytes_per_row:.1f} B/row (measured at {m.rows:,} rows: inserts slow down once the "
                "B-tree outgrows the page cache)",
                f"verify: count(*) {duration(keys * m.sqlite_count_us / 1e6)}; gc: DROP TABLE "
                f"{duration(keys * m.sqlite_drop_us / 1e6)} (both measured at {m.rows:,} rows, scaled)",
            ],
        )
    )
    return plans


def report(m: Measured, a: argparse.Namespace) -> None:
    keys = a.keys
    print(f"A plan for {keys:,.0f} keys, from rates measured on {m.when} ({m.machine})\n")
    print("Measured here, per core (one process; TensorFlow and Arrow on one thread)")
    measured = [
        (
            f"scoring, batch {m.batch_size:,}",
            f"{1e6 / m.score_us:,.0f} rows/CPU-s",
            f"keys {m.keys_us:.3f} + model {m.model_us:.3f} + values {m.values_us:.3f} us/row; wall "
            f"{1e6 / m.wall_us:,.0f} rows/s; {m.rows:,} ids of a {m.grid_keys:,}-key grid",
        ),
        ("row size", f"{m.key_bytes + m.value_bytes:.1f} B", f"key {m.key_bytes:.1f} B + value {m.value_bytes:.1f} B"),
        ("sink, Arrow -> rows", f"{1e6 / m.sink_us:,.0f} rows/CPU-s", "StoreDatasink.write's to_pylist"),
        (
            "Redis write, 1 writer",
            f"{1e6 / m.redis_client_us:,.0f} rows/CPU-s",
            f"wall {m.redis_rows_s:,.0f} rows/s: {m.rows:,} rows in a layout for {m.layout_keys:,} keys; server "
            f"{1e6 / m.redis_server_us:,.0f} rows/CPU-s in calls as sparse per bucket (rows grouped by bucket: "
            f"client {1e6 / m.redis_grouped_client_us:,.0f}, server {1e6 / m.redis_grouped_server_us:,.0f})",
        ),
        ("Redis memory", f"{m.redis_bytes_per_row:.1f} B/row", "INFO used_memory delta / rows, full buckets"),
        (
            "SQLite write, 1 writer",
            f"{1e6 / m.sqlite_us:,.0f} rows/CPU-s",
            f"wall {m.sqlite_rows_s:,.0f} rows/s; {m.sqlite_bytes_per_row:.1f} B/row on disk",
        ),
    ]
    for name, figure, how in measured:
        print(f"  {name:<24}{figure:>20}   {how}")

    cores = a.nodes * a.cores_per_node * a.utilization
    core_h = keys * m.score_us / 3.6e9
    gpu_us = m.keys_us + m.values_us + m.model_us / a.gpu_speedup
    gpu_h = keys * gpu_us / 3.6e9
    print(f"\nScoring {keys:,.0f} keys (keys + model + values)")
    print(
        f"  CPU: {core_h:,.2f} core-hours; {duration(core_h * 3600 / cores)} on {a.nodes} nodes x "
        f"{a.cores_per_node} cores at {a.utilization:.0%}"
    )
    print(
        f"  GPU, model step {a.gpu_speedup:g}x one core (keys and values stay on the actor's CPU): {gpu_h:,.2f} "
        f"GPU-hours, {duration(gpu_h * 3600 / a.gpus)} on {a.gpus} GPUs; one GPU actor = {m.score_us / gpu_us:.1f} "
        f"cores, at most {m.score_us / (m.keys_us + m.values_us):.1f} at any speedup"
    )

    plans = store_plans(m, a)
    print(f"\nLoading {keys:,.0f} rows (a store sized for a {a.window_hours:g} h load where it has a knob)")
    print(f"  {'store':<22}{'rows/s':>11}{'load':>10}{'writer cores':>14}{'all cores':>11}{'Ray nodes':>11}")
    costs = []
    for p in plans:
        seconds = keys / p.rate
        writer_cores = p.rate * (m.sink_us + p.client_us) / 1e6
        all_cores = writer_cores + p.rate * m.score_us / 1e6
        nodes = math.ceil(all_cores / a.utilization / a.cores_per_node)
        costs.append((p, nodes * a.cores_per_node * seconds / 3600 * a.vcpu_hour))
        print(
            f"  {p.name:<22}{p.rate:>11,.0f}{duration(seconds):>10}{writer_cores:>14.1f}{all_cores:>11.1f}{nodes:>11}"
        )
    print(
        f"  Ray nodes: {a.cores_per_node}-core nodes that keep the store busy (scoring + sink + the store's client "
        f"per row, at {a.utilization:.0%}); the run lasts as long as its load"
    )
    for p in plans:
        print(f"  {p.name}:")
        for line in p.budget:
            print(f"    {line}")

    print(f"\nCost: one full run, and a month of {a.runs_per_month} runs")
    print(f"  {'store':<22}{'compute':>10}{'store':>10}{'run':>10}{'store/month':>13}{'month':>10}")
    for p, compute in costs:
        run = compute + p.load_usd
        month = p.month_usd + a.runs_per_month * run
        print(
            f"  {p.name:<22}{usd(compute):>10}{usd(p.load_usd):>10}{usd(run):>10}{usd(p.month_usd):>13}{usd(month):>10}"
        )

    print("\nAssumptions (published figures: as published, check current pricing; the others are choices)")
    for flag, _, source in ASSUMPTIONS:
        print(f"  --{flag} {getattr(a, flag.replace('-', '_')):g}: {source}")


#: Published figures and choices: (option, default, where it comes from).
ASSUMPTIONS: list[tuple[str, float, str]] = [
    ("vcpu-hour", 0.0475, "USD per vCPU-hour, GCE n2-standard on demand, us-central1 (as published)"),
    ("gpu-hour", 0.35, "USD per GPU-hour, NVIDIA T4 on GCE, us-central1, its VM extra (as published)"),
    ("gpu-speedup", 5.0, "the model step on a GPU vs one core (a guess: no GPU here; StringLookup stays on CPU)"),
    ("utilization", 0.8, "share of a node's cores that Ray keeps busy (a choice)"),
    (
        "redis-gb-hour",
        0.032,
        "USD per GB-hour, Memorystore for Redis Standard tier, >100 GB, us-central1 (as published)",
    ),
    ("redis-shard-gb", 50.0, "largest shard (a choice: resync and failover time grow with it)"),
    ("redis-headroom", 1.3, "memory above used_memory: fragmentation, replication and client buffers (a choice)"),
    ("redis-keep-versions", 1, "[store] keep_versions on Redis, the live version included (a choice)"),
    (
        "bigtable-node-rows-s",
        10_000,
        "writes/s per node, Cloud Bigtable performance guide, SSD, 1 KB rows (as published)",
    ),
    ("bigtable-node-hour", 0.65, "USD per node-hour, Bigtable, us-central1 (as published)"),
    ("bigtable-gb-month", 0.17, "USD per GB-month, Bigtable SSD storage, us-central1 (as published)"),
    ("bigtable-serving-nodes", 1, "nodes kept while serving (a choice)"),
    ("bigtable-client-us", 38.0, "writer CPU per row: 24-28 k rows/CPU-s (bench/bigtable_load.py, docs/bigtable.md)"),
    ("dynamodb-wru-usd", 0.625, "USD per million on-demand write request units, us-east-1 (as published)"),
    ("dynamodb-wcu-hour", 0.00065, "USD per provisioned WCU-hour, us-east-1 (as published)"),
    ("dynamodb-gb-month", 0.25, "USD per GB-month, DynamoDB Standard table class, us-east-1 (as published)"),
    ("dynamodb-table-wcu", 40_000, "default per-table write throughput quota (DynamoDB service quotas, as published)"),
    ("dynamodb-new-table-wru", 4_000, "writes/s a new on-demand table sustains at first (DynamoDB docs, as published)"),
    ("dynamodb-client-us", 75.0, "writer CPU per item, boto3: 55-100 us (bench/dynamodb_load.py, docs/dynamodb.md)"),
    ("keep-versions", 3, "[store] keep_versions on Bigtable and DynamoDB (the default)"),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add = parser.add_argument
    add("--keys", type=float, default=1e9, help="keys in the space (default 1e9)")
    add("--from-json", type=Path, help="re-derive the plan from saved measurements, measuring nothing")
    add("--save", type=Path, help="write the measurements to this JSON file")
    add("--rows", type=int, default=1_048_576, help="rows per scoring repeat and per store load")
    add("--repeat", type=int, default=3, help="scoring repeats (median)")
    add("--store-repeat", type=int, default=3, help="Redis load repeats (median)")
    add("--batch-size", type=int, default=16_384, help="rows per model call ([run] batch_size)")
    add("--nodes", type=int, default=4, help="CPU nodes for the scoring figure")
    add("--cores-per-node", type=int, default=16)
    add("--gpus", type=int, default=4, help="GPUs for the scoring figure")
    add("--window-hours", type=float, default=2.0, help="the load a store with a capacity knob is sized for")
    add("--runs-per-month", type=int, default=30)
    for flag, default, source in ASSUMPTIONS:
        add(f"--{flag}", type=type(default), default=default, help=f"{source} (default {default:g})")
    args = parser.parse_args()
    if args.from_json:
        measured = Measured(**json.loads(args.from_json.read_text()))
    else:
        print("measuring (about a minute) ...", file=sys.stderr, flush=True)
        measured = measure(args)
    if args.save:
        args.save.parent.mkdir(parents=True, exist_ok=True)
        args.save.write_text(json.dumps(dataclasses.asdict(measured), indent=2) + "\n")
    report(measured, args)


if __name__ == "__main__":
    main()
