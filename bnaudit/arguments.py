"""What the command line names besides models — data and Python modules — checked and imported one way.

Two habits live here, so every command and option follows them alike:

- **One import rule.** ``-p MODULE``, ``--custom-objects MODULE:DICT`` and ``--data
  MODULE:FUNCTION`` import ``MODULE`` as ``python -m`` would: from the working directory
  first, then ``sys.path`` (installed packages). :func:`import_user_module` is the only
  place that imports a module a user named.
- **Check before TensorFlow.** Starting TensorFlow takes seconds, so a missing data file
  or a module that does not exist is reported before it starts (:func:`data_problem`,
  :func:`module_problem`), as one line, exit code 2. These checks only look: they
  never import the user's module or read the data.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import re
import sys
from pathlib import Path
from types import ModuleType

#: ``package.module:function`` (``--data``) and ``package.module:NAME`` (``--custom-objects``).
MODULE_ATTRIBUTE = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
DATA_SUFFIXES = (".npy", ".npz")
DATA_HINT = "--data takes a .npy or .npz file, an image directory, or package.module:function"


def import_user_module(name: str) -> ModuleType:
    """Import the module ``name`` from the working directory first, then ``sys.path``.

    The working directory is put at the front of ``sys.path`` for the rest of the run,
    as ``python -m`` does, so the module's own imports find their siblings too.
    Raises ImportError as :func:`importlib.import_module` does; the module's code runs.
    """
    _working_directory_first()
    return importlib.import_module(name)


def module_problem(name: str) -> str | None:
    """Why ``name`` cannot be imported under :func:`import_user_module`'s rule, or None.

    Only the top-level package is located (``importlib.util.find_spec``): nothing is
    imported or run, so a module that would fail on import is still reported later.
    """
    _working_directory_first()
    top = name.split(".", 1)[0]
    try:
        found = importlib.util.find_spec(top)
    except (ImportError, ValueError):
        found = None
    if found is None:
        return f"no module named {top!r} in the working directory ({os.getcwd()}) or on sys.path"
    return None


def data_problem(spec: str, flag: str = "--data") -> tuple[str, str] | None:
    """What is wrong with a ``--data`` value, as (message, hint), or None when it may be read.

    Accepted: an existing ``.npy``/``.npz`` file, an existing directory (of images), or
    ``package.module:function`` whose package can be found. Whether the data fits the
    model is checked later, when the model is loaded. Messages start with ``flag {spec}``
    (``--verify-data`` takes the same sources).
    """
    path = Path(spec)
    if path.is_dir():
        return None
    if path.is_file():
        if path.suffix.lower() in DATA_SUFFIXES:
            return None
        return f"{flag} {spec}: unknown data format {path.suffix or '(no suffix)'!r}", DATA_HINT
    if MODULE_ATTRIBUTE.match(spec):
        problem = module_problem(spec.partition(":")[0])
        return (f"{flag} {spec}: {problem}", "run from the directory that holds the module, or install it") if problem else None
    return f"{flag} {spec}: no such file or directory", DATA_HINT


def _working_directory_first() -> None:
    cwd = os.getcwd()
    if sys.path[:1] != [cwd]:
        if cwd in sys.path:
            sys.path.remove(cwd)
        sys.path.insert(0, cwd)
