"""JSON output, a documented and versioned schema (``docs/json-schema.json``).

Version 1: ``{"version": 1, "bnaudit": ..., "models": [{"path", "findings": [{"code",
"name", "severity", "message", "layer", "details", "fix"}], "errors", "skipped", ...}],
"summary"}``. Fields are only ever added within a version.

Durations (``meta.seconds``, ``meta.rule_seconds``, any ``seconds`` in measurements) are
left out unless ``--timestamp`` asks for them, so the same models give byte-identical
documents. A document reads back
into results with :func:`results_from_document` (``bnaudit report`` re-renders from it).
"""

from __future__ import annotations

import json
import math
from typing import Any

from ..findings import Finding, Severity
from ..hookspecs import hookimpl
from ..measurements import from_json
from ..result import AuditResult, ModelError, RuleOutcome, Status
from . import Report, Reporter

SCHEMA_VERSION = 1
#: Keys whose values differ from run to run; only written with ``--timestamp``.
TIMING_KEYS = ("seconds", "rule_seconds")


def without_timings(value: Any) -> Any:
    """``value`` minus durations anywhere inside, so reports without --timestamp are identical."""
    if isinstance(value, dict):
        return {k: without_timings(v) for k, v in value.items() if k not in TIMING_KEYS}
    if isinstance(value, list):
        return [without_timings(v) for v in value]
    return value


def as_document(report: Report) -> dict[str, Any]:
    models = [result.to_dict() for result in report.results]
    if not report.options.get("timestamp"):
        for model in models:
            model["meta"] = without_timings(model["meta"])
            model["measurements"] = without_timings(model["measurements"])
    document = {
        "version": SCHEMA_VERSION,
        "bnaudit": report.version,
        "fail_on": report.fail_on.label,
        "models": models,
        "summary": report.summary(),
    }
    if report.options.get("timestamp"):
        document["generated"] = report.options["timestamp"]
    return document


def render(report: Report) -> str:
    return dumps(as_document(report))


def dumps(document: Any) -> str:
    """Strict JSON: a NaN or infinity (a model config may hold one) becomes a string."""
    return json.dumps(_finite(document), indent=2, sort_keys=False, allow_nan=False) + "\n"


def _finite(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(item) for item in value]
    if hasattr(value, "tolist"):  # numpy scalars and arrays that slip into details
        return _finite(value.tolist())
    return value


class DocumentError(ValueError):
    """A results document that cannot be read back: says where and what is wrong."""


def results_from_document(document: Any) -> list[AuditResult]:
    """The results a version-1 document (``as_document``) was written from.

    Checks only what rebuilding needs, with messages that point into the document
    (``models[2].findings[0]: 'severity' ...``); ``docs/json-schema.json`` is the full
    contract.
    """
    if not isinstance(document, dict) or "version" not in document:
        raise DocumentError("not a bnaudit results document (no 'version'); write one with `bnaudit check --format json`")
    if document["version"] != SCHEMA_VERSION:
        raise DocumentError(f"document version {document['version']!r} is not supported (this bnaudit reads version {SCHEMA_VERSION})")
    return [_result(model, f"models[{i}]") for i, model in enumerate(_list(document, "models", "document"))]


def _result(model: Any, where: str) -> AuditResult:
    path = _text(model, "path", where, required=True)
    findings = []
    for i, item in enumerate(_list(model, "findings", where)):
        here = f"{where}.findings[{i}]"
        label = _text(item, "severity", here, required=True)
        try:
            severity = Severity.parse(label)
        except ValueError as exc:
            raise DocumentError(f"{here}: {exc}") from None
        findings.append(
            Finding(
                code=_text(item, "code", here, required=True),
                name=_text(item, "name", here),
                severity=severity,
                message=_text(item, "message", here, required=True),
                model=path,
                layer=_text(item, "layer", here),
                details=_mapping(item, "details", here),
                fix=_text(item, "fix", here),
            )
        )
    errors = [_error(e, f"{where}.errors[{i}]") for i, e in enumerate(_list(model, "errors", where))]
    return AuditResult(
        path=path,
        findings=findings,
        errors=errors,
        outcomes=_outcomes(model, errors, where),
        notes=[str(n) for n in _list(model, "notes", where)],
        measurements=from_json(_mapping(model, "measurements", where)),
        meta=_mapping(model, "meta", where),
    )


def _error(item: Any, where: str) -> ModelError:
    rules = [str(code) for code in _list(item, "rules", where)]
    return ModelError(_text(item, "message", where, required=True), _text(item, "rule", where), _text(item, "hint", where), rules)


def _outcomes(model: Any, errors: list[ModelError], where: str) -> list[RuleOutcome]:
    """``outcomes`` as written; documents older than that field rebuild them from
    ``rules_run``, ``skipped`` and the errors' rules (there a failed rule was also
    listed in ``rules_run``)."""
    if "outcomes" not in model:
        failed = {e.rule: e for e in errors if e.rule}
        outcomes = [RuleOutcome(str(c), Status.RAN) for c in _list(model, "rules_run", where) if c not in failed]
        outcomes += [RuleOutcome(code, Status.FAILED, error=error) for code, error in failed.items()]
        for i, item in enumerate(_list(model, "skipped", where)):
            code = _text(item, "code", f"{where}.skipped[{i}]", required=True)
            outcomes.append(RuleOutcome(code, Status.SKIPPED, reason=_text(item, "reason", where)))
        return outcomes
    outcomes = []
    for i, item in enumerate(_list(model, "outcomes", where)):
        here = f"{where}.outcomes[{i}]"
        try:
            status = Status(_text(item, "status", here, required=True))
        except ValueError:
            raise DocumentError(f"{here}.status: expected one of {', '.join(s.value for s in Status)}") from None
        index = item.get("error")
        if status is Status.FAILED and not (isinstance(index, int) and 0 <= index < len(errors)):
            raise DocumentError(f"{here}.error: a failed rule must point at one of the {len(errors)} errors")
        error = errors[index] if status is Status.FAILED else None
        settings = _mapping(item, "settings", here)
        outcomes.append(RuleOutcome(_text(item, "code", here, required=True), status, _text(item, "reason", here), error, settings))
    return outcomes


def _field(container: Any, key: str, where: str, kind: type, required: bool) -> Any:
    if not isinstance(container, dict):
        raise DocumentError(f"{where}: expected an object")
    if key not in container:
        if required:
            raise DocumentError(f"{where}: {key!r} is missing")
        return kind()
    value = container[key]
    if not isinstance(value, kind):
        raise DocumentError(f"{where}.{key}: expected {kind.__name__}, got {type(value).__name__}")
    return value


def _text(container: Any, key: str, where: str, required: bool = False) -> str:
    return _field(container, key, where, str, required)


def _list(container: Any, key: str, where: str) -> list:
    return _field(container, key, where, list, required=False)


def _mapping(container: Any, key: str, where: str) -> dict:
    return _field(container, key, where, dict, required=False)


@hookimpl
def bnaudit_register_reporters():
    return [Reporter("json", "machine-readable results, schema version 1", render, ".json")]
