"""ModelGraph: the saved architecture as a flat graph of layers, nested models expanded.

Keras 2 and Keras 3 write ``inbound_nodes`` differently (nested lists with a kwargs
dict vs. ``args``/``kwargs`` holding ``__keras_tensor__`` objects with a
``keras_history``); :func:`build_graph` reads both, so rules never see the difference.
Nested models (a Functional base inside a Sequential, as in transfer learning) are
expanded: their layers get paths like ``base/bn_1`` and are wired to the layers around
the nested call, so "the layer before this BN" looks through model boundaries.
Wrapper layers (``TimeDistributed``, ``Bidirectional``, an ``RNN`` and its cell, any
Keras ``Wrapper``: every layer whose config holds another layer's config) are expanded
the same way: ``TimeDistributed(BatchNormalization())`` is audited as
``time_distributed/batch_normalization``, fed by what feeds the wrapper, and the
wrapper's value is its inner layers' value.

Nothing here imports Keras: the config is plain JSON.
"""

from __future__ import annotations

import functools
import re
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

MODEL_CLASSES = frozenset({"Sequential", "Functional", "Model"})
BATCHNORM_CLASSES = frozenset({"BatchNormalization", "SyncBatchNormalization"})

#: Layers that neither mix channels nor change statistics in a way that matters to a
#: BN rule, so "directly before/after" looks through them.
IDENTITY_CLASSES = frozenset({"InputLayer", "Identity", "ActivityRegularization", "Masking"})
#: Layers that move values around without changing them; looked through only by rules
#: that do not depend on which axis is the channel axis.
RESHAPE_CLASSES = frozenset({"Reshape", "Flatten", "Permute"})

LINEAR_ACTIVATIONS = frozenset({None, "linear", "identity"})

#: Config keys that hold a wrapped layer; Keras 3's ``saving_lib`` files each under the
#: attribute of that name (but ``Bidirectional`` keeps its forward copy in ``layer`` and
#: saves it as ``forward_layer``). ``cells`` (``StackedRNNCells``) holds a list.
WRAPPED_KEYS = ("layer", "backward_layer", "cell", "cells")
#: Wrappers whose output is not simply their inner layer's value.
COMBINING_WRAPPERS = frozenset({"Bidirectional", "RNN", "StackedRNNCells"})


@dataclass
class Layer:
    """One layer of the saved model, wherever it is nested."""

    path: str
    name: str
    class_name: str
    config: dict[str, Any]
    #: Keras 3 writes the module and registered name; Keras 2 leaves both empty.
    module: str = ""
    registered_name: str = ""
    #: Path of the enclosing model ("" for the top level).
    container: str = ""
    #: Where Keras 3's ``saving_lib`` keeps this layer's variables (``layers/.../name``).
    save_path: str = ""
    #: Call keyword arguments per inbound node (``{"training": True}`` when baked in).
    call_kwargs: list[dict[str, Any]] = field(default_factory=list)
    #: Shapes of the tensors this layer is called on, where the config records them.
    input_shapes: list[list[Any]] = field(default_factory=list)
    producers: list[str] = field(default_factory=list)
    consumers: list[str] = field(default_factory=list)
    #: ``trainable`` after applying every enclosing model's flag.
    trainable: bool = True
    #: Paths of the layers this wrapper holds (``TimeDistributed(...)``, ``Bidirectional``).
    wrapped: list[str] = field(default_factory=list)
    #: True for a wrapper whose value is its one inner layer's, per step
    #: (``TimeDistributed``, ``SpectralNormalization``): rules look through it.
    transparent: bool = False
    #: Names a legacy ``.h5`` may file this layer's weights under: its own, and for a
    #: layer inside a one-layer wrapper, tf-keras's ``<wrapper>/gamma:0``.
    weight_scopes: tuple[str, ...] = ()
    #: Name of the top-level layer this one is, or sits in (legacy ``.h5`` groups are
    #: named after it; a name may itself hold "/", as in DenseNet's ``conv1/bn``).
    top_level: str = ""
    #: What the saved ``axis`` is off by: tf-keras saves a BN with ``virtual_batch_size``
    #: with its axis shifted by the virtual batch dimension (set by the ``.h5`` loader).
    saved_axis_offset: int = 0

    @property
    def axis(self) -> Any:
        """The ``axis`` the layer normalizes over, as the config gives it (int or list),
        corrected for :attr:`saved_axis_offset`."""
        axis = self.config.get("axis", -1)
        if not self.saved_axis_offset:
            return axis
        shift = lambda a: a - self.saved_axis_offset if isinstance(a, int) and a > 0 else a  # noqa: E731
        return [shift(a) for a in axis] if isinstance(axis, list) else shift(axis)
    #: Where a loader found the layer fixed in training mode outside its call kwargs
    #: (an ONNX node's ``training_mode=1``, a serving function's FusedBatchNorm
    #: ``is_training=true``); "" when nothing says so.
    baked_training: str = ""

    @property
    def activation(self) -> str | None:
        """The fused or layer activation as a lower-case name, ``None`` when linear."""
        if self.class_name == "Activation" or "activation" in self.config:
            act = self.config.get("activation")
            if isinstance(act, dict):  # serialized activation object or function
                inner = act.get("config")
                act = (inner.get("name") if isinstance(inner, dict) else inner if isinstance(inner, str) else None) or act.get("class_name")
            act = str(act).lower() if act is not None else None
            return None if act in LINEAR_ACTIVATIONS else act
        named = {
            "ReLU": "relu",
            "LeakyReLU": "leaky_relu",
            "PReLU": "prelu",
            "ELU": "elu",
            "Softmax": "softmax",
            "ThresholdedReLU": "thresholded_relu",
        }
        return named.get(self.class_name)

    def number(self, key: str, default: float) -> float:
        """A numeric config value (``epsilon``, ``momentum``), ``default`` when absent.

        Raises:
            ConfigError: the config holds something else there (a string, a list...).
        """
        value = self.config.get(key, default)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"layer {self.path!r}: {key} is {str(value)[:40]!r}, not a number")
        return float(value)

    @property
    def input_rank(self) -> int | None:
        for shape in self.input_shapes:
            if isinstance(shape, list):
                return len(shape)
        shape = (self.config.get("build_config") or {}).get("input_shape")
        return len(shape) if isinstance(shape, list) else None


@dataclass
class NestedModel:
    """A model or wrapper used as a layer; its call kwargs apply to every layer inside it."""

    path: str
    class_name: str
    call_kwargs: list[dict[str, Any]]
    trainable: bool


@dataclass
class ModelGraph:
    """The flattened architecture plus what the file says about itself."""

    name: str
    class_name: str
    layers: dict[str, Layer] = field(default_factory=dict)
    nested: dict[str, NestedModel] = field(default_factory=dict)
    inputs: list[str] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)
    #: "keras" (Keras 3 zip), "h5-keras3", "h5-keras2", "onnx" or "savedmodel".
    format: str = ""
    keras_version: str = ""
    #: The tool that wrote a file that is not Keras's own (``tf2onnx 1.17.0``), where it says.
    producer: str = ""
    #: A lazy view of the saved arrays (``bn_arrays(layer)``, see ``bnaudit.loaders.arrays``); None if absent.
    weights: Any = None
    #: What reading the file taught that every report should say (copied to the notes).
    notes: list[str] = field(default_factory=list)
    #: The model config as the file holds it (BN501 walks every object in it).
    config: dict[str, Any] = field(default_factory=dict, repr=False)
    #: Other configs that loading the file rebuilds objects from, by layer path (or object
    #: path where no layer has it): a tf-keras SavedModel's ``keras_metadata.pb`` holds one
    #: per saved object, and tf-keras revives each layer from its own, not from ``config``.
    #: BN501 and the runtime's load guard walk them with ``config``
    #: (:func:`bnaudit.code_objects.unsafe_objects_of`).
    object_configs: dict[str, dict[str, Any]] = field(default_factory=dict, repr=False)
    #: The keys of ``object_configs`` that are metrics (tf-keras ``_tf_keras_metric``), not layers.
    metric_configs: frozenset[str] = frozenset()
    #: Whole-graph walks computed once (see :meth:`reaches_output`).
    _memo: dict[Any, Any] = field(default_factory=dict, repr=False)
    #: Why ``weights`` is None although the file holds weights (a reader is not installed).
    weights_missing: str = ""
    #: What re-runs the model for the data and inference rules, as its loader declares:
    #: ``"keras"`` (``bnaudit.runtime`` loads it with Keras), ``"onnxruntime"`` (ONNX
    #: Runtime: BN301, BN303 and BN401/402/404; not BN302 or BN403), ``"serving"`` (a
    #: SavedModel's serving signature, with TensorFlow: BN401/402/404), or ``""``
    #: (nothing: those rules are skipped with the reason).
    runner: str = "keras"
    #: Rules whose subject this format does not record, with why (an ONNX file keeps no
    #: ``trainable`` flag, so BN108 cannot judge it): skipped with that reason, never
    #: shown as passed. Set by the loader.
    not_recorded: dict[str, str] = field(default_factory=dict)
    #: False where the format keeps no ``trainable`` flag (ONNX, a SavedModel's serving
    #: graph): every layer then reads as trainable, which says nothing (``bnaudit diff``
    #: shows the flag as unknown). Set by the loader.
    records_trainable: bool = True

    # -- queries -----------------------------------------------------------------
    def __iter__(self) -> Iterator[Layer]:
        return iter(self.layers.values())

    def __getitem__(self, path: str) -> Layer:
        return self.layers[path]

    def of_class(self, *class_names: str | frozenset[str]) -> list[Layer]:
        wanted: set[str] = set()
        for item in class_names:
            wanted |= {item} if isinstance(item, str) else set(item)
        return [layer for layer in self if layer.class_name in wanted]

    def batchnorms(self) -> list[Layer]:
        return self.of_class(BATCHNORM_CLASSES)

    def producers(self, layer: Layer) -> list[Layer]:
        return [self.layers[p] for p in layer.producers]

    def consumers(self, layer: Layer) -> list[Layer]:
        return [self.layers[c] for c in layer.consumers]

    def producer_through(
        self, layer: Layer, through: Callable[[Layer], bool]
    ) -> tuple[Layer | None, list[Layer]]:
        """The first producer of ``layer`` that ``through`` does not look past.

        Walks back along single-input layers. Returns the producer (None when the
        chain starts at a model input or reaches a layer with several inputs) and the
        layers looked through on the way.
        """
        passed: list[Layer] = []
        current = layer
        while True:
            if len(current.producers) != 1:
                return None, passed
            producer = self.layers[current.producers[0]]
            if not through(producer):
                return producer, passed
            passed.append(producer)
            current = producer

    def consumers_through(self, layer: Layer, through: Callable[[Layer], bool]) -> list[Layer]:
        """The first layers after ``layer`` that ``through`` does not look past (all branches)."""
        found: list[Layer] = []
        stack = deque(self.consumers(layer))
        seen: set[str] = set()
        while stack:
            consumer = stack.popleft()
            if consumer.path in seen:
                continue
            seen.add(consumer.path)
            if through(consumer):
                stack.extend(self.consumers(consumer))
            else:
                found.append(consumer)
        return found

    def reaches_output(self, layer: Layer, through: Callable[[Layer], bool]) -> bool:
        """True when ``layer``'s value leaves the model unchanged but for ``through`` layers.

        The layers from which an output is reached through ``through`` layers only are
        found once per ``through`` (one walk back from the outputs), so asking for every
        BN stays linear even when thousands of them feed one long shared chain.
        """
        if layer.path in self.outputs:
            return True
        reaching = self._memo.get(("reaches_output", through))
        if reaching is None:
            reaching = self._memo[("reaches_output", through)] = self._reaching_outputs(through)
        return any(consumer.path in reaching for consumer in self.consumers(layer))

    def _reaching_outputs(self, through: Callable[[Layer], bool]) -> set[str]:
        """``through`` layers that are an output or feed one of these: a walk back from the outputs."""
        reaching = {path for path in self.outputs if path in self.layers and through(self.layers[path])}
        pending = list(reaching)
        while pending:
            for producer in self.producers(self.layers[pending.pop()]):
                if producer.path not in reaching and through(producer):
                    reaching.add(producer.path)
                    pending.append(producer.path)
        return reaching

    def enclosing_models(self, layer: Layer) -> list[NestedModel]:
        """The nested models around ``layer``, innermost first."""
        found = []
        container = layer.container
        while container:
            model = self.nested.get(container)  # an ONNX If/Loop node sits between its bodies
            if model is not None:
                found.append(model)
            container = container.rpartition("/")[0]
        return found


def is_identity(layer: Layer) -> bool:
    """Looked through by every rule: changes neither values nor axes (a one-layer wrapper
    adds nothing to its inner layer, which the walk then reaches and judges)."""
    if layer.class_name in IDENTITY_CLASSES or layer.transparent:
        return True
    return layer.class_name == "Activation" and layer.activation is None


def is_value_preserving(layer: Layer) -> bool:
    """Looked through by rules that do not care about the channel axis."""
    return is_identity(layer) or layer.class_name in RESHAPE_CLASSES


# -- building ------------------------------------------------------------------------

_SNAKE_1 = re.compile(r"(.)([A-Z][a-z]+)")
_SNAKE_2 = re.compile(r"([a-z])([A-Z])")


def dtype_policy(layer: Layer) -> str:
    """The layer's dtype policy name ("float32", "mixed_float16"), "" where the config has none."""
    dtype = layer.config.get("dtype")
    if isinstance(dtype, dict):
        inner = dtype.get("config")
        return str(inner.get("name", "")) if isinstance(inner, dict) else ""
    return str(dtype or "")


@functools.lru_cache(maxsize=256)
def snake_case(name: str) -> str:
    """Keras's ``naming.to_snake_case``: the key ``saving_lib`` files a layer under.

    Cached: a model repeats a few class names hundreds of times, and three regular
    expressions per layer were a tenth of building a large model's graph."""
    name = re.sub(r"\W+", "", name)
    name = _SNAKE_1.sub(r"\1_\2", name)
    return _SNAKE_2.sub(r"\1_\2", name).lower()


class ConfigError(ValueError):
    """The model config is not a Keras model config bnaudit can read."""


def build_graph(model_config: dict[str, Any]) -> ModelGraph:
    """Flatten a Keras 2 or Keras 3 model config (the JSON of ``model.to_json()``)."""
    if not isinstance(model_config, dict) or "class_name" not in model_config:
        raise ConfigError("the model config has no 'class_name'")
    class_name = model_config["class_name"]
    if class_name not in MODEL_CLASSES:
        raise ConfigError(
            f"the saved object is a {class_name!r}, not a Sequential or Functional model "
            "(subclassed models keep no architecture in the file)"
        )
    config = model_config.get("config") or {}
    graph = ModelGraph(name=str(config.get("name", "")), class_name=class_name, config=model_config)
    builder = _Builder(graph)
    inputs, outputs = builder.expand_model(model_config, prefix="", save_path="", trainable=True)
    graph.inputs, graph.outputs = inputs, outputs
    for layer in graph:
        for producer in layer.producers:
            graph.layers[producer].consumers.append(layer.path)
    return graph


class _Builder:
    def __init__(self, graph: ModelGraph) -> None:
        self.graph = graph
        #: The top-level layer being expanded (depth first), for ``Layer.top_level``.
        self.top_level = ""

    def expand_model(
        self, entry: dict[str, Any], prefix: str, save_path: str, trainable: bool
    ) -> tuple[list[str], list[str]]:
        """Add a model's layers; return the paths of its input and output leaves."""
        config = entry.get("config") or {}
        layers = config.get("layers")
        if not isinstance(layers, list):
            raise ConfigError(f"model {prefix or config.get('name')!r} has no layer list")
        trainable = trainable and bool(config.get("trainable", True))
        if entry["class_name"] == "Sequential":
            return self._expand_sequential(layers, prefix, save_path, trainable)
        return self._expand_functional(config, layers, prefix, save_path, trainable)

    # Each container numbers its layers per class, as Keras's saving_lib does.
    def _save_key(self, counters: dict[str, int], class_name: str, save_path: str, folder: str = "layers") -> str:
        base = snake_case(class_name)
        count = counters.get(base, 0)
        counters[base] = count + 1
        key = base if count == 0 else f"{base}_{count}"
        return f"{save_path}{folder}/{key}"

    def _expand_sequential(self, layers, prefix, save_path, trainable):
        counters: dict[str, int] = {}
        inputs: list[str] = []
        previous: list[str] = []
        for index, entry in enumerate(layers):
            _check_entry(entry, prefix)
            if entry["class_name"] == "InputLayer" and index == 0:
                # Sequential keeps its InputLayer out of ``model.layers``: no save key.
                path = self._add_layer(entry, prefix, "", [], [], trainable)
                inputs, previous = [path], [path]
                continue
            key = self._save_key(counters, entry["class_name"], save_path)
            node_inputs = [(p, None) for p in previous]
            if entry["class_name"] in MODEL_CLASSES:
                first, previous = self._add_nested(entry, prefix, key, [node_inputs], [{}], trainable)
            else:
                path = self._add_layer(entry, prefix, key, [node_inputs], [{}], trainable)
                first, previous = [path], [path]
            if not inputs:
                inputs = first
        return inputs, previous

    def _expand_functional(self, config, layers, prefix, save_path, trainable):
        counters: dict[str, int] = {}
        outputs_of: dict[str, list[str]] = {}  # local layer name -> leaf paths of its outputs
        for entry in layers:
            _check_entry(entry, prefix)
            key = self._save_key(counters, entry["class_name"], save_path)
            nodes = [_parse_node(node) for node in entry.get("inbound_nodes") or []]
            resolved = [
                [(self._resolve(outputs_of, ref, prefix), shape) for ref, shape in refs]
                for refs, _ in nodes
            ]
            kwargs = [kw for _, kw in nodes]
            name = _entry_name(entry)
            if entry["class_name"] in MODEL_CLASSES:
                _, outputs_of[name] = self._add_nested(entry, prefix, key, resolved, kwargs, trainable)
            else:
                outputs_of[name] = [self._add_layer(entry, prefix, key, resolved, kwargs, trainable)]
        inputs = [self._resolve(outputs_of, ref, prefix) for ref in _refs(config.get("input_layers"))]
        outputs = [self._resolve(outputs_of, ref, prefix) for ref in _refs(config.get("output_layers"))]
        return inputs, outputs

    def _resolve(self, outputs_of, ref, prefix) -> str:
        name, _node, tensor = ref
        if name not in outputs_of:
            raise ConfigError(f"layer {prefix}{name!r} is used before it is defined")
        leaves = outputs_of[name]
        return leaves[tensor] if 0 <= tensor < len(leaves) else leaves[0]

    def _add_layer(self, entry, prefix, save_key, nodes, kwargs, trainable) -> str:
        config = entry.get("config") or {}
        name = _entry_name(entry)
        path = prefix + name
        if not prefix:
            self.top_level = name
        if path in self.graph.layers:
            raise ConfigError(f"two layers share the path {path!r}")
        producers: dict[str, None] = {}  # ordered and deduplicated in linear time (an Add of thousands)
        shapes: list[list[Any]] = []
        for refs in nodes:
            for producer, shape in refs:
                producers[producer] = None
                if shape is not None:
                    shapes.append(shape)
        layer = self.graph.layers[path] = Layer(
            path=path,
            name=name,
            class_name=str(entry["class_name"]),
            config=config,
            module=str(entry.get("module") or ""),
            registered_name=str(entry.get("registered_name") or ""),
            container=prefix.rstrip("/"),
            save_path=save_key,
            call_kwargs=[k for k in kwargs],
            input_shapes=shapes,
            producers=list(producers),
            trainable=trainable and bool(config.get("trainable", True)),
            weight_scopes=(name,),
            top_level=self.top_level,
        )
        inner, unreadable = _wrapped_entries(entry)
        if unreadable:
            self.graph.notes.append(
                f"{layer.class_name} {path!r}: the layer it wraps ({', '.join(unreadable)}) cannot be read from the "
                "config; rules do not see inside it"
            )
        if inner:
            self._expand_wrapper(layer, inner, kwargs)
        return path

    def _expand_wrapper(self, wrapper: Layer, inner: list[tuple[str, dict[str, Any]]], kwargs) -> None:
        """Add the layers a wrapper holds below its path, fed by what feeds the wrapper;
        the wrapper then takes its value from them."""
        self.graph.nested[wrapper.path] = NestedModel(wrapper.path, wrapper.class_name, list(kwargs), wrapper.trainable)
        transparent = len(inner) == 1 and wrapper.class_name not in COMBINING_WRAPPERS
        prefix = wrapper.path + "/"
        feeds = [(p, None) for p in wrapper.producers]
        counters: dict[str, int] = {}
        outputs: list[str] = []
        for attribute, entry in inner:
            key = f"{wrapper.save_path}/{attribute}"
            if attribute == "cells":  # a list: numbered per class, like a model's layers
                key = self._save_key(counters, entry["class_name"], wrapper.save_path + "/", folder="cells")
            wrapper.wrapped.append(prefix + _entry_name(entry))
            if entry["class_name"] in MODEL_CLASSES:
                _, leaves = self._add_nested(entry, prefix, key, [feeds], [{}], wrapper.trainable)
            else:
                path = self._add_layer(entry, prefix, key, [feeds], [{}], wrapper.trainable)
                if transparent:
                    self.graph.layers[path].weight_scopes += (wrapper.name,)
                leaves = [path]
            outputs.extend(leaves)
        wrapper.producers = outputs
        wrapper.transparent = transparent

    def _add_nested(self, entry, prefix, save_key, nodes, kwargs, trainable):
        name = _entry_name(entry)
        path = prefix + name
        if not prefix:
            self.top_level = name
        own_trainable = trainable and bool((entry.get("config") or {}).get("trainable", True))
        self.graph.nested[path] = NestedModel(path, entry["class_name"], list(kwargs), own_trainable)
        inputs, outputs = self.expand_model(entry, path + "/", save_key + "/", trainable)
        # The nested model's inputs are fed by whatever its call was fed, in order.
        for refs in nodes:
            for position, (producer, _shape) in enumerate(refs):
                if position < len(inputs):
                    leaf = self.graph.layers[inputs[position]]
                    if producer not in leaf.producers:
                        leaf.producers.append(producer)
        return inputs, outputs


def _wrapped_entries(entry: dict[str, Any]) -> tuple[list[tuple[str, dict[str, Any]]], list[str]]:
    """The layers a wrapper's config holds, as (saving_lib attribute, layer entry), and
    the config keys that should hold one but hold something else."""
    config = entry.get("config") or {}
    found, unreadable = [], []
    for key in WRAPPED_KEYS:
        value = config.get(key)
        if value is None:
            continue
        attribute = "forward_layer" if key == "layer" and entry.get("class_name") == "Bidirectional" else key
        for item in value if isinstance(value, list) else [value]:
            if isinstance(item, dict) and isinstance(item.get("class_name"), str) and isinstance(item.get("config"), dict):
                found.append((attribute, item))
            elif key not in unreadable:
                unreadable.append(key)
    return found, unreadable


def _check_entry(entry: Any, prefix: str) -> None:
    if not isinstance(entry, dict) or "class_name" not in entry:
        raise ConfigError(f"a layer entry in {prefix or 'the model'!r} has no 'class_name'")


def _entry_name(entry: dict[str, Any]) -> str:
    name = entry.get("name") or (entry.get("config") or {}).get("name")
    if not isinstance(name, str) or not name:
        raise ConfigError(f"a {entry.get('class_name')} layer has no name")
    return name


def _refs(value: Any) -> list[tuple[str, int, int]]:
    """``input_layers``/``output_layers``: one ``[name, node, tensor]`` or a list of them."""
    if not value:
        return []
    if isinstance(value, list) and value and isinstance(value[0], str):
        value = [value]
    return [(str(v[0]), int(v[1]), int(v[2])) for v in value]


def _parse_node(node: Any) -> tuple[list[tuple[tuple[str, int, int], list | None]], dict]:
    """One inbound node -> ([(producer ref, input shape)], call kwargs without tensors)."""
    if isinstance(node, dict):  # Keras 3: {"args": [...], "kwargs": {...}}
        refs: list = []
        _collect_keras3_tensors(node.get("args", []), refs)
        kwargs = node.get("kwargs") or {}
        _collect_keras3_tensors(kwargs, refs)
        plain = {k: v for k, v in kwargs.items() if not _holds_tensor(v)}
        return refs, plain
    if isinstance(node, list):  # Keras 2: [[name, node_index, tensor_index, kwargs], ...]
        refs = []
        kwargs: dict[str, Any] = {}
        for item in node:
            if isinstance(item, list) and len(item) >= 3 and isinstance(item[0], str):
                refs.append(((item[0], int(item[1]), int(item[2])), None))
                if len(item) > 3 and isinstance(item[3], dict):
                    kwargs.update(item[3])
        return refs, kwargs
    raise ConfigError(f"unreadable inbound node {str(node)[:80]!r}")


def _collect_keras3_tensors(value: Any, out: list) -> None:
    if isinstance(value, dict):
        if value.get("class_name") == "__keras_tensor__":
            cfg = value.get("config") or {}
            history = cfg.get("keras_history")
            if isinstance(history, list) and len(history) >= 3:
                out.append(((str(history[0]), int(history[1]), int(history[2])), cfg.get("shape")))
            return
        for item in value.values():
            _collect_keras3_tensors(item, out)
    elif isinstance(value, list):
        for item in value:
            _collect_keras3_tensors(item, out)


def _holds_tensor(value: Any) -> bool:
    found: list = []
    _collect_keras3_tensors(value, found)
    return bool(found)
