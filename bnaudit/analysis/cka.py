"""Linear CKA between the outputs of two normalization modes, summed over batches.

Linear CKA is the minibatch form of Nguyen et al. (2021): unbiased HSIC estimates
(Song et al., 2012) summed over batches, so no more than one batch is ever held.
BN302 uses it to say how much a model's outputs change between BN on batch statistics
and BN on moving statistics. numpy only.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class ModeComparison:
    """Model outputs with BN on batch statistics vs. on moving statistics, summed over batches.

    Linear CKA is the minibatch form of Nguyen et al. (2021): unbiased HSIC estimates
    (Song et al., 2012) summed over batches, so no more than one batch is ever held.
    It needs the model's outputs, so it lives only in a pass over ``--data`` and is
    not saved with the moments.
    """

    hsic_xy: float = 0.0
    hsic_xx: float = 0.0
    hsic_yy: float = 0.0
    agreeing: int = 0
    compared: int = 0

    @property
    def cka(self) -> float | None:
        denominator = self.hsic_xx * self.hsic_yy
        if not denominator > 0:
            return None
        return float(self.hsic_xy / np.sqrt(denominator))

    @property
    def agreement(self) -> float | None:
        return self.agreeing / self.compared if self.compared else None

    def add(self, inference: list[np.ndarray], training: list[np.ndarray]) -> None:
        x = np.concatenate([o.reshape(len(o), -1) for o in inference], axis=1).astype(np.float64)
        y = np.concatenate([o.reshape(len(o), -1) for o in training], axis=1).astype(np.float64)
        if len(x) >= 4:
            k, l = x @ x.T, y @ y.T
            self.hsic_xy += _unbiased_hsic(k, l)
            self.hsic_xx += _unbiased_hsic(k, k)
            self.hsic_yy += _unbiased_hsic(l, l)
        for a, b in zip(inference, training):
            if a.ndim >= 2 and a.shape[-1] >= 2:
                self.agreeing += int((a.argmax(-1) == b.argmax(-1)).sum())
                self.compared += int(a[..., 0].size)


def _unbiased_hsic(k: np.ndarray, l: np.ndarray) -> float:
    n = k.shape[0]
    k = k.copy()
    l = l.copy()
    np.fill_diagonal(k, 0.0)
    np.fill_diagonal(l, 0.0)
    kl = k @ l
    value = np.trace(kl) + k.sum() * l.sum() / ((n - 1) * (n - 2)) - 2.0 * kl.sum() / (n - 2)
    return float(value / (n * (n - 3)))
