"""Rules BN211-BN212: what fine-tuning did to the BN layers, from two checkpoints.

They need a base checkpoint (``needs`` holds "base"), so only ``bnaudit diff BASE
TUNED`` runs them; ``ctx.base`` is the :class:`~bnaudit.checkpoints.Checkpoints`
pairing, and the findings are about the tuned model's layers.
"""

from __future__ import annotations

from ..findings import Severity
from ..hookspecs import hookimpl
from ..measurements import BatchNormChange
from ..rule import rule


def _moved(change: BatchNormChange) -> str:
    """What changed, in words: "moving mean by up to 0.8 base standard deviations, ..."."""
    parts = []
    if change.mean_shift:
        parts.append(f"moving mean by up to {change.mean_shift:.3g} base standard deviations")
    if change.std_change:
        parts.append(f"standard deviation by up to {change.std_change:.1%}")
    for name, value in (("gamma", change.gamma_change), ("beta", change.beta_change)):
        if value:
            parts.append(f"{name} by up to {value:.3g}")
    return ", ".join(parts)


def _called_for_inference(graph, layer) -> bool:
    """Whether the saved graph calls the layer, or a model around it, with training=False."""
    calls = [layer.call_kwargs] + [model.call_kwargs for model in graph.enclosing_models(layer)]
    return any(kw.get("training") is False for kwargs in calls for kw in kwargs)


@rule("BN211", "frozen-batchnorm-changed", Severity.WARNING, needs=("graph", "weights", "base"))
def frozen_batchnorm_changed(ctx):
    """A BatchNormalization frozen in the tuned checkpoint changed since the base checkpoint.

    ## What it does
    Compares each BN layer that is frozen (`trainable=False`, itself or through an
    enclosing model) in the tuned checkpoint with its counterpart in the base
    checkpoint, and flags it when its moving mean, moving variance, gamma or beta differ
    at all. Frozen weights are copied bit for bit, so any difference means the layer
    was updated. Run by `bnaudit diff BASE TUNED`.

    ## Why is this bad?
    The layer meant to keep the base's statistics did not: the most reported
    fine-tuning problem (keras issues #7085, #9522). Usually the layer was trainable
    (or the base was called in training mode) while fine-tuning ran, and frozen only
    before saving; the moving statistics then follow the small fine-tuning set, and
    the model that was validated is not the one saved.

    ## Example
    ```python
    model.fit(x, y)              # the base's BN layers still trainable
    base.trainable = False       # frozen after the fact
    model.save("tuned.keras")
    ```

    ## Use instead
    ```python
    base.trainable = False       # before compile and fit
    outputs = head(base(inputs, training=False))
    model.compile(...); model.fit(x, y)
    ```
    """
    for pair in ctx.base.pairs:
        if pair.tuned.trainable or not (pair.statistics_changed or pair.affine_changed):
            continue
        change = pair.change()
        was = "not recorded" if change.frozen_base is None else "frozen" if change.frozen_base else "trainable"
        yield ctx.finding(
            pair.tuned,
            f"BatchNormalization {pair.tuned.path!r} is frozen but changed since the base ({was} there, "
            f"{pair.base.path!r}): {_moved(change)}",
            details=change.to_dict(),
            fix="freeze the layer before training (trainable=False before compile, base called with training=False), "
            "or restore its values from the base checkpoint",
        )


@rule("BN212", "batchnorm-statistics-unchanged", Severity.INFO, needs=("graph", "weights", "base"))
def batchnorm_statistics_unchanged(ctx):
    """A trainable BatchNormalization's moving statistics did not change while the layers around it did.

    ## What it does
    Flags a BN layer that is trainable in the tuned checkpoint whose moving mean and
    variance are identical to the base checkpoint's, while its own gamma or beta, or
    the moving statistics of the BN just before or after it, changed. Run by
    `bnaudit diff BASE TUNED`.

    ## Why is this bad?
    The layer trained (or its neighbours did) but never ran in training mode, so its
    statistics still describe the base's data: typically it was called with
    `training=False` (or inside a base called that way). Keras's transfer-learning
    guide does this on purpose; then the layer is better marked frozen, so that the
    checkpoint says what was meant. Otherwise the statistics are stale for the new data.

    ## Example
    ```python
    x = layers.BatchNormalization()(x, training=False)   # never updates its statistics
    ```

    ## Use instead
    ```python
    x = layers.BatchNormalization()(x)   # or trainable=False, if keeping them is intended
    ```
    """
    for index, pair in enumerate(ctx.base.pairs):
        if not pair.tuned.trainable or pair.statistics_changed:
            continue
        neighbours = [p.tuned.path for p in ctx.base.neighbours(index) if p.statistics_changed]
        if not (pair.affine_changed or neighbours):
            continue
        why = " (it is called with training=False)" if _called_for_inference(ctx.graph, pair.tuned) else ""
        around = "its gamma/beta" if pair.affine_changed else "the neighbouring BN"
        yield ctx.finding(
            pair.tuned,
            f"BatchNormalization {pair.tuned.path!r} kept the base's moving statistics exactly while "
            f"{around} changed{why}",
            details={**pair.change().to_dict(), "changed_neighbours": neighbours},
            fix="let the layer run in training mode while fine-tuning, or set trainable=False if keeping its statistics is intended",
        )


@hookimpl
def bnaudit_register_rules():
    return [frozen_batchnorm_changed, batchnorm_statistics_unchanged]
