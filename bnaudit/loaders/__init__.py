"""Loaders turn a model file into a :class:`~bnaudit.graph.ModelGraph` without Keras.

Each loader is a plugin implementing ``bnaudit_load_model``; the first that recognises
the file wins. A loader that recognises a file but cannot read it raises
:class:`LoadError` with a message and a hint, which become one line on stderr.
"""

from __future__ import annotations

from pathlib import Path

LFS_POINTER_PREFIX = b"version https://git-lfs.github.com/spec/"
HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
ZIP_MAGIC = b"PK\x03\x04"

#: Above this a config is not a plausible Keras model config; refuse rather than parse.
MAX_CONFIG_BYTES = 256 * 1024 * 1024


class LoadError(Exception):
    """The file is (probably) meant to be a model but cannot be audited."""

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint


#: A directory holding one of these is a TensorFlow SavedModel (tf-keras adds the last).
SAVEDMODEL_MARKERS = ("saved_model.pb", "saved_model.pbtxt", "keras_metadata.pb")


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
