"""What a SavedModel's serving signatures really run: batch-norm ops fixed in training mode.

The layer configs say how a model was built; the serving functions in
``saved_model.pb`` are what TF Serving executes. A ``FusedBatchNorm``/``V2``/``V3`` op
with ``is_training=true`` on the path of a serving signature normalizes every request
with its own batch statistics (BN106), whatever the config says.

``saved_model.pb`` is parsed with TensorFlow's protobuf classes (nothing is loaded or
run); the functions reachable from each signature's output nodes are walked through
their call attributes (``StatefulPartitionedCall``'s ``f`` and direct calls of library
functions). Needs TensorFlow; without it nothing is inspected and the caller notes so.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from ..graph import ModelGraph
from . import LoadError

SAVED_MODEL_FILE = "saved_model.pb"
BATCHNORM_OPS = frozenset({"FusedBatchNorm", "FusedBatchNormV2", "FusedBatchNormV3"})
#: ``saved_model.pb`` larger than this is refused (protobuf itself stops at 2 GiB).
MAX_SAVED_MODEL_BYTES = 2**31 - 1


def training_batchnorm_ops(path: Path) -> list[tuple[str, str]]:
    """``(signature, op node name)`` for every FusedBatchNorm* with ``is_training=true``
    reachable from a serving signature of the SavedModel in ``path``.

    Raises ImportError without TensorFlow, :class:`LoadError` when ``saved_model.pb`` is
    unreadable.
    """
    if importlib.util.find_spec("tensorflow") is None:
        raise ImportError("tensorflow")
    from tensorflow.core.protobuf import saved_model_pb2

    file = path / SAVED_MODEL_FILE
    if not file.is_file():
        return []
    if file.stat().st_size > MAX_SAVED_MODEL_BYTES:
        raise LoadError(f"{SAVED_MODEL_FILE} is over 2 GiB, not a readable protobuf")
    saved = saved_model_pb2.SavedModel()
    try:
        saved.ParseFromString(file.read_bytes())
    except Exception as exc:
        raise LoadError(f"{SAVED_MODEL_FILE} is not readable ({type(exc).__name__}: {exc})", "the SavedModel is truncated or damaged; save it again") from None
    found: list[tuple[str, str]] = []
    for meta_graph in saved.meta_graphs:
        library = {f.signature.name: f for f in meta_graph.graph_def.library.function}
        nodes = {n.name: n for n in meta_graph.graph_def.node}
        for signature, definition in sorted(meta_graph.signature_def.items()):
            if signature.startswith("__"):
                continue  # __saved_model_init_op and friends
            start = [nodes[t.name.split(":")[0]] for t in definition.outputs.values() if t.name.split(":")[0] in nodes]
            for name in _reachable(start, library):
                for node in library[name].node_def:
                    if node.op in BATCHNORM_OPS and _is_training(node):
                        found.append((signature, node.name))
    return found


def _is_training(node) -> bool:
    """The op's ``is_training``. SavedModel strips attributes equal to the op's default,
    and the FusedBatchNorm ops default to ``is_training=true`` (tf.raw_ops docs): absent
    means training."""
    return node.attr["is_training"].b if "is_training" in node.attr else True


def _reachable(start, library) -> list[str]:
    """Names of the library functions called, directly or not, by the nodes ``start``."""
    seen: list[str] = []
    todo = _calls(start, library)
    while todo:
        name = todo.pop()
        if name in seen or name not in library:
            continue
        seen.append(name)
        todo.extend(_calls(library[name].node_def, library))
    return seen


def _calls(nodes, library) -> list[str]:
    called = []
    for node in nodes:
        if node.op in library:
            called.append(node.op)
        for value in node.attr.values():
            if value.HasField("func"):
                called.append(value.func.name)
            called.extend(f.name for f in value.list.func)
    return called


def mark_training_in_serving(path: Path, graph: ModelGraph) -> None:
    """Set ``baked_training`` on each BN layer whose op a serving signature runs in training mode.

    An op is matched to the layer whose path (``base/bn1``) ends its name scope
    (``model/base/bn1/FusedBatchNormV3``); one no layer matches is noted.
    """
    try:
        found = training_batchnorm_ops(path)
    except ImportError:
        graph.notes.append("the serving signatures were not inspected: that needs TensorFlow (pip install 'bnaudit[tensorflow]')")
        return
    batchnorms = graph.batchnorms()
    for signature, op_name in found:
        scope = op_name.rpartition("/")[0]
        layer = next((bn for bn in batchnorms if scope == bn.path or scope.endswith("/" + bn.path)), None)
        source = f"serving signature {signature!r} runs {op_name!r} with is_training=true"
        if layer is None:
            graph.notes.append(f"{source}, but no BatchNormalization layer matches it")
        elif not layer.baked_training:
            layer.baked_training = source
