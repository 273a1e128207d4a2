"""``bnaudit report``: render saved JSON results again, in any format.

CI keeps the JSON of ``bnaudit check --format json`` as the record of a run; this
command turns it into HTML, SARIF, JUnit... later without auditing the models again
(they may be gone). Several documents (e.g. from sharded CI jobs) render as one report.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import click

from ..findings import Severity
from ..output import refuse_inputs
from .format_pairing import FormatOutputCommand
from .options import FilePath, emit, fail, rendering_options, report_options, targets


@click.command(cls=FormatOutputCommand)
@click.argument("documents", nargs=-1, required=True)
@click.option("--format", "formats", multiple=True, help="Output format (repeatable; an -o right after it takes its output). See `bnaudit formats`.")
@click.option("-o", "--output", "outputs", multiple=True, type=FilePath(), help="Write the output to FILE (repeatable, one per --format).")
@rendering_options
@click.option("-p", "--plugin", "plugins", multiple=True, help="Load a plugin module (for its rules' docs and its formats).")
def report(documents, formats, outputs, templates, timestamp, plugins) -> None:
    """Render saved results (from `check --format json`; `-` reads stdin) in other formats.

    \b
    bnaudit report results.json --format html -o report.html --format sarif -o bnaudit.sarif

    Exit code 0 when every output was written, 2 when one could not be: it does not
    judge the models again (the check that saved the results gave their verdict).
    """
    from ..engine import AuditOptions, Auditor
    from ..plugins import PluginError
    from ..reporters.json import DocumentError, results_from_document

    results, thresholds = [], []
    for name in documents:
        try:
            document = _read(name)
            results += results_from_document(document)
            thresholds.append(Severity.parse(str(document.get("fail_on", "error"))))
        except (OSError, DocumentError, ValueError) as exc:
            fail(f"{name}: {exc}")
    fail_on = min(thresholds)  # documents written with different --fail-on: the strictest
    try:
        auditor = Auditor(AuditOptions(fail_on=fail_on, plugins=tuple(plugins)))
    except PluginError as exc:
        fail(str(exc))
    pairs = targets(auditor, formats, outputs)
    refuse_inputs([("-o", out) for out in outputs], documents)
    emit(auditor, results, auditor.options, pairs, report_options(templates, timestamp))


def _read(name: str) -> Any:
    """Parse one document; the errors say what to do, not just what failed."""
    if name == "-":
        text = sys.stdin.read()
    elif not os.path.isfile(name):
        raise OSError("no such file (give the JSON written by `bnaudit check --format json -o FILE`)")
    else:
        try:
            text = Path(name).read_text(encoding="utf-8")
        except UnicodeDecodeError:  # a model file, most likely: `bnaudit check` reads those
            raise ValueError("not a JSON report (binary content; audit a model with `bnaudit check`, render its --format json output here)") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not JSON ({exc.msg} at line {exc.lineno}, column {exc.colno})") from None
