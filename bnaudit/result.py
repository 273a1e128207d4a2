"""What one audit of one model produced, built before anything is rendered.

The engine records one :class:`RuleOutcome` per selected rule: it *ran*, was
*skipped* (and why), or *failed* (and with which error). Every report reads what ran
and what did not from these outcomes, so a rule that did not run is never shown as
passed, and a baseline judges staleness only against rules that ran.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

from .findings import Finding, Severity
from .measurements import Measured, Measurement, M, of_kind, to_json


@dataclass
class ModelError:
    """A failure that stopped part of an audit: the model could not be read, or a rule failed.

    ``rule`` is the rule that met the failure first (empty when the model itself was
    unreadable); ``rules`` every rule it stopped, that one first. One cause shared by
    several rules (the model cannot be loaded with Keras, ``--data`` does not fit) is
    one error naming all of them, never one copy per rule.
    """

    message: str
    rule: str = ""
    hint: str = ""
    rules: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        # Library messages (Keras, h5py) span lines; every error is one line on stderr.
        self.message = " ".join(self.message.split())
        self.hint = " ".join(self.hint.split())
        if self.rule and self.rule not in self.rules:
            self.rules.insert(0, self.rule)

    @property
    def where(self) -> str:
        """``"BN301, BN302"``: the rules it stopped, for one-line messages."""
        return ", ".join(self.rules)

    @property
    def label(self) -> str:
        """``"rule BN301"`` or ``"rules BN301, BN302"``: what it stopped; empty for an unreadable model."""
        return f"rule{'s' if len(self.rules) > 1 else ''} {self.where}" if self.rules else ""

    def to_dict(self) -> dict[str, Any]:
        return {"rule": self.rule, "rules": list(self.rules), "message": self.message, "hint": self.hint}


@dataclass
class SkippedRule:
    """A selected rule that did not run, and why (e.g. it needs ``--data``)."""

    code: str
    reason: str

    def to_dict(self) -> dict[str, str]:
        return {"code": self.code, "reason": self.reason}


class Status(str, enum.Enum):
    """What became of one selected rule on one model."""

    RAN = "ran"
    SKIPPED = "skipped"
    FAILED = "failed"


@dataclass
class RuleOutcome:
    """One selected rule on one model: ran, skipped (``reason``) or failed (``error``)."""

    code: str
    status: Status
    reason: str = ""
    error: ModelError | None = None
    #: The settings the rule applied (defaults overridden by the config or ``bnaudit.audit(settings=...)``), for a
    #: rule that declares some and ran; reports draw these thresholds.
    settings: dict[str, Any] = field(default_factory=dict)

    def to_dict(self, errors: list[ModelError]) -> dict[str, Any]:
        """JSON form; a failure points into the model's ``errors`` list by index."""
        entry: dict[str, Any] = {"code": self.code, "status": self.status.value}
        if self.status is Status.SKIPPED:
            entry["reason"] = self.reason
        if self.error is not None:
            entry["error"] = next(i for i, e in enumerate(errors) if e is self.error)
        if self.settings:
            entry["settings"] = dict(self.settings)
        return entry


@dataclass
class AuditResult:
    """Everything bnaudit learned about one model file."""

    path: str
    findings: list[Finding] = field(default_factory=list)
    errors: list[ModelError] = field(default_factory=list)
    #: One per selected rule, in the order the rules were checked.
    outcomes: list[RuleOutcome] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    #: What the rules measured, typed (:mod:`bnaudit.measurements`) or a plugin's plain
    #: :class:`~bnaudit.measurements.Measurement`, in the order measured.
    measurements: list[Measured | Measurement] = field(default_factory=list)
    #: Format, Keras version that wrote the file, layer counts, durations.
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def unreadable(self) -> bool:
        return any(not e.rule for e in self.errors)

    @property
    def rules_run(self) -> list[str]:
        """Codes of the rules that ran to the end on this model (not skipped, not failed)."""
        return [o.code for o in self.outcomes if o.status is Status.RAN]

    @property
    def skipped(self) -> list[SkippedRule]:
        return [SkippedRule(o.code, o.reason) for o in self.outcomes if o.status is Status.SKIPPED]

    def skipped_by_reason(self, stopped: bool = True) -> list[tuple[str, list[str]]]:
        """(reason, codes) of the skipped rules, sorted by reason; ``stopped=False`` leaves
        out the rules an error stopped (that error names them already)."""
        named = set() if stopped else {code for error in self.errors for code in error.rules if code != error.rule}
        grouped: dict[str, list[str]] = {}
        for item in self.skipped:
            if item.code not in named:
                grouped.setdefault(item.reason, []).append(item.code)
        return sorted(grouped.items())

    @property
    def failed(self) -> list[RuleOutcome]:
        return [o for o in self.outcomes if o.status is Status.FAILED]

    def measured(self, kind: type[M]) -> list[M]:
        """The measurements of one kind (``result.measured(LayerDrift)``), in order."""
        return of_kind(self.measurements, kind)

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
            "outcomes": [o.to_dict(self.errors) for o in self.outcomes],
            "measurements": to_json(self.measurements),
            "meta": self.meta,
        }
