"""Starting or joining Ray for a run, bounded in time: a scheduled job must never hang.

``[run] ray_address`` (or ``RAY_ADDRESS``) empty starts a Ray instance of the run's own on this machine
(``address="local"``): it never joins whatever cluster ``ray start`` last recorded here, which may be gone.
A given address (``host:port``, ``ray://host:port`` or ``auto``) must answer a TCP connect within
:data:`REACHABLE_TIMEOUT_S`, and ``ray.init`` must return within :data:`INIT_TIMEOUT_S`; otherwise the run
fails with :class:`ClusterUnavailable` (exit 5, retry later). Both happen before the run lock is taken or a
version begun, so nothing in the store changes.

Ray is quiet unless the run is verbose (``precompute run -v``): its C++ logs stay in its session folder,
its workers' output is not forwarded, and of Ray Data's console logs only warnings and the "Total
Progress" lines (the progress of a run without a terminal) are shown; on a terminal its tqdm bars are.
Our own stages and errors are then all that is printed besides.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from precompute.config import ConfigError

log = logging.getLogger("precompute")

#: Seconds a given cluster address gets to accept a TCP connection.
REACHABLE_TIMEOUT_S = 10.0
#: Seconds ``ray.init`` gets to start or join Ray before the process gives up (exit 5).
INIT_TIMEOUT_S = 120.0
#: Exit status of a run whose Ray did not come up in time (the CLI's "retry later").
EXIT_UNAVAILABLE = 5


class ClusterUnavailable(Exception):
    """The Ray cluster named by the config does not answer."""


def resolve(address: str | None) -> str:
    """What ``ray.init`` is given: ``"local"`` for an empty address, else the address as written.

    Ray Client (``ray://``) is refused: its connection ends the job when it drops (a long load is exposed to
    every network blip between the driver and the cluster), and a run is better submitted to the cluster.
    """
    if address and address.startswith("ray://"):
        raise ConfigError(
            f"[run] ray_address (or RAY_ADDRESS): {address!r} is a Ray Client address, which precompute does not "
            "use. Fix: run `precompute run` on the cluster, e.g. `ray job submit --address http://HEAD:8265 -- "
            "precompute run --config job.toml` (the job finds the cluster by itself), or give the head's GCS "
            "address host:6379 from a machine that is a node of the cluster"
        )
    return address or "local"


@dataclass(frozen=True)
class Node:
    """An alive Ray node with resources for work (the head of a cluster may have none)."""

    id: str
    address: str
    cpus: float
    gpus: float

    def describe(self) -> str:
        gpu = f", {self.gpus:g} GPU" if self.gpus else ""
        return f"{self.id[:8]} ({self.address}, {self.cpus:g} CPU{gpu})"


def nodes() -> list[Node]:
    import ray

    found = []
    for node in ray.nodes():  # type: ignore[no-untyped-call]
        resources = node.get("Resources", {})
        cpus, gpus = float(resources.get("CPU", 0)), float(resources.get("GPU", 0))
        if node.get("Alive") and (cpus or gpus):
            found.append(Node(node["NodeID"], node.get("NodeManagerAddress", "?"), cpus, gpus))
    return found


def recorded_address() -> str | None:
    """The cluster ``ray start`` last recorded on this machine (what ``auto`` means), if any; looked up
    where Ray looks (``$RAY_TMPDIR/ray``, else the system's temporary folder)."""
    path = Path(os.environ.get("RAY_TMPDIR") or tempfile.gettempdir()) / "ray" / "ray_current_cluster"
    try:
        return path.read_text().strip() or None
    except OSError:
        return None


def _host_port(address: str) -> tuple[str, int] | None:
    target = address.split("://", 1)[1] if "://" in address else address
    host, _, port = target.rstrip("/").rpartition(":")
    return (host.strip("[]"), int(port)) if host and port.isdigit() else None


def check_reachable(address: str, timeout: float = REACHABLE_TIMEOUT_S) -> None:
    """Raise :class:`ClusterUnavailable` unless ``address`` accepts a TCP connection within ``timeout``."""
    if address == "local":
        return
    target = address
    if address == "auto":
        recorded = recorded_address()
        if recorded is None:
            raise ClusterUnavailable(
                'ray_address = "auto" but no Ray cluster is recorded on this machine. Fix: start one with '
                "`ray start --head`, give its address, or leave ray_address empty for a local Ray"
            )
        target = recorded
    where = _host_port(target)
    if where is None:
        raise ClusterUnavailable(f"cannot read a host:port out of the Ray address {address!r}")
    try:
        with socket.create_connection(where, timeout=timeout):
            return
    except OSError as exc:
        raise ClusterUnavailable(
            f"no Ray cluster answers at {target} ({exc.strerror or exc}) within {timeout:.0f} s. Fix: check the "
            "cluster is up and the address, or leave ray_address empty to start a local Ray"
        ) from None


def init(address: str | None, verbose: bool = False, **kwargs: Any) -> None:
    """``ray.init`` for a run: checked first, bounded in time, quiet unless ``verbose``.

    The caller's SIGTERM handler is put back afterwards (``ray.init`` installs one that exits at once),
    so that a terminated run still drops its partial version and exits 143.
    """
    import ray

    target = resolve(address)
    check_reachable(target)
    done = threading.Event()

    def watchdog() -> None:
        if not done.wait(INIT_TIMEOUT_S):
            log.error("Ray did not start or answer at %s within %.0f s; giving up (exit 5)", target, INIT_TIMEOUT_S)
            os._exit(EXIT_UNAVAILABLE)  # nothing is locked or begun yet: there is nothing to clean up

    threading.Thread(target=watchdog, name="precompute-ray-init", daemon=True).start()
    if not verbose:
        os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "fatal")  # read by the driver's core worker at init
    ours = signal.getsignal(signal.SIGTERM)
    try:
        ray.init(
            address=target,
            include_dashboard=False,
            configure_logging=verbose,
            logging_level=logging.INFO if verbose else logging.WARNING,
            log_to_driver=verbose,
            **kwargs,
        )
    except ConnectionError as exc:
        raise ClusterUnavailable(f"could not join the Ray cluster at {target}: {exc}") from exc
    finally:
        done.set()
    if ours is not None and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, ours)
    if not verbose:
        quiet_ray_data()


class _RayDataConsole(logging.Filter):
    """Ray Data's console output without its INFO chatter: warnings, errors and progress lines pass.

    Its "Exception occurred in Ray Data or Ray Core internal code ... open an issue on the Ray project"
    banner is dropped too: the run reports the error underneath itself, with the right exit code.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if message.startswith(("Exception occurred in Ray Data or Ray Core internal code", "Full stack trace")):
            return False
        return record.levelno >= logging.WARNING or message.startswith("Total Progress")


def quiet_ray_data() -> None:
    """Filter Ray Data's console handlers (records of its child loggers reach them, not its logger's filters)."""
    import ray.data  # noqa: F401 - configures Ray Data's logging, which is what gets filtered

    for handler in logging.getLogger("ray.data").handlers:
        if not any(isinstance(f, _RayDataConsole) for f in handler.filters):
            handler.addFilter(_RayDataConsole())
