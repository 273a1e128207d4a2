"""What one statistics pass measured at each BatchNormalization input, and how passes merge.

A pass over ``--data`` (:func:`bnaudit.runtime.statistics.collect`) or shards of it
measured on different machines give one :class:`DataStatistics` each; shards of the same
model, data cut and settings merge (:meth:`DataStatistics.merge`) to the single-pass
result because :class:`~bnaudit.analysis.moments.Moments` merge exactly. Saved and read
by :mod:`bnaudit.analysis.statistics_file`. numpy only.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, replace
from typing import Any, Iterable

import numpy as np

from ..loaders import LoadError
from .cka import ModeComparison
from .moments import Moments

UPSTREAM_MODES = ("inference", "training")


@dataclass
class LayerStatistics:
    """What the data produced at one BN layer's input, per channel."""

    path: str
    moments: Moments
    #: Spread across full batches of each batch's mean and variance (what training-mode BN sees).
    batch_means: Moments
    batch_variances: Moments

    def merge(self, other: "LayerStatistics") -> "LayerStatistics":
        return LayerStatistics(
            self.path,
            self.moments.merge(other.moments),
            self.batch_means.merge(other.batch_means),
            self.batch_variances.merge(other.batch_variances),
        )


@dataclass
class DataStatistics:
    """Everything one pass (or the merge of several shards) measured for one model."""

    layers: dict[str, LayerStatistics]
    batch_size: int
    upstream: str
    #: Hash of the model's moving statistics: shards and audits must be of the same model.
    fingerprint: str
    samples: int = 0
    batches: int = 0
    replicas: int = 1
    comparison: ModeComparison | None = None
    #: Shards held (numbered from 1) out of ``shard_count``; a single pass holds [1] of 1.
    shards: list[int] = field(default_factory=lambda: [1])
    shard_count: int = 1
    seconds: float = 0.0

    @property
    def complete(self) -> bool:
        return sorted(self.shards) == list(range(1, self.shard_count + 1))

    def merge(self, other: "DataStatistics") -> "DataStatistics":
        """Combine two shards of the same model, data cut and settings."""
        mine = (self.fingerprint, self.batch_size, self.upstream, self.shard_count, list(self.layers))
        theirs = (other.fingerprint, other.batch_size, other.upstream, other.shard_count, list(other.layers))
        names = ("model", "batch size", "upstream mode", "shard count", "BN layers")
        for name, a, b in zip(names, mine, theirs):
            if a != b:
                raise LoadError(f"cannot merge statistics measured with different {name} ({_short(a)} vs {_short(b)})")
        overlap = set(self.shards) & set(other.shards)
        if overlap:
            raise LoadError(f"shard {sorted(overlap)[0]}/{self.shard_count} is given twice", "merge each shard once")
        return replace(
            self,
            layers={path: layer.merge(other.layers[path]) for path, layer in self.layers.items()},
            samples=self.samples + other.samples,
            batches=self.batches + other.batches,
            replicas=max(self.replicas, other.replicas),
            comparison=None,
            shards=sorted(self.shards + other.shards),
            seconds=self.seconds + other.seconds,
        )


class FlatTotals:
    """Running moments of all layers as flat vectors: one merge per batch, whatever the depth.

    Both passes (Keras, :mod:`bnaudit.runtime.statistics`; ONNX Runtime,
    :mod:`bnaudit.runtime.onnx_statistics`) add each batch's per-channel moments here.
    """

    def __init__(self) -> None:
        self.moments: Moments | None = None
        self.batch_means: Moments | None = None
        self.batch_variances: Moments | None = None

    def add(self, replicas: list[Moments], full_batch: bool) -> None:
        batch = replicas[0]
        for replica in replicas[1:]:
            batch = batch.merge(replica)
        if self.moments is None:
            self.moments, self.batch_means, self.batch_variances = (Moments.empty(batch.channels) for _ in range(3))
        self.moments = self.moments.merge(batch)
        if full_batch:
            self.batch_means = self.batch_means.merge(Moments.of_observation(batch.mean))
            self.batch_variances = self.batch_variances.merge(Moments.of_observation(batch.variance))

    def per_layer(self, layout: list[tuple[str, int]], channels: dict[str, int]) -> dict[str, LayerStatistics]:
        """Split the flat vectors by layer; a layer called several times per batch merges its calls."""
        layers = {path: LayerStatistics(path, *(Moments.empty(n) for _ in range(3))) for path, n in channels.items()}
        if self.moments is None:
            return layers
        start = 0
        for path, n in layout:
            part = slice(start, start + n)
            layers[path] = layers[path].merge(LayerStatistics(path, self.moments[part], self.batch_means[part], self.batch_variances[part]))
            start += n
        return layers


def _short(value: Any) -> str:
    text = str(value)
    return text if len(text) <= 40 else text[:37] + "..."


def fingerprint(moving: Iterable[tuple[str, np.ndarray, np.ndarray]]) -> str:
    """A short hash of each BN's path, moving mean and moving variance (as float64), in path order."""
    digest = hashlib.sha256()
    for path, mean, variance in sorted(moving, key=lambda item: item[0]):
        digest.update(path.encode("utf-8", "surrogatepass"))
        digest.update(np.asarray(mean, np.float64).tobytes())
        digest.update(np.asarray(variance, np.float64).tobytes())
    return digest.hexdigest()[:16]
