"""Every hook bnaudit calls. Each spec's docstring is its reference documentation.

Implement a hook with ``@bnaudit.hookimpl`` on a function of the same name in a module
or class that is registered as a plugin (entry-point group ``bnaudit``, or ``-p
module``). An implementation may accept fewer arguments than its spec lists, so specs
can grow new arguments without breaking plugins.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from pathlib import Path

    import click
    import jinja2

    from .findings import Finding
    from .graph import ModelGraph
    from .reporters import Reporter
    from .result import AuditResult
    from .rule import Rule

PROJECT = "bnaudit"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def bnaudit_register_rules() -> "list[Rule]":
    """Return the rules this plugin adds.

    Called once per plugin manager. Codes must match ``^[A-Z]{1,4}[0-9]{3}$`` and a
    plugin's prefix must not be used by another plugin (``BN`` is bnaudit's own).
    """


@hookspec(firstresult=True)
def bnaudit_load_model(path: "Path") -> "ModelGraph | None":
    """Read the model at ``path`` into a :class:`bnaudit.graph.ModelGraph`.

    ``path`` is a file, or a directory that :func:`bnaudit.loaders.is_savedmodel_dir`
    accepts (a SavedModel); the built-in loaders for ``.keras``, ``.h5``, ``.onnx`` and
    SavedModel directories are implementations of this hook like any other.

    Return None when the file is not in a format this loader knows, so the next loader
    is asked; raise :class:`bnaudit.loaders.LoadError` when it is, but cannot be read.
    The first non-None result wins. Loaders must not execute anything from the file.
    """


@hookspec
def bnaudit_modify_findings(findings: "list[Finding]", result: "AuditResult") -> None:
    """Change, add or remove findings of one model in place, after all rules ran.

    Called before selection by config and baseline, so a plugin can e.g. raise the
    severity of findings on layers it knows matter.
    """


@hookspec
def bnaudit_register_reporters() -> "list[Reporter]":
    """Return the output formats this plugin adds (``--format NAME``)."""


@hookspec
def bnaudit_prepare_jinja2_environment(env: "jinja2.Environment") -> None:
    """Adjust the jinja2 environment of the HTML report (filters, globals, loaders)."""


@hookspec
def bnaudit_register_commands(cli: "click.Group") -> None:
    """Add sub-commands to the ``bnaudit`` command line with ``cli.add_command``."""


@hookspec
def bnaudit_configure(settings: "dict[str, Any]") -> None:
    """Read (or adjust) the resolved settings before any model is audited.

    ``settings`` holds rule thresholds and options (e.g. ``"bn301.threshold"``); a
    plugin reads its own keys here.
    """
