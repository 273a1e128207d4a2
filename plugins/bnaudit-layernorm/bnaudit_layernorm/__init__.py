"""bnaudit rules for LayerNormalization and GroupNormalization (codes LN101, LN201, LN202).

Static like bnaudit's own BN1xx/BN2xx rules: the architecture comes from bnaudit's
ModelGraph and the gamma/beta arrays from ``weights.layer_arrays``, so no TensorFlow is
imported and nothing from the model file is executed.
"""

from __future__ import annotations

import numpy as np

from bnaudit.plugin_api import CONV_RANKS, Severity, channel_axis_mismatch, hookimpl, rule

NORMALIZATION_CLASSES = frozenset({"LayerNormalization", "GroupNormalization"})
CONV_CLASSES = frozenset(CONV_RANKS)
MAX_LISTED = 10


def normalizations(graph):
    return graph.of_class(NORMALIZATION_CLASSES)


def scale_and_offset(ctx, layer) -> dict[str, np.ndarray]:
    """gamma and beta of a LayerNormalization/GroupNormalization, those its config keeps.

    Keras creates gamma before beta; ``rms_scaling`` (Keras 3 LayerNormalization) drops beta.
    """
    names = []
    if layer.config.get("scale", True):
        names.append("gamma")
    if layer.config.get("center", True) and not layer.config.get("rms_scaling", False):
        names.append("beta")
    return ctx.graph.weights.layer_arrays(layer, names) if names else {}


def _listed(mask: np.ndarray) -> list[int]:
    return [int(i) for i in np.flatnonzero(mask)[:MAX_LISTED]]


@rule("LN101", "normalization-axis-not-channels", Severity.WARNING)
def normalization_axis_not_channels(ctx):
    """A LayerNormalization or GroupNormalization normalizes an axis that is not its convolution's channel axis.

    ## What it does
    Flags a LayerNormalization or GroupNormalization fed by a convolution (through
    identity-like layers) whose `axis` does not include the convolution's channel axis:
    typically `data_format="channels_first"` followed by the default `axis=-1`.

    ## Why is this bad?
    GroupNormalization then splits the width into "groups" instead of the channels, and
    LayerNormalization normalizes each row of each channel on its own: the layer trains,
    but it computes a different normalization from the one the architecture intends.

    ## Example
    ```python
    x = layers.Conv2D(32, 3, data_format="channels_first")(x)
    x = layers.GroupNormalization(groups=8)(x)  # axis=-1: the width
    ```

    ## Use instead
    ```python
    x = layers.Conv2D(32, 3, data_format="channels_first")(x)
    x = layers.GroupNormalization(groups=8, axis=1)(x)
    ```
    """
    for layer in normalizations(ctx.graph):
        mismatch = channel_axis_mismatch(ctx.graph, layer, CONV_CLASSES)
        if mismatch is None:
            continue
        producer, expected = mismatch.producer, mismatch.channel_axis
        yield ctx.finding(
            layer,
            f"{layer.class_name} {layer.path!r} normalizes axis {layer.config.get('axis', -1)}, "
            f"but {producer.path!r} ({mismatch.data_format}) puts channels on axis {expected}",
            details={"axis": layer.config.get("axis", -1), "channel_axis": expected, "producer": producer.path, "data_format": mismatch.data_format},
            fix=f"set axis={expected} on {layer.path!r}",
        )


@rule("LN201", "invalid-normalization-weights", Severity.ERROR, needs=("graph", "weights"))
def invalid_normalization_weights(ctx):
    """A LayerNormalization or GroupNormalization holds NaN or Inf in gamma or beta.

    ## What it does
    Reads gamma and beta of every LayerNormalization and GroupNormalization and flags any
    value that is not finite.

    ## Why is this bad?
    Every output of the layer is multiplied by gamma and shifted by beta: one NaN makes
    the feature NaN for every input, and the NaN spreads to everything downstream.

    ## Example
    A transformer whose training diverged in the last steps before it was saved.

    ## Use instead
    Restore a checkpoint from before the divergence.
    """
    for layer in normalizations(ctx.graph):
        problems = {}
        for name, values in scale_and_offset(ctx, layer).items():
            bad = ~np.isfinite(values.ravel())
            if bad.any():
                problems[name] = {"non_finite": int(bad.sum()), "features": _listed(bad)}
        if problems:
            summary = ", ".join(f"{name}: {p['non_finite']} non-finite" for name, p in problems.items())
            yield ctx.finding(
                layer,
                f"{layer.class_name} {layer.path!r} holds invalid values ({summary})",
                details={"problems": problems},
                fix="restore a checkpoint from before training diverged",
            )


@rule("LN202", "collapsed-normalization-scale", Severity.INFO, needs=("graph", "weights"), settings={"dead-gamma": 1e-6})
def collapsed_normalization_scale(ctx):
    """Some features of a LayerNormalization or GroupNormalization have a gamma of (almost) zero.

    ## What it does
    Counts the features whose |gamma| is below `dead-gamma` (default 1e-6; set it with
    `[tool.bnaudit.ln202] dead-gamma = ...`). Info, or warning when more than half the
    features of a layer are affected.

    ## Why is this bad?
    Such a feature outputs only beta, whatever the input: it carries no information.
    Many of them at once mean the layer collapsed during training.

    ## Example
    Strong weight decay on gamma, or a pruning method that zeroed the scale and did not
    remove the features.

    ## Use instead
    Prune the features with the weights that produce them, or lower the decay on gamma.
    """
    threshold = float(ctx.setting("dead-gamma"))
    for layer in normalizations(ctx.graph):
        gamma = scale_and_offset(ctx, layer).get("gamma")
        if gamma is None:
            continue
        dead = np.abs(gamma.ravel()) < threshold
        if dead.any():
            fraction = float(dead.mean())
            yield ctx.finding(
                layer,
                f"{layer.class_name} {layer.path!r} has {int(dead.sum())} of {dead.size} features with |gamma| < {threshold:g}",
                details={"dead": int(dead.sum()), "features": int(dead.size), "fraction": round(fraction, 4), "dead_features": _listed(dead)},
                fix="prune these features with the weights that produce them, or lower the decay on gamma",
                severity=Severity.WARNING if fraction > 0.5 else Severity.INFO,
            )


@hookimpl
def bnaudit_register_rules():
    return [normalization_axis_not_channels, invalid_normalization_weights, collapsed_normalization_scale]
