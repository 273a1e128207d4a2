"""Loader for full-model HDF5 files written by Keras 2 / tf-keras and by Keras 3's legacy writer.

The architecture is the JSON in the root ``model_config`` attribute; the Keras version
that wrote the file is the ``keras_version`` attribute (2.x for tf-keras, 3.x for Keras 3).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from ..graph import ConfigError, ModelGraph, build_graph
from ..hookspecs import hookimpl
from . import HDF5_MAGIC, MAX_CONFIG_BYTES, LoadError, read_head

if TYPE_CHECKING:
    import h5py

H5_SUFFIXES = {".h5", ".hdf5"}


@hookimpl
def bnaudit_load_model(path: Path) -> ModelGraph | None:
    if path.suffix.lower() not in H5_SUFFIXES and read_head(path, 8) != HDF5_MAGIC:
        return None
    import h5py  # here, not at start-up: an .onnx audit never needs it

    from .weights import LegacyH5Weights

    try:
        h5 = h5py.File(path, "r")
    except OSError as exc:
        raise LoadError(
            f"not a readable HDF5 file ({_first_line(exc)})",
            "the file is truncated or not HDF5; save the model again with model.save('x.h5')",
        ) from None
    try:
        graph = _graph_from(h5)
    except BaseException:
        h5.close()
        raise
    graph.weights = LegacyH5Weights(h5)
    return graph


def _graph_from(h5: h5py.File) -> ModelGraph:
    raw = h5.attrs.get("model_config")
    if raw is None:
        raise LoadError(
            "the HDF5 file holds weights only (no model_config attribute)",
            "bnaudit needs the architecture: save the whole model with model.save(), not save_weights()",
        )
    if isinstance(raw, bytes):
        raw = raw.decode("utf8")
    if len(raw) > MAX_CONFIG_BYTES:
        raise LoadError("model_config is too large for a model config")
    try:
        graph = build_graph(json.loads(raw))
    except (ValueError, ConfigError) as exc:
        raise LoadError(f"model_config: {exc}") from None
    version = h5.attrs.get("keras_version", b"")
    graph.keras_version = version.decode() if isinstance(version, bytes) else str(version)
    graph.format = "h5-keras2" if graph.keras_version.startswith("2") else "h5-keras3"
    return graph


def _first_line(exc: BaseException) -> str:
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__
