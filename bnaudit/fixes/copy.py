"""The corrected copy: the model's config as editable JSON plus its weights file opened for writing.

Every fix edits a :class:`ModelCopy` and nothing else, so the three layouts Keras writes
are handled in one place and a fix never sees which one it is editing:

* ``.keras`` (Keras 3): ``config.json`` and ``model.weights.h5`` inside a zip. Variables
  live under the layer's save path (``layers/conv2d_3/vars/0..n``), by position, and the
  save path counts layers of a class per container, so removing a layer renames the
  groups of the later layers of its class (done here, after the config edit).
* ``.h5`` written by Keras 2 / tf-keras or by Keras 3's legacy writer: the ``model_config``
  attribute, and ``model_weights/<layer>/`` groups whose ``weight_names`` attribute lists
  the datasets in the order Keras loads them (by position), ``layer_names`` the groups.

The input is read once and never opened for writing: the copy is built in a working
file next to the output (the ``.h5`` copied once, or the ``.keras`` zip with its
weights edited inside it, see :mod:`.keras_zip`), and the finished copy is moved into
place with ``os.replace`` (atomic on one filesystem), so a failure leaves no output.
Nothing from the file is imported or executed; the config is plain JSON, the one the
loader parsed (within its size limits), copied so the loader's graph stays as read.

The working weights file is checked once, when opened, to hold hard links only
(:func:`~bnaudit.loaders.h5guard.refuse_links`), so variables are then opened by their
path in one call rather than link by link; each array is still checked before it is
read (:func:`~bnaudit.loaders.h5guard.check_dataset`).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from ..graph import BATCHNORM_CLASSES, MODEL_CLASSES, Layer, ModelGraph, build_graph
from ..loaders import MAX_CONFIG_BYTES, RECALIBRATED_MARK, RECALIBRATED_VALUE, LoadError
from ..loaders.h5guard import check_dataset, first_line, read_text_attribute, refuse_links
from ..loaders.weights import MAX_ARRAY_ELEMENTS, MAX_WEIGHT_NAMES_BYTES, FileWindow, bn_variable_names
from . import keras_zip

#: Format names as the loaders set ``ModelGraph.format``.
KERAS_ZIP, H5_KERAS2, H5_KERAS3 = "keras", "h5-keras2", "h5-keras3"
#: The members of a ``.keras`` zip a fix rewrites.
WEIGHTS, CONFIG, METADATA = "model.weights.h5", "config.json", "metadata.json"


class FixError(LoadError):
    """The model cannot be fixed as asked; the message says why and the hint what to do."""


def variable_names(layer: Layer) -> list[str]:
    """The variables of a foldable layer or a BN, in Keras's creation (= saving) order."""
    bias = ["bias"] if layer.config.get("use_bias", True) else []
    if layer.class_name in BATCHNORM_CLASSES:
        return bn_variable_names(layer)
    if layer.class_name.startswith("Depthwise"):
        return ["depthwise_kernel", *bias]
    if layer.class_name.startswith("Separable"):
        return ["depthwise_kernel", "pointwise_kernel", *bias]
    return ["kernel", *bias]


class ModelCopy:
    """A model being fixed: ``config`` (the JSON, edited in place) and its variables.

    :param source: the model file (``.keras`` or ``.h5``); only read.
    :param graph: the graph the loaders built from it (gives the format).
    :param workdir: a directory on the output's filesystem for the temporary weights file.
    :raises FixError: for a layout this module cannot rewrite.
    """

    def __init__(self, source: Path, graph: ModelGraph, workdir: Path) -> None:
        self.source = source
        self.format = graph.format
        self.graph = graph
        self._working = workdir / f"copy{source.suffix}"
        self._zip: keras_zip.WorkingZip | None = None
        self._window: FileWindow | None = None
        if self.format == KERAS_ZIP:
            if graph.weights is None:  # the loader found no weights member
                raise FixError("the .keras file holds no model.weights.h5", "save the whole model with model.save()")
        elif self.format in (H5_KERAS2, H5_KERAS3):
            shutil.copyfile(source, self._working)  # os.sendfile on Linux: a copy in the kernel
        else:
            raise FixError(f"cannot rewrite a model of format {self.format!r}", "fixes work on .keras and .h5 files")
        self.config = json.loads(json.dumps(graph.config))  # a deep copy, at C speed (the config is JSON)
        self._h5: h5py.File | None = None
        self._found: dict[tuple, dict[str, h5py.Dataset]] = {}
        self._groups: dict[str, tuple[h5py.Group, list[str]]] = {}
        self._optimizer_checked = False
        self.dropped_optimizer = False
        self._recalibrated = False
        self.refresh()

    @property
    def h5(self) -> h5py.File:
        """The weights, opened for writing on first use (inside the copy's zip for a ``.keras``)."""
        if self._h5 is None:
            if self.format == KERAS_ZIP:
                self._window = self._working_zip().weights()
            h5 = h5py.File(self._window or self._working, "r+")
            try:
                refuse_links(h5, "the weights file")
            except BaseException:
                h5.close()
                raise
            self._h5 = h5
        return self._h5

    def _working_zip(self) -> keras_zip.WorkingZip:
        if self._zip is None:
            self._zip = keras_zip.WorkingZip(self.source, self._working, WEIGHTS)
        return self._zip

    # -- the config -------------------------------------------------------------------
    def refresh(self) -> None:
        """Rebuild the graph after a config edit (paths, producers, save paths)."""
        self.graph = build_graph(self.config)
        self._index: dict[str, tuple[dict[str, Any], dict[str, Any]]] | None = None

    def _models(self) -> Iterator[tuple[str, dict[str, Any]]]:
        """(path, entry) of the model and every nested model."""
        yield "", self.config
        for path, entry, _ in self.entries():
            if entry.get("class_name") in MODEL_CLASSES:
                yield path, entry

    def entries(self) -> Iterator[tuple[str, dict[str, Any], dict[str, Any]]]:
        """(path, layer entry, enclosing model entry) for every layer and nested model, in config order."""

        def walk(model: dict[str, Any], prefix: str):
            for entry in (model.get("config") or {}).get("layers") or []:
                name = entry.get("name") or (entry.get("config") or {}).get("name")
                yield prefix + name, entry, model
                if entry.get("class_name") in MODEL_CLASSES:
                    yield from walk(entry, f"{prefix}{name}/")

        yield from walk(self.config, "")

    def entry(self, path: str) -> dict[str, Any]:
        """The config entry of the layer (or nested model) at ``path``."""
        return self.entry_pair(path)[0]

    def entry_pair(self, path: str) -> tuple[dict[str, Any], dict[str, Any]]:
        """The config entry of the layer (or nested model) at ``path`` and its enclosing model's.

        :raises KeyError: no layer at ``path``.
        """
        if self._index is None:  # one walk per config layout, not one per question
            self._index = {}
            for found, entry, model in self.entries():
                self._index.setdefault(found, (entry, model))
        return self._index[path]

    # -- the variables ----------------------------------------------------------------
    def read(self, layer: Layer, names: tuple[str, ...] | None = None, dtype: Any = np.float64) -> dict[str, np.ndarray]:
        """The variables of ``layer`` (all, see :func:`variable_names`, or those in ``names``) as ``dtype``
        (None: as stored, which spares a float64 copy of large kernels)."""
        out = {}
        for name, dataset in self._datasets(layer).items():
            if names is not None and name not in names:
                continue
            check_dataset(dataset, f"layer {layer.path!r} {name}", MAX_ARRAY_ELEMENTS)
            if dataset.dtype.kind != "f":
                raise FixError(f"layer {layer.path!r}: {name} has shape {dataset.shape} {dataset.dtype}, not a float array bnaudit rewrites")
            out[name] = np.asarray(dataset[()], dtype)
        return out

    def invalid_statistics(self, bn: Layer) -> str | None:
        """Why ``bn``'s arrays, as they stand in the copy, cannot be carried into another
        layer (BN201: NaN or Inf, or a negative moving variance); None when they can.

        Folding or absorbing such a BN writes its NaN (or the NaN of ``sqrt`` of a negative
        variance) into the kernel or the statistics, where ``check`` no longer sees it.
        Moving statistics can be measured again (``--recalibrate``, which runs first);
        gamma and beta cannot.
        """
        arrays = self.read(bn)
        affine = [name for name in ("gamma", "beta") if name in arrays and not np.isfinite(arrays[name]).all()]
        if affine:
            return f"its {' and '.join(affine)} {_hold(affine)} NaN or Inf (BN201): restore a checkpoint from before training diverged"
        moving = [name for name in ("moving_mean", "moving_variance") if not np.isfinite(arrays[name]).all()]
        if moving:
            return f"its {' and '.join(moving)} {_hold(moving)} NaN or Inf (BN201): measure {'them' if len(moving) > 1 else 'it'} again with --recalibrate --data DATA"
        if (arrays["moving_variance"] < 0).any():
            return "its moving_variance is negative (BN201): measure it again with --recalibrate --data DATA"
        return None

    def write(self, layer: Layer, name: str, values: np.ndarray) -> None:
        """Overwrite one variable in place (same shape; stored in the file's dtype)."""
        dataset = self._datasets(layer)[name]
        if dataset.shape != values.shape:
            raise FixError(f"layer {layer.path!r}: {name} would change shape {dataset.shape} -> {values.shape}")
        dataset.write_direct(np.ascontiguousarray(values, dtype=dataset.dtype))  # no copy when already in that dtype

    def drop_bias(self, layer: Layer) -> None:
        """Remove ``layer``'s bias variable; the caller sets ``use_bias=False`` in the config."""
        self.drop_optimizer_state()
        datasets = self._datasets(layer)
        self._forget(layer)
        if self.format == KERAS_ZIP:
            group = self.h5[f"{layer.save_path}/vars"]
            del group[str(len(group) - 1)]  # the bias is created last
            return
        group, names = self._legacy_group(layer)
        bias = datasets["bias"]
        names = [n for n in names if f"{group.name}/{n}" != bias.name]  # by path: no lookup follows a link
        del self.h5[bias.name]
        self._set_names(group, "weight_names", names)

    def add_bias(self, layer: Layer, values: np.ndarray) -> None:
        """Create ``layer``'s bias (it had ``use_bias=False``); the caller sets it True in the config."""
        self.drop_optimizer_state()
        datasets = self._datasets(layer)
        self._forget(layer)
        kernel = datasets["pointwise_kernel" if "pointwise_kernel" in datasets else next(iter(datasets))]
        if self.format == KERAS_ZIP:
            group = self.h5[f"{layer.save_path}/vars"]
            group.create_dataset(str(len(group)), data=values.astype(kernel.dtype))
            return
        group, names = self._legacy_group(layer)
        kernel_name = next(n for n in names if f"{group.name}/{n}" == kernel.name)
        head, _, last = kernel_name.rpartition("/")
        bias_name = f"{head}/bias{':0' if last.endswith(':0') else ''}"
        group.create_dataset(bias_name, data=values.astype(kernel.dtype))
        names.insert(names.index(kernel_name) + 1, bias_name)  # Keras loads by position: bias follows its kernel
        self._set_names(group, "weight_names", names)

    def remove_layers(self, replaced: dict[str, str]) -> None:
        """Delete the layers at the paths in ``replaced``; their consumers (and outputs) read the
        layer named by the value instead (a single-call layer in the same container).
        One config walk, one graph rebuild and one renaming of save paths for all of them."""
        self.drop_optimizer_state()
        self._found.clear()  # save paths and weight lists change below
        old = self.graph
        entries = {path: self.entry_pair(path) for path in replaced}
        for path, (entry, model) in entries.items():
            model["config"]["layers"].remove(entry)
        renames: dict[int, dict[str, str]] = {}
        for path, (_, model) in entries.items():
            renames.setdefault(id(model), {})[old[path].name] = replaced[path]
        for _, model in self._models():
            names = renames.get(id(model))
            if names:
                for other in model["config"]["layers"]:
                    _rewire(other.get("inbound_nodes"), names)
                for key in ("output_layers", "outputs"):
                    _rewire(model["config"].get(key), names)
        self.refresh()
        if self.format == KERAS_ZIP:
            self._found.clear()
            for path in replaced:
                del self.h5[old[path].save_path]
            moves = [(old[p].save_path, l.save_path) for p, l in self.graph.layers.items() if old[p].save_path != l.save_path]
            for index, (src, _) in enumerate(moves):  # two steps: a target may be another's source
                self.h5.move(src, f"{src}.__moving_{index}")
            for index, (src, dst) in enumerate(moves):
                self.h5.move(f"{src}.__moving_{index}", dst)
            return
        for path in replaced:
            layer = old[path]
            group, names = self._legacy_group(layer)
            if "/" not in layer.path:
                root = group.parent
                self._set_names(root, "layer_names", [n for n in _strings(root.attrs["layer_names"]) if n != layer.name])
                del root[layer.name]
                continue
            gone = {d.name for d in self._datasets(layer).values()}
            self._set_names(group, "weight_names", [n for n in names if group[n].name not in gone])
            for dataset in gone:
                del self.h5[dataset]
        self._found.clear()

    def drop_optimizer_state(self) -> None:
        """Variables change: the saved optimizer state no longer matches them, so it is dropped."""
        if self._optimizer_checked:
            return
        self._optimizer_checked = True
        if self.format == KERAS_ZIP:  # an uncompiled model saves compile_config {} and no optimizer variables
            optimizer = _get(self.h5, "optimizer", "the optimizer state")
            variables = _get(optimizer, "vars", "the optimizer state") if isinstance(optimizer, h5py.Group) else None
            found = [bool(self.config.pop("compile_config", None)), isinstance(variables, h5py.Group) and len(variables) > 0]
            if optimizer is not None:
                del self.h5["optimizer"]
        else:
            found = ["optimizer_weights" in self.h5, "training_config" in self.h5.attrs]
            if found[0]:
                del self.h5["optimizer_weights"]
            if found[1]:
                del self.h5.attrs["training_config"]
        self.dropped_optimizer = self.dropped_optimizer or any(found)

    # -- writing ----------------------------------------------------------------------
    def save(self, out: Path, *, last: bool = False) -> None:
        """Write the fixed copy to ``out`` atomically, in the input's format.

        The working file is the copy itself (an ``.h5``, or the ``.keras`` zip with its
        weights inside, see :mod:`.keras_zip`), so with ``last`` (nothing is edited after
        this save) it is moved into place, the workdir being on the output's filesystem;
        otherwise a copy of it is, and editing goes on.
        """
        if self.format != KERAS_ZIP:
            self.h5.attrs["model_config"] = json.dumps(self.config).encode("utf8")
            if self._recalibrated:
                self.h5.attrs[RECALIBRATED_MARK] = RECALIBRATED_VALUE
        self.close()
        out.parent.mkdir(parents=True, exist_ok=True)
        if self.format == KERAS_ZIP:
            replaced = {CONFIG: json.dumps(self.config).encode("utf8")}
            if self._recalibrated:
                replaced[METADATA] = json.dumps({**self._metadata(), RECALIBRATED_MARK: RECALIBRATED_VALUE}).encode("utf8")
            self._working_zip().finish(replaced)
        if last:
            os.replace(self._working, out)
            return
        fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
        os.close(fd)
        try:
            shutil.copyfile(self._working, tmp)
            os.replace(tmp, out)
        except BaseException:
            os.unlink(tmp)
            raise
        if self._zip is not None:
            self._zip.reopen()

    def mark_recalibrated(self) -> None:
        """Record in the copy that its moving statistics are population statistics of data
        (:data:`bnaudit.loaders.RECALIBRATED_MARK`), so that BN205 does not date them by the
        training steps its optimizer state still records."""
        self._recalibrated = True

    def _metadata(self) -> dict[str, Any]:
        """The input's ``metadata.json`` (Keras writes its version and date there); {} when absent."""
        import zipfile

        with zipfile.ZipFile(self.source) as archive:
            try:
                info = archive.getinfo(METADATA)
            except KeyError:
                return {}
            if info.file_size > MAX_CONFIG_BYTES:
                raise FixError(f"{METADATA} is {info.file_size} bytes, too large for Keras's metadata", "save the model again")
            value = json.loads(archive.read(info))
        return value if isinstance(value, dict) else {}

    def close(self) -> None:
        self._found.clear()
        self._groups.clear()
        if self._h5 is not None:
            self._h5.close()
            self._h5 = None
        if self._window is not None:
            self._window.close()
            self._window = None

    def _datasets(self, layer: Layer) -> dict[str, h5py.Dataset]:
        """The variables of ``layer`` by name, looked up once until the layout changes (h5py lookups are slow)."""
        key = (layer.path, layer.save_path, layer.config.get("use_bias"))
        if key not in self._found:
            self._found[key] = self._lookup(layer)
        return self._found[key]

    def _forget(self, layer: Layer) -> None:
        """Drop what :meth:`_datasets` found for ``layer``, whose variables are about to change."""
        for key in [key for key in self._found if key[0] == layer.path]:
            del self._found[key]

    def _lookup(self, layer: Layer) -> dict[str, h5py.Dataset]:
        names = variable_names(layer)
        if self.format == KERAS_ZIP:
            group = _get(self.h5, f"{layer.save_path}/vars", f"layer {layer.path!r}")
            if not isinstance(group, h5py.Group) or len(group) != len(names):
                raise FixError(f"layer {layer.path!r}: the weights file does not hold its {len(names)} variables")
            return {name: _dataset(group, str(i), layer) for i, name in enumerate(names)}
        # By position among the layer's own entries, as Keras loads them: the names differ
        # between writers (Keras 3 calls a depthwise kernel "kernel", Keras 2 "depthwise_kernel").
        group, weight_names = self._legacy_group(layer)
        mine = [w for w in weight_names if w.split("/")[-2:-1] == [layer.name]]
        if len(mine) != len(names):
            raise FixError(f"layer {layer.path!r}: the weights file holds {len(mine)} variables, expected {len(names)} ({', '.join(names)})")
        return {name: _dataset(group, weight, layer) for name, weight in zip(names, mine)}

    def _legacy_group(self, layer: Layer) -> tuple[h5py.Group, list[str]]:
        """The weights group of ``layer``'s top-level layer and its ``weight_names``, read
        once until :meth:`_set_names` changes them (a nested model's group lists all its layers')."""
        top = layer.path.split("/", 1)[0]
        if top not in self._groups:
            where = f"layer {layer.path!r}"
            root = _get(self.h5, "model_weights", where) or self.h5
            group = _get(root, top, where)
            if not isinstance(group, h5py.Group):
                raise FixError(f"{where}: no weights group in the file")
            names = read_text_attribute(group, "weight_names", MAX_WEIGHT_NAMES_BYTES) or []
            self._groups[top] = group, [names] if isinstance(names, str) else names
        group, names = self._groups[top]
        return group, list(names)

    def _set_names(self, group: h5py.Group, attribute: str, names: list[str]) -> None:
        """Write a legacy ``weight_names`` or ``layer_names`` attribute (strings, as Keras writes them)."""
        group.attrs[attribute] = np.array(names, dtype=h5py.string_dtype())
        for top, (known, _) in list(self._groups.items()):
            if attribute == "weight_names" and known == group:
                self._groups[top] = known, list(names)
            elif attribute == "layer_names" and top not in names:  # a layer, and its group, removed
                del self._groups[top]


def _get(parent: h5py.Group, path: str, where: str) -> "h5py.Group | h5py.Dataset | None":
    """The object at ``path`` below ``parent`` in one lookup (None if absent): the working
    file holds hard links only (checked when it was opened), so no step can lead out of it."""
    try:
        return parent.get(path)
    except (OSError, RuntimeError, ValueError) as exc:
        raise FixError(f"{where}: {path!r} cannot be opened ({first_line(exc)})", "the file is damaged; save the model again") from None


def _dataset(group: h5py.Group, key: str, layer: Layer) -> h5py.Dataset:
    """One variable (a fix reads and writes nothing Keras never writes, as ``check`` does)."""
    value = _get(group, key, f"layer {layer.path!r}")
    if not isinstance(value, h5py.Dataset):
        raise FixError(f"layer {layer.path!r}: {key} is not an array in the weights file")
    return value


def _hold(names: list[str]) -> str:
    return "hold" if len(names) > 1 else "holds"


def _strings(values) -> list[str]:
    return [v.decode("utf8") if isinstance(v, bytes) else str(v) for v in values]


def _rewire(node: Any, names: dict[str, str]) -> None:
    """Point every reference to a layer named in ``names`` at its replacement (node 0, tensor 0)."""
    if isinstance(node, dict):
        history = (node.get("config") or {}).get("keras_history") if node.get("class_name") == "__keras_tensor__" else None
        if isinstance(history, list) and history and history[0] in names:
            history[:3] = [names[history[0]], 0, 0]
            return
        for value in node.values():
            _rewire(value, names)
    elif isinstance(node, list):
        if len(node) >= 3 and node[0] in names and isinstance(node[1], int) and isinstance(node[2], int):
            node[:3] = [names[node[0]], 0, 0]
            return
        for value in node:
            _rewire(value, names)
