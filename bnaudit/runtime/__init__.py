"""The only part of bnaudit that imports TensorFlow and Keras, and only when a rule asks.

A :class:`Runtime` is created per model on the first call to ``ctx.runtime`` and shared
by every rule of that model: the model is loaded once (``safe_mode=True``), and what one
rule computes (a statistics pass, an inference run) is memoised for the others through
:meth:`Runtime.memo`.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from ..loaders import LoadError
from ..keras_builtins import why_unsafe

if TYPE_CHECKING:
    from ..engine import AuditOptions
    from ..graph import ModelGraph

#: Split the CPU into this many logical devices (tests and machines without GPUs use it
#: to exercise the multi-device code paths for real).
LOGICAL_CPUS_ENV = "BNAUDIT_LOGICAL_CPUS"


def import_tensorflow():
    """Import TensorFlow quietly, once, and apply ``BNAUDIT_LOGICAL_CPUS`` before devices start."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    try:
        import tensorflow as tf
    except ImportError:
        raise LoadError(
            "this check runs the model with TensorFlow, which is not installed",
            'pip install "bnaudit[tensorflow]"',
        ) from None

    wanted = int(os.environ.get(LOGICAL_CPUS_ENV, "0") or 0)
    if wanted > 1:
        cpu = tf.config.list_physical_devices("CPU")[0]
        if len(tf.config.get_logical_device_configuration(cpu) or []) != wanted:
            try:
                tf.config.set_logical_device_configuration(
                    cpu, [tf.config.LogicalDeviceConfiguration() for _ in range(wanted)]
                )
            except RuntimeError:
                pass  # devices already initialised by the host program: keep what it chose
    return tf


def unsafe_layers(graph: "ModelGraph") -> list[str]:
    """Layers whose loading would run code: refused unless ``--unsafe-load``."""
    return [f"{layer.path} ({layer.class_name})" for layer in graph if why_unsafe(layer.class_name, layer.module, layer.registered_name)]


def load_keras_model(path: Path, graph: "ModelGraph", runtime_options: dict[str, Any]):
    """Load the model with Keras in safe mode, refusing code-carrying layers unless allowed."""
    unsafe = bool(runtime_options.get("unsafe_load"))
    risky = unsafe_layers(graph)
    if risky and not unsafe:
        raise LoadError(
            f"refusing to load a model that can execute code: {', '.join(risky[:3])}",
            "only for models you trust: pass --unsafe-load, plus --custom-objects module:dict for custom layers",
        )
    import_tensorflow()
    import keras

    custom_objects = _custom_objects(runtime_options.get("custom_objects"))
    try:
        return keras.saving.load_model(str(path), compile=False, safe_mode=not unsafe, custom_objects=custom_objects)
    except Exception as exc:  # Keras raises many types for files it cannot rebuild
        raise LoadError(
            f"Keras could not load the model ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})",
            "the static checks still ran; fix the model or pass --custom-objects for custom layers",
        ) from None


def _custom_objects(spec: str | None) -> dict[str, Any] | None:
    """``module:NAME`` -> the dict ``NAME`` in ``module`` (imported: trusted code only)."""
    if not spec:
        return None
    module_name, _, attribute = spec.partition(":")
    try:
        value = getattr(importlib.import_module(module_name), attribute or "custom_objects")
    except (ImportError, AttributeError) as exc:
        raise LoadError(f"--custom-objects {spec!r}: {exc}", "give module:dict_name of an importable module") from None
    if not isinstance(value, dict):
        raise LoadError(f"--custom-objects {spec!r} is not a dict")
    return value


class Runtime:
    """One model loaded with Keras, plus memoised results shared by the runtime rules."""

    def __init__(self, path: Path, graph: "ModelGraph", options: "AuditOptions") -> None:
        self.path = path
        self.graph = graph
        self.options = options
        self._model = None
        self._memo: dict[str, Any] = {}

    @property
    def model(self):
        if self._model is None:
            self._model = load_keras_model(self.path, self.graph, self.options.runtime)
        return self._model

    def memo(self, key: str, compute: Callable[[], Any]) -> Any:
        """Compute once per model what several rules need (one pass serves them all)."""
        if key not in self._memo:
            self._memo[key] = compute()
        return self._memo[key]

    def close(self) -> None:
        self._model = None
        self._memo.clear()


def open_runtime(path: Path, graph: "ModelGraph", options: "AuditOptions") -> Runtime:
    return Runtime(path, graph, options)
