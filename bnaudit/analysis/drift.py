"""Data statistics against moving statistics, per channel and per BN layer (drift scores).

Per channel, with v = variance + epsilon (what the layer divides by):

* standardized mean shift ``|mu_d - mu_m| / sqrt(v_m)``;
* log variance ratio ``ln(v_d / v_m)``;
* symmetric KL divergence of N(mu_d, v_d) and N(mu_m, v_m):
  ``(v_d/v_m + v_m/v_d - 2)/2 + (mu_d - mu_m)^2 (1/v_d + 1/v_m)/2``.

A layer's drift score is the mean symmetric KL over its live channels (channels dead
on the data are left out: a constant channel has an unbounded KL and its own rule,
BN303). Used by BN301-BN303 and ``bnaudit stats``; numpy only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from .statistics import LayerStatistics

#: A channel is dead on the data when its variance there is below this fraction of its
#: moving variance (the default of BN303's ``variance-ratio`` setting).
DEAD_VARIANCE_RATIO = 1e-6


@dataclass
class LayerDrift:
    """Data vs. moving statistics of one BN layer, per channel and summarised."""

    path: str
    epsilon: float
    statistics: "LayerStatistics"
    moving_mean: np.ndarray
    moving_variance: np.ndarray
    mean_shift: np.ndarray
    log_variance_ratio: np.ndarray
    symmetric_kl: np.ndarray
    dead: np.ndarray

    @property
    def channels(self) -> int:
        return int(self.moving_mean.shape[0])

    @property
    def live(self) -> np.ndarray:
        return ~self.dead

    @property
    def drift_score(self) -> float:
        return float(self.symmetric_kl[self.live].mean()) if self.live.any() else 0.0

    @property
    def worst_channel(self) -> int | None:
        if not self.live.any():
            return None
        return int(np.flatnonzero(self.live)[np.argmax(self.symmetric_kl[self.live])])

    def drifted(self, mean_shift: float, log_variance_ratio: float) -> np.ndarray:
        """Live channels beyond either per-channel threshold."""
        return self.live & ((self.mean_shift > mean_shift) | (np.abs(self.log_variance_ratio) > log_variance_ratio))

    def summary(self) -> dict[str, Any]:
        """The per-layer numbers of the JSON output and the ``stats`` table."""
        worst = self.worst_channel
        live = self.live
        moments = self.statistics.moments
        spread_scale = np.sqrt(moments.variance + self.epsilon)
        return {
            "channels": self.channels,
            "values_per_channel": int(moments.count[0]) if moments.channels else 0,
            "drift_score": rounded(self.drift_score),
            "worst_channel": worst,
            "worst_channel_kl": rounded(self.symmetric_kl[worst]) if worst is not None else None,
            "mean_shift": rounded(self.mean_shift[live].mean()) if live.any() else None,
            "max_mean_shift": rounded(self.mean_shift[live].max()) if live.any() else None,
            "variance_ratio": rounded(np.exp(self.log_variance_ratio[live].mean())) if live.any() else None,
            "max_abs_log_variance_ratio": rounded(np.abs(self.log_variance_ratio[live]).max()) if live.any() else None,
            "dead_channels": int(self.dead.sum()),
            "full_batches": int(self.statistics.batch_means.count[0]) if moments.channels else 0,
            # Spread across batches, relative to the data's own scale: what training-mode BN sees.
            "batch_mean_spread": _finite_mean(self.statistics.batch_means.std / spread_scale),
            "batch_variance_spread": _finite_mean(self.statistics.batch_variances.std / (moments.variance + self.epsilon)),
        }

    def per_channel(self) -> dict[str, list]:
        moments = self.statistics.moments
        return {
            "data_mean": _numbers(moments.mean),
            "data_variance": _numbers(moments.variance),
            "moving_mean": _numbers(self.moving_mean),
            "moving_variance": _numbers(self.moving_variance),
            "mean_shift": _numbers(self.mean_shift),
            "log_variance_ratio": _numbers(self.log_variance_ratio),
            "symmetric_kl": _numbers(self.symmetric_kl),
            "batch_mean_std": _numbers(self.statistics.batch_means.std),
            "batch_variance_std": _numbers(self.statistics.batch_variances.std),
        }


def compare_layer(
    statistics: "LayerStatistics",
    moving_mean: np.ndarray,
    moving_variance: np.ndarray,
    epsilon: float,
    dead_ratio: float = DEAD_VARIANCE_RATIO,
) -> LayerDrift:
    data_mean = statistics.moments.mean
    data_variance = statistics.moments.variance
    v_d = np.maximum(data_variance, 0.0) + epsilon
    v_m = np.maximum(moving_variance, 0.0) + epsilon
    delta = data_mean - moving_mean
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        symmetric_kl = 0.5 * (v_d / v_m + v_m / v_d - 2.0) + 0.5 * delta * delta * (1.0 / v_d + 1.0 / v_m)
        dead = (data_variance < dead_ratio * moving_variance) & (moving_variance > epsilon)
    return LayerDrift(
        path=statistics.path,
        epsilon=epsilon,
        statistics=statistics,
        moving_mean=moving_mean,
        moving_variance=moving_variance,
        mean_shift=np.abs(delta) / np.sqrt(v_m),
        log_variance_ratio=np.log(v_d / v_m),
        symmetric_kl=symmetric_kl,
        dead=dead,
    )


def rounded(value: Any) -> float | None:
    """A JSON-safe float (reports refuse NaN), rounded to what a person reads."""
    value = float(value)
    return round(value, 6) if math.isfinite(value) else None


def _finite_mean(values: np.ndarray) -> float | None:
    """Mean over the channels where it is defined (no full batch: none is)."""
    finite = values[np.isfinite(values)]
    return rounded(finite.mean()) if finite.size else None


def _numbers(values: np.ndarray) -> list[float | None]:
    return [rounded(v) for v in values]
