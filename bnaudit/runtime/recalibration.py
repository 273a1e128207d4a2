"""Population statistics with every upstream BN already recalibrated: one pass per BN depth level.

A BN's input depends on the statistics of the BNs before it. Measuring it with those
BNs on their *new* moving statistics (the network as it will be served) needs them
recalibrated first, so the BNs are grouped into levels (level k: every BN upstream of
it is in a level below k; see ``bnaudit.fixes.recalibrate.levels``) and each level
takes one statistics pass with every BN in inference mode, after which that level's
new statistics are written into the live layers. After the last pass every BN's
statistics are the exact population statistics of its input in the served model.

The live model's moving statistics are put back when this returns (it is not saved;
the new values go into the copy through the returned statistics).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Callable, Iterable

import numpy as np

from ..analysis.statistics import DataStatistics
from .statistics import batchnorm_layers, collect


def per_level(model, levels: list[list[str]], batches: Callable[[], Iterable[list[np.ndarray]]], batch_size: int) -> DataStatistics:
    """One statistics pass per entry of ``levels`` (BN layer paths); returns every BN's statistics.

    ``batches()`` gives a fresh iterator over the same data, in the same order, for
    each pass. The result holds, for each BN, the moments measured in the pass of its
    level; ``samples``/``batches``/``seconds`` are those of one pass, ``seconds`` the total.
    """
    layers = batchnorm_layers(model)
    saved = {path: (layer.moving_mean.numpy(), layer.moving_variance.numpy()) for path, layer in layers.items()}
    result = None
    try:
        for level in levels or [[]]:  # a model without BN still reports its samples
            measured = collect(model, batches(), batch_size=batch_size, upstream="inference")
            if result is None:
                result = replace(measured, layers={})
            else:
                result.seconds += measured.seconds
            for path in level:
                statistics = measured.layers.get(path)
                result.layers[path] = statistics
                if statistics is None or not np.all(statistics.moments.count > 0):
                    continue  # never reached by the data: left as it was, and refused by the fix
                layer = layers[path]
                layer.moving_mean.assign(statistics.moments.mean.astype(np.float32).reshape(layer.moving_mean.shape))
                layer.moving_variance.assign(statistics.moments.variance.astype(np.float32).reshape(layer.moving_variance.shape))
    finally:
        for path, (mean, variance) in saved.items():
            layers[path].moving_mean.assign(mean)
            layers[path].moving_variance.assign(variance)
    result.upstream = "recalibrated"
    return result
