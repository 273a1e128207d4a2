"""Safety rule BN501: serialized objects whose loading would run code from the file.

What counts, and the walk over every object of the config, live in
:mod:`bnaudit.code_objects`, shared with the runtime's guard.
"""

from __future__ import annotations

from ..code_objects import unsafe_objects_of, why_unsafe
from ..findings import Severity
from ..hookspecs import hookimpl
from ..rule import rule


@rule("BN501", "unsafe-layer", Severity.WARNING)
def unsafe_layer(ctx):
    """The config holds an object whose loading runs code: a Lambda, a TFSMLayer, a class or function from outside Keras.

    ## What it does
    Walks every serialized object in the saved config (layers, nested models, layers
    inside wrappers, activations, initializers, regularizers...) and lists each Lambda,
    ``__lambda__``, TFSMLayer, Torch/JAX/Flax wrapper, TFOpLambda, custom (non-Keras)
    class, object naming a module outside Keras, and function outside Keras's
    activations, losses, metrics and ops.

    ## Why is this bad?
    Loading such a model with Keras can import and execute code named by the file
    (CVE-2024-3660, CVE-2025-1550, CVE-2025-9906, CVE-2026-1462); Keras's own safe mode
    has missed some of these in past versions. bnaudit's static checks never execute
    it, and its runtime checks refuse to load it unless `--unsafe-load` is given; rules
    also cannot look inside custom layers, so BN placement around them is unchecked.

    ## Example
    ```python
    x = layers.Lambda(lambda t: t * 2)(x)
    ```

    ## Use instead
    ```python
    x = layers.Rescaling(2.0)(x)  # or a registered, reviewed custom layer
    ```
    """
    for layer in ctx.graph:  # a graph read from ONNX has no Keras config: its operators
        if layer.module.startswith("onnx:"):
            why = why_unsafe(layer.class_name, layer.module, "")
            if why:
                yield ctx.finding(
                    layer,
                    f"operator {layer.path!r}: {why}; running the model can execute code",
                    details={"object": layer.path, "class_name": layer.class_name, "module": layer.module, "registered_name": ""},
                    fix="replace it with standard ONNX operators, or run only models from sources you trust",
                )
    for where, entry, why in unsafe_objects_of(ctx.graph):
        layer = _nearest_layer(ctx.graph, where)
        yield ctx.finding(
            layer,
            f"{'layer ' if where == layer else ''}{where!r}: {why}; loading the model can execute code",
            details={"object": where, "class_name": entry.get("class_name"), "module": entry.get("module"), "registered_name": entry.get("registered_name")},
            fix="replace it with built-in layers, or load only models from sources you trust",
        )


def _nearest_layer(graph, where: str):
    """The path of the deepest layer or nested model that holds ``where`` ("" for the model itself)."""
    parts = where.split("/")
    for end in range(len(parts), 0, -1):
        if "/".join(parts[:end]) in graph.layers or "/".join(parts[:end]) in graph.nested:
            return "/".join(parts[:end])
    return ""


@hookimpl
def bnaudit_register_rules():
    return [unsafe_layer]
