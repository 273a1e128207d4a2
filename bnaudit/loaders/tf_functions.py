"""A serving signature's function with every function it calls expanded in place: one op list.

A SavedModel's serving signature runs a library function (the signature wrapper) that
calls others through ``StatefulPartitionedCall``/``PartitionedCall`` or directly, down
to the ops. :func:`flatten_signature` expands each call in place (its arguments and
results wired to the caller's tensors), so a walk over the model's ops never crosses a
function boundary; the wrapper's captured arguments become pseudo-ops standing for the
variables the object graph binds to them (``concrete_functions[fn].bound_inputs``), its
other arguments pseudo-ops for the model's inputs. Nothing is loaded or run.

Hostile files: calls nested deeper than :data:`MAX_DEPTH` (a function calling itself) and
flattenings visiting more than :data:`MAX_OPS` nodes (calls that multiply) raise
:class:`LoadError`; the expansion recurses at most :data:`MAX_DEPTH` levels.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from . import LoadError
from .serving import SAVED_MODEL_FILE

#: Function calls nested deeper than this are refused (a function may call itself).
MAX_DEPTH = 32
#: A signature whose flattening visits more nodes (ops and calls) than this is refused:
#: calls can repeat a function, and functions of calls multiply without an op to count.
#: Keras 3 exports of InceptionResNetV2 and NASNetMobile visit 4,418 and 3,784.
MAX_OPS = 500_000

#: DataType enum value of a resource handle (tensorflow/core/framework/types.proto).
DT_RESOURCE = 20


@dataclass
class Op:
    """One op of the flattened signature: its flattened name, its name in its own
    function (``origin``), and its inputs as flattened tensor names (control inputs dropped)."""

    name: str
    op: str
    attr: Any
    input: list[str]
    origin: str


@dataclass
class Flat:
    """A serving signature flattened into one list of ops."""

    ops: dict[str, Op] = field(default_factory=dict)
    inputs: list[str] = field(default_factory=list)  # pseudo-op names of the model inputs
    outputs: list[str] = field(default_factory=list)  # tensor names
    variables: dict[str, int] = field(default_factory=dict)  # pseudo-op name -> object-graph node id


#: Names of the pseudo-ops standing for the wrapper's arguments: the model's inputs
#: (``__input__/image``) and the variables bound to it (``__variable__/12``, the node id).
INPUT_PREFIX = "__input__/"
VARIABLE_PREFIX = "__variable__/"


class _Flattener:
    """Expands a signature's function and every function it calls into one op list."""

    def __init__(self, meta_graph) -> None:
        self.library = {f.signature.name: f for f in meta_graph.graph_def.library.function}
        self.bound = {name: list(fn.bound_inputs) for name, fn in meta_graph.object_graph_def.concrete_functions.items()}
        self.alias: dict[str, str] = {}
        self.flat = Flat()
        self.visited = 0

    def flatten(self, name: str) -> Flat:
        function = self.library[name]
        args = list(function.signature.input_arg)
        bound = self.bound.get(name, [])
        data_args = args[: len(args) - len(bound)] if len(bound) <= len(args) else args
        for arg in data_args:
            if arg.type == DT_RESOURCE:  # a captured variable no object maps
                pseudo = f"{VARIABLE_PREFIX}{arg.name}"
                self._pseudo(pseudo, "VarHandleOp")
            else:
                pseudo = f"{INPUT_PREFIX}{arg.name}"
                self._pseudo(pseudo, "Placeholder", origin=arg.name)
                self.flat.inputs.append(pseudo)
            self.alias[arg.name] = f"{pseudo}:0"
        for arg, node_id in zip(args[len(data_args):], bound):
            pseudo = f"{VARIABLE_PREFIX}{node_id}"
            self._pseudo(pseudo, "VarHandleOp")
            self.flat.variables[pseudo] = int(node_id)
            self.alias[arg.name] = f"{pseudo}:0"
        self._inline(function, "", 0)
        self.flat.outputs = [self._resolve(function.ret[a.name]) for a in function.signature.output_arg if a.name in function.ret]
        for op in self.flat.ops.values():
            op.input = [self._resolve(i) for i in op.input]
        return self.flat

    def _pseudo(self, name: str, op: str, origin: str = "") -> None:
        self.flat.ops[name] = Op(name, op, {}, [], origin or name)

    def _inline(self, function, prefix: str, depth: int) -> None:
        if depth > MAX_DEPTH:
            raise LoadError(f"{SAVED_MODEL_FILE}: function calls nest deeper than {MAX_DEPTH} levels", "this is not a plausible model")
        for node in function.node_def:
            name = prefix + node.name
            inputs = [prefix + i for i in node.input if not i.startswith("^")]
            callee = self._callee(node)
            self.visited += 1
            if self.visited > MAX_OPS:
                raise LoadError(f"{SAVED_MODEL_FILE}: a serving signature runs more than {MAX_OPS} ops and calls", "this is not a plausible model")
            if callee is None:
                self.flat.ops[name] = Op(name, node.op, node.attr, inputs, node.name)
                continue
            for arg, value in zip(callee.signature.input_arg, inputs):
                self.alias[f"{name}/{arg.name}"] = value
            self._inline(callee, name + "/", depth + 1)
            for index, arg in enumerate(callee.signature.output_arg):
                if arg.name in callee.ret:
                    ret = f"{name}/{callee.ret[arg.name]}"
                    self.alias[f"{name}:output:{index}"] = ret
                    self.alias[f"{name}:{arg.name}:0"] = ret

    def _callee(self, node):
        if node.op in self.library:
            return self.library[node.op]
        if node.op in ("StatefulPartitionedCall", "PartitionedCall") and "f" in node.attr:
            return self.library.get(node.attr["f"].func.name)
        return None

    def _resolve(self, tensor: str) -> str:
        """A tensor name with every call boundary and argument looked through."""
        for _ in range(2 * MAX_DEPTH + 4):
            following = self.alias.get(tensor)
            if following is None:
                return tensor
            tensor = following
        raise LoadError(f"{SAVED_MODEL_FILE}: function arguments refer to each other in a cycle", "this is not a plausible model")


def signature_function(meta_graph, signature: str) -> str | None:
    """The library function a signature's outputs are computed by (its wrapper), None if none."""
    nodes = {n.name: n for n in meta_graph.graph_def.node}
    for tensor in meta_graph.signature_def[signature].outputs.values():
        node = nodes.get(tensor.name.split(":")[0])
        if node is not None and "f" in node.attr and node.attr["f"].func.name:
            return node.attr["f"].func.name
    return None


def output_shape(op: Op) -> list[int | None] | None:
    """The first output shape the op's ``_output_shapes`` records, None where unknown."""
    if "_output_shapes" not in op.attr:
        return None
    shapes = op.attr["_output_shapes"].list.shape
    if not shapes or shapes[0].unknown_rank:
        return None
    return [d.size if d.size >= 0 else None for d in shapes[0].dim]


def flatten_signature(meta_graph, function: str) -> Flat:
    """The library function ``function`` (a signature's wrapper) and all it calls, as one
    :class:`Flat`. Raises :class:`LoadError` for calls nested or repeated beyond the limits."""
    return _Flattener(meta_graph).flatten(function)
