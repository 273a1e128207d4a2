"""Static placement rules BN101-BN109: where a BatchNormalization sits and how it is set up.

They need only the architecture, read as JSON; "directly before/after" looks through
the layers ``bnaudit.graph`` calls identity-like (and, where the channel axis does not
matter, reshapes) and through nested-model boundaries.
"""

from __future__ import annotations

from ..findings import Severity
from ..graph import BATCHNORM_CLASSES, Layer, ModelGraph, dtype_policy, is_identity, is_value_preserving
from ..hookspecs import hookimpl
from ..rule import rule
from ..writers import writer_of
from .layers import (
    DROPOUT_CLASSES,
    LINEAR_CLASSES,
    OUTPUT_ACTIVATIONS,
    PARAMETRIC_CLASSES,
    baked_training,
    bn_axes,
    cancelled_bias,
    channel_axis_mismatch,
    input_rank,
)


#: The formats whose layers a user edits directly (and ``bnaudit fix`` rewrites); the
#: others (ONNX, SavedModel) come from such a model, where a fix belongs.
REWRITABLE_FORMATS = frozenset({"keras", "h5-keras3", "h5-keras2"})


@rule("BN101", "dropout-before-batchnorm", Severity.WARNING)
def dropout_before_batchnorm(ctx):
    """A Dropout-family layer feeds a BatchNormalization.

    ## What it does
    Flags a BatchNormalization whose input comes from Dropout, SpatialDropout1D/2D/3D,
    GaussianDropout, AlphaDropout or GaussianNoise, directly or through layers that do
    not change values (Flatten, Reshape, Permute, Identity, nested-model boundaries).

    ## Why is this bad?
    Dropout scales the surviving units by 1/(1-rate) during training and does nothing at
    inference, so the variance a unit has at inference differs from the one BN measured
    while training ("variance shift", Li et al., CVPR 2019). The moving variance then
    describes a distribution that inference never sees.

    ## Example
    ```python
    x = layers.Dense(64, use_bias=False)(x)
    x = layers.Dropout(0.5)(x)
    x = layers.BatchNormalization()(x)
    ```

    ## Use instead
    ```python
    x = layers.Dense(64, use_bias=False)(x)
    x = layers.BatchNormalization()(x)
    x = layers.Activation("relu")(x)
    x = layers.Dropout(0.5)(x)  # after all BN layers of the block
    ```
    """
    for bn in ctx.graph.batchnorms():
        producer, passed = ctx.graph.producer_through(bn, is_value_preserving)
        if producer is not None and producer.class_name in DROPOUT_CLASSES:
            yield ctx.finding(
                bn,
                f"{producer.class_name} {producer.path!r} feeds BatchNormalization {bn.path!r}: "
                "its variance at inference differs from the one BN learned",
                details={"dropout": producer.path, "rate": producer.config.get("rate"), "through": [p.path for p in passed]},
                fix=f"move {producer.path!r} after the BN (and its activation), or drop it",
            )


@rule("BN102", "bias-before-batchnorm", Severity.INFO)
def bias_before_batchnorm(ctx):
    """A Dense or convolution with a bias feeds a BatchNormalization that cancels it.

    ## What it does
    Flags Dense, Conv1D/2D/3D, DepthwiseConv, SeparableConv and ConvTranspose layers with
    `use_bias=True` and a linear activation whose every consumer is a BatchNormalization
    over their output channels (a shared layer called twice, each call into its own BN,
    included). One finding per BN.

    ## Why is this bad?
    BN subtracts the per-channel mean, which removes any per-channel constant, so the
    bias has no effect on the output: the parameters are wasted, and the pattern breaks
    BN folding for quantization-aware training (tfmot refuses it). The fix is exact:
    the bias can be absorbed into BN's moving mean without changing any output.

    ## Example
    ```python
    x = layers.Conv2D(32, 3)(x)  # use_bias=True by default
    x = layers.BatchNormalization()(x)
    ```

    ## Use instead
    ```python
    x = layers.Conv2D(32, 3, use_bias=False)(x)
    x = layers.BatchNormalization()(x)
    ```
    """
    for bn in ctx.graph.batchnorms():
        producer = cancelled_bias(ctx.graph, bn)
        if producer is None:
            continue
        yield ctx.finding(
            bn,
            f"{producer.class_name} {producer.path!r} has a bias that BatchNormalization {bn.path!r} cancels",
            details={"producer": producer.path, "producer_class": producer.class_name, "bn_center": bool(bn.config.get("center", True))},
            fix=_bias_fix(ctx.graph, producer, bn),
        )


def _is_output_batchnorm(graph: ModelGraph, bn: Layer) -> bool:
    """BN104's condition: the BN's value leaves the model unchanged."""
    return graph.reaches_output(bn, is_value_preserving)


def _bias_fix(graph: ModelGraph, producer: Layer, bn: Layer) -> str:
    """BN102's advice, following the BN's own config and agreeing with BN104 on the same BN."""
    if _is_output_batchnorm(graph, bn):
        return (
            f"{bn.path!r} is the model's output (BN104 advises removing it): once it is gone the bias of "
            f"{producer.path!r} matters again, so keep use_bias=True; only if the BN stays, set use_bias=False"
        )
    if not bn.config.get("center", True):
        return (
            f"set use_bias=False on {producer.path!r}: the bias has no effect; {bn.path!r} has center=False, so no "
            "learned offset remains either way (set center=True on it if one is wanted)"
        )
    if graph.format not in REWRITABLE_FORMATS:  # an ONNX node or a serving op: the layer is in the model it came from
        return f"set use_bias=False on the layer {producer.path!r} comes from, in the Keras model, and convert or export again"
    return f"set use_bias=False on {producer.path!r}; BN's beta already provides the offset"


def _output_activation_before(graph: ModelGraph, bn: Layer) -> Layer | None:
    """The softmax/sigmoid layer directly before ``bn``, if any."""
    producer, _ = graph.producer_through(bn, is_identity)
    if producer is not None and producer.activation in OUTPUT_ACTIVATIONS:
        return producer
    return None


@rule("BN103", "activation-before-batchnorm", Severity.INFO)
def activation_before_batchnorm(ctx):
    """A non-linear activation directly feeds a BatchNormalization.

    ## What it does
    Flags a BatchNormalization whose input comes straight from a non-linear activation,
    either fused (`Dense(..., activation="relu")`, `Conv2D(..., activation="relu")`) or a
    layer (Activation, ReLU, LeakyReLU, PReLU, ELU, Softmax). A BN after the output
    softmax/sigmoid is also BN104.

    ## Why is this bad?
    The canonical order is linear layer -> BN -> activation (Ioffe & Szegedy 2015; the
    Keras guide): BN then normalizes the pre-activation, whose distribution is closest to
    Gaussian, and the activation sees normalized inputs. Both orders are used in practice,
    so this is informational.

    ## Example
    ```python
    x = layers.Conv2D(32, 3, activation="relu")(x)
    x = layers.BatchNormalization()(x)
    ```

    ## Use instead
    ```python
    x = layers.Conv2D(32, 3, use_bias=False)(x)
    x = layers.BatchNormalization()(x)
    x = layers.Activation("relu")(x)
    ```
    """
    for bn in ctx.graph.batchnorms():
        producer, _ = ctx.graph.producer_through(bn, is_identity)
        if producer is None or producer.activation is None:
            continue
        fused = producer.class_name != "Activation" and "activation" in producer.config
        yield ctx.finding(
            bn,
            f"{producer.activation} activation of {producer.path!r} feeds BatchNormalization {bn.path!r}",
            details={"producer": producer.path, "activation": producer.activation, "fused": fused},
            fix="apply the activation after the BN: linear layer -> BN -> activation",
        )


@rule("BN104", "batchnorm-after-output", Severity.WARNING)
def batchnorm_after_output(ctx):
    """A BatchNormalization is the model's output, or follows the output softmax/sigmoid.

    ## What it does
    Flags a BatchNormalization whose result leaves the model unchanged (it is the final
    layer), saying so when it normalizes a softmax, log-softmax or sigmoid output.

    ## Why is this bad?
    Normalizing probabilities or final outputs rescales and shifts them with statistics
    of the training batches: the outputs no longer sum to one or lie in [0, 1], and
    regression targets come back on the wrong scale.

    ## Example
    ```python
    outputs = layers.Dense(10, activation="softmax")(x)
    outputs = layers.BatchNormalization()(outputs)
    ```

    ## Use instead
    ```python
    x = layers.BatchNormalization()(x)
    outputs = layers.Dense(10, activation="softmax")(x)
    ```
    """
    for bn in ctx.graph.batchnorms():
        if not _is_output_batchnorm(ctx.graph, bn):
            continue  # a hidden softmax/sigmoid before a BN is BN103's business
        activation = _output_activation_before(ctx.graph, bn)
        if activation is not None:
            yield ctx.finding(
                bn,
                f"BatchNormalization {bn.path!r} normalizes the {activation.activation} output of {activation.path!r}",
                details={"producer": activation.path, "activation": activation.activation},
                fix="remove this BN, or move it before the output layer",
            )
        else:
            yield ctx.finding(
                bn,
                f"BatchNormalization {bn.path!r} is the model's final layer",
                details={"outputs": list(ctx.graph.outputs)},
                fix="remove this BN, or move it before the output layer",
            )


@rule("BN105", "consecutive-batchnorm", Severity.WARNING)
def consecutive_batchnorm(ctx):
    """A BatchNormalization directly feeds another over the same axis.

    ## What it does
    Flags the second of two BatchNormalization layers in a row (looking through identity
    layers and nested-model boundaries) that normalize the same axis.

    ## Why is this bad?
    The first BN already produces zero-mean, unit-variance channels (up to its gamma and
    beta); the second one learns degenerate statistics and only adds parameters, cost
    and another place for train/inference mismatch.

    ## Example
    ```python
    x = layers.BatchNormalization()(x)
    x = layers.BatchNormalization()(x)
    ```

    ## Use instead
    ```python
    x = layers.BatchNormalization()(x)
    ```
    """
    for bn in ctx.graph.batchnorms():
        producer, _ = ctx.graph.producer_through(bn, is_identity)
        if producer is None or producer.class_name not in BATCHNORM_CLASSES:
            continue
        rank = input_rank(ctx.graph, bn)
        if bn_axes(bn, rank) != bn_axes(producer, rank):
            continue
        yield ctx.finding(
            bn,
            f"BatchNormalization {bn.path!r} directly follows BatchNormalization {producer.path!r}",
            details={"previous": producer.path, "axis": bn.axis},
            fix=f"remove {bn.path!r} (or {producer.path!r})",
        )


@rule("BN106", "batchnorm-training-baked", Severity.ERROR)
def batchnorm_training_baked(ctx):
    """A BatchNormalization call is saved with a fixed `training=True`.

    ## What it does
    Flags a BatchNormalization whose call node in the saved graph carries `training=True`
    (Keras 3 `kwargs`, Keras 2 node kwargs), or that sits inside a nested model called
    with `training=True`; in an ONNX file, a BatchNormalization node with
    `training_mode=1`; in a SavedModel, a serving function that runs the layer's
    batch-norm op in training mode (a FusedBatchNorm op with `is_training=true`, or
    Keras 3's unfused `tf.nn.batch_normalization` fed batch moments).

    ## Why is this bad?
    The layer then normalizes with the statistics of the current batch even at
    inference: a direct call `model(x)` gives outputs that depend on which other samples
    are in the batch, and a single sample is normalized against itself. Passing
    `training=False` at call time does not override it. A Keras-2 file (tf.keras,
    tf-keras, standalone Keras) keeps batch statistics under `model.predict` too; a
    Keras 3 file loaded by Keras 3.15 keeps them under `model(x)` only, so the two
    paths disagree (BN403).

    ## Example
    ```python
    x = layers.BatchNormalization()(x, training=True)
    ```

    ## Use instead
    ```python
    x = layers.BatchNormalization()(x)  # Keras passes `training` at call time
    ```
    """
    for bn in ctx.graph.batchnorms():
        source = None
        baked = baked_training(ctx.graph, bn)
        if bn.baked_training:
            source = bn.baked_training
        elif baked:
            source = "its own call" if baked == bn.path else f"the call of nested model {baked!r}"
        if source and ctx.graph.runner == "serving":  # a SavedModel's serving graph: no layer call to fix
            yield ctx.finding(
                bn,
                f"batch-norm op {bn.path!r} of the serving graph runs in training mode ({source}): "
                "each request is normalized with its own batch statistics",
                details={"source": source, "writer": "SavedModel serving graph"},
                fix="export again from a model whose BatchNormalization layers are called without training=True",
            )
        elif source:
            writer = writer_of(ctx.graph.format, ctx.graph.keras_version)
            yield ctx.finding(
                bn,
                f"BatchNormalization {bn.path!r} is called with training=True ({source}): "
                f"it uses batch statistics at inference ({writer.baked_training_behaviour()})",
                details={"source": source, "writer": writer.name},
                fix=(
                    "`bnaudit fix --unbake` writes a copy without training=True in the call (or rebuild the model without it and copy the weights over)"
                    if ctx.graph.format in REWRITABLE_FORMATS
                    else "save the model again without training=True in the call (`bnaudit fix --unbake` rewrites the .keras or .h5 it came from)"
                ),
            )


@rule("BN107", "batchnorm-axis-mismatch", Severity.ERROR)
def batchnorm_axis_mismatch(ctx):
    """A BatchNormalization normalizes an axis that is not its input's channel axis.

    ## What it does
    Flags a BatchNormalization whose `axis` is out of range for its input rank, or is not
    the channel axis of the convolution or Dense layer that feeds it (e.g. a
    `data_format="channels_first"` Conv2D followed by BN with `axis=-1`).

    ## Why is this bad?
    The statistics are then computed per row or per column of the feature map instead of
    per channel: the moving statistics are meaningless for the channels and the layer
    normalizes the wrong dimension.

    ## Example
    ```python
    x = layers.Conv2D(32, 3, data_format="channels_first")(x)
    x = layers.BatchNormalization()(x)  # axis=-1
    ```

    ## Use instead
    ```python
    x = layers.Conv2D(32, 3, data_format="channels_first")(x)
    x = layers.BatchNormalization(axis=1)(x)
    ```
    """
    for bn in ctx.graph.batchnorms():
        producer, _ = ctx.graph.producer_through(bn, is_identity)
        rank = input_rank(ctx.graph, bn)
        axis = bn.axis
        axes = axis if isinstance(axis, list) else [axis]
        if rank is not None and any(not isinstance(a, int) or not -rank <= a < rank for a in axes):
            yield ctx.finding(
                bn,
                f"BatchNormalization {bn.path!r} has axis={axis}, out of range for its rank-{rank} input",
                details={"axis": axis, "rank": rank},
                fix="set axis to the channel axis of the input",
            )
            continue
        mismatch = channel_axis_mismatch(ctx.graph, bn, LINEAR_CLASSES)
        if mismatch is None:
            continue
        producer, expected = mismatch.producer, mismatch.channel_axis
        yield ctx.finding(
            bn,
            f"BatchNormalization {bn.path!r} normalizes axis {axis}, but {producer.path!r} "
            f"({mismatch.data_format}) puts channels on axis {expected}",
            details={"axis": axis, "channel_axis": expected, "rank": mismatch.rank, "producer": producer.path, "data_format": mismatch.data_format},
            fix=f"set axis={expected} on {bn.path!r}",
        )


def _is_weightless(layer: Layer) -> bool:
    """Looked through when searching a frozen BN's trainable neighbours."""
    return layer.class_name not in PARAMETRIC_CLASSES


@rule("BN108", "frozen-batchnorm", Severity.INFO)
def frozen_batchnorm(ctx):
    """A BatchNormalization is frozen while the layers around it train.

    ## What it does
    Flags a BatchNormalization with `trainable=False` (its own flag or an enclosing
    model's) next to a trainable layer with parameters, the fine-tuning setup, and says
    how the Keras version that wrote the file runs it.

    ## Why is this bad?
    It is often right (the Keras transfer-learning guide keeps BN frozen), but what it
    does depends on the Keras that trains the model: Keras 3 and tf.keras under
    TensorFlow >= 2.0 run a frozen BN in inference mode (moving statistics); standalone
    Keras 2 (all versions; keras PR #9965 proposing the change was closed) and tf.keras
    under TensorFlow 1.x still normalize it with batch statistics while training, and
    tf.keras 2.0-2.1 `keras.applications` built V1 BN layers that do the same
    (tensorflow PR #36700). The finding names the file's writer and what it does, or
    both cases where the file cannot tell. The trainable neighbours adapt to statistics
    that will never move; worth knowing when fine-tuning on data unlike the original.

    ## Example
    ```python
    base.trainable = False  # BN inside frozen
    model = keras.Sequential([base, layers.Dense(10)])
    ```

    ## Use instead
    Keep it when fine-tuning on similar data; otherwise unfreeze the BN layers for a few
    epochs or run `bnaudit check --data` to see whether the statistics still fit.
    """
    writer = writer_of(ctx.graph.format, ctx.graph.keras_version)
    behaviour = writer.frozen_bn_behaviour()
    for bn in ctx.graph.batchnorms():
        if bn.trainable:
            continue
        before, _ = ctx.graph.producer_through(bn, _is_weightless)
        neighbours = ([before] if before is not None else []) + ctx.graph.consumers_through(bn, _is_weightless)
        trainable = [n.path for n in neighbours if not _is_weightless(n) and n.trainable]
        if trainable:
            yield ctx.finding(
                bn,
                f"BatchNormalization {bn.path!r} is frozen next to trainable {', '.join(repr(t) for t in trainable)}; {behaviour}",
                details={"trainable_neighbours": trainable, "keras_version": ctx.graph.keras_version, "writer": writer.name, "frozen_bn_mode": writer.frozen_bn},
                fix=_frozen_fix(writer.frozen_bn),
            )


def _frozen_fix(mode: str) -> str:
    if mode == "batch":
        return (
            "under this writer the frozen BN still uses batch statistics in training: train with BN called as "
            "training=False (or use tf.keras on TensorFlow >= 2), or unfreeze it"
        )
    return "intended for fine-tuning on similar data; otherwise unfreeze it or recalibrate its statistics"


@rule("BN109", "batchnorm-unusual-hyperparameters", Severity.WARNING)
def batchnorm_unusual_hyperparameters(ctx):
    """A BatchNormalization has a momentum or epsilon outside the usual range.

    ## What it does
    Flags `momentum` outside [0.9, 0.9999], `epsilon` > 0.1, and `epsilon` < 1e-5 under a
    float16 or mixed-precision dtype policy.

    ## Why is this bad?
    A low momentum makes the moving statistics follow the last few batches (noisy); a
    momentum too close to 1 makes them lag far behind the weights. A large epsilon
    dominates small variances and stops normalizing; a tiny epsilon in float16 lets
    1/sqrt(var + eps) overflow.

    ## Example
    ```python
    layers.BatchNormalization(momentum=0.5)
    ```

    ## Use instead
    ```python
    layers.BatchNormalization()  # momentum=0.99, epsilon=1e-3
    ```
    """
    for bn in ctx.graph.batchnorms():
        momentum = bn.config.get("momentum", 0.99)
        epsilon = bn.config.get("epsilon", 1e-3)
        policy = dtype_policy(bn)
        problems = []
        if isinstance(momentum, (int, float)) and not 0.9 <= momentum <= 0.9999:
            problems.append(f"momentum={momentum} is outside [0.9, 0.9999]")
        if isinstance(epsilon, (int, float)):
            if epsilon > 0.1:
                problems.append(f"epsilon={epsilon} is above 0.1")
            elif epsilon < 1e-5 and ("float16" in policy or "mixed" in policy):
                problems.append(f"epsilon={epsilon} is below 1e-5 under dtype policy {policy!r}")
        if problems:
            yield ctx.finding(
                bn,
                f"BatchNormalization {bn.path!r}: {'; '.join(problems)}",
                details={"momentum": momentum, "epsilon": epsilon, "dtype_policy": policy},
                fix="use momentum in [0.9, 0.9999] (default 0.99) and epsilon around 1e-3",
            )


@hookimpl
def bnaudit_register_rules():
    return [
        dropout_before_batchnorm,
        bias_before_batchnorm,
        activation_before_batchnorm,
        batchnorm_after_output,
        consecutive_batchnorm,
        batchnorm_training_baked,
        batchnorm_axis_mismatch,
        frozen_batchnorm,
        batchnorm_unusual_hyperparameters,
    ]
