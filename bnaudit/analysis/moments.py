"""Streaming per-channel moments in float64 that merge exactly (Chan, Golub and LeVeque, 1979).

A :class:`Moments` holds count, mean and M2 (the sum of squared deviations from the
mean) per channel. Two of them combine with Chan et al.'s pairwise update, which is
exact in exact arithmetic and numerically stable in floating point (no
sum-of-squares cancellation), so batches, devices and shards all reduce the same way
and memory never depends on the number of samples.

Nothing here imports TensorFlow: merging shard files needs only numpy.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Moments:
    """Count, mean and M2 per channel of a stream of observations.

    ``count`` is per channel too, so the moments of many layers can live side by side
    in one flat vector (one transfer from the device, one merge per batch).
    """

    count: np.ndarray
    mean: np.ndarray
    m2: np.ndarray

    @classmethod
    def empty(cls, channels: int) -> "Moments":
        return cls(np.zeros(channels), np.zeros(channels), np.zeros(channels))

    @classmethod
    def of_batch(cls, count, mean, variance) -> "Moments":
        """Moments of a batch given its count, (population) mean and variance per channel."""
        mean = np.asarray(mean, np.float64)
        count = np.broadcast_to(np.asarray(count, np.float64), mean.shape).copy()
        seen = count > 0  # an empty slice (a replica with no samples) reports NaN
        return cls(count, np.where(seen, mean, 0.0), np.where(seen, np.asarray(variance, np.float64) * count, 0.0))

    @classmethod
    def of_observation(cls, values) -> "Moments":
        """One observation per channel (e.g. one batch's mean vector, for the spread across batches)."""
        values = np.asarray(values, np.float64)
        return cls.of_batch(1.0, values, np.zeros_like(values))

    @property
    def channels(self) -> int:
        return int(self.mean.shape[0])

    @property
    def variance(self) -> np.ndarray:
        """Population variance (M2 / count), as BatchNormalization computes it; NaN where empty."""
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(self.count > 0, self.m2 / self.count, np.nan)

    @property
    def std(self) -> np.ndarray:
        return np.sqrt(self.variance)

    def merge(self, other: "Moments") -> "Moments":
        """The moments of both streams together (Chan et al.'s pairwise update)."""
        if other.channels != self.channels:
            raise ValueError(f"cannot merge moments over {self.channels} and {other.channels} channels")
        count = self.count + other.count
        with np.errstate(invalid="ignore", divide="ignore"):
            weight = np.where(count > 0, other.count / count, 0.0)
        delta = other.mean - self.mean
        return Moments(count, self.mean + delta * weight, self.m2 + other.m2 + delta * delta * self.count * weight)

    def __getitem__(self, where: slice) -> "Moments":
        return Moments(self.count[where], self.mean[where], self.m2[where])

    def to_arrays(self, prefix: str) -> dict[str, np.ndarray]:
        return {f"{prefix}count": self.count, f"{prefix}mean": self.mean, f"{prefix}m2": self.m2}

    @classmethod
    def from_arrays(cls, arrays, prefix: str) -> "Moments":
        return cls(*(np.asarray(arrays[f"{prefix}{name}"], np.float64) for name in ("count", "mean", "m2")))
