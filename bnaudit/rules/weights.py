"""Static weight rules BN201-BN205: what the saved BN vectors (and the optimizer's step
count) say, read with h5py only."""

from __future__ import annotations

import math

import numpy as np

from ..findings import Severity
from ..graph import MODEL_CLASSES
from ..hookspecs import hookimpl
from ..rule import Note, SkipRule, rule
from .layers import listed_channels

#: The initializers Keras gives the moving statistics, and the value each leaves.
CONSTANT_INITIALIZERS = {"Zeros": 0.0, "zeros": 0.0, "Ones": 1.0, "ones": 1.0}
DEAD_GAMMA = 1e-6
EXTREME_SCALE = 1e4


def _initial_value(initializer) -> float | None:
    """The constant an initializer config fills with, or None when it is not a constant."""
    if isinstance(initializer, str):
        return CONSTANT_INITIALIZERS.get(initializer)
    if isinstance(initializer, dict):
        name = initializer.get("class_name")
        if not isinstance(name, str):
            return None
        config = initializer.get("config")
        if name in ("Constant", "constant") and isinstance(config, dict):
            value = config.get("value")
            return float(value) if isinstance(value, (int, float)) else None
        return CONSTANT_INITIALIZERS.get(name)
    return None



@rule("BN201", "invalid-moving-statistics", Severity.ERROR, needs=("graph", "weights"))
def invalid_moving_statistics(ctx):
    """A BatchNormalization holds NaN or Inf, or a negative moving variance.

    ## What it does
    Reads gamma, beta, moving_mean and moving_variance of every BatchNormalization and
    flags any non-finite value, or a moving_variance below zero.

    ## Why is this bad?
    Inference computes gamma * (x - mean) / sqrt(variance + epsilon) + beta with these
    values: a NaN spreads to every output that depends on the channel, a negative
    variance gives NaN or a huge scale.

    ## Example
    A model whose training diverged for a few steps and was saved anyway.

    ## Use instead
    Restore an earlier checkpoint, or recompute the statistics on training data
    (`bnaudit check --data` shows what they should be).
    """
    for bn in ctx.graph.batchnorms():
        arrays = ctx.bn_arrays(bn)
        problems = {}
        for name in ("gamma", "beta", "moving_mean", "moving_variance"):
            values = getattr(arrays, name)
            if values is None:
                continue
            bad = ~np.isfinite(values)
            if bad.any():
                problems[name] = {"non_finite": int(bad.sum()), "channels": listed_channels(bad)}
        negative = arrays.moving_variance < 0
        if negative.any():
            problems.setdefault("moving_variance", {})["negative"] = int(negative.sum())
            problems["moving_variance"]["negative_channels"] = listed_channels(negative)
        if problems:
            summary = ", ".join(
                f"{name}: " + ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in p.items() if isinstance(v, int))
                for name, p in problems.items()
            )
            yield ctx.finding(
                bn,
                f"BatchNormalization {bn.path!r} holds invalid values ({summary})",
                details={"channels": arrays.channels, "problems": problems},
                fix="restore a checkpoint from before training diverged, or recalibrate the statistics",
            )


@rule("BN202", "moving-statistics-never-updated", Severity.ERROR, needs=("graph", "weights"))
def moving_statistics_never_updated(ctx):
    """A BatchNormalization's moving statistics still equal their initial values.

    ## What it does
    Flags a BatchNormalization whose moving_mean and moving_variance are exactly what
    their initializers set (0 and 1 by default) on every channel.

    ## Why is this bad?
    The statistics were never learned: typically a custom training loop that called
    the model without `training=True` (keras issue #6752), or a model saved before
    training. Inference then normalizes with mean 0 and variance 1, which matches
    nothing the layer was trained on.

    ## Example
    ```python
    for x, y in data:
        with tf.GradientTape() as tape:
            loss = loss_fn(y, model(x))  # training=True missing
    ```

    ## Use instead
    ```python
    loss = loss_fn(y, model(x, training=True))
    ```
    """
    for bn in ctx.graph.batchnorms():
        mean0 = _initial_value(bn.config.get("moving_mean_initializer", "zeros"))
        var0 = _initial_value(bn.config.get("moving_variance_initializer", "ones"))
        if mean0 is None or var0 is None:
            continue
        arrays = ctx.bn_arrays(bn)
        if np.all(arrays.moving_mean == mean0) and np.all(arrays.moving_variance == var0):
            yield ctx.finding(
                bn,
                f"BatchNormalization {bn.path!r} still has its initial moving statistics "
                f"(mean {mean0:g}, variance {var0:g} on all {arrays.channels} channels)",
                details={"channels": arrays.channels, "moving_mean": mean0, "moving_variance": var0},
                fix="train with training=True so the statistics update, or recalibrate them on training data",
            )


@rule("BN203", "dead-channels", Severity.INFO, needs=("graph", "weights"))
def dead_channels(ctx):
    """Some channels of a BatchNormalization have a gamma of (almost) zero.

    ## What it does
    Flags channels with |gamma| < 1e-6. Informational; a warning when more than half
    of the layer's channels are dead.

    ## Why is this bad?
    Such a channel outputs only beta, whatever its input: the filters feeding it are
    wasted (prunable), and many of them point to collapsed training, e.g. too much
    weight decay on gamma.

    ## Example
    A layer trained with a strong L1 penalty on gamma (network slimming) and not pruned.

    ## Use instead
    Prune the dead channels with their producing filters, or lower the regularization.
    """
    for bn in ctx.graph.batchnorms():
        gamma = ctx.bn_arrays(bn).gamma
        if gamma is None:
            continue
        dead = np.abs(gamma) < DEAD_GAMMA
        if dead.any():
            fraction = float(dead.mean())
            yield ctx.finding(
                bn,
                f"BatchNormalization {bn.path!r} has {int(dead.sum())} of {gamma.size} channels with |gamma| < {DEAD_GAMMA:g}",
                details={"dead": int(dead.sum()), "channels": int(gamma.size), "fraction": round(fraction, 4), "dead_channels": listed_channels(dead)},
                fix="prune these channels (and the filters that feed them), or revisit the regularization on gamma",
                severity=Severity.WARNING if fraction > 0.5 else Severity.INFO,
            )


@rule("BN204", "extreme-normalization-scale", Severity.WARNING, needs=("graph", "weights"))
def extreme_normalization_scale(ctx):
    """A BatchNormalization multiplies some channel by more than 10^4.

    ## What it does
    Computes the effective scale |gamma| / sqrt(moving_variance + epsilon) of every
    channel and flags a layer whose largest scale exceeds 1e4.

    ## Why is this bad?
    Such a channel amplifies tiny input noise ten-thousand-fold; in float16 the product
    overflows. It usually comes from a channel whose moving variance collapsed to ~0.

    ## Example
    A channel whose input was constant during training: moving_variance ~ 1e-12.

    ## Use instead
    Raise epsilon, prune the channel, or recalibrate the statistics on representative data.
    """
    for bn in ctx.graph.batchnorms():
        arrays = ctx.bn_arrays(bn)
        epsilon = bn.number("epsilon", 1e-3)
        gamma = np.abs(arrays.gamma) if arrays.gamma is not None else np.ones_like(arrays.moving_variance)
        with np.errstate(all="ignore"):
            scale = gamma / np.sqrt(arrays.moving_variance + epsilon)
        scale = np.where(np.isfinite(scale), scale, 0.0)
        worst = int(np.argmax(scale))
        if scale[worst] > EXTREME_SCALE:
            yield ctx.finding(
                bn,
                f"BatchNormalization {bn.path!r} scales channel {worst} by {scale[worst]:.3g} (> {EXTREME_SCALE:g})",
                details={
                    "max_scale": float(scale[worst]),
                    "channel": worst,
                    "gamma": float(gamma[worst]),
                    "moving_variance": float(arrays.moving_variance[worst]),
                    "epsilon": epsilon,
                    "channels_over": int((scale > EXTREME_SCALE).sum()),
                },
                fix="raise epsilon, prune the channel, or recalibrate the statistics on representative data",
            )


@rule("BN205", "moving-statistics-not-converged", Severity.WARNING, needs=("graph", "weights", "optimizer"), settings={"residual": 0.05}, ranges={"residual": (0, 1)})
def moving_statistics_not_converged(ctx):
    """A BatchNormalization's moving statistics had too few updates for its momentum.

    ## What it does
    Reads the optimizer's step count n from the file (saved with its optimizer:
    `optimizer/vars/0` of a `.keras`, `optimizer_weights` of an `.h5`) and flags a
    trainable BN whose momentum m leaves the initial values a weight m^n above 0.05.
    Each training step updates the moving statistics once,
    moving = m * moving + (1 - m) * batch, so after n steps the initializers (mean 0,
    variance 1) still weigh m^n (Keras's `BatchNormalization` update; PyTorch's
    `momentum` is 1 - m). 0.05 is three time constants of the average
    (m^n = 0.05 at n = ln 0.05 / ln m, about 3 / (1 - m): 299 steps at m = 0.99): the
    usual point where an exponential average counts as settled, and below the
    batch-to-batch noise of the statistics. The limit is `residual` in
    `[tool.bnaudit.bn205]`.

    Not checked (a note says which layers) where the count does not bound the layer's
    updates: frozen layers, and layers of a nested model, whose statistics may have
    been restored from pretrained weights. A file without optimizer state (saved with
    `include_optimizer=False`, or never compiled) lists the rule as skipped, and so does
    a copy written by `bnaudit fix --recalibrate`, which records that its moving
    statistics are population statistics of data that the steps no longer date.

    ## Why is this bad?
    The moving statistics are still partly their initializers (0.99^100 = 0.37), so
    inference normalizes with values between mean 0 / variance 1 and the data's: the
    evaluated model behaves unlike the trained one.

    ## Example
    ```python
    model.fit(x, y, epochs=1)   # 50 steps with BatchNormalization(momentum=0.99)
    ```

    ## Use instead
    ```python
    layers.BatchNormalization(momentum=0.9)   # settles in ~29 steps
    ```
    or train longer, or recompute the statistics on training data (`bnaudit fix --recalibrate`).
    """
    read_count = getattr(ctx.graph.weights, "optimizer_iterations", None)  # .keras, .h5, tf-keras SavedModel
    if read_count is None:
        raise SkipRule("the optimizer's step count is read from .keras and .h5 files and tf-keras SavedModels only")
    steps = read_count()
    if steps is None:
        raise SkipRule("the file holds no optimizer state: saved with include_optimizer=False, or never compiled")
    limit = float(ctx.setting("residual"))
    unbounded: dict[str, list[str]] = {}
    for bn in ctx.graph.batchnorms():
        if not bn.trainable:
            unbounded.setdefault("frozen", []).append(bn.path)
            continue
        # A wrapper (TimeDistributed) trains with the model; a nested model may come restored.
        enclosing = [model for model in ctx.graph.enclosing_models(bn) if model.class_name in MODEL_CLASSES]
        if enclosing:
            unbounded.setdefault(f"inside nested model {enclosing[-1].path!r}, possibly restored", []).append(bn.path)
            continue
        momentum = float(bn.config.get("momentum", 0.99))
        if not 0 < momentum < 1:
            continue
        residual = momentum**steps
        if residual > limit:
            needed = math.ceil(math.log(limit) / math.log(momentum))
            lower = "" if momentum <= 0.9 else f"lower the momentum (0.9 settles in {math.ceil(math.log(limit) / math.log(0.9))}), "
            yield ctx.finding(
                bn,
                f"BatchNormalization {bn.path!r}: the file records {steps} training steps; at momentum {momentum:g} its "
                f"initial values still weigh {_above(residual, limit)} in the moving statistics (> {limit:g}; {needed} steps needed)",
                details={"steps": steps, "momentum": momentum, "residual": round(residual, 6), "limit": limit, "steps_needed": needed},
                fix=f"train at least {needed} steps, {lower}or recompute the statistics on training data (bnaudit fix --recalibrate)",
            )
    for why, paths in unbounded.items():
        listed = ", ".join(paths[:3]) + (", ..." if len(paths) > 3 else "")
        yield Note(
            f"BN205 did not check {len(paths)} BN layer{'s' if len(paths) != 1 else ''} ({why}: {listed}): "
            f"the optimizer's {steps} steps do not bound their updates"
        )


@hookimpl
def bnaudit_register_rules():
    return [invalid_moving_statistics, moving_statistics_never_updated, dead_channels, extreme_normalization_scale, moving_statistics_not_converged]


def _above(value: float, limit: float) -> str:
    """``value`` with the digits that show it is above ``limit`` (0.050037 is "0.05004",
    not "0.05", next to a limit of 0.05)."""
    for digits in range(2, 8):
        shown = f"{value:.{digits}g}"
        if float(shown) > limit:
            return shown
    return f"{value:g}"
