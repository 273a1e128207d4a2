"""Loaders turn a model file into a :class:`~bnaudit.graph.ModelGraph` without Keras.

Each loader is a plugin implementing ``bnaudit_load_model``; the first that recognises
the file wins. A loader that recognises a file but cannot read it raises
:class:`LoadError` with a message and a hint, which become one line on stderr.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..graph import ModelGraph

LFS_POINTER_PREFIX = b"version https://git-lfs.github.com/spec/"
HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
ZIP_MAGIC = b"PK\x03\x04"

#: Above this a config is not a plausible Keras model config; refuse rather than parse.
#: The largest ``keras.applications`` config (NASNetLarge, 1,041 layers: 1,033,352 bytes of
#: ``to_json()`` with Keras 3.15) fits sixteen times over; it also bounds what a small zip
#: can inflate to.
MAX_CONFIG_BYTES = 16 * 1024 * 1024
#: Suffixes Keras's ``load_model`` chooses its reader by; bnaudit chooses the same way.
KERAS_SUFFIXES = {".keras": "zip", ".h5": "hdf5", ".hdf5": "hdf5"}


class LoadError(Exception):
    """The file is (probably) meant to be a model but cannot be audited."""

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __reduce__(self):  # the hint travels too, from a child process
        return type(self), (self.message, self.hint)


def save_call(path: Path, kind: str) -> str:
    """The ``model.save(...)`` call that writes ``path`` again, for a hint: the file's own
    name where Keras saves that suffix as ``kind`` ("zip" or "hdf5"), else its stem with
    the suffix Keras gives that kind (``weights.bin`` -> ``model.save('weights.keras')``)."""
    name = path.name if KERAS_SUFFIXES.get(path.suffix.lower()) == kind else path.stem + (".keras" if kind == "zip" else ".h5")
    return f"model.save({name!r})"


def misnamed_hint(path: Path, kind: str, hint: str) -> str:
    """``hint``, unless the file is a model of the other kind under this suffix (a ``.keras``
    zip named ``.h5``, an HDF5 model named ``.keras``): then say so and how to fix the name.
    Keras, like bnaudit, picks the reader by suffix, so such a file loads nowhere as it is."""
    head = read_head(path, len(HDF5_MAGIC))
    if kind == "hdf5" and head.startswith(ZIP_MAGIC):
        return f"it is a zip archive, as a .keras file is: rename it to {path.stem}.keras"
    if kind == "zip" and head.startswith(HDF5_MAGIC):
        return f"it is an HDF5 file, as a .h5 model is: rename it to {path.stem}.h5"
    return hint


#: A directory holding one of these is a TensorFlow SavedModel (tf-keras adds the last).
SAVEDMODEL_MARKERS = ("saved_model.pb", "saved_model.pbtxt", "keras_metadata.pb")


#: How ``bnaudit fix --recalibrate`` marks its copy: the moving statistics are population
#: statistics of data, not an average over the training steps the optimizer state still
#: records. A key of a ``.keras`` file's ``metadata.json`` and a root attribute of an
#: ``.h5``; Keras ignores both.
RECALIBRATED_MARK, RECALIBRATED_VALUE = "bnaudit_moving_statistics", "population"
#: Why BN205 is skipped on a file so marked (a ``ModelGraph.not_recorded`` reason).
RECALIBRATED_REASON = (
    "its moving statistics were recomputed over data by `bnaudit fix --recalibrate` "
    "(population statistics): the training steps the file records no longer date them"
)


def note_recalibration(graph: "ModelGraph", mark: object) -> None:
    """Skip BN205 on a graph whose file carries :data:`RECALIBRATED_MARK` (``mark``: its value)."""
    if mark == RECALIBRATED_VALUE:
        graph.not_recorded["BN205"] = RECALIBRATED_REASON


def is_savedmodel_dir(path: Path) -> bool:
    """True for a SavedModel directory: the one place that decides it, for loaders and discovery."""
    return path.is_dir() and any((path / marker).is_file() for marker in SAVEDMODEL_MARKERS)


def read_head(path: Path, size: int = 64) -> bytes:
    with open(path, "rb") as handle:
        return handle.read(size)


def check_not_lfs_pointer(path: Path) -> None:
    """Git LFS leaves a small text file where the model should be; say so plainly."""
    if read_head(path, len(LFS_POINTER_PREFIX)) == LFS_POINTER_PREFIX:
        raise LoadError(
            "not fetched (Git LFS pointer), not the model itself",
            "run `git lfs pull` (or set `lfs: true` on actions/checkout) and audit again",
        )


def claims(path: Path, suffixes: "set[str]", magic: bytes) -> bool:
    """Whether a loader for ``suffixes`` reads ``path``: by suffix, as Keras's ``load_model``
    does (so bnaudit audits the bytes Keras would load), by magic bytes only for a file
    whose suffix Keras does not know."""
    suffix = path.suffix.lower()
    if suffix in KERAS_SUFFIXES:
        return suffix in suffixes
    return read_head(path, len(magic)) == magic


def refuse_polyglot(path: Path) -> None:
    """Refuse a file that is both an HDF5 file and a zip: two models in one file, of which
    bnaudit might audit one and Keras load the other."""
    import h5py

    try:
        both = zipfile.is_zipfile(path) and h5py.is_hdf5(str(path))
    except (OSError, ValueError):
        both = False
    if both:
        raise LoadError(
            "the file is both an HDF5 file and a zip archive (two models in one file)",
            "Keras never writes such a file; do not load it",
        )


def graph_from_json(text: "str | bytes", where: str) -> "ModelGraph":
    """Parse a model config and flatten it; every way it can fail is a :class:`LoadError`.

    Raises:
        LoadError: not JSON, nested deeper than Python's recursion limit, or not a
            Keras model config.
    """
    from ..graph import ConfigError, build_graph

    try:
        return build_graph(json.loads(text))
    except RecursionError:
        raise LoadError(f"{where} nests objects deeper than any Keras config", "the file was not written by Keras as saved") from None
    except UnicodeDecodeError:
        raise LoadError(f"{where} is not UTF-8 text", "the file was not written by Keras as saved") from None
    except (ValueError, ConfigError) as exc:
        raise LoadError(f"{where}: {exc}") from None
    except (TypeError, AttributeError, KeyError, IndexError):  # a value of the wrong JSON type somewhere
        raise LoadError(f"{where} is not a Keras model config (a value has the wrong type or shape)", "the file was not written by Keras as saved") from None
