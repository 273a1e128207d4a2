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

    Called once per plugin manager, when the run's rule set is built (``bnaudit check``,
    ``rules``, ``stats``, ``report``, ``bnaudit.audit()``; each ``-j`` worker process has
    its own manager), before any model is audited; per-file ignores only select among
    these rules, they do not call it again. ``bnaudit plugins`` calls it once more per
    plugin to list what each adds. Codes must match ``^[A-Z]{1,4}[0-9]{3}$`` and a
    plugin's prefix must not be used by another plugin (``BN`` is bnaudit's own).
    """


@hookspec(firstresult=True)
def bnaudit_load_model(path: "Path") -> "ModelGraph | None":
    """Read the model at ``path`` into a :class:`bnaudit.graph.ModelGraph`.

    ``path`` is a file, or a directory that :func:`bnaudit.loaders.is_savedmodel_dir`
    accepts (a SavedModel); the built-in loaders for ``.keras``, ``.h5``, ``.onnx`` and
    SavedModel directories are implementations of this hook like any other.

    Called once per model file, before its rules run. Return None when the file is not
    in a format this loader knows, so the next loader is asked; raise
    :class:`bnaudit.loaders.LoadError` when it is, but cannot be read. The first
    non-None result wins. Loaders must not execute anything from the file.

    :param path: the model file, as found on the command line or under a directory given.
    """


@hookspec
def bnaudit_modify_findings(findings: "list[Finding]", result: "AuditResult") -> None:
    """Change, add or remove findings of one model in place, after all its rules ran.

    Called once per model that could be read, after its rules and before selection by
    ``--select``/``--ignore``, per-file ignores and the baseline, so a plugin can e.g.
    raise the severity of findings on layers it knows matter. An exception here becomes
    an error of that model, not a crash of the run.

    :param findings: the model's findings so far (``result.findings``); edit the list in place.
    :param result: the model's :class:`~bnaudit.result.AuditResult`, for its outcomes,
        measurements and meta; read it, do not edit it.
    """


@hookspec
def bnaudit_register_reporters() -> "list[Reporter]":
    """Return the output formats this plugin adds (``--format NAME``).

    Called once per command that renders (``check``, ``report``, ``formats``), before
    any model is audited, and once more per plugin by ``bnaudit plugins``.
    """


@hookspec
def bnaudit_prepare_jinja2_environment(env: "jinja2.Environment") -> None:
    """Adjust the jinja2 environment of the HTML report (filters, globals, loaders).

    Called once per HTML report, after bnaudit set up its own environment and before
    the template renders.

    :param env: the environment the report's templates render in.
    """


@hookspec
def bnaudit_register_commands(cli: "click.Group") -> None:
    """Add sub-commands to the ``bnaudit`` command line with ``cli.add_command``.

    Called once per process, and only when the command line is asked for a command
    bnaudit does not ship or for the list of commands (``bnaudit --help``): the
    built-in commands start without loading any plugin for it.

    :param cli: the ``bnaudit`` click group.
    """


@hookspec
def bnaudit_configure(settings: "dict[str, Any]") -> None:
    """Read (or adjust) the resolved settings before any model is audited.

    Called once per plugin manager, right after the rule set is built (so once per run,
    and once per ``-j`` worker process), never between models.

    :param settings: rule thresholds by ``"code.threshold"`` key (``"bn301.drift-score"``),
        from the config file and ``bnaudit.audit(settings=...)``; each is checked against
        the thresholds its rule declares. A plugin reads its own keys here.
    """
