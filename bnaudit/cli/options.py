"""What several commands share: one-line errors, the format/output, rendering and statistics options.

Command modules (``check``, ``report``, ``stats``...) import from here and never from
each other, so each command can be loaded on its own.
"""

from __future__ import annotations

import os
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import click

from .. import __version__
from ..findings import ExitCode
from ..output import terminal_of_stderr, write_atomic
from ..plugins import collect_reporters
from ..reporters import RenderError, Report
from .format_pairing import pair_formats_and_outputs

if TYPE_CHECKING:
    from ..engine import AuditOptions, Auditor


def fail(message: str) -> None:
    """One line on stderr and exit 2: for errors the user can fix."""
    click.echo(f"bnaudit: error: {message}", err=True)
    sys.exit(ExitCode.ERROR)


def codes(values: tuple[str, ...]) -> tuple[str, ...]:
    """``--select BN1,BN2 --select BN5`` -> ("BN1", "BN2", "BN5")."""
    return tuple(code.strip().upper() for value in values for code in value.split(",") if code.strip())


def use_color(stream) -> bool:
    return stream.isatty() and not os.environ.get("NO_COLOR")


def targets(auditor: Auditor, formats: tuple[str, ...], outputs: tuple[str, ...]) -> list[tuple[Any, str | None]]:
    """Pair each ``--format`` with its ``-o`` (in order); at most one may go to stdout."""
    reporters = collect_reporters(auditor.pm)
    formats = formats or ("text",)
    if len(outputs) > len(formats):
        fail(f"{len(outputs)} outputs for {len(formats)} formats; give one --format per -o")
    unknown = [f for f in formats if f not in reporters]
    if unknown:
        fail(f"unknown format {unknown[0]!r}; choose from {', '.join(reporters)}")
    pairs = [(reporters[f], output) for f, output in pair_formats_and_outputs(formats, outputs)]
    if sum(1 for _, out in pairs if out is None) > 1:
        fail("only one format can go to stdout; give the others -o FILE")
    return pairs


def emit(auditor: Auditor, results, options: AuditOptions, targets, rendering: dict[str, Any] | None = None) -> None:
    for reporter, output in targets:
        report = Report(
            results=results,
            rules=auditor.rules,
            fail_on=options.fail_on,
            version=__version__,
            color=output is None and use_color(sys.stdout),
            plugin_manager=auditor.pm,
            options=dict(rendering or {}),
        )
        try:
            text = reporter.render(report)
        except RenderError as exc:
            fail(f"{reporter.name} report{f' {output}' if output else ''}: {exc}")
        if output is None:
            click.echo(text, nl=False)
        else:
            write_atomic(output, text)


def rendering_options(command: Callable) -> Callable:
    """The options that shape rendering, for every command that renders a report."""
    command = click.option(
        "--timestamp", is_flag=True, help="Stamp reports with the time and keep durations (off: identical input, identical output)."
    )(command)
    return click.option(
        "--templates", metavar="DIR", help="Directory of HTML templates that override the built-in ones (same file names)."
    )(command)


def report_options(templates: str | None, timestamp: bool) -> dict[str, Any]:
    """``Report.options`` from the rendering options; exits 2 on a bad ``--templates``."""
    if templates is not None and not Path(templates).is_dir():
        fail(f"--templates {templates}: not a directory (give the directory holding your report.html.j2 etc.)")
    return {
        "templates": templates,
        "timestamp": datetime.now(timezone.utc).isoformat(timespec="seconds") if timestamp else None,
    }


UPSTREAM_HELP = "BN layers before the measured one normalize with moving statistics (inference, default) or batch statistics (training)."


def statistics_options(command: Callable) -> Callable:
    """The options of the statistics pass, for ``check`` and ``stats``."""
    for decorator in reversed(
        [
            click.option("--batch-size", type=click.IntRange(min=1), help="Samples per batch of --data (default: 32, or batch-size in the config)."),
            click.option("--max-samples", type=click.IntRange(min=1), help="Read at most this many samples of --data."),
            click.option("--upstream", type=click.Choice(["inference", "training"]), default="inference", show_default=True, help=UPSTREAM_HELP),
            click.option("--per-channel", is_flag=True, help="Add per-channel arrays to the statistics in the JSON output."),
            click.option("--stats", "stats_file", type=click.Path(dir_okay=False), help="Audit from statistics merged by `bnaudit merge` instead of --data."),
        ]
    ):
        command = decorator(command)
    return command


def statistics_runtime(data: str | None, batch_size: int | None, max_samples: int | None, upstream: str, per_channel: bool, stats_file: str | None) -> dict[str, Any]:
    """The statistics options as ``AuditOptions.runtime`` keys; exits 2 on a contradiction."""
    if data and stats_file:
        fail("give --data (measure now) or --stats (measured before), not both")
    if stats_file and not Path(stats_file).is_file():
        fail(f"--stats {stats_file}: no such file (write it with `bnaudit merge`)")
    given = {
        "batch_size": batch_size,
        "max_samples": max_samples,
        "upstream": upstream,
        "per_channel": per_channel,
        "stats": stats_file,
        "progress_terminal": terminal_of_stderr(),
    }
    return {key: value for key, value in given.items() if value not in (None, False)}
