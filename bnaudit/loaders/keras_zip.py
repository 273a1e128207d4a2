"""Loader for the Keras 3 native format: a zip of config.json, metadata.json, model.weights.h5."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

from ..graph import ConfigError, ModelGraph, build_graph
from ..hookspecs import hookimpl
from . import MAX_CONFIG_BYTES, ZIP_MAGIC, LoadError, read_head


@hookimpl
def bnaudit_load_model(path: Path) -> ModelGraph | None:
    if path.suffix.lower() != ".keras" and read_head(path, 4) != ZIP_MAGIC:
        return None
    try:
        archive = zipfile.ZipFile(path)
    except zipfile.BadZipFile as exc:
        raise LoadError(
            f"not a readable .keras file ({exc})",
            "the file is truncated or not a Keras zip; save it again with model.save('x.keras')",
        ) from None
    with archive:
        members = {info.filename: info for info in archive.infolist()}
        if "config.json" not in members:
            raise LoadError(
                "the .keras file has no config.json",
                "it is not a complete Keras 3 model; save it again with model.save('x.keras')",
            )
        config = _read_json(archive, members["config.json"])
        metadata = _read_json(archive, members["metadata.json"]) if "metadata.json" in members else {}
        try:
            graph = build_graph(config)
        except ConfigError as exc:
            raise LoadError(f"config.json: {exc}") from None
        graph.format = "keras"
        graph.keras_version = str(metadata.get("keras_version", ""))
        weights = members.get("model.weights.h5")
        if weights is not None:
            from .weights import KerasV3Weights, open_zip_member_h5  # h5py only when a .keras is read

            try:
                graph.weights = KerasV3Weights(open_zip_member_h5(str(path), archive, weights))
            except OSError as exc:
                raise LoadError(f"model.weights.h5 is unreadable ({exc})") from None
    return graph


def _read_json(archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> dict:
    if info.file_size > MAX_CONFIG_BYTES:
        raise LoadError(f"{info.filename} is {info.file_size} bytes, too large for a model config")
    try:
        value = json.loads(archive.read(info))
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
        raise LoadError(f"{info.filename} is unreadable ({exc})") from None
    if not isinstance(value, dict):
        raise LoadError(f"{info.filename} does not hold a JSON object")
    return value
