"""Loader for TensorFlow SavedModel directories (tf-keras ``model.save("dir")``, Keras 3 ``export()``).

The architecture comes from ``keras_metadata.pb``, which tf-keras writes next to
``saved_model.pb``: a list of ``SavedObject`` messages whose root carries the same
model config (``class_name`` + ``config``) as a ``.h5`` file's ``model_config``, so the
graph (and every static rule) is the one of the ``.h5``. It is parsed with the protobuf
package from a message description built here (tf-keras's ``saved_metadata.proto``:
``SavedMetadata.nodes = 1``, ``SavedObject.node_id = 2, node_path = 3, identifier = 4,
metadata = 5``), so no TensorFlow is imported for the architecture.

The BN variables live in the TensorFlow checkpoint ``variables/variables.*``, read with
TensorFlow's own checkpoint reader (an SSTable of tensor entries) when TensorFlow is
installed, and only when a weight rule asks; without it the weight rules are skipped
with a note. Each BN is found by its object path in the checkpoint's object graph
(``root.layer_with_weights-0.layer_with_weights-1`` -> child ``gamma`` -> checkpoint
key), the path ``keras_metadata.pb`` records for the layer.

A SavedModel without ``keras_metadata.pb`` (Keras 3 ``export()``, plain TensorFlow)
keeps no layer configs: it is audited as the layer graph of its serving function, named
by its variables (:func:`bnaudit.loaders.export_graph.export_graph`, TensorFlow needed). With TensorFlow
installed, the serving functions of a tf-keras SavedModel are also inspected for
batch-norm ops run in training mode (:mod:`bnaudit.loaders.serving`).
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..graph import ConfigError, ModelGraph, build_graph
from ..hookspecs import hookimpl
from . import MAX_CONFIG_BYTES, LoadError, is_savedmodel_dir
from .arrays import BNArrays, assemble_bn_arrays, bn_variable_names
from .checkpoint import CHECKPOINT_PREFIX, CheckpointReader

if TYPE_CHECKING:
    from ..graph import Layer

METADATA_FILE = "keras_metadata.pb"
#: tf-keras identifiers of the SavedObject that holds a whole model.
MODEL_IDENTIFIERS = frozenset({"_tf_keras_model", "_tf_keras_network", "_tf_keras_sequential"})
#: The tf-keras identifier of a metric object (a compiled model saves its metrics too).
METRIC_IDENTIFIER = "_tf_keras_metric"
#: The part of a SavedObject that names a layer's object path: ``root.layer-1.layer_with_weights-0``.
ROOT = "root"


@hookimpl
def bnaudit_load_model(path: Path) -> ModelGraph | None:
    if not is_savedmodel_dir(path):
        return None
    metadata = path / METADATA_FILE
    if not metadata.is_file():
        from .export_graph import export_graph

        return export_graph(path)
    nodes = read_saved_metadata(metadata)
    root = next((n for n in nodes if n["node_path"] == ROOT), None)
    if root is None or root["identifier"] not in MODEL_IDENTIFIERS:
        raise LoadError(
            f"{METADATA_FILE} describes no Keras model at its root",
            "save a Sequential or Functional model with tf-keras model.save('dir')",
        )
    try:
        graph = build_graph(root["metadata"])
    except ConfigError as exc:
        raise LoadError(f"{METADATA_FILE}: {exc}") from None
    graph.format = "savedmodel"
    graph.runner = "keras"  # re-run with tf-keras, as a Keras-2 .h5 (bnaudit.runtime.keras_for)
    graph.producer = "tf-keras SavedModel"
    graph.keras_version = str(root["metadata"].get("keras_version") or "")
    object_paths = _object_paths(graph, nodes)
    layer_of = {object_path: layer_path for layer_path, object_path in object_paths.items()}
    saved = [(layer_of.get(n["node_path"], n["node_path"]), n) for n in nodes if n["node_path"] != ROOT and n["metadata"]]
    graph.object_configs = {owner: n["metadata"] for owner, n in saved}
    graph.metric_configs = frozenset(owner for owner, n in saved if n["identifier"] == METRIC_IDENTIFIER)
    try:
        reader = CheckpointReader(path / CHECKPOINT_PREFIX)
    except ImportError:
        graph.weights_missing = "reading a SavedModel's variables needs TensorFlow's checkpoint reader: pip install 'bnaudit[tensorflow]'"
        graph.notes.append(f"{graph.weights_missing}; the serving functions are not inspected either")
        return graph
    graph.weights = SavedModelWeights(reader, object_paths)
    from .serving import mark_training_in_serving

    mark_training_in_serving(path, graph)
    return graph


@lru_cache(maxsize=1)
def _saved_metadata_class():
    """The ``SavedMetadata`` message class, described here instead of imported from tf-keras."""
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    field = descriptor_pb2.FieldDescriptorProto
    proto = descriptor_pb2.FileDescriptorProto(name="bnaudit/saved_metadata.proto", package="bnaudit", syntax="proto3")
    saved_object = proto.message_type.add(name="SavedObject")
    for name, number in (("node_id", 2), ("node_path", 3), ("identifier", 4), ("metadata", 5)):
        kind = field.TYPE_INT32 if name == "node_id" else field.TYPE_STRING
        saved_object.field.add(name=name, number=number, type=kind, label=field.LABEL_OPTIONAL)
    saved_metadata = proto.message_type.add(name="SavedMetadata")
    saved_metadata.field.add(name="nodes", number=1, type=field.TYPE_MESSAGE, label=field.LABEL_REPEATED, type_name=".bnaudit.SavedObject")
    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("bnaudit.SavedMetadata"))


def read_saved_metadata(path: Path) -> list[dict[str, Any]]:
    """``keras_metadata.pb`` as ``[{"node_path", "identifier", "metadata": dict}]``.

    Raises :class:`LoadError` when the file is too large, not the protobuf, or a node's
    metadata is not a JSON object.
    """
    size = path.stat().st_size
    if size > MAX_CONFIG_BYTES:
        raise LoadError(f"{METADATA_FILE} is {size} bytes, too large for model metadata")
    message = _saved_metadata_class()()
    try:
        message.ParseFromString(path.read_bytes())
    except Exception as exc:  # google.protobuf.message.DecodeError
        raise LoadError(f"{METADATA_FILE} is not readable ({type(exc).__name__}: {exc})", "the SavedModel is truncated or damaged; save it again") from None
    nodes = []
    for node in message.nodes:
        try:
            metadata = json.loads(node.metadata) if node.metadata else {}
        except ValueError as exc:
            raise LoadError(f"{METADATA_FILE}: the metadata of {node.node_path!r} is not JSON ({exc})") from None
        if not isinstance(metadata, dict):
            raise LoadError(f"{METADATA_FILE}: the metadata of {node.node_path!r} is not a JSON object")
        nodes.append({"node_path": node.node_path, "identifier": node.identifier, "metadata": metadata})
    return nodes


def _object_paths(graph: ModelGraph, nodes: list[dict[str, Any]]) -> dict[str, str]:
    """Layer path (``base/stem_bn``) -> object path (``root.layer_with_weights-0.layer_with_weights-1``).

    A layer's path is the names of the objects on its object path, the root's left out.
    """
    name_of = {n["node_path"]: str(n["metadata"].get("name", "")) for n in nodes}
    found: dict[str, str] = {}
    for object_path in sorted(name_of, key=len):
        parts = object_path.split(".")
        if len(parts) < 2:
            continue
        names = [name_of.get(".".join(parts[: i + 1]), "") for i in range(1, len(parts))]
        layer_path = "/".join(names)
        if layer_path in graph.layers and layer_path not in found:
            found[layer_path] = object_path
    return found


#: Where a tf-keras optimizer keeps its step count in the checkpoint (the current and the
#: legacy optimizers, and the inner optimizer of a LossScaleOptimizer, whose own stays 0).
OPTIMIZER_COUNTS = tuple(
    f"root.optimizer{inner}.{name}" for inner in ("", ".inner_optimizer", "._optimizer") for name in ("_iterations", "iter")
)


class SavedModelWeights:
    """The BN vectors of a tf-keras SavedModel, read from its checkpoint on demand."""

    def __init__(self, reader: CheckpointReader, object_paths: dict[str, str]) -> None:
        self._reader = reader
        self._object_paths = object_paths
        self._cache: dict[str, BNArrays] = {}

    def optimizer_iterations(self) -> int | None:
        """The optimizer's step count saved with the model (BN205); None without one."""
        from .optimizer import largest

        return largest(self._reader.count(path) for path in OPTIMIZER_COUNTS)

    def bn_arrays(self, layer: "Layer") -> BNArrays:
        if layer.path not in self._cache:
            where = f"layer {layer.path!r}"
            object_path = self._object_paths.get(layer.path)
            if object_path is None:
                raise LoadError(f"{where}: not found in {METADATA_FILE}")
            values = {}
            for name in bn_variable_names(layer):
                value = self._reader.variable(object_path, name, f"{where} {name}")
                if value is not None:
                    values[name] = value
            self._cache[layer.path] = assemble_bn_arrays(values, where)
        return self._cache[layer.path]

    def layer_arrays(self, layer: "Layer", names) -> dict[str, np.ndarray]:
        object_path = self._object_paths.get(layer.path)
        if object_path is None:
            return {}
        found = {}
        for name in names:
            value = self._reader.variable(object_path, name, f"layer {layer.path!r} {name}")
            if value is not None:
                found[name] = value
        return found

    def close(self) -> None:
        self._cache.clear()
