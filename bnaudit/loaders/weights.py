"""Lazy, read-only access to the saved BatchNormalization arrays (and, for plugins, any layer's).

Only the four small vectors of each BN layer are ever read; the rest of the weights
file (convolution kernels, which are most of its bytes) is never touched. Arrays are
checked for shape and size before they are read, since the file is untrusted.

Rules about other layers (a plugin's LayerNormalization rules, say) read them with
``weights.layer_arrays(layer, names)``: the same lookup by Keras's save path (``.keras``)
or by layer name (legacy ``.h5``), for the variable names the caller lists.
"""

from __future__ import annotations

import io
import shutil
import struct
import tempfile
import zipfile
from typing import TYPE_CHECKING

import h5py
import numpy as np

from . import LoadError
from .arrays import MAX_ARRAY_ELEMENTS, MAX_CHANNELS, BNArrays, assemble_bn_arrays, bn_variable_names

if TYPE_CHECKING:
    from ..graph import Layer

def _read_array(dataset: object, where: str) -> np.ndarray:
    if not isinstance(dataset, h5py.Dataset):
        raise LoadError(f"{where} is not an array in the weights file")
    if dataset.size > MAX_ARRAY_ELEMENTS:
        raise LoadError(f"{where} has shape {dataset.shape}, too large to read")
    if dataset.dtype.kind not in "fiu":
        raise LoadError(f"{where} holds {dataset.dtype}, not numbers")
    return np.asarray(dataset[()], dtype=np.float64)


def _read_vector(dataset: object, where: str) -> np.ndarray:
    if isinstance(dataset, h5py.Dataset) and (len(dataset.shape) != 1 or not 0 < dataset.shape[0] <= MAX_CHANNELS):
        raise LoadError(f"{where} has shape {dataset.shape}, expected one vector per channel")
    return _read_array(dataset, where)


class H5Weights:
    """Base for stores over an open ``h5py.File``; caches what was read."""

    def __init__(self, h5: h5py.File) -> None:
        self._h5 = h5
        self._cache: dict[str, BNArrays] = {}

    def bn_arrays(self, layer: "Layer") -> BNArrays:
        if layer.path not in self._cache:
            where = f"layer {layer.path!r}"
            datasets = self._datasets(layer, bn_variable_names(layer))
            values = {name: _read_vector(d, f"{where} {name}") for name, d in datasets.items()}
            self._cache[layer.path] = assemble_bn_arrays(values, where)
        return self._cache[layer.path]

    def layer_arrays(self, layer: "Layer", names: "list[str] | tuple[str, ...]") -> dict[str, np.ndarray]:
        """The saved variables of any layer, as float64 arrays keyed by the given names.

        ``names`` lists the variables in the order Keras creates them (a
        LayerNormalization: ``["gamma", "beta"]``, without those its config switches
        off), since a ``.keras`` file stores them by position. Missing variables are
        left out on legacy ``.h5``; a wrong count is a :class:`LoadError` on ``.keras``.
        """
        where = f"layer {layer.path!r}"
        return {name: _read_array(d, f"{where} {name}") for name, d in self._datasets(layer, names).items()}

    def _datasets(self, layer: "Layer", names) -> dict[str, object]:  # pragma: no cover - abstract
        """The named variables of ``layer`` as (unread) h5py objects."""
        raise NotImplementedError

    def close(self) -> None:
        self._h5.close()


class KerasV3Weights(H5Weights):
    """``model.weights.h5`` of a ``.keras`` zip: variables under ``<save path>/vars/<i>``."""

    def _datasets(self, layer: "Layer", names) -> dict[str, object]:
        group = self._h5.get(f"{layer.save_path}/vars")
        where = f"layer {layer.path!r} ({layer.save_path})"
        if not isinstance(group, h5py.Group):
            raise LoadError(f"{where}: no variables in the weights file")
        if len(group) != len(names):
            raise LoadError(f"{where}: {len(group)} variables saved, expected {len(names)}")
        return {name: group.get(str(i)) for i, name in enumerate(names)}


class LegacyH5Weights(H5Weights):
    """``model_weights`` of a full-model ``.h5`` (Keras 2 and Keras 3's legacy writer).

    Each top-level layer has a group named after it whose ``weight_names`` attribute
    lists its datasets; a nested model's group lists the weights of all its layers,
    so a layer's variable is found by the last two segments of the name (``bn_1/gamma[:0]``).
    """

    def _datasets(self, layer: "Layer", names) -> dict[str, object]:
        top = layer.path.split("/", 1)[0]
        root = self._h5["model_weights"] if "model_weights" in self._h5 else self._h5
        group = root.get(top)
        if not isinstance(group, h5py.Group):
            raise LoadError(f"layer {layer.path!r}: no weights group {top!r} in the file")
        found: dict[str, object] = {}
        for raw in group.attrs.get("weight_names", []):
            weight = raw.decode("utf8") if isinstance(raw, bytes) else str(raw)
            parts = weight.split("/")
            variable = parts[-1].split(":")[0]
            if len(parts) >= 2 and parts[-2] == layer.name and variable in names:
                found[variable] = group.get(weight)
        return found


class _ZipMemberFile(io.RawIOBase):
    """A stored (uncompressed) zip member, readable in place at its offset."""

    def __init__(self, path: str, start: int, size: int) -> None:
        self._file = open(path, "rb")
        self._start, self._size, self._pos = start, size, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def readinto(self, buffer) -> int:
        want = min(len(buffer), max(0, self._size - self._pos))
        if want == 0:
            return 0
        self._file.seek(self._start + self._pos)
        got = self._file.readinto(memoryview(buffer)[:want])
        self._pos += got or 0
        return got or 0

    def close(self) -> None:
        self._file.close()
        super().close()


def open_zip_member_h5(path: str, archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> h5py.File:
    """Open an HDF5 member of a zip without extracting it when it is stored uncompressed.

    Keras writes ``model.weights.h5`` with ZIP_STORED, so h5py can read it where it
    lies; a compressed member (someone re-zipped the file) is decompressed to a temporary file.
    """
    if info.compress_type == zipfile.ZIP_STORED and not info.flag_bits & 0x1:
        with open(path, "rb") as handle:
            handle.seek(info.header_offset)
            header = handle.read(30)
        if len(header) < 30 or header[:4] != b"PK\x03\x04":
            raise LoadError(f"corrupt zip: bad local header for {info.filename}")
        name_len, extra_len = struct.unpack("<HH", header[26:30])
        start = info.header_offset + 30 + name_len + extra_len
        member = _ZipMemberFile(path, start, info.file_size)
        try:
            return h5py.File(member, "r")
        except BaseException:
            member.close()
            raise
    # Decompressed into an anonymous temporary file, not memory: the size is untrusted.
    spill = tempfile.TemporaryFile()
    try:
        with archive.open(info) as source:
            shutil.copyfileobj(source, spill, 1 << 20)
        spill.seek(0)
        return h5py.File(spill, "r")
    except BaseException:
        spill.close()
        raise
