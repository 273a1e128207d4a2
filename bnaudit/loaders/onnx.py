"""Loader for ONNX models (``.onnx``): the graph becomes a ModelGraph the BN rules read unchanged.

ONNX is where Keras models travel when they leave TensorFlow (tf2onnx, Keras 3's
``export(format="onnx")``) and what PyTorch exports. The file is parsed with the
``onnx`` package (the ``[onnx]`` extra); nothing in it is run. Each node becomes a
:class:`~bnaudit.graph.Layer` whose ``class_name`` is the Keras layer it corresponds to
(:data:`OP_CLASSES`), so "the layer before this BN" means the same thing as in a
``.keras`` file:

- ``BatchNormalization`` -> BatchNormalization with ``axis=1`` (ONNX normalizes the
  channel axis of NCHW), ``epsilon`` (ONNX default 1e-5), ``momentum`` where the node
  sets it, and ``training_mode=1`` (or, before opset 14, the running-statistics
  outputs that only training mode writes) as ``Layer.baked_training`` (BN106);
- ``Conv``/``ConvTranspose`` -> ``ConvND``/``ConvNDTranspose`` with
  ``data_format="channels_first"`` and ``use_bias`` from the optional bias input;
  ``Gemm``, and ``MatMul`` by a constant followed by ``Add`` of a constant, -> Dense;
- activations (Relu, Sigmoid, Softmax, ...) -> activation layers; ``Dropout``;
  ``Identity``/``Cast`` -> Identity; ``Reshape``/``Flatten``/``Squeeze``/``Unsqueeze``
  -> Reshape/Flatten; ``Transpose`` -> Permute. A run of Transposes that cancel out
  (tf2onnx writes NHWC<->NCHW pairs around every op) is looked through as Identity,
  and Transposes that only feed a BN are folded into the BN's ``axis`` (expressed in
  the layout of the tensor before them), so BN107 sees an NHWC BN on NCHW channels;
- the bodies of ``If``/``Loop``/``Scan`` and the model's local functions are expanded
  in place: their nodes get paths ``<node>/<attribute>/<inner node>``.

Other operators keep their ONNX name as ``class_name`` and are opaque to the rules.
Layer paths are the node names (``<node>_<index>`` where a node has none).

Tensors are read only on demand (the BN vectors), checked for shape and size first.
External data is read only from files inside the model's own folder, at offsets that
lie within them, so a model over 2 GB (which must keep its tensors outside the
protobuf) is never read whole.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

import numpy as np

from ..graph import Layer, ModelGraph, NestedModel
from ..hookspecs import hookimpl
from . import LoadError
from .arrays import MAX_ARRAY_ELEMENTS, MAX_CHANNELS, BNArrays, assemble_bn_arrays

if TYPE_CHECKING:
    import onnx

ONNX_SUFFIXES = {".onnx"}
#: Nested subgraphs / function calls deeper than this are refused (a hostile file can
#: nest them without end).
MAX_DEPTH = 32
#: Above this a file is not a plausible ONNX protobuf (protobuf itself stops at 2 GiB).
MAX_PROTO_BYTES = 2**31 - 1

#: The BN node's inputs 2-5 (scale, B, input_mean, input_var) as Keras names them.
BN_ROLES = ("gamma", "beta", "moving_mean", "moving_variance")
#: ONNX operator -> the Keras layer class the rules know it as.
OP_CLASSES = {
    "BatchNormalization": "BatchNormalization",
    "Gemm": "Dense",
    "Dropout": "Dropout",
    "Identity": "Identity",
    "Cast": "Identity",
    "Reshape": "Reshape",
    "Squeeze": "Reshape",
    "Unsqueeze": "Reshape",
    "Flatten": "Flatten",
    "Transpose": "Permute",
    "Relu": "ReLU",
    "LeakyRelu": "LeakyReLU",
    "PRelu": "PReLU",
    "Elu": "ELU",
    "Softmax": "Softmax",
    "ThresholdedRelu": "ThresholdedReLU",
    "Add": "Add",
    "Sum": "Add",
    "Sub": "Subtract",
    "Mul": "Multiply",
    "Concat": "Concatenate",
    "GlobalAveragePool": "GlobalAveragePooling2D",
    "GlobalMaxPool": "GlobalMaxPooling2D",
    "MaxPool": "MaxPooling2D",
    "AveragePool": "AveragePooling2D",
    "Pad": "ZeroPadding2D",
}
#: Element-wise activations without a Keras layer of their own: ``Activation(name)``.
ACTIVATION_OPS = {
    "Sigmoid": "sigmoid",
    "Tanh": "tanh",
    "LogSoftmax": "log_softmax",
    "Selu": "selu",
    "Celu": "celu",
    "Softplus": "softplus",
    "Softsign": "softsign",
    "HardSigmoid": "hard_sigmoid",
    "HardSwish": "hard_swish",
    "Gelu": "gelu",
    "Mish": "mish",
    "Clip": "clip",
}
#: ``TensorProto.data_location`` of a tensor kept outside the protobuf.
TENSOR_EXTERNAL = 1
#: TensorProto data types the BN vectors may hold -> numpy dtype.
_NUMERIC_TYPES = {1: np.float32, 10: np.float16, 11: np.float64, 16: None}  # 16: bfloat16, refused below


def _onnx():
    try:
        import onnx
    except ImportError:
        raise LoadError(
            "reading .onnx files needs the onnx package",
            "install it with: pip install 'bnaudit[onnx]'",
        ) from None
    return onnx


@hookimpl
def bnaudit_load_model(path: Path) -> ModelGraph | None:
    if not path.is_file() or path.suffix.lower() not in ONNX_SUFFIXES:
        return None
    onnx = _onnx()
    size = path.stat().st_size
    if size > MAX_PROTO_BYTES:
        raise LoadError(
            f"the file is {size} bytes, over the 2 GiB a protobuf can hold",
            "ONNX models this large keep their tensors as external data; save it with save_as_external_data=True",
        )
    try:
        model = onnx.load_model(str(path), load_external_data=False)
    except Exception as exc:  # protobuf's DecodeError and friends
        raise LoadError(
            f"not a readable ONNX model ({type(exc).__name__}: {_first_line(exc)})",
            "the file is truncated or not ONNX; export it again",
        ) from None
    if not model.HasField("graph"):
        raise LoadError("the ONNX file holds no graph", "export the model again")
    return OnnxGraphBuilder(model, path.resolve().parent).build()


def _first_line(exc: BaseException) -> str:
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


#: What an ONNX graph without BatchNormalization nodes may mean: the BNs of a Keras model
#: are gone when Keras 3 exported it (it runs BN as separate ops) or tf2onnx's default
#: optimizers folded them, so a clean result says nothing about them.
NO_BATCHNORM_NODE = (
    "no BatchNormalization node: if this model has BN layers, they were folded or split into separate ops by the "
    "conversion (Keras 3's export, or tf2onnx's default optimizers), and nothing about them can be audited here; "
    "convert as docs/formats.md shows ('Converting for the audit'), or audit the .keras original"
)
#: Why BN101 is skipped on an ONNX graph without Dropout nodes: converters (tf2onnx,
#: ``torch.onnx.export`` in eval mode) leave Dropout out of the inference graph, so its
#: absence does not say the model had none. A graph that keeps Dropout nodes is judged.
NO_DROPOUT = (
    "this ONNX graph has no Dropout node: converters leave Dropout out of inference graphs, so what fed a BN "
    "in training is not recorded; audit the .keras original for BN101"
)


class OnnxGraphBuilder:
    """Turns one ``onnx.ModelProto`` into a :class:`ModelGraph` (see the module docstring)."""

    def __init__(self, model: "onnx.ModelProto", base_dir: Path) -> None:
        self.model = model
        self.graph = ModelGraph(name=model.graph.name or "", class_name="onnx")
        self.graph.format = "onnx"
        self.graph.runner = "onnxruntime"
        self.graph.records_trainable = False
        self.graph.not_recorded = {
            "BN108": "an ONNX file records no trainable flag (which BN layers were frozen in training); audit the .keras original for BN108",
            **dict.fromkeys(("BN211", "BN212"), "an ONNX file records no trainable flag (which BN layers were frozen in training); diff the .keras originals"),
        }
        opsets = {o.domain or "ai.onnx": o.version for o in model.opset_import}
        self.opset = opsets.get("ai.onnx", 0)
        self.graph.producer = f"{model.producer_name} {model.producer_version}".strip()
        self.functions = {(f.domain or "ai.onnx", f.name): f for f in model.functions}
        self.tensors: dict[str, Any] = {}  # initializer / Constant name -> TensorProto
        self.tensor_types: dict[str, int] = {}  # tensor name -> element type, where declared
        self.tensor_ranks: dict[str, int] = {}
        self.producer_of: dict[str, str] = {}  # tensor name -> layer path
        self.baked: dict[str, str] = {}  # BN path -> why it runs in training mode
        self.bn_inputs: dict[str, list[str]] = {}  # BN path -> scale, B, mean, var tensor names
        self.node_inputs: dict[str, list[str]] = {}  # layer path -> its node's input tensors
        self.base_dir = base_dir

    # -- building -----------------------------------------------------------------
    def build(self) -> ModelGraph:
        g = self.model.graph
        self._declare(g)
        initializer_names = set(self.tensors)
        for value in g.input:
            if value.name in initializer_names:
                continue  # IR < 4 lists initializers among the inputs
            path = self._unique(value.name or "input")
            self._add(path, "InputLayer", {}, [], "")
            self.producer_of[value.name] = path
            self.graph.inputs.append(path)
        self._add_nodes(g.node, prefix="", scope={}, depth=0)
        self.graph.outputs = list(dict.fromkeys(self.producer_of[o.name] for o in g.output if o.name in self.producer_of))
        self._merge_matmul_add()
        self._wire()
        self._fold_transposes()
        for path, source in self.baked.items():
            self.graph.layers[path].baked_training = source
        if not any(layer.class_name == "Dropout" for layer in self.graph):
            self.graph.not_recorded["BN101"] = NO_DROPOUT
        if not self.graph.batchnorms():
            self.graph.notes.append(NO_BATCHNORM_NODE)
        self._check_tensors()
        self.graph.weights = OnnxWeights(self.tensors, self.bn_inputs, self.node_inputs, self.base_dir)
        return self.graph

    def _check_tensors(self) -> None:
        """Refuse hostile layouts at load time, once, rather than in every rule that reads them:
        each external tensor's window, and the BN vectors' shapes and sizes."""
        for path, names in self.bn_inputs.items():
            for role, name in zip(BN_ROLES, names):
                if name in self.tensors:
                    where = f"layer {path!r} {role} ({name!r})"
                    dims, _, _ = check_tensor(self.tensors[name], self.base_dir, where, MAX_CHANNELS)
                    if len(dims) != 1:
                        raise LoadError(f"{where} has shape {dims}, expected one vector per channel")
        for name, tensor in self.tensors.items():
            if tensor.data_location == TENSOR_EXTERNAL:
                external_window(tensor, self.base_dir, f"tensor {name!r}")

    def _declare(self, g) -> None:
        for tensor in g.initializer:
            self.tensors[tensor.name] = tensor
        for value in [*g.input, *g.output, *g.value_info]:
            kind = value.type.WhichOneof("value")
            if kind == "tensor_type":
                self.tensor_types[value.name] = value.type.tensor_type.elem_type
                if value.type.tensor_type.HasField("shape"):
                    self.tensor_ranks[value.name] = len(value.type.tensor_type.shape.dim)

    def _unique(self, name: str) -> str:
        name = name or "node"
        if name not in self.graph.layers:
            return name
        index = 1
        while f"{name}_{index}" in self.graph.layers:
            index += 1
        return f"{name}_{index}"

    def _add(self, path: str, class_name: str, config: dict, inputs: list[str], domain: str) -> Layer:
        container, _, name = path.rpartition("/")
        layer = Layer(
            path=path,
            name=name,
            class_name=class_name,
            config=config,
            module=f"onnx:{domain or 'ai.onnx'}",
            container=container if container in self.graph.nested else "",
            input_shapes=[[None] * self.tensor_ranks[i] for i in inputs if i in self.tensor_ranks][:1],
        )
        self.node_inputs[path] = list(inputs)
        self.graph.layers[path] = layer
        return layer

    def _add_nodes(self, nodes: Iterable[Any], prefix: str, scope: dict[str, str], depth: int, attrs=None) -> None:
        """Add ``nodes``; ``scope`` renames tensors inside a function body to the caller's."""
        if depth > MAX_DEPTH:
            raise LoadError(f"subgraphs or function calls nest deeper than {MAX_DEPTH} levels", "this is not a plausible model")
        for index, node in enumerate(nodes):
            inputs = [scope.get(i, i) for i in node.input]
            outputs = [scope.get(o, o) for o in node.output]
            path = self._unique(prefix + (node.name or f"{node.op_type}_{index}"))
            domain = node.domain or "ai.onnx"
            function = self.functions.get((domain, node.op_type))
            if function is not None:
                self._expand_function(node, function, path, inputs, outputs, depth)
                continue
            if node.op_type == "Constant":
                for attribute in node.attribute:
                    if attribute.name == "value" and attribute.HasField("t"):
                        self.tensors[outputs[0]] = attribute.t
                continue
            class_name, config = self._describe(node, path, inputs, outputs, attrs or {})
            self._add(path, class_name, config, [i for i in inputs if i], domain)
            for output in outputs:
                if output:
                    self.producer_of[output] = path
            for attribute in node.attribute:
                bodies = list(attribute.graphs) + ([attribute.g] if attribute.HasField("g") else [])
                for number, body in enumerate(bodies):
                    inner = f"{path}/{attribute.name}" + (f"_{number}" if len(bodies) > 1 else "")
                    self.graph.nested[inner] = NestedModel(inner, node.op_type, [], True)
                    self._declare(body)
                    for value in body.input:  # loop-carried values come from the node itself
                        self.producer_of[value.name] = path
                    self._add_nodes(body.node, inner + "/", scope, depth + 1)

    def _expand_function(self, node, function, path: str, inputs: list[str], outputs: list[str], depth: int) -> None:
        self.graph.nested[path] = NestedModel(path, node.op_type, [{}], True)
        inner_scope = {formal: actual for formal, actual in zip(function.input, inputs)}
        inner_scope.update({formal: actual for formal, actual in zip(function.output, outputs)})
        for inner in function.node:  # intermediate tensors get names unique to this call
            for name in inner.output:
                inner_scope.setdefault(name, f"{path}/{name}")
        attrs = {a.name: a for a in node.attribute}
        self._add_nodes(function.node, path + "/", inner_scope, depth + 1, attrs)

    def _attributes(self, node, caller_attrs) -> dict[str, Any]:
        import onnx

        found = {}
        for attribute in node.attribute:
            if attribute.ref_attr_name:  # inside a function: the caller's value
                attribute = caller_attrs.get(attribute.ref_attr_name)
                if attribute is None:
                    continue
            if attribute.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS):
                continue
            found[attribute.name] = onnx.helper.get_attribute_value(attribute)
        return found

    def _describe(self, node, path, inputs, outputs, caller_attrs) -> tuple[str, dict[str, Any]]:
        op = node.op_type
        attrs = self._attributes(node, caller_attrs)
        config: dict[str, Any] = {"onnx_op": op}
        if op == "BatchNormalization":
            config.update(axis=1, epsilon=float(attrs.get("epsilon", 1e-5)), center=True, scale=True)
            if "momentum" in attrs:
                config["momentum"] = float(attrs["momentum"])
            if self.tensor_types.get(inputs[0] if inputs else "") == 10:
                config["dtype"] = "float16"
            if attrs.get("spatial", 1) == 0:
                config["spatial"] = 0
            # training_mode=1 (opset 14+); before, the optional running-statistics outputs
            # are written only in training mode.
            if attrs.get("training_mode", 0) == 1:
                self.baked[path] = "the node's training_mode=1"
            elif self.opset < 14 and sum(1 for o in outputs if o) > 1:
                self.baked[path] = f"the node writes running statistics, which opset {self.opset} does only in training mode"
            if len(inputs) < 5:
                raise LoadError(f"BatchNormalization node {node.name!r} has {len(inputs)} inputs, expected 5")
            self.bn_inputs[path] = inputs[1:5]
            return "BatchNormalization", config
        if op in ("Conv", "ConvTranspose"):
            kernel = self.tensors.get(inputs[1]) if len(inputs) > 1 else None
            rank = len(kernel.dims) - 2 if kernel is not None else len(attrs.get("kernel_shape", [0, 0]))
            rank = rank if rank in (1, 2, 3) else 2
            config.update(data_format="channels_first", use_bias=len(inputs) > 2 and bool(inputs[2]), groups=attrs.get("group", 1))
            return f"Conv{rank}D" + ("Transpose" if op == "ConvTranspose" else ""), config
        if op == "Gemm":
            config["use_bias"] = len(inputs) > 2 and bool(inputs[2])
        elif op == "MatMul" and len(inputs) == 2 and inputs[1] in self.tensors:
            config["use_bias"] = False
            return "Dense", config
        elif op == "Dropout":
            ratio = attrs.get("ratio")
            if ratio is None and len(inputs) > 1 and inputs[1] in self.tensors:
                ratio = _scalar(self.tensors[inputs[1]])
            config["rate"] = 0.5 if ratio is None else ratio
        elif op == "Transpose":
            config["perm"] = list(attrs.get("perm", []))
        elif op in ACTIVATION_OPS:
            config["activation"] = ACTIVATION_OPS[op]
            return "Activation", config
        elif op == "Softmax":
            config["axis"] = attrs.get("axis", -1)
        return OP_CLASSES.get(op, op), config

    def _wire(self) -> None:
        for layer in self.graph:
            producers = []
            for name in self.node_inputs[layer.path]:
                if name in self.tensors and name not in self.producer_of:
                    continue  # a weight, not an activation
                producer = self.producer_of.get(name)
                if producer is not None and producer != layer.path and producer not in producers:
                    producers.append(producer)
            layer.producers = producers
        for layer in self.graph:
            for producer in layer.producers:
                self.graph.layers[producer].consumers.append(layer.path)

    def _merge_matmul_add(self) -> None:
        """``MatMul(x, W)`` then ``Add(_, b)`` with constant W and b is one Dense with a bias."""
        consumers: dict[str, list[str]] = {}
        outputs_of: dict[str, list[str]] = {}
        for layer in self.graph:
            for name in self.node_inputs[layer.path]:
                consumers.setdefault(name, []).append(layer.path)
        for tensor, producer in self.producer_of.items():
            outputs_of.setdefault(producer, []).append(tensor)
        for layer in list(self.graph):
            if layer.class_name != "Dense" or layer.config.get("onnx_op") != "MatMul":
                continue
            outputs = outputs_of.get(layer.path, [])
            if len(outputs) != 1 or len(consumers.get(outputs[0], [])) != 1:
                continue
            add = self.graph.layers[consumers[outputs[0]][0]]
            others = [i for i in self.node_inputs[add.path] if i != outputs[0]]
            if add.config.get("onnx_op") != "Add" or len(others) != 1 or others[0] not in self.tensors:
                continue
            layer.config["use_bias"] = True
            layer.config["bias_node"] = add.path
            for tensor in outputs_of.get(add.path, []):
                self.producer_of[tensor] = layer.path
            self.graph.outputs = [layer.path if o == add.path else o for o in self.graph.outputs]
            del self.graph.layers[add.path]

    def _fold_transposes(self) -> None:
        """Look through Transposes that cancel out, and fold those that only feed a BN into its axis."""
        graph = self.graph
        for bn in graph.batchnorms():
            chain, current = [], bn
            while len(current.producers) == 1:
                producer = graph.layers[current.producers[0]]
                if producer.class_name != "Permute" or len(producer.consumers) != 1 or not producer.config.get("perm"):
                    break
                chain.append(producer)
                current = producer
            if not chain:
                continue
            axis = 1
            for transpose in chain:  # nearest first: output axis i is input axis perm[i]
                perm = transpose.config["perm"]
                axis = perm[axis] if 0 <= axis < len(perm) else axis
                transpose.class_name = "Identity"
            bn.config["axis"] = axis
            bn.config["axis_folded_from"] = [t.path for t in chain]
        for layer in list(graph):
            if layer.class_name != "Permute" or len(layer.consumers) != 1:
                continue
            nxt = graph.layers[layer.consumers[0]]
            if nxt.class_name == "Permute" and len(nxt.producers) == 1 and _cancel(layer.config.get("perm"), nxt.config.get("perm")):
                layer.class_name = nxt.class_name = "Identity"


def _cancel(first, second) -> bool:
    if not first or not second or len(first) != len(second):
        return False
    return [first[i] for i in second] == list(range(len(first)))


def _scalar(tensor) -> float | None:
    try:
        value = read_tensor(tensor, None, "dropout ratio", max_elements=1)
    except LoadError:
        return None
    return float(value.reshape(-1)[0]) if value.size == 1 else None


def check_tensor(tensor, base_dir: Path | None, where: str, max_elements: int = MAX_ARRAY_ELEMENTS) -> tuple[list[int], type, int]:
    """Check one TensorProto's layout before anything is read: ``(dims, numpy dtype, bytes)``.

    The element count must be at most ``max_elements``, the type float16/32/64, raw data
    exactly the declared number of bytes, and external data a window of a file inside
    ``base_dir`` (the model's folder). Raises :class:`LoadError` otherwise.
    """
    dims = [int(d) for d in tensor.dims]
    if any(d < 0 for d in dims):
        raise LoadError(f"{where} declares negative dimensions {dims}")
    count = int(np.prod(dims, dtype=object)) if dims else 1
    if count > max_elements:
        raise LoadError(f"{where} declares shape {dims} ({count} elements), too large to read")
    dtype = _NUMERIC_TYPES.get(tensor.data_type)
    if dtype is None:
        raise LoadError(f"{where} holds ONNX data type {tensor.data_type}, not float16/32/64")
    nbytes = count * np.dtype(dtype).itemsize
    if tensor.data_location == TENSOR_EXTERNAL:
        external_window(tensor, base_dir, where, nbytes)
    elif tensor.HasField("raw_data"):
        if len(tensor.raw_data) != nbytes:
            raise LoadError(f"{where} declares {count} values ({nbytes} bytes) but holds {len(tensor.raw_data)} bytes")
    else:
        held = len(tensor.int32_data if dtype is np.float16 else tensor.double_data if dtype is np.float64 else tensor.float_data)
        if held != count:
            raise LoadError(f"{where} declares {count} values but holds {held}")
    return dims, dtype, nbytes


def read_tensor(tensor, base_dir: Path | None, where: str, max_elements: int = MAX_ARRAY_ELEMENTS) -> np.ndarray:
    """One TensorProto as a float64 array, after :func:`check_tensor`. Raises :class:`LoadError`."""
    dims, dtype, nbytes = check_tensor(tensor, base_dir, where, max_elements)
    if tensor.data_location == TENSOR_EXTERNAL:
        target, offset = external_window(tensor, base_dir, where, nbytes)
        with open(target, "rb") as handle:
            handle.seek(offset)
            raw = handle.read(nbytes)
    elif tensor.HasField("raw_data"):
        raw = tensor.raw_data
    elif dtype is np.float16:  # stored as uint16 bit patterns in int32_data
        return np.asarray(tensor.int32_data, dtype=np.uint16).view(np.float16).astype(np.float64).reshape(dims)
    else:
        return np.asarray(tensor.double_data if dtype is np.float64 else tensor.float_data, dtype=np.float64).reshape(dims)
    if len(raw) != nbytes:
        raise LoadError(f"{where}: external data ends after {len(raw)} of {nbytes} bytes")
    return np.frombuffer(raw, dtype=np.dtype(dtype).newbyteorder("<")).astype(np.float64).reshape(dims)


def external_window(tensor, base_dir: Path | None, where: str, nbytes: int | None = None) -> tuple[Path, int]:
    """Where an external tensor's bytes lie: ``(file, offset)``, checked, nothing read.

    The file must be inside ``base_dir`` (symbolic links resolved; absolute paths and
    ``..`` that leave it are refused, as onnx's own loader does since 1.16), exist, and
    hold ``[offset, offset + length)``; ``length`` must match ``nbytes`` where given.
    """
    info = {entry.key: entry.value for entry in tensor.external_data}
    location = info.get("location", "")
    if base_dir is None or not location:
        raise LoadError(f"{where}: external data without a location")
    target = (base_dir / location).resolve()
    if os.path.isabs(location) or not target.is_relative_to(base_dir) or target == base_dir:
        raise LoadError(
            f"{where}: external data {location!r} lies outside the model's folder",
            "bnaudit reads external tensors only from the model's own folder; move the data file next to the model",
        )
    if not target.is_file():
        raise LoadError(f"{where}: external data file {location!r} is missing", "copy it next to the model")
    try:
        offset = int(info.get("offset", 0))
        length = int(info.get("length", nbytes if nbytes is not None else 0))
    except ValueError:
        raise LoadError(f"{where}: external data offset/length are not numbers") from None
    size = target.stat().st_size
    if offset < 0 or length < 0 or offset + length > size or (nbytes is not None and length != nbytes):
        raise LoadError(
            f"{where}: external data {location!r} [{offset}, {offset + length}) does not fit "
            f"the file ({size} bytes)" + (f" or the declared {nbytes} bytes" if nbytes is not None else "")
        )
    return target, offset


class OnnxWeights:
    """The BN vectors of an ONNX model, read from the initializers when a rule asks."""

    def __init__(self, tensors: dict[str, Any], bn_inputs: dict[str, list[str]], node_inputs: dict[str, list[str]], base_dir: Path) -> None:
        self._tensors = tensors
        self._bn_inputs = bn_inputs
        self._node_inputs = node_inputs
        self._base_dir = base_dir
        self._cache: dict[str, BNArrays] = {}

    def bn_arrays(self, layer: Layer) -> BNArrays:
        if layer.path not in self._cache:
            names = dict(zip(BN_ROLES, self._bn_inputs.get(layer.path, [])))
            values = {}
            for name, tensor_name in names.items():
                where = f"layer {layer.path!r} {name} ({tensor_name!r})"
                tensor = self._tensors.get(tensor_name)
                if tensor is None:
                    raise LoadError(f"{where} is computed in the graph, not stored: its values cannot be read statically")
                values[name] = read_tensor(tensor, self._base_dir, where, max_elements=MAX_CHANNELS)
                if values[name].ndim != 1:
                    raise LoadError(f"{where} has shape {list(values[name].shape)}, expected one vector per channel")
            self._cache[layer.path] = assemble_bn_arrays(values, f"layer {layer.path!r}")
        return self._cache[layer.path]

    def layer_arrays(self, layer: Layer, names) -> dict[str, np.ndarray]:
        """The constant inputs of ``layer``'s node, by position (``names[i]`` = the i-th constant)."""
        constants = [i for i in self._node_inputs.get(layer.path, []) if i in self._tensors]
        return {
            name: read_tensor(self._tensors[tensor], self._base_dir, f"layer {layer.path!r} {name}")
            for name, tensor in zip(names, constants)
        }

    def close(self) -> None:
        self._cache.clear()
