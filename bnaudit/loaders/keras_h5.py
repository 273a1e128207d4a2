"""Loader for full-model HDF5 files written by Keras 2 / tf-keras and by Keras 3's legacy writer.

The architecture is the JSON in the root ``model_config`` attribute; the Keras version
that wrote the file is the ``keras_version`` attribute (2.x for tf-keras, 3.x for Keras 3).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from ..graph import ModelGraph
from ..hookspecs import hookimpl
from . import HDF5_MAGIC, MAX_CONFIG_BYTES, RECALIBRATED_MARK, LoadError, claims, graph_from_json, misnamed_hint, note_recalibration, refuse_polyglot, save_call

if TYPE_CHECKING:
    import h5py

H5_SUFFIXES = {".h5", ".hdf5"}


@hookimpl
def bnaudit_load_model(path: Path) -> ModelGraph | None:
    if not claims(path, H5_SUFFIXES, HDF5_MAGIC):
        return None
    refuse_polyglot(path)
    import h5py  # here, not at start-up: an .onnx audit never needs it

    from .h5guard import first_line
    from .weights import LegacyH5Weights, fd_reader

    try:
        h5 = h5py.File(path, "r")
    except OSError as exc:
        raise LoadError(
            f"not a readable HDF5 file ({first_line(exc)})",
            misnamed_hint(path, "hdf5", f"the file is truncated or not HDF5; save the model again with {save_call(path, 'hdf5')}"),
        ) from None
    try:
        graph = _graph_from(h5)
    except BaseException:
        h5.close()
        raise
    # libhdf5's own descriptor of the file (the default 'sec2' driver), read with pread.
    graph.weights = LegacyH5Weights(h5, fd_reader(h5.id.get_vfd_handle()) if h5.driver == "sec2" else None)
    return graph


def _graph_from(h5: h5py.File) -> ModelGraph:
    from .h5guard import read_text_attribute

    raw = read_text_attribute(h5, "model_config", MAX_CONFIG_BYTES)
    if raw is None:
        raise LoadError(
            "the HDF5 file holds weights only (no model_config attribute)",
            "bnaudit needs the architecture: save the whole model with model.save(), not save_weights()",
        )
    if not isinstance(raw, str):
        raise LoadError("the 'model_config' attribute is not one string")
    graph = graph_from_json(raw, "model_config")
    version = read_text_attribute(h5, "keras_version", 64) or ""
    graph.keras_version = version if isinstance(version, str) else ""
    graph.format = "h5-keras2" if graph.keras_version.startswith("2") else "h5-keras3"
    note_recalibration(graph, read_text_attribute(h5, RECALIBRATED_MARK, 64))
    if graph.format == "h5-keras2":
        _correct_virtual_batch_axes(graph)
    return graph


def _correct_virtual_batch_axes(graph: ModelGraph) -> None:
    """tf-keras's ``BatchNormalization.build`` inserts the virtual batch dimension and
    shifts ``self.axis`` by one, and ``get_config`` saves the shifted axis (a known
    tf-keras serialization bug: such a file does not load back). The layer itself
    normalizes the unshifted axis, which is what the rules must judge."""
    for layer in graph.batchnorms():
        if layer.config.get("virtual_batch_size"):
            layer.saved_axis_offset = 1
            graph.notes.append(
                f"{layer.path!r} has virtual_batch_size={layer.config['virtual_batch_size']}: tf-keras saved its axis "
                f"as {layer.config.get('axis')}, shifted by the virtual batch dimension (a known tf-keras serialization "
                f"bug; Keras cannot load such a file back); it normalizes axis {layer.axis}, as audited"
            )

