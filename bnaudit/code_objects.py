"""Serialized objects in a model config whose loading would run code from the file.

Shared by BN501 (``rules/safety.py``) and the runtime's guard (``runtime/__init__.py``),
so the runtime refuses to load exactly what BN501 flags. Every object in the config is
looked at, not only the flattened layers: a Lambda inside a TimeDistributed, an
activation or initializer naming a function of module ``os``, a ``__lambda__``
anywhere, a nested or top-level model entry naming a foreign module.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any, Iterator

from .keras_builtins import CODE_CARRYING_CLASSES, KERAS_LAYER_CLASSES, ONNX_STANDARD_DOMAINS

if TYPE_CHECKING:
    from .graph import ModelGraph

#: A module Keras itself serializes classes from: ``keras`` or ``keras.<...>``, and
#: tf-keras's ``tf_keras.<...>`` (a ``startswith("keras")`` test would pass ``keras_payload``).
_KERAS_MODULE = re.compile(r"(tf_)?keras(\.[A-Za-z_][A-Za-z0-9_]*)*")
#: Modules whose functions Keras serializes by name in a model config (activations,
#: losses, metrics, ops). Any other function, ``keras.config.enable_unsafe_deserialization``
#: included (CVE-2025-9906), is flagged.
_KERAS_FUNCTION_MODULE = re.compile(r"keras(\.src)?\.(activations|losses|metrics|ops|backend|random)(\.[A-Za-z_][A-Za-z0-9_]*)*")
#: Config keys that hold a layer (wrappers, RNNs) or a list of layers (models, stacked cells).
_LAYER_KEYS = frozenset({"layer", "forward_layer", "backward_layer", "cell"})
#: tf-keras writes a ``TFOpLambda`` / ``SlicingOpLambda`` layer for each TensorFlow op
#: called on a Keras tensor in a functional model, and loads it by looking its
#: ``function`` up among TensorFlow's public API names: any of them, ``io.write_file`` or
#: ``py_function`` included. Names of tensor arithmetic (operators, ``tf.math``, ``tf.nn``,
#: ``tf.linalg``, the array ops below) compute on tensors only: such a layer is what
#: ``keras.applications`` (MobileNetV3, ConvNeXt) is saved with, not code.
_TENSOR_OP = re.compile(
    r"(__operators__|math|nn|linalg)\.[A-Za-z_][A-Za-z0-9_]*"
    r"|(reshape|transpose|concat|stack|unstack|expand_dims|squeeze|cast|shape|split|identity|clip_by_value"
    r"|broadcast_to|tile|gather|pad|where|ones_like|zeros_like|reduce_mean|reduce_sum|reduce_max|reduce_min)"
)
_TF_OP_LAYERS = frozenset({"TFOpLambda", "SlicingOpLambda"})
#: Modules tf-keras names for the TensorFlow initializers it serializes (``Constant`` from
#: ``tensorflow.python.ops.init_ops_v2`` in ``keras.applications.EfficientNetV2``):
#: TensorFlow's own classes, looked up by name there.
_TF_INITIALIZER_MODULE = re.compile(r"tensorflow\.python\.ops\.init_ops(_v2)?")
_LAYER_LIST_KEYS = frozenset({"layers", "cells"})
#: An object's own fields, never walked into.
_OWN_KEYS = frozenset({"class_name", "module", "registered_name", "name"})
_CONTAINERS = (dict, list)
#: Serialized objects whose config Keras reads as plain data, never deserializing anything
#: in it (``serialization_lib.deserialize_keras_object`` builds a ``KerasTensor`` from a
#: ``__keras_tensor__``'s shape, dtype and history): the walk yields them, and does not
#: go into them. A Keras 3 config holds one per connection between layers.
_DATA_ONLY = frozenset({"__keras_tensor__"})


def why_unsafe(class_name: str, module: str, registered_name: str, is_layer: bool = True) -> str:
    """Why loading this serialized object would run code from outside Keras ("" when it would not).

    ``is_layer``: the object sits where Keras expects a layer, so a class outside its
    built-in layers is custom code. Operators read from ONNX carry
    ``module="onnx:<domain>"``: one outside the standard domains runs only with a
    custom-operator library (native code).
    """
    if module.startswith("onnx:"):
        domain = module[len("onnx:"):]
        if domain in ONNX_STANDARD_DOMAINS:
            return ""
        return f"operator {class_name!r} of domain {domain!r} runs only with a custom-operator library (native code)"
    if class_name in CODE_CARRYING_CLASSES:
        return f"{class_name} objects carry code, a module or an external graph"
    if module and not _KERAS_MODULE.fullmatch(module):
        return f"{class_name!r} comes from module {module!r}, not Keras"
    if is_layer and class_name not in KERAS_LAYER_CLASSES:
        return f"{class_name!r} is not a Keras built-in layer"
    if is_layer and registered_name and registered_name != class_name:
        return f"{class_name!r} is registered as custom object {registered_name!r}"
    return ""


def _why_function(entry: dict[str, Any]) -> str:
    name, module = entry.get("config"), str(entry.get("module") or "")
    if not _KERAS_FUNCTION_MODULE.fullmatch(module):
        return f"it calls function {name!r} of module {module!r}, not a Keras activation, loss, metric or op"
    return ""


def serialized_objects(config: Any, root_is_layer: bool = True) -> Iterator[tuple[str, dict[str, Any], bool]]:
    """Every serialized object (a dict with a string ``class_name``) in a config:
    ``(where, object, is_layer)``; ``root_is_layer=False`` for a config whose outermost
    object is not a layer (a tf-keras SavedModel's metric).

    ``where`` is the layer path for a layer (``base/bn_1``; a wrapped layer below its
    wrapper, ``td/inner``) and ``owner/key`` for anything else (``fc/kernel_initializer``).
    Iterative, so a deeply nested config cannot exhaust Python's recursion limit.
    """
    stack: list[tuple[Any, str, str, bool]] = [(config, "", "", root_is_layer)]
    root = True
    while stack:
        value, owner, trail, is_layer = stack.pop()
        if isinstance(value, list):
            # Only containers can hold an object: numbers and strings are not even stacked
            # (most of a config's values; the walk of a large model's config is then a third).
            stack.extend((item, owner, trail, is_layer) for item in reversed(value) if isinstance(item, _CONTAINERS))
            continue
        if not isinstance(value, dict):
            continue
        here = owner
        class_name = value.get("class_name")
        if isinstance(class_name, str):
            if is_layer:
                inner = value.get("config")
                name = "" if root else value.get("name") or (inner.get("name") if isinstance(inner, dict) else None)
                here = "/".join(p for p in (owner, str(name or "")) if p)
                yield here, value, True
            else:
                yield "/".join(p for p in (owner, trail) if p), value, False
            trail = ""
        root = False
        if isinstance(class_name, str) and class_name in _DATA_ONLY:
            continue
        children = []
        for key, item in value.items():
            if not isinstance(item, _CONTAINERS) or key in _OWN_KEYS:
                continue
            if key == "config" and isinstance(item, dict) and isinstance(class_name, str):
                for inner_key, inner in item.items():
                    if isinstance(inner, _CONTAINERS):
                        layer = inner_key in _LAYER_KEYS or inner_key in _LAYER_LIST_KEYS
                        children.append((inner, here, "" if layer else _join(trail, inner_key), layer))
                continue
            children.append((item, here, _join(trail, str(key)), False))
        stack.extend(reversed(children))


def _join(trail: str, key: str) -> str:
    return f"{trail}.{key}" if trail else key


def unsafe_objects(config: Any, root_is_layer: bool = True) -> list[tuple[str, dict[str, Any], str]]:
    """``(where, object, why)`` for each object of ``config`` whose loading would run code
    (outermost only: a Lambda's serialized function is part of the Lambda's finding)."""
    found = []
    for where, entry, is_layer in serialized_objects(config, root_is_layer):
        class_name = entry["class_name"]
        if class_name == "function":
            why = _why_function(entry)
        elif class_name.startswith("__") and class_name != "__lambda__":
            why = ""  # Keras's own markers: __keras_tensor__, __tuple__, __numpy__, ...
        elif class_name in _TF_OP_LAYERS and _TENSOR_OP.fullmatch(str((entry.get("config") or {}).get("function") or "")):
            why = ""
        elif not is_layer and _TF_INITIALIZER_MODULE.fullmatch(str(entry.get("module") or "")):
            why = ""
        else:
            why = why_unsafe(class_name, str(entry.get("module") or ""), str(entry.get("registered_name") or ""), is_layer)
        if why and not any(where.startswith(f"{outer}/") for outer, _, _ in found):  # inside a flagged object: said
            found.append((where, entry, why))
    return [(where or "<model>", entry, why) for where, entry, why in found]


def unsafe_objects_of(graph: "ModelGraph") -> list[tuple[str, dict[str, Any], str]]:
    """:func:`unsafe_objects` of the model config and of every config loading rebuilds
    objects from (``graph.object_configs``), each object once: an object of an object
    config is named by that config's layer path (``touch``, ``inner/touch``), so one the
    model config also holds (or holds twice: a SavedModel's root keeps ``config`` and
    ``model_config``) is listed once. A metric's config (``graph.metric_configs``) is
    walked as what it is, not as a layer: tf-keras revives a metric by its class (a
    built-in one) or from the SavedModel's own functions, so its class alone is no
    finding; code objects inside it still are."""
    found: dict[tuple[str, Any], tuple[str, dict[str, Any], str]] = {}
    configs = [("", graph.config, True), *((owner, config, owner not in graph.metric_configs) for owner, config in graph.object_configs.items())]
    for owner, config, root_is_layer in configs:
        for where, entry, why in unsafe_objects(config, root_is_layer):
            if owner:
                where = owner if where == "<model>" else f"{owner}/{where}"
            if not any(where.startswith(f"{outer}/") for outer, _ in found):  # inside a flagged object: said
                found.setdefault((where, entry.get("class_name")), (where, entry, why))
    return list(found.values())
