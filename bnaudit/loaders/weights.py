"""Lazy, read-only access to the saved BatchNormalization arrays (and, for plugins, any layer's).

Only the four small vectors of each BN layer are ever read; the rest of the weights
file (convolution kernels, which are most of its bytes) is never touched. Arrays are
checked for shape and size before they are read, since the file is untrusted.

Rules about other layers (a plugin's LayerNormalization rules, say) read them with
``weights.layer_arrays(layer, names)``: the same lookup by Keras's save path (``.keras``)
or by layer name (legacy ``.h5``), for the variable names the caller lists.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import struct
import tempfile
import zipfile
from typing import TYPE_CHECKING, Iterator

import h5py
import numpy as np

from . import LoadError
from .arrays import BN_VECTORS, MAX_ARRAY_ELEMENTS, MAX_CHANNELS, BNArrays, assemble_bn_arrays, bn_variable_names
from .h5guard import MAX_WEIGHT_NAMES_BYTES, RawReader, open_object, read_dataset, read_text_attribute
from .optimizer import keras3_iterations, legacy_h5_iterations

if TYPE_CHECKING:
    from ..graph import Layer

def _read_vector(dataset: object, where: str, channels: int | None, file_size: int | None = None, read_at: RawReader | None = None) -> np.ndarray:
    """One BN vector: at most ``channels`` elements (the count the config implies), checked
    by :func:`~bnaudit.loaders.h5guard.check_dataset` before a byte is read.

    tf-keras saves a BN with ``virtual_batch_size`` as broadcast-shaped arrays
    (``(1, 1, C)``): any shape with one axis other than 1 is read flat."""
    values = read_dataset(dataset, where, channels or MAX_CHANNELS, file_size, read_at)
    shape = values.shape
    if not shape or len([d for d in shape if d != 1]) > 1:
        raise LoadError(f"{where} has shape {shape}, expected one vector per channel")
    values = values.reshape(-1)
    if channels and values.shape[0] != channels:
        raise LoadError(f"{where} holds {values.shape[0]} values, but the layer has {channels} channels")
    return values


def bn_channel_count(layer: "Layer") -> int | None:
    """The channel count the config implies for a BN layer: its input's size on ``axis``.

    None where the config records no input shape or the axis size is unknown.
    """
    axis = layer.axis
    if isinstance(axis, list) and len(axis) == 1:
        axis = axis[0]
    shape = next((s for s in layer.input_shapes if isinstance(s, list)), None)
    if shape is None:
        shape = (layer.config.get("build_config") or {}).get("input_shape")
    if not isinstance(shape, list) or not isinstance(axis, int) or not -len(shape) <= axis < len(shape):
        return None
    size = shape[axis]
    return size if isinstance(size, int) and not isinstance(size, bool) and 0 < size <= MAX_CHANNELS else None


@contextlib.contextmanager
def _corrupt_file_is_load_error(where: str) -> Iterator[None]:
    """libhdf5's errors on a damaged file (h5py raises them as RuntimeError, OSError,
    KeyError or ValueError) become one :class:`LoadError` saying so."""
    try:
        yield
    except (RuntimeError, OSError, KeyError, ValueError) as exc:
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise LoadError(f"{where}: the weights file is corrupt ({detail})", "the file is damaged; save the model again") from None


class H5Weights:
    """Base for stores over an open ``h5py.File``; caches what was read.

    ``read_at`` reads the file's bytes directly (see :func:`~bnaudit.loaders.h5guard.read_dataset`);
    without it, every array is read by libhdf5.
    """

    def __init__(self, h5: h5py.File, read_at: RawReader | None = None) -> None:
        self._h5 = h5
        self._read_at = read_at
        self._cache: dict[str, BNArrays] = {}
        self._opened: dict[str, object] = {}
        self._file_size: int | None = None

    def bn_arrays(self, layer: "Layer") -> BNArrays:
        if layer.path not in self._cache:
            where = f"layer {layer.path!r}"
            with _corrupt_file_is_load_error(where):
                datasets = self._datasets(layer, bn_variable_names(layer))
                channels = bn_channel_count(layer)
                size = self._size()
                values = {name: _read_vector(d, f"{where} {name}", channels, size, self._read_at) for name, d in datasets.items() if name in BN_VECTORS}
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
        with _corrupt_file_is_load_error(where):
            datasets = self._datasets(layer, names)
            return {name: read_dataset(d, f"{where} {name}", MAX_ARRAY_ELEMENTS, self._size(), self._read_at) for name, d in datasets.items()}

    def _datasets(self, layer: "Layer", names) -> dict[str, object]:  # pragma: no cover - abstract
        """The named variables of ``layer`` as (unread) low-level h5py objects, None where absent."""
        raise NotImplementedError

    def _shared(self, path: str, where: str) -> object:
        """The low-level object at ``path`` (a group every layer's lookup starts from),
        opened and checked by :func:`~bnaudit.loaders.h5guard.open_object` once per file
        rather than once per layer; None where absent."""
        if path not in self._opened:
            self._opened[path] = open_object(self._h5.id, path, where)
        return self._opened[path]

    def _size(self) -> int:
        """The file's size in bytes (asked once: every dataset's extent is checked against it)."""
        if self._file_size is None:
            self._file_size = int(self._h5.id.get_filesize())
        return self._file_size

    def optimizer_iterations(self) -> int | None:  # pragma: no cover - abstract
        """The optimizer's step count the file records, None without optimizer state
        (see :mod:`bnaudit.loaders.optimizer`)."""
        raise NotImplementedError

    def close(self) -> None:
        self._h5.close()


class KerasV3Weights(H5Weights):
    """``model.weights.h5`` of a ``.keras`` zip: variables under ``<save path>/vars/<i>``."""

    def optimizer_iterations(self) -> int | None:
        return keras3_iterations(self._h5)

    def _datasets(self, layer: "Layer", names) -> dict[str, object]:
        where = f"layer {layer.path!r} ({layer.save_path})"
        parent, _, leaf = layer.save_path.rpartition("/")
        base = self._shared(parent, where) if parent else self._h5.id
        group = open_object(base, f"{leaf}/vars", where) if isinstance(base, h5py.h5g.GroupID) else None
        if not isinstance(group, h5py.h5g.GroupID):
            raise LoadError(f"{where}: no variables in the weights file")
        saved = group.get_num_objs()
        if saved != len(names):
            raise LoadError(f"{where}: {saved} variables saved, expected {len(names)}")
        return {name: open_object(group, str(i), f"{where} {name}") for i, name in enumerate(names)}


class LegacyH5Weights(H5Weights):
    """``model_weights`` of a full-model ``.h5`` (Keras 2 and Keras 3's legacy writer).

    Each top-level layer has a group named after it whose ``weight_names`` attribute
    lists its datasets; a nested model's group lists the weights of all its layers,
    so a layer's variable is found by the last two segments of the name (``bn_1/gamma[:0]``).
    tf-keras names a wrapped layer's weights after the wrapper (``time_distributed/gamma:0``),
    Keras 3 after the layer (``time_distributed/batch_normalization/gamma``); both are
    in ``Layer.weight_scopes``.
    """

    def optimizer_iterations(self) -> int | None:
        return legacy_h5_iterations(self._h5)

    def _datasets(self, layer: "Layer", names) -> dict[str, object]:
        top = layer.top_level or layer.path.split("/", 1)[0]
        where = f"layer {layer.path!r}"
        root = self._shared("model_weights", where) or self._h5.id
        group = open_object(root, top, where) if isinstance(root, h5py.h5g.GroupID) else None
        if not isinstance(group, h5py.h5g.GroupID):
            raise LoadError(f"{where}: no weights group {top!r} in the file")
        scopes = layer.weight_scopes or (layer.name,)
        found: dict[str, object] = {}
        weight_names = read_text_attribute(h5py.Group(group), "weight_names", MAX_WEIGHT_NAMES_BYTES) or []
        for weight in [weight_names] if isinstance(weight_names, str) else weight_names:
            owner, _, last = weight.rpartition("/")
            variable = last.split(":")[0]
            # The owner part ends with the layer's name, which may itself hold "/" (``conv1/bn``).
            if variable in names and any(owner == scope or owner.endswith("/" + scope) for scope in scopes):
                found[variable] = open_object(group, weight, f"{where} {variable}")
        return found


class FileWindow(io.RawIOBase):
    """Bytes ``start`` to ``start + size`` of a file, as a seekable file of their own.

    Read-only, it is a stored zip member read where it lies: h5py reads the weights of
    a ``.keras`` so, without extracting them. Writable, it is the last thing in a file
    being written (``bnaudit fix`` lets h5py edit the weights of the copy inside the
    copy's zip so): writes past its end grow it, and truncating it truncates the file.
    h5py's file-object driver calls ``readinto``, ``write``, ``seek``, ``tell``,
    ``truncate`` and ``flush``.
    """

    def __init__(self, path: str, start: int, size: int, writable: bool = False) -> None:
        self._file = open(path, "r+b" if writable else "rb")
        self._start, self._size, self._pos, self._writable = start, size, 0, writable
        self._fd = self._file.fileno()
        #: ``os.preadv`` (Linux, BSDs, macOS) reads without moving the file's position; a
        #: writable window goes through the buffered file, which holds its pending writes.
        self._pread = None if writable else getattr(os, "preadv", None)

    def readable(self) -> bool:
        return True

    def writable(self) -> bool:
        return self._writable

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = self._pos if whence == io.SEEK_CUR else self._size if whence == io.SEEK_END else 0
        self._pos = max(0, base + offset)
        return self._pos

    def readinto(self, buffer) -> int:
        """Read at the current position: one ``pread`` where the OS has it (libhdf5 asks
        for a few hundred bytes at a time, several thousand times for a large model)."""
        want = min(len(buffer), self._size - self._pos)
        if want <= 0:
            return 0
        if self._pread is not None:
            got = self._pread(self._fd, [memoryview(buffer)[:want]], self._start + self._pos)
        else:
            self._file.seek(self._start + self._pos)
            got = self._file.readinto(memoryview(buffer)[:want]) or 0
        self._pos += got
        return got

    def read_at(self, offset: int, size: int) -> bytes:
        """``size`` bytes at ``offset`` of the window (fewer at its end), without moving
        its position: a :data:`~bnaudit.loaders.h5guard.RawReader`."""
        size = max(0, min(size, self._size - offset))
        if self._pread is not None:
            return os.pread(self._fd, size, self._start + offset)
        self._file.seek(self._start + offset)
        return self._file.read(size)

    def write(self, data) -> int:
        if not self._writable:
            raise io.UnsupportedOperation("write")
        self._file.seek(self._start + self._pos)
        written = self._file.write(data)
        self._pos += written
        self._size = max(self._size, self._pos)
        return written

    def truncate(self, size: int | None = None) -> int:
        if not self._writable:
            raise io.UnsupportedOperation("truncate")
        self._size = self._pos if size is None else size
        self._file.truncate(self._start + self._size)
        return self._size

    def flush(self) -> None:
        if not self.closed and not self._file.closed:
            self._file.flush()

    def append_to(self, target: "io.BufferedIOBase") -> None:
        """Append all its bytes to ``target`` (a file open for writing, at its end): in the
        kernel (``os.copy_file_range``, Linux) where the OS allows, else through a buffer."""
        self._file.flush()
        copy_range = getattr(os, "copy_file_range", None)
        done = 0
        if copy_range is not None:
            target.flush()
            try:
                while done < self._size:
                    step = copy_range(self._file.fileno(), target.fileno(), self._size - done, self._start + done)
                    if step == 0:
                        break
                    done += step
            except OSError:  # another filesystem or an old kernel: copy what is left through a buffer
                pass
            target.seek(0, io.SEEK_END)
        self.seek(done)
        shutil.copyfileobj(self, target, 1 << 22)

    def close(self) -> None:
        super().close()
        self._file.close()


def stored_member_start(path: str, info: zipfile.ZipInfo) -> int | None:
    """Where a zip member's bytes start in the file, when it is stored uncompressed and
    unencrypted (readable in place); None otherwise."""
    if info.compress_type != zipfile.ZIP_STORED or info.flag_bits & 0x1:
        return None
    with open(path, "rb") as handle:
        handle.seek(info.header_offset)
        header = handle.read(30)
    if len(header) < 30 or header[:4] != b"PK\x03\x04":
        raise LoadError(f"corrupt zip: bad local header for {info.filename}")
    name_len, extra_len = struct.unpack("<HH", header[26:30])
    return info.header_offset + 30 + name_len + extra_len


def open_member(path: str, archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> "FileWindow | zipfile.ZipExtFile":
    """A zip member to read: where it lies when stored uncompressed and unencrypted (as
    Keras writes every member), with no copy and no inflating; else decompressed by zipfile.

    The stored form is seekable at no cost, which h5py needs; zipfile's own reader
    (the other form) seeks backwards by decompressing again from the start.
    """
    start = stored_member_start(path, info)
    if start is None:
        return archive.open(info)
    return FileWindow(path, start, info.file_size)


def open_zip_member_h5(path: str, archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> "tuple[h5py.File, RawReader | None]":
    """Open an HDF5 member of a zip without extracting it when it is stored uncompressed,
    with a reader of its raw bytes (:data:`~bnaudit.loaders.h5guard.RawReader`).

    Keras writes ``model.weights.h5`` with ZIP_STORED, so h5py can read it where it
    lies; a compressed member (someone re-zipped the file) is decompressed to a temporary file.
    """
    member = open_member(path, archive, info)
    if isinstance(member, FileWindow):
        try:
            return h5py.File(member, "r"), member.read_at
        except BaseException:
            member.close()
            raise
    # Decompressed into an anonymous temporary file, not memory: the size is untrusted.
    spill = tempfile.TemporaryFile()
    try:
        with member:
            shutil.copyfileobj(member, spill, 1 << 20)
        spill.seek(0)
        return h5py.File(spill, "r"), fd_reader(spill.fileno())
    except BaseException:
        spill.close()
        raise


def fd_reader(fd: int) -> "RawReader | None":
    """A :data:`~bnaudit.loaders.h5guard.RawReader` over an open file descriptor
    (``os.pread``); None where the OS has no ``pread`` (the arrays are then read by libhdf5)."""
    pread = getattr(os, "pread", None)
    return None if pread is None else (lambda offset, size: pread(fd, size, offset))
