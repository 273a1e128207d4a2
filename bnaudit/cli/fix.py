"""``bnaudit fix MODEL -o OUT``: write a corrected copy and show, with numbers, that it is right.

Exit codes: 0 when the copy is written and its proof passed or could not run (the
report says which), 1 when the proof failed (the copy is still written, for
inspection), 2 for bad input (nothing written).
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from ..findings import ExitCode
from ..fixes import FIXES
from ..graph import ConfigError
from ..loaders import LoadError
from ..arguments import data_problem
from ..output import refuse_inputs, write_atomic
from .options import MODEL_HINT, STATS_HINT, FilePath, fail


def _fix_flags(command):
    """One flag per fix of :data:`bnaudit.fixes.FIXES`, in the order they run."""
    for one in reversed(FIXES):
        command = click.option(one.flag, one.keyword, is_flag=True, help=one.help)(command)
    return command


def _all_help() -> str:
    by_findings = ", ".join(one.name for one in FIXES if one.module.CODES and not one.needs_data)
    with_data = ", ".join(one.name for one in FIXES if one.module.CODES and one.needs_data)
    never = ", ".join(one.flag for one in FIXES if not one.module.CODES)
    return f"Every fix the findings call for ({by_findings}; {with_data} with --data/--stats); never {never}."


#: The change list's format for a ``--report`` file given without ``--format``.
_REPORT_SUFFIXES = {".json": "json", ".html": "html", ".htm": "html"}


@click.command()
@click.argument("model", type=FilePath(MODEL_HINT))
@click.option("-o", "--output", required=True, type=FilePath(), help="Where to write the fixed copy (same format as MODEL; never MODEL itself).")
@_fix_flags
@click.option("--all", "all_fixes", is_flag=True, help=_all_help())
@click.option("--data", type=click.Path(), help="Data for --recalibrate and for the proof: .npy, .npz, an image directory or module:function.")
@click.option("--stats", "stats_file", type=FilePath(STATS_HINT), help="Recalibrate from statistics merged by `bnaudit merge` (measured with --upstream training).")
@click.option("--recalibrate-method", type=click.Choice(["one-pass", "per-level"]), default="one-pass", show_default=True, help="one-pass: upstream BNs on batch statistics; per-level: one pass per BN depth level, upstream BNs already recalibrated (exact, slower).")
@click.option("--verify-data", "verify_data", type=click.Path(), metavar="HELDOUT", help="Held-out data: BN301 drift, BN302 agreement and the output change, before and after --recalibrate (reported, not judged).")
@click.option("--batch-size", type=click.IntRange(min=1), help="Samples per batch of the statistics pass (default 32).")
@click.option("--max-samples", type=click.IntRange(min=1), help="Read at most this many samples of --data.")
@click.option("--format", "output_format", type=click.Choice(["text", "json", "html"]), help="Format of the change list (default: by the --report file's suffix, .json or .html, else text).")
@click.option("--report", "report_file", type=FilePath(), help="Write the change list to FILE instead of stdout.")
@click.option("--force", is_flag=True, help="Replace -o OUT when it exists (refused otherwise; never when OUT is MODEL).")
@click.option("--no-verify", is_flag=True, help="Write the copy without the proof (no TensorFlow run, no re-audit).")
@click.option("--unsafe-load", is_flag=True, help="Let the proof and recalibration load models with Lambda or custom layers (executes their code).")
@click.option("--debug", is_flag=True, help="Show tracebacks.")
def fix(model, output, all_fixes, data, stats_file, recalibrate_method, verify_data, batch_size, max_samples, output_format, report_file, force, no_verify, unsafe_load, debug, **chosen) -> None:
    """Write a fixed copy of MODEL to -o OUT and prove it: outputs compared, findings re-checked."""
    from ..parallel import call_in_child, native_stderr_silenced

    refuse_inputs([("--report", report_file)], [model])
    refuse_inputs([("--report", report_file)], [output], kind="the copy -o writes,", why="they need a path each")
    for flag, spec in (("--data", data), ("--verify-data", verify_data)):
        problem = data_problem(spec, flag) if spec else None
        if problem:  # now, as `check` says it, not after TensorFlow has started
            fail(f"{problem[0]} ({problem[1]})")
    output_format = output_format or _REPORT_SUFFIXES.get(Path(report_file or "").suffix.lower(), "text")
    try:  # in a child process: a model that crashes or hangs libhdf5 costs the child, not this one
        with native_stderr_silenced(not debug):  # TensorFlow's start-up lines, when the proof loads it
            report, text = call_in_child(
                _fix_and_render, output_format,
                model, output, all_fixes=all_fixes, data=data, stats=stats_file, recalibrate_method=recalibrate_method, batch_size=batch_size,
                max_samples=max_samples, verify=not no_verify, verify_data=verify_data, unsafe_load=unsafe_load, force=force, **chosen,
            )
    except LoadError as exc:
        if debug:
            raise
        fail(f"{model}: {exc.message}" + (f" ({exc.hint})" if exc.hint else ""))
    except ConfigError as exc:  # a config value of the wrong kind, found while editing
        if debug:
            raise
        fail(f"{model}: {exc} (the file was not written by Keras as saved)")
    if report_file:
        write_atomic(report_file, text)
    else:
        click.echo(text, nl=False)
    sys.exit(int(ExitCode.FINDINGS if report.proof.status == "failed" else ExitCode.OK))


def _fix_and_render(output_format: str, *args, **kwargs):
    """:func:`bnaudit.fixes.fix` and its report in ``output_format``, rendered before the
    copy is moved into place: a report that cannot be rendered leaves nothing written."""
    from ..fixes import fix as run_fix
    from ..fixes.report import render

    texts = []
    report = run_fix(*args, before_write=lambda report: texts.append(render(report, output_format)), **kwargs)
    return report, texts[0] if texts else render(report, output_format)
