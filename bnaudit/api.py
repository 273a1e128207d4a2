"""The Python entry point: ``bnaudit.audit(path)`` for code that wants results, not text."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

from .engine import AuditOptions, Auditor
from .findings import Severity
from .options import runtime_options
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
    """Audit one model file and return its :class:`AuditResult`.

    ``select``/``ignore`` take codes or prefixes as on the command line; ``settings``
    takes rule thresholds (``{"bn301.drift-score": 1.0}``); ``runtime`` keywords are the
    fields of :class:`bnaudit.options.RuntimeOptions`, ``StatisticsOptions`` and
    ``InferenceOptions`` (``batch_size=64``, ``devices="CPU:1"``, ``seed=3``...).

    Raises :class:`bnaudit.options.OptionsError` (a ``ValueError``) naming the key for an
    unknown keyword, a value of the wrong type, a code or prefix that matches no rule, or
    a setting no rule declares: the checks the command line and the config file get.
    A model that cannot be read or a rule that fails never raises: it is in
    ``result.errors`` and ``result.outcomes``.
    """
    options = AuditOptions(
        selection=Selection(_codes(select), _codes(ignore)),
        settings=dict(settings or {}),
        data=data,
        inference=inference,
        runtime=runtime_options(runtime),
        plugins=tuple(plugins),
        fail_on=Severity.ERROR,
    )
    auditor = Auditor(options)
    auditor.check_options()
    return auditor.audit(path)


def _codes(values: Iterable[str]) -> tuple[str, ...]:
    if isinstance(values, str):  # audit(p, select="BN1") means one code, not its letters
        values = [values]
    return tuple(code.strip().upper() for code in values)
