"""What a SavedModel's serving signatures really run: batch-norm ops fixed in training mode.

The layer configs say how a model was built; the serving functions in
``saved_model.pb`` are what TF Serving executes. A ``FusedBatchNorm``/``V2``/``V3`` op
with ``is_training=true`` on the path of a serving signature normalizes every request
with its own batch statistics (BN106), whatever the config says.

``saved_model.pb`` is parsed with TensorFlow's protobuf classes (nothing is loaded or
run); the functions reachable from each signature's output nodes are walked through
their call attributes (``StatefulPartitionedCall``'s ``f`` and direct calls of library
functions). Needs TensorFlow; without it nothing is inspected and the caller notes so.

Two forms of batch norm are recognised. The fused kernels (tf-keras, ``tf.nn.fused_batch_norm``)
carry ``is_training`` and ``epsilon`` as attributes. ``tf.nn.batch_normalization`` (what
Keras 3's TensorFlow backend calls) is unfused: ops under a ``batchnorm`` name scope,
``batchnorm/add`` adding epsilon to the variance and ``batchnorm/Rsqrt`` of it. It runs
in training mode when that variance is computed from the input (``moments/variance``, a
``Mean`` op) rather than read from a variable.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..graph import ModelGraph
from . import LoadError

SAVED_MODEL_FILE = "saved_model.pb"
BATCHNORM_OPS = frozenset({"FusedBatchNorm", "FusedBatchNormV2", "FusedBatchNormV3"})
#: ``saved_model.pb`` larger than this is refused (protobuf itself stops at 2 GiB).
MAX_SAVED_MODEL_BYTES = 2**31 - 1
#: The ``epsilon`` attribute's default in the FusedBatchNorm op definitions (tf.raw_ops).
FUSED_EPSILON_DEFAULT = 1e-4
#: Ops that pass a value through unchanged, walked through from ``batchnorm/add`` to
#: where the variance comes from.
PASS_THROUGH_OPS = frozenset({"Identity", "Squeeze", "Cast", "Reshape", "StopGradient", "ExpandDims"})
#: DataType enum values (tensorflow/core/framework/types.proto) an epsilon constant may have.
FLOAT_DTYPES = {1: np.float32, 2: np.float64, 19: np.float16}


@dataclass(frozen=True)
class ServingBatchNorm:
    """One batch-norm op a serving signature runs.

    ``scope`` is the op's name scope inside its function (``model/bn1`` for
    ``model/bn1/FusedBatchNormV3`` and ``model/bn1/batchnorm/Rsqrt``): the same for every
    signature and every trace of the layer. ``epsilon`` is None where it is not a constant.
    """

    signature: str
    node: str
    scope: str
    op: str
    is_training: bool
    epsilon: float | None


def serving_batchnorm_ops(path: Path) -> list[ServingBatchNorm]:
    """Every batch-norm op reachable from a serving signature of the SavedModel in ``path``,
    in signature order, then function order, then node order.

    Raises ImportError without TensorFlow, :class:`LoadError` when ``saved_model.pb`` is
    unreadable.
    """
    saved = read_saved_model(path)
    if saved is None:
        return []
    found: list[ServingBatchNorm] = []
    for meta_graph in saved.meta_graphs:
        library = {f.signature.name: f for f in meta_graph.graph_def.library.function}
        nodes = {n.name: n for n in meta_graph.graph_def.node}
        for signature, definition in sorted(meta_graph.signature_def.items()):
            if signature.startswith("__"):
                continue  # __saved_model_init_op and friends
            start = [nodes[t.name.split(":")[0]] for t in definition.outputs.values() if t.name.split(":")[0] in nodes]
            for name in _reachable(start, library):
                found.extend(function_batchnorms(signature, library[name].node_def))
    return found


def read_saved_model(path: Path):
    """The ``SavedModel`` message of ``path/saved_model.pb``, parsed with TensorFlow's
    protobuf classes (nothing loaded or run); None when there is no such file.

    Raises ImportError without TensorFlow, :class:`LoadError` when the file is over 2 GiB,
    not a SavedModel protobuf or one without a MetaGraph (an empty file parses as that).
    """
    if importlib.util.find_spec("tensorflow") is None:
        raise ImportError("tensorflow")
    from tensorflow.core.protobuf import saved_model_pb2

    file = path / SAVED_MODEL_FILE
    if not file.is_file():
        return None
    if file.stat().st_size > MAX_SAVED_MODEL_BYTES:
        raise LoadError(f"{SAVED_MODEL_FILE} is over 2 GiB, not a readable protobuf")
    saved = saved_model_pb2.SavedModel()
    try:
        saved.ParseFromString(file.read_bytes())
    except Exception as exc:
        raise LoadError(f"{SAVED_MODEL_FILE} is not readable ({type(exc).__name__}: {exc})", "the SavedModel is truncated or damaged; save it again") from None
    if not saved.meta_graphs:
        # an empty file parses as an empty message: a model that holds nothing must not pass
        raise LoadError(f"{SAVED_MODEL_FILE} holds no MetaGraph (it is empty or not a SavedModel)", "the SavedModel is truncated or damaged; save it again")
    return saved


#: Ops that reach beyond the computation: files, Python, the terminal, summaries, other
#: processes. A model's forward pass needs none of them; in a SavedModel they are how a
#: hostile file would act when loaded or run, so a model whose runnable functions hold
#: one is not run without ``--unsafe-load`` (:func:`unsafe_ops`).
UNSAFE_OPS = frozenset({
    "ReadFile", "WriteFile", "MatchingFiles", "ImmutableConst",
    "Save", "SaveV2", "SaveSlices", "Restore", "RestoreV2", "RestoreSlice", "MergeV2Checkpoints",
    "PyFunc", "PyFuncStateless", "EagerPyFunc",
    "Print", "PrintV2", "DebugIdentity", "DebugIdentityV2", "DebugIdentityV3", "DebugNumericSummary", "DebugNumericSummaryV2",
    "InitializeTableFromTextFile", "InitializeTableFromTextFileV2", "LoadAndRemapMatrix", "GenerateVocabRemapping",
    "WholeFileReader", "WholeFileReaderV2", "TextLineReader", "TextLineReaderV2", "FixedLengthRecordReader",
    "FixedLengthRecordReaderV2", "TFRecordReader", "TFRecordReaderV2", "LMDBReader", "IdentityReader", "IdentityReaderV2",
    "TextLineDataset", "TFRecordDataset", "TFRecordDatasetV2", "FixedLengthRecordDataset", "FixedLengthRecordDatasetV2",
    "SnapshotDataset", "SnapshotDatasetV2", "SaveDataset", "SaveDatasetV2", "LoadDataset", "CacheDataset", "CacheDatasetV2",
    "DatasetToTFRecord", "ExperimentalDatasetToTFRecord",
    "CreateSummaryFileWriter", "CreateSummaryDbWriter", "WriteSummary", "WriteScalarSummary", "WriteHistogramSummary",
    "WriteImageSummary", "WriteAudioSummary", "WriteGraphSummary", "WriteRawProtoSummary", "ImportEvent", "FlushSummaryWriter",
    "CollectiveReduce", "CollectiveReduceV2", "CollectiveGather", "CollectiveGatherV2", "CollectiveBcastSend", "CollectiveBcastSendV2",
    "RemoteCall", "_Send", "_Recv", "_HostSend", "_HostRecv",
})


def unsafe_ops(path: Path) -> list[str]:
    """``"op in function"`` for each op of :data:`UNSAFE_OPS` that loading or running the
    SavedModel can execute: in a function reachable from a signature (the init op
    included) or from a saved object's functions (what ``tf.saved_model.load`` restores).
    The functions TensorFlow writes to save and restore the model's own checkpoint are
    reachable from none of these and not listed.

    Raises ImportError without TensorFlow, :class:`LoadError` for an unreadable file.
    """
    saved = read_saved_model(path)
    found: list[str] = []
    for meta_graph in saved.meta_graphs if saved is not None else ():
        library = {f.signature.name: f for f in meta_graph.graph_def.library.function}
        nodes = {n.name: n for n in meta_graph.graph_def.node}
        start = [nodes[t.name.split(":")[0]] for d in meta_graph.signature_def.values() for t in d.outputs.values() if t.name.split(":")[0] in nodes]
        found += [f"{n.op} in the graph" for n in start if n.op in UNSAFE_OPS]
        names = set(_reachable(start, library))
        objects = [library[name] for name in meta_graph.object_graph_def.concrete_functions if name in library]
        names |= {f.signature.name for f in objects} | set(_reachable([n for f in objects for n in f.node_def], library))
        found += [f"{n.op} in {name}" for name in sorted(names) for n in library[name].node_def if n.op in UNSAFE_OPS]
    return list(dict.fromkeys(found))


def function_batchnorms(signature: str, node_defs) -> list[ServingBatchNorm]:
    """The batch-norm ops among one function's nodes, fused or not."""
    by_name = {n.name: n for n in node_defs}
    found = []
    for node in node_defs:
        if node.op in BATCHNORM_OPS:
            epsilon = _float32(node.attr["epsilon"].f) if "epsilon" in node.attr else FUSED_EPSILON_DEFAULT
            found.append(ServingBatchNorm(signature, node.name, node.name.rpartition("/")[0], node.op, _is_training(node), epsilon))
        elif node.op == "Rsqrt" and (node.name == "batchnorm/Rsqrt" or node.name.endswith("/batchnorm/Rsqrt")):
            add = by_name.get(source_node(node.input[0])) if node.input else None
            if add is None or add.op not in ("AddV2", "Add") or len(add.input) != 2:
                continue
            variance, epsilon = (by_name.get(source_node(i)) for i in add.input)
            scope = node.name[: -len("batchnorm/Rsqrt")].rstrip("/")
            found.append(ServingBatchNorm(signature, node.name, scope, "batch_normalization", _computed_from_input(variance, by_name), _constant(epsilon)))
    return found


def source_node(tensor: str) -> str:
    """The node name of a function-body input (``scope/op:output:0``, ``^control``)."""
    return tensor.lstrip("^").split(":")[0]


def _computed_from_input(node, by_name) -> bool:
    """Whether the variance ``node`` is a reduction (``Mean``: batch statistics), looking
    through ops that pass values on; a variable read, an argument or a constant is not."""
    seen = 0
    while node is not None and node.op in PASS_THROUGH_OPS and node.input and seen < 64:
        node, seen = by_name.get(source_node(node.input[0])), seen + 1
    return node is not None and node.op == "Mean"


def _constant(node) -> float | None:
    """The scalar value of a ``Const`` node of a float type; None for anything else."""
    if node is None or node.op != "Const" or "value" not in node.attr:
        return None
    tensor = node.attr["value"].tensor
    dtype = FLOAT_DTYPES.get(tensor.dtype)
    if dtype is None:
        return None
    if tensor.float_val:
        return _float32(tensor.float_val[0])
    if tensor.double_val:
        return float(tensor.double_val[0])
    if len(tensor.tensor_content) == np.dtype(dtype).itemsize:
        return _float32(np.frombuffer(tensor.tensor_content, dtype=dtype)[0])
    return None


def _float32(value) -> float:
    """A float32 value as the shortest decimal that reads back as it (1e-3, not 0.0010000000474974513)."""
    return float(str(np.float32(value)))


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
    (``model/base/bn1/FusedBatchNormV3``, ``model/base/bn1/batchnorm/Rsqrt``); one no
    layer matches is noted.
    """
    try:
        found = [op for op in serving_batchnorm_ops(path) if op.is_training]
    except ImportError:
        graph.notes.append("the serving signatures were not inspected: that needs TensorFlow (pip install 'bnaudit[tensorflow]')")
        return
    batchnorms = graph.batchnorms()
    for op in found:
        layer = next((bn for bn in batchnorms if op.scope == bn.path or op.scope.endswith("/" + bn.path)), None)
        source = _source_of(op)
        if layer is None:
            graph.notes.append(f"{source}, but no BatchNormalization layer matches it")
        elif not layer.baked_training:
            layer.baked_training = source


def _source_of(op: ServingBatchNorm) -> str:
    """Where BN106 learnt that ``op`` runs in training mode, as its finding says: a fused
    op's ``is_training``, or the batch variance an unfused ``tf.nn.batch_normalization`` reads."""
    if op.op in BATCHNORM_OPS:
        return f"serving signature {op.signature!r} runs {op.node!r} with is_training=true"
    return f"serving signature {op.signature!r} runs {op.node!r} on the variance of the batch (a Mean over its input), not a moving variance"
