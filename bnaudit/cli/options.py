"""What several commands share: one-line errors, the gate (selection, ``--fail-on``,
format/output) and the verdict that ends ``check`` and ``diff``, rendering and statistics options.

Command modules (``check``, ``report``, ``stats``...) import from here and never from
each other, so each command can be loaded on its own.
"""

from __future__ import annotations

import os
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import click

from .. import __version__
from ..arguments import data_problem
from ..findings import ExitCode
from ..output import terminal_of_stderr, write_atomic
from ..plugins import collect_reporters
from ..printable import encoded, printable
from ..reporters import RenderError, Report
from .format_pairing import format_for_suffix, pair_formats_and_outputs

if TYPE_CHECKING:
    from ..engine import AuditOptions, Auditor


def fail(message: str) -> None:
    """One line on stderr and exit 2: for errors the user can fix."""
    click.echo(f"bnaudit: error: {printable(message)}", err=True)
    sys.exit(ExitCode.ERROR)


class FilePath(click.ParamType):
    """A path that must name a file, not a directory: one line and exit 2 when it is a
    directory (``click.Path(dir_okay=False)`` answers with its multi-line usage block).

    ``hint`` says what to give instead; an option's message starts with its name
    (``-o out: is a directory (give a file name)``), an argument's with the path alone.
    """

    name = "file"

    def __init__(self, hint: str = "give a file name") -> None:
        self.hint = hint

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if value is not None and os.path.isdir(value):
            label = f"{param.opts[0]} " if isinstance(param, click.Option) else ""
            fail(f"{label}{value}: is a directory ({self.hint})")
        return value


#: What to give instead of a directory, per kind of input file.
MODEL_HINT = "give a model file: .keras or .h5"
#: ``bnaudit stats`` reads ONNX too; a SavedModel's statistics come from ``check --data``.
STATS_MODEL_HINT = "give a model file: .keras, .h5 or .onnx; for a SavedModel directory, bnaudit check DIR --data DATA"
STATS_HINT = "give the .npz file written by `bnaudit merge`"
PARTS_HINT = "give the .npz files written by `bnaudit stats --shard K/N -o PART`"


def codes(values: tuple[str, ...]) -> tuple[str, ...]:
    """``--select BN1,BN2 --select BN5`` -> ("BN1", "BN2", "BN5")."""
    return tuple(code.strip().upper() for value in values for code in value.split(",") if code.strip())


def use_color(stream) -> bool:
    return stream.isatty() and not os.environ.get("NO_COLOR")


def targets(auditor: Auditor, formats: tuple[str, ...], outputs: tuple[str, ...]) -> list[tuple[Any, str | None]]:
    """Pair each ``--format`` with its ``-o`` (in order); at most one may go to stdout.

    Without any ``--format``, each ``-o`` takes the format its suffix names, so
    ``-o report.html`` writes HTML, never text into an .html file.
    """
    reporters = collect_reporters(auditor.pm)
    if not formats:
        try:
            formats = tuple(format_for_suffix(output, reporters) for output in outputs) or ("text",)
        except ValueError as exc:
            fail(str(exc))
    if len(outputs) > len(formats):
        fail(f"{len(outputs)} outputs for {len(formats)} formats; give one --format per -o")
    unknown = [f for f in formats if f not in reporters]
    if unknown:
        fail(f"unknown format {unknown[0]!r}; choose from {', '.join(reporters)}")
    try:
        pairs = [(reporters[f], output) for f, output in pair_formats_and_outputs(formats, outputs)]
    except ValueError as exc:
        fail(str(exc))
    if sum(1 for _, out in pairs if out is None) > 1:
        fail("only one format can go to stdout; give the others -o FILE")
    return pairs


def emit(auditor: Auditor, results, options: AuditOptions, pairs, rendering: dict[str, Any] | None = None) -> None:
    """Render ``results`` with each (reporter, output) of :func:`targets`: to stdout, or atomically to the file."""
    for reporter, output in pairs:
        report = Report(
            results=results,
            rules=auditor.rules,
            fail_on=options.fail_on,
            version=__version__,
            color=output is None and use_color(sys.stdout),
            plugin_manager=auditor.pm,
            # ``check`` writes every error on stderr; a text report on stdout leaves them out.
            options={**(rendering or {}), "errors_on_stderr": output is None and bool((rendering or {}).get("errors_on_stderr"))},
        )
        try:
            text = reporter.render(report)
        except RenderError as exc:
            fail(f"{reporter.name} report{f' {output}' if output else ''}: {exc}")
        if output is None:
            click.echo(encoded(text), nl=False)
        else:
            write_atomic(output, encoded(text))


def gate_options(command: Callable) -> Callable:
    """``--select/--ignore/--extend-select``, ``--fail-on``, ``--exit-zero``, ``--format``/``-o``:
    the options of every command that gives a verdict (``check``, ``diff``)."""
    for decorator in reversed(
        [
            click.option("--select", multiple=True, help="Rule codes or prefixes to run (comma-separated; default: all)."),
            click.option("--ignore", multiple=True, help="Rule codes or prefixes to skip."),
            click.option("--extend-select", multiple=True, help="Codes or prefixes to add to the selection."),
            click.option("--fail-on", type=click.Choice(["info", "warning", "error"]), default="error", show_default=True, help="Lowest severity that makes the exit code 1."),
            click.option("--exit-zero", is_flag=True, help="Exit 0 even when findings are reported (errors still exit 2)."),
            click.option("--format", "formats", multiple=True, help="Output format (repeatable; an -o right after it takes its output). See `bnaudit formats`."),
            click.option("-o", "--output", "outputs", multiple=True, type=FilePath(), help="Write the output to FILE (repeatable, one per --format)."),
        ]
    ):
        command = decorator(command)
    return command


def conclude(auditor: Auditor, results, options: AuditOptions, pairs, rendering: dict[str, Any], *, exit_zero: bool = False,
             notices: list[str] | None = None, stale_fails: bool = False, started: float | None = None) -> None:
    """The end of every command that gives a verdict (``check``, ``diff``).

    Each error goes to stderr once (a text report on stdout leaves them out), then the
    reports, then the notices (the summary when every report went to a file; timings
    when ``started``) unless ``rendering["quiet"]``; then exit with the verdict's code
    (``stale_fails`` turns a clean run into 1, ``exit_zero`` findings into 0).
    """
    from ..engine import exit_code
    from ..parallel import timing_lines
    from ..reporters.text import summary_line

    print_errors(results)
    emit(auditor, results, options, pairs, {**rendering, "errors_on_stderr": True})
    notices = list(notices or [])
    if all(output is not None for _, output in pairs):  # every report in a file: the verdict still shows
        notices.append(summary_line(Report(results=results, rules=auditor.rules)))
    if started is not None:
        notices += timing_lines(results, time.perf_counter() - started)
    for line in [] if rendering.get("quiet") else notices:
        click.echo(printable(line), err=True)
    code = exit_code(results, options.fail_on)
    if stale_fails and code == ExitCode.OK:
        code = ExitCode.FINDINGS
    if exit_zero and code == ExitCode.FINDINGS:
        code = ExitCode.OK
    sys.exit(int(code))


def print_errors(results) -> None:
    """One line on stderr per error: ``bnaudit: error: PATH [RULES]: what is wrong (what to do)``."""
    for result in results:
        for error in result.errors:
            where = f" [{error.where}]" if error.rules else ""
            hint = f" ({error.hint})" if error.hint else ""
            click.echo(printable(f"bnaudit: error: {result.path}{where}: {error.message}{hint}"), err=True)


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


def baseline_options(command):
    """``--baseline``, ``--write-baseline`` and ``--fail-on-stale`` for ``bnaudit check``."""
    command = click.option("--fail-on-stale", is_flag=True, help="Exit 1 when a --baseline entry matches no finding any more.")(command)
    command = click.option("--write-baseline", metavar="FILE", type=FilePath(), help="Record the current findings in FILE as accepted, and exit 0 (2 on errors).")(command)
    return click.option("--baseline", metavar="FILE", type=FilePath("give the file --write-baseline wrote"), help="Report only findings that FILE (from --write-baseline) does not hold.")(command)


UPSTREAM_HELP = "BN layers before the measured one normalize with moving statistics (inference, default) or batch statistics (training)."
ORDER_HELP = "Read --data in a seeded shuffled order (default, as Keras's image_dataset_from_directory) or in sorted file order."


def _remember(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
    """Keep an option for :func:`statistics_runtime` without adding it to every command's signature."""
    ctx.meta[f"bnaudit.{param.name}"] = value
    return value


def statistics_options(command: Callable) -> Callable:
    """The options of the statistics pass, for ``check`` and ``stats``."""
    for decorator in reversed(
        [
            click.option("--batch-size", type=click.IntRange(min=1), help="Samples per batch of --data (default: 32, or batch-size in the config)."),
            click.option("--max-samples", type=click.IntRange(min=1), help="Read at most this many samples of --data."),
            click.option("--upstream", type=click.Choice(["inference", "training"]), default="inference", show_default=True, help=UPSTREAM_HELP),
            click.option("--per-channel", is_flag=True, help="Add per-channel arrays to the statistics in the JSON output."),
            click.option("--stats", "stats_file", type=FilePath(STATS_HINT), help="Audit from statistics merged by `bnaudit merge` instead of --data."),
            click.option("--data-order", type=click.Choice(["shuffled", "sorted"]), default="shuffled", show_default=True, expose_value=False, callback=_remember, help=ORDER_HELP),
            click.option("--data-seed", type=int, default=0, show_default=True, expose_value=False, callback=_remember, help="Seed of the shuffled --data order."),
        ]
    ):
        command = decorator(command)
    return command


def statistics_runtime(data: str | None, batch_size: int | None, max_samples: int | None, upstream: str, per_channel: bool, stats_file: str | None) -> dict[str, Any]:
    """The statistics flags as :func:`~bnaudit.options.runtime_options` keys; exits 2 on a contradiction or on data that is not there."""
    if data and stats_file:
        fail("give --data (measure now) or --stats (measured before), not both")
    if stats_file and not Path(stats_file).is_file():
        fail(f"--stats {stats_file}: no such file (write it with `bnaudit merge`)")
    problem = data_problem(data) if data else None
    if problem:  # now, not after TensorFlow has started
        fail(f"{problem[0]} ({problem[1]})")
    given = {
        "batch_size": batch_size,
        "max_samples": max_samples,
        "upstream": upstream,
        "per_channel": per_channel,
        "stats": stats_file,
        "progress_terminal": terminal_of_stderr(),
    }
    meta = click.get_current_context().meta
    given.update(data_order=meta.get("bnaudit.data_order"), data_seed=meta.get("bnaudit.data_seed"))
    return {key: value for key, value in given.items() if value not in (None, False)}
