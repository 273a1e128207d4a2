"""What one audit of one model produced, built before anything is rendered."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .findings import Finding, Severity


@dataclass
class ModelError:
    """A failure that stopped part of an audit: the model could not be read, or a rule crashed.

    ``rule`` is empty when the model itself was unreadable.
    """

    message: str
    rule: str = ""
    hint: str = ""

    def __post_init__(self) -> None:
        # Library messages (Keras, h5py) span lines; every error is one line on stderr.
        self.message = " ".join(self.message.split())
        self.hint = " ".join(self.hint.split())

    def to_dict(self) -> dict[str, str]:
        return {"rule": self.rule, "message": self.message, "hint": self.hint}


@dataclass
class SkippedRule:
    """A selected rule that did not run, and why (e.g. it needs ``--data``)."""

    code: str
    reason: str

    def to_dict(self) -> dict[str, str]:
        return {"code": self.code, "reason": self.reason}


@dataclass
class AuditResult:
    """Everything bnaudit learned about one model file."""

    path: str
    findings: list[Finding] = field(default_factory=list)
    errors: list[ModelError] = field(default_factory=list)
    skipped: list[SkippedRule] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    rules_run: list[str] = field(default_factory=list)
    #: Per-layer numbers measured by data-driven and inference rules, keyed by topic.
    measurements: dict[str, Any] = field(default_factory=dict)
    #: Format, Keras version that wrote the file, layer counts, durations.
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def unreadable(self) -> bool:
        return any(not e.rule for e in self.errors)

    def counts(self) -> dict[str, int]:
        counts = {s.label: 0 for s in Severity}
        for f in self.findings:
            counts[f.severity.label] += 1
        return counts

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "findings": [f.to_dict() for f in self.findings],
            "errors": [e.to_dict() for e in self.errors],
            "skipped": [s.to_dict() for s in self.skipped],
            "notes": list(self.notes),
            "rules_run": list(self.rules_run),
            "measurements": self.measurements,
            "meta": self.meta,
        }
