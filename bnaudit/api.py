"""The Python entry point: ``bnaudit.audit(path)`` for code that wants results, not text."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

from .engine import AuditOptions, Auditor
from .findings import Severity
from .result import AuditResult
from .selection import Selection


def audit(
    path: str | Path,
    *,
    select: Iterable[str] = ("ALL",),
    ignore: Iterable[str] = (),
    data: str | None = None,
    inference: bool = False,
    settings: dict[str, Any] | None = None,
    plugins: Iterable[str] = (),
    **runtime: Any,
) -> AuditResult:
    """Audit one model file and return its :class:`AuditResult` (never raises for a bad file).

    ``select``/``ignore`` take codes or prefixes as on the command line; ``runtime``
    keywords (``batch_size=64``...) go to the TensorFlow-backed rules.
    """
    options = AuditOptions(
        selection=Selection(tuple(select), tuple(ignore)),
        settings=dict(settings or {}),
        data=data,
        inference=inference,
        runtime=runtime,
        plugins=tuple(plugins),
        fail_on=Severity.ERROR,
    )
    return Auditor(options).audit(path)


def fix(path: str | Path, out: str | Path, **options: Any):
    """Write a fixed copy of ``path`` to ``out`` and return its :class:`~bnaudit.fixes.FixReport`.

    The keywords are those of :func:`bnaudit.fixes.fix` (``unbake``, ``absorb_bias``,
    ``fold``, ``recalibrate``, ``all_fixes``, ``data``, ``stats``...); ``report.changes``
    is the change list. Raises :class:`~bnaudit.loaders.LoadError` for bad input, with
    nothing written. Imported lazily so ``import bnaudit`` stays light.
    """
    from .fixes import fix as run

    return run(path, out, **options)
