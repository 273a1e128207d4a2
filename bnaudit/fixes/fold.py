"""``--fold``: fold each foldable BN into the Dense/convolution before it, and remove the BN.

In inference a BN is the per-channel affine map ``y = s * z + t`` with
``s = gamma / sqrt(moving_variance + epsilon)`` and ``t = beta - s * moving_mean``
(Ioffe & Szegedy 2015, Algorithm 2). When ``z = W * x + b`` comes straight from a linear
layer, ``y = (s W) * x + (s b + t)``: the kernel's output channels are scaled by ``s`` and
the bias becomes ``s b + t`` (created if the layer had none). This is the Conv+BN fusion
of onnxruntime and TensorFlow Lite. The kernel axis that holds the output channels is
the last for Dense/Conv/SeparableConv's pointwise kernel, the second last for
ConvTranspose, and (input channel, multiplier) for depthwise kernels.

The result computes the same function in inference only: a folded model cannot be
trained with BN any more. A BN is left in place, with the reason listed, when its
input is not the only output of a single-call linear layer with a linear activation in
the same container, when it or that layer is shared, when its axis is not the channel
axis, when it is called with ``training=True`` (fold after ``--unbake``), or when its
arrays hold NaN, Inf or a negative moving variance (BN201: the folded kernel would hold
NaN where ``check`` does not look).
"""

from __future__ import annotations

import numpy as np

from ..graph import Layer
from ..rules.layers import (
    LINEAR_CLASSES,
    axes_against_channels,
    baked_training,
    input_rank,
)
from .changes import ArrayChange, Change, Refusal
from .copy import ModelCopy

NAME = "fold"
#: What `bnaudit fix` says when every layer was refused.
NOTHING = "no BN can be folded"
CODES: tuple[str, ...] = ()


def why_not_foldable(copy: ModelCopy, bn: Layer) -> str | None:
    """Why ``bn`` cannot be folded into the layer before it; None when it can.

    The layout is read from ``copy.graph``; the statistics from the copy's arrays as they
    stand (after a recalibration in the same run), last, since that reads the file.
    """
    graph = copy.graph
    if len(bn.call_kwargs) > 1:
        return f"the BN is shared ({len(bn.call_kwargs)} calls)"
    if baked_training(graph, bn):
        return "it is called with training=True (BN106): run --unbake first"
    if bn.config.get("renorm"):
        return "it uses batch renormalization"
    if len(bn.producers) != 1:
        return "it has no single input layer"
    producer = graph[bn.producers[0]]
    if producer.class_name not in LINEAR_CLASSES:
        return f"its input comes from {producer.class_name} {producer.path!r}, not a Dense or convolution"
    if producer.container != bn.container:
        return f"{producer.path!r} is on the other side of a nested-model boundary"
    if len(producer.call_kwargs) > 1:
        return f"{producer.path!r} is shared ({len(producer.call_kwargs)} calls)"
    if producer.activation is not None:
        return f"{producer.path!r} applies {producer.activation} before the BN (a non-linearity between)"
    if len(producer.consumers) != 1:
        return f"{producer.path!r} also feeds {', '.join(c for c in producer.consumers if c != bn.path)}"
    if producer.config.get("lora_rank"):
        return f"{producer.path!r} has a LoRA adapter"
    compared = axes_against_channels(bn, producer, input_rank(graph, bn))
    if compared is None:
        return f"its axis {bn.config.get('axis')} cannot be compared with the channel axis of {producer.path!r}: the rank of its input cannot be told from the file"
    axes, channels = compared
    if axes != [channels]:
        return f"its axis {bn.config.get('axis')} is not the channel axis ({channels}) of {producer.path!r}"
    return copy.invalid_statistics(bn)


def apply(copy: ModelCopy) -> tuple[list[Change], list[Refusal]]:
    changes: list[Change] = []
    refused: dict[str, Refusal] = {}
    while True:  # rounds: a BN right after a folded one (BN105) becomes foldable in the next
        graph = copy.graph
        foldable: dict[str, str] = {}
        for bn in graph.batchnorms():
            why = why_not_foldable(copy, bn)
            if why:
                refused[bn.path] = Refusal(NAME, bn.path, why)
            else:
                refused.pop(bn.path, None)
                foldable[bn.path] = bn.producers[0]
        if not foldable:
            return changes, list(refused.values())
        for path, producer in foldable.items():
            changes += _fold(copy, graph[path], graph[producer])
        copy.remove_layers({path: graph[producer].name for path, producer in foldable.items()})


def _fold(copy: ModelCopy, bn: Layer, layer: Layer) -> list[Change]:
    stats = copy.read(bn)
    channels = stats["moving_mean"].shape[0]
    scale = stats.get("gamma", np.ones(channels)) / np.sqrt(stats["moving_variance"] + bn.number("epsilon", 1e-3))
    shift = stats.get("beta", np.zeros(channels)) - scale * stats["moving_mean"]
    old = copy.read(layer, dtype=None)  # kernels in their own dtype: one rounding, no float64 copy
    kernel_name = "pointwise_kernel" if "pointwise_kernel" in old else next(iter(old))
    kernel = old[kernel_name]
    scale = scale.astype(kernel.dtype)
    if layer.class_name.endswith("Transpose"):
        new_kernel = kernel * scale[:, None]
    elif layer.class_name.startswith("Depthwise"):
        new_kernel = kernel * scale.reshape(kernel.shape[-2:])
    else:
        new_kernel = kernel * scale
    bias = old.get("bias", np.zeros(channels)).astype(np.float64)
    new_bias = scale.astype(np.float64) * bias + shift
    copy.write(layer, kernel_name, new_kernel)
    arrays = [ArrayChange.between(kernel_name, kernel, new_kernel)]
    if "bias" in old:
        copy.write(layer, "bias", new_bias)
        arrays.append(ArrayChange.between("bias", bias, new_bias))
    else:
        copy.add_bias(layer, new_bias)
        copy.entry(layer.path)["config"]["use_bias"] = True
        arrays.append(ArrayChange.of("bias", "added", new_bias))
    folded = [ArrayChange(name, "folded", None) for name in stats]  # no max |Δ|: they are gone, their effect is in the kernel's and bias's
    return [
        Change(NAME, layer.path, f"folded BN {bn.path!r} into the kernel and bias", arrays),
        Change(NAME, bn.path, f"removed; its arrays folded into {layer.path!r}, whose output its consumers read", folded),
    ]
