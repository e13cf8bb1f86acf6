"""The cost of going distributed: `precompute run` on a two-worker-node Ray cluster against a local Ray.

    python bench/cluster.py [--runs 3] [--rows 21762] [--cpus-per-node 1] [--actors N --cpus-per-actor C] [-v]

Both runs score the same grid (the 10.3 M-row grid of bench/e2e.py by default; --rows 21762 for the example's)
into the same throwaway redis-server on a free loopback port, flushed before each run, with the same [run]
settings (the plan's defaults, or the --actors and --cpus-per-actor given):

* local:   an empty ray_address, so the run starts a Ray of its own on this machine.
* cluster: ray_address = a RayCluster (tests/servers/ray_cluster.py) on loopback: a head with 0 CPUs and two
  worker nodes of --cpus-per-node CPUs each, in private mount namespaces that see neither the checkout nor
  the configs and the model, so the code and the model travel through Ray as on a real cluster.

The cluster is started once (its start is timed but not counted) and the two kinds of run alternate in turns,
each `precompute run` in a subprocess as a scheduler starts it. Every run's stage times come from its
--summary-json; the end prints the medians of --runs side by side with the ratio cluster / local.
Needs root, util-linux's unshare and redis-server. Every process is stopped by PID, also on Ctrl-C.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import redis
from e2e import ROOT, config_for  # bench/e2e.py, beside this script

from tests.servers import stop
from tests.servers.ray_cluster import RayCluster, can_unshare
from tests.servers.redis import RedisProcess

GRIDS = {21_762: False, 10_287_198: True}  # rows -> config_for(fine=...)
STAGES = ("check", "ray", "lock", "score", "verify", "publish", "gc", "total")


def write_config(tmp: Path, name: str, rows: int, url: str, ray_address: str, run: str) -> Path:
    """bench/e2e.py's config of the grid, into ``url``, with ``ray_address`` and the shared [run] lines."""
    path = config_for(tmp, name, GRIDS[rows])
    text = path.read_text().replace(f'url = "sqlite:///{name}.db"', f'url = "{url}"')
    path.write_text(text.replace("[run]\n", f'[run]\nray_address = "{ray_address}"\n{run}', 1))
    return path


def precompute_run(config: Path, verbose: bool, timeout: float) -> dict[str, Any]:
    """One `precompute run` in a subprocess; its summary, with the wall time added. Its output goes to a log
    beside the config (to the console with -v), whose tail is raised if the run fails."""
    summary, log = config.with_suffix(".json"), config.with_suffix(".log")
    summary.unlink(missing_ok=True)
    cmd = [sys.executable, "-m", "precompute.cli", "run", "--config", str(config), "--summary-json", str(summary)]
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "PRECOMPUTE_STORE")}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    start = time.perf_counter()
    with log.open("w") as out:
        proc = subprocess.Popen(
            [*cmd, "-v"] if verbose else cmd,
            stdout=None if verbose else out,
            stderr=subprocess.STDOUT if not verbose else None,
            env=env,
            cwd=config.parent,
        )
        try:
            proc.wait(timeout=timeout)
        finally:
            if proc.poll() is None:  # timed out or interrupted: SIGTERM drops the new version, then SIGKILL
                stop(proc, timeout=60)
    if proc.returncode != 0:
        tail = "" if verbose else log.read_text(errors="replace")[-4000:]
        raise RuntimeError(f"precompute run {config.name} exited {proc.returncode}\n{tail}")
    data: dict[str, Any] = json.loads(summary.read_text())
    data["wall"] = time.perf_counter() - start
    return data


def describe(name: str, data: dict[str, Any]) -> str:
    seconds = data["seconds"]
    stages = "  ".join(f"{stage} {seconds.get(stage, 0.0):6.2f}" for stage in STAGES)
    nodes = ", ".join(
        f"{n['id'][:6]} {n['actors']}a {n['rows_scored']:,}s/{n['rows_written']:,}w" for n in data["nodes"]
    )
    return f"  {name:<8} {stages}  wall {data['wall']:6.2f}  {data['rows_per_second']:>9,.0f} rows/s  [{nodes}]"


def report(runs: dict[str, list[dict[str, Any]]]) -> None:
    def median(name: str, stage: str) -> float:
        return float(statistics.median(r["seconds"].get(stage, 0.0) for r in runs[name]))

    print(f"\nmedians of {len(runs['local'])} run(s), seconds:   local   cluster   cluster/local")
    for stage in STAGES:
        local, cluster = median("local", stage), median("cluster", stage)
        ratio = f"{cluster / local:8.2f}x" if local >= 0.05 else "       -"  # not a ratio of noise
        print(f"  {stage:<8}                    {local:8.2f}  {cluster:8.2f}  {ratio}")
    rows = runs["local"][0]["rows"]
    local, cluster = rows / median("local", "total"), rows / median("cluster", "total")
    print(f"  rows/s end to end           {local:8,.0f}  {cluster:8,.0f}  {cluster / local:8.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3, help="turns of one local and one cluster run (median)")
    parser.add_argument("--rows", type=int, choices=sorted(GRIDS), default=10_287_198, help="which grid")
    half = max(1, (os.cpu_count() or 2) // 2)
    parser.add_argument(
        "--cpus-per-node", type=float, default=half, help="of each worker node (default: half the cores)"
    )
    parser.add_argument("--actors", type=int, help="[run] actors of both runs (default: the plan's)")
    parser.add_argument("--cpus-per-actor", type=float, help="[run] cpus_per_actor of both runs")
    parser.add_argument("--timeout", type=float, default=900, help="seconds one run may take")
    parser.add_argument("-v", "--verbose", action="store_true", help="the runs' output with Ray's (-v)")
    args = parser.parse_args()
    if not can_unshare():
        sys.exit("bench/cluster.py needs root and util-linux's unshare (private mount namespaces)")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so that every finally below runs
    run = "".join(
        f"{key} = {value:g}\n"
        for key, value in (("actors", args.actors), ("cpus_per_actor", args.cpus_per_actor))
        if value is not None
    )

    tmp = Path(tempfile.mkdtemp(prefix="precompute-cluster-bench-"))
    server = RedisProcess(shutil.which("redis-server") or "/usr/bin/redis-server", tmp / "redis")
    cluster = RayCluster(tmp / "driver", tmp / "ray")
    cluster.driver_dir.mkdir()
    cluster.temp_dir.mkdir()
    try:
        server.start()
        start = time.perf_counter()
        cluster.start_head()
        for name in ("node1", "node2"):
            cluster.add_node(name, cpus=args.cpus_per_node)
        print(
            f"cluster: head (0 CPUs) + 2 worker nodes x {args.cpus_per_node:g} CPU at {cluster.address}, "
            f"started in {time.perf_counter() - start:.1f} s (not counted); logs in {cluster.temp_dir}",
            flush=True,
        )
        addresses = {"local": "", "cluster": cluster.address}
        runs: dict[str, list[dict[str, Any]]] = {name: [] for name in addresses}
        for turn in range(args.runs):
            print(f"turn {turn + 1} of {args.runs}, seconds:", flush=True)
            for name in list(addresses)[:: -1 if turn % 2 else 1]:  # local first, then cluster first, ...
                with redis.Redis(port=server.port) as client:
                    client.flushall(asynchronous=False)
                url = f"redis://127.0.0.1:{server.port}/0?prefix=bench-{name}-{turn}:"
                config = write_config(cluster.driver_dir, f"{name}-{turn}", args.rows, url, addresses[name], run)
                runs[name].append(precompute_run(config, args.verbose, args.timeout))
                print(describe(name, runs[name][-1]), flush=True)
        print(f"grid: {runs['local'][0]['rows']:,} rows; actors: {runs['local'][0]['plan']}")
        report(runs)
        shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        print(f"configs, run logs and node logs kept in {tmp}", file=sys.stderr)
        raise
    finally:
        cluster.stop()
        server.stop()


if __name__ == "__main__":
    main()
