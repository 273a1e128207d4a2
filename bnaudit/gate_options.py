"""The options that decide which rules report and what the exit code is, with the output
options, shared by every command that gives a verdict (``check``, ``diff``)."""

from __future__ import annotations

from typing import Callable

import click


def gate_options(command: Callable) -> Callable:
    """``--select/--ignore/--extend-select``, ``--fail-on``, ``--exit-zero``, ``--format``/``-o``."""
    for decorator in reversed(
        [
            click.option("--select", multiple=True, help="Rule codes or prefixes to run (comma-separated; default: all)."),
            click.option("--ignore", multiple=True, help="Rule codes or prefixes to skip."),
            click.option("--extend-select", multiple=True, help="Codes or prefixes to add to the selection."),
            click.option("--fail-on", type=click.Choice(["info", "warning", "error"]), default="error", show_default=True, help="Lowest severity that makes the exit code 1."),
            click.option("--exit-zero", is_flag=True, help="Exit 0 even when findings are reported (errors still exit 2)."),
            click.option("--format", "formats", multiple=True, help="Output format (repeatable; an -o right after it takes its output). See `bnaudit formats`."),
            click.option("-o", "--output", "outputs", multiple=True, type=click.Path(dir_okay=False), help="Write the output to FILE (repeatable, one per --format)."),
        ]
    ):
        command = decorator(command)
    return command
