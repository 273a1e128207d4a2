"""The ``bnaudit`` command line: one module per command, shared options in :mod:`.options`.

Output goes to stdout or ``-o FILE``; problems with input go to stderr as one line each
(``bnaudit: error: PATH: what is wrong (what to do)``), never as a traceback unless
``--debug``. Exit codes: 0 clean, 1 findings at or above ``--fail-on``, 2 usage error,
unreadable model or crashed rule.
"""

from __future__ import annotations

import os
import sys
import traceback

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # before anything can import TensorFlow

import importlib

import click

from .. import __version__

#: Built-in commands and the module of each: a command's module (and what it needs:
#: the engine, the reporters, TensorFlow for ``stats``) is imported only when it runs.
COMMANDS = {
    "check": "check",
    "diff": "diff",
    "report": "report",
    "stats": "stats",
    "merge": "stats",
    "rules": "rules",
    "plugins": "plugins",
    "formats": "formats",
    "fix": "fix",
}


class Commands(click.Group):
    """The ``bnaudit`` group: built-in commands imported on use, plugins' commands on demand.

    Plugins add commands through ``bnaudit_register_commands``; asking for them loads
    every plugin, so that happens only for a name that is not built in, or to list
    the commands (``--help``), never on the way to ``check``.
    """

    plugins_asked = False

    def list_commands(self, ctx: click.Context) -> list[str]:
        self._add_plugin_commands()
        return sorted({*COMMANDS, *super().list_commands(ctx)})

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name in COMMANDS:
            return getattr(importlib.import_module(f"{__name__}.{COMMANDS[name]}"), name)
        self._add_plugin_commands()
        return super().get_command(ctx, name)

    def invoke(self, ctx: click.Context):
        from ..output import OutputError

        try:
            return super().invoke(ctx)
        except OutputError as exc:  # a report that cannot be written: one line, exit 2
            from .options import fail

            fail(f"{exc} ({exc.hint})")

    def _add_plugin_commands(self) -> None:
        if self.plugins_asked:
            return
        self.plugins_asked = True
        from ..plugins import PluginError, make_plugin_manager
        from .options import fail

        try:
            make_plugin_manager().hook.bnaudit_register_commands(cli=self)
        except PluginError as exc:
            fail(str(exc))


@click.group(cls=Commands, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="bnaudit")
def cli() -> None:
    """Audit the BatchNormalization layers of saved Keras models."""


def main() -> None:
    """Console entry point (``bnaudit``): any exception escaping a command is a bug, never
    "findings": exit 2 with one line (a traceback with --debug)."""
    try:
        cli(prog_name="bnaudit")
    except Exception as exc:
        from ..printable import exception_line
        from .options import fail

        if "--debug" in sys.argv:
            traceback.print_exc()
        fail(f"internal error: {exception_line(exc)} (run with --debug for the traceback, and please report it)")
