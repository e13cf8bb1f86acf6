"""Redis backend figures, each beside its baseline from the same run on the same machine.

1. Bulk load rows/s of N keys through ``RedisBackend.write`` (1 and several writer processes) against
   ``redis-cli --pipe`` of the same keys: as one SET per key (the plain-string layout) and as one HSET
   per key into the same buckets (the same layout, so only the loader differs). Medians of --repeat runs.
2. Memory per row: ``used_memory`` growth per row in the bucketed layout and as plain strings.
3. Lookup latency (``RedisReader.get`` and ``get_many`` of 20 keys, from another process) while
   ``drop_version`` drops a 1 M-key version, against the same lookups with nothing running and while
   the classic SCAN + UNLINK gc deletes the same rows stored as plain strings.

Starts its own redis-server on a free loopback port and stops it at the end::

    .venv/bin/python bench/redis_load.py                      # 1 M and 10 M rows, 3 runs each
    .venv/bin/python bench/redis_load.py --rows 200000 --repeat 1 --gc-rows 200000   # quick look
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import redis
from rows import babyweight_rows  # bench/rows.py, beside this script

from precompute.adapters import open_backend, open_reader
from precompute.adapters.redis.layout import ROWS_PER_BUCKET
from precompute.adapters.redis.wire.protocol import pack
from precompute.store import Versions
from tests.servers import free_port


def start_server(workdir: Path) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    binary = shutil.which("redis-server") or "/usr/bin/redis-server"
    args = ["--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(workdir)]
    proc = subprocess.Popen([binary, *args], stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + 20
    while True:
        try:
            redis.Redis(port=port).ping()
            return proc, port
        except redis.ConnectionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def used_memory(client: redis.Redis) -> int:
    info: dict[str, Any] = client.info("memory")
    return int(info["used_memory"])


def flush(client: redis.Redis) -> None:
    client.flushall(asynchronous=False)
    time.sleep(0.3)


def pipe_file(path: Path, rows: list[tuple[bytes, bytes]], hashed: bool, buckets: int, prefix: bytes) -> None:
    with path.open("wb") as out:
        for start in range(0, len(rows), 100_000):
            part = rows[start : start + 100_000]
            if hashed:
                out.write(b"".join(pack(b"HSET", prefix + b"%d" % (zlib.crc32(k) % buckets), k, v) for k, v in part))
            else:
                out.write(b"".join(pack(b"SET", prefix + k, v) for k, v in part))


def time_pipe(port: int, path: Path) -> float:
    cli = shutil.which("redis-cli") or "/usr/bin/redis-cli"
    with path.open("rb") as data:
        started = time.perf_counter()
        subprocess.run([cli, "-p", str(port), "--pipe"], stdin=data, stdout=subprocess.DEVNULL, check=True)
        return time.perf_counter() - started


def _writer(url: str, version: str, start: int, end: int, ready: Any) -> None:
    # Each writer builds its own rows first, like a Ray write task holding only its blocks; a fork
    # of one parent holding every row would pay copy-on-write and GC over all of them instead.
    rows = babyweight_rows(start, end)
    backend = open_backend(url)
    ready.wait()
    step = backend.max_write_batch
    for at in range(0, len(rows), step):
        backend.write(version, rows[at : at + step])
    backend.close()


def time_backend(url: str, n: int, writers: int) -> tuple[float, str]:
    backend = open_backend(url)
    record = Versions(backend).begin(expected_rows=n)
    context = multiprocessing.get_context("spawn")
    ready = context.Barrier(writers + 1)
    bounds = [n * i // writers for i in range(writers + 1)]
    procs = [
        context.Process(target=_writer, args=(url, record.version, bounds[i], bounds[i + 1], ready))
        for i in range(writers)
    ]
    for proc in procs:
        proc.start()
    ready.wait()
    started = time.perf_counter()
    for proc in procs:
        proc.join()
    elapsed = time.perf_counter() - started
    if any(proc.exitcode != 0 for proc in procs):
        raise RuntimeError("a writer process failed")
    backend.close()
    return elapsed, record.version


def bench_load(port: int, n: int, repeat: int, writer_counts: list[int], workdir: Path) -> dict[str, Any]:
    rows = babyweight_rows(0, n)
    client = redis.Redis(port=port)
    url = f"redis://127.0.0.1:{port}/0?prefix=b:"
    buckets = -(-n // ROWS_PER_BUCKET)
    set_file, hset_file = workdir / "set.resp", workdir / "hset.resp"
    pipe_file(set_file, rows, False, buckets, b"b:s:")
    pipe_file(hset_file, rows, True, buckets, b"b:v:pipe:")
    times: dict[str, list[float]] = {}
    memory: dict[str, float] = {}
    for _ in range(repeat):
        for name, path in (("redis-cli --pipe, SET per key", set_file), ("redis-cli --pipe, HSET per key", hset_file)):
            flush(client)
            base = used_memory(client)
            times.setdefault(name, []).append(time_pipe(port, path))
            memory[name] = (used_memory(client) - base) / n
        for writers in writer_counts:
            flush(client)
            base = used_memory(client)
            elapsed, version = time_backend(url, n, writers)
            name = f"RedisBackend.write, {writers} writer process{'es' if writers > 1 else ''}"
            times.setdefault(name, []).append(elapsed)
            memory["RedisBackend layout (bucket hashes)"] = (used_memory(client) - base) / n
            check = open_backend(url)
            sample = random.Random(1).sample(range(n), 1000)
            assert check.read(version, [rows[i][0] for i in sample]) == [rows[i][1] for i in sample]
            check.close()
    flush(client)
    client.close()
    set_file.unlink()
    hset_file.unlink()
    return {"times": times, "memory": memory}


def print_load(n: int, result: dict[str, Any]) -> None:
    times: dict[str, list[float]] = result["times"]
    base_set = n / statistics.median(times["redis-cli --pipe, SET per key"])
    base_hset = n / statistics.median(times["redis-cli --pipe, HSET per key"])
    print(f"\nBulk load, {n:,} rows (median of {len(next(iter(times.values())))} runs)")
    print(f"{'loader':<44}{'rows/s':>12}{'vs pipe SET':>13}{'vs pipe HSET':>14}")
    for name, runs in times.items():
        rate = n / statistics.median(runs)
        print(f"{name:<44}{rate:>12,.0f}{rate / base_set:>12.0%}{rate / base_hset:>14.0%}")
    print(f"\nMemory per row, {n:,} rows (used_memory growth / rows)")
    for name, per_row in result["memory"].items():
        print(f"{name:<44}{per_row:>10.1f} B")


def _lookups(url: str, version: str, keys: list[bytes], stop: Any, out: Any) -> None:
    async def run() -> list[tuple[float, float, str]]:
        reader = open_reader(url)
        samples = []
        rng = random.Random(7)
        await reader.get_alias()
        while not stop.is_set():
            if rng.random() < 0.8:
                started = time.perf_counter()
                await reader.get(version, rng.choice(keys))
                kind = "get"
            else:
                batch = rng.sample(keys, 20)
                started = time.perf_counter()
                await reader.get_many(version, batch)
                kind = "get_many(20)"
            samples.append((started, time.perf_counter() - started, kind))
        await reader.aclose()
        return samples

    out.put(asyncio.run(run()))


def _percentiles(latencies: list[float]) -> str:
    if not latencies:
        return "no samples"
    ordered = sorted(latencies)
    p = [ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1e3 for q in (0.5, 0.99, 0.999)]
    head = f"n={len(ordered):>7,}  p50 {p[0]:.3f} ms  p99 {p[1]:.3f} ms"
    return f"{head}  p99.9 {p[2]:.3f} ms  max {ordered[-1] * 1e3:.2f} ms"


def bench_gc(port: int, n: int, drops: int = 5) -> None:
    url = f"redis://127.0.0.1:{port}/0?prefix=g:"
    client = redis.Redis(port=port)
    flush(client)
    backend = open_backend(url)
    versions = Versions(backend)
    live_rows = babyweight_rows(0, 200_000)
    live = versions.begin(expected_rows=len(live_rows))
    backend.write(live.version, live_rows)
    versions.mark_ready(live, len(live_rows))
    versions.publish(live)
    rows = babyweight_rows(0, n)
    doomed = []
    for _ in range(drops):  # several drops of the same size, so the p99 rests on enough lookups
        record = versions.begin(expected_rows=n)
        for start in range(0, n, backend.max_write_batch):
            backend.write(record.version, rows[start : start + backend.max_write_batch])
        doomed.append(record.version)
    for start in range(0, n, 10_000):  # the same rows as plain strings, for the SCAN + UNLINK baseline
        client.mset({b"g:s:" + k: v for k, v in rows[start : start + 10_000]})

    context = multiprocessing.get_context("fork")
    stop, out = context.Event(), context.Queue()
    reader = context.Process(target=_lookups, args=(url, live.version, [k for k, _ in live_rows], stop, out))
    reader.start()
    time.sleep(1.0)
    quiet = [(time.perf_counter(), time.perf_counter() + 3.0)]
    time.sleep(3.0)
    ours = []
    for version in doomed:
        started = time.perf_counter()
        backend.drop_version(version)
        ours.append((started, time.perf_counter()))
        time.sleep(0.3)
    started = time.perf_counter()
    batch: list[bytes] = []
    for key in client.scan_iter(match=b"g:s:*", count=1000):
        batch.append(key)
        if len(batch) == 1000:
            client.unlink(*batch)
            batch = []
    if batch:
        client.unlink(*batch)
    scan = [(started, time.perf_counter())]
    time.sleep(0.2)
    stop.set()
    samples: list[tuple[float, float, str]] = out.get()
    reader.join()
    backend.close()

    spent = sum(end - begin for begin, end in ours) / len(ours)
    print(f"\nLookups from another process while {n:,}-row versions are dropped (live version: 200,000 rows)")
    for label, windows in (
        ("nothing else running", quiet),
        (f"drop_version x{len(ours)} (bucket UNLINK), {spent:.2f} s each", ours),
        (f"baseline SCAN + UNLINK of strings, {scan[0][1] - scan[0][0]:.2f} s", scan),
    ):
        for kind in ("get", "get_many(20)"):
            window = [lat for t, lat, k in samples if k == kind and any(b <= t <= e for b, e in windows)]
            print(f"{label:<50}{kind:<14}{_percentiles(window)}")
    flush(client)
    client.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[1_000_000, 10_000_000])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--writers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--gc-rows", type=int, default=1_000_000, help="0 skips the gc measurement")
    args = parser.parse_args()
    server = subprocess.getoutput("redis-server --version").split()[2]
    print(f"redis-server {server}, redis-py {redis.__version__}, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}")
    with tempfile.TemporaryDirectory(prefix="redis-bench-") as tmp:
        proc, port = start_server(Path(tmp))
        try:
            for n in args.rows:
                print_load(n, bench_load(port, n, args.repeat, args.writers, Path(tmp)))
            if args.gc_rows:
                bench_gc(port, args.gc_rows)
        finally:
            proc.terminate()
            proc.wait()
    print(f"\nload average {os.getloadavg()[0]:.1f} at the end (2 cores shared with other work: expect noise)")


if __name__ == "__main__":
    main()
