"""The change list of ``bnaudit fix`` as text, JSON or HTML.

Every name that comes from the model file (layer paths, messages quoting them) is
escaped for where it goes: control characters become ``\\xNN`` in text, HTML is
rendered by jinja2 with autoescaping.
"""

from __future__ import annotations

from importlib import resources

from ..printable import printable
from ..reporters.json import dumps
from .changes import FixReport
from .proof import SAME_OUTPUTS

FORMATS = ("text", "json", "html")


def render(report: FixReport, fmt: str) -> str:
    """``report`` in ``fmt`` (one of :data:`FORMATS`); ends with a newline."""
    if fmt == "json":
        return dumps(report.to_dict())  # check's JSON policy: a NaN or infinity becomes a string
    if fmt == "html":
        return _html(report)
    return _text(report)


def verdict(report: FixReport) -> str:
    """One line: what the proof found (never "passed" unless every check ran)."""
    proof = report.proof
    parts = []
    if proof.outputs_max_abs_delta is not None:
        changing = ", ".join(name for name in report.fixes if name not in SAME_OUTPUTS)
        bound = f" (allowed {proof.tolerance:g} + {proof.figures.get('rtol', 0):g} |original|)" if proof.tolerance is not None else f" (reported, not judged: {changing} may change them)"
        parts.append(f"outputs max |Δ| {proof.outputs_max_abs_delta:.3g}{bound} on {proof.samples} {proof.inputs}")
        if proof.figures.get("constant_outputs"):
            parts.append("the original gives every sample the same outputs (untrained?), so equal outputs show little")
    if proof.checked_codes:
        left = ", ".join(f"{r['code']} {r['layer']}" for r in proof.remaining)
        parts.append(f"{', '.join(proof.checked_codes)} on the copy: " + (f"still reported: {left}" if left else "clean"))
    if proof.detail:
        parts.append(proof.detail)
    return printable(f"proof: {proof.status}" + (" - " + "; ".join(parts) if parts else ""))


def array_cell(array) -> str:
    """One array of a change: its name, what happened to it and, where it means something, max |Δ|."""
    return f"{array.name} {array.action}" + (f" max|Δ| {array.max_abs_delta:.3g}" if array.max_abs_delta is not None else "")


def nothing_to_fix(report: FixReport) -> str:
    """The one line said instead of a change list when no copy was written."""
    return f"nothing to fix: no layer that {', '.join(report.fixes) or 'a fix'} would change; no copy was written"


def needs_data(report: FixReport) -> list[str]:
    """The line that says recalibration was not run for want of data, where findings call for it."""
    if not report.needs_data:
        return []
    return [f"not recalibrated: {', '.join(report.needs_data)} {'is' if len(report.needs_data) == 1 else 'are'} fixed by --recalibrate, which needs --data DATA or --stats FILE"]


def _text(report: FixReport) -> str:
    lines = [printable(f"bnaudit fix: {report.path} -> {report.output} ({report.format}); fixes: {', '.join(report.fixes)}")]
    if not report.written:
        lines.append(nothing_to_fix(report))
        lines += [printable(f"  {refusal.fix}  {refusal.layer}  not changed: {refusal.why}") for refusal in report.refused]
        lines += [printable(line) for line in needs_data(report)]
        return "\n".join(lines) + "\n"
    rows = []
    for change in report.changes:
        arrays = ", ".join(array_cell(a) for a in change.arrays) or "config only"
        rows.append((change.fix, change.layer, change.what, arrays))
    widths = [max((len(printable(r[i])) for r in rows), default=0) for i in range(3)]
    for row in rows:
        lines.append("  " + "  ".join(printable(cell).ljust(widths[i]) for i, cell in enumerate(row[:3])) + "  " + printable(row[3]))
    for refusal in report.refused:
        lines.append(printable(f"  {refusal.fix}  {refusal.layer}  not changed: {refusal.why}"))
    if report.recalibration:
        r = report.recalibration
        lines.append(f"recalibrated {r['method']}: {r['passes']} pass{'es' if r['passes'] != 1 else ''} over {r['samples']} samples")
    if report.dropped_optimizer_state:
        lines.append("the saved optimizer state was dropped: the variables it belonged to changed")
    lines += [printable(line) for line in needs_data(report)]
    lines.append(verdict(report))
    if report.heldout is not None:
        lines += [printable(line) for line in heldout_lines(report.heldout)]
    return "\n".join(lines) + "\n"


def heldout_lines(figures) -> list[str]:
    """``--verify-data``'s figures, before -> after, one line per figure and per BN layer."""
    before, after = figures.before, figures.after
    lines = [f"held-out data {figures.data} ({figures.samples} samples), original -> copy (reported, not judged):"]
    if before.drift or after.drift:
        lines.append(
            f"  BN301 drift score: max {_number(before.drift_max)} -> {_number(after.drift_max)}, "
            f"median {_number(before.drift_median)} -> {_number(after.drift_median)}; "
            f"BN301 reports {len(before.reported)} -> {len(after.reported)} layers"
        )
        for layer in dict.fromkeys([*before.drift, *after.drift]):
            lines.append(f"    {layer}  drift {_number(before.drift.get(layer))} -> {_number(after.drift.get(layer))}")
    if (before.top1_agreement, before.cka, after.top1_agreement, after.cka) != (None,) * 4:
        lines.append(
            f"  BN302 training vs. inference mode: top-1 agreement {_number(before.top1_agreement)} -> {_number(after.top1_agreement)}, "
            f"linear CKA {_number(before.cka)} -> {_number(after.cka)}"
        )
    if figures.outputs_max_abs_delta is not None:
        agreement = f", top-1 agreement {_number(figures.outputs_top1_agreement)}" if figures.outputs_top1_agreement is not None else ""
        lines.append(f"  outputs, copy vs. original: max |Δ| {figures.outputs_max_abs_delta:.3g}{agreement}")
    lines += [f"  not run: {what}: {why}" for what, why in figures.not_run.items()]
    return lines


def _number(value) -> str:
    return "n/a" if value is None else f"{value:.4g}"


def _html(report: FixReport) -> str:
    import jinja2

    env = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined)
    template = env.from_string(resources.files("bnaudit").joinpath("templates/fix.html.j2").read_text(encoding="utf8"))
    return template.render(report=report, verdict=verdict(report) if report.written else nothing_to_fix(report), number=_number, array_cell=array_cell, needs_data=needs_data(report))
