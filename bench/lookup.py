"""Lookup throughput and latency through `precompute serve`, side by side with bare Starlette.

    python bench/lookup.py --config examples/babyweight/precompute.toml [--store URL] [--runs 3] [--seconds 5]
                           [--no-cache] [--against DIR]

Needs `wrk` (Debian package `wrk`) and a published version in the store (`precompute run` first). Both
servers run one uvicorn process with the same settings (access log off), side by side, and wrk runs against
them in turns; it requests keys spread over the space. Prints req/s and p50/p99 at 1 and 16 connections,
the median of --runs runs, and the ratio to bare. ``--against DIR`` adds the `precompute serve` of another
checkout (e.g. ``git archive REV | tar -x -C DIR``) to the turns: before/after figures from one run.
"""

from __future__ import annotations

import argparse
import atexit
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from precompute.config import load_config  # noqa: E402
from precompute.space import GridSpace  # noqa: E402
from tests.servers import free_port  # noqa: E402

WRK_SCRIPT = """
local keys = {}
for line in io.lines("%s") do keys[#keys + 1] = line end
local i = 0
request = function()
  i = (i %% #keys) + 1
  return wrk.format("GET", "/predict/" .. keys[i])
end
"""


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` so far (Linux /proc). On a shared machine a server's CPU
    time per request is a steadier measure of its cost than its throughput, which the neighbours move."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime


def wait_ready(port: int, path: str, timeout: float = 30) -> None:
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(f"server on {port} not ready")


def parse_wrk(out: str) -> dict[str, float]:
    def ms(text: str) -> float:
        value, unit = re.match(r"([\d.]+)(us|ms|s|m)", text).groups()  # type: ignore[union-attr]
        return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}[unit]

    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    # Anchored: an unanchored "99%" also matches the end of a "89.99%" stdev column.
    p50 = ms(re.search(r"^\s*50%\s+(\S+)", out, re.M).group(1))  # type: ignore[union-attr]
    p99 = ms(re.search(r"^\s*99%\s+(\S+)", out, re.M).group(1))  # type: ignore[union-attr]
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if non2xx:
        raise RuntimeError(f"wrk saw {non2xx.group(1)} error responses:\n{out}")
    requests = float(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    return {"rps": rps, "p50": p50, "p99": p99, "requests": requests}


def wrk(port: int, script: Path, connections: int, seconds: int) -> dict[str, float]:
    cmd = [
        "wrk",
        "-t1",
        f"-c{connections}",
        f"-d{seconds}s",
        "--latency",
        "-s",
        str(script),
        f"http://127.0.0.1:{port}",
    ]
    return parse_wrk(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(ROOT / "examples/babyweight/precompute.toml"))
    parser.add_argument("--store", help="store URL (default: the config's; PRECOMPUTE_STORE also works)")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument(
        "--no-cache", action="store_true", help="turn the API's hot-key cache off: every hit reads the store"
    )
    parser.add_argument("--against", type=Path, help="also serve from this checkout of another revision")
    args = parser.parse_args()
    if not shutil.which("wrk"):
        sys.exit("wrk is not installed: apt-get install wrk")
    env = dict(os.environ)
    if args.store:
        env["PRECOMPUTE_STORE"] = args.store
    config = load_config(args.config, env=env)
    if args.no_cache:  # a copy beside the original, so that its relative paths still resolve
        original = Path(args.config)
        text = original.read_text()
        text = (
            text.replace("[serve]\n", "[serve]\ncache_bytes = 0\n")
            if "[serve]\n" in text
            else text + "\n[serve]\ncache_bytes = 0\n"
        )
        copy = original.with_name(f".{original.stem}.nocache.toml")
        copy.write_text(text)
        atexit.register(copy.unlink, missing_ok=True)
        args.config = str(copy)
    space = config.space
    if not isinstance(space, GridSpace):
        sys.exit("this benchmark samples keys from a grid space")
    import numpy as np

    ids = np.random.default_rng(0).choice(space.size, min(2000, space.size), replace=False)
    tmp = Path(tempfile.mkdtemp(prefix="precompute-bench-"))
    keys_file = tmp / "keys.txt"
    keys_file.write_text("\n".join(space.key_for_id(int(i)) for i in ids) + "\n")
    script = tmp / "keys.lua"
    script.write_text(WRK_SCRIPT % keys_file)

    serve = [sys.executable, "-m", "precompute.cli", "serve", "--config", str(Path(args.config).resolve()), "--quiet"]
    bare_app = [sys.executable, str(ROOT / "bench/bare_app.py"), str(keys_file)]
    servers = {"precompute serve": serve, "bare Starlette": bare_app}
    roots = {"precompute serve": ROOT, "bare Starlette": ROOT}
    if args.against is not None:
        servers["against"] = serve
        roots["against"] = args.against.resolve()
    # Both servers run at once (an idle one costs nothing) and take turns, run by run, so that a noisy
    # neighbour slows both rather than whichever happened to run then.
    procs: dict[str, tuple[subprocess.Popen[bytes], int]] = {}
    try:
        for name, cmd in servers.items():
            port = free_port()
            full = [*cmd, str(port)] if name == "bare Starlette" else [*cmd, "--port", str(port)]
            server_env = {**env, "PYTHONPATH": str(roots[name])}  # which checkout's precompute runs
            procs[name] = (
                subprocess.Popen(
                    full, env=server_env, cwd=roots[name], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
                ),
                port,
            )
        for _, port in procs.values():
            wait_ready(port, "/predict/" + keys_file.read_text().split("\n", 1)[0])
            wrk(port, script, 16, 2)  # warm-up
        results: dict[tuple[str, int], list[dict[str, float]]] = {}
        for turn in range(args.runs):
            # Every other turn in reverse order: whoever runs first after the other's wrk is not always the same.
            order = list(procs.items()) if turn % 2 == 0 else list(reversed(procs.items()))
            for connections in (1, 16):
                for name, (proc, port) in order:
                    before = cpu_seconds(proc.pid)
                    result = wrk(port, script, connections, args.seconds)
                    result["cpu_us"] = (cpu_seconds(proc.pid) - before) / result["requests"] * 1e6
                    results.setdefault((name, connections), []).append(result)
    finally:
        for proc, _ in procs.values():
            proc.terminate()
            proc.wait()

    cache = "off" if args.no_cache else "on"
    print(f"store: {config.store_url}   hot-key cache: {cache}   keys: {len(ids)} spread over {space.size:,}")
    if args.against is not None:
        print(f"against: the server of {args.against}")
    print(f"each figure: median of {args.runs} runs of {args.seconds} s")
    print(f"{'server':<18} {'conns':>5} {'req/s':>10} {'p50 ms':>8} {'p99 ms':>8} {'vs bare':>8} {'CPU us/req':>10}")
    for connections in (1, 16):
        bare = statistics.median(r["rps"] for r in results[("bare Starlette", connections)])
        for name in servers:
            runs = results[(name, connections)]
            rps, p50, p99, cpu = (statistics.median(r[f] for r in runs) for f in ("rps", "p50", "p99", "cpu_us"))
            print(f"{name:<18} {connections:>5} {rps:>10,.0f} {p50:>8.3f} {p99:>8.3f} {rps / bare:>8.0%} {cpu:>10.1f}")
    if args.against is not None:
        for connections in (1, 16):
            ours, theirs = results[("precompute serve", connections)], results[("against", connections)]
            pairs = list(zip(ours, theirs, strict=True))
            ratio = statistics.median(a["rps"] / b["rps"] for a, b in pairs)
            cpu_ratio = statistics.median(a["cpu_us"] / b["cpu_us"] for a, b in pairs)
            print(
                f"precompute serve / against, {connections:>2} connections: {ratio:.2f}x the requests/s, "
                f"{cpu_ratio:.2f}x the CPU per request (medians of per-turn ratios)"
            )


if __name__ == "__main__":
    main()
