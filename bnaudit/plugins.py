"""The plugin manager: hookspecs, then built-in plugins, then entry points, then ``-p``.

bnaudit's own loaders, rules and reporters are plugins registered through the same
hooks a third party uses (datasette's ``DEFAULT_PLUGINS``), so the built-ins prove the
hooks are enough.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import os
import sys
from dataclasses import dataclass, field

import pluggy

from . import hookspecs
from .arguments import import_user_module
from .reporters import Reporter
from .rule import Rule

DEFAULT_PLUGINS = (
    "bnaudit.loaders.keras_zip",
    "bnaudit.loaders.keras_h5",
    "bnaudit.loaders.onnx",
    "bnaudit.loaders.savedmodel",
    "bnaudit.rules.placement",
    "bnaudit.rules.weights",
    "bnaudit.rules.safety",
    "bnaudit.rules.statistics",
    "bnaudit.rules.inference",
    "bnaudit.rules.finetuning",
    "bnaudit.reporters.text",
    "bnaudit.reporters.json",
    "bnaudit.reporters.sarif",
    "bnaudit.reporters.junit",
    "bnaudit.reporters.github",
    "bnaudit.reporters.html",
)
ENTRY_POINT_GROUP = "bnaudit"
AUTOLOAD_ENV = "BNAUDIT_DISABLE_PLUGIN_AUTOLOAD"
BUILTIN_PREFIX = "BN"


class PluginError(Exception):
    """A plugin could not be loaded or contradicts another (exit code 2)."""


@dataclass
class PluginInfo:
    name: str
    version: str
    rules: list[str] = field(default_factory=list)
    reporters: list[str] = field(default_factory=list)
    builtin: bool = False


def make_plugin_manager(plugins: tuple[str, ...] = (), autoload: bool | None = None) -> pluggy.PluginManager:
    """A fresh manager. ``plugins`` are ``-p`` values: a module name, or ``no:NAME`` to block."""
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    blocked = {p[3:] for p in plugins if p.startswith("no:")}
    for name in blocked:
        pm.set_blocked(name)
    for module_name in DEFAULT_PLUGINS:
        if module_name not in blocked:
            pm.register(importlib.import_module(module_name), name=module_name)
    if autoload is None:
        autoload = not os.environ.get(AUTOLOAD_ENV)
    if autoload and group_may_be_declared(ENTRY_POINT_GROUP):
        try:
            pm.load_setuptools_entrypoints(ENTRY_POINT_GROUP)
        except Exception as exc:  # a broken third-party package must not look like our crash
            raise PluginError(f"could not load a plugin from entry point group {ENTRY_POINT_GROUP!r}: {exc}") from exc
    for module_name in plugins:
        if module_name.startswith("no:") or pm.is_blocked(module_name):
            continue
        try:
            module = import_user_module(module_name)
        except ImportError as exc:
            raise PluginError(f"cannot import plugin {module_name!r} given with -p: {exc}") from exc
        if not pm.is_registered(module):
            pm.register(module, name=module_name)
    pm.check_pending()
    return pm


def group_may_be_declared(group: str) -> bool:
    """False only when no distribution that ``importlib.metadata`` can see declares
    entry points in ``group``: then pluggy's scan, which imports ``importlib.metadata``
    (and ``email``, ``csv``, ``zipfile`` with it) and parses every distribution's
    entry points, would find nothing, and skipping it saves a third of bnaudit's own
    start-up (docs/ci.md, "Start-up").

    Looks where ``importlib.metadata``'s path finder looks: the ``*.dist-info`` and
    ``*.egg-info`` directories (and a ``.egg``'s ``EGG-INFO``) of each ``sys.path``
    directory, for an ``entry_points.txt`` with a ``[group]`` line. Anything it cannot
    look through this way (a zip on ``sys.path``, another finder that lists
    distributions) answers True, so the full scan runs and no plugin is ever missed.
    """
    header = f"[{group}]"
    if any(hasattr(finder, "find_distributions") and finder is not importlib.machinery.PathFinder for finder in sys.meta_path):
        return True
    for entry in sys.path:
        base = os.fspath(entry) or "."
        try:
            with os.scandir(base) as children:
                names = [child.name for child in children]
        except NotADirectoryError:
            return True  # a zip (an .egg, a zipapp): let importlib.metadata read it
        except OSError:
            continue  # absent or unreadable: importlib.metadata finds nothing there either
        egg = base.lower().endswith(".egg")
        for name in names:
            low = name.lower()
            if low.endswith((".dist-info", ".egg-info")) or (egg and low == "egg-info"):
                try:
                    with open(os.path.join(base, name, "entry_points.txt"), encoding="utf-8", errors="replace") as lines:
                        if any(line.strip() == header for line in lines):
                            return True
                except OSError:
                    continue
    return False


def plugin_infos(pm: pluggy.PluginManager) -> list[PluginInfo]:
    """Each registered plugin with its version and the rules and reporters it adds,
    asked through pluggy's own hook callers (one plugin at a time), never by calling an
    implementation directly, so an implementation taking fewer arguments still works."""
    versions = {dist_name: dist.version for dist_name, dist in _entry_point_dists(pm)}
    infos: list[PluginInfo] = []
    for name, plugin in pm.list_name_plugin():
        if plugin is None:
            continue
        builtin = name in DEFAULT_PLUGINS
        info = PluginInfo(name, _own_version() if builtin else versions.get(name, "unknown"), builtin=builtin)
        info.rules = [r.code for r in _from_plugin(pm, "bnaudit_register_rules", plugin)]
        info.reporters = [r.name for r in _from_plugin(pm, "bnaudit_register_reporters", plugin)]
        infos.append(info)
    return infos


def _from_plugin(pm: pluggy.PluginManager, hook: str, plugin: object) -> list:
    """What ``plugin`` alone returns from a list-returning hook, called through pluggy."""
    others = [p for p in pm.get_plugins() if p is not plugin]
    return [item for batch in pm.subset_hook_caller(hook, remove_plugins=others)() for item in batch or []]


def collect_rules(pm: pluggy.PluginManager) -> dict[str, Rule]:
    """All rules by code, asked once per plugin through pluggy. A code or prefix claimed
    by two plugins is an error at start-up."""
    rules: dict[str, Rule] = {}
    owner_of_prefix: dict[str, str] = {}
    for name, plugin in pm.list_name_plugin():
        if plugin is None:
            continue
        builtin = name in DEFAULT_PLUGINS
        for item in _from_plugin(pm, "bnaudit_register_rules", plugin):
            if not isinstance(item, Rule):
                raise PluginError(f"plugin {name!r} registered {item!r}, which is not a bnaudit.Rule")
            prefix = item.code.rstrip("0123456789")
            if not builtin and prefix == BUILTIN_PREFIX:
                raise PluginError(f"plugin {name!r} uses the prefix {BUILTIN_PREFIX!r}, reserved for bnaudit's own rules")
            owner = "bnaudit" if builtin else name
            if owner_of_prefix.setdefault(prefix, owner) != owner:
                raise PluginError(
                    f"rule prefix {prefix!r} is claimed by both {owner_of_prefix[prefix]!r} and {owner!r}; "
                    "uninstall one or switch it off with -p no:NAME"
                )
            if item.code in rules:
                raise PluginError(f"rule {item.code} is registered twice (by {owner!r})")
            rules[item.code] = item
    return dict(sorted(rules.items()))


def collect_reporters(pm: pluggy.PluginManager) -> dict[str, Reporter]:
    reporters: dict[str, Reporter] = {}
    for batch in pm.hook.bnaudit_register_reporters():
        for reporter in batch or []:
            if reporter.name in reporters:
                raise PluginError(f"output format {reporter.name!r} is registered twice")
            reporters[reporter.name] = reporter
    return dict(sorted(reporters.items()))


def _entry_point_dists(pm: pluggy.PluginManager):
    for plugin, dist in pm.list_plugin_distinfo():
        yield pm.get_name(plugin), dist


def _own_version() -> str:
    from . import __version__

    return __version__
