"""What runs inside the Ray actors: turn a batch of grid ids (or table rows) into (key, value) rows.

The model is loaded once per actor, in ``__init__``, from the node's copy of it (see
:mod:`precompute.shipping`: the driver's files are not visible on a cluster's nodes). Everything per batch is
vectorized: feature arrays by fancy indexing, keys and values by Arrow string kernels.

Each output row also carries, in a dictionary-encoded ``scorer`` column (two bytes a row), the node and
actor that scored it, so that the run summary can say where the work went.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from precompute.model import Array, Model, ModelError, Signature, grid_inputs
from precompute.shipping import ModelSource
from precompute.space import GridSpace, TableSpace
from precompute.values import encode_values


def scorer_tag() -> str:
    """``<node id>:<actor id>`` of the calling Ray actor."""
    import ray

    context = ray.get_runtime_context()
    return f"{context.get_node_id()}:{context.get_actor_id()}"


def _output(keys: pa.Array, values: pa.Array, tag: pa.Array) -> pa.Table:
    scorer = pa.DictionaryArray.from_arrays(pa.array(np.zeros(len(keys), dtype=np.int16)), tag)
    return pa.table({"key": keys.cast(pa.binary()), "value": values, "scorer": scorer})


def grid_keys(space: GridSpace, indices: dict[str, Array]) -> pa.Array:
    t = space.template
    pieces: list[pa.Array | pa.Scalar] = [pa.scalar(t.literals[0])]
    for name, literal in zip(t.fields, t.literals[1:], strict=True):
        labels = pa.array(space.by_name[name].labels(), pa.string())
        pieces += [pc.take(labels, pa.array(indices[name])), pa.scalar(literal)]
    return pc.binary_join_element_wise(*pieces, "")


class GridScorer:
    """Ray Data callable class: ``{"id": int64[]}`` -> ``pyarrow.Table(key: binary, value: binary, scorer)``."""

    def __init__(self, model: ModelSource, signature: str, outputs: tuple[str, ...] | None, space: GridSpace) -> None:
        self.model = Model(model.local_path(), signature, outputs)
        self.space = space
        self.inputs = grid_inputs(space, self.model.signature)
        self.tag = pa.array([scorer_tag()])

    def __call__(self, batch: dict[str, Array]) -> pa.Table:
        indices = self.space.indices(batch["id"].astype(np.int64, copy=False))
        features = {name: values[indices[name]] for name, values in self.inputs.items()}
        keys = grid_keys(self.space, indices)
        values = encode_values(self.model.predict(features), keys)
        return _output(keys, values, self.tag)


def table_columns(space: TableSpace, signature: Signature) -> dict[str, str]:
    """Model input -> table column (an input with no mapping reads the column of the same name)."""
    unknown = sorted(set(space.columns) - set(signature.inputs))
    if unknown:
        takes = sorted(signature.inputs)
        raise ModelError(f"[space] columns: the model takes no input named {unknown} (it takes {takes})")
    return {name: space.columns.get(name, name) for name in signature.inputs}


class TableScorer:
    """Ray Data callable class for a table of entities: key column + feature columns -> (key, value)."""

    def __init__(self, model: ModelSource, signature: str, outputs: tuple[str, ...] | None, space: TableSpace) -> None:
        self.model = Model(model.local_path(), signature, outputs)
        self.space = space
        self.columns = table_columns(space, self.model.signature)
        self.tag = pa.array([scorer_tag()])

    def __call__(self, batch: pa.Table) -> pa.Table:
        keys = pc.cast(batch.column(self.space.key_column), pa.string()).combine_chunks()
        features: dict[str, Any] = {}
        for name, column in self.columns.items():
            data = batch.column(column)
            if self.model.signature.inputs[name] == "string":
                features[name] = np.array([str(v).encode() for v in data.to_pylist()], dtype=object)
            else:
                features[name] = data.to_numpy(zero_copy_only=False)
        values = encode_values(self.model.predict(features), keys)
        return _output(keys, values, self.tag)
