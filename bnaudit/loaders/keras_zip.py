"""Loader for the Keras 3 native format: a zip of config.json, metadata.json, model.weights.h5."""

from __future__ import annotations

import json
import zipfile
import zlib
from pathlib import Path

from ..graph import ModelGraph
from ..hookspecs import hookimpl
from . import MAX_CONFIG_BYTES, RECALIBRATED_MARK, ZIP_MAGIC, LoadError, claims, graph_from_json, misnamed_hint, note_recalibration, refuse_polyglot, save_call


@hookimpl
def bnaudit_load_model(path: Path) -> ModelGraph | None:
    if not claims(path, {".keras"}, ZIP_MAGIC):
        return None
    refuse_polyglot(path)
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, zlib.error, OSError, ValueError, EOFError, NotImplementedError) as exc:
        raise LoadError(
            f"not a readable .keras file ({exc})",
            misnamed_hint(path, "zip", f"the file is truncated or not a Keras zip; save it again with {save_call(path, 'zip')}"),
        ) from None
    with archive:
        members = {info.filename: info for info in archive.infolist()}
        if "config.json" not in members:
            raise LoadError(
                "the .keras file has no config.json",
                f"it is not a complete Keras 3 model; save it again with {save_call(path, 'zip')}",
            )
        graph = graph_from_json(_read_member(archive, members["config.json"]), "config.json")
        metadata = _metadata(archive, members.get("metadata.json"))
        graph.format = "keras"
        graph.keras_version = str(metadata.get("keras_version", ""))
        note_recalibration(graph, metadata.get(RECALIBRATED_MARK))
        weights = members.get("model.weights.h5")
        if weights is not None:
            from .weights import KerasV3Weights, open_zip_member_h5  # h5py only when a .keras is read

            try:
                graph.weights = KerasV3Weights(*open_zip_member_h5(str(path), archive, weights))
            except (OSError, EOFError, zipfile.BadZipFile, zlib.error, NotImplementedError, RuntimeError, ValueError) as exc:  # ValueError: h5py, an offset past any file
                raise LoadError(f"model.weights.h5 is unreadable ({str(exc).splitlines()[0] if str(exc) else 'corrupt'})", "the file is damaged; save the model again") from None
    return graph


def _read_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> bytes:
    """A JSON member, decompressed up to ``MAX_CONFIG_BYTES`` whatever its header declares."""
    if info.file_size > MAX_CONFIG_BYTES:
        raise LoadError(f"{info.filename} is {info.file_size} bytes, too large for a model config")
    try:
        with archive.open(info) as member:
            data = member.read(MAX_CONFIG_BYTES + 1)
    except (zipfile.BadZipFile, zlib.error, OSError, ValueError, EOFError, NotImplementedError, RuntimeError) as exc:
        raise LoadError(f"{info.filename} is unreadable ({exc})") from None
    if len(data) > MAX_CONFIG_BYTES:
        raise LoadError(f"{info.filename} inflates past {MAX_CONFIG_BYTES} bytes, too large for a model config")
    return data


def _metadata(archive: zipfile.ZipFile, info: zipfile.ZipInfo | None) -> dict:
    if info is None:
        return {}
    try:
        value = json.loads(_read_member(archive, info))
    except (ValueError, RecursionError):
        raise LoadError(f"{info.filename} is not JSON") from None
    if not isinstance(value, dict):
        raise LoadError(f"{info.filename} does not hold a JSON object")
    return value
