"""The only part of bnaudit that imports TensorFlow and Keras, and only when a rule asks.

A :class:`Runtime` is created per model on the first call to ``ctx.runtime`` and shared
by every rule of that model: the model is loaded once (``safe_mode=True``), and what one
rule computes (a statistics pass, an inference run) is memoised for the others through
:meth:`Runtime.memo`, which ``RuleContext.shared`` uses (a failure there is one error
for every rule it stops).

A model runs with the Keras that wrote it: Keras 3 files with Keras 3, Keras-2 ``.h5``
files and tf-keras SavedModel directories with tf-keras (the ``[tensorflow]`` extra
installs it), so that ``model(x)``, ``predict`` and a frozen BN behave as they did for
the model's author. Keras 3 reads only some Keras-2 files (it refuses, for one, the
Keras-2 config of ``SpatialDropout1D``) and no SavedModel directory.
"""

from __future__ import annotations

import importlib
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from ..arguments import import_user_module
from ..loaders import LoadError
from ..code_objects import unsafe_objects_of

if TYPE_CHECKING:
    from ..engine import AuditOptions
    from ..graph import ModelGraph
    from ..options import RuntimeOptions

#: The oldest Keras the runtime loads models with: the first release with the fixes for
#: CVE-2025-1550 (3.9.0), CVE-2025-9906 (3.11.0), CVE-2025-9905 (3.11.3), CVE-2026-0897
#: and CVE-2026-1462 (3.13.2). CVE-2024-3660 was fixed in Keras 2.13; Keras 3 never had it.
MIN_KERAS = (3, 13, 2)

#: Split the CPU into this many logical devices (tests and machines without GPUs use it
#: to exercise the multi-device code paths for real).
LOGICAL_CPUS_ENV = "BNAUDIT_LOGICAL_CPUS"
#: How to get TensorFlow: from PyPI itself, or through the extra of a bnaudit checkout.
INSTALL_TENSORFLOW = 'pip install "tensorflow>=2.16", or pip install ".[tensorflow]" in a clone of bnaudit'


def import_tensorflow():
    """Import TensorFlow quietly, once, and apply ``BNAUDIT_LOGICAL_CPUS`` before devices start."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    try:
        import tensorflow as tf
    except ImportError:
        raise LoadError(
            "this check runs the model with TensorFlow, which is not installed",
            INSTALL_TENSORFLOW,
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
    """Serialized objects whose loading would run code (BN501's list, every config loading
    rebuilds objects from): refused unless ``--unsafe-load``."""
    return [f"{where} ({entry['class_name']})" for where, entry, _why in unsafe_objects_of(graph)]


TF_KERAS_HINT = 'install tf-keras (pip install tf-keras, or "bnaudit[tensorflow]") to run Keras-2 files with the Keras that wrote them'
#: Formats written by Keras 2 (tf.keras, tf-keras), run with tf-keras.
KERAS2_FORMATS = frozenset({"h5-keras2", "savedmodel"})


def keras_for(graph: "ModelGraph"):
    """The Keras that runs this file: tf-keras for a Keras-2 ``.h5`` or a tf-keras
    SavedModel, else Keras 3. Keras 3 is tried on a Keras-2 ``.h5`` without tf-keras.

    Raises:
        LoadError: for a SavedModel without tf-keras (Keras 3 cannot load one).
    """
    import_tensorflow()
    if graph.format in KERAS2_FORMATS:
        try:
            import tf_keras

            return tf_keras
        except ImportError:
            if graph.format == "savedmodel":
                raise LoadError("re-running a tf-keras SavedModel needs tf-keras, which is not installed (Keras 3 cannot load it)", TF_KERAS_HINT) from None
    import keras

    return keras


def keras_of(model):
    """The Keras (``keras`` or ``tf_keras``) a loaded model belongs to."""
    return importlib.import_module(type(model).__module__.split(".")[0])


def load_keras_model(path: Path, graph: "ModelGraph", runtime_options: "RuntimeOptions"):
    """Load the model in safe mode with the Keras that wrote it (:func:`keras_for`),
    refusing code-carrying layers unless allowed."""
    unsafe = runtime_options.unsafe_load
    risky = unsafe_layers(graph)
    if risky and not unsafe:
        raise LoadError(
            f"refusing to load a model that can execute code: {', '.join(risky[:3])}",
            "only for models you trust: pass --unsafe-load, plus --custom-objects module:dict for custom layers",
        )
    keras = keras_for(graph)
    if keras.__name__ == "keras":
        check_keras_version(keras.__version__)
    custom_objects = _custom_objects(runtime_options.custom_objects)
    try:
        return keras.models.load_model(str(path), compile=False, safe_mode=not unsafe, custom_objects=custom_objects)
    except Exception as exc:  # Keras raises many types for files it cannot rebuild
        runner = f"{'tf-keras' if keras.__name__ == 'tf_keras' else 'Keras'} {keras.__version__}"
        if graph.format == "h5-keras2" and keras.__name__ == "keras":
            message, hint = f"{runner} cannot read this Keras {graph.keras_version} file ({_first_line(exc)})", TF_KERAS_HINT
        else:
            message = f"{runner} could not load the model ({_first_line(exc)})"
            custom = bool(unsafe_objects_of(graph))
            hint = "the static checks still ran; " + (
                "pass --custom-objects module:dict for the custom layers" if custom else "the model's layers are all Keras built-ins: load it with Keras to see why it fails"
            )
        raise LoadError(message, hint) from None


#: Keras quotes a whole layer config in some errors; a report keeps only what went wrong.
_QUOTED_CONFIG = re.compile(r"\s*(using|with)?\s*config=\{.*", re.S)


def _first_line(exc: BaseException) -> str:
    text = _QUOTED_CONFIG.sub("", str(exc).strip().splitlines()[0] if str(exc).strip() else "")
    return f"{type(exc).__name__}: {text[:200]}"


def check_keras_version(version: str) -> None:
    """Refuse a Keras older than :data:`MIN_KERAS` (its safe mode has known bypasses).

    Raises:
        LoadError: naming the version found and the one needed.
    """
    found = tuple(int(part) for part in re.findall(r"\d+", version)[:3])
    if found < MIN_KERAS:
        needed = ".".join(map(str, MIN_KERAS))
        raise LoadError(
            f"Keras {version} has known model-loading vulnerabilities (see docs/security.md); bnaudit loads models with Keras >= {needed} only",
            f'pip install "keras>={needed}"',
        )


def _custom_objects(spec: str | None) -> dict[str, Any] | None:
    """``module:NAME`` -> the dict ``NAME`` in ``module`` (imported: trusted code only)."""
    if not spec:
        return None
    module_name, _, attribute = spec.partition(":")
    try:
        value = getattr(import_user_module(module_name), attribute or "custom_objects")
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
