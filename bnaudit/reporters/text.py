"""Terminal output, grouped by model, coloured only when asked (TTY and no NO_COLOR).

Every string from a model (path, layer names, messages quoting them) goes through
:func:`~bnaudit.printable.printable` first: a name cannot start a new line or send the
terminal an escape sequence.
"""

from __future__ import annotations

from typing import Any

import click

from ..findings import Severity
from ..hookspecs import hookimpl
from ..printable import printable as p
from . import Report, Reporter

COLOURS = {Severity.ERROR: "red", Severity.WARNING: "yellow", Severity.INFO: "cyan"}


def render(report: Report) -> str:
    style = (lambda text, **kw: click.style(text, **kw)) if report.color else (lambda text, **kw: text)
    quiet = report.options.get("quiet")  # -q: findings and errors only, no notes or summary
    lines: list[str] = []
    for result in report.results:
        notes = [] if quiet else result.notes
        # When the command already wrote each error on stderr, the report on stdout does
        # not repeat it: one cause, one line, one stream.
        errors = [] if report.options.get("errors_on_stderr") else result.errors
        changes = [] if quiet else diff_lines(result.measurements.get("diff"))
        if not (result.findings or errors or notes or changes):
            continue
        lines.append(style(p(result.path), bold=True))
        for error in errors:
            where = error.label or "unreadable"
            hint = f" ({error.hint})" if error.hint else ""
            lines.append(f"  {style('error', fg='red', bold=True)} [{where}] {p(error.message + hint)}")
        for finding in result.findings:
            severity = style(f"{finding.severity.label:<7}", fg=COLOURS[finding.severity])
            layer = finding.layer or "<model>"
            lines.append(f"  {style(p(finding.code), bold=True)} {severity} {p(layer)}: {p(finding.message)}")
            if finding.fix:
                lines.append(f"        = fix: {p(finding.fix)}")
        for note in notes:
            lines.append(f"  note: {p(note)}")
        lines += changes
        lines.append("")
    if not quiet:
        lines.append(summary_line(report))
    return "\n".join(lines) + "\n" if lines else ""


def diff_lines(diff: Any) -> list[str]:
    """``bnaudit diff``'s per-layer change as a table (nothing for a ``check`` result).

    Columns: the tuned layer, its base counterpart and how it was paired, frozen in
    base -> tuned, the moving mean's largest shift in base standard deviations, the
    standard deviation's largest relative change, gamma's and beta's largest change.
    """
    layers = diff.get("layers") if isinstance(diff, dict) else None
    if not isinstance(layers, dict) or not layers:
        return []
    header = ("BN layer", "base (paired by)", "frozen", "mean shift", "sd change", "gamma", "beta")
    rows = [header]
    for path, change in layers.items():
        if not isinstance(change, dict):
            continue
        frozen = "->".join("yes" if change.get(k) else "no" for k in ("frozen_base", "frozen_tuned"))
        rows.append(
            (
                p(str(path)),
                p(f"{change.get('base')} ({change.get('paired_by')})"),
                frozen,
                _number(change.get("mean_shift"), "{:.3g}"),
                _number(change.get("std_change"), "{:.1%}"),
                _number(change.get("gamma_change"), "{:.3g}"),
                _number(change.get("beta_change"), "{:.3g}"),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    title = f"  change since {p(str(diff.get('base')))} ({len(rows) - 1} BN layers):"
    return [title] + ["    " + "  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]


def _number(value: Any, form: str) -> str:
    return form.format(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else "-"


def summary_line(report: Report) -> str:
    s = report.summary()
    counts = s["by_severity"]
    parts = [f"{counts[label]} {label}{'s' if counts[label] != 1 else ''}" for label in ("error", "warning", "info") if counts[label]]
    models = f"{s['models']} model{'s' if s['models'] != 1 else ''}"
    findings = f"{s['findings']} finding{'s' if s['findings'] != 1 else ''}"
    line = f"{models}, {findings}" + (f" ({', '.join(parts)})" if parts else "")
    if s["unreadable"]:
        line += f", {s['unreadable']} unreadable"
    if s["rule_errors"]:
        line += f", {s['rule_errors']} rule error{'s' if s['rule_errors'] != 1 else ''}"
    return line


@hookimpl
def bnaudit_register_reporters():
    return [Reporter("text", "findings grouped by model, for people (default)", render, ".txt")]
