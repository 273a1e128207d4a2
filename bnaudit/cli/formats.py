"""``bnaudit formats``: the output formats, built-in and from plugins."""

from __future__ import annotations

import click

from ..plugins import collect_reporters, make_plugin_manager


@click.command()
def formats() -> None:
    """List the output formats."""
    for reporter in collect_reporters(make_plugin_manager()).values():
        click.echo(f"{reporter.name:<10} {reporter.description}")
