"""The ``bnaudit`` command line.

Output goes to stdout or ``-o FILE``; problems with input go to stderr as one line each
(``bnaudit: error: PATH: what is wrong (what to do)``), never as a traceback unless
``--debug``. Exit codes: 0 clean, 1 findings at or above ``--fail-on``, 2 usage error,
unreadable model or crashed rule.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # before anything can import TensorFlow

import importlib.util
import sys
import time
from typing import Any

import click

from . import __version__
from . import baseline as baselines
from .config import ConfigError, config_options, given_on_command_line, load as load_config
from .engine import AuditOptions, Auditor, discover, exit_code
from .findings import ExitCode, Severity
from .format_pairing import FormatOutputCommand, pair_formats_and_outputs
from .gate_options import gate_options
from .output import OutputError, write_atomic
from .parallel import audit_models, run_options, timing_lines
from .plugins import PluginError, collect_reporters, collect_rules, make_plugin_manager, plugin_infos
from .report_cli import rendering_options, report, report_options
from .reporters import RenderError, Report
from .reporters.text import summary_line
from .selection import Selection
from .stats_cli import merge, statistics_options, statistics_runtime, stats
from .diff_cli import diff


def _codes(values: tuple[str, ...]) -> tuple[str, ...]:
    """``--select BN1,BN2 --select BN5`` -> ("BN1", "BN2", "BN5")."""
    return tuple(code.strip().upper() for value in values for code in value.split(",") if code.strip())


def fail(message: str) -> None:
    """One line on stderr and exit 2: for errors the user can fix."""
    click.echo(f"bnaudit: error: {message}", err=True)
    sys.exit(ExitCode.ERROR)


def use_color(stream) -> bool:
    return stream.isatty() and not os.environ.get("NO_COLOR")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="bnaudit")
def cli() -> None:
    """Audit the BatchNormalization layers of saved Keras models."""


@cli.command(cls=FormatOutputCommand)
@click.argument("paths", nargs=-1, required=True)
@gate_options
@click.option("--data", type=click.Path(), help="Data for the statistics rules (BN3xx): .npy, .npz, an image directory or module:function.")
@click.option("--inference", is_flag=True, help="Re-run inference on seeded synthetic inputs (BN4xx) even without --data.")
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
@baselines.baseline_options
@run_options
def check(paths, select, ignore, extend_select, fail_on, exit_zero, formats, outputs, data, inference, plugins, debug, templates, timestamp,
          config_file, isolated, baseline, write_baseline, fail_on_stale, jobs, quiet, verbose,
          devices, reference, atol, rtol, allow_tf32, unsafe_load, custom_objects,
          batch_size, max_samples, upstream, per_channel, stats_file) -> None:
    """Audit model files, directories (recursing into *.keras and *.h5) and globs."""
    if debug:
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = "0"
    options = AuditOptions(
        selection=Selection(_codes(select) or ("ALL",), _codes(ignore), _codes(extend_select)),
        fail_on=Severity.parse(fail_on),
        data=data,
        inference=inference,
        runtime={
            **_inference_options(devices, reference, atol, rtol, allow_tf32, unsafe_load, custom_objects),
            **statistics_runtime(data, batch_size, max_samples, upstream, per_channel, stats_file),
        },
        plugins=tuple(plugins),
        debug=debug,
    )
    try:
        project = load_config(config_file, isolated)
        options = project.apply(options, given_on_command_line(click.get_current_context()))
        auditor = Auditor(options)
        project.validate(auditor.rules)
        accepted = baselines.Baseline.read(baseline) if baseline else None
    except (PluginError, ConfigError, baselines.BaselineError) as exc:
        fail(str(exc))
    unknown = options.selection.unknown(auditor.rules)
    if unknown:
        fail(f"{', '.join(unknown)} match no rule; `bnaudit rules` lists the codes")
    if (options.data or options.inference) and importlib.util.find_spec("tensorflow") is None:
        fail('--data and --inference run the model with TensorFlow, which is not installed (pip install "bnaudit[tensorflow]")')
    targets = _targets(auditor, formats, outputs)
    rendering = {**report_options(templates, timestamp), "quiet": quiet}
    started = time.perf_counter()
    files, results = discover(paths)
    results += audit_models([(path, project.options_for(path, options)) for path in files], jobs, auditor)
    notices = [f"config: {project.name}"] if verbose else []
    if write_baseline:
        notices.append(f"wrote {baselines.write(write_baseline, results, __version__)} findings to the baseline {write_baseline}")
    outcome = accepted.apply(results) if accepted else None
    if outcome:
        notices.append(f"baseline {baseline}: findings suppressed: {outcome.suppressed}, stale entries: {len(outcome.stale)}")
    conclude(
        auditor, results, options, targets, rendering,
        exit_zero=exit_zero or bool(write_baseline),
        notices=notices,
        stale_fails=bool(outcome and fail_on_stale and outcome.stale),
        started=started if verbose else None,
    )


def conclude(auditor: Auditor, results, options: AuditOptions, targets, rendering: dict[str, Any], *, exit_zero: bool = False,
             notices: list[str] | None = None, stale_fails: bool = False, started: float | None = None) -> None:
    """The end of every command that gives a verdict: errors on stderr, the reports, the
    notices (the summary when every report went to a file; timings when ``started``),
    then exit with the verdict's code (``stale_fails`` turns a clean run into 1)."""
    for result in results:
        for error in result.errors:
            where = f" [{error.rule}]" if error.rule else ""
            hint = f" ({error.hint})" if error.hint else ""
            click.echo(f"bnaudit: error: {result.path}{where}: {error.message}{hint}", err=True)
    _emit(auditor, results, options, targets, rendering)
    notices = list(notices or [])
    if all(output is not None for _, output in targets):  # every report in a file: the verdict still shows
        notices.append(summary_line(Report(results=results, rules=auditor.rules)))
    if started is not None:
        notices += timing_lines(results, time.perf_counter() - started)
    for line in [] if rendering.get("quiet") else notices:
        click.echo(line, err=True)
    code = exit_code(results, options.fail_on)
    if stale_fails and code == ExitCode.OK:
        code = ExitCode.FINDINGS
    if exit_zero and code == ExitCode.FINDINGS:
        code = ExitCode.OK
    sys.exit(int(code))


def _inference_options(devices, reference, atol, rtol, allow_tf32, unsafe_load, custom_objects) -> dict[str, Any]:
    """The BN4xx flags as ``AuditOptions.runtime`` keys (see docs/inference.md)."""
    if custom_objects and not unsafe_load:
        fail("--custom-objects imports code for the model's custom layers: it needs --unsafe-load")
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


def _targets(auditor: Auditor, formats: tuple[str, ...], outputs: tuple[str, ...]) -> list[tuple[Any, str | None]]:
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


def _emit(auditor: Auditor, results, options: AuditOptions, targets, rendering: dict[str, Any] | None = None) -> None:
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


@cli.command()
@click.argument("code", required=False)
@click.option("-p", "--plugin", "plugins", multiple=True, help="Load a plugin module first.")
def rules(code: str | None, plugins: tuple[str, ...]) -> None:
    """List the rules, or show the documentation of one (bnaudit rules BN101)."""
    all_rules = _rules(plugins)
    if code is None:
        for rule in all_rules.values():
            needs = "+".join(sorted(rule.needs - {"graph"})) or "graph"
            click.echo(f"{rule.code}  {rule.name:<36} {rule.severity.label:<8} {needs:<14} {rule.summary}")
        return
    found = all_rules.get(code.upper()) or next((r for r in all_rules.values() if r.name == code), None)
    if found is None:
        fail(f"no rule {code!r}; `bnaudit rules` lists them")
    click.echo(f"# {found.code} {found.name}\n")
    click.echo(f"Default severity: {found.severity.label}. Needs: {', '.join(sorted(found.needs))}.\n")
    if found.settings:
        thresholds = ", ".join(f"{key} = {value!r}" for key, value in found.settings.items())
        click.echo(f"Thresholds ([tool.bnaudit.{found.code.lower()}] in the config): {thresholds}.\n")
    click.echo(f"{found.summary}\n\n{found.docs}")


@cli.command()
@click.option("-p", "--plugin", "plugins", multiple=True, help="Load a plugin module first.")
def plugins(plugins: tuple[str, ...]) -> None:
    """List the loaded plugins with their versions and the rules each adds."""
    try:
        pm = make_plugin_manager(plugins)
    except PluginError as exc:
        fail(str(exc))
    for info in plugin_infos(pm):
        kind = "builtin" if info.builtin else info.version
        added = ", ".join(info.rules + [f"format:{r}" for r in info.reporters]) or "-"
        click.echo(f"{info.name:<32} {kind:<10} {added}")


@cli.command()
def formats() -> None:
    """List the output formats."""
    for reporter in collect_reporters(make_plugin_manager()).values():
        click.echo(f"{reporter.name:<10} {reporter.description}")


cli.add_command(report)
cli.add_command(stats)
cli.add_command(merge)
cli.add_command(diff)


def _rules(plugins: tuple[str, ...]):
    try:
        return collect_rules(make_plugin_manager(plugins))
    except PluginError as exc:
        fail(str(exc))


def main() -> None:
    """Console entry point: plugins may add commands before the command line is parsed."""
    try:
        make_plugin_manager().hook.bnaudit_register_commands(cli=cli)
    except PluginError as exc:
        fail(str(exc))
    try:
        cli(prog_name="bnaudit")
    except OutputError as exc:
        fail(f"{exc} (check the path and its permissions)")
