"""Project settings: ``[tool.bnaudit]`` in pyproject.toml, or a bnaudit.toml, under the CLI flags.

The file is found as ruff and mypy find theirs: from the working directory upwards, the
first directory holding a ``bnaudit.toml`` (top-level keys), or a ``pyproject.toml``
with a ``[tool.bnaudit]`` table, wins; ``bnaudit.toml`` first when both sit in one
directory. ``--config FILE`` names the file, ``--isolated`` ignores every file. Globs
and data paths are relative to the directory of the file that holds them, so the
settings mean the same thing wherever bnaudit is started.

Every key is checked, because a misspelt key that is silently ignored is a CI gate that
silently lets things through: an unknown key, rule code or threshold is an error that
names it (exit code 2).

How a setting meets the command line: ``--select`` replaces ``select``; ``--ignore``
and ``--extend-select`` add to ``ignore`` and ``extend-select``; ``--fail-on``,
``--data`` and ``--batch-size`` win over ``fail-on``, ``data`` and ``batch-size``.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .findings import Severity
from .options import OptionsError, check_selection, check_setting, did_you_mean
from .rule import CODE_PATTERN
from .selection import Selection

if TYPE_CHECKING:
    import click

    from .engine import AuditOptions
    from .rule import Rule

PYPROJECT = "pyproject.toml"
BNAUDIT_TOML = "bnaudit.toml"
#: Keys a config may hold besides per-rule threshold tables (``[tool.bnaudit.bn301]``).
KNOWN_KEYS = ("select", "ignore", "extend-select", "per-file-ignores", "fail-on", "data", "batch-size")


class ConfigError(OptionsError):
    """The config file is missing, not TOML, or says something bnaudit does not know."""


@dataclass
class Config:
    """The settings of one file (or none), resolved against the directory they came from."""

    #: The file the settings came from; None when there was none or ``--isolated``.
    source: Path | None = None
    #: Where ``per-file-ignores`` and ``data`` globs are anchored.
    root: Path = field(default_factory=Path.cwd)
    select: tuple[str, ...] | None = None
    ignore: tuple[str, ...] = ()
    extend_select: tuple[str, ...] = ()
    per_file_ignores: dict[str, tuple[str, ...]] = field(default_factory=dict)
    fail_on: Severity | None = None
    #: glob -> data file (absolute), in file order: the first matching glob wins.
    data: dict[str, str] = field(default_factory=dict)
    batch_size: int | None = None
    #: rule code -> {threshold name: value}, checked against the rules in :meth:`validate`.
    thresholds: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return str(self.source) if self.source else "no config file"

    def apply(self, options: "AuditOptions", given: set[str]) -> "AuditOptions":
        """``options`` built from the flags, completed by this config where no flag was ``given``."""
        flags = options.selection
        select = flags.select if "select" in given or self.select is None else self.select
        runtime = options.runtime
        if self.batch_size is not None and "batch_size" not in given and runtime.batch_size is None:
            runtime = runtime.replace(batch_size=self.batch_size)
        settings = {f"{code.lower()}.{key}": value for code, table in self.thresholds.items() for key, value in table.items()}
        return dataclasses.replace(
            options,
            selection=Selection(select, self.ignore + flags.ignore, self.extend_select + flags.extend_select),
            fail_on=self.fail_on if self.fail_on is not None and "fail_on" not in given else options.fail_on,
            settings={**settings, **options.settings},
            runtime=runtime,
        )

    def options_for(self, path: str | Path, options: "AuditOptions") -> "AuditOptions":
        """The options for one model: its ``per-file-ignores`` added, its ``data`` when no ``--data``."""
        ignores = tuple(code for pattern, codes in self.per_file_ignores.items() if self.matches(pattern, path) for code in codes)
        data = options.data or next((d for pattern, d in self.data.items() if self.matches(pattern, path) and not options.static), None)
        if not ignores and data == options.data:
            return options
        selection = options.selection
        return dataclasses.replace(
            options,
            selection=Selection(selection.select, selection.ignore + ignores, selection.extend_select),
            data=data,
        )

    def matches(self, pattern: str, path: str | Path) -> bool:
        """fnmatch-style: ``*`` also crosses ``/``; a pattern without ``/`` matches the file name too."""
        resolved = Path(path).resolve()
        try:
            relative = resolved.relative_to(self.root).as_posix()
        except ValueError:
            relative = resolved.as_posix()
        if fnmatch.fnmatchcase(relative, pattern):
            return True
        return "/" not in pattern and fnmatch.fnmatchcase(resolved.name, pattern)

    def validate(self, rules: "dict[str, Rule]") -> None:
        """Every code must match a rule and every threshold must be one its rule declares
        (the checks :mod:`bnaudit.options` applies to every way in), named by file and key."""
        lists = {"select": self.select or ("ALL",), "ignore": self.ignore, "extend-select": self.extend_select}
        lists.update({f"per-file-ignores {pattern!r}": codes for pattern, codes in self.per_file_ignores.items()})
        try:
            if self.select is not None and not self.select:
                raise OptionsError("select = [] selects no rule (leave it out to run every rule, or name codes)")
            for key, codes in lists.items():
                if codes:
                    check_selection(Selection(tuple(codes)), rules, keys=(f"{key}:", "", ""))
            for code, table in self.thresholds.items():
                for key, value in table.items():
                    check_setting(rules, code, key, value, where=f"[{code.lower()}]: ")
        except OptionsError as exc:
            raise ConfigError(f"{self.name}: {exc}") from None


def load(config_file: str | None = None, isolated: bool = False, start: Path | None = None) -> Config:
    """The config for this run: ``--config FILE``, else the nearest file above ``start`` (cwd)."""
    if isolated:
        if config_file:
            raise ConfigError("--config and --isolated contradict each other; give one")
        return Config()
    if config_file:
        path = Path(config_file)
        if not path.is_file():
            raise ConfigError(f"--config {config_file}: no such file")
        table = _read(path).get("tool", {}).get("bnaudit") if path.name == PYPROJECT else _read(path)
        if table is None:
            raise ConfigError(f"{path}: no [tool.bnaudit] table")
        return parse(table, path)
    found = find(start or Path.cwd())
    return parse(found[1], found[0]) if found else Config()


def find(start: Path) -> tuple[Path, dict[str, Any]] | None:
    """The first bnaudit.toml, or pyproject.toml with ``[tool.bnaudit]``, from ``start`` upwards."""
    for directory in [start.resolve(), *start.resolve().parents]:
        candidate = directory / BNAUDIT_TOML
        if candidate.is_file():
            return candidate, _read(candidate)
        candidate = directory / PYPROJECT
        if candidate.is_file():
            table = _read(candidate).get("tool", {}).get("bnaudit")
            if table is not None:
                return candidate, table
    return None


def parse(table: Any, source: Path) -> Config:
    """Check and convert one ``[tool.bnaudit]`` table (or a bnaudit.toml document)."""
    name = str(source)
    if not isinstance(table, dict):
        raise ConfigError(f"{name}: [tool.bnaudit] must be a table")
    root = source.resolve().parent
    config = Config(source=source, root=root)
    for key, value in table.items():
        if key in ("select", "ignore", "extend-select"):
            setattr(config, key.replace("-", "_"), _codes(name, key, value))
        elif key == "per-file-ignores":
            config.per_file_ignores = {str(p): _codes(name, f"{key} {p!r}", c) for p, c in _table(name, key, value).items()}
        elif key == "fail-on":
            try:
                config.fail_on = Severity.parse(str(value))
            except ValueError as exc:
                raise ConfigError(f"{name}: fail-on: {exc}") from None
        elif key == "data":
            config.data = {str(p): _data_path(name, root, p, d) for p, d in _table(name, key, value).items()}
        elif key == "batch-size":
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name}: batch-size must be a positive integer, not {value!r}")
            config.batch_size = value
        elif CODE_PATTERN.match(key.upper()) and isinstance(value, dict):
            config.thresholds[key.upper()] = value
        elif key == "tool" and not name.endswith("pyproject.toml"):  # [tool.bnaudit...] copied from pyproject.toml
            raise ConfigError(f"{name}: a [tool.bnaudit] table belongs in pyproject.toml; here the keys and tables stand alone ([bn205], not [tool.bnaudit.bn205])")
        else:
            raise ConfigError(f"{name}: unknown key {key!r} in [tool.bnaudit]{did_you_mean(key, KNOWN_KEYS)} (known: {', '.join(KNOWN_KEYS)}, and a table per rule code)")
    return config


def config_options(command):
    """``--config FILE`` and ``--isolated``, for the commands that read the project's settings."""
    import click

    command = click.option("--isolated", is_flag=True, help="Ignore every config file.")(command)
    return click.option(
        "--config", "config_file", metavar="FILE", help="Read settings from FILE (default: the nearest bnaudit.toml or pyproject.toml [tool.bnaudit])."
    )(command)


def given_on_command_line(ctx: "click.Context") -> set[str]:
    """Names of the parameters the user set (on the command line or through the environment)."""
    import click

    return {name for name in ctx.params if ctx.get_parameter_source(name) not in (None, click.core.ParameterSource.DEFAULT)}


def _read(path: Path) -> dict[str, Any]:
    import tomllib  # only where a config file is found: its regular expressions cost start-up

    try:
        with open(path, "rb") as handle:
            return tomllib.load(handle)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc})") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot be read ({exc.strerror})") from None


def _codes(name: str, key: str, value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{name}: {key} must be a list of rule codes or prefixes, like [\"BN1\", \"BN201\"]")
    return tuple(v.strip().upper() for v in value)


def _table(name: str, key: str, value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ConfigError(f"{name}: {key} must be a table of \"glob\" = value")
    return value


def _data_path(name: str, root: Path, pattern: str, value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{name}: data {pattern!r} must be a path to the data for those models")
    if ":" in value and not os.path.exists(root / value):
        return value  # module:function, as --data takes it
    if not (root / value).exists():
        raise ConfigError(f"{name}: data {pattern!r}: {root / value} does not exist")
    return str(root / value)
