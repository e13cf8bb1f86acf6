"""What travels to the Ray workers: this package's code, the model, and small local tables.

Nothing here assumes a filesystem shared with the driver: a worker node of a real cluster sees none of
the driver's files.

**Code.** The ``precompute`` package (``store``, ``api`` and ``adapters`` included: the checkout's links
are followed) is copied into a folder named by a hash of its content and given to Ray as a ``py_modules``
entry of the runtime environment. Ray uploads it to the cluster once per content and every worker imports
it ahead of anything installed. Only the package travels, never the working directory. With
``[run] ship_code = false`` the cluster's own install is used instead, after a check that every node runs
the driver's version (:func:`check_installed`). A Ray the run starts itself on this machine gets neither:
its workers are the driver's children and import the driver's files (``precompute.run``).

**The model.** A local SavedModel is packed into one uncompressed tar archive, put in Ray's object store
once, and unpacked on each node into ``<cache>/models/<fingerprint>``, once per node however many actors
run there (a file lock serializes them; the first unpacks, the others find the folder). The archive is one
object in the object store of the driver's node, so the limit is that store's size (Ray's default: 30% of
the node's memory): hundreds of MB are fine; past a few GB, give a URI. A model URI (``gs://``, ``s3://``,
``hdfs://``, ``file://`` for a folder every node mounts) is read where the actors run, through
``pyarrow.fs``, into the same cache, and checked against the fingerprint the driver computed.

The cache is ``$PRECOMPUTE_CACHE_DIR`` on each node, else ``precompute-cache`` in the node's temporary
folder; it keeps the :data:`KEEP_MODELS` models used last.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import logging
import os
import shutil
import tarfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import precompute
from precompute.cluster import ClusterUnavailable
from precompute.config import ConfigError
from precompute.model import ModelError, cache_dir, fetch, fingerprint, shown_uri

log = logging.getLogger("precompute")

#: Models kept in each node's cache, most recently used first.
KEEP_MODELS = 4
#: Seconds every node gets to say which precompute it has (``ship_code = false``).
CHECK_TIMEOUT_S = 120.0
#: The largest local table (all its files together) sent to a remote cluster through Ray's object store.
SHIP_TABLE_BYTES = 256 * 1024 * 1024


# -- code ------------------------------------------------------------------------------------------


def package_dir() -> Path:
    """A copy of the ``precompute`` package with every link resolved, in a folder named by its content."""
    source = Path(precompute.__file__).resolve().parent
    files = sorted(
        Path(folder, name)
        for folder, dirs, names in os.walk(source, followlinks=True)  # into the linked store/, api/, adapters/
        if "__pycache__" not in Path(folder).parts
        for name in names
        if not name.endswith(".pyc")
    )
    digest = hashlib.sha256()
    for file in files:
        digest.update(str(file.relative_to(source)).encode() + b"\0" + file.read_bytes())
    target = cache_dir() / "code" / digest.hexdigest()[:16] / "precompute"
    if not target.is_dir():
        staging = target.parent.with_name(f".{target.parent.name}-{os.getpid()}")
        for file in files:
            copy = staging / "precompute" / file.relative_to(source)
            copy.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(file, copy)
        target.parent.parent.mkdir(parents=True, exist_ok=True)
        try:
            staging.rename(target.parent)
        except OSError:  # another run made the same copy meanwhile
            shutil.rmtree(staging, ignore_errors=True)
    return target


def upload_package() -> str:
    """The package uploaded to the cluster (once per content): its ``gcs://`` URI for ``py_modules``.

    A task's or actor's own runtime environment takes only URIs (local folders are uploaded only for a
    whole job, by ``ray.init``), so the package is uploaded here with the helper ``ray.init`` uses, which
    also works when Ray was started by the caller.
    """
    from ray._private.runtime_env.py_modules import upload_py_modules_if_needed

    folder = package_dir()
    uploaded = upload_py_modules_if_needed(
        {"py_modules": [str(folder)]}, include_gitignore=False, scratch_dir=str(folder.parent), logger=log
    )
    uri: str = uploaded["py_modules"][0]
    return uri


def runtime_env(ship_code: bool, env_vars: dict[str, str]) -> dict[str, Any]:
    """The runtime environment of every task and actor of a run (on a driver connected to Ray)."""
    env: dict[str, Any] = {}
    if ship_code:
        env["py_modules"] = [upload_package()]
    if env_vars:
        env["env_vars"] = env_vars
    return env


def check_installed(nodes: list[str]) -> None:
    """With ``ship_code = false``: every node must import the driver's version of ``precompute``."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    def installed_version() -> tuple[str, str]:  # nested, so that it travels by value (not by module name)
        import ray

        node = ray.get_runtime_context().get_node_id()
        try:
            import precompute as installed
        except ImportError:
            return node, "not installed"
        return node, str(getattr(installed, "__version__", "not installed"))

    probe = ray.remote(num_cpus=0)(installed_version)
    refs = [
        probe.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False)).remote() for node in nodes
    ]
    try:
        found = dict(ray.get(refs, timeout=CHECK_TIMEOUT_S))
    except ray.exceptions.GetTimeoutError:
        raise ClusterUnavailable(
            f"[run] ship_code: false, and not every Ray node answered which precompute it has within "
            f"{CHECK_TIMEOUT_S:.0f} s"
        ) from None
    wrong = {node[:8]: version for node, version in found.items() if version != precompute.__version__}
    if wrong:
        raise ConfigError(
            f"[run] ship_code: false, but these Ray nodes do not run precompute {precompute.__version__} as this "
            f"driver does: {wrong}. Fix: install the same version in the cluster's image, or set ship_code = true "
            "to send this package to the workers"
        )


# -- the model -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelSource:
    """How an actor gets the model: from the archive in Ray's object store, or from the URI."""

    fingerprint: str
    uri: str | None = None
    archive: Any = None  # a Ray ObjectRef of the tar archive's bytes

    def local_path(self) -> Path:
        """The model's folder on this node, unpacked (or fetched) here first if no actor did it yet."""
        path, _ = self.materialize()
        return path

    def materialize(self) -> tuple[Path, bool]:
        """``(folder, whether this call unpacked it)``; the folder is named by the fingerprint."""
        models = cache_dir() / "models"
        models.mkdir(parents=True, exist_ok=True)
        target = models / self.fingerprint.removeprefix("sha256:")
        with _locked(models / f"{target.name}.lock"):
            if (target / "saved_model.pb").is_file():
                os.utime(target)
                return target, False
            staging = models / f".{target.name}-{os.getpid()}"
            shutil.rmtree(staging, ignore_errors=True)
            try:
                if self.uri is not None:
                    fetch(self.uri, staging)
                else:
                    import ray

                    data: bytes = ray.get(self.archive)
                    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as archive:
                        archive.extractall(staging, filter="data")
                found = fingerprint(staging)
                if found != self.fingerprint:
                    where = shown_uri(self.uri) if self.uri else "the driver"
                    raise ModelError(
                        f"the model at {where} changed during the run (fingerprint {found}, the driver checked "
                        f"{self.fingerprint}). Fix: do not overwrite a model while a run scores it"
                    )
                shutil.rmtree(target, ignore_errors=True)
                staging.rename(target)
            finally:
                shutil.rmtree(staging, ignore_errors=True)
        _evict(models, keep=KEEP_MODELS, current=target)
        return target, True


def pack_model(path: Path) -> bytes:
    """The SavedModel folder as one uncompressed tar archive (variables compress poorly)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:") as archive:
        for file in sorted(p for p in path.rglob("*") if p.is_file()):
            archive.add(file, arcname=str(file.relative_to(path)), recursive=False)
    return buffer.getvalue()


def ship_model(path: Path, model_id: str, uri: str | None) -> ModelSource:
    """On the driver: a URI travels as itself; a local folder goes into Ray's object store, once."""
    if uri is not None:
        return ModelSource(model_id, uri=uri)
    import ray

    started = time.perf_counter()
    data = pack_model(path)
    ref = ray.put(data)
    log.info(
        "[ray] model %s (%.1f MB) put in Ray's object store in %.2f s",
        model_id,
        len(data) / 1e6,
        time.perf_counter() - started,
    )
    return ModelSource(model_id, archive=ref)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _evict(models: Path, keep: int, current: Path) -> None:
    """Remove all but the ``keep`` most recently used models (never ``current``)."""
    folders = sorted(
        (p for p in models.iterdir() if p.is_dir() and not p.name.startswith(".")),
        key=lambda p: p.stat().st_mtime,
        reverse=True,
    )
    for old in [p for p in folders if p != current][max(0, keep - 1) :]:
        with _locked(models / f"{old.name}.lock"):
            shutil.rmtree(old, ignore_errors=True)
