"""Writing reports: atomically, so a failed render or a crash never leaves half a file.

Atomic (a temporary file renamed over the target) only where the target is a regular
file or does not exist yet; a device or FIFO is written into, a directory refused.
"""

from __future__ import annotations

import os
import stat
import sys
import tempfile
from pathlib import Path
from typing import Iterable


class OutputError(Exception):
    """An output file could not be written (exit 2, one line: the message, then ``hint``)."""

    def __init__(self, message: str, hint: str = "check the path and its permissions") -> None:
        super().__init__(message)
        self.hint = hint


def refuse_inputs(
    outputs: "Iterable[tuple[str, str | Path | None]]",
    inputs: "Iterable[str | Path]",
    kind: str = "the input",
    why: str = "inputs are never modified",
) -> None:
    """Refuse an output that would overwrite an input: every command reads models (and
    data, results, statistics), and none may write over one, whatever the path says.

    ``outputs`` are (option, path) pairs, a None path skipped; an output is refused when
    it is the same file as an input (through a symlink, a hard link or ``..``) or lies
    inside an input directory that is itself a model (a SavedModel: writing into it
    changes the model). Outputs inside a directory that was only searched are fine.

    ``kind`` and ``why`` name what the paths in ``inputs`` are in the message (``fix``
    also keeps its report off the copy it writes).

    Raises:
        OutputError: naming the option, the output and the input.
    """
    from .loaders import is_savedmodel_dir

    sources = [Path(p) for p in inputs if p is not None and str(p) != "-"]
    for option, given in outputs:
        if given is None:
            continue
        out = Path(given)
        for source in sources:
            inside = is_savedmodel_dir(source) and out.resolve().is_relative_to(source.resolve())
            if inside or _same_file(out, source):
                raise OutputError(f"{option} {given} would overwrite {kind} {source}; {why}", "give another path")


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist (yet)
        return a.resolve() == b.resolve()


def write_atomic(path: str | Path, text: str | bytes) -> None:
    """Write ``text`` (UTF-8) or ``bytes`` (as they are) to ``path`` via a temporary file."""
    path = Path(path)
    try:
        _write_atomic(path, text)
    except OSError as exc:
        raise OutputError(f"cannot write {path}: {exc.strerror or exc}") from None


def _write_atomic(path: Path, text: str | bytes) -> None:
    data = text if isinstance(text, bytes) else text.encode("utf-8")
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        mode = None
    if mode is not None and stat.S_ISDIR(mode):
        raise OutputError(f"cannot write {path}: it is a directory", "give a file name")
    if mode is not None and not stat.S_ISREG(mode):
        # A device or FIFO (/dev/null, /dev/stdout, a named pipe): renaming over it would
        # replace it with a regular file, so write into it.
        with open(path, "wb") as handle:
            handle.write(data)
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.chmod(tmp, _mode_for(path))
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def _mode_for(path: Path) -> int:
    """The mode a plain ``open(path, "w")`` would leave: the file's own if it exists, else
    0o666 less the umask (``mkstemp`` makes 0o600 files that CI artifact uploaders or a
    web server running as another user could not read)."""
    try:
        return path.stat().st_mode & 0o777
    except FileNotFoundError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


def terminal_of_stderr() -> str | None:
    """The terminal device stderr writes to (``/dev/pts/3``), or None when it is not one."""
    try:
        return os.ttyname(sys.stderr.fileno()) if sys.stderr.isatty() else None
    except (OSError, ValueError, AttributeError):
        return None
