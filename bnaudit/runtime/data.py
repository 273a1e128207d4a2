"""Data sources for ``--data``: arrays, image directories and Python factories, as checked batches.

:func:`iter_batches` is the one entry point. It reads ``.npy`` / ``.npz`` files row by
row (never the whole file), decodes image directories file by file, and re-batches
whatever a factory returns, so memory does not grow with the size of the data. Every
batch is checked against the model's inputs (count, rank, shape, dtype, NaN/Inf); a
problem raises :class:`DataError`, whose message names what the model expects and what
the data holds, so the command line can print it as one line and exit 2.

``shard=(K, N)`` keeps batch ``i`` only when ``i % N == K - 1``: every shard sees the
same batch boundaries as a single pass, which is why shard moments merge to exactly the
single-pass statistics. Array and image sources skip other shards' batches without
reading them.

Samples are read in a seeded shuffled order by default (``order="shuffled"``, seed 0),
as ``keras.utils.image_dataset_from_directory`` shuffles by default: an image directory
with one sub-directory per class, read in sorted order, puts one class in each batch,
and batch statistics (BN302's training mode) then describe a class, not the data.
``order="sorted"`` keeps file order. ``.npy`` files and ``.npz`` members stored
uncompressed (``np.savez``) are memory-mapped and read by index, so shuffling costs no
memory; a compressed ``.npz`` member is read in file order (noted in the result), and a
factory yields its own order (``tf.data`` pipelines shuffle with ``.shuffle``).
"""

from __future__ import annotations

import os
import re
import zipfile
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Iterator

import numpy as np

from ..arguments import data_problem, import_user_module
from ..loaders import LoadError
from ..loaders.weights import stored_member_start
from . import import_tensorflow

if TYPE_CHECKING:
    from ..options import RuntimeOptions

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif"})
DEFAULT_BATCH_SIZE = 32
#: ``--data-order`` choices; the first is the default.
DATA_ORDERS = ("shuffled", "sorted")
DEFAULT_DATA_SEED = 0


class DataError(LoadError):
    """The data cannot be fed to the model; the message says what was expected and received."""


@dataclass(frozen=True)
class InputSpec:
    """One model input: its name, shape without the batch axis (None = any) and dtype."""

    name: str
    shape: tuple[int | None, ...]
    dtype: np.dtype

    def describe(self) -> str:
        dims = ", ".join("None" if d is None else str(d) for d in (None, *self.shape))
        return f"input {self.name!r} expects shape ({dims}) {self.dtype}"


def input_specs(model) -> list[InputSpec]:
    """The model's inputs in call order (Keras 3 gives dtypes as names, tf-keras as tf.DType)."""
    return [
        InputSpec(str(t.name), tuple(None if d is None else int(d) for d in t.shape[1:]), np.dtype(getattr(t.dtype, "name", str(t.dtype))))
        for t in model.inputs
    ]


def parse_shard(text: str) -> tuple[int, int]:
    """``"2/4"`` -> (2, 4): the second of four shards, numbered from 1."""
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text or "")
    if not match or not 1 <= int(match.group(1)) <= int(match.group(2)):
        raise DataError(f"--shard {text!r} is not K/N with 1 <= K <= N", "e.g. --shard 2/4 for the second of four shards")
    return int(match.group(1)), int(match.group(2))


class Batches:
    """An iterator of checked batches (one array per model input) that knows its size when it can.

    ``total`` is the number of samples this iterator will yield (None for generators),
    so progress can show an ETA.
    """

    def __init__(self, batches: Iterator[list[np.ndarray]], total: int | None, order: str = "sorted") -> None:
        self._batches = batches
        self.total = total
        #: The order the samples come in, for the result ("shuffled (seed 0)", "sorted", ...).
        self.order = order

    def __iter__(self) -> "Batches":
        return self

    def __next__(self) -> list[np.ndarray]:
        return next(self._batches)


def iter_batches(
    spec: str,
    model,
    batch_size: int = DEFAULT_BATCH_SIZE,
    max_samples: int | None = None,
    *,
    shard: tuple[int, int] | None = None,
    order: str = DATA_ORDERS[0],
    seed: int = DEFAULT_DATA_SEED,
) -> Batches:
    """Batches of ``spec`` for ``model``, ``batch_size`` samples each (the last may be short).

    ``model``: a Keras model, or its inputs as a list of :class:`InputSpec` (an ONNX
    model's, :func:`bnaudit.runtime.onnx_statistics.onnx_input_specs`: no Keras then).

    ``order``: "shuffled" (a permutation drawn from ``numpy.random.default_rng(seed)``,
    the same for every shard) or "sorted" (file order). Raises :class:`DataError` for
    data that does not exist, does not fit the model, is empty, or holds NaN/Inf (the
    latter two when the batch is reached).
    """
    if batch_size < 1:
        raise DataError(f"--batch-size must be at least 1, got {batch_size}")
    if max_samples is not None and max_samples < 1:
        raise DataError(f"--max-samples must be at least 1, got {max_samples}")
    if order not in DATA_ORDERS:
        raise DataError(f"--data-order must be one of {', '.join(DATA_ORDERS)}, not {order!r}")
    specs = model if isinstance(model, list) else input_specs(model)
    source = open_source(spec, specs)
    described = "sorted (file order)"
    if order == "shuffled":
        described = f"shuffled (seed {seed})" if source.shuffle(np.random.default_rng(seed)) else source.unshuffled
    total = source.size if max_samples is None or source.size is None else min(source.size, max_samples)
    if total is not None and shard is not None:
        total = _shard_samples(total, batch_size, *shard)
    return Batches(_checked(source, specs, spec, batch_size, max_samples, shard), total, described)


def data_order(runtime: "RuntimeOptions") -> dict[str, Any]:
    """``iter_batches``'s ``order`` and ``seed`` from the runtime options (``data_order``, ``data_seed``)."""
    return {"order": runtime.data_order, "seed": runtime.data_seed}


def _shard_samples(total: int, batch_size: int, k: int, n: int) -> int:
    """Samples in shard ``k`` of ``n`` when ``total`` samples are cut into batches."""
    batches = -(-total // batch_size)
    mine = len(range(k - 1, batches, n))
    short = batches * batch_size - total if (batches - 1) % n == k - 1 else 0
    return mine * batch_size - short


def _checked(source, specs, spec, batch_size, max_samples, shard) -> Iterator[list[np.ndarray]]:
    with source:
        taken = index = 0
        while max_samples is None or taken < max_samples:
            wanted = batch_size if max_samples is None else min(batch_size, max_samples - taken)
            if shard is None or index % shard[1] == shard[0] - 1:
                arrays = source.read(wanted)
                rows = len(arrays[0]) if arrays else 0
                if rows:
                    yield [_fit(a, s, spec, taken) for a, s in zip(arrays, specs)]
            else:
                rows = source.skip(wanted)
            if rows == 0:
                break
            taken += rows
            index += 1
        if taken == 0:
            raise DataError(f"--data {spec}: holds no samples", "give at least one sample")


def _check_fits(shape: tuple[int, ...], dtype: np.dtype, spec: InputSpec, source: str) -> None:
    """DataError unless arrays of ``shape`` and ``dtype`` can be fed to the input ``spec``."""
    received = f"the data has shape {tuple(shape)} {dtype}"
    if len(shape) != len(spec.shape) + 1 or any(w is not None and w != d for w, d in zip(spec.shape, shape[1:])):
        raise DataError(f"--data {source}: {spec.describe()}; {received}", "reshape the data to the model's input shape")
    if not _convertible(dtype, spec.dtype):
        raise DataError(f"--data {source}: {spec.describe()}; {received}", f"convert the data to {spec.dtype}")


def _fit(array: np.ndarray, spec: InputSpec, source: str, first_sample: int) -> np.ndarray:
    """``array`` as the dtype ``spec`` wants, checked for shape and for NaN/Inf."""
    _check_fits(array.shape, array.dtype, spec, source)
    array = np.asarray(array, dtype=spec.dtype)
    if array.dtype.kind in "fc":
        bad = ~np.isfinite(array.reshape(len(array), -1)).all(axis=1)
        if bad.any():
            sample = first_sample + int(np.flatnonzero(bad)[0])
            raise DataError(
                f"--data {source}: input {spec.name!r} holds NaN or Inf (first in sample {sample}, counting from 0)",
                "clean or drop those samples",
            )
    return array


def _convertible(received: np.dtype, expected: np.dtype) -> bool:
    """Safe widening only: integers and booleans may feed float inputs, floats never feed integer ones."""
    if received == expected:
        return True
    order = "buif"
    if received.kind not in order or expected.kind not in order:
        return False
    return order.index(received.kind) <= order.index(expected.kind)


# -- sources: read(n) -> up to n rows per input ([] or empty arrays at the end) -------


class _Source:
    """Rows of every model input, read in order. ``size`` is the sample count when known."""

    size: int | None = None
    #: How the samples come when this source cannot shuffle them.
    unshuffled = "in the factory's own order (shuffle it there, e.g. with tf.data's .shuffle)"

    def read(self, n: int) -> list[np.ndarray]:
        raise NotImplementedError

    def shuffle(self, rng: np.random.Generator) -> bool:
        """Read the samples in an order drawn from ``rng`` from now on; False when this source cannot."""
        return False

    def skip(self, n: int) -> int:
        arrays = self.read(n)
        return len(arrays[0]) if arrays else 0

    def close(self) -> None:
        pass

    def __enter__(self) -> "_Source":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def open_source(spec: str, specs: list[InputSpec]) -> _Source:
    """The source ``spec`` names; what it may name is :func:`bnaudit.arguments.data_problem`'s to say."""
    problem = data_problem(spec)
    if problem:
        raise DataError(*problem)
    path = Path(spec)
    if path.is_dir():
        return _ImageSource(path, specs, spec)
    if path.suffix.lower() == ".npy":
        return _ArraySource(path, {path.stem: None}, specs, spec)
    if path.suffix.lower() == ".npz":
        try:
            with zipfile.ZipFile(path) as archive:
                members = {n[:-4]: n for n in archive.namelist() if n.endswith(".npy")}
        except (zipfile.BadZipFile, OSError) as exc:
            raise DataError(f"--data {spec}: not a readable .npz file ({exc})") from None
        return _ArraySource(path, members, specs, spec)
    return _IterableSource(_call_factory(spec), specs, spec)


class _NpyRows:
    """Rows of one ``.npy`` stream (a file or an ``.npz`` member), read without loading it all.

    ``start`` is where the stream's bytes begin in ``path`` when they lie there
    uncompressed (a ``.npy`` file: 0), so that the rows can be memory-mapped and read
    in any order; None when they cannot (a compressed ``.npz`` member).
    """

    def __init__(self, stream: BinaryIO, where: str, path: Path | None = None, start: int | None = None) -> None:
        self.stream = stream
        try:
            version = np.lib.format.read_magic(stream)
            read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            self.shape, fortran, self.dtype = read_header(stream)
        except (ValueError, OSError) as exc:
            raise DataError(f"{where}: not a .npy array ({exc})") from None
        if self.dtype.hasobject:
            raise DataError(f"{where}: holds Python objects, which would need unpickling", "save plain numeric arrays")
        if not self.shape:
            raise DataError(f"{where}: holds a scalar, not samples", "save an array with one row per sample")
        self.row_bytes = int(np.prod(self.shape[1:], dtype=np.int64)) * self.dtype.itemsize
        self.remaining = int(self.shape[0])
        self.where = where
        self.fortran = fortran
        self._mappable = (path, start + stream.tell()) if path is not None and start is not None else None
        self._whole = self._read_whole() if fortran else None  # Fortran order cannot stream by row
        self._offset = 0

    def mapped(self) -> np.ndarray | None:
        """All rows as a read-only memory map (nothing read yet), or None when they are not in place."""
        if self._mappable is None:
            return None
        if self._whole is not None:
            return self._whole
        path, offset = self._mappable
        if os.path.getsize(path) < offset + self.remaining * self.row_bytes:
            raise DataError(f"{self.where}: the file is truncated (shape {self.shape} promised more rows)")
        return np.memmap(path, dtype=self.dtype, mode="r", offset=offset, shape=tuple(self.shape))

    def read(self, n: int) -> np.ndarray:
        n = min(n, self.remaining)
        self.remaining -= n
        if self._whole is not None:
            self._offset += n
            return self._whole[self._offset - n : self._offset]
        data = self.stream.read(n * self.row_bytes)
        if len(data) != n * self.row_bytes:
            raise DataError(f"{self.where}: the file is truncated (shape {self.shape} promised more rows)")
        return np.frombuffer(data, dtype=self.dtype).reshape((n, *self.shape[1:]))

    def _read_whole(self) -> np.ndarray:
        data = self.stream.read(self.remaining * self.row_bytes)
        if len(data) != self.remaining * self.row_bytes:
            raise DataError(f"{self.where}: the file is truncated (shape {self.shape} promised more rows)")
        return np.frombuffer(data, dtype=self.dtype).reshape(self.shape, order="F")

    def skip(self, n: int) -> int:
        n = min(n, self.remaining)
        if self._whole is not None:
            self._offset += n
        else:
            self.stream.seek(n * self.row_bytes, os.SEEK_CUR)
        self.remaining -= n
        return n


class _ArraySource(_Source):
    """A ``.npy`` file, or an ``.npz`` with one array per input (matched by name, else by order)."""

    def __init__(self, path: Path, members: dict[str, str | None], specs: list[InputSpec], spec: str) -> None:
        names = [s.name for s in specs]
        if all(name in members for name in names):
            chosen = [(name, members[name]) for name in names]
        elif len(members) == len(specs):
            chosen = list(members.items())
        else:
            raise DataError(
                f"--data {spec}: the model takes {len(specs)} input(s) ({', '.join(names)}); "
                f"the file holds {len(members)} array(s) ({', '.join(members) or 'none'})",
                "give one array per input, named like the inputs or in their order",
            )
        self._stack = ExitStack()
        archive = self._stack.enter_context(zipfile.ZipFile(path)) if any(chosen_member for _, chosen_member in chosen) else None
        self._rows = []
        self._order: np.ndarray | None = None
        for (key, member), input_spec in zip(chosen, specs):
            stream = self._stack.enter_context(archive.open(member) if member else open(path, "rb"))
            start = stored_member_start(str(path), archive.getinfo(member)) if member else 0
            rows = _NpyRows(stream, f"--data {spec}" + (f" array {key!r}" if member else ""), path, start)
            _check_fits(rows.shape, rows.dtype, input_spec, spec)  # before any row is read
            self._rows.append(rows)
        counts = {rows.remaining for rows in self._rows}
        if len(counts) > 1:
            raise DataError(f"--data {spec}: the arrays hold different numbers of samples {sorted(counts)}", "give every input the same number of rows")
        self.size = counts.pop()

    unshuffled = "in file order (a compressed .npz member cannot be read by index: save it with np.savez)"

    def shuffle(self, rng: np.random.Generator) -> bool:
        maps = [rows.mapped() for rows in self._rows]
        if any(m is None for m in maps):
            return False
        self._maps, self._order, self._position = maps, rng.permutation(self.size), 0
        return True

    def read(self, n: int) -> list[np.ndarray]:
        if self._order is None:
            return [rows.read(n) for rows in self._rows]
        chosen = self._order[self._position : self._position + n]
        self._position += len(chosen)
        return [np.asarray(m[chosen]) for m in self._maps]

    def skip(self, n: int) -> int:
        if self._order is None:
            return min(rows.skip(n) for rows in self._rows)
        skipped = min(n, self.size - self._position)
        self._position += skipped
        return skipped

    def close(self) -> None:
        self._stack.close()


class _ImageSource(_Source):
    """Image files in a directory (flat, or one sub-directory per class), resized to the input size.

    Pixels stay in 0-255 as ``keras.utils.image_dataset_from_directory`` gives them: the
    model is expected to carry its own preprocessing. Bilinear resizing, as there.
    """

    def __init__(self, directory: Path, specs: list[InputSpec], spec: str) -> None:
        if len(specs) != 1 or len(specs[0].shape) != 3 or None in specs[0].shape[:2] or specs[0].shape[2] not in (1, 3, 4):
            expected = specs[0].describe() if len(specs) == 1 else f"the model takes {len(specs)} inputs"
            raise DataError(
                f"--data {spec}: an image directory needs one input of shape (None, height, width, 1|3|4); {expected}",
                "give arrays (.npy/.npz) or a factory instead",
            )
        self.files = sorted(p for p in directory.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        self.height, self.width, self.channels = specs[0].shape
        self.spec = spec
        self.size = len(self.files)
        self._next = 0
        self._tf = import_tensorflow()

    def shuffle(self, rng: np.random.Generator) -> bool:
        self.files = [self.files[i] for i in rng.permutation(len(self.files))]
        return True

    def read(self, n: int) -> list[np.ndarray]:
        files = self.files[self._next : self._next + n]
        self._next += len(files)
        images = np.empty((len(files), self.height, self.width, self.channels), np.float32)
        for row, file in enumerate(files):
            images[row] = self._decode(file)
        return [images]

    def skip(self, n: int) -> int:
        skipped = min(n, self.size - self._next)
        self._next += skipped
        return skipped

    def _decode(self, file: Path) -> np.ndarray:
        """Decode in the file's own channels (TensorFlow's BMP decoder refuses to convert
        an 8-bit grey BMP itself), then convert to the channels the model takes."""
        tf = self._tf
        try:
            image = tf.io.decode_image(tf.io.read_file(str(file)), channels=0, expand_animations=False)
        except (tf.errors.OpError, ValueError) as exc:
            message = str(getattr(exc, "message", exc)).splitlines()[0]
            raise DataError(f"--data {self.spec}: cannot decode image {file} ({message})", "remove or fix the file") from None
        return tf.image.resize(_to_channels(tf, image, self.channels), (self.height, self.width)).numpy()


def _to_channels(tf, image, wanted: int):
    """An HxWxC image (C in 1-4: grey, grey+alpha, RGB, RGBA) as HxWx``wanted``, the way
    ``tf.io.decode_image(channels=wanted)`` converts: alpha dropped, grey repeated or RGB
    weighted to luma; a 4-channel result gets an opaque alpha."""
    have = int(image.shape[-1])
    if have == wanted:
        return image
    if have in (2, 4):
        image, have = image[..., : have - 1], have - 1
    if wanted == 1:
        return tf.image.rgb_to_grayscale(image) if have == 3 else image
    rgb = tf.image.grayscale_to_rgb(image) if have == 1 else image
    if wanted == 3:
        return rgb
    return tf.concat([rgb, tf.fill(tf.concat([tf.shape(rgb)[:2], [1]], 0), tf.constant(255, rgb.dtype))], -1)


def _call_factory(spec: str) -> Any:
    """Import ``package.module`` (working directory first, see :mod:`bnaudit.arguments`) and call the function."""
    module_name, _, function_name = spec.partition(":")
    try:
        factory = getattr(import_user_module(module_name), function_name)
    except (ImportError, AttributeError) as exc:
        raise DataError(f"--data {spec}: {exc}", "give package.module:function of an importable module") from None
    try:
        return factory()
    except Exception as exc:
        raise DataError(f"--data {spec}: the factory raised {type(exc).__name__}: {exc}") from None


class _IterableSource(_Source):
    """What a factory returned: arrays, an iterable of batches (or samples), or a tf.data.Dataset.

    Elements are re-batched to ``--batch-size``. An element may be the inputs, or an
    ``(inputs, targets[, weights])`` tuple as ``model.fit`` takes; the targets are ignored.
    """

    def __init__(self, value: Any, specs: list[InputSpec], spec: str) -> None:
        self.specs = specs
        self.spec = spec
        whole = self._as_inputs(value)
        if whole is None and isinstance(value, tuple) and 2 <= len(value) <= 3:
            whole = self._as_inputs(value[0])  # (inputs, targets[, weights])
        if hasattr(value, "as_numpy_iterator"):  # tf.data.Dataset
            elements: Any = value.as_numpy_iterator()
        elif whole is not None:
            elements = [whole]
            self.size = len(whole[0])
        elif hasattr(value, "__iter__"):
            elements = value
        else:
            raise DataError(
                f"--data {spec}: the factory returned a {type(value).__name__}",
                "return arrays, an iterable of batches, or a tf.data.Dataset",
            )
        self._elements = iter(elements)
        self._pending: list[np.ndarray] | None = None

    def read(self, n: int) -> list[np.ndarray]:
        parts: list[list[np.ndarray]] = []
        have = 0
        while have < n:
            if self._pending is None:
                element = next(self._elements, None)
                if element is None:
                    break
                self._pending = self._inputs(element)
            take = min(n - have, len(self._pending[0]))
            parts.append([a[:take] for a in self._pending])
            rest = [a[take:] for a in self._pending]
            self._pending = rest if len(rest[0]) else None
            have += take
        if not parts:
            return []
        return [np.concatenate(column) if len(column) > 1 else column[0] for column in zip(*parts)]

    def _inputs(self, element: Any) -> list[np.ndarray]:
        arrays = self._as_inputs(element)
        if arrays is None and isinstance(element, tuple) and 2 <= len(element) <= 3:
            arrays = self._as_inputs(element[0])  # (inputs, targets[, weights])
        if arrays is None:
            raise DataError(
                f"--data {self.spec}: the model takes {len(self.specs)} input(s) ({', '.join(s.name for s in self.specs)}); "
                f"the factory gave {_describe(element)}",
                "yield one array per input (a tuple in input order or a dict by input name), optionally as (inputs, targets)",
            )
        batched = []
        for array, input_spec in zip(arrays, self.specs):
            if array.ndim == len(input_spec.shape):  # one sample, not a batch
                array = array[np.newaxis]
            batched.append(array)
        if len({len(a) for a in batched}) > 1:
            raise DataError(f"--data {self.spec}: the inputs of one element hold different numbers of samples {[len(a) for a in batched]}")
        return batched

    def _as_inputs(self, value: Any) -> list[np.ndarray] | None:
        """``value`` as one array per input, or None when it is not shaped like the inputs."""
        if isinstance(value, dict):
            if not all(s.name in value for s in self.specs):
                return None
            value = [value[s.name] for s in self.specs]
        elif _is_array(value):
            value = [value]
        if not isinstance(value, (tuple, list)) or len(value) != len(self.specs) or not all(_is_array(v) for v in value):
            return None
        arrays = [np.asarray(v) for v in value]
        if not all(a.ndim in (len(s.shape), len(s.shape) + 1) for a, s in zip(arrays, self.specs)):
            return None
        return arrays


def _is_array(value: Any) -> bool:
    return isinstance(value, np.ndarray) or (hasattr(value, "shape") and hasattr(value, "dtype") and hasattr(value, "__array__"))


def _describe(value: Any) -> str:
    if _is_array(value):
        return f"an array of shape {tuple(value.shape)} {value.dtype}"
    if isinstance(value, dict):
        return f"a dict with keys {sorted(map(str, value))}"
    if isinstance(value, (tuple, list)):
        return f"a {type(value).__name__} of {len(value)}: " + ", ".join(_describe(v) for v in value[:3])
    return f"a {type(value).__name__}"
