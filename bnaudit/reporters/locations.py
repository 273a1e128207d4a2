"""Where a model is, as CI formats want it: relative to the working directory.

GitHub code scanning, annotations and JUnit consumers resolve file paths against the
checkout, so the path a user typed (absolute or relative) is rewritten relative to the
directory the report is rendered in. A model outside it keeps its absolute path.
"""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath
from urllib.parse import quote


def relative_path(path: str) -> str:
    """``path`` relative to the working directory, with ``/`` separators; absolute if outside."""
    absolute = Path(os.path.abspath(path))
    try:
        relative = absolute.relative_to(Path.cwd())
    except ValueError:
        return absolute.as_posix()
    return PurePosixPath(*relative.parts).as_posix()


def artifact_uri(path: str) -> str:
    """A URI reference for ``path``: relative (percent-encoded) inside the working directory,
    else an absolute ``file://`` URI."""
    location = relative_path(path)
    try:  # a file name need not be UTF-8: percent-encode the bytes the file system holds
        raw = os.fsencode(location)
    except UnicodeEncodeError:
        raw = location.encode("utf-8", "backslashreplace")
    if location.startswith("/"):
        return "file://" + quote(raw)
    return quote(raw)
