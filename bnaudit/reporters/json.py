"""JSON output, a documented and versioned schema (``docs/json-schema.json``).

Version 1: ``{"version": 1, "bnaudit": ..., "models": [{"path", "findings": [{"code",
"name", "severity", "message", "layer", "details", "fix"}], "errors", "skipped", ...}],
"summary"}``. Fields are only ever added within a version.
"""

from __future__ import annotations

import json
from typing import Any

from ..hookspecs import hookimpl
from . import Report, Reporter

SCHEMA_VERSION = 1


def as_document(report: Report) -> dict[str, Any]:
    return {
        "version": SCHEMA_VERSION,
        "bnaudit": report.version,
        "fail_on": report.fail_on.label,
        "models": [result.to_dict() for result in report.results],
        "summary": report.summary(),
    }


def render(report: Report) -> str:
    return json.dumps(as_document(report), indent=2, sort_keys=False, allow_nan=False, default=_fallback) + "\n"


def _fallback(value: Any) -> Any:
    """numpy scalars and arrays that slip into details."""
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"cannot serialise {type(value).__name__} in JSON output")


@hookimpl
def bnaudit_register_reporters():
    return [Reporter("json", "machine-readable results, schema version 1", render, ".json")]
