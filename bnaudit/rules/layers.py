"""What the rules need to know about Keras layer classes and axes, in one place."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..graph import BATCHNORM_CLASSES, Layer, ModelGraph, is_identity

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
#: Output activations: a BN after one of these is BN104's business, not BN103's.
OUTPUT_ACTIVATIONS = frozenset({"softmax", "sigmoid", "log_softmax"})


def output_rank(layer: Layer) -> int | None:
    """Rank of ``layer``'s output where the config tells it (convs fix it; Dense keeps its input's)."""
    if layer.class_name in CONV_RANKS:
        return CONV_RANKS[layer.class_name]
    return layer.input_rank if layer.class_name == "Dense" or layer.class_name in BATCHNORM_CLASSES else None


def channel_axis(layer: Layer, rank: int | None) -> int | None:
    """The positive channel axis of ``layer``'s output, or None when it cannot be told."""
    if rank is None:
        return None
    if layer.config.get("data_format") == "channels_first":
        return 1
    return rank - 1


def bn_axes(bn: Layer, rank: int | None) -> list[int] | None:
    """BN's ``axis`` as positive indices; None when the rank is unknown and an axis is negative."""
    axis = bn.config.get("axis", -1)
    axes = axis if isinstance(axis, list) else [axis]
    if not all(isinstance(a, int) for a in axes):
        return None
    if rank is None:
        return axes if all(a >= 0 for a in axes) else None
    return [a % rank if -rank <= a < rank else a for a in axes]


@dataclass(frozen=True)
class AxisMismatch:
    """A normalization layer's ``axis`` misses the channel axis of the layer feeding it."""

    producer: Layer
    channel_axis: int
    rank: int | None

    @property
    def data_format(self) -> str:
        return self.producer.config.get("data_format") or "channels_last"


def channel_axis_mismatch(graph: ModelGraph, layer: Layer, producer_classes: frozenset[str]) -> AxisMismatch | None:
    """Where ``layer`` (any normalization with an ``axis``) normalizes other axes than the
    channel axis of its producer (looked for through identity layers), if that producer
    is one of ``producer_classes``. Shared by BN107 and plugins for other normalizations."""
    producer, _ = graph.producer_through(layer, is_identity)
    if producer is None or producer.class_name not in producer_classes:
        return None
    rank = layer.input_rank or output_rank(producer)
    expected = channel_axis(producer, rank)
    axes = bn_axes(layer, rank)
    if expected is None or axes is None or expected in axes:
        return None
    return AxisMismatch(producer, expected, rank)


#: Findings list at most this many channel indices; the count is always given in full.
MAX_LISTED_CHANNELS = 10


def listed_channels(mask: np.ndarray) -> list[int]:
    """The first channel indices where ``mask`` holds, for a finding's details."""
    return [int(i) for i in np.flatnonzero(mask)[:MAX_LISTED_CHANNELS]]
