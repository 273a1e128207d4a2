"""Reporters render a finished run; each output format is a plugin.

A reporter gets a :class:`Report` (all results plus the rules that produced them) and
returns the whole document as text, so the CLI can write it atomically: a failed render
never leaves a half-written file.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

from ..findings import Severity

if TYPE_CHECKING:
    from ..result import AuditResult
    from ..rule import Rule


class RenderError(Exception):
    """A report could not be rendered (e.g. a broken ``--templates`` override): exit code 2."""


@dataclass
class Report:
    results: "list[AuditResult]"
    rules: "dict[str, Rule]"
    fail_on: Severity = Severity.ERROR
    version: str = ""
    #: Colour for terminal output; reporters writing files ignore it.
    color: bool = False
    #: Format-specific options (``--templates``, ``--timestamp``...).
    options: dict[str, Any] = field(default_factory=dict)
    #: The plugin manager, for reporters that call hooks (the HTML one).
    plugin_manager: Any = None

    def summary(self) -> dict[str, Any]:
        counts = {s.label: 0 for s in Severity}
        for result in self.results:
            for label, n in result.counts().items():
                counts[label] += n
        return {
            "models": len(self.results),
            "findings": sum(counts.values()),
            "by_severity": counts,
            "unreadable": sum(1 for r in self.results if r.unreadable),
            "rule_errors": sum(1 for r in self.results for e in r.errors if e.rule),
        }


@dataclass(frozen=True)
class Reporter:
    name: str
    description: str
    render: Callable[[Report], str]
    #: Suggested file suffix for ``-o``.
    suffix: str = ".txt"


def common_skipped(skipped: "list[list[tuple[str, list[str]]]]") -> list[tuple[str, list[str]]]:
    """The (reason, codes) that every one of the models' ``skipped_by_reason()`` lists holds:
    said once for the run, not on every model (e.g. ``needs --data`` in a static check)."""
    if not skipped:
        return []
    return [item for item in skipped[0] if all(item in other for other in skipped[1:])]
