"""DynamoDB backend figures, each beside its baseline from the same run on the same machine.

1. Bulk load, items/s, through ``DynamoDBBackend.write`` against boto3's own ``Table.batch_writer()``
   (the usual way, and the one that has lost items under throttling), with one writer process and with
   --writers processes writing their share at once (as the Ray write tasks do).
2. Lookups, p50/p99 and client CPU: ``DynamoDBReader.get`` against a plain boto3 ``get_item`` (the
   baseline) and against boto3 in a thread pool; ``get_many`` of 100 keys against one boto3
   ``batch_get_item``; lookups/s with 64 in flight. aiobotocore is measured too where it is installed
   (it pins botocore, so it is not in the project's environment).
3. Layout (--layout): a table per version against one shared table with version-prefixed keys: load
   items/s, GetItem p50, and the cost of dropping a version.
4. API (--api): ``precompute run`` of the babyweight example into the store, then bench/lookup.py
   (``precompute serve`` against bare Starlette, with wrk).

Every figure is the median of --runs runs. Starts its own DynamoDB Local (``make servers``) on a free
port unless --endpoint names a server::

    .venv/bin/python bench/dynamodb_load.py                         # load + lookups, 3 runs
    .venv/bin/python bench/dynamodb_load.py --layout --api          # everything
    .venv/bin/python bench/dynamodb_load.py --items 20000 --runs 1  # quick look
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import boto3  # noqa: E402
from rows import babyweight_rows  # noqa: E402  (bench/rows.py, beside this script)

from precompute.adapters import open_backend, open_reader  # noqa: E402
from precompute.adapters.dynamodb import DynamoDBBackend  # noqa: E402
from tests.servers import free_port, stop, wait_for_port  # noqa: E402
from tests.servers.dynamodb import create_key_table, local_dir, store_url  # noqa: E402

REGION = "us-east-1"
KEY = "precomputelocal"  # DynamoDB Local takes any letters-and-digits key pair


# -- setup ----------------------------------------------------------------------------------------


@contextmanager
def dynamodb_local() -> Iterator[str]:
    folder = local_dir()
    if not (folder / "DynamoDBLocal.jar").exists():
        sys.exit(f"no DynamoDB Local in {folder}: run `make servers`")
    port = free_port()
    cmd = ["java", "-Xmx2g", "-Djava.library.path=DynamoDBLocal_lib", "-jar", "DynamoDBLocal.jar"]
    cmd += ["-inMemory", "-sharedDb", "-disableTelemetry", "-port", str(port)]
    proc = subprocess.Popen(cmd, cwd=folder, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_port(port, proc, timeout=90)
        yield f"http://127.0.0.1:{port}"
    finally:
        stop(proc)


def raw_client(endpoint: str) -> Any:
    import botocore.config

    session = boto3.session.Session(aws_access_key_id=KEY, aws_secret_access_key=KEY, region_name=REGION)
    config = botocore.config.Config(max_pool_connections=32, retries={"mode": "standard"})
    return session.client("dynamodb", endpoint_url=endpoint, config=config)


def count_items(client: Any, table: str) -> int:
    return sum(page["Count"] for page in client.get_paginator("scan").paginate(TableName=table, Select="COUNT"))


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))] * 1000


# -- 1. bulk load ---------------------------------------------------------------------------------


def _writer(kind: str, url: str, endpoint: str, table: str, start: int, stop: int, go: Any, done: Any) -> None:
    """One writer process: build its client and rows, wait for the start signal, load, report seconds."""
    rows = babyweight_rows(start, stop)
    if kind == "ours":
        backend = open_backend(url)
        assert isinstance(backend, DynamoDBBackend)
        version = table.rsplit(".v.", 1)[1]
        go.wait()
        began = time.perf_counter()
        backend.write(version, rows)
        backend.close()
    else:
        resource = boto3.session.Session(aws_access_key_id=KEY, aws_secret_access_key=KEY, region_name=REGION).resource(
            "dynamodb", endpoint_url=endpoint
        )
        target = resource.Table(table)
        go.wait()
        began = time.perf_counter()
        with target.batch_writer() as batch:
            for key, value in rows:
                batch.put_item(Item={"k": key, "v": value})
    done.put(time.perf_counter() - began)


def fresh_store(endpoint: str) -> tuple[str, DynamoDBBackend]:
    """A new store (its own table prefix) on ``endpoint``, with an empty version ``v``."""
    url = store_url(f"bench{uuid.uuid4().hex[:8]}", endpoint)
    backend = open_backend(url)
    assert isinstance(backend, DynamoDBBackend)
    backend.create_version("v")
    return url, backend


def load_once(kind: str, endpoint: str, items: int, writers: int) -> float:
    """Items/s of one load of ``items`` into a fresh version table by ``writers`` processes."""
    url, backend = fresh_store(endpoint)
    table = backend.layout.version_table("v")
    context = multiprocessing.get_context("spawn")
    go, done = context.Event(), context.Queue()
    share = -(-items // writers)
    procs = [
        context.Process(
            target=_writer,
            args=(kind, url, endpoint, table, i * share, min(items, (i + 1) * share), go, done),
        )
        for i in range(writers)
    ]
    for proc in procs:
        proc.start()
    time.sleep(0.5)
    while not all(proc.is_alive() for proc in procs):
        time.sleep(0.1)
    time.sleep(3.0)  # imports and client construction are not part of the load
    began = time.perf_counter()
    go.set()
    for _ in procs:
        done.get(timeout=600)
    elapsed = time.perf_counter() - began
    for proc in procs:
        proc.join()
    landed = count_items(backend.client, table)
    if landed != items:
        raise RuntimeError(f"{kind} load with {writers} writers stored {landed} of {items} items")
    backend.drop_version("v")
    backend.close()
    return items / elapsed


def bench_load(endpoint: str, items: int, writers: int, runs: int) -> None:
    print(f"\n1. bulk load of {items:,} items (babyweight-shaped keys, 22-byte values), medians of {runs} runs")
    print(f"{'writers':>8} {'batch_writer items/s':>21} {'ours items/s':>13} {'ours/baseline':>14}")
    for n in sorted({1, writers}):
        base = [load_once("boto3", endpoint, items, n) for _ in range(runs)]
        ours = [load_once("ours", endpoint, items, n) for _ in range(runs)]
        print(f"{n:>8} {median(base):>21,.0f} {median(ours):>13,.0f} {median(ours) / median(base):>13.2f}x")


def threads_once(endpoint: str, items: int, threads: int, chunk: int) -> float:
    prefix = f"bench{uuid.uuid4().hex[:8]}"
    backend = open_backend(f"{store_url(prefix, endpoint)}&write_threads={threads}")
    backend.create_version("v")
    rows = babyweight_rows(0, items)
    began = time.perf_counter()
    for start in range(0, items, chunk):
        backend.write("v", rows[start : start + chunk])
    rate = items / (time.perf_counter() - began)
    backend.drop_version("v")
    backend.close()
    return rate


def bench_threads(endpoint: str, items: int, runs: int) -> None:
    """Items/s of one writer process by write_threads= and by the size of each write() call."""
    print(f"\n1b. one writer, {items:,} items: items/s by write_threads and write() call size, medians of {runs}")
    chunks = (1_000, 5_000, 20_000)
    print(f"{'threads':>8} " + " ".join(f"{f'{c:,}/call':>12}" for c in chunks))
    for threads in (1, 2, 4, 8, 16):
        rates = [median([threads_once(endpoint, items, threads, c) for _ in range(runs)]) for c in chunks]
        print(f"{threads:>8} " + " ".join(f"{r:>12,.0f}" for r in rates))


# -- 2. lookups -----------------------------------------------------------------------------------


async def timed(fn: Callable[[bytes], Awaitable[Any]], keys: list[bytes]) -> tuple[list[float], float]:
    """Latencies of ``fn(key)`` one after another, and the client CPU per call in ms."""
    samples = []
    cpu = time.process_time()
    for key in keys:
        began = time.perf_counter()
        await fn(key)
        samples.append(time.perf_counter() - began)
    return samples, (time.process_time() - cpu) / len(keys) * 1000


async def concurrent_rate(fn: Callable[[bytes], Awaitable[Any]], keys: list[bytes], width: int) -> tuple[float, float]:
    """Lookups/s and CPU ms per lookup with ``width`` lookups in flight."""
    gate = asyncio.Semaphore(width)

    async def one(key: bytes) -> None:
        async with gate:
            await fn(key)

    began, cpu = time.perf_counter(), time.process_time()
    await asyncio.gather(*(one(k) for k in keys))
    return len(keys) / (time.perf_counter() - began), (time.process_time() - cpu) / len(keys) * 1000


def lookup_clients(url: str, endpoint: str, table: str, version: str) -> dict[str, dict[str, Any]]:
    """Each option as (single lookup, batch of 100 lookup) coroutines, plus its close."""
    client = raw_client(endpoint)
    pool = ThreadPoolExecutor(16)
    reader = open_reader(url)

    def batch_sync(keys: list[bytes]) -> list[bytes | None]:
        request: dict[str, Any] = {table: {"Keys": [{"k": {"B": k}} for k in keys]}}
        found: dict[bytes, bytes] = {}
        while request:
            answer = client.batch_get_item(RequestItems=request)
            found.update((bytes(i["k"]["B"]), bytes(i["v"]["B"])) for i in answer["Responses"].get(table, []))
            request = answer.get("UnprocessedKeys") or {}
        return [found.get(k) for k in keys]

    async def boto3_get(key: bytes) -> Any:
        return client.get_item(TableName=table, Key={"k": {"B": key}}).get("Item")

    async def boto3_batch(keys: list[bytes]) -> Any:
        return batch_sync(keys)

    async def pool_get(key: bytes) -> Any:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(pool, lambda: client.get_item(TableName=table, Key={"k": {"B": key}}))

    async def pool_batch(keys: list[bytes]) -> Any:
        return await asyncio.get_running_loop().run_in_executor(pool, batch_sync, keys)

    async def reader_get(key: bytes) -> Any:
        return await reader.get(version, key)

    async def reader_batch(keys: list[bytes]) -> Any:
        return await reader.get_many(version, keys)

    async def nothing() -> None:
        return None

    options: dict[str, dict[str, Any]] = {
        "boto3 get_item (baseline)": {"one": boto3_get, "many": boto3_batch, "close": nothing},
        "boto3 in a thread pool": {"one": pool_get, "many": pool_batch, "close": nothing},
        "DynamoDBReader": {"one": reader_get, "many": reader_batch, "close": reader.aclose},
    }
    try:
        from aiobotocore.session import get_session  # type: ignore[import-not-found]
    except ImportError:
        return options
    holder: dict[str, Any] = {}

    async def aio_client() -> Any:
        if "client" not in holder:
            holder["ctx"] = get_session().create_client(
                "dynamodb", endpoint_url=endpoint, region_name=REGION, aws_access_key_id=KEY, aws_secret_access_key=KEY
            )
            holder["client"] = await holder["ctx"].__aenter__()
        return holder["client"]

    async def aio_get(key: bytes) -> Any:
        return (await (await aio_client()).get_item(TableName=table, Key={"k": {"B": key}})).get("Item")

    async def aio_batch(keys: list[bytes]) -> Any:
        aio = await aio_client()
        return await aio.batch_get_item(RequestItems={table: {"Keys": [{"k": {"B": k}} for k in keys]}})

    async def aio_close() -> None:
        if "ctx" in holder:
            await holder["ctx"].__aexit__(None, None, None)

    options["aiobotocore"] = {"one": aio_get, "many": aio_batch, "close": aio_close}
    return options


def bench_lookups(endpoint: str, items: int, runs: int, lookups: int) -> None:
    url, backend = fresh_store(endpoint)
    rows = babyweight_rows(0, items)
    backend.write("v", rows)
    table = backend.layout.version_table("v")
    keys = [k for k, _ in rows]
    sample = [keys[(i * 7919) % len(keys)] for i in range(lookups)]
    batches = [[keys[(j * 104729 + i) % len(keys)] for i in range(100)] for j in range(max(20, lookups // 20))]
    figures: dict[str, dict[str, list[float]]] = {}

    async def measure() -> None:
        for _ in range(runs):
            for name, option in lookup_clients(url, endpoint, table, "v").items():
                await option["one"](sample[0])  # connect
                single, cpu = await timed(option["one"], sample)
                many, _ = await timed(option["many"], batches)  # type: ignore[arg-type]
                rate, rate_cpu = await concurrent_rate(option["one"], sample, 64)
                await option["close"]()
                got = figures.setdefault(name, {})
                for label, value in (
                    ("p50", pct(single, 0.5)),
                    ("p99", pct(single, 0.99)),
                    ("cpu", cpu),
                    ("b50", pct(many, 0.5)),
                    ("b99", pct(many, 0.99)),
                    ("rate", rate),
                    ("rcpu", rate_cpu),
                ):
                    got.setdefault(label, []).append(value)

    asyncio.run(measure())
    backend.drop_version("v")
    backend.close()
    print(f"\n2. lookups on {items:,} items, {lookups:,} keys one at a time, medians of {runs} runs (ms)")
    print(
        f"{'client':<27} {'p50':>6} {'p99':>6} {'cpu/call':>8} {'x100 p50':>9} {'x100 p99':>9} "
        f"{'64 in flight/s':>15} {'cpu/call':>8} {'p50 vs base':>11}"
    )
    base = median(figures["boto3 get_item (baseline)"]["p50"])
    for name, got in figures.items():
        m = {label: median(values) for label, values in got.items()}
        print(
            f"{name:<27} {m['p50']:>6.2f} {m['p99']:>6.2f} {m['cpu']:>8.2f} {m['b50']:>9.2f} {m['b99']:>9.2f} "
            f"{m['rate']:>15,.0f} {m['rcpu']:>8.2f} {m['p50'] / base:>10.2f}x"
        )


# -- 3. layout ------------------------------------------------------------------------------------


def bench_layout(endpoint: str, items: int, runs: int) -> None:
    """A table per version (what the adapter does) against one shared table with version-prefixed keys."""
    client = raw_client(endpoint)
    figures: dict[str, list[float]] = {}

    def put_all(table: str, rows: list[tuple[bytes, bytes]]) -> float:
        chunks = [rows[i : i + 25] for i in range(0, len(rows), 25)]

        def put(chunk: list[tuple[bytes, bytes]]) -> None:
            request = {table: [{"PutRequest": {"Item": {"k": {"B": k}, "v": {"B": v}}}} for k, v in chunk]}
            while request:
                request = client.batch_write_item(RequestItems=request).get("UnprocessedItems") or {}

        began = time.perf_counter()
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(put, chunks))
        return len(rows) / (time.perf_counter() - began)

    def get_p50(table: str, keys: list[bytes]) -> float:
        samples = []
        for key in keys:
            began = time.perf_counter()
            client.get_item(TableName=table, Key={"k": {"B": key}})
            samples.append(time.perf_counter() - began)
        return pct(samples, 0.5)

    for _ in range(runs):
        prefix = f"bench{uuid.uuid4().hex[:8]}"
        backend = open_backend(store_url(prefix, endpoint))
        assert isinstance(backend, DynamoDBBackend)
        rows = babyweight_rows(0, items)
        probe = [rows[(i * 7919) % items][0] for i in range(1000)]

        backend.create_version("v1")
        table = backend.layout.version_table("v1")
        figures.setdefault("per-version load", []).append(put_all(table, rows))
        figures.setdefault("per-version get", []).append(get_p50(table, probe))
        began = time.perf_counter()
        backend.drop_version("v1")
        figures.setdefault("per-version drop s", []).append(time.perf_counter() - began)
        figures.setdefault("per-version drop requests", []).append(3)  # DescribeTable, DeleteTable, DescribeTable

        shared = f"{prefix}.shared"
        create_key_table(client, shared)
        old = [(b"v0\x00" + k, v) for k, v in rows]  # the version that stays
        put_all(shared, old)
        new = [(b"v1\x00" + k, v) for k, v in rows]
        figures.setdefault("shared load", []).append(put_all(shared, new))
        figures.setdefault("shared get", []).append(get_p50(shared, [b"v1\x00" + k for k in probe]))
        began = time.perf_counter()
        requests = drop_prefixed(client, shared, b"v1\x00")
        figures.setdefault("shared drop s", []).append(time.perf_counter() - began)
        figures.setdefault("shared drop requests", []).append(requests)
        client.delete_table(TableName=shared)
        backend.close()

    m = {name: median(values) for name, values in figures.items()}
    print(f"\n3. layout, {items:,} items per version, medians of {runs} runs")
    print(f"{'':<28} {'table per version':>18} {'shared, prefixed keys':>22}")
    print(f"{'load items/s':<28} {m['per-version load']:>18,.0f} {m['shared load']:>22,.0f}")
    print(f"{'GetItem p50 ms':<28} {m['per-version get']:>18.2f} {m['shared get']:>22.2f}")
    print(f"{'drop one version: s':<28} {m['per-version drop s']:>18.2f} {m['shared drop s']:>22.2f}")
    print(f"{'drop: requests':<28} {m['per-version drop requests']:>18,.0f} {m['shared drop requests']:>22,.0f}")
    print(f"{'drop: write units billed':<28} {0:>18,} {items:>22,}")


def drop_prefixed(client: Any, table: str, prefix: bytes) -> int:
    """Delete one version's items from a shared table: a full Scan (a hash key cannot be range-queried)
    and a 25-item BatchWriteItem per page slice. Returns the requests made."""
    requests = 0
    start: dict[str, Any] | None = None
    while True:
        page = client.scan(
            TableName=table,
            ProjectionExpression="k",
            FilterExpression="begins_with(k, :p)",
            ExpressionAttributeValues={":p": {"B": prefix}},
            **({"ExclusiveStartKey": start} if start else {}),
        )
        requests += 1
        keys = [item["k"] for item in page["Items"]]
        for i in range(0, len(keys), 25):
            request = {table: [{"DeleteRequest": {"Key": {"k": k}}} for k in keys[i : i + 25]]}
            while request:
                requests += 1
                request = client.batch_write_item(RequestItems=request).get("UnprocessedItems") or {}
        start = page.get("LastEvaluatedKey")
        if not start:
            return requests


# -- 4. through the API ---------------------------------------------------------------------------


def bench_api(endpoint: str, runs: int) -> None:
    """The example scored into the store by ``precompute run``, then served: with the API's hot-key cache
    off, every lookup is a store round trip through DynamoDBReader; with it on (the default) repeated
    keys never reach the store."""
    url = store_url(f"bench{uuid.uuid4().hex[:8]}", endpoint)
    env = {**os.environ, "PRECOMPUTE_STORE": url}
    example = ROOT / "examples/babyweight/precompute.toml"
    text = example.read_text().replace('path = "model"', f'path = "{example.parent / "model"}"')
    print("\n4. through the API: precompute run of the babyweight example, then bench/lookup.py")
    with tempfile.TemporaryDirectory() as tmp:
        configs = {
            "cache off": Path(tmp) / "nocache.toml",
            "cache on (default)": Path(tmp) / "cache.toml",
        }
        configs["cache off"].write_text(text.replace("[serve]\n", "[serve]\ncache_bytes = 0\n"))
        configs["cache on (default)"].write_text(text)
        began = time.perf_counter()
        cmd = [sys.executable, "-m", "precompute.cli", "run", "--config", str(configs["cache off"]), "--quiet"]
        subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        print(f"precompute run into {url.split('?')[0]}: {time.perf_counter() - began:.1f} s")
        for name, config in configs.items():
            print(f"-- {name}", flush=True)
            cmd = [sys.executable, str(ROOT / "bench/lookup.py"), "--config", str(config), "--runs", str(runs)]
            # lookup.py fails the whole run when one wrk report does not parse (seen on a loaded machine).
            if subprocess.run(cmd, env=env).returncode != 0:
                print("   lookup.py failed; once more", flush=True)
                subprocess.run(cmd, env=env, check=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--endpoint", help="an already running DynamoDB Local (default: start one)")
    parser.add_argument("--items", type=int, default=50_000)
    parser.add_argument("--writers", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--lookups", type=int, default=2000)
    parser.add_argument("--layout", action="store_true", help="also compare the two layouts")
    parser.add_argument("--api", action="store_true", help="also run precompute run + bench/lookup.py")
    parser.add_argument("--threads", action="store_true", help="also load by write_threads and call size")
    parser.add_argument("--skip-load", action="store_true")
    parser.add_argument("--skip-lookups", action="store_true")
    args = parser.parse_args()

    with nullcontext(args.endpoint) if args.endpoint else dynamodb_local() as endpoint:
        print(f"DynamoDB Local at {endpoint}; {os.cpu_count()} cores, shared with the server")
        if not args.skip_load:
            bench_load(endpoint, args.items, args.writers, args.runs)
        if args.threads:
            bench_threads(endpoint, min(args.items, 20_000), args.runs)
        if not args.skip_lookups:
            bench_lookups(endpoint, min(args.items, 20_000), args.runs, args.lookups)
        if args.layout:
            bench_layout(endpoint, min(args.items, 20_000), args.runs)
        if args.api:
            bench_api(endpoint, args.runs)


if __name__ == "__main__":
    main()
