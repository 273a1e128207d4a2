"""Safety rule BN501: layers whose loading would run code from the file."""

from __future__ import annotations

from ..findings import Severity
from ..hookspecs import hookimpl
from ..keras_builtins import CODE_CARRYING_CLASSES, KERAS_LAYER_CLASSES

#: Operator domains of the ONNX standard and of ONNX Runtime's built-in contrib ops.
ONNX_STANDARD_DOMAINS = frozenset({"ai.onnx", "ai.onnx.ml", "ai.onnx.preview.training", "com.microsoft"})
from ..rule import rule


def why_unsafe(class_name: str, module: str, registered_name: str) -> str:
    """Why loading this layer would run code from outside Keras ("" when it would not).

    Shared with the runtime, which refuses to load exactly what this rule flags.
    Layers read from ONNX carry ``module="onnx:<domain>"``: an operator outside the
    standard domains runs only with a custom-operator library (native code)."""
    if module.startswith("onnx:"):
        domain = module[len("onnx:"):]
        if domain in ONNX_STANDARD_DOMAINS:
            return ""
        return f"operator {class_name!r} of domain {domain!r} runs only with a custom-operator library (native code)"
    if class_name in CODE_CARRYING_CLASSES:
        return f"{class_name} layers carry code or an external graph"
    if class_name not in KERAS_LAYER_CLASSES:
        return f"{class_name!r} is not a Keras built-in layer"
    if module and not module.startswith("keras"):
        return f"{class_name!r} comes from module {module!r}, not Keras"
    if registered_name and registered_name != class_name:
        return f"{class_name!r} is registered as custom object {registered_name!r}"
    return ""


@rule("BN501", "unsafe-layer", Severity.WARNING)
def unsafe_layer(ctx):
    """The model holds a Lambda layer, a TFSMLayer or a class from outside Keras.

    ## What it does
    Lists every Lambda, TFSMLayer and custom (non-Keras) class in the saved config,
    nested models included.

    ## Why is this bad?
    Loading such a model with Keras can import and execute code named by the file
    (CVE-2024-3660, CVE-2025-1550, CVE-2026-1462). bnaudit's static checks never execute
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
    for layer in ctx.graph:
        why = why_unsafe(layer.class_name, layer.module, layer.registered_name)
        if why:
            yield ctx.finding(
                layer,
                f"layer {layer.path!r}: {why}; loading the model can execute code",
                details={"class_name": layer.class_name, "module": layer.module, "registered_name": layer.registered_name},
                fix="replace it with built-in layers, or load only models from sources you trust",
            )


@hookimpl
def bnaudit_register_rules():
    return [unsafe_layer]
