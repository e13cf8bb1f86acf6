"""A real multi-node Ray cluster on loopback, for the scale-out tests and the cluster benchmark.

The head node has no CPUs of its own (so nothing runs there but the driver); each worker node is a
separate ``ray start --block`` in its own private mount namespace (``unshare -m``) with empty tmpfs mounts
over the checkout's package folders and over a folder of the driver's own (``driver_dir``: models, tables,
configs). Every actor and task on a worker node therefore runs where the driver's files are NOT visible:
code and model must travel through Ray, as they do on a real cluster.

Every node is stopped by the PIDs of its process tree (``ray start --block`` does not stop its children on
SIGTERM; ``ray stop`` would stop every Ray on the machine), and the address file that ``ray start --head``
leaves behind is removed, so that no later ``ray.init`` tries to join a dead cluster.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.servers import ROOT, free_port, missing, wait_for_port

#: The checkout's folders that a worker node must not see: the package (and what it links to), the tests.
HIDDEN = ("precompute", "store", "api", "adapters", "tests", "examples")
#: Every node's address: on loopback, but not 127.0.0.1, which Ray's CLI replaces with the machine's
#: routable address (test traffic must stay on loopback).
NODE_IP = "127.0.0.2"
HINT = "run as root on Linux, with util-linux's unshare (private mount namespaces)"


def descendants(pid: int) -> list[int]:
    """``pid`` and every process below it, read from /proc (parents before children)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    found, queue = [], [pid]
    while queue:
        current = queue.pop(0)
        found.append(current)
        queue.extend(children.get(current, []))
    return found


def kill_tree(pid: int) -> None:
    """SIGKILL a process and all its descendants, found before any of them dies (no re-parenting race)."""
    tree = descendants(pid)
    for each in tree:
        with contextlib.suppress(ProcessLookupError):
            os.kill(each, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while any(_alive(each) for each in tree[1:]) and time.monotonic() < deadline:
        time.sleep(0.05)  # the descendants are not our children: they are reaped by init


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _ray() -> list[str]:
    return [str(Path(sys.executable).with_name("ray"))]


def _ports(*names: str) -> list[str]:
    args = []
    for name in names:
        args += [f"--{name}", str(free_port())]
    return args


@dataclass
class RayCluster:
    """A head (0 CPUs) plus worker nodes added by :meth:`add_node`; ``address`` is the GCS ``host:port``."""

    driver_dir: Path
    temp_dir: Path
    port: int = field(default_factory=free_port)
    nodes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    object_store_bytes: int = 512 * 1024 * 1024

    @property
    def address(self) -> str:
        return f"{NODE_IP}:{self.port}"

    def _common(self) -> list[str]:
        return [
            "--node-ip-address",
            NODE_IP,
            "--object-store-memory",
            str(self.object_store_bytes),
            "--disable-usage-stats",
            "--block",
            *_ports("node-manager-port", "object-manager-port", "dashboard-agent-listen-port"),
            *_ports("dashboard-agent-grpc-port", "runtime-env-agent-port", "metrics-export-port"),
        ]

    def _log(self, name: str) -> int:
        return os.open(self.temp_dir / f"{name}.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)

    def start_head(self) -> None:
        command = [*_ray(), "start", "--head", "--port", str(self.port), "--num-cpus", "0", "--num-gpus", "0"]
        command += ["--include-dashboard", "false", *_ports("ray-client-server-port"), *self._common()]
        log = self._log("head")
        self.nodes["head"] = subprocess.Popen(command, stdout=log, stderr=log, env=_env(), cwd=self.temp_dir)
        os.close(log)
        wait_for_port(self.port, self.nodes["head"], timeout=60)

    def add_node(self, name: str, cpus: float = 1, gpus: int = 0, attempts: int = 3) -> None:
        """A worker node in a private mount namespace that cannot see the checkout or ``driver_dir``, up and
        registered when this returns. Nodes start one at a time (two nodes on one address starting together
        can miss each other's registration), and a node that timed out starting on a busy machine is started
        again."""
        for attempt in range(1, attempts + 1):
            self._start_node(name, cpus, gpus)
            try:
                self.wait_for_nodes(len(self.nodes))
                return
            except RuntimeError:
                self.nodes.pop(name).wait()
                if attempt == attempts:
                    raise

    def _start_node(self, name: str, cpus: float, gpus: int) -> None:
        hide = [ROOT / folder for folder in HIDDEN if (ROOT / folder).exists()] + [self.driver_dir]
        mounts = " && ".join(f"mount -t tmpfs -o size=1m,mode=0555 none '{path}'" for path in hide)
        start = [*_ray(), "start", "--address", self.address, "--num-cpus", f"{cpus:g}", "--num-gpus", str(gpus)]
        start += self._common()
        script = f"{mounts} && exec {shlex.join(start)}"
        log = self._log(name)
        self.nodes[name] = subprocess.Popen(
            ["unshare", "-m", "--propagation", "private", "sh", "-c", script],
            stdout=log,
            stderr=log,
            env=_env(),
            cwd=self.temp_dir,
        )
        os.close(log)

    def wait_for_nodes(self, count: int, timeout: float = 90) -> None:
        """Until ``count`` nodes (head included) are alive, asked through a short-lived driver."""
        probe = (
            "import ray, sys; ray.init(address=sys.argv[1], logging_level='ERROR', log_to_driver=False); "
            "print(sum(1 for n in ray.nodes() if n['Alive']))"
        )
        deadline = time.monotonic() + timeout
        alive = 0
        while time.monotonic() < deadline:
            for name, proc in self.nodes.items():
                if proc.poll() is not None:
                    raise RuntimeError(f"Ray node {name} exited ({proc.returncode}): {self.log(name)[-2000:]}")
            out = subprocess.run(
                [sys.executable, "-c", probe, self.address], capture_output=True, text=True, timeout=60, env=_env()
            )
            lines = out.stdout.split()
            alive = int(lines[-1]) if out.returncode == 0 and lines and lines[-1].isdigit() else 0
            if alive >= count:
                return
            time.sleep(1)
        raise TimeoutError(f"{alive} of {count} Ray nodes alive after {timeout:.0f} s")

    def busy_workers(self, name: str, title: str, cpu_seconds: float) -> int:
        """How many worker processes of node ``name`` whose title contains ``title`` (e.g. ``MapWorker``) have
        used at least ``cpu_seconds`` of CPU (a scoring actor that has loaded its model and is working)."""
        busy = 0
        tick = os.sysconf("SC_CLK_TCK")
        for pid in descendants(self.nodes[name].pid):
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if title in cmdline and (int(fields[11]) + int(fields[12])) / tick >= cpu_seconds:
                busy += 1
        return busy

    def log(self, name: str) -> str:
        return (self.temp_dir / f"{name}.log").read_text(errors="replace")

    def kill_node(self, name: str) -> None:
        proc = self.nodes.pop(name)
        kill_tree(proc.pid)
        proc.wait()

    def stop(self) -> None:
        for name in [n for n in self.nodes if n != "head"] + ["head"]:
            if name in self.nodes:
                self.kill_node(name)
        _forget(self.address)


def _env() -> dict[str, str]:
    """The nodes' environment: no address of some other cluster, quiet TensorFlow, this venv first."""
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "PYTHONPATH")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    return env


def _forget(address: str) -> None:
    """Remove the address file ``ray start --head`` wrote, if it still names this cluster."""
    recorded = Path(os.environ.get("RAY_TMPDIR") or tempfile.gettempdir()) / "ray" / "ray_current_cluster"
    try:
        if recorded.read_text().strip() == address:
            recorded.unlink()
    except OSError:
        pass


def can_unshare() -> bool:
    if not shutil.which("unshare") or os.geteuid() != 0:
        return False
    probe = subprocess.run(["unshare", "-m", "true"], capture_output=True)
    return probe.returncode == 0


@pytest.fixture(scope="module")
def driver_dir() -> Iterator[Path]:
    """A folder only the driver sees: worker nodes of :func:`ray_cluster` get an empty mount over it."""
    path = Path(tempfile.mkdtemp(prefix="precompute-driver-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def ray_cluster(driver_dir: Path) -> Iterator[RayCluster]:
    """Head (0 CPUs) + node ``cpu`` (1 CPU) + node ``gpu`` (1 CPU, declared 1 GPU), on loopback."""
    if not can_unshare():
        missing("a private mount namespace", HINT)
    temp = Path(tempfile.mkdtemp(prefix="precompute-ray-cluster-"))
    cluster = RayCluster(driver_dir, temp)
    try:
        cluster.start_head()
        cluster.add_node("cpu", cpus=1)
        cluster.add_node("gpu", cpus=1, gpus=1)
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(temp, ignore_errors=True)
