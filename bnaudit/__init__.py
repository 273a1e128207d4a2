"""bnaudit: audit the BatchNormalization layers of saved Keras models.

The public face for users and plugin authors: ``audit()``, ``fix()``, the ``hookimpl`` marker,
and the value types rules and reporters use. Importing bnaudit never imports
TensorFlow or Keras.
"""

from __future__ import annotations

__version__ = "0.1.0"

from .api import audit, fix
from .findings import ExitCode, Finding, Severity
from .hookspecs import hookimpl
from .reporters import Report, Reporter
from .result import AuditResult
from .rule import Rule, rule

__all__ = [
    "AuditResult",
    "ExitCode",
    "Finding",
    "Report",
    "Reporter",
    "Rule",
    "Severity",
    "audit",
    "fix",
    "hookimpl",
    "rule",
    "__version__",
]
