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
from ..engine import AuditOptions, Auditor, discover
from ..findings import ExitCode, Severity
from ..options import OptionsError, runtime_options
from ..output import refuse_inputs
from ..parallel import audit_models, run_options
from ..plugins import PluginError
from ..selection import Selection
from .format_pairing import FormatOutputCommand
from .options import baseline_options, codes, conclude, fail, gate_options, print_errors, rendering_options, report_options, statistics_options, statistics_runtime, targets


@click.command(cls=FormatOutputCommand)
@click.argument("paths", nargs=-1, required=True)
@gate_options
@click.option("--data", type=click.Path(), help="Data for the statistics rules (BN3xx): .npy, .npz, an image directory or module:function.")
@click.option("--inference", is_flag=True, help="Re-run inference on seeded synthetic inputs (BN4xx) even without --data.")
@click.option("--static", is_flag=True, help="Run exactly the static rules (needs: graph, weights, optimizer; no TensorFlow), whatever the config says.")
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
    """Audit model files, SavedModel directories, directories (recursing into *.keras, *.h5, *.onnx and SavedModels) and globs."""
    if debug:
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = "0"
    if static and (data or inference or stats_file):
        fail("--static runs only the static rules: drop --data, --inference and --stats, or --static")
    if quiet and verbose:
        fail("--quiet and --verbose ask for less and for more: give one of them")
    options = AuditOptions(
        selection=Selection(codes(select) if select else ("ALL",), codes(ignore), codes(extend_select)),
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
    if not auditor.selected_rules(options) and auditor.selected_rules(options, pair=True):
        fail("the selection holds only rules that compare two checkpoints; run them with `bnaudit diff BASE TUNED`")
    if (options.data or options.inference) and importlib.util.find_spec("tensorflow") is None:
        from ..runtime import INSTALL_TENSORFLOW

        fail(f"--data and --inference run the model with TensorFlow, which is not installed ({INSTALL_TENSORFLOW})")
    cluster = _cluster_task(options)
    pairs = targets(auditor, formats, outputs)
    rendering = {**report_options(templates, timestamp), "quiet": quiet}
    started = time.perf_counter()
    files, results = discover(paths)
    refuse_inputs([*(("-o", out) for out in outputs), ("--write-baseline", write_baseline)], [*paths, *files])
    if not files:  # nothing to audit, as pytest and ruff stop on paths that name nothing: no report
        print_errors(results)
        sys.exit(int(ExitCode.ERROR))
    results += audit_models([(path, project.options_for(path, options)) for path in files], jobs, auditor)
    if cluster and not cluster.chief:
        return  # a task of a TF_CONFIG cluster: the chief reports the statistics of the whole data
    notices = [f"config: {project.name}"] if verbose else []
    if write_baseline:
        written = baselines.write(write_baseline, results, __version__)
        notices.append(f"wrote {written} finding{'s' if written != 1 else ''} to the baseline {write_baseline}")
    outcome = accepted.apply(results) if accepted else None
    if outcome:
        notices.append(f"baseline {baseline}: findings suppressed: {outcome.suppressed}, stale entries: {len(outcome.stale)}")
    conclude(
        auditor, results, options, pairs, rendering,
        exit_zero=exit_zero or bool(write_baseline),
        notices=notices,
        stale_fails=bool(outcome and fail_on_stale and outcome.stale),
        started=started if verbose else None,
    )



def _cluster_task(options):
    """The task of a ``TF_CONFIG`` cluster this process is, when the statistics pass runs on one (see docs/statistics.md)."""
    if not options.data:
        return None  # the static path imports nothing of bnaudit.runtime
    from ..runtime.cluster import ClusterError, from_environment

    try:
        return from_environment()
    except ClusterError as exc:
        fail(f"{exc.message} ({exc.hint})" if exc.hint else exc.message)


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
