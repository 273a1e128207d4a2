"""Data-driven rules BN301-BN303: what the supplied data does at each BatchNormalization.

All three share one statistics pass per model (``ctx.runtime.memo("statistics")``):
from ``--data`` (:func:`bnaudit.runtime.statistics.collect`, which loads the model with
Keras) or from a merged statistics file given with ``--stats`` (which needs no
TensorFlow). The moving statistics they are compared with are read from the file like
every static rule reads them.

The per-channel comparison and the drift score are in :mod:`bnaudit.analysis.drift`.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

from ..analysis.drift import DEAD_VARIANCE_RATIO, LayerDrift, compare_layer, rounded
from ..findings import Severity
from ..hookspecs import hookimpl
from ..loaders import LoadError
from ..measurements import BatchNormDrift, BatchNormNotMeasured, StatisticsPass, TrainInferenceComparison
from ..printable import exception_line
from ..rule import Note, SkipRule, rule
from ..writers import BATCH_STATISTICS, INFERENCE_MODE, writer_of
from .layers import MAX_LISTED_CHANNELS, listed_channels

if TYPE_CHECKING:
    from ..analysis.statistics import LayerStatistics
    from ..context import RuleContext
    from ..analysis.statistics import DataStatistics

#: Defaults of the ``bn301.*`` settings. A model's own training data stays far below
#: them (drift scores of 0.002-0.003 in the tests, see docs/statistics.md); a mean shift
#: of 0.7 standard deviations on every channel, or a 2.6x variance change, scores 0.5.
BN301_DEFAULTS = {
    "drift-score": 0.5,
    "mean-shift": 1.0,
    "log-variance-ratio": math.log(4.0),
    "channel-fraction": 0.25,
}
#: CKA 0.75 as in TheDeepChecker; below 80% top-1 agreement one prediction in five
#: changes with the normalization mode (a weakly trained model's own data gave ~89%).
BN302_DEFAULTS = {"cka": 0.75, "agreement": 0.8}
#: A channel is dead on the data when its variance there is below this fraction of its moving variance.
BN303_DEFAULTS = {"variance-ratio": DEAD_VARIANCE_RATIO}


# -- the shared pass -----------------------------------------------------------------


def data_statistics(ctx: "RuleContext") -> "DataStatistics":
    """The model's statistics from ``--data`` or ``--stats``, measured once per model.

    When they cannot be had, every rule that asks is stopped by the one error of the
    rule that tried first (``RuleContext.shared``).
    """
    return ctx.shared("statistics", lambda: measure(ctx))


def measure(ctx: "RuleContext") -> "DataStatistics":
    """Read ``--stats`` (checked against this model) or run the pass over ``--data``.

    Options read: ``RuntimeOptions.batch_size`` and ``max_samples``, and every field of
    :class:`~bnaudit.options.StatisticsOptions`.
    """
    from ..analysis import statistics_file

    options = ctx.runtime.options
    runtime = options.runtime
    wanted = runtime.statistics
    if wanted.stats:
        statistics = statistics_file.load(wanted.stats)
        if not statistics.complete:
            raise LoadError(
                f"{wanted.stats} holds shards {statistics.shards} of {statistics.shard_count}",
                "merge every shard with `bnaudit merge` before auditing",
            )
        if statistics.fingerprint != model_fingerprint(ctx):
            raise LoadError(
                f"{wanted.stats} was measured on another model (or other moving statistics)",
                "measure the statistics on this model file",
            )
        return statistics
    from ..progress import Progress
    from ..runtime import cluster as clusters
    from ..runtime.data import DEFAULT_BATCH_SIZE, data_order, iter_batches

    batch_size = int(runtime.batch_size or DEFAULT_BATCH_SIZE)
    shard = wanted.shard
    cluster = clusters.from_environment()
    if cluster is not None:
        if ctx.graph.runner == "onnxruntime":
            raise LoadError("a TF_CONFIG cluster runs the Keras pass; an ONNX model is measured with ONNX Runtime", "unset TF_CONFIG, and cut the data with --shard K/N and bnaudit merge")
        if wanted.shard:
            raise LoadError("--shard and a TF_CONFIG cluster both cut the data", "unset TF_CONFIG to measure one shard, or drop --shard")
        clusters.start(cluster)  # before the model: collective ops are set up before anything runs
    try:
        if ctx.graph.runner == "onnxruntime":  # ONNX Runtime and numpy, no TensorFlow
            statistics, batches = _measure_onnx(ctx, batch_size)
        else:
            from ..runtime.statistics import collect

            model = ctx.runtime.model
            writer = writer_of(ctx.graph.format, ctx.graph.keras_version)
            if writer.frozen_bn != INFERENCE_MODE and any(not bn.trainable for bn in ctx.graph.batchnorms()):
                ctx.runtime.memo("statistics_note", lambda: (
                    f"training mode (BN302, --upstream training) runs the frozen BN layers as the writer does: {writer.frozen_bn_behaviour()}"
                    + ("; measured with batch statistics" if writer.frozen_bn == BATCH_STATISTICS else "; measured on moving statistics")
                ))
            batches = iter_batches(options.data, model, batch_size, runtime.max_samples, shard=cluster.shard if cluster else shard, **data_order(runtime))
            statistics = collect(
                model,
                batches,
                batch_size=batch_size,
                upstream=wanted.upstream,
                compare_modes=options.selection.is_selected("BN302"),
                frozen_use_batch=writer.frozen_bn == BATCH_STATISTICS,
                progress=Progress.on_terminal(wanted.progress_terminal, batches.total),
                shard=shard,
                cluster=cluster,
            )
    except LoadError:
        raise
    except Exception as exc:  # TensorFlow or ONNX Runtime refusing the data inside the model, out of memory...
        if options.debug:
            raise
        raise LoadError(f"the forward pass over --data {options.data} failed ({exception_line(exc)})", "run with --debug for the traceback") from None
    ctx.runtime.memo("statistics_order", lambda: batches.order)
    if wanted.save_statistics and (cluster is None or cluster.chief):  # one task writes
        try:
            statistics_file.save(statistics, wanted.save_statistics)
        except OSError as exc:
            raise LoadError(f"cannot write {wanted.save_statistics}: {exc.strerror or exc}", "check the directory exists and is writable") from None
    return statistics


def _measure_onnx(ctx: "RuleContext", batch_size: int):
    """The pass of :mod:`bnaudit.runtime.onnx_statistics` over ``--data``: (statistics, batches)."""
    from ..progress import Progress
    from ..runtime.data import data_order, iter_batches
    from ..runtime.onnx_statistics import OnnxStatisticsPass

    options = ctx.runtime.options
    runtime = options.runtime
    wanted = runtime.statistics
    if wanted.upstream != "inference":
        raise LoadError(
            "--upstream training needs every BN to run on batch statistics; an ONNX BatchNormalization runs on its stored ones",
            "measure ONNX models with --upstream inference (the default), or the .keras original with --upstream training",
        )
    onnx_pass = OnnxStatisticsPass(ctx.runtime.path, ctx.graph)
    if onnx_pass.fixed_batch is not None:
        batch_size = onnx_pass.fixed_batch
    batches = iter_batches(options.data, onnx_pass.input_specs(), batch_size, runtime.max_samples, shard=wanted.shard, **data_order(runtime))
    statistics = onnx_pass.collect(
        batches,
        batch_size=batch_size,
        fingerprint=model_fingerprint(ctx),
        progress=Progress.on_terminal(wanted.progress_terminal, batches.total),
        shard=wanted.shard,
    )
    notes = onnx_pass.notes()
    if notes:
        ctx.runtime.memo("statistics_pass_notes", lambda: notes)
    return statistics, batches


def model_fingerprint(ctx: "RuleContext") -> str:
    """The hash of the moving statistics as the file holds them (``--stats`` must match it)."""
    from ..analysis.statistics import fingerprint

    return fingerprint((bn.path, *_moving(ctx, bn)) for bn in ctx.graph.batchnorms())


def _moving(ctx: "RuleContext", bn) -> tuple[np.ndarray, np.ndarray]:
    arrays = ctx.bn_arrays(bn)
    return arrays.moving_mean, arrays.moving_variance


def pass_measurement(ctx: "RuleContext", statistics: "DataStatistics") -> StatisticsPass:
    """How the statistics were measured (samples, batches, where from), for the reports."""
    return StatisticsPass(
        samples=statistics.samples,
        batches=statistics.batches,
        batch_size=statistics.batch_size,
        upstream=statistics.upstream,
        replicas=statistics.replicas,
        source="stats" if ctx.runtime.options.runtime.statistics.stats else "data",
        seconds=statistics.seconds,
        order=ctx.runtime.memo("statistics_order", lambda: None) or "",
    )


def layer_drifts(ctx: "RuleContext", statistics: "DataStatistics") -> tuple[list[LayerDrift], list[BatchNormDrift | BatchNormNotMeasured | Note]]:
    """Every measured BN layer compared with its moving statistics, and what the reports
    show of each (:class:`~bnaudit.measurements.BatchNormDrift`, or why it was not measured)."""
    dead_ratio = float(ctx.settings.get("bn303.variance-ratio", BN303_DEFAULTS["variance-ratio"]))
    drifts = []
    per_channel = ctx.runtime.options.runtime.statistics.per_channel
    measured_layers: list[BatchNormDrift | BatchNormNotMeasured | Note] = []
    notes = [Note(text) for text in ctx.runtime.memo("statistics_pass_notes", lambda: [])]
    for bn in ctx.graph.batchnorms():
        measured = statistics.layers.get(bn.path)
        if measured is None or not measured.moments.channels or measured.moments.count[0] == 0:
            continue  # a BN the forward pass never reached (an unused branch)
        mean, variance = _moving(ctx, bn)
        why = _unmeasurable(mean, variance, measured)
        if why:
            measured_layers.append(BatchNormNotMeasured(bn.path, int(mean.shape[0]), why))
            notes.append(Note(f"BN301-BN303 did not measure {bn.path!r}: {why}"))
            continue
        drift = compare_layer(measured, mean, variance, bn.number("epsilon", 1e-3), dead_ratio)
        measured_layers.append(BatchNormDrift(bn.path, **drift.summary(), per_channel=drift.per_channel() if per_channel else None))
        drifts.append(drift)
    return drifts, [*measured_layers, *notes]


def _unmeasurable(moving_mean: np.ndarray, moving_variance: np.ndarray, measured: "LayerStatistics") -> str:
    """Why a layer's drift would be meaningless ("" when it is not): a drift score from
    NaN or infinite statistics says nothing about the data."""
    if not (np.isfinite(moving_mean).all() and np.isfinite(moving_variance).all()):
        return "its moving statistics hold NaN or Inf (see BN201)"
    if (moving_variance < 0).any():
        return "its moving variance is negative (see BN201)"
    if not (np.isfinite(measured.moments.mean).all() and np.isfinite(measured.moments.variance).all()):
        return "its input on the data holds NaN or Inf (an overflow upstream of it)"
    return ""


def thresholds(ctx: "RuleContext") -> dict[str, float]:
    """The rule's thresholds: the declared defaults, overridden by the project's settings."""
    return {key: float(ctx.setting(key)) for key in ctx.rule.settings}


# -- rules ---------------------------------------------------------------------------


@rule("BN301", "moving-statistics-drift", Severity.WARNING, needs=("graph", "weights", "data"), settings=BN301_DEFAULTS, ranges={"drift-score": (0, None), "mean-shift": (0, None), "log-variance-ratio": (0, None), "channel-fraction": (0, 1)})
def moving_statistics_drift(ctx):
    """On the supplied data, a BatchNormalization's input statistics differ from its moving statistics.

    ## What it does
    Runs the model once over `--data` (or reads `--stats`), measures the per-channel
    mean and variance of every BatchNormalization's input, and compares them with the
    layer's moving mean and variance: standardized mean shift, log variance ratio and
    the symmetric KL divergence of the two Gaussians. A layer fires when its drift
    score (mean symmetric KL over channels) exceeds `bn301.drift-score` (0.5), or when
    at least `bn301.channel-fraction` (25%) of its channels shift their mean by more
    than `bn301.mean-shift` (1.0) standard deviations or their variance by more than
    a factor `exp(bn301.log-variance-ratio)` (4). A layer whose moving statistics hold
    NaN, Inf or a negative variance (BN201's finding), or whose input on the data is not
    finite, is not measured by BN301-BN303; a note says which and why.

    ## Why is this bad?
    At inference the layer normalizes with its moving statistics. When the data the
    model now sees has other statistics, every later layer receives inputs unlike
    those it was trained on: distribution shift (new camera, other preprocessing), or
    moving statistics that went stale (fine-tuning with frozen BN, a wrong momentum).

    ## Example
    A model trained on images scaled to [0, 1] fed images in [0, 255]: the first BN
    sees a mean shift of hundreds of standard deviations.

    ## Use instead
    Feed the data with the training preprocessing; if the data is right and the
    statistics are stale, recompute them on representative data (a few training-mode
    passes with every other weight frozen).
    """
    statistics = data_statistics(ctx)
    yield pass_measurement(ctx, statistics)
    drifts, measured = layer_drifts(ctx, statistics)
    yield from measured
    limits = thresholds(ctx)
    for drift in drifts:
        drifted = drift.drifted(limits["mean-shift"], limits["log-variance-ratio"])
        fraction = float(drifted.sum() / drift.channels)
        score = drift.drift_score
        if score <= limits["drift-score"] and fraction < limits["channel-fraction"]:
            continue
        worst = drift.worst_channel
        summary = drift.summary()
        yield ctx.finding(
            drift.path,
            f"on the data, {drift.path!r} drifts from its moving statistics: drift score {score:.3g} "
            f"(threshold {limits['drift-score']:g}), {int(drifted.sum())} of {drift.channels} channels beyond "
            f"mean shift {limits['mean-shift']:g} or variance ratio x{math.exp(limits['log-variance-ratio']):.3g}; "
            f"worst channel {worst}: mean shift {drift.mean_shift[worst]:.3g} std, "
            f"variance ratio {math.exp(drift.log_variance_ratio[worst]):.3g}",
            details={
                **summary,
                "drifted_channels": int(drifted.sum()),
                "drifted_fraction": rounded(fraction),
                "drifted_channel_list": listed_channels(drifted),
                "thresholds": limits,
                "samples": statistics.samples,
                "upstream": statistics.upstream,
            },
            fix="check that the data is preprocessed as in training; if it is, recompute the moving statistics on representative data",
        )


@rule("BN302", "train-inference-divergence", Severity.WARNING, needs=("graph", "data", "runtime"), settings=BN302_DEFAULTS, ranges={"cka": (0, 1), "agreement": (0, 1)})
def train_inference_divergence(ctx):
    """The model's outputs with BN on batch statistics and on moving statistics diverge.

    ## What it does
    On the same batches of `--data`, runs the model once with every BatchNormalization
    normalizing with the batch's own statistics (as in training; frozen layers stay on
    their moving statistics, as in `fit`) and once with the moving statistics (as in
    inference), everything else in inference mode. It compares the outputs with linear
    CKA (minibatch form with unbiased HSIC, summed over batches) and, for outputs with
    a class axis, top-1 agreement. Fires when CKA < `bn302.cka` (0.75, as in
    TheDeepChecker) or agreement < `bn302.agreement` (0.8). CKA needs batches of at
    least 4 samples, agreement an output with a class axis, and batches whose outputs
    hold NaN or Inf are left out: what could not be computed is listed under
    `not_judged` in the measurements, and when neither measure could, the rule is
    listed as skipped with the reasons.

    ## Why is this bad?
    The model learned its weights against batch statistics; if the moving statistics
    do not reproduce them, the deployed model computes something other than what was
    trained and validated in training mode.

    ## Example
    Moving statistics from a short training run with momentum 0.99: they still hold
    mostly their initial 0 and 1, and inference outputs barely resemble training ones.

    ## Use instead
    Recompute the moving statistics on training data, train longer or with a lower
    momentum, or use larger batches so batch statistics are stable.
    """
    statistics = data_statistics(ctx)
    yield pass_measurement(ctx, statistics)
    if statistics.comparison is None:
        raise SkipRule("statistics files hold no model outputs; BN302 needs --data")
    limits = thresholds(ctx)
    cka, agreement = statistics.comparison.cka, statistics.comparison.agreement
    unjudged = _unjudged(statistics)
    compared = TrainInferenceComparison(
        cka=rounded(cka) if cka is not None else None,
        top1_agreement=rounded(agreement) if agreement is not None else None,
        compared_predictions=statistics.comparison.compared,
        samples=statistics.samples,
        not_judged=tuple(unjudged),
    )
    yield compared
    note = ctx.runtime.memo("statistics_note", lambda: None)
    if note:
        yield Note(note)
    if unjudged:
        if cka is None and agreement is None:
            raise SkipRule(f"not judged: {'; '.join(unjudged)}")
    low_cka = cka is not None and cka < limits["cka"]
    low_agreement = agreement is not None and agreement < limits["agreement"]
    if not (low_cka or low_agreement):
        return
    parts = []
    if cka is not None:
        parts.append(f"linear CKA {cka:.3f} (threshold {limits['cka']:g})")
    if agreement is not None:
        parts.append(f"top-1 agreement {agreement:.1%} (threshold {limits['agreement']:.0%})")
    yield ctx.finding(
        "",
        f"outputs with BN on batch statistics and on moving statistics diverge on the data: {', '.join(parts)}",
        details={**compared.to_dict(), "thresholds": limits, "batch_size": statistics.batch_size},
        fix="recompute the moving statistics on training data (or train longer / with a lower BN momentum)",
    )


def _unjudged(statistics: "DataStatistics") -> list[str]:
    """Why BN302's measures could not be computed on this data (empty when both were)."""
    comparison = statistics.comparison
    reasons = []
    if comparison.non_finite_batches:
        reasons.append(f"the outputs held NaN or Inf in {comparison.non_finite_batches} of {statistics.batches} batches, left out")
    if comparison.cka is None and comparison.non_finite_batches < statistics.batches:
        if statistics.batch_size < 4 or statistics.samples < 4:
            reasons.append(
                f"linear CKA needs batches of at least 4 samples (batch size {statistics.batch_size}, "
                f"{statistics.samples} samples): give more data or a larger --batch-size"
            )
        else:
            reasons.append("linear CKA is undefined: the outputs are constant in one of the modes")
    if comparison.agreement is None and comparison.non_finite_batches < statistics.batches:
        reasons.append("top-1 agreement needs an output with a class axis of at least 2")
    return reasons


@rule("BN303", "channels-dead-on-data", Severity.INFO, needs=("graph", "weights", "data"), settings=BN303_DEFAULTS, ranges={"variance-ratio": (0, 1)})
def channels_dead_on_data(ctx):
    """Some channels of a BatchNormalization never vary on the data, though they did in training.

    ## What it does
    Flags channels whose input variance on `--data` is below `bn303.variance-ratio`
    (1e-6) times their moving variance, while the moving variance itself is above the
    layer's epsilon.

    ## Why is this bad?
    The data never activates these channels (e.g. a ReLU before the BN that is always
    off): the layer outputs a constant there, the filters feeding them are wasted on
    this data, and the data may not cover what the model was trained for.

    ## Example
    A ReLU -> BatchNormalization where, on the new data, one unit's pre-activation is
    always negative.

    ## Use instead
    Check that the data covers the training distribution; if it should, prune the
    channels or retrain.
    """
    statistics = data_statistics(ctx)
    yield pass_measurement(ctx, statistics)
    drifts, measured = layer_drifts(ctx, statistics)
    yield from measured
    ratio = thresholds(ctx)["variance-ratio"]
    for drift in drifts:
        if not drift.dead.any():
            continue
        yield ctx.finding(
            drift.path,
            f"{int(drift.dead.sum())} of {drift.channels} channels of {drift.path!r} never vary on the data "
            f"(variance < {ratio:g} x moving variance): channels {listed_channels(drift.dead)}",
            details={
                "dead": int(drift.dead.sum()),
                "channels": drift.channels,
                "dead_channels": listed_channels(drift.dead),
                "data_variance": [rounded(v) for v in drift.statistics.moments.variance[drift.dead][:MAX_LISTED_CHANNELS]],
                "moving_variance": [rounded(v) for v in drift.moving_variance[drift.dead][:MAX_LISTED_CHANNELS]],
                "variance_ratio": ratio,
            },
            fix="check that the data covers what the model was trained on; otherwise prune these channels",
        )


@hookimpl
def bnaudit_register_rules():
    return [moving_statistics_drift, train_inference_divergence, channels_dead_on_data]
