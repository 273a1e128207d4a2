"""The Python entry points: ``bnaudit.audit(path)`` and ``bnaudit.audit_many(paths)`` for
code that wants results, not text.

A model file is hostile input, and a native library (libhdf5) that crashes or loops on
one would take the caller's process with it; so, by default, the models are read in a
child process, as the command line reads them (:mod:`bnaudit.parallel`). ``in_process=True``
trades that for speed on files you trust.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterable

from .engine import AuditOptions, Auditor, discover
from .findings import Severity
from .options import RUNTIME_KEYS, OptionsError, runtime_options
from .parallel import audit_models
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
    in_process: bool = False,
    **runtime: Any,
) -> AuditResult:
    """Audit one model file and return its :class:`AuditResult`.

    ``select``/``ignore`` take codes or prefixes as on the command line; ``settings``
    takes rule thresholds (``{"bn301.drift-score": 1.0}``); ``runtime`` keywords are the
    fields of :class:`bnaudit.options.RuntimeOptions`, ``StatisticsOptions`` and
    ``InferenceOptions`` (``batch_size=64``, ``devices="CPU:1"``, ``seed=3``...).

    The model is read in a child process (forked, or from a clean 'forkserver' process
    where this one runs TensorFlow), under the command line's limits on time and memory
    (docs/security.md): a file that crashes or hangs libhdf5 costs that child, and the
    result holds one error, ``the process auditing this model died (a crash in a native
    library)``. ``in_process=True`` reads it in the caller's process instead: faster
    (no child to start; with ``data`` or ``inference``, TensorFlow already imported here
    is not imported again), for files you trust.

    Raises :class:`bnaudit.options.OptionsError` (a ``ValueError``) naming the key for an
    unknown keyword, a value of the wrong type, a code or prefix that matches no rule, or
    a setting no rule declares: the checks the command line and the config file get;
    and for a ``path`` that is not one path (a list: :func:`audit_many` takes several).
    A model that cannot be read or a rule that fails never raises: it is in
    ``result.errors`` and ``result.outcomes``.
    """
    if not isinstance(path, (str, os.PathLike)):
        raise OptionsError(f"path: expected one model's path, got {type(path).__name__} (audit_many() takes several)")
    auditor = _auditor(select, ignore, data, inference, settings, plugins, runtime=runtime)
    if in_process:
        return auditor.audit(path)
    return audit_models([(Path(path), auditor.options)], 1, auditor, isolate=True)[0]


def audit_many(paths: Iterable[str | Path], *, jobs: int = 1, in_process: bool = False, **options: Any) -> list[AuditResult]:
    """Audit model files, directories (recursing into ``*.keras``, ``*.h5``) and globs, as
    ``bnaudit check PATHS -j JOBS`` does; one :class:`AuditResult` per model.

    ``options`` are :func:`audit`'s keywords. A path that names no model (missing, an
    empty directory, a glob matching nothing) comes first, as a result holding the error;
    then the models, in the order found. Models are read in ``jobs`` child processes
    (0: one per CPU), so a model that crashes a native library costs its own result
    only; ``in_process=True`` reads them all here (and takes no ``jobs``).

    Raises :class:`bnaudit.options.OptionsError` as :func:`audit` does, and for
    ``jobs`` below 0 or above 1 with ``in_process=True``.
    """
    if isinstance(paths, (str, Path)):  # audit_many("models/") means one path, not its letters
        paths = [paths]
    if not isinstance(jobs, int) or jobs < 0:
        raise OptionsError(f"jobs: expected a count of processes (0: one per CPU), got {jobs!r}")
    if in_process and jobs != 1:
        raise OptionsError("jobs: in_process=True audits in this process; give jobs=1 or in_process=False")
    own = {key: options.pop(key, default) for key, default in _DEFAULTS.items()}
    auditor = _auditor(**own, runtime=options)  # the rest are runtime keywords, checked there
    files, problems = discover(paths)
    if in_process:
        return problems + [auditor.audit(path) for path in files]
    return problems + audit_models([(path, auditor.options) for path in files], jobs, auditor, isolate=True)


#: :func:`audit`'s keywords that are not runtime options, with their defaults.
_DEFAULTS: dict[str, Any] = {"select": ("ALL",), "ignore": (), "data": None, "inference": False, "settings": None, "plugins": ()}


#: Every keyword :func:`audit` and :func:`audit_many` take: what a misspelt one is matched against.
_KEYWORDS = (*_DEFAULTS, "in_process", "jobs", *RUNTIME_KEYS)


def _auditor(select, ignore, data, inference, settings, plugins, runtime) -> Auditor:
    """The run's :class:`Auditor`, its options checked as the command line's are."""
    options = AuditOptions(
        selection=Selection(_codes(select, "select", ("ALL",)), _codes(ignore, "ignore")),
        settings=dict(settings or {}),
        data=data,
        inference=inference,
        runtime=runtime_options(runtime, suggest=_KEYWORDS),
        plugins=tuple(plugins),
        fail_on=Severity.ERROR,
    )
    auditor = Auditor(options)
    auditor.check_options()
    return auditor


def _codes(values: "Iterable[str] | str | None", key: str, default: tuple[str, ...] = ()) -> tuple[str, ...]:
    """Rule codes as the command line takes them: one string (``"BN1"``, ``"BN1,BN2"``)
    or an iterable of them, commas splitting as in ``--select BN1,BN2``; None for the
    default. Raises :class:`OptionsError` naming ``key`` for anything else."""
    if values is None:
        return default
    if isinstance(values, str):  # audit(p, select="BN1") means one code, not its letters
        values = [values]
    try:
        items = list(values)
    except TypeError:
        raise OptionsError(f"option {key!r} = {values!r}: expected rule codes (a string or a list of strings)") from None
    wrong = [item for item in items if not isinstance(item, str)]
    if wrong:
        raise OptionsError(f"option {key!r}: {wrong[0]!r} is not a rule code (a string like 'BN101' or 'BN1')")
    return tuple(code.strip().upper() for item in items for code in item.split(",") if code.strip())