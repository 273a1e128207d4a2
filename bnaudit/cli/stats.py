"""``bnaudit stats`` and ``bnaudit merge``: the statistics behind BN301/BN303, without a verdict.

``stats`` runs the same measurement as ``check`` (it audits the model with BN301 only
and reads the per-layer numbers from the result, so both commands always agree) and
prints them as a table or JSON. ``--shard K/N -o part.npz`` measures one shard of the
data and writes its partial moments; ``merge`` combines the parts into the statistics
of the whole data, which ``check --stats`` and ``stats --stats`` read without loading
TensorFlow. How to run the shards on an existing scheduler: docs/statistics.md. With
``TF_CONFIG`` naming a cluster, each task measures its share and TensorFlow all-reduces
the moments (:mod:`bnaudit.runtime.cluster`); the chief prints and writes them.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import click

from ..findings import ExitCode
from ..loaders import LoadError
from ..measurements import BatchNormDrift, BatchNormNotMeasured, StatisticsPass, to_json
from ..printable import printable
from ..output import refuse_inputs
from ..result import AuditResult
from .options import PARTS_HINT, STATS_MODEL_HINT, FilePath, fail, statistics_options, statistics_runtime



@click.command()
@click.argument("model", type=FilePath(STATS_MODEL_HINT))
@click.option("--data", type=click.Path(), help="Data to measure: .npy, .npz, an image directory or package.module:function.")
@statistics_options
@click.option("--shard", metavar="K/N", help="Measure only shard K of N (batches K, K+N, ...) and write its partial moments with -o.")
@click.option("-o", "--output", type=FilePath(), help="Write the measured moments to FILE (.npz) for `bnaudit merge` / --stats.")
@click.option("--format", "output_format", type=click.Choice(["text", "json"]), default="text", show_default=True, help="How to print the per-layer table.")
@click.option("--unsafe-load", is_flag=True, help="Load models with Lambda or custom layers (executes their code: trusted models only).")
@click.option("--debug", is_flag=True, help="Show tracebacks.")
def stats(model, data, batch_size, max_samples, upstream, per_channel, stats_file, shard, output, output_format, unsafe_load, debug) -> None:
    """Print, per BN layer, how the data's statistics compare with the moving statistics."""
    from ..config import ConfigError, given_on_command_line, load as load_config
    from ..engine import AuditOptions, Auditor
    from ..options import runtime_options
    from ..parallel import audit_models
    from ..plugins import PluginError
    from ..selection import Selection

    from ..runtime.cluster import ClusterError, from_environment

    runtime = statistics_runtime(data, batch_size, max_samples, upstream, per_channel, stats_file)
    try:  # TF_CONFIG naming several tasks: this process is one of them, and only the chief writes
        cluster = from_environment() if data else None
    except ClusterError as exc:
        fail(f"{exc.message} ({exc.hint})" if exc.hint else exc.message)
    if cluster and shard:
        fail("--shard and a TF_CONFIG cluster both cut the data (unset TF_CONFIG to measure one shard, or drop --shard)")
    if shard:
        if not output:
            fail("--shard writes partial moments: give -o FILE.npz")
        try:
            from ..runtime.data import parse_shard

            runtime["shard"] = parse_shard(shard)
        except LoadError as exc:
            fail(f"{exc.message} ({exc.hint})")
    if output:
        refuse_inputs([("-o", output)], [model, data, stats_file])
        runtime["save_statistics"] = output
    runtime["unsafe_load"] = unsafe_load
    options = AuditOptions(selection=Selection(("BN301",)), data=data, runtime=runtime_options(runtime), debug=debug)
    try:  # the project's config: batch-size, data per model, the BN303 threshold that marks dead channels
        project = load_config()
        options = project.options_for(model, project.apply(options, given_on_command_line(click.get_current_context())))
        options = dataclasses.replace(options, selection=Selection(("BN301",)))
        auditor = Auditor(options)
        project.validate(auditor.rules)
    except (PluginError, ConfigError) as exc:
        fail(str(exc))
    if not options.data and not stats_file:
        fail("stats needs --data DATA (or --stats FILE from `bnaudit merge`)")
    # Read in a child process, as `check` reads: a model that crashes or hangs libhdf5 costs
    # the child; TensorFlow's start-up chatter stays there, progress has its own line.
    [result] = audit_models([(Path(model), options)], 1, auditor)
    for error in result.errors:
        hint = f" ({error.hint})" if error.hint else ""
        click.echo(printable(f"bnaudit: error: {model}: {error.message}{hint}"), err=True)
    if result.errors:
        sys.exit(ExitCode.ERROR)
    if cluster and not cluster.chief:
        return  # the chief prints and writes the statistics of the whole data
    measured = to_json(result.measurements).get("statistics") or {}
    if shard:
        click.echo(f"bnaudit: wrote shard {shard} of {model} ({measured.get('samples', 0)} samples) to {output}", err=True)
    elif output_format == "json":
        click.echo(json.dumps(measured, indent=2, allow_nan=False))
    else:
        click.echo("\n".join(map(printable, table(result).split("\n"))), nl=False)


def table(result: AuditResult) -> str:
    """The per-layer table: layer, channels, drift score, worst channel, mean shift, variance
    ratio (a layer that could not be measured says why), then how the pass was made."""
    header = ("layer", "channels", "drift score", "worst channel", "mean shift", "variance ratio")
    rows = []
    for layer in result.measurements:
        if isinstance(layer, BatchNormDrift):
            worst = "-" if layer.worst_channel is None else str(layer.worst_channel)
            rows.append((layer.layer, str(layer.channels), _fmt(layer.drift_score), worst, _fmt(layer.mean_shift), _fmt(layer.variance_ratio)))
        elif isinstance(layer, BatchNormNotMeasured):
            rows.append((layer.layer, str(layer.channels), "-", "-", "-", "-"))
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths))) for row in [header, *rows]]
    for how in result.measured(StatisticsPass)[:1]:
        lines.append(
            f"{how.samples} samples in {how.batches} batches of {how.batch_size}; "
            f"upstream BN in {how.upstream} mode"
            + (f"; {how.replicas} replicas" if how.replicas > 1 else "")
            + "; mean shift in moving standard deviations, averaged over channels; variance ratio data/moving, geometric mean"
        )
    return "\n".join(lines) + "\n"


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3g}"


@click.command()
@click.argument("parts", nargs=-1, required=True, type=FilePath(PARTS_HINT))
@click.option("-o", "--output", required=True, type=FilePath(), help="Where to write the merged statistics (.npz).")
def merge(parts: tuple[str, ...], output: str) -> None:
    """Merge partial moments written by `bnaudit stats --shard K/N -o PART` into one statistics file."""
    from ..analysis import statistics_file

    refuse_inputs([("-o", output)], parts)
    try:
        loaded = sorted((statistics_file.load(part) for part in parts), key=lambda s: s.shards)
        merged = loaded[0]
        for part in loaded[1:]:
            merged = merged.merge(part)
        statistics_file.save(merged, output)
    except LoadError as exc:
        fail(exc.message + (f" ({exc.hint})" if exc.hint else ""))
    status = "complete" if merged.complete else f"shards {merged.shards} of {merged.shard_count}: merge the rest before auditing"
    click.echo(f"bnaudit: merged {len(parts)} part(s) into {output}: {merged.samples} samples, {merged.batches} batches ({status})", err=True)
