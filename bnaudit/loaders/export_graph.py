"""A SavedModel without layer configs (Keras 3 ``export()``, ``tf.saved_model.save``) as a ModelGraph.

Such a SavedModel keeps no ``keras_metadata.pb``: what it holds is the serving
signatures' functions in ``saved_model.pb`` and the variables in ``variables/``. As
:mod:`bnaudit.loaders.onnx` does for an ONNX graph, the ops of one serving signature
become :class:`~bnaudit.graph.Layer` objects carrying the Keras class names the rules
know, so the placement and weight rules run unchanged:

- the signature's function is flattened, every call expanded in place
  (:mod:`bnaudit.loaders.tf_functions`, which refuses calls nested or repeated without end);
- the function's captured arguments are resolved through the object graph
  (``concrete_functions[fn].bound_inputs``) to the ``tf.Variable`` each holds, with its
  name (Keras 3 writes ``<layer name>/<variable>``: ``bn1/gamma``) and its checkpoint key
  (found by the variable's object path, ``root.variables.2``, in the checkpoint's own
  object graph: :class:`~bnaudit.loaders.checkpoint.CheckpointReader`);
- each batch-norm op (:func:`bnaudit.loaders.serving.function_batchnorms`: fused, or Keras 3's
  unfused ``batchnorm/`` ops, which are taken together with the rest of the layer's name
  scope, the float16 casts of a mixed-precision BN included) becomes one
  BatchNormalization with ``epsilon``, ``axis``, ``center``/``scale`` (which variables it
  reads) and training mode; its gamma/beta/moving statistics are read from the
  checkpoint when a weight rule asks (:class:`ExportWeights`);
- ``Conv2D``/``Conv3D``/``DepthwiseConv2dNative``/``Conv2DBackpropInput``/``MatMul``/
  ``BatchMatMulV2`` with a variable kernel become Conv/Dense layers, with ``use_bias`` when
  a ``BiasAdd``/``AddV2`` of a variable follows; ``Relu``/``Relu6``/``Elu``/``Selu``/
  ``Sigmoid``/``Tanh``/``Softmax``... activation layers; ``Identity``/``Cast`` Identity,
  ``Reshape``/``Squeeze``/``ExpandDims`` Reshape, ``Transpose`` Permute; every other op keeps
  its op type as class name and is opaque to the rules. Only ops computed from a model
  input are layers: variable reads and constants are not.

Layer names. A layer with variables is named by its Keras path: the layer name from its
variables (``bn1/gamma`` -> ``bn1``), the enclosing nested models from the op's name
scope, with the model's own outer scope dropped and the ``_N`` suffix TensorFlow adds to
a name scope used twice removed (``nested_1/mlp_block_1/mlp_bn_1/batchnorm/Rsqrt`` and
``mlp_bn/gamma`` -> ``mlp_block/mlp_bn``). A BN whose variables carry no Keras name
(``tf.Module``) keeps its name scope (``block``). Another op is named by its mapped scope
where it is the one op of that scope that becomes a layer (``relu1``, ``gap``), else
``<mapped scope>/<op name>`` (``conv1/Relu`` for a convolution's fused activation).

What the serving graph does not hold is declared in ``ModelGraph.not_recorded`` (the
rules are skipped with the reason, never shown as passed): see :data:`NOT_RECORDED`.
"""

from __future__ import annotations

import bisect
import dataclasses
import re
from collections import Counter, deque
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..graph import Layer, ModelGraph
from . import LoadError
from .arrays import BN_VECTORS, BNArrays, assemble_bn_arrays
from .serving import (
    SAVED_MODEL_FILE,
    function_batchnorms,
    source_node,
    _source_of,
    read_saved_model,
)
from .tf_functions import (
    MAX_OPS,
    VARIABLE_PREFIX,
    Flat,
    Op,
    flatten_signature,
    output_shape,
    signature_function,
)

if TYPE_CHECKING:
    from .checkpoint import CheckpointReader

#: Steps a walk through pass-through ops (``Identity``, ``ReadVariableOp``...) takes at most.
MAX_WALK = 64
DT_HALF, DT_BFLOAT16 = 19, 14

#: Ops a weight passes through between its variable and the op using it.
WEIGHT_PASS_THROUGH = frozenset({"ReadVariableOp", "Identity", "Cast", "Reshape", "Squeeze", "ExpandDims", "StopGradient"})
#: Op -> the Keras layer class of an op with a variable kernel.
LINEAR_OPS = {
    "Conv2D": "Conv2D",
    "Conv3D": "Conv3D",
    "DepthwiseConv2dNative": "DepthwiseConv2D",
    "Conv2DBackpropInput": "Conv2DTranspose",
    "Conv3DBackpropInputV2": "Conv3DTranspose",
    "MatMul": "Dense",
    "BatchMatMulV2": "Dense",
}
BIAS_OPS = frozenset({"BiasAdd", "AddV2", "Add"})
#: Activation ops -> (Keras class, config).
ACTIVATION_OPS = {
    "Relu": ("ReLU", {}),
    "Relu6": ("ReLU", {"max_value": 6.0}),
    "LeakyRelu": ("LeakyReLU", {}),
    "Elu": ("ELU", {}),
    "Softmax": ("Softmax", {}),
    "Selu": ("Activation", {"activation": "selu"}),
    "Sigmoid": ("Activation", {"activation": "sigmoid"}),
    "Tanh": ("Activation", {"activation": "tanh"}),
    "LogSoftmax": ("Activation", {"activation": "log_softmax"}),
    "Softplus": ("Activation", {"activation": "softplus"}),
    "Softsign": ("Activation", {"activation": "softsign"}),
}
OTHER_OPS = {
    "Identity": "Identity",
    "Cast": "Identity",
    "StopGradient": "Identity",
    "Snapshot": "Identity",
    "Reshape": "Reshape",
    "Squeeze": "Reshape",
    "ExpandDims": "Reshape",
    "Transpose": "Permute",
    "AddV2": "Add",
    "Add": "Add",
    "Mul": "Multiply",
    "ConcatV2": "Concatenate",
    "MaxPool": "MaxPooling2D",
    "AvgPool": "AveragePooling2D",
}
#: Ops whose only activation input is the first (the others are shapes, axes, paddings, kernels).
FIRST_INPUT_ONLY = frozenset({
    "Reshape", "Squeeze", "ExpandDims", "Transpose", "Mean", "Sum", "Max", "Min", "Pad", "BiasAdd",
    "Conv2D", "Conv3D", "DepthwiseConv2dNative",
})
#: Transposed convolutions take (output shape, kernel, activation): the third is the activation.
THIRD_INPUT_ONLY = frozenset({"Conv2DBackpropInput", "Conv3DBackpropInputV2"})
#: Ops whose output is no activation: a walk forward from the inputs stops there.
SHAPE_OPS = frozenset({"Shape", "ShapeN", "Size", "Rank"})
#: The variable names a Keras layer gives its kernel, and its BN vectors.
KERNEL_NAMES = frozenset({"kernel", "depthwise_kernel", "pointwise_kernel"})

NOT_RECORDED = {
    "BN101": (
        "a serving graph has no Dropout: Keras's Dropout, SpatialDropout and noise layers do nothing at inference and leave "
        "no op in it, "
        "so what feeds a BN in training is not recorded; audit the .keras file it was exported from for BN101"
    ),
    "BN108": (
        "a serving graph records no trainable flag (which BN layers were frozen in training); "
        "audit the .keras file it was exported from for BN108"
    ),
    **dict.fromkeys(
        ("BN211", "BN212"),
        "a serving graph records no trainable flag (which BN layers were frozen in training); diff the .keras files it was exported from",
    ),
    "BN205": (
        "export() and tf.saved_model.save keep no optimizer state, so the training step count is not recorded; "
        "audit the .keras file it was exported from for BN205"
    ),
    "BN501": (
        "a serving graph holds TensorFlow ops only: a Lambda or custom layer was traced into them and leaves no Python "
        "object or config to judge (ops that reach beyond the computation are refused before any re-run); "
        "audit the .keras file it was exported from for BN501"
    ),
}
MOMENTUM_NOTE = (
    "BN109 judged epsilon and dtype only: a BN's momentum is a training setting the serving graph does not record"
)


#: ``Layer.module`` of every layer read from a serving graph: TensorFlow ops, not Keras
#: classes (an op with no Keras counterpart is opaque, not an unknown Keras layer).
MODULE = "tensorflow:ops"
@dataclass
class _BatchNorm:
    """One batch-norm op with everything the layer needs."""

    anchor: str
    #: Where BN106 learns the op runs in training mode (its name in its own function).
    source: str
    members: set[str]
    origin_scope: str
    op: str
    is_training: bool
    epsilon: float | None
    roles: dict[str, str]  # "gamma"... -> variable pseudo-op


class ExportGraphBuilder:
    """Turns one SavedModel without layer configs into a :class:`ModelGraph` (module docstring)."""

    def __init__(self, path: Path, saved) -> None:
        self.path = path
        self.meta_graph = saved.meta_graphs[0]
        self.object_graph = self.meta_graph.object_graph_def
        self.graph = ModelGraph(name=path.name, class_name="SavedModel", format="savedmodel", runner="serving")
        self.graph.producer = "SavedModel serving graph"
        self.graph.not_recorded = dict(NOT_RECORDED)
        self.graph.records_trainable = False
        self._object_paths: dict[int, str] | None = None
        self._scopes = _ScopeMap([])
        self._ops_in_scope: Counter[str] = Counter()  # mapped scope -> layer-making ops in it
        self._suffixes: dict[str, int] = {}  # see _unique
        #: BN layer path -> the variable pseudo-op of each vector it reads, and the
        #: signature's pseudo-op -> object-graph node id map they resolve in.
        self._roles: dict[str, dict[str, str]] = {}
        self._variables_of: dict[str, dict[str, int]] = {}

    # -- the object graph -----------------------------------------------------------
    def variable_name(self, node_id: int) -> str:
        """The ``tf.Variable`` name of an object-graph node (``bn1/gamma``); "" for anything else."""
        nodes = self.object_graph.nodes
        if not 0 <= node_id < len(nodes) or nodes[node_id].WhichOneof("kind") != "variable":
            return ""
        return nodes[node_id].variable.name

    def object_path(self, node_id: int) -> str | None:
        """``root.variables.2``: the first path to the node along children (breadth first)."""
        if self._object_paths is None:
            found, queue = {0: "root"}, deque([0])
            nodes = self.object_graph.nodes
            while queue:
                current = queue.popleft()
                for child in nodes[current].children:
                    if 0 <= child.node_id < len(nodes) and child.node_id not in found:
                        found[child.node_id] = f"{found[current]}.{child.local_name}"
                        queue.append(child.node_id)
            self._object_paths = found
        return self._object_paths.get(node_id)

    # -- building -------------------------------------------------------------------
    def build(self) -> ModelGraph:
        signatures = sorted(s for s in self.meta_graph.signature_def if not s.startswith("__"))
        functions = {s: signature_function(self.meta_graph, s) for s in signatures}
        functions = {s: f for s, f in functions.items() if f is not None}
        if not functions:
            self.graph.notes.append("no batch-norm op is reachable from a serving signature of this SavedModel")
            return self.graph
        main = "serving_default" if "serving_default" in functions else next(iter(functions))
        flat = flatten_signature(self.meta_graph, functions[main])
        batchnorms = self._batchnorms(main, flat)
        self._layers(flat, batchnorms)
        for signature, function in functions.items():  # BN106 on any signature that runs a BN in training mode
            if signature == main:
                continue
            other = flatten_signature(self.meta_graph, function)
            for bn in self._batchnorms(signature, other):
                self._bn_layer(bn, other, only_if_training=True)
        if self.graph.batchnorms():
            self.graph.notes.append(MOMENTUM_NOTE)
        else:
            self.graph.notes.append("no batch-norm op is reachable from a serving signature of this SavedModel")
        self._weights()
        return self.graph

    def _batchnorms(self, signature: str, flat: Flat) -> list[_BatchNorm]:
        """The batch-norm ops of one flattened signature, each with the ops of its name scope.

        Raises :class:`LoadError` when the scopes overlap so much that they hold more ops
        in all than :data:`MAX_OPS` (nested ``batchnorm`` scopes in a hostile file)."""
        found = []
        names = sorted(flat.ops)
        claimed = 0
        for op in function_batchnorms(signature, list(flat.ops.values())):
            anchor = flat.ops[op.node]
            if op.op == "batch_normalization":
                base = anchor.name[: -len("batchnorm/Rsqrt")]
                origin_scope = anchor.origin[: -len("batchnorm/Rsqrt")].rstrip("/")
                prefix = base if origin_scope else base + "batchnorm/"
                members = set()
                for name in names[bisect.bisect_left(names, prefix):]:
                    if not name.startswith(prefix):
                        break
                    members.add(name)
                claimed += len(members)
                if claimed > MAX_OPS:
                    raise LoadError(f"{SAVED_MODEL_FILE}: the batch-norm name scopes overlap beyond {MAX_OPS} ops", "this is not a plausible model")
                roles = self._named_roles(members, flat)
            else:
                origin_scope = anchor.origin.rpartition("/")[0]
                members = {anchor.name}
                roles = {}
                for role, tensor in zip(("gamma", "beta", "moving_mean", "moving_variance"), anchor.input[1:5]):
                    variable = _weight_variable(tensor, flat)
                    if variable is not None:
                        roles[role] = variable
            found.append(_BatchNorm(anchor.name, _source_of(dataclasses.replace(op, node=anchor.origin)), members, origin_scope, op.op, op.is_training, op.epsilon, roles))
        return found

    def _named_roles(self, members: set[str], flat: Flat) -> dict[str, str]:
        """The BN vectors the ops of one unfused BN read, by the variables' own names."""
        roles = {}
        for name in sorted(members):
            for tensor in flat.ops[name].input:
                source = source_node(tensor)
                if source in flat.variables:
                    role = self.variable_name(flat.variables[source]).rpartition("/")[2]
                    if role in BN_VECTORS:
                        roles.setdefault(role, source)
        return roles

    def _layer_name(self, variables: list[str], flat: Flat) -> str:
        """The Keras layer name the variables agree on (``bn1`` for ``bn1/gamma``...), "" if none."""
        names = {self.variable_name(flat.variables[v]).rpartition("/")[0] for v in variables if v in flat.variables}
        return names.pop() if len(names) == 1 and "" not in names else ""

    def _layers(self, flat: Flat, batchnorms: list[_BatchNorm]) -> None:
        """Every op computed from an input becomes a layer or part of one; then wire them."""
        owner: dict[str, str] = {}
        data = _computed_from_inputs(flat)
        self._scopes = _ScopeMap([bn.origin_scope for bn in batchnorms])
        for pseudo in flat.inputs:
            path = self._unique(flat.ops[pseudo].origin)
            self.graph.layers[path] = Layer(path=path, module=MODULE, name=path, class_name="InputLayer", config={})
            self.graph.inputs.append(path)
            owner[pseudo] = path
        for bn in batchnorms:
            path = self._bn_layer(bn, flat)
            for member in bn.members:
                owner[member] = path
        rest = [op for op in flat.ops.values() if op.name not in owner and op.name in data]
        self._ops_in_scope = Counter(self._scopes.path(op.origin.rpartition("/")[0], "") for op in rest)
        for op in rest:
            owner[op.name] = self._op_layer(op, flat, owner, data)
        self._wire(flat, owner)
        self._bn_shapes(flat, owner)
        self.graph.outputs = list(dict.fromkeys(owner[source_node(t)] for t in flat.outputs if source_node(t) in owner))

    def _bn_layer(self, bn: _BatchNorm, flat: Flat, only_if_training: bool = False) -> str:
        """The path of the BN layer of one batch-norm op. A BN called twice (a shared layer)
        is one layer, as in Keras; with ``only_if_training`` (another signature's op) a
        layer is only created, unwired, for an op in training mode, so BN106 sees it."""
        keras_name = self._layer_name(list(bn.roles.values()), flat)
        path = self._scopes.path(bn.origin_scope, keras_name) if keras_name else bn.origin_scope or bn.anchor
        layer = self.graph.layers.get(path)
        if layer is not None and layer.class_name == "BatchNormalization":  # a BN called twice, or seen by another signature
            self._mark(layer, bn)
            return path
        if only_if_training and not bn.is_training:
            return path
        path = self._unique(path)
        config = {"name": path.rpartition("/")[2], "epsilon": bn.epsilon, "is_training": bn.is_training, "op": bn.op}
        config.update(self._bn_setup(bn, flat))
        layer = self.graph.layers[path] = Layer(path=path, module=MODULE, name=config["name"], class_name="BatchNormalization", config=config)
        output = output_shape(flat.ops[bn.anchor]) if bn.op != "batch_normalization" else None  # unfused: see _layers
        if output is not None:
            layer.input_shapes = [output]
        self._roles[path] = bn.roles
        self._variables_of[path] = flat.variables
        self._mark(layer, bn)
        return path

    def _mark(self, layer: Layer, bn: _BatchNorm) -> None:
        """BN106's mark: the first op found in training mode says where."""
        if bn.is_training and not layer.baked_training:
            layer.config["is_training"] = True
            layer.baked_training = bn.source

    def _bn_setup(self, bn: _BatchNorm, flat: Flat) -> dict[str, Any]:
        """``axis``, ``center``, ``scale`` and the dtype policy of one BN, as the ops show them."""
        setup: dict[str, Any] = {"axis": -1}
        anchor = flat.ops[bn.anchor]
        if bn.op != "batch_normalization":
            data_format = anchor.attr["data_format"].s.decode("ascii", "replace") if "data_format" in anchor.attr else "NHWC"
            setup["axis"] = 1 if data_format.startswith("NC") else -1
            if "T" in anchor.attr and anchor.attr["T"].type in (DT_HALF, DT_BFLOAT16):
                setup["dtype"] = "float16"
            return setup
        setup["center"] = "beta" in bn.roles
        setup["scale"] = "gamma" in bn.roles
        for name in bn.members:
            op = flat.ops[name]
            if op.op == "Reshape" and op.input and _weight_variable(op.input[0], flat) is not None:
                shape = output_shape(op)  # Keras reshapes the vectors to broadcast over a BN axis that is not last
                wide = [i for i, d in enumerate(shape or []) if d != 1]
                if len(wide) == 1:
                    setup["axis"] = wide[0]
            if op.op == "Cast" and "SrcT" in op.attr and op.attr["SrcT"].type in (DT_HALF, DT_BFLOAT16):
                setup["dtype"] = "mixed_float16" if op.attr["SrcT"].type == DT_HALF else "mixed_bfloat16"
        return setup

    def _op_layer(self, op: Op, flat: Flat, owner: dict[str, str], data: set[str]) -> str:
        """The layer of one op outside the BNs: a linear layer (with the bias add that
        follows it merged in), an activation, a pass-through or an opaque op."""
        scope, _, local = op.origin.rpartition("/")
        biased = self._biased_layer(op, flat, owner, data)
        if biased is not None:
            self.graph.layers[biased].config["use_bias"] = True
            return biased
        if op.op in LINEAR_OPS:
            kernel = next((v for v in (_weight_variable(t, flat) for t in op.input) if v is not None), None)
            if kernel is not None:
                name = self._layer_name([kernel], flat) if self.variable_name(flat.variables.get(kernel, -1)).rpartition("/")[2] in KERNEL_NAMES else ""
                path = self._scopes.path(scope, name) if name else self._scopes.path(scope, "") + "/" + local
                shared = self.graph.layers.get(path)
                if name and shared is not None and shared.config.get("tf_op") == op.op:
                    return path  # a layer called twice (shared): one layer, as in Keras
                if name and shared is not None and shared.config.get("tf_op") == "DepthwiseConv2dNative" and op.op == "Conv2D" and owner.get(source_node(op.input[0])) == path:
                    shared.class_name = "SeparableConv2D"  # its pointwise half: SeparableConv2D runs both
                    return path
                path = self._unique(path)
                data_format = op.attr["data_format"].s.decode("ascii", "replace") if "data_format" in op.attr else "NHWC"
                config = {"name": path.rpartition("/")[2], "use_bias": False, "tf_op": op.op, "data_format": "channels_first" if data_format.startswith("NC") else "channels_last"}
                self.graph.layers[path] = Layer(path=path, module=MODULE, name=config["name"], class_name=LINEAR_OPS[op.op], config=config)
                return path
        mapped = self._scopes.path(scope, "")
        if mapped and self._ops_in_scope[mapped] == 1 and mapped not in self.graph.layers:
            path = mapped  # the one op of a layer's scope (relu1, gap, flatten): named as the layer
        else:
            path = self._unique(f"{mapped}/{local}" if mapped else local)
        if op.op in ACTIVATION_OPS:
            class_name, config = ACTIVATION_OPS[op.op]
            config = dict(config)
        else:
            class_name, config = OTHER_OPS.get(op.op, op.op), {}
            if op.op in ("MaxPool", "AvgPool") and "data_format" in op.attr:
                config["data_format"] = "channels_first" if op.attr["data_format"].s.decode("ascii", "replace").startswith("NC") else "channels_last"
        config.update(name=path.rpartition("/")[2], tf_op=op.op)
        shape = next((output_shape(flat.ops[source_node(t)]) for t in _data_inputs(op) if source_node(t) in flat.ops), None)
        self.graph.layers[path] = Layer(path=path, module=MODULE, name=config["name"], class_name=class_name, config=config, input_shapes=[shape] if shape else [])
        return path

    def _bn_shapes(self, flat: Flat, owner: dict[str, str]) -> None:
        """An unfused BN's shape (the same in and out): that of the op of its scope that
        other layers, or the signature's outputs, read."""
        read = [(op.name, t) for op in flat.ops.values() for t in _data_inputs(op)] + [("", t) for t in flat.outputs]
        for reader, tensor in read:
            path = owner.get(source_node(tensor))
            layer = self.graph.layers.get(path) if path is not None and owner.get(reader) != path else None
            if layer is not None and layer.class_name == "BatchNormalization" and not layer.input_shapes:
                shape = output_shape(flat.ops[source_node(tensor)])
                if shape is not None:
                    layer.input_shapes = [shape]

    def _biased_layer(self, op: Op, flat: Flat, owner: dict[str, str], data: set[str]) -> str | None:
        """The Dense/Conv layer whose bias ``op`` adds (a ``BiasAdd``/``AddV2`` of a variable
        to its output: Keras's ``use_bias``), None when ``op`` is anything else."""
        if op.op not in BIAS_OPS or len(op.input) != 2 or source_node(op.input[1]) in data:
            return None
        linear = owner.get(source_node(op.input[0]))
        if linear is None or self.graph.layers[linear].config.get("tf_op") not in LINEAR_OPS:
            return None
        return linear if _weight_variable(op.input[1], flat) is not None else None

    def _wire(self, flat: Flat, owner: dict[str, str]) -> None:
        for op in flat.ops.values():
            path = owner.get(op.name)
            if path is None:
                continue
            layer = self.graph.layers[path]
            for tensor in _data_inputs(op):
                producer = owner.get(source_node(tensor))
                if producer is not None and producer != path and producer not in layer.producers:
                    layer.producers.append(producer)
        for layer in self.graph:
            for producer in layer.producers:
                self.graph.layers[producer].consumers.append(layer.path)

    def _unique(self, path: str) -> str:
        """``path``, or ``path_N`` with the first N not taken. The next N to try is kept per
        path: a function called thousands of times repeats each name as often."""
        if path not in self.graph.layers:
            return path
        index = self._suffixes.get(path, 1)
        while f"{path}_{index}" in self.graph.layers:
            index += 1
        self._suffixes[path] = index + 1
        return f"{path}_{index}"

    def _weights(self) -> None:
        """BN vectors from the checkpoint, where every BN's moving statistics are variables."""
        from .checkpoint import CHECKPOINT_PREFIX, CheckpointReader

        batchnorms = self.graph.batchnorms()
        missing = [bn.path for bn in batchnorms if not {"moving_mean", "moving_variance"} <= set(self._roles.get(bn.path, {}))]
        if missing:
            self.graph.weights_missing = (
                f"the moving statistics of {', '.join(repr(p) for p in missing[:3])}{', ...' if len(missing) > 3 else ''} "
                "are not variables of this SavedModel (computed in the graph, or captured without a name): their values cannot be read"
            )
            return
        object_paths = {}
        for path, roles in self._roles.items():
            variables = self._variables_of[path]
            object_paths[path] = {role: self.object_path(variables[pseudo]) for role, pseudo in roles.items()}
        self.graph.weights = ExportWeights(CheckpointReader(self.path / CHECKPOINT_PREFIX), object_paths)


class _ScopeMap:
    """Maps an op's name scope to a Keras path (see the module docstring).

    ``scopes`` are the name scopes of the batch-norm ops: when all of them sit below one
    common outer scope (the exported model's own, ``bias_before_bn_1``) it is dropped,
    and when that scope carries TensorFlow's ``_N`` suffix so does every layer's.
    """

    SUFFIX = re.compile(r"_\d+$")

    def __init__(self, scopes: list[str]) -> None:
        firsts = {s.split("/")[0] for s in scopes}
        self.outer = firsts.pop() if len(firsts) == 1 and scopes and all("/" in s for s in scopes) else ""
        self.suffixed = bool(self.outer) and bool(self.SUFFIX.search(self.outer))

    def path(self, scope: str, prefix: str) -> str:
        """The Keras path of the layer whose variables are named ``<prefix>/gamma``... and
        whose ops sit in ``scope``; with no ``prefix``, the mapped scope itself.

        Keras 3 puts the name scopes a model was built under into the variable names
        (NASNet's ``normal_A_block_0/adjust_block/.../adjust_bn_0/gamma``) but not into the
        ops' scopes (``nasnet_mobile_1/adjust_bn_0_1``): where the scope ends with the
        prefix's last part, that part is the layer's name and the scope gives the nested
        models around it; where it does not (tf-keras runs each layer in a function of its
        own, whose ops have no scope), the prefix is the name (``conv1/bn``).
        """
        parts = scope.split("/") if scope else []
        if self.outer and parts and parts[0] == self.outer:
            parts = parts[1:]
        if self.suffixed:
            parts = [self.SUFFIX.sub("", p) or p for p in parts]
        if not prefix:
            return "/".join(parts)
        name = prefix.rpartition("/")[2]
        if not parts or parts[-1] != name:
            return prefix
        return "/".join([*parts[:-1], name])


def _weight_variable(tensor: str, flat: Flat) -> str | None:
    """The variable pseudo-op a weight input reads, through reads, casts and reshapes; None if none."""
    name = source_node(tensor)
    for _ in range(MAX_WALK):
        if name in flat.variables or name.startswith(VARIABLE_PREFIX):
            return name
        op = flat.ops.get(name)
        if op is None or op.op not in WEIGHT_PASS_THROUGH or not op.input:
            return None
        name = source_node(op.input[0])
    return None


def _data_inputs(op: Op) -> list[str]:
    """The inputs of ``op`` that carry activations, not shapes or axes."""
    if op.op in FIRST_INPUT_ONLY:
        return op.input[:1]
    if op.op in THIRD_INPUT_ONLY:
        return op.input[2:3]
    return op.input


def _computed_from_inputs(flat: Flat) -> set[str]:
    """Names of the ops whose value depends on a model input (a walk forward, no recursion)."""
    consumers: dict[str, list[str]] = {}
    for op in flat.ops.values():
        for tensor in _data_inputs(op):
            consumers.setdefault(source_node(tensor), []).append(op.name)
    found = set(flat.inputs)
    pending = list(flat.inputs)
    while pending:
        for consumer in consumers.get(pending.pop(), []):
            if consumer not in found and flat.ops[consumer].op not in SHAPE_OPS:
                found.add(consumer)
                pending.append(consumer)
    return found


class ExportWeights:
    """The BN vectors of an exported SavedModel, read from its checkpoint on demand.

    ``object_paths`` maps each BN's layer path to ``{"gamma": "root.variables.2", ...}``
    (the vectors it reads); a vector it does not read (``scale=False``) is None in its
    :class:`~bnaudit.loaders.arrays.BNArrays`. Raises :class:`LoadError` for a damaged
    checkpoint or a variable that is not one vector per channel.
    """

    def __init__(self, reader: CheckpointReader, object_paths: dict[str, dict[str, str | None]]) -> None:
        self._reader = reader
        self._object_paths = object_paths
        self._cache: dict[str, BNArrays] = {}

    def bn_arrays(self, layer: Layer) -> BNArrays:
        if layer.path not in self._cache:
            self._cache[layer.path] = assemble_bn_arrays(self.layer_arrays(layer, BN_VECTORS), f"layer {layer.path!r}")
        return self._cache[layer.path]

    def layer_arrays(self, layer: Layer, names) -> dict[str, np.ndarray]:
        """The named vectors a BN's ops read (only BN layers' variables are mapped)."""
        found = {}
        for name in names:
            object_path = self._object_paths.get(layer.path, {}).get(name)
            if object_path is None:
                continue
            parent, _, leaf = object_path.rpartition(".")
            value = self._reader.variable(parent, leaf, f"layer {layer.path!r} {name}")
            if value is not None:
                found[name] = value
        return found

    def close(self) -> None:
        self._cache.clear()


def export_graph(path: Path) -> ModelGraph:
    """A SavedModel without ``keras_metadata.pb`` as a :class:`ModelGraph` (module docstring).

    Raises :class:`LoadError` without TensorFlow (nothing can be read), when
    ``saved_model.pb`` is missing or unreadable, or when its functions nest or repeat
    beyond the limits.
    """
    if not (path / SAVED_MODEL_FILE).is_file():
        raise LoadError(
            f"this SavedModel has neither keras_metadata.pb nor {SAVED_MODEL_FILE} (a saved_model.pbtxt is not read)",
            "save it again with tf.saved_model.save or Keras 3 model.export()",
        )
    try:
        saved = read_saved_model(path)
    except ImportError:
        raise LoadError(
            "this SavedModel has no keras_metadata.pb, and reading its serving graph needs TensorFlow",
            "pip install 'bnaudit[tensorflow]'",
        ) from None
    return ExportGraphBuilder(path, saved).build()
