"""Bigtable backend figures against Google's emulator, side by side with baselines measured in the same run.

    python bench/bigtable_load.py [--rows 60000] [--writers 2] [--runs 3] [--lookups 2000] [--no-api]

Starts ``cbtemulator`` on a free port (see tests/servers/bigtable.py for where it is looked for) and prints:

* load rows/s, one writer process and --writers processes at once: ``BigtableBackend.write`` (per-row
  statuses checked, retries armed) against the bare client sending the same rows with ``bulk_mutate_rows``
  and no checks: the ratio is what accounting for every row costs;
* load rows/s by rows per ``write_batch`` call, and read time per key by keys per ``read_batch`` call: the
  figures behind ``max_write_batch`` and ``max_read_batch``;
* lookup p50/p99: ``BigtableReader.get`` against the bare async client's ``read_row``, a 1,000-key
  ``get_many`` against a bare ``read_rows``;
* lookup p50/p99 through the API (``precompute serve``, one keep-alive connection, sequential requests) on
  this store against the same API on the embedded SQLite store.

Every figure is the median of --runs runs. The emulator is one Go process on the same machine, so these
figures orient; they do not predict a production cluster. Keep --rows near 1e5: the emulator holds about
1.2 KiB of memory per row.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from precompute.adapters import open_backend, open_reader  # noqa: E402
from precompute.adapters.bigtable import BigtableBackend  # noqa: E402
from precompute.adapters.bigtable.client import async_data_client, credentials_for  # noqa: E402
from precompute.adapters.bigtable.options import Settings  # noqa: E402
from precompute.adapters.bigtable.writes import entries_for  # noqa: E402
from precompute.store import Item, StoreURL, Versions  # noqa: E402
from precompute.store.codec import encode_key, encode_value  # noqa: E402
from tests.servers import free_port, stop, wait_for_port  # noqa: E402
from tests.servers.bigtable import HINT, find_emulator  # noqa: E402

PROJECT, INSTANCE = "bench-project", "bench-instance"
EXAMPLE_CONFIG = ROOT / "examples/babyweight/precompute.toml"


def make_rows(start: int, count: int) -> list[Item]:
    """Keys and values shaped like the babyweight space's (``True:25:Single(1):39``, ``{"weight_pounds":7.31}``)."""
    sexes, plural = ("True", "False", "Unknown"), ("Single(1)", "Twins(2)", "Triplets(3)")
    return [
        (
            encode_key(f"{sexes[i % 3]}:{12 + i % 39}:{plural[i % 3]}:{17 + i % 31}:{i}"),
            encode_value({"weight_pounds": 5.0 + (i % 1000) / 250}),
        )
        for i in range(start, start + count)
    ]


def raw_write(table: Any, prefix: bytes, items: list[Item], chunk: int) -> None:
    """The baseline: the same entries through bulk_mutate_rows, no status checks, no retries."""
    for start in range(0, len(items), chunk):
        table.bulk_mutate_rows(entries_for(prefix, items[start : start + chunk]))


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def median(values: list[float]) -> float:
    return float(statistics.median(values))


def row(label: str, ours: float, base: float, unit: str, base_name: str) -> str:
    return f"  {label:<38} {ours:>10,.2f} {base:>10,.2f} {unit:<7} {ours / base:>6.2f}x  (baseline: {base_name})"


# -- load ------------------------------------------------------------------------------------------


def _writer(url: str, version: str, start: int, count: int, mode: str, barrier: Any, results: Any) -> None:
    warnings.simplefilter("ignore")
    backend = open_backend(url)
    assert isinstance(backend, BigtableBackend)
    items = make_rows(start, count)
    backend.write(version, make_rows(10_000_000 + start, 200))  # warm the channel before the clock starts
    barrier.wait()
    began = time.time()
    if mode == "ours":
        backend.write(version, items)
    else:
        raw_write(backend.table, version.encode() + b"#", items, backend.max_write_batch)
    results.put((began, time.time(), count))
    backend.close()


def parallel_load(url: str, version: str, total: int, writers: int, mode: str) -> float:
    ctx = multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(writers), ctx.Queue()
    share = total // writers
    procs = [
        ctx.Process(target=_writer, args=(url, version, i * share, share, mode, barrier, results))
        for i in range(writers)
    ]
    for proc in procs:
        proc.start()
    spans: list[tuple[float, float, int]] = [results.get(timeout=600) for _ in procs]
    for proc in procs:
        proc.join()
    return sum(n for _, _, n in spans) / (max(end for _, end, _ in spans) - min(begin for begin, _, _ in spans))


def load_section(url: str, backend: BigtableBackend, args: argparse.Namespace) -> list[str]:
    """One writer: the two clients alternate 10k-row chunks, so a busy moment of a shared machine hits
    both; the figure per run is its rows over its summed time (wall, and CPU of this process)."""
    single: dict[str, list[float]] = {"ours": [], "raw": []}
    per_cpu: dict[str, list[float]] = {"ours": [], "raw": []}
    multi: dict[str, list[float]] = {"ours": [], "raw": []}
    items = make_rows(0, args.rows)
    chunk = backend.max_write_batch
    for run in range(args.runs):
        wall = {"ours": 0.0, "raw": 0.0}
        cpu = {"ours": 0.0, "raw": 0.0}
        for n, start in enumerate(range(0, len(items), chunk)):
            part = items[start : start + chunk]
            for mode in ("ours", "raw") if (run + n) % 2 == 0 else ("raw", "ours"):
                began, cpu_began = time.perf_counter(), time.process_time()
                if mode == "ours":
                    backend.write(f"load-{mode}", part)
                else:
                    raw_write(backend.table, f"load-{mode}#".encode(), part, chunk)
                wall[mode] += time.perf_counter() - began
                cpu[mode] += time.process_time() - cpu_began
        for mode in ("ours", "raw"):
            single[mode].append(len(items) / wall[mode])
            per_cpu[mode].append(len(items) / cpu[mode])
            backend.drop_version(f"load-{mode}")
        for mode in ("ours", "raw") if run % 2 == 0 else ("raw", "ours"):
            multi[mode].append(parallel_load(url, f"par-{mode}", args.rows, args.writers, mode))
            backend.drop_version(f"par-{mode}")
    base = "bare bulk_mutate_rows, no status checks"
    together = f"load, {args.writers} writer processes together"
    ours_each, raw_each = median(multi["ours"]) / args.writers, median(multi["raw"]) / args.writers
    return [
        row("load, 1 writer process", median(single["ours"]), median(single["raw"]), "rows/s", base),
        row("  rows per CPU-second of that writer", median(per_cpu["ours"]), median(per_cpu["raw"]), "rows/s", base),
        row(together, median(multi["ours"]), median(multi["raw"]), "rows/s", base),
        row("  the same, per writer", ours_each, raw_each, "rows/s", base),
    ]


def batch_sweep(backend: BigtableBackend, args: argparse.Namespace) -> list[str]:
    """Rows per write_batch call; the sizes take turns (rotating order) for the same reason as above."""
    sizes = (1_000, 2_500, 5_000, 10_000, 20_000)
    rates: dict[int, list[float]] = {size: [] for size in sizes}
    cpu_rates: dict[int, list[float]] = {size: [] for size in sizes}
    items = make_rows(0, 20_000)
    for turn in range(args.runs * 2):
        for size in sizes[turn % len(sizes) :] + sizes[: turn % len(sizes)]:
            version = f"sweep-{size}"
            began, cpu_began = time.perf_counter(), time.process_time()
            for i in range(0, len(items), size):
                backend.write_batch(version, items[i : i + size])
            rates[size].append(len(items) / (time.perf_counter() - began))
            cpu_rates[size].append(len(items) / (time.process_time() - cpu_began))
            backend.drop_version(version)
    return [
        f"  rows per write_batch {size:>6,}: {median(rates[size]):>10,.0f} rows/s, "
        f"{median(cpu_rates[size]):>8,.0f} rows per CPU-second"
        for size in sizes
    ]


# -- reads -----------------------------------------------------------------------------------------


async def lookups(url: str, version: str, keys: list[bytes], batch: list[bytes]) -> dict[str, list[float]]:
    reader = open_reader(url)
    settings = Settings.from_url(StoreURL.parse(url))
    client = async_data_client(settings, credentials_for(settings))  # the bare client the reader builds on
    table = client.get_table(settings.instance, settings.table)
    prefix = version.encode() + b"#"
    out: dict[str, list[float]] = {"ours": [], "raw": [], "ours_batch": [], "raw_batch": []}
    try:
        from google.cloud.bigtable.data import ReadRowsQuery

        for key in keys[:50]:  # warm both channels
            await reader.get(version, key)
            await table.read_row(prefix + key)
        for key in keys:
            started = time.perf_counter()
            await reader.get(version, key)
            out["ours"].append(time.perf_counter() - started)
            started = time.perf_counter()
            await table.read_row(prefix + key)
            out["raw"].append(time.perf_counter() - started)
        for _ in range(10):
            started = time.perf_counter()
            await reader.get_many(version, batch)
            out["ours_batch"].append(time.perf_counter() - started)
            started = time.perf_counter()
            await table.read_rows(ReadRowsQuery(row_keys=[prefix + k for k in batch]))
            out["raw_batch"].append(time.perf_counter() - started)
    finally:
        await reader.aclose()
        await table.close()
        await client.close()
    return out


def read_section(url: str, backend: BigtableBackend, args: argparse.Namespace) -> list[str]:
    version = "lookup"
    items = make_rows(0, args.rows)
    backend.write(version, items)
    rng = random.Random(0)
    keys = [items[rng.randrange(len(items))][0] for _ in range(max(args.lookups, 2_000))]
    batch = [items[rng.randrange(len(items))][0] for _ in range(1_000)]
    p50: dict[str, list[float]] = {"ours": [], "raw": []}
    p99: dict[str, list[float]] = {"ours": [], "raw": []}
    batches: dict[str, list[float]] = {"ours": [], "raw": []}
    for _ in range(args.runs):
        out = asyncio.run(lookups(url, version, keys, batch))
        for mode in ("ours", "raw"):
            p50[mode].append(percentile(out[mode], 0.5) * 1000)
            p99[mode].append(percentile(out[mode], 0.99) * 1000)
            batches[mode].append(median(out[mode + "_batch"]) * 1000)
    sizes = (100, 250, 500, 1_000, 2_000)
    per_key: dict[int, list[float]] = {size: [] for size in sizes}
    for turn in range(args.runs * 2):
        for size in sizes[turn % len(sizes) :] + sizes[: turn % len(sizes)]:
            chunks = [keys[i : i + size] for i in range(0, max(size, 2_000), size)]
            started = time.perf_counter()
            for chunk in chunks:
                backend.read_batch(version, chunk)
            per_key[size].append((time.perf_counter() - started) / sum(len(c) for c in chunks) * 1e6)
    backend.drop_version(version)
    base, base_batch = "bare async read_row", "bare async read_rows"
    lines = [
        row("Reader.get p50", median(p50["ours"]), median(p50["raw"]), "ms", base),
        row("Reader.get p99", median(p99["ours"]), median(p99["raw"]), "ms", base),
        row("Reader.get_many, 1,000 keys", median(batches["ours"]), median(batches["raw"]), "ms", base_batch),
    ]
    lines += [f"  keys per read_batch {size:>6,}: {median(per_key[size]):>8.1f} us per key" for size in sizes]
    return lines


# -- through the API -------------------------------------------------------------------------------


def publish_grid(url: str) -> list[str]:
    """Publish a value for every key of the example's grid; return a sample of its keys."""
    from precompute.config import load_config
    from precompute.space import GridSpace

    space = load_config(EXAMPLE_CONFIG, env={"PRECOMPUTE_STORE": url}).space
    assert isinstance(space, GridSpace)
    keys = [space.key_for_id(i) for i in range(space.size)]
    backend = open_backend(url)
    versions = Versions(backend)
    record = versions.begin()
    backend.write(record.version, [(encode_key(k), encode_value({"weight_pounds": 7.31})) for k in keys])
    versions.mark_ready(record, len(keys))
    versions.publish(record)
    backend.close()
    return keys


def api_latency(url: str, keys: list[str], count: int) -> tuple[float, float]:
    import httpx

    port = free_port()
    env = {**os.environ, "PRECOMPUTE_STORE": url}
    cmd = [
        sys.executable,
        "-m",
        "precompute.cli",
        "serve",
        "--config",
        str(EXAMPLE_CONFIG),
        "--quiet",
        "--port",
        str(port),
    ]
    proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_port(port, proc)
        rng = random.Random(1)
        sample = [keys[rng.randrange(len(keys))] for _ in range(count)]
        with httpx.Client(base_url=f"http://127.0.0.1:{port}") as http:
            deadline = time.monotonic() + 30
            while http.get(f"/predict/{sample[0]}").status_code != 200:  # until the live version is loaded
                if time.monotonic() > deadline:
                    raise TimeoutError("the API never answered 200")
                time.sleep(0.1)
            for key in sample[:100]:
                http.get(f"/predict/{key}")
            times = []
            for key in sample:
                started = time.perf_counter()
                response = http.get(f"/predict/{key}")
                times.append(time.perf_counter() - started)
                if response.status_code != 200:
                    raise RuntimeError(f"/predict/{key} answered {response.status_code}: {response.text}")
        return percentile(times, 0.5) * 1000, percentile(times, 0.99) * 1000
    finally:
        stop(proc)


def api_section(url: str, args: argparse.Namespace) -> list[str]:
    keys = publish_grid(url)
    p50: dict[str, list[float]] = {"bigtable": [], "sqlite": []}
    p99: dict[str, list[float]] = {"bigtable": [], "sqlite": []}
    with tempfile.TemporaryDirectory(prefix="bench-bigtable-") as tmp:
        sqlite_url = f"sqlite:///{tmp}/store.db"
        publish_grid(sqlite_url)
        for _ in range(args.runs):
            for name, store in (("bigtable", url), ("sqlite", sqlite_url)):
                a, b = api_latency(store, keys, args.lookups)
                p50[name].append(a)
                p99[name].append(b)
    base = "the same API on sqlite://"
    return [
        row("GET /predict/<key> p50", median(p50["bigtable"]), median(p50["sqlite"]), "ms", base),
        row("GET /predict/<key> p99", median(p99["bigtable"]), median(p99["sqlite"]), "ms", base),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=60_000, help="rows per load and in the lookup version")
    parser.add_argument("--writers", type=int, default=2, help="writer processes for the parallel load")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--lookups", type=int, default=2_000, help="point lookups per run")
    parser.add_argument("--no-api", action="store_true", help="skip the figures through precompute serve")
    args = parser.parse_args()
    warnings.simplefilter("ignore")

    binary = find_emulator()
    if binary is None:
        sys.exit(f"cbtemulator is not available: {HINT}")
    port = free_port()
    emulator = subprocess.Popen([binary, "-host", "127.0.0.1", "-port", str(port)], stdout=subprocess.DEVNULL)
    os.environ["BIGTABLE_EMULATOR_HOST"] = f"127.0.0.1:{port}"
    try:
        wait_for_port(port, emulator)
        url = f"bigtable://{PROJECT}/{INSTANCE}/bench-{uuid.uuid4().hex[:8]}"
        backend = open_backend(url)
        assert isinstance(backend, BigtableBackend)
        backend.create_version("warm")
        print(f"emulator 127.0.0.1:{port}, {os.cpu_count()} CPUs, rows {args.rows:,}, runs {args.runs}, medians")
        print(f"  {'':<38} {'bigtable':>10} {'baseline':>10} {'':<7} {'ratio':>7}")
        sections: list[tuple[str, Callable[[], list[str]]]] = [
            ("load", lambda: load_section(url, backend, args)),
            ("rows per write call (the figures behind max_write_batch)", lambda: batch_sweep(backend, args)),
            ("reads", lambda: read_section(url, backend, args)),
        ]
        if not args.no_api:
            sections.append(("through the API", lambda: api_section(url, args)))
        for title, section in sections:
            print(f"{title}:", flush=True)
            for line in section():
                print(line, flush=True)
        backend.close()
    finally:
        stop(emulator)


if __name__ == "__main__":
    main()
