"""The change list of ``bnaudit fix`` as text, JSON or HTML.

Every name that comes from the model file (layer paths, messages quoting them) is
escaped for where it goes: control characters become ``\\xNN`` in text, HTML is
rendered by jinja2 with autoescaping.
"""

from __future__ import annotations

import json
from importlib import resources

from ..printable import printable
from .changes import FixReport

FORMATS = ("text", "json", "html")


def render(report: FixReport, fmt: str) -> str:
    """``report`` in ``fmt`` (one of :data:`FORMATS`); ends with a newline."""
    if fmt == "json":
        return json.dumps(report.to_dict(), indent=2, allow_nan=False, default=str) + "\n"
    if fmt == "html":
        return _html(report)
    return _text(report)


def verdict(report: FixReport) -> str:
    """One line: what the proof found (never "passed" unless every check ran)."""
    proof = report.proof
    parts = []
    if proof.outputs_max_abs_delta is not None:
        bound = f" (allowed {proof.tolerance:g} + {proof.figures.get('rtol', 0):g} |original|)" if proof.tolerance is not None else " (reported, not judged: the fixes change outputs)"
        parts.append(f"outputs max |Δ| {proof.outputs_max_abs_delta:.3g}{bound} on {proof.samples} {proof.inputs}")
    if proof.checked_codes:
        left = ", ".join(f"{r['code']} {r['layer']}" for r in proof.remaining)
        parts.append(f"{', '.join(proof.checked_codes)} on the copy: " + (f"still reported: {left}" if left else "clean"))
    if proof.detail:
        parts.append(proof.detail)
    return printable(f"proof: {proof.status}" + (" - " + "; ".join(parts) if parts else ""))


def _text(report: FixReport) -> str:
    lines = [printable(f"bnaudit fix: {report.path} -> {report.output} ({report.format}); fixes: {', '.join(report.fixes)}")]
    rows = []
    for change in report.changes:
        arrays = ", ".join(f"{a.name} {a.action} max|Δ| {a.max_abs_delta:.3g}" for a in change.arrays) or "config only"
        rows.append((change.fix, change.layer, change.what, arrays))
    if not rows:
        lines.append("no changes: nothing the chosen fixes apply to")
    widths = [max((len(printable(r[i])) for r in rows), default=0) for i in range(3)]
    for row in rows:
        lines.append("  " + "  ".join(printable(cell).ljust(widths[i]) for i, cell in enumerate(row[:3])) + "  " + printable(row[3]))
    for refusal in report.refused:
        lines.append(printable(f"  {refusal.fix}  {refusal.layer}  not changed: {refusal.why}"))
    if report.dropped_optimizer_state:
        lines.append("the saved optimizer state was dropped: the variables it belonged to changed")
    lines.append(verdict(report))
    return "\n".join(lines) + "\n"


def _html(report: FixReport) -> str:
    import jinja2

    env = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined)
    template = env.from_string(resources.files("bnaudit").joinpath("templates/fix.html.j2").read_text(encoding="utf8"))
    return template.render(report=report, verdict=verdict(report))
