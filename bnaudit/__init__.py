"""bnaudit: audit the BatchNormalization layers of saved Keras models.

The public face for users and plugin authors: ``audit()``, ``audit_many()``, ``fix()``, the ``hookimpl`` marker,
and the value types rules and reporters use. Importing bnaudit never imports
TensorFlow or Keras.
"""

from __future__ import annotations

import os

__version__ = "0.1.0"

from .api import audit, audit_many
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
    "audit_many",
    "fix",
    "hookimpl",
    "rule",
    "__version__",
]


def fix(path: "str | os.PathLike[str]", out: "str | os.PathLike[str]", **options: object):
    """Write a fixed copy of ``path`` to ``out`` and return its :class:`~bnaudit.fixes.FixReport`.

    The keywords are those of :func:`bnaudit.fixes.fix` (``unbake``, ``absorb_bias``,
    ``fold``, ``recalibrate``, ``all_fixes``, ``data``, ``stats``...); ``report.changes``
    is the change list. Raises :class:`~bnaudit.loaders.LoadError` (or its subclasses
    ``FixError``, ``DataError``) for bad input and :class:`~bnaudit.options.OptionsError`
    for a keyword of the wrong type, with nothing written. Imported lazily so ``import bnaudit`` stays light.
    """
    from .fixes import fix as run

    return run(path, out, **options)
