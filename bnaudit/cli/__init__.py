"""The ``bnaudit`` command line: one module per command, shared options in :mod:`.options`.

Output goes to stdout or ``-o FILE``; problems with input go to stderr as one line each
(``bnaudit: error: PATH: what is wrong (what to do)``), never as a traceback unless
``--debug``. Exit codes: 0 clean, 1 findings at or above ``--fail-on``, 2 usage error,
unreadable model or crashed rule.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # before anything can import TensorFlow

import click

from .. import __version__
from ..output import OutputError
from ..plugins import PluginError, make_plugin_manager
from .check import check
from .formats import formats
from .options import fail
from .plugins import plugins
from .report import report
from .rules import rules
from .stats import merge, stats


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="bnaudit")
def cli() -> None:
    """Audit the BatchNormalization layers of saved Keras models."""




for command in (check, rules, plugins, formats, report, stats, merge):
    cli.add_command(command)


def main() -> None:
    """Console entry point: plugins may add commands before the command line is parsed."""
    try:
        make_plugin_manager().hook.bnaudit_register_commands(cli=cli)
    except PluginError as exc:
        fail(str(exc))
    try:
        cli(prog_name="bnaudit")
    except OutputError as exc:
        fail(f"{exc} (check the path and its permissions)")
