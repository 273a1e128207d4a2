"""``bnaudit plugins``: the loaded plugins, their versions and what each adds."""

from __future__ import annotations

import click

from ..plugins import PluginError, make_plugin_manager, plugin_infos
from .options import fail


@click.command()
@click.option("-p", "--plugin", "plugins", multiple=True, help="Load a plugin module first.")
def plugins(plugins: tuple[str, ...]) -> None:
    """List the loaded plugins with their versions and the rules each adds."""
    try:
        pm = make_plugin_manager(plugins)
    except PluginError as exc:
        fail(str(exc))
    for info in plugin_infos(pm):
        kind = "builtin" if info.builtin else info.version
        added = ", ".join(info.rules + [f"format:{r}" for r in info.reporters]) or "-"
        click.echo(f"{info.name:<32} {kind:<10} {added}")
