"""Rules: what a check is, how it declares what it needs, and where its docs come from.

A rule is a plain function decorated with :func:`rule`. Its docstring is its user
documentation, in ruff's shape (``## What it does``, ``## Why is this bad?``,
``## Example``, ``## Use instead``), so the text a user reads with ``bnaudit rules CODE``
lives next to the code that enforces it.
"""

from __future__ import annotations

import inspect
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping

from .findings import Finding, Severity
from .measurements import Measured, Measurement

if TYPE_CHECKING:
    from .context import RuleContext

CODE_PATTERN = re.compile(r"^[A-Z]{1,4}[0-9]{3}$")
NAME_PATTERN = re.compile(r"^[a-z0-9]+(-[a-z0-9]+)*$")
DOC_SECTIONS = ("What it does", "Why is this bad?", "Example", "Use instead")

#: What a rule may need. "graph", "weights" and "optimizer" (the optimizer state saved
#: with the model) are static (no TensorFlow); "base" is a second, earlier checkpoint
#: (``bnaudit diff BASE TUNED`` runs these rules, ``check`` does not); "data" needs
#: ``--data`` or ``--stats``; "runtime" loads the model with Keras.
NEEDS = ("graph", "weights", "optimizer", "base", "data", "runtime")
#: The needs of the static rules, the ones ``--static`` runs.
STATIC_NEEDS = frozenset({"graph", "weights", "optimizer", "base"})

CheckFunction = Callable[["RuleContext"], Iterable["Finding | Measured | Measurement | Note"]]


class SkipRule(Exception):
    """Raised by a check that cannot judge this model (``raise SkipRule("needs --data")``).

    The engine records the rule as skipped with the message as the reason; findings the
    rule yielded before raising are kept.
    """


@dataclass(frozen=True)
class Note:
    """A remark about the whole audit of one model (which devices ran...), shown once."""

    text: str


@dataclass(frozen=True)
class Rule:
    code: str
    name: str
    summary: str
    severity: Severity
    check: CheckFunction = field(repr=False, compare=False)
    needs: frozenset[str] = frozenset({"graph"})
    docs: str = ""
    help_uri: str = ""
    #: Thresholds the rule reads with ``ctx.setting(key)``, with their defaults. They are
    #: the keys a config may set (``[tool.bnaudit.bn301]``); any other key is an error.
    settings: Mapping[str, Any] = field(default_factory=dict, compare=False)
    #: The values a numeric threshold may take, ``(lowest, highest)`` inclusive, None for
    #: no bound (a fraction: ``(0, 1)``). Every numeric threshold must be finite.
    ranges: Mapping[str, tuple[float | None, float | None]] = field(default_factory=dict, compare=False)

    @property
    def needs_label(self) -> str:
        """What the rule needs, as ``bnaudit rules`` and the README's catalog show it: the
        ``needs`` names joined by "+", without "graph" where there is more (every rule
        reads the graph): ``graph``, ``weights``, ``data+weights``, ``runtime``."""
        return "+".join(sorted(self.needs - {"graph"})) or "graph"

    @property
    def static(self) -> bool:
        """True when the rule reads only the saved graph and weights (no TensorFlow)."""
        return self.needs <= STATIC_NEEDS

    def __post_init__(self) -> None:
        if not CODE_PATTERN.match(self.code):
            raise ValueError(f"rule code {self.code!r} must match {CODE_PATTERN.pattern}")
        if not NAME_PATTERN.match(self.name):
            raise ValueError(f"rule name {self.name!r} of {self.code} must be kebab-case")
        unknown = set(self.needs) - set(NEEDS)
        if unknown:
            raise ValueError(f"rule {self.code} needs unknown capabilities {sorted(unknown)}")
        stray = set(self.ranges) - set(self.settings)
        if stray:
            raise ValueError(f"rule {self.code} gives ranges to thresholds it does not declare: {sorted(stray)}")

    def doc_sections(self) -> dict[str, str]:
        """The docstring split into its ``## Heading`` sections."""
        sections: dict[str, str] = {}
        current = None
        for line in self.docs.splitlines():
            if line.startswith("## "):
                current = line[3:].strip()
                sections[current] = ""
            elif current is not None:
                sections[current] += line + "\n"
        return {k: v.strip() for k, v in sections.items()}


def rule(
    code: str,
    name: str,
    severity: Severity,
    *,
    needs: Iterable[str] = ("graph",),
    help_uri: str = "",
    settings: Mapping[str, Any] | None = None,
    ranges: Mapping[str, tuple[float | None, float | None]] | None = None,
) -> Callable[[CheckFunction], Rule]:
    """Turn a check function into a :class:`Rule`; the first docstring line is its summary.

    ``settings`` maps each threshold to its default; ``ranges`` bounds numeric ones
    (``{"agreement": (0, 1)}``), so that a config saying ``agreement = 80`` is an error
    rather than a gate that never fails.
    """

    def decorate(func: CheckFunction) -> Rule:
        doc = inspect.cleandoc(func.__doc__ or "")
        summary, _, body = doc.partition("\n")
        return Rule(
            code=code,
            name=name,
            summary=summary.strip(),
            severity=severity,
            check=func,
            needs=frozenset(needs),
            docs=body.strip(),
            help_uri=help_uri,
            settings=dict(settings or {}),
            ranges=dict(ranges or {}),
        )

    return decorate


def setting_key(rule: Rule, name: str) -> str:
    """The key a config or ``bnaudit.audit(settings=...)`` gives a rule's setting: ``"bn301.drift-score"``."""
    return f"{rule.code.lower()}.{name}"


def effective_settings(rule: Rule, settings: Mapping[str, Any]) -> dict[str, Any]:
    """The values ``rule`` applies: each declared setting's default, overridden by the
    run's ``settings`` (the config, ``bnaudit.audit(settings=...)``). Recorded with the rule's outcome, so
    reports show the threshold that was applied, not the default."""
    return {name: settings.get(setting_key(rule, name), default) for name, default in rule.settings.items()}
