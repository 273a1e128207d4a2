"""``bnaudit check``: audit model files and report the findings in any format."""

from __future__ import annotations

import importlib.util
import os
import sys
import time
from typing import Any

import click

from .. import __version__
from .. import baseline as baselines
from ..arguments import MODULE_ATTRIBUTE, module_problem
from ..config import config_options, given_on_command_line, load as load_config
from ..engine import AuditOptions, Auditor, discover, exit_code
from ..findings import ExitCode, Severity
from ..options import OptionsError, runtime_options
from ..parallel import audit_models, run_options, timing_lines
from ..plugins import PluginError
from ..printable import printable
from ..reporters import Report
from ..reporters.text import summary_line
from ..selection import Selection
from .format_pairing import FormatOutputCommand
from .options import FilePath, baseline_options, codes, emit, fail, rendering_options, report_options, statistics_options, statistics_runtime, targets


@click.command(cls=FormatOutputCommand)
@click.argument("paths", nargs=-1, required=True)
@click.option("--select", multiple=True, help="Rule codes or prefixes to run (comma-separated; default: all).")
@click.option("--ignore", multiple=True, help="Rule codes or prefixes to skip.")
@click.option("--extend-select", multiple=True, help="Codes or prefixes to add to the selection.")
@click.option("--fail-on", type=click.Choice(["info", "warning", "error"]), default="error", show_default=True, help="Lowest severity that makes the exit code 1.")
@click.option("--exit-zero", is_flag=True, help="Exit 0 even when findings are reported (errors still exit 2).")
@click.option("--format", "formats", multiple=True, help="Output format (repeatable; an -o right after it takes its output). See `bnaudit formats`.")
@click.option("-o", "--output", "outputs", multiple=True, type=FilePath(), help="Write the output to FILE (repeatable, one per --format).")
@click.option("--data", type=click.Path(), help="Data for the statistics rules (BN3xx): .npy, .npz, an image directory or module:function.")
@click.option("--inference", is_flag=True, help="Re-run inference on seeded synthetic inputs (BN4xx) even without --data.")
@click.option("--static", is_flag=True, help="Run exactly the static rules (needs: graph, weights; no TensorFlow), whatever the config says.")
@statistics_options
@click.option("--devices", help="Devices the BN4xx re-runs compare with the first CPU, e.g. CPU:1,GPU:0 (default: all).")
@click.option("--reference", type=click.Choice(["cpu", "float64"]), default="cpu", show_default=True, help="BN401 compares every device with the first CPU, or with a float64 run on it.")
@click.option("--atol", type=click.FloatRange(min=0), help="Absolute tolerance of the BN4xx comparisons (default: by compute dtype, 1e-4 for float32).")
@click.option("--rtol", type=click.FloatRange(min=0), help="Relative tolerance of the BN4xx comparisons (default: by compute dtype, 1e-3 for float32).")
@click.option("--allow-tf32", is_flag=True, help="Leave TensorFloat-32 on for GPU matmuls and convolutions during the BN4xx re-runs.")
@click.option("--unsafe-load", is_flag=True, help="Let the runtime rules load models with Lambda or custom layers (executes their code: trusted models only).")
@click.option("--custom-objects", metavar="MODULE:DICT", help="Custom layer classes for --unsafe-load, as a dict in an importable module.")
@click.option("-p", "--plugin", "plugins", multiple=True, help="Load a plugin module (repeatable); `-p no:NAME` switches one off.")
@click.option("--debug", is_flag=True, help="Show tracebacks and TensorFlow's logs.")
@rendering_options
@config_options
@baseline_options
@run_options
def check(paths, select, ignore, extend_select, fail_on, exit_zero, formats, outputs, data, inference, static, plugins, debug, templates, timestamp,
          config_file, isolated, baseline, write_baseline, fail_on_stale, jobs, quiet, verbose,
          devices, reference, atol, rtol, allow_tf32, unsafe_load, custom_objects,
          batch_size, max_samples, upstream, per_channel, stats_file) -> None:
    """Audit model files, directories (recursing into *.keras and *.h5) and globs."""
    if debug:
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = "0"
    if static and (data or inference or stats_file):
        fail("--static runs only the static rules: drop --data, --inference and --stats, or --static")
    options = AuditOptions(
        selection=Selection(codes(select) or ("ALL",), codes(ignore), codes(extend_select)),
        fail_on=Severity.parse(fail_on),
        data=data,
        inference=inference,
        runtime=runtime_options(
            {
                **_inference_options(devices, reference, atol, rtol, allow_tf32, unsafe_load, custom_objects),
                **statistics_runtime(data, batch_size, max_samples, upstream, per_channel, stats_file),
            }
        ),
        plugins=tuple(plugins),
        debug=debug,
        static=static,
    )
    try:
        project = load_config(config_file, isolated)
        options = project.apply(options, given_on_command_line(click.get_current_context()))
        auditor = Auditor(options)
        project.validate(auditor.rules)
        auditor.check_options(("--select", "--ignore", "--extend-select"))
        accepted = baselines.Baseline.read(baseline) if baseline else None
    except (PluginError, OptionsError, baselines.BaselineError) as exc:
        fail(str(exc))
    if (options.data or options.inference) and importlib.util.find_spec("tensorflow") is None:
        from ..runtime import INSTALL_TENSORFLOW

        fail(f"--data and --inference run the model with TensorFlow, which is not installed ({INSTALL_TENSORFLOW})")
    pairs = targets(auditor, formats, outputs)
    rendering = {**report_options(templates, timestamp), "quiet": quiet, "errors_on_stderr": True}
    started = time.perf_counter()
    files, results = discover(paths)
    if not files:  # nothing to audit, as pytest and ruff stop on paths that name nothing: no report
        _print_errors(results)
        sys.exit(ExitCode.ERROR)
    results += audit_models([(path, project.options_for(path, options)) for path in files], jobs, auditor)
    notices = [f"config: {project.name}"] if verbose else []
    if write_baseline:
        written = baselines.write(write_baseline, results, __version__)
        notices.append(f"wrote {written} finding{'s' if written != 1 else ''} to the baseline {write_baseline}")
    outcome = accepted.apply(results) if accepted else None
    if outcome:
        notices.append(f"baseline {baseline}: findings suppressed: {outcome.suppressed}, stale entries: {len(outcome.stale)}")
    _print_errors(results)
    emit(auditor, results, options, pairs, rendering)
    if all(output is not None for _, output in pairs):  # every report in a file: the verdict still shows
        notices.append(summary_line(Report(results=results, rules=auditor.rules)))
    if verbose:
        notices += timing_lines(results, time.perf_counter() - started)
    for line in [] if quiet else notices:
        click.echo(printable(line), err=True)
    code = exit_code(results, options.fail_on)
    if outcome and fail_on_stale and outcome.stale and code == ExitCode.OK:
        code = ExitCode.FINDINGS
    if (exit_zero and code == ExitCode.FINDINGS) or (write_baseline and code == ExitCode.FINDINGS):
        code = ExitCode.OK
    sys.exit(int(code))


def _print_errors(results) -> None:
    """One line on stderr per error: ``bnaudit: error: PATH [RULES]: what is wrong (what to do)``."""
    for result in results:
        for error in result.errors:
            where = f" [{error.where}]" if error.rules else ""
            hint = f" ({error.hint})" if error.hint else ""
            click.echo(printable(f"bnaudit: error: {result.path}{where}: {error.message}{hint}"), err=True)


def _inference_options(devices, reference, atol, rtol, allow_tf32, unsafe_load, custom_objects) -> dict[str, Any]:
    """The BN4xx flags as :func:`~bnaudit.options.runtime_options` keys (see docs/inference.md)."""
    if custom_objects and not unsafe_load:
        fail("--custom-objects imports code for the model's custom layers: it needs --unsafe-load")
    if custom_objects:
        if not MODULE_ATTRIBUTE.match(custom_objects):
            fail(f"--custom-objects {custom_objects}: not MODULE:DICT (e.g. mylayers:CUSTOM_OBJECTS)")
        problem = module_problem(custom_objects.partition(":")[0])
        if problem:
            fail(f"--custom-objects {custom_objects}: {problem} (run from the directory that holds the module, or install it)")
    given = {
        "devices": devices,
        "reference": reference,
        "atol": atol,
        "rtol": rtol,
        "allow_tf32": allow_tf32,
        "unsafe_load": unsafe_load,
        "custom_objects": custom_objects,
    }
    return {key: value for key, value in given.items() if value is not None and value is not False}  # keep --atol 0
