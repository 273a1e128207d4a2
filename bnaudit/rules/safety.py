"""Safety rule BN501: layers whose loading would run code from the file."""

from __future__ import annotations

from ..findings import Severity
from ..hookspecs import hookimpl
from ..keras_builtins import why_unsafe
from ..rule import rule


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
