"""``--recalibrate`` (BN301, BN202, BN302): replace every BN's moving statistics by population statistics.

The moving mean and variance Keras keeps are exponential averages of batch statistics
taken while the weights were still changing; Wu & Johnson (2021, "Rethinking 'Batch' in
BatchNorm", section 3) show that recomputing them over the data with the final weights
("precise BN", fvcore's PreciseBN) is what inference should use. Here the data is run
once through the network by the statistics pass (:func:`bnaudit.runtime.statistics.collect`)
with every BN normalizing by the statistics of the whole batch, as PreciseBN runs it, so
each BN sees its input as produced by upstream BNs normalizing with (batch estimates of)
their new population statistics; the pass returns, per BN, the exact population mean
and variance of its input over all samples (Chan et al.'s merge, float64), written as
the new ``moving_mean`` and ``moving_variance``. One pass over the data serves every BN:
upstream BNs need no separate pass first because they normalize by the batch's own
statistics during it.

Statistics measured elsewhere (``bnaudit stats --upstream training --shard K/N``, then
``bnaudit merge``) are accepted instead of ``--data`` when they are complete and were
measured on this model (same moving statistics fingerprint).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..analysis import statistics_file
from ..analysis.statistics import DataStatistics, fingerprint
from .changes import ArrayChange, Change, Refusal
from .copy import FixError, ModelCopy

NAME = "recalibrate"
CODES = ("BN301", "BN202")
#: The statistics pass mode this fix needs (see the module docstring).
UPSTREAM = "training"


def static_fingerprint(copy: ModelCopy) -> str:
    """The fingerprint ``bnaudit stats`` gives the same model, computed from the saved arrays."""
    return fingerprint((bn.path, *_moving(copy, bn)) for bn in copy.graph.batchnorms())


def _moving(copy: ModelCopy, bn) -> tuple[np.ndarray, np.ndarray]:
    arrays = copy.read(bn)
    return arrays["moving_mean"].astype(np.float32), arrays["moving_variance"].astype(np.float32)


def measure(model_path: Path, graph, options: dict[str, Any]) -> DataStatistics:
    """One statistics pass over ``options["data"]`` with the model at ``model_path`` (needs TensorFlow)."""
    from ..options import RuntimeOptions
    from ..runtime import load_keras_model
    from ..runtime.data import DEFAULT_BATCH_SIZE, iter_batches
    from ..runtime.statistics import collect

    model = load_keras_model(model_path, graph, RuntimeOptions(unsafe_load=bool(options.get("unsafe_load"))))
    batch_size = int(options.get("batch_size") or DEFAULT_BATCH_SIZE)
    batches = iter_batches(options["data"], model, batch_size, options.get("max_samples"))
    return collect(model, batches, batch_size=batch_size, upstream=UPSTREAM)


def load_statistics(path: str, copy: ModelCopy) -> DataStatistics:
    """Statistics merged from shards, checked to be complete, of this model and of the right mode."""
    stats = statistics_file.load(path)
    if not stats.complete:
        raise FixError(f"--stats {path} holds shards {stats.shards} of {stats.shard_count}", "merge every shard with `bnaudit merge` first")
    if stats.upstream != UPSTREAM:
        raise FixError(
            f"--stats {path} was measured with upstream BNs in {stats.upstream} mode",
            "measure with `bnaudit stats --upstream training`: recalibration needs each BN's input with upstream BNs on batch statistics",
        )
    if stats.fingerprint != static_fingerprint(copy):
        raise FixError(f"--stats {path} was measured on another model (its moving statistics differ)", "measure this model's statistics")
    return stats


def apply(copy: ModelCopy, stats: DataStatistics) -> tuple[list[Change], list[Refusal]]:
    changes, refused = [], []
    for bn in copy.graph.batchnorms():
        measured = stats.layers.get(bn.path)
        if measured is None or not np.all(measured.moments.count > 0):
            refused.append(Refusal(NAME, bn.path, "the data never reached it"))
            continue
        old = copy.read(bn)
        arrays = []
        for name, values in (("moving_mean", measured.moments.mean), ("moving_variance", measured.moments.variance)):
            copy.write(bn, name, values)
            arrays.append(ArrayChange.between(name, old[name], values))
        changes.append(Change(NAME, bn.path, f"population statistics over {stats.samples} samples", arrays))
    return changes, refused
