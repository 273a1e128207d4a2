"""``bnaudit rules``: the rule catalog, or one rule's documentation."""

from __future__ import annotations

import click

from ..plugins import PluginError, collect_rules, make_plugin_manager
from .options import fail


@click.command()
@click.argument("code", required=False)
@click.option("-p", "--plugin", "plugins", multiple=True, help="Load a plugin module first.")
def rules(code: str | None, plugins: tuple[str, ...]) -> None:
    """List the rules, or show the documentation of one (bnaudit rules BN101)."""
    all_rules = _rules(plugins)
    if code is None:
        for rule in all_rules.values():
            click.echo(f"{rule.code}  {rule.name:<36} {rule.severity.label:<8} {rule.needs_label:<14} {rule.summary}")
        return
    found = all_rules.get(code.upper()) or next((r for r in all_rules.values() if r.name == code), None)
    if found is None:
        fail(f"no rule {code!r}; `bnaudit rules` lists them")
    click.echo(f"# {found.code} {found.name}\n")
    click.echo(f"Default severity: {found.severity.label}. Needs: {found.needs_label}.\n")
    if found.settings:
        thresholds = ", ".join(f"{key} = {_shown(value)}{_bounds(found.ranges.get(key))}" for key, value in found.settings.items())
        click.echo(f"Thresholds ([tool.bnaudit.{found.code.lower()}] in the config): {thresholds}.\n")
    click.echo(f"{found.summary}\n\n{found.docs}")


def _shown(value) -> str:
    """A threshold's default as a person reads it: six significant digits for a float
    (``log-variance-ratio = 1.38629``, not ``1.3862943611198906``), else as Python writes it."""
    return f"{value:g}" if isinstance(value, float) else repr(value)


def _bounds(bounds) -> str:
    """`` (0 to 1)``, `` (>= 0)``: the range a threshold accepts, as ``bnaudit rules CODE`` shows it."""
    if not bounds:
        return ""
    low, high = bounds
    return f" ({low:g} to {high:g})" if low is not None and high is not None else f" (>= {low:g})" if low is not None else f" (<= {high:g})"


def _rules(plugins: tuple[str, ...]):
    try:
        return collect_rules(make_plugin_manager(plugins))
    except PluginError as exc:
        fail(str(exc))
