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
from ..result import SkippedRule
from ..rule import rule
from .layers import MAX_LISTED_CHANNELS, listed_channels

if TYPE_CHECKING:
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


def data_statistics(ctx: "RuleContext") -> "DataStatistics | None":
    """The model's statistics from ``--data`` or ``--stats``, measured once per model.

    Returns None when an earlier rule already reported that they cannot be had; this
    rule is then listed as skipped rather than repeating the same error.
    """
    outcome = ctx.shared("statistics", lambda: measure(ctx))
    if outcome is not None:
        _record_pass(ctx, outcome)
    return outcome


def measure(ctx: "RuleContext") -> "DataStatistics":
    """Read ``--stats`` (checked against this model) or run the pass over ``--data``.

    Runtime options read: ``stats``, ``batch_size``, ``max_samples``, ``upstream``,
    ``shard`` (K, N), ``save_statistics`` (write the moments to this ``.npz``) and
    ``progress_terminal`` (where to show progress).
    """
    from ..analysis import statistics_file
    from ..analysis.statistics import fingerprint

    options = ctx.runtime.options
    runtime = options.runtime
    if runtime.get("stats"):
        statistics = statistics_file.load(runtime["stats"])
        if not statistics.complete:
            raise LoadError(
                f"{runtime['stats']} holds shards {statistics.shards} of {statistics.shard_count}",
                "merge every shard with `bnaudit merge` before auditing",
            )
        expected = fingerprint((bn.path, *_moving(ctx, bn)) for bn in ctx.graph.batchnorms())
        if statistics.fingerprint != expected:
            raise LoadError(
                f"{runtime['stats']} was measured on another model (or other moving statistics)",
                "measure the statistics on this model file",
            )
        return statistics
    from ..progress import Progress
    from ..runtime.data import DEFAULT_BATCH_SIZE, iter_batches
    from ..runtime.statistics import collect

    model = ctx.runtime.model
    batch_size = int(runtime.get("batch_size") or DEFAULT_BATCH_SIZE)
    shard = runtime.get("shard")
    batches = iter_batches(options.data, model, batch_size, runtime.get("max_samples"), shard=shard)
    try:
        statistics = collect(
            model,
            batches,
            batch_size=batch_size,
            upstream=runtime.get("upstream", "inference"),
            compare_modes=options.selection.is_selected("BN302"),
            progress=Progress.on_terminal(runtime.get("progress_terminal"), batches.total),
            shard=shard,
        )
    except LoadError:
        raise
    except Exception as exc:  # TensorFlow refusing the data inside the model, out of memory...
        if options.debug:
            raise
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise LoadError(f"the forward pass over --data {options.data} failed ({type(exc).__name__}: {first_line})", "run with --debug for the traceback") from None
    if runtime.get("save_statistics"):
        try:
            statistics_file.save(statistics, runtime["save_statistics"])
        except OSError as exc:
            raise LoadError(f"cannot write {runtime['save_statistics']}: {exc.strerror or exc}", "check the directory exists and is writable") from None
    return statistics


def _moving(ctx: "RuleContext", bn) -> tuple[np.ndarray, np.ndarray]:
    arrays = ctx.bn_arrays(bn)
    return arrays.moving_mean, arrays.moving_variance


def _record_pass(ctx: "RuleContext", statistics: "DataStatistics") -> None:
    measured = ctx.result.measurements.setdefault("statistics", {})
    measured.update(
        samples=statistics.samples,
        batches=statistics.batches,
        batch_size=statistics.batch_size,
        upstream=statistics.upstream,
        replicas=statistics.replicas,
        source="stats" if ctx.runtime.options.runtime.get("stats") else "data",
        seconds=statistics.seconds,
    )


def layer_drifts(ctx: "RuleContext", statistics: "DataStatistics") -> list[LayerDrift]:
    """Every measured BN layer compared with its moving statistics; also fills the measurements."""
    dead_ratio = float(ctx.settings.get("bn303.variance-ratio", BN303_DEFAULTS["variance-ratio"]))
    drifts = []
    per_channel = bool(ctx.runtime.options.runtime.get("per_channel"))
    layers = ctx.result.measurements.setdefault("statistics", {}).setdefault("layers", {})
    for bn in ctx.graph.batchnorms():
        measured = statistics.layers.get(bn.path)
        if measured is None or not measured.moments.channels or measured.moments.count[0] == 0:
            continue  # a BN the forward pass never reached (an unused branch)
        mean, variance = _moving(ctx, bn)
        drift = compare_layer(measured, mean, variance, float(bn.config.get("epsilon", 1e-3)), dead_ratio)
        layers[bn.path] = drift.summary() | ({"per_channel": drift.per_channel()} if per_channel else {})
        drifts.append(drift)
    return drifts


def thresholds(ctx: "RuleContext") -> dict[str, float]:
    """The rule's thresholds: the declared defaults, overridden by the project's settings."""
    return {key: float(ctx.setting(key)) for key in ctx.rule.settings}


# -- rules ---------------------------------------------------------------------------


@rule("BN301", "moving-statistics-drift", Severity.WARNING, needs=("graph", "weights", "data"), settings=BN301_DEFAULTS)
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
    a factor `exp(bn301.log-variance-ratio)` (4).

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
    if statistics is None:
        return
    limits = thresholds(ctx)
    for drift in layer_drifts(ctx, statistics):
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


@rule("BN302", "train-inference-divergence", Severity.WARNING, needs=("graph", "data", "runtime"), settings=BN302_DEFAULTS)
def train_inference_divergence(ctx):
    """The model's outputs with BN on batch statistics and on moving statistics diverge.

    ## What it does
    On the same batches of `--data`, runs the model once with every BatchNormalization
    normalizing with the batch's own statistics (as in training; frozen layers stay on
    their moving statistics, as in `fit`) and once with the moving statistics (as in
    inference), everything else in inference mode. It compares the outputs with linear
    CKA (minibatch form with unbiased HSIC, summed over batches) and, for outputs with
    a class axis, top-1 agreement. Fires when CKA < `bn302.cka` (0.75, as in
    TheDeepChecker) or agreement < `bn302.agreement` (0.8).

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
    if statistics is None:
        return
    if statistics.comparison is None:
        ctx.result.skipped.append(SkippedRule(ctx.rule.code, "statistics files hold no model outputs; BN302 needs --data"))
        return
    limits = thresholds(ctx)
    cka, agreement = statistics.comparison.cka, statistics.comparison.agreement
    ctx.result.measurements["train_inference"] = {
        "cka": rounded(cka) if cka is not None else None,
        "top1_agreement": rounded(agreement) if agreement is not None else None,
        "compared_predictions": statistics.comparison.compared,
        "samples": statistics.samples,
    }
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
        details={**ctx.result.measurements["train_inference"], "thresholds": limits, "batch_size": statistics.batch_size},
        fix="recompute the moving statistics on training data (or train longer / with a lower BN momentum)",
    )


@rule("BN303", "channels-dead-on-data", Severity.INFO, needs=("graph", "weights", "data"), settings=BN303_DEFAULTS)
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
    if statistics is None:
        return
    ratio = thresholds(ctx)["variance-ratio"]
    for drift in layer_drifts(ctx, statistics):
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
