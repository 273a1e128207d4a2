"""``--format markdown``: a short summary of a bnaudit run, for a pull-request comment.

The verdict and the counts come first, then one table row per finding (the most severe
first, capped so the comment stays readable and under GitHub's 65536-character limit),
then the models that could not be audited. Everything taken from a model file (layer
names, messages) is untrusted: it is escaped so it can neither inject HTML or
Markdown nor @-mention anyone.
"""

from __future__ import annotations

import html
import re

from bnaudit.plugin_api import ExitCode, Report, Reporter, exit_code, hookimpl, summary_line

#: Findings listed in the table; the rest are counted in one line.
MAX_ROWS = 50
_MARKDOWN_SPECIAL = re.compile(r"([\\`*_\[\]|~#])")
#: A word joiner after "@" keeps GitHub from turning "@name" into a mention.
_MENTION = re.compile(r"@(?=\w)")


def escape(text: object) -> str:
    """Plain text safe inside a Markdown table cell: no HTML, no markup, no line breaks, no mentions."""
    flat = " ".join(str(text).split())
    escaped = _MARKDOWN_SPECIAL.sub(r"\\\1", html.escape(flat, quote=False))
    return _MENTION.sub("@\u2060", escaped)


def render(report: Report) -> str:
    failed = exit_code(report.results, report.fail_on) != ExitCode.OK
    verdict = "fails" if failed else "passes"
    lines = [
        f"### bnaudit: {escape(summary_line(report))}",
        "",
        f"The check **{verdict}** (it fails on findings of severity {report.fail_on.label} or above, and on unreadable models).",
        "",
    ]
    findings = sorted((f for r in report.results for f in r.findings), key=lambda f: (-f.severity, f.model, f.code, f.layer))
    if findings:
        lines += ["| Severity | Rule | Model | Layer | Finding |", "|---|---|---|---|---|"]
        for f in findings[:MAX_ROWS]:
            lines.append(
                f"| {f.severity.label} | {f.code} {escape(f.name)} | {escape(f.model)} | {escape(f.layer or '<model>')} | {escape(f.message)} |"
            )
        if len(findings) > MAX_ROWS:
            lines += ["", f"… and {len(findings) - MAX_ROWS} more findings: see the full report."]
        lines.append("")
    errors = [(r.path, e) for r in report.results for e in r.errors]
    if errors:
        lines += [f"<details><summary>Problems that stopped part of the audit ({len(errors)})</summary>", ""]
        for path, error in errors:
            where = f" [{error.where}]" if error.rules else ""
            hint = f" ({escape(error.hint)})" if error.hint else ""
            lines.append(f"- {escape(path)}{where}: {escape(error.message)}{hint}")
        lines += ["", "</details>", ""]
    lines.append(f"<sub>bnaudit {escape(report.version)}</sub>")
    return "\n".join(lines) + "\n"


@hookimpl
def bnaudit_register_reporters():
    return [Reporter("markdown", "a short summary for pull-request comments", render, ".md")]
