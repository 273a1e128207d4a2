"""SARIF 2.1.0, shaped for GitHub code scanning (and any other SARIF consumer).

What GitHub needs and where it comes from:

- each rule (``reportingDescriptor``) with ``shortDescription`` (the rule's summary),
  ``fullDescription`` (its "What it does"), ``help`` (its whole documentation, text and
  markdown), ``helpUri`` and ``defaultConfiguration.level``;
- each result with a physical location, the model path relative to the working
  directory and ``region.startLine: 1`` (a model file has no meaningful lines), and the
  layer path as a logical location;
- ``partialFingerprints`` computed from rule + layer path only, so an alert survives
  re-runs and retraining (the weights change, the layer does not). The value is also
  given as ``primaryLocationLineHash``: without it GitHub's upload action would hash the
  first "line" of the binary model file, which changes with every save.

Unreadable models and failed rules become ``toolExecutionNotifications`` (one per
cause, naming every rule it stopped) and make ``executionSuccessful`` false; rules
skipped (e.g. they need ``--data``) become ``toolConfigurationNotifications``.
"""

from __future__ import annotations

from typing import Any

from ..findings import Finding, Severity
from ..hookspecs import hookimpl
from . import Report, Reporter
from .json import dumps
from .locations import artifact_uri

SARIF_SCHEMA = "https://docs.oasis-open.org/sarif/sarif/v2.1.0/errata01/os/schemas/sarif-schema-2.1.0.json"
LEVELS = {Severity.ERROR: "error", Severity.WARNING: "warning", Severity.INFO: "note"}
FINGERPRINT_KEY = "bnaudit/rule-layer/v1"


def render(report: Report) -> str:
    return dumps(as_sarif(report))


def as_sarif(report: Report) -> dict[str, Any]:
    codes = sorted({c for r in report.results for c in r.rules_run} | {f.code for r in report.results for f in r.findings})
    index = {code: i for i, code in enumerate(codes)}
    names = {f.code: f.name for r in report.results for f in r.findings}
    url = documentation_url()
    results = [_result(f, index) for r in report.results for f in r.findings]
    invocation: dict[str, Any] = {
        "executionSuccessful": not any(r.errors for r in report.results),
        "toolExecutionNotifications": _execution_notifications(report),
        "toolConfigurationNotifications": _configuration_notifications(report),
    }
    if report.options.get("timestamp"):
        invocation["endTimeUtc"] = report.options["timestamp"].replace("+00:00", "Z")
    return {
        "$schema": SARIF_SCHEMA,
        "version": "2.1.0",
        "runs": [
            {
                "tool": {
                    "driver": {
                        "name": "bnaudit",
                        "version": report.version,
                        "semanticVersion": report.version,
                        **({"informationUri": url} if url else {}),
                        "rules": [_descriptor(code, report, names, url) for code in codes],
                    }
                },
                "invocations": [invocation],
                "results": results,
            }
        ],
    }


def _descriptor(code: str, report: Report, names: dict[str, str], url: str) -> dict[str, Any]:
    """A rule as SARIF describes it; ``helpUri`` only where a page exists (the rule's, else ``url``)."""
    rule = report.rules.get(code)
    if rule is None:  # a rule of a plugin that is not installed where the JSON is re-rendered
        summary = f"{code} {names.get(code, '')}".strip()
        return {
            "id": code,
            "name": names.get(code, code.lower()),
            "shortDescription": {"text": summary},
            "fullDescription": {"text": summary},
            "help": {"text": summary, "markdown": summary},
            **({"helpUri": url} if url else {}),
            "defaultConfiguration": {"level": "warning"},
        }
    sections = rule.doc_sections()
    return {
        "id": rule.code,
        "name": rule.name,
        "shortDescription": {"text": rule.summary},
        "fullDescription": {"text": " ".join(sections.get("What it does", rule.summary).split())},
        "help": {"text": rule.docs or rule.summary, "markdown": f"**{rule.code} {rule.name}**: {rule.summary}\n\n{rule.docs}".strip()},
        **({"helpUri": rule.help_uri or url} if rule.help_uri or url else {}),
        "defaultConfiguration": {"level": LEVELS[rule.severity]},
        "properties": {"tags": ["batchnorm", *sorted(rule.needs)]},
    }


def _result(finding: Finding, index: dict[str, int]) -> dict[str, Any]:
    location: dict[str, Any] = {
        "physicalLocation": {"artifactLocation": {"uri": artifact_uri(finding.model)}, "region": {"startLine": 1}}
    }
    if finding.layer:
        location["logicalLocations"] = [
            {"name": finding.layer.rpartition("/")[2], "fullyQualifiedName": finding.layer, "kind": "object"}
        ]
    text = finding.message + (f"\nFix: {finding.fix}" if finding.fix else "")
    digest = fingerprint(finding)
    return {
        "ruleId": finding.code,
        "ruleIndex": index[finding.code],
        "level": LEVELS[finding.severity],
        "message": {"text": text},
        "locations": [location],
        "partialFingerprints": {FINGERPRINT_KEY: digest, "primaryLocationLineHash": f"{digest}:1"},
        "properties": {"layer": finding.layer, "details": finding.details},
    }


def fingerprint(finding: Finding) -> str:
    """Stable across re-runs and retraining: the rule and the layer path, nothing measured."""
    import hashlib  # here, like every import only a SARIF report needs: other runs start faster

    return hashlib.sha256(f"{finding.code}\0{finding.layer}".encode("utf-8", "surrogatepass")).hexdigest()[:32]


def _execution_notifications(report: Report) -> list[dict[str, Any]]:
    notes = []
    for result in report.results:
        for error in result.errors:
            note: dict[str, Any] = {
                "level": "error",
                "message": {"text": _stopped(error) + error.message + (f" ({error.hint})" if error.hint else "")},
                "locations": [{"physicalLocation": {"artifactLocation": {"uri": artifact_uri(result.path)}}}],
            }
            if error.rule:
                note["descriptor"] = {"id": error.rule}
                note["properties"] = {"rules": list(error.rules)}
            notes.append(note)
    return notes


def _stopped(error) -> str:
    """``"BN401, BN402 did not run: "`` for an error that stopped rules; empty for an unreadable model."""
    return f"{error.where} did not run: " if error.rules else ""


def _configuration_notifications(report: Report) -> list[dict[str, Any]]:
    """One note per rule and reason it was skipped for, listing the models."""
    skipped: dict[tuple[str, str], list[str]] = {}
    for result in report.results:
        for item in result.skipped:
            skipped.setdefault((item.code, item.reason), []).append(result.path)
    return [
        {
            "level": "note",
            "descriptor": {"id": code},
            "message": {"text": f"{code} did not run: {reason}"},
            "locations": [{"physicalLocation": {"artifactLocation": {"uri": artifact_uri(path)}}} for path in paths],
        }
        for (code, reason), paths in sorted(skipped.items())
    ]


def documentation_url() -> str:
    """The project's documentation URL from its metadata ("" when it declares none: a
    link to a page that does not exist helps nobody)."""
    from importlib import metadata

    try:
        urls = metadata.metadata("bnaudit").get_all("Project-URL") or []
    except metadata.PackageNotFoundError:
        urls = []
    for entry in urls:
        label, _, url = entry.partition(",")
        if label.strip().lower() in {"documentation", "homepage", "source"} and url.strip():
            return url.strip()
    return ""


@hookimpl
def bnaudit_register_reporters():
    return [Reporter("sarif", "SARIF 2.1.0 for GitHub code scanning", render, ".sarif")]
