"""The TensorFlow SavedModel: checked before Ray starts, loaded once per scoring actor.

TensorFlow is imported only inside these functions, so importing ``precompute`` (or the API with the
online fallback off) never pays for it.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from precompute.space import Categorical, GridSpace, Range, label

Array = npt.NDArray[Any]
# Before TensorFlow is imported anywhere (Ray workers inherit it too): keep its C++ INFO chatter out of logs.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
NUMERIC_OUTPUTS = ("float16", "bfloat16", "float32", "float64", "int8", "int16", "int32", "int64", "uint8")


class ModelError(Exception):
    """The model is missing, unreadable, or does not fit the declared request space."""


@dataclass(frozen=True)
class Signature:
    inputs: dict[str, str]  # input name -> dtype name ("string", "float32", ...)
    outputs: dict[str, str]


def fingerprint(path: Path) -> str:
    """A content hash of the SavedModel directory (stable across copies and mtimes)."""
    if not (path / "saved_model.pb").is_file():
        raise ModelError(f"no TensorFlow SavedModel at {path} (expected {path / 'saved_model.pb'})")
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file() and p.name != "fingerprint.pb"):
        digest.update(str(file.relative_to(path)).encode() + b"\0")
        digest.update(file.read_bytes())
    return "sha256:" + digest.hexdigest()[:16]


def cache_dir() -> Path:
    """Where models fetched from a URI (and, on Ray nodes, unpacked models and code) are kept on this
    machine: ``$PRECOMPUTE_CACHE_DIR``, else ``precompute-cache`` in the temporary folder."""
    return Path(os.environ.get("PRECOMPUTE_CACHE_DIR") or Path(tempfile.gettempdir()) / "precompute-cache")


def is_uri(location: str) -> bool:
    return "://" in location


# Query parameters of a pyarrow filesystem URI that hold credentials (kept out of logs, errors and records).
_SECRET_QUERY = {"access_key", "secret_key", "session_token", "access_token", "sas_token", "account_key"}


def shown_uri(uri: str) -> str:
    """``uri`` as logs, errors and version records show it: any key or token in its query as ``***``."""
    base, _, query = uri.partition("?")
    if not query:
        return base
    pairs = [pair.partition("=") for pair in query.split("&")]
    shown = [f"{k}={'***' if k in _SECRET_QUERY else v}" if eq else k for k, eq, v in pairs]
    return f"{base}?{'&'.join(shown)}"


def fetch(uri: str, into: Path) -> Path:
    """Copy the SavedModel folder at ``uri`` (any filesystem ``pyarrow.fs`` reads: ``gs://``, ``s3://``,
    ``hdfs://``, ``file://``...) into the local folder ``into``, replacing what was there."""
    import pyarrow.fs as pafs

    shutil.rmtree(into, ignore_errors=True)
    into.mkdir(parents=True)
    shown = shown_uri(uri)
    try:
        filesystem, root = pafs.FileSystem.from_uri(uri)
        info = filesystem.get_file_info(root)
        if info.type == pafs.FileType.NotFound:
            raise ModelError(f"[model] path: no model at {shown} (nothing is there). Fix: check the URI")
        if info.type != pafs.FileType.Directory:
            raise ModelError(f"[model] path: {shown} is not a folder (a SavedModel is a folder with saved_model.pb)")
        pafs.copy_files(root, str(into), source_filesystem=filesystem, destination_filesystem=pafs.LocalFileSystem())
    except ModelError:
        raise
    except Exception as exc:  # pyarrow raises OSError, ArrowInvalid, ... with the filesystem's own message
        raise ModelError(f"[model] path: cannot read the model at {shown}: {exc}") from exc
    return into


def tensorflow() -> Any:
    """The ``tensorflow`` module, or a :class:`ModelError` that says how to install it."""
    try:
        import tensorflow as tf
    except ImportError as exc:
        raise ModelError(
            "TensorFlow is not installed: pip install 'precompute[cpu]' (or 'precompute[gpu]' for CUDA)"
        ) from exc
    return tf


class Model:
    """A loaded signature of a SavedModel, called on named 1-D numpy arrays."""

    def __init__(self, path: Path, signature: str = "serving_default", outputs: tuple[str, ...] | None = None) -> None:
        tf = tensorflow()
        fingerprint(path)  # a clear error for a missing directory before TensorFlow's own
        try:
            loaded = tf.saved_model.load(str(path))
        except Exception as exc:  # TF raises many types for a damaged model
            raise ModelError(f"cannot load the SavedModel at {path}: {exc}") from exc
        if signature not in loaded.signatures:
            known = ", ".join(sorted(loaded.signatures)) or "none"
            raise ModelError(f"the model at {path} has no signature {signature!r} (it has: {known})")
        self._tf = tf
        self._loaded = loaded  # keeps the variables alive
        self._fn = loaded.signatures[signature]
        _, kwargs = self._fn.structured_input_signature
        self._input_dtypes = {name: spec.dtype for name, spec in kwargs.items()}
        # The signature's inputs in the order its flat call takes them (see :meth:`_call`); None: call it by name.
        order = getattr(self._fn, "_arg_keywords", None)
        call = getattr(self._fn, "_call_flat", None)
        self._flat: list[str] | None = list(order) if call and order and sorted(order) == sorted(kwargs) else None
        self._flat_call: Any = call
        self._flat_checked = False
        all_outputs = {name: spec.dtype.name for name, spec in self._fn.structured_outputs.items()}
        inputs = {name: dtype.name for name, dtype in self._input_dtypes.items()}
        self.signature = Signature(inputs, all_outputs)
        wanted = outputs or tuple(sorted(all_outputs))
        unknown = [o for o in wanted if o not in all_outputs]
        if unknown:
            raise ModelError(f"[model] outputs: {unknown} not in the model's outputs {sorted(all_outputs)}")
        bad = [o for o in wanted if all_outputs[o] not in NUMERIC_OUTPUTS]
        if bad:
            raise ModelError(f"output(s) {bad} are not numeric; only numeric outputs can be stored yet")
        self.outputs = wanted

    def predict(self, features: dict[str, Array]) -> dict[str, npt.NDArray[np.float32]]:
        """Score one batch: 1-D arrays by input name in, one float32 1-D array per output out."""
        tensors = {name: self._tf.constant(features[name], dtype=dtype) for name, dtype in self._input_dtypes.items()}
        result = self._call(tensors)
        out = {}
        for name in self.outputs:
            values = result[name].numpy()
            if values.ndim == 2 and values.shape[1] == 1:
                values = values[:, 0]
            if values.ndim != 1:
                raise ModelError(f"output {name!r} has shape {values.shape}; one value per row is supported")
            out[name] = values.astype(np.float32, copy=False)
        return out

    def _call(self, tensors: dict[str, Any]) -> Any:
        """The signature called on ``tensors``. By name, TensorFlow binds and checks the arguments against
        the signature in Python, ~180 us a call here (a third of an online call of 32 rows); the inputs are
        already of the signature's dtypes, so the function is called with them in its flat order instead.
        That is a private method of TensorFlow's: the first call makes both calls and compares their
        outputs, and any difference or error keeps the call by name for good."""
        flat = self._flat
        if flat is None:
            return self._fn(**tensors)
        if self._flat_checked:
            return self._flat_call([tensors[name] for name in flat], self._fn.captured_inputs)
        by_name = self._fn(**tensors)
        try:
            fast = self._flat_call([tensors[name] for name in flat], self._fn.captured_inputs)
            same = sorted(fast) == sorted(by_name) and all(_identical(fast[name], by_name[name]) for name in by_name)
        except Exception:  # any failure of the private call: the public one stays
            same = False
        self._flat = flat if same else None
        self._flat_checked = True
        return by_name


def _identical(a: Any, b: Any) -> bool:
    """Two output tensors with the same dtype, shape and bytes."""
    x, y = a.numpy(), b.numpy()
    return bool(x.dtype == y.dtype and x.shape == y.shape and x.tobytes() == y.tobytes())


def grid_inputs(space: GridSpace, signature: Signature) -> dict[str, Array]:
    """Each grid dimension's values in the dtype the model takes; raises ModelError on a mismatch."""
    features = set(space.feature_names)
    inputs = set(signature.inputs)
    if features != inputs:
        missing = sorted(inputs - features)
        extra = sorted(features - inputs)
        raise ModelError(
            f"the grid does not match the model's inputs {sorted(inputs)}: "
            + (f"no [[space.feature]] for {missing}" if missing else "")
            + ("; " if missing and extra else "")
            + (f"the model takes no input named {extra}" if extra else "")
        )
    arrays: dict[str, Array] = {}
    for dim in space.dimensions:
        dtype = signature.inputs[dim.name]
        if dtype == "string":
            arrays[dim.name] = np.array([label.encode() for label in dim.labels()], dtype=object)
        elif isinstance(dim, Categorical):
            try:
                arrays[dim.name] = np.array([float(v) for v in dim.values]).astype(dtype)
            except ValueError:
                raise ModelError(f"feature {dim.name}: the model takes {dtype} but the values are text") from None
        else:
            arrays[dim.name] = dim.values_array().astype(dtype)
    return arrays


class FeatureArrays:
    """Decoded features, on the grid or off it, -> the model's input arrays, converted as :func:`grid_inputs`
    converts the grid: a value on the grid is the very float64 the batch job feeds (``np.round`` of the
    range), then the same cast. The API's online answers and a run's recorded misses both go through this,
    so a key is scored the same way wherever it is scored."""

    def __init__(self, space: GridSpace, signature: Signature) -> None:
        self.space = space
        self.inputs = signature.inputs
        self._grid = {d.name: d.values_array() for d in space.dimensions if isinstance(d, Range)}

    def __call__(self, rows: Sequence[Mapping[str, str | float]]) -> dict[str, Array]:
        arrays: dict[str, Array] = {}
        for dim in self.space.dimensions:
            values = [row[dim.name] for row in rows]
            dtype = self.inputs[dim.name]
            if dtype == "string":
                arrays[dim.name] = np.array([label(dim, v).encode() for v in values], dtype=object)
            elif isinstance(dim, Range):
                grid = self._grid[dim.name]
                numbers = [grid[i] if (i := dim.exact(float(v))) is not None else float(v) for v in values]
                arrays[dim.name] = np.array(numbers, dtype=np.float64).astype(dtype)
            else:
                arrays[dim.name] = np.array([float(v) for v in values], dtype=np.float64).astype(dtype)
        return arrays


def error_reason(exc: BaseException) -> str:
    """The one line of a TensorFlow error that says what was wrong (not its graph and stack noise)."""
    text = str(getattr(exc, "message", None) or exc)
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    for line in lines:
        if line.startswith("assertion failed:"):
            return line.removeprefix("assertion failed:").strip(" []").replace('\\"', '"')[:300]
    useful = [ln for ln in lines if not ln.startswith(("[[", "Detected at", "<stack", "Graph execution error"))]
    return (useful[-1] if useful else type(exc).__name__)[:300]
