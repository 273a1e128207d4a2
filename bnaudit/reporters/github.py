"""GitHub Actions workflow commands: findings as annotations, the full table in the job summary.

``::error file=models/a.keras,title=BN106 batchnorm-training-baked::message`` puts a
finding on the run's page and on the file in a pull request. GitHub shows at most 10
annotations of each kind per step, so bnaudit emits at most 10 per severity (worst
first) and says how many more there are; when ``$GITHUB_STEP_SUMMARY`` is set, every
finding and error is appended there as a Markdown table.

Values are escaped as the Actions runner expects: ``%``, CR and LF in the message;
additionally ``:`` and ``,`` in properties (``file=``, ``title=``). Before that, every
control character a model's strings hold is made visible (:func:`~bnaudit.printable.printable`),
so no raw ESC reaches annotation text and no name can end the annotation early.
"""

from __future__ import annotations

import html
import os
import re

from ..findings import Severity
from ..hookspecs import hookimpl
from ..printable import printable
from . import Report, Reporter
from .locations import relative_path
from .text import summary_line

COMMANDS = {Severity.ERROR: "error", Severity.WARNING: "warning", Severity.INFO: "notice"}
CAP = 10
SUMMARY_ENV = "GITHUB_STEP_SUMMARY"


def escape_data(text: str) -> str:
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def escape_property(text: str) -> str:
    return escape_data(text).replace(":", "%3A").replace(",", "%2C")


def annotation(kind: str, file: str, title: str, message: str) -> str:
    """One workflow command; ``message`` may hold line breaks bnaudit put there (the fix)."""
    message = "\n".join(printable(line) for line in message.split("\n"))
    return f"::{kind} file={escape_property(printable(file))},title={escape_property(printable(title))}::{escape_data(message)}"


def render(report: Report) -> str:
    entries: list[tuple[Severity, str]] = []
    for result in report.results:
        file = relative_path(result.path)
        for error in result.errors:
            title = f"bnaudit: {error.label} failed" if error.rules else "bnaudit: unreadable model"
            message = printable(error.message + (f" ({error.hint})" if error.hint else ""))
            entries.append((Severity.ERROR, annotation("error", file, title, message)))
        for f in result.findings:
            message = printable(f"{f.layer}: {f.message}" if f.layer else f.message)
            if f.fix:
                message += f"\nFix: {printable(f.fix)}"
            entries.append((f.severity, annotation(COMMANDS[f.severity], file, f"{f.code} {f.name}", message)))
    summary_file = os.environ.get(SUMMARY_ENV)
    lines: list[str] = []
    for severity in sorted(Severity, reverse=True):
        of_kind = [line for s, line in entries if s == severity]
        lines += of_kind[:CAP]
        if len(of_kind) > CAP:
            where = "the job summary" if summary_file else "the other formats (e.g. --format text)"
            lines.append(f"bnaudit: {len(of_kind) - CAP} more {severity.label} annotations not shown; all are in {where}")
    lines.append(summary_line(report))
    if summary_file:
        with open(summary_file, "a", encoding="utf-8") as handle:
            handle.write(step_summary(report))
    return "\n".join(lines) + "\n"


_MARKDOWN_SPECIAL = re.compile(r"([\\`*_\[\]|#])")


def _cell(text: str) -> str:
    """Table-cell safe: no HTML, no Markdown markup, no line breaks."""
    lines = text.replace("\r", "").split("\n")
    return "<br>".join(_MARKDOWN_SPECIAL.sub(r"\\\1", html.escape(printable(line), quote=False)) for line in lines)


def step_summary(report: Report) -> str:
    """The whole run as Markdown, for ``$GITHUB_STEP_SUMMARY``."""
    lines = ["## bnaudit", "", _cell(summary_line(report)), ""]
    rows = [
        (f.severity.label, f"{f.code} {f.name}", relative_path(r.path), f.layer, f.message + (f" — fix: {f.fix}" if f.fix else ""))
        for r in report.results
        for f in r.findings
    ]
    rows += [
        ("error", f"{e.label} failed" if e.rules else "unreadable model", relative_path(r.path), "", e.message)
        for r in report.results
        for e in r.errors
    ]
    if rows:
        rows.sort(key=lambda row: -Severity.parse(row[0]))
        lines += ["| severity | rule | model | layer | message |", "|---|---|---|---|---|"]
        lines += ["| " + " | ".join(_cell(cell) for cell in row) + " |" for row in rows]
        lines.append("")
    return "\n".join(lines) + "\n"


@hookimpl
def bnaudit_register_reporters():
    return [Reporter("github", "GitHub Actions annotations (+ job summary table)", render, ".txt")]
