"""What the rules need to know about Keras layer classes and axes, in one place."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..graph import BATCHNORM_CLASSES, MODEL_CLASSES, Layer, ModelGraph, is_identity

DROPOUT_CLASSES = frozenset(
    {
        "Dropout",
        "SpatialDropout1D",
        "SpatialDropout2D",
        "SpatialDropout3D",
        "GaussianDropout",
        "AlphaDropout",
        "GaussianNoise",
    }
)
CONV_RANKS = {
    "Conv1D": 3,
    "Conv2D": 4,
    "Conv3D": 5,
    "DepthwiseConv1D": 3,
    "DepthwiseConv2D": 4,
    "SeparableConv1D": 3,
    "SeparableConv2D": 4,
    "Conv1DTranspose": 3,
    "Conv2DTranspose": 4,
    "Conv3DTranspose": 5,
}
#: Layers whose per-output-channel bias a following BN cancels.
LINEAR_CLASSES = frozenset({"Dense", *CONV_RANKS})
#: Layers that own trainable parameters (for "is the model being fine-tuned here?").
PARAMETRIC_CLASSES = frozenset(
    {
        *LINEAR_CLASSES,
        *BATCHNORM_CLASSES,
        "EinsumDense",
        "Embedding",
        "LayerNormalization",
        "GroupNormalization",
        "PReLU",
        "LSTM",
        "GRU",
        "SimpleRNN",
        "MultiHeadAttention",
    }
)
#: Layers that keep their input's layout (rank and channel axis) whatever their config.
ELEMENTWISE_CLASSES = frozenset(
    {
        *DROPOUT_CLASSES,
        "Activation",
        "ReLU",
        "LeakyReLU",
        "PReLU",
        "ELU",
        "ThresholdedReLU",
        "Softmax",
        "Rescaling",
        "ActivityRegularization",
        "Masking",
        "Identity",
    }
)
#: Spatial layers that keep rank and channel axis when their ``data_format`` is the
#: producer's: pooling, padding, cropping and upsampling (not the global poolings).
SPATIAL_LAYOUT_CLASSES = frozenset(
    f"{kind}{dims}D"
    for kind in ("MaxPooling", "AveragePooling", "ZeroPadding", "Cropping", "UpSampling")
    for dims in (1, 2, 3)
)
#: Output activations: a BN after one of these is BN104's business, not BN103's.
OUTPUT_ACTIVATIONS = frozenset({"softmax", "sigmoid", "log_softmax"})


#: How far :func:`input_rank` walks back through rank-keeping layers (a hostile chain
#: cannot make it long).
MAX_RANK_WALK = 64


def input_rank(graph: ModelGraph, layer: Layer, walked: int = 0) -> int | None:
    """Rank of ``layer``'s input, batch axis included: as the file records it for the layer
    (its input shapes, its build config, a ``batch_input_shape``), else the output rank of
    its one producer (:func:`output_rank`). None when it cannot be told.

    tf-keras records shapes only on the model's input (``InputLayer``'s
    ``batch_input_shape``), so a BN after a Dense after it has rank 2 only through the walk.
    The walk does not leave a wrapper (TimeDistributed, Bidirectional...): the layer it
    wraps sees its input without the wrapped axis, a rank the graph does not show.
    """
    recorded = layer.input_rank or declared_rank(layer)
    if recorded is not None or walked >= MAX_RANK_WALK or len(layer.producers) != 1:
        return recorded
    producer = graph[layer.producers[0]]
    if producer.container != layer.container and any(m.class_name not in MODEL_CLASSES for m in graph.enclosing_models(layer)):
        return None
    return output_rank(graph, producer, walked + 1)


def output_rank(graph: ModelGraph, layer: Layer, walked: int = 0) -> int | None:
    """Rank of ``layer``'s output: fixed by a convolution or Flatten, an input's declared
    shape, 2 for a global pooling (without ``keepdims``: batch and channels), or that
    of its input for a layer that keeps it (Dense, BN, activations, dropout,
    pooling/padding); None otherwise."""
    if layer.class_name in CONV_RANKS:
        return CONV_RANKS[layer.class_name]
    if layer.class_name == "Flatten":
        return 2
    if layer.class_name.startswith("Global") and "Pooling" in layer.class_name:  # GlobalAveragePooling2D...
        return input_rank(graph, layer, walked) if layer.config.get("keepdims") else 2
    if layer.class_name == "InputLayer":
        return declared_rank(layer)
    if layer.class_name == "Dense" or layer.class_name in BATCHNORM_CLASSES or keeps_layout(layer):
        return input_rank(graph, layer, walked)
    return None


def declared_rank(layer: Layer) -> int | None:
    """The rank of the input shape the layer's config declares (Keras 3 ``batch_shape``,
    tf-keras ``batch_input_shape``, which a Sequential's first layer may carry)."""
    for key in ("batch_shape", "batch_input_shape"):
        shape = layer.config.get(key)
        if isinstance(shape, list):
            return len(shape)
    return None


def axes_against_channels(bn: Layer, producer: Layer, rank: int | None) -> tuple[list[int], int] | None:
    """``bn``'s ``axis`` and the channel axis of ``producer``'s output, in one indexing; None
    when they cannot be put in one.

    With the rank known both are positive. Without it (a Dense keeps its input's rank,
    which a nested model's config does not record) they are counted from the end: a
    channels-last layer's channels are axis -1 at any rank, so BN axis -1 is on them and
    -2 is not, while a BN axis counted from the start cannot be placed; a
    channels-first layer's are axis 1, which a negative BN axis cannot be compared with.
    Shared by BN102, BN107 and ``bnaudit fix`` (absorb, fold), so that they agree.
    """
    axis = bn.axis
    axes = axis if isinstance(axis, list) else [axis]
    if not all(isinstance(a, int) for a in axes):
        return None
    channels_first = producer.config.get("data_format") == "channels_first"
    if rank is not None:
        return [a % rank if -rank <= a < rank else a for a in axes], 1 if channels_first else rank - 1
    if channels_first:
        return (axes, 1) if all(a >= 0 for a in axes) else None
    return (axes, -1) if all(a < 0 for a in axes) else None


def bn_axes(bn: Layer, rank: int | None) -> list[int] | None:
    """BN's ``axis`` as positive indices; None when the rank is unknown and an axis is negative."""
    axis = bn.axis
    axes = axis if isinstance(axis, list) else [axis]
    if not all(isinstance(a, int) for a in axes):
        return None
    if rank is None:
        return axes if all(a >= 0 for a in axes) else None
    return [a % rank if -rank <= a < rank else a for a in axes]


def baked_training(graph: ModelGraph, bn: Layer) -> str | None:
    """Where ``bn`` gets a fixed ``training=True`` from (BN106, ``bnaudit fix --unbake``).

    The path of ``bn`` itself when its own call carries it, else of the innermost
    enclosing model whose call does (a call that sets ``training`` at all stops the
    search); None when nothing fixes it.
    """
    if any(kw.get("training") is True for kw in bn.call_kwargs):
        return bn.path
    if any("training" in kw for kw in bn.call_kwargs):
        return None
    for model in graph.enclosing_models(bn):
        if any(kw.get("training") is True for kw in model.call_kwargs):
            return model.path
        if any("training" in kw for kw in model.call_kwargs):
            return None
    return None


def cancelled_bias(graph: ModelGraph, bn: Layer) -> Layer | None:
    """The Dense/convolution whose bias ``bn`` cancels (BN102, and what ``bnaudit fix --absorb-bias`` edits).

    That is a linear layer with ``use_bias=True`` and a linear activation, seen through
    identity layers, whose every consumer is a BN over its output channels: BN subtracts
    the per-channel mean, so the bias has no effect on any output. None otherwise.
    """
    producer, passed = graph.producer_through(bn, is_identity)
    if producer is None or producer.class_name not in LINEAR_CLASSES:
        return None
    if not producer.config.get("use_bias", True) or producer.activation is not None:
        return None
    if any(len(layer.consumers) != 1 for layer in passed) or not all(
        consumer.class_name in BATCHNORM_CLASSES for consumer in graph.consumers_through(producer, is_identity)
    ):
        return None  # the bias still matters to a consumer that is not a BN
    compared = axes_against_channels(bn, producer, input_rank(graph, bn))
    if compared is not None and compared[0] != [compared[1]]:
        return None  # BN normalizes another axis: BN107's business
    return producer


@dataclass(frozen=True)
class AxisMismatch:
    """A normalization layer's ``axis`` misses the channel axis of the layer feeding it."""

    producer: Layer
    #: Positive where ``rank`` is known; counted from the end (-1) where it is not.
    channel_axis: int
    rank: int | None

    @property
    def data_format(self) -> str:
        return self.producer.config.get("data_format") or "channels_last"


def keeps_layout(layer: Layer) -> bool:
    """Looked through when searching the layer that fixes the channel axis (see :func:`channel_axis_mismatch`)."""
    return is_identity(layer) or layer.class_name in ELEMENTWISE_CLASSES or layer.class_name in SPATIAL_LAYOUT_CLASSES


def channel_axis_mismatch(graph: ModelGraph, layer: Layer, producer_classes: frozenset[str]) -> AxisMismatch | None:
    """Where ``layer`` (any normalization with an ``axis``) normalizes other axes than the
    channel axis of its producer, if that producer is one of ``producer_classes``.
    Shared by BN107 and plugins for other normalizations.

    The producer is looked for through every layer that keeps the layout (identity,
    activations, dropout and noise, and pooling/padding/cropping/upsampling); a spatial
    layer on the way whose ``data_format`` differs from the producer's makes the channel
    axis ambiguous, and nothing is reported."""
    producer, passed = graph.producer_through(layer, keeps_layout)
    if producer is None or producer.class_name not in producer_classes:
        return None
    data_format = producer.config.get("data_format") or "channels_last"
    if any((p.config.get("data_format") or "channels_last") != data_format for p in passed if p.class_name in SPATIAL_LAYOUT_CLASSES):
        return None
    rank = input_rank(graph, layer)
    compared = axes_against_channels(layer, producer, rank)
    if compared is None or compared[1] in compared[0]:
        return None
    return AxisMismatch(producer, compared[1], rank)


#: Findings list at most this many channel indices; the count is always given in full.
MAX_LISTED_CHANNELS = 10


def listed_channels(mask: np.ndarray) -> list[int]:
    """The first channel indices where ``mask`` holds, for a finding's details."""
    return [int(i) for i in np.flatnonzero(mask)[:MAX_LISTED_CHANNELS]]
