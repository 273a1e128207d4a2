"""TensorFlow's checkpoint of a SavedModel (``variables/variables.*``), read by object path.

Both SavedModel loaders read variables through it: a tf-keras SavedModel's BN layers by
the object path ``keras_metadata.pb`` records (``root.layer_with_weights-0.gamma``), an
exported one's by the object path of the variable its serving function captures
(``root.variables.2``). The checkpoint's own object graph maps the path to the key.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from . import LoadError
from .arrays import MAX_CHANNELS

CHECKPOINT_PREFIX = "variables/variables"


class CheckpointReader:
    """TensorFlow's checkpoint reader over ``variables/variables``, created on first use.

    Raises ImportError at construction when TensorFlow is not installed.
    """

    def __init__(self, prefix: Path) -> None:
        import importlib.util

        if importlib.util.find_spec("tensorflow") is None:
            raise ImportError("tensorflow")
        self._prefix = prefix
        self._reader = None

    def _open(self):
        if self._reader is None:
            from tensorflow.core.protobuf import trackable_object_graph_pb2
            from tensorflow.python.training import py_checkpoint_reader

            try:  # kept only once the object graph parsed: every later call fails the same way
                reader = py_checkpoint_reader.NewCheckpointReader(str(self._prefix))
                graph = trackable_object_graph_pb2.TrackableObjectGraph()
                graph.ParseFromString(reader.get_tensor("_CHECKPOINTABLE_OBJECT_GRAPH"))
                shapes = reader.get_variable_to_shape_map()
            except Exception as exc:
                raise LoadError(
                    f"the SavedModel's checkpoint is unreadable ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})",
                    "the variables/ folder is truncated or damaged; save the model again",
                ) from None
            self._reader, self._shapes, self._graph = reader, shapes, graph
        return self._reader

    def variable(self, object_path: str, name: str, where: str) -> np.ndarray | None:
        """The variable ``name`` of the object at ``object_path``; None when it has none."""
        reader = self._open()
        key = self._key(f"{object_path}.{name}")
        if key is None:
            return None
        shape = self._shapes.get(key)
        if shape is None or len(shape) != 1 or not 0 < shape[0] <= MAX_CHANNELS:
            raise LoadError(f"{where} has shape {shape}, expected one vector per channel")
        return np.asarray(reader.get_tensor(key), dtype=np.float64)


    def _key(self, object_path: str) -> str | None:
        """The checkpoint key of the variable at ``object_path`` (``root.a.b``); None if none."""
        node_id = _resolve(self._graph, object_path)
        if node_id is None:
            return None
        return next((a.checkpoint_key for a in self._graph.nodes[node_id].attributes if a.name == "VARIABLE_VALUE"), None)

    def count(self, object_path: str) -> int | None:
        """The scalar step count at ``object_path`` (``root.optimizer._iterations``); None
        when there is none, it is not a scalar, or not a non-negative integer."""
        from .optimizer import valid_count

        reader = self._open()
        key = self._key(object_path)
        if key is None or self._shapes.get(key) != []:
            return None
        value = np.asarray(reader.get_tensor(key))
        return valid_count(float(value)) if value.dtype.kind in "iuf" else None


def _resolve(graph, object_path: str) -> int | None:
    """The node id at ``root.a.b`` in the checkpoint's object graph, following child names."""
    node_id = 0
    for local_name in object_path.split(".")[1:]:
        if not 0 <= node_id < len(graph.nodes):
            return None
        children = {c.local_name: c.node_id for c in graph.nodes[node_id].children}
        if local_name not in children:
            return None
        node_id = children[local_name]
    return node_id if 0 <= node_id < len(graph.nodes) else None
