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
from ..measurements import BatchNormChange, CheckpointPairing
from ..printable import printable as p
from . import Report, Reporter, common_skipped

COLOURS = {Severity.ERROR: "red", Severity.WARNING: "yellow", Severity.INFO: "cyan"}


def render(report: Report) -> str:
    style = (lambda text, **kw: click.style(text, **kw)) if report.color else (lambda text, **kw: text)
    quiet = report.options.get("quiet")  # -q: findings and errors only, no notes, skipped rules or summary
    audited = [r for r in report.results if not r.unreadable]
    # Rules an error stopped are named by that error; the rest are said once for the run
    # when every model skipped them alike (a static check: "needs --data"), else per model.
    skipped = {id(r): r.skipped_by_reason(stopped=False) for r in audited}
    common = common_skipped([skipped[id(r)] for r in audited])
    lines: list[str] = []
    for result in report.results:
        notes = [] if quiet else result.notes
        own = [] if quiet else [item for item in skipped.get(id(result), []) if item not in common]
        # When the command already wrote each error on stderr, the report on stdout does
        # not repeat it: one cause, one line, one stream.
        errors = [] if report.options.get("errors_on_stderr") else result.errors
        changes = [] if quiet else diff_lines(result.measured(CheckpointPairing), result.measured(BatchNormChange))
        if not (result.findings or errors or notes or own or changes):
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
        if own:
            lines.append(f"  skipped: {p(skipped_words(own))}")
        for note in notes:
            lines.append(f"  note: {p(note)}")
        lines += changes
        lines.append("")
    if not quiet:
        if common:
            lines.append(f"skipped{' on every model audited' if len(audited) > 1 else ''}: {p(skipped_words(common))}")
        lines.append(summary_line(report))
    return "\n".join(lines) + "\n" if lines else ""


def diff_lines(pairing: list[CheckpointPairing], changes: list[BatchNormChange]) -> list[str]:
    """``bnaudit diff``'s per-layer change as a table (nothing for a ``check`` result).

    Columns: the tuned layer, its base counterpart and how it was paired, frozen in
    base -> tuned, the moving mean's largest shift in base standard deviations, the
    standard deviation's largest relative change, gamma's and beta's largest change.
    """
    if not changes:
        return []
    header = ("BN layer", "base (paired by)", "frozen", "mean shift", "sd change", "gamma", "beta")
    rows = [header]
    for change in changes:
        frozen = "->".join("?" if frozen is None else "yes" if frozen else "no" for frozen in (change.frozen_base, change.frozen_tuned))
        rows.append(
            (
                p(change.layer),
                p(f"{change.base} ({change.paired_by})"),
                frozen,
                _number(change.mean_shift, "{:.3g}"),
                _number(change.std_change, "{:.1%}"),
                _number(change.gamma_change, "{:.3g}"),
                _number(change.beta_change, "{:.3g}"),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    base = pairing[-1].base if pairing else "the base checkpoint"
    title = f"  change since {p(base)} ({len(rows) - 1} BN layer{'' if len(rows) == 2 else 's'}):"
    return [title] + ["    " + "  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]


def _number(value: Any, form: str) -> str:
    return form.format(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else "-"


def skipped_words(skipped: list[tuple[str, list[str]]]) -> str:
    """``"BN301, BN302 (needs --data); GD103 (why)"``: codes grouped by their reason."""
    return "; ".join(f"{', '.join(codes)} ({reason})" for reason, codes in skipped)


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
