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

That one pass is approximate in one respect: a BN downstream is measured with the BNs
before it normalizing by batch estimates of their new statistics, not by the new
statistics themselves. ``method="per-level"`` is exact: the BNs are grouped by depth
(:func:`levels`: a BN's level is one more than the highest level of the BNs upstream of
it, from the saved graph), and each level takes one pass with every BN in inference
mode after the levels below it were written into the model
(:func:`bnaudit.runtime.recalibration.per_level`), so each BN is measured in the
network exactly as it will be served; a ResNet50 takes as many passes as its BN depth.
docs/fix.md gives the measured difference between the two and why one pass is the
default.

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
#: The statistics pass mode the one-pass method needs (see the module docstring).
UPSTREAM = "training"
#: How the statistics are measured: one pass (upstream BNs on batch statistics), or
#: one pass per BN depth level (upstream BNs already recalibrated); the first is the default.
METHODS = ("one-pass", "per-level")


def levels(graph) -> list[list[str]]:
    """The graph's BN layer paths grouped by depth: level k holds the BNs whose upstream
    BNs are all in levels below k (level 0: no BN upstream). Read from the saved
    config, nested models included; a cycle through a shared layer is cut where met."""
    batchnorms = {bn.path for bn in graph.batchnorms()}
    depth: dict[str, int] = {}  # per layer: the number of BN levels its output has passed
    for start in graph.layers:
        stack, on_stack = [(start, False)], set()
        while stack:
            path, expanded = stack.pop()
            if path in depth:
                continue
            layer = graph.layers[path]
            if not expanded:
                on_stack.add(path)
                stack.append((path, True))
                stack.extend((p, False) for p in layer.producers if p not in depth and p not in on_stack)
                continue
            on_stack.discard(path)
            reached = max((depth[p] for p in layer.producers if p in depth), default=0)
            depth[path] = reached + (1 if path in batchnorms else 0)
    grouped: dict[int, list[str]] = {}
    for bn in graph.batchnorms():
        grouped.setdefault(depth[bn.path] - 1, []).append(bn.path)
    return [grouped[k] for k in sorted(grouped)]


def static_fingerprint(copy: ModelCopy) -> str:
    """The fingerprint ``bnaudit stats`` gives the same model, computed from the saved arrays."""
    return fingerprint((bn.path, *_moving(copy, bn)) for bn in copy.graph.batchnorms())


def _moving(copy: ModelCopy, bn) -> tuple[np.ndarray, np.ndarray]:
    arrays = copy.read(bn)
    return arrays["moving_mean"].astype(np.float32), arrays["moving_variance"].astype(np.float32)


def measure(model_path: Path, graph, options: dict[str, Any]) -> DataStatistics:
    """The statistics over ``options["data"]`` with the model at ``model_path`` (needs TensorFlow),
    by ``options["method"]`` (:data:`METHODS`): one pass, or one per level of :func:`levels`."""
    from ..options import RuntimeOptions
    from ..runtime import load_keras_model
    from ..runtime.data import DEFAULT_BATCH_SIZE, iter_batches
    from ..runtime.recalibration import per_level

    model = load_keras_model(model_path, graph, RuntimeOptions(unsafe_load=bool(options.get("unsafe_load"))))
    batch_size = int(options.get("batch_size") or DEFAULT_BATCH_SIZE)

    def batches():
        return iter_batches(options["data"], model, batch_size, options.get("max_samples"))

    if options.get("method") == "per-level":
        return per_level(model, levels(graph), batches, batch_size)
    return one_pass(model, batches(), batch_size)


def one_pass(model, batches, batch_size: int) -> DataStatistics:
    """The one-pass method's statistics pass over ``batches`` (what ``benchmarks/fix_speed.py`` times).

    Every BN is recalibrated, frozen ones too, so all of them normalize with batch
    statistics: measured behind a frozen BN's moving statistics, the BNs after it would
    get statistics of an input the copy no longer produces.
    """
    from ..runtime.statistics import collect

    return collect(model, batches, batch_size=batch_size, upstream=UPSTREAM, frozen_use_batch=True)


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
    frozen = [bn.path for bn in copy.graph.batchnorms() if not bn.trainable]
    if frozen:
        raise FixError(
            f"--stats {path}: the model has frozen BN layers ({', '.join(frozen[:3])}{', ...' if len(frozen) > 3 else ''}), which "
            "`bnaudit stats` measures behind their moving statistics, as training does, while recalibration replaces those too",
            "recalibrate with --data DATA",
        )
    if stats.fingerprint != static_fingerprint(copy):
        raise FixError(f"--stats {path} was measured on another model (its moving statistics differ)", "measure this model's statistics")
    return stats


def summary(method: str, graph, stats: DataStatistics) -> dict[str, Any]:
    """``FixReport.recalibration``: the method, its passes over the data (one per level
    for "per-level", at least one) and the samples measured."""
    passes = max(1, len(levels(graph))) if method == "per-level" else 1
    return {"method": method, "passes": passes, "samples": stats.samples}


def apply(copy: ModelCopy, stats: DataStatistics) -> tuple[list[Change], list[Refusal]]:
    changes, refused = [], []
    how = "upstream BNs recalibrated first" if stats.upstream == "recalibrated" else "upstream BNs on batch statistics"
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
        changes.append(Change(NAME, bn.path, f"population statistics over {stats.samples} samples ({how})", arrays))
    if changes and not refused:  # every BN's statistics now come from the data, none from the training steps
        copy.mark_recalibrated()
    return changes, refused
