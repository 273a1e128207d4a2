"""The values every part of bnaudit passes around: severities, findings, exit codes.

Kept free of any I/O so that rules, reporters and third-party plugins can import them
cheaply; results are built as plain dataclasses before any report is rendered.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any


class Severity(enum.IntEnum):
    """How bad a finding is; ordered so that thresholds compare with ``>=``."""

    INFO = 1
    WARNING = 2
    ERROR = 3

    @classmethod
    def parse(cls, text: str) -> "Severity":
        try:
            return cls[text.strip().upper()]
        except KeyError:
            choices = ", ".join(s.label for s in cls)
            raise ValueError(f"unknown severity {text!r} (choose from {choices})") from None

    @property
    def label(self) -> str:
        return self.name.lower()

    def __str__(self) -> str:  # f"{finding.severity}" reads "error", as the reports write it
        return self.label


class ExitCode(enum.IntEnum):
    """Process exit codes, the ruff/bandit convention (pytest's ``ExitCode`` shape)."""

    OK = 0
    FINDINGS = 1
    ERROR = 2


@dataclass
class Finding:
    """One problem found in one model, at one layer (or at the model when ``layer`` is empty).

    ``details`` holds the numbers behind the verdict so that reports can show them and
    machines can re-check them; it must stay JSON-serialisable.
    """

    code: str
    name: str
    severity: Severity
    message: str
    model: str
    layer: str = ""
    details: dict[str, Any] = field(default_factory=dict)
    fix: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "code": self.code,
            "name": self.name,
            "severity": self.severity.label,
            "message": self.message,
            "layer": self.layer,
            "details": self.details,
            "fix": self.fix,
        }
