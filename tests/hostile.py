"""Hostile model files, made from the Keras-saved sample models, one builder per attack.

Each builder takes the directory to write into and returns ``(path, expected)``:
``expected`` is a substring of the one error line bnaudit must print for it, or, for
files bnaudit should audit, ``{"findings": {(code, layer), ...}}``. Shared by
``tests/test_hostile_files.py`` and the fuzz runner (``tests/fuzz/``). Nothing here
needs TensorFlow: the files are edited with h5py, zipfile and json.
"""

from __future__ import annotations

import io
import json
import shutil
import struct
import tempfile
import zipfile
from pathlib import Path
from typing import Any, Callable

import h5py
import numpy as np

SAMPLES = Path(__file__).resolve().parent.parent / "sample_models"
#: Keras 3 model, BN204 on bn1 (the leak: BN204's details quote gamma's values).
BASE = "extreme_scale"
#: Its BN vectors in the legacy .h5 and in model.weights.h5.
H5_GAMMAS = ("model_weights/bn1/bn1/gamma", "model_weights/bn2/bn2/gamma")
ZIP_GAMMAS = ("layers/batch_normalization/vars/0", "layers/batch_normalization_1/vars/0")
CHANNELS = {"model_weights/bn1/bn1/gamma": 8, "model_weights/bn2/bn2/gamma": 16}


def secret_file(directory: Path) -> Path:
    """A readable 'credentials' file the model must not be able to read."""
    path = directory / "credentials"
    path.write_bytes(b"aws_secret_access_key=TOPSECRET0123456789abcdefghijklmnopqrstuvwxyz\n" * 8)
    return path


# -- editing helpers ----------------------------------------------------------------

def edit_h5(directory: Path, name: str, edit: Callable[[h5py.File, tuple[str, ...]], None], suffix: str = ".h5") -> Path:
    """A copy of the sample ``.h5`` (or the ``model.weights.h5`` inside the ``.keras``), edited."""
    path = directory / f"{name}{suffix}"
    if suffix == ".h5":
        shutil.copy(SAMPLES / f"{BASE}.h5", path)
        with h5py.File(path, "r+") as f:
            edit(f, H5_GAMMAS)
        return path
    with zipfile.ZipFile(SAMPLES / f"{BASE}.keras") as src:
        members = {info.filename: src.read(info) for info in src.infolist()}
    with tempfile.TemporaryDirectory() as scratch:
        weights = Path(scratch, "model.weights.h5")
        weights.write_bytes(members["model.weights.h5"])
        with h5py.File(weights, "r+") as f:
            edit(f, ZIP_GAMMAS)
        members["model.weights.h5"] = weights.read_bytes()
    write_zip(path, members)
    return path


def write_zip(path: Path, members: dict[str, bytes], compress: int = zipfile.ZIP_STORED) -> None:
    with zipfile.ZipFile(path, "w", compress) as dst:
        for name, data in members.items():
            dst.writestr(name, data)


def edit_config(directory: Path, name: str, edit: Callable[[dict], Any], sample: str = BASE) -> Path:
    """A copy of a sample ``.keras`` whose ``config.json`` ``edit`` changed in place."""
    with zipfile.ZipFile(SAMPLES / f"{sample}.keras") as src:
        members = {info.filename: src.read(info) for info in src.infolist()}
    config = json.loads(members["config.json"])
    edit(config)
    members["config.json"] = json.dumps(config).encode()
    path = directory / f"{name}.keras"
    write_zip(path, members)
    return path


def _replace(f: h5py.File, path: str, make: Callable[[h5py.Group, str, np.ndarray], None]) -> None:
    values = f[path][()]
    parent, _, leaf = path.rpartition("/")
    del f[path]
    make(f[parent], leaf, values)


def layer(config: dict, name: str) -> dict:
    return next(entry for entry in config["config"]["layers"] if entry.get("name", entry["config"].get("name")) == name)


LAMBDA = {"module": "keras.layers", "class_name": "Lambda", "config": {"name": "inner", "function": {"class_name": "__lambda__", "config": {"value": ["4wEAAAAAAAAAAAAAAAEAAAADAAAA8wgAAACXAHwAUwApAU6pAKkB2gF4cwEAAAAg+gg8c3RkaW4++gg8bGFtYmRhPnIFAAAAAQAAAHMCAAAAgAChAHMAAAAA\n", None, None]}}, "arguments": {}}, "registered_name": None}


# -- kind 1: the model names another file --------------------------------------------

def external_storage(directory: Path, suffix: str = ".h5") -> tuple[Path, str]:
    """gamma's bytes 'stored' in the credentials file, at offsets 0, 4, 8, ..."""
    secret = secret_file(directory)

    def edit(f, gammas):
        for path in gammas:
            _replace(f, path, lambda g, leaf, v: g.create_dataset(leaf, shape=v.shape, dtype="f4", external=[(str(secret), 0, v.size * 4)]))

    return edit_h5(directory, f"external_storage{suffix.replace('.', '_')}", edit, suffix), "keeps its bytes in an external file"


def _other_hdf5(directory: Path) -> Path:
    """Another HDF5 file, with 64 floats at ``/x``, for links and virtual datasets to point at."""
    other = directory / "other.h5"
    with h5py.File(other, "w") as f:
        f.create_dataset("x", data=np.arange(64, dtype="f4"))
    return other


def external_link(directory: Path, suffix: str = ".h5") -> tuple[Path, str]:
    other = _other_hdf5(directory)

    def edit(f, gammas):
        for path in gammas:
            del f[path]
            f[path] = h5py.ExternalLink(str(other), "/x")

    return edit_h5(directory, f"external_link{suffix.replace('.', '_')}", edit, suffix), "is an external link"


def soft_link(directory: Path, suffix: str = ".h5") -> tuple[Path, str]:
    def edit(f, gammas):
        for path in gammas:
            target = path.rsplit("/", 1)[0] + ("/beta" if suffix == ".h5" else "/1")
            del f[path]
            f[path] = h5py.SoftLink("/" + target)

    return edit_h5(directory, f"soft_link{suffix.replace('.', '_')}", edit, suffix), "is a soft link"


def virtual_dataset(directory: Path, suffix: str = ".h5") -> tuple[Path, str]:
    other = _other_hdf5(directory)

    def edit(f, gammas):
        for path in gammas:
            def make(group, leaf, values):
                layout = h5py.VirtualLayout(shape=values.shape, dtype="f4")
                layout[:] = h5py.VirtualSource(str(other), "x", shape=(64,))[: values.shape[0]]
                group.create_virtual_dataset(leaf, layout)

            _replace(f, path, make)

    return edit_h5(directory, f"virtual{suffix.replace('.', '_')}", edit, suffix), "is a virtual dataset"


def compressed_dataset(directory: Path, suffix: str = ".h5") -> tuple[Path, str]:
    def edit(f, gammas):
        for path in gammas:
            _replace(f, path, lambda g, leaf, v: g.create_dataset(leaf, data=v, compression="gzip"))

    return edit_h5(directory, f"gzip{suffix.replace('.', '_')}", edit, suffix), "is a chunked dataset"


# -- kind 2: a dataset that crashes libhdf5 ------------------------------------------

def self_referencing_virtual(directory: Path, suffix: str = ".h5") -> tuple[Path, str]:
    """A virtual dataset whose source is itself (libhdf5 grew to 5.5 GB and crashed)."""

    def edit(f, gammas):
        for path in gammas:
            def make(group, leaf, values):
                layout = h5py.VirtualLayout(shape=values.shape, dtype="f4")
                layout[:] = h5py.VirtualSource(".", "/" + path, shape=values.shape)
                group.create_virtual_dataset(leaf, layout)

            _replace(f, path, make)

    return edit_h5(directory, f"vds_self{suffix.replace('.', '_')}", edit, suffix), "is a virtual dataset"


# -- kind 3: sizes without bound -----------------------------------------------------

def unstored_vectors(directory: Path, suffix: str = ".h5") -> tuple[Path, str]:
    """Every BN vector declared with 2**24 elements, no data written."""

    def edit(f, gammas):
        for group in {p.rsplit("/", 1)[0] for p in gammas}:
            for leaf in list(f[group]):
                del f[group][leaf]
                f[group].create_dataset(leaf, shape=(1 << 24,), dtype="f8")

    return edit_h5(directory, f"unstored{suffix.replace('.', '_')}", edit, suffix), "declares 16777216 elements"


def unwritten_vectors(directory: Path, suffix: str = ".h5") -> tuple[Path, str]:
    """gamma declared with its real length, no data written: it would read as fill values."""

    def edit(f, gammas):
        for path in gammas:
            _replace(f, path, lambda g, leaf, v: g.create_dataset(leaf, shape=v.shape, dtype="f4"))

    return edit_h5(directory, f"unwritten{suffix.replace('.', '_')}", edit, suffix), "bytes but the file stores 0"


def config_bomb(directory: Path) -> tuple[Path, str]:
    """config.json deflated: ~40 MB of whitespace in front of the real config."""
    with zipfile.ZipFile(SAMPLES / f"{BASE}.keras") as src:
        members = {info.filename: src.read(info) for info in src.infolist()}
    members["config.json"] = b" " * (40 << 20) + members["config.json"]
    path = directory / "config_bomb.keras"
    write_zip(path, members, zipfile.ZIP_DEFLATED)
    return path, "too large for a model config"


def flipped_attribute_length(directory: Path) -> tuple[Path, str]:
    """model_config stored as a fixed-length string (as tf-keras writes it), its declared
    length's top byte flipped in the file: 2 GB claimed by a small file."""
    path = directory / "flipped_length.h5"
    shutil.copy(SAMPLES / f"{BASE}.h5", path)
    with h5py.File(path, "r+") as f:
        text = f.attrs["model_config"]
        text = text.encode() if isinstance(text, str) else bytes(text)
        del f.attrs["model_config"]
        f.attrs.create("model_config", np.bytes_(text))
    data = bytearray(path.read_bytes())
    # The attribute's datatype message: class and version (string class 3), three bytes
    # of class bits, then the 4-byte element size.
    needle = struct.pack("<I", len(text))
    at = next(i for i in range(4, len(data)) if data[i : i + 4] == needle and data[i - 4] & 0x0F == 3)
    data[at + 3] ^= 0x7F
    path.write_bytes(bytes(data))
    return path, "model_config"


# -- kind 4: code in the config ------------------------------------------------------

def _lambda_in_wrapper(config):
    relu = layer(config, "relu1")
    relu.update({"class_name": "TimeDistributed", "config": {"name": "relu1", "layer": LAMBDA}})


def _function(module, name):
    return {"module": module, "class_name": "function", "config": name, "registered_name": name}


CODE_CONFIGS: dict[str, tuple[Callable[[dict], None], str, str]] = {
    # name: (edit, the layer the finding is on, what the message says)
    "lambda_in_timedistributed": (_lambda_in_wrapper, "relu1/inner", "'relu1/inner': Lambda"),
    "activation_os_system": (lambda c: layer(c, "conv1")["config"].update(activation=_function("os", "system")), "conv1", "module 'os'"),
    "initializer_builtins": (lambda c: layer(c, "conv1")["config"].update(kernel_initializer={"module": "builtins", "class_name": "function", "config": "exec", "registered_name": "function"}), "conv1", "module 'builtins'"),
    "regularizer_os": (lambda c: layer(c, "conv2")["config"].update(kernel_regularizer=_function("os", "popen")), "conv2", "module 'os'"),
    "lambda_as_constraint": (lambda c: layer(c, "bn2")["config"].update(beta_constraint=LAMBDA["config"]["function"]), "bn2", "__lambda__"),
    "module_keras_payload": (lambda c: layer(c, "head").update(module="keras_payload.layers"), "head", "module 'keras_payload.layers'"),
    "top_level_module_os": (lambda c: c.update(module="os"), "", "module 'os'"),
    "torch_module_wrapper": (lambda c: layer(c, "relu2").update(class_name="TorchModuleWrapper"), "relu2", "TorchModuleWrapper"),
    "jax_layer": (lambda c: layer(c, "relu2").update(class_name="JaxLayer"), "relu2", "JaxLayer"),
    "flax_layer": (lambda c: layer(c, "relu2").update(class_name="FlaxLayer"), "relu2", "FlaxLayer"),
    "tf_op_lambda": (lambda c: layer(c, "relu2").update(class_name="TFOpLambda"), "relu2", "TFOpLambda"),
    "function_in_call_kwargs": (lambda c: layer(c, "conv2")["inbound_nodes"][0]["kwargs"].update(mask=_function("os", "system")), "conv2", "module 'os'"),
    "enable_unsafe_deserialization": (lambda c: layer(c, "head")["config"].update(activation=_function("keras.config", "enable_unsafe_deserialization")), "head", "enable_unsafe_deserialization"),
}


def nested_model_module_os(directory: Path) -> tuple[Path, str]:
    def edit(config):
        nested = next(entry for entry in config["config"]["layers"] if entry["class_name"] in ("Functional", "Sequential"))
        nested["module"] = "os"

    return edit_config(directory, "nested_module_os", edit, "nested_transfer"), "module 'os'"


# -- kind 5: two models in one file --------------------------------------------------

def hdf5_with_zip_appended(directory: Path, suffix: str = ".keras") -> tuple[Path, str]:
    """A benign HDF5 model with a .keras zip holding a Lambda appended."""
    path = directory / f"polyglot{suffix}"
    payload = io.BytesIO()
    with zipfile.ZipFile(SAMPLES / "lambda_layer.keras") as src, zipfile.ZipFile(payload, "w") as dst:
        for info in src.infolist():
            dst.writestr(info, src.read(info))
    path.write_bytes((SAMPLES / f"{BASE}.h5").read_bytes() + payload.getvalue())
    return path, "both an HDF5 file and a zip"


# -- kinds 6 and 9: strings that break writers and logs ------------------------------

def renamed_layer(directory: Path, new_name: str, file_name: str = "renamed") -> Path:
    """The base model with bn1 (where BN204 fires) renamed, in config and weights alike."""
    return edit_config(directory, file_name, lambda c: _rename(c, "bn1", new_name))


def _rename(config: dict, old: str, new: str) -> None:
    text = json.dumps(config).replace(f'"{old}"', json.dumps(new))
    config.clear()
    config.update(json.loads(text))


def deeply_nested_config(directory: Path) -> tuple[Path, str]:
    """config.json nesting 100,000 lists: json.loads raises RecursionError."""
    with zipfile.ZipFile(SAMPLES / f"{BASE}.keras") as src:
        members = {info.filename: src.read(info) for info in src.infolist()}
    members["config.json"] = b'{"class_name": "Functional", "config": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    path = directory / "deep.keras"
    write_zip(path, members)
    return path, "nests objects deeper than any Keras config"
