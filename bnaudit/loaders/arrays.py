"""The saved vectors of one BN layer, whichever file they come from; no HDF5, no ONNX here.

Every loader's weights store (``.keras``/``.h5`` via h5py, ONNX initializers, SavedModel
checkpoints) returns :class:`BNArrays` and applies the same size limits, so the weight
rules read every format alike.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from . import LoadError

if TYPE_CHECKING:
    from ..graph import Layer

#: A BN vector longer than this is not a real channel count: refuse to read it.
MAX_CHANNELS = 1 << 24
#: ``layer_arrays`` refuses an array with more elements than this (1 GiB of float32).
MAX_ARRAY_ELEMENTS = 1 << 28


@dataclass
class BNArrays:
    """The saved vectors of one BN layer; ``gamma``/``beta`` are None when scale/center is off."""

    gamma: np.ndarray | None
    beta: np.ndarray | None
    moving_mean: np.ndarray
    moving_variance: np.ndarray

    @property
    def channels(self) -> int:
        return int(self.moving_mean.shape[0])


#: What batch renormalization (``renorm=True``, Keras 2 and 3) adds after the moving statistics.
RENORM_VARIABLES = ("moving_stddev", "renorm_mean", "renorm_stddev")
#: The four vectors every BN rule reads; the renorm variables are checked but not read.
BN_VECTORS = ("gamma", "beta", "moving_mean", "moving_variance")


def bn_variable_names(layer: "Layer") -> list[str]:
    """The BN variables in Keras's creation order: trainable (gamma, beta), then moving
    statistics, then batch renormalization's three (Keras 2 ``BatchNormalizationBase``
    and Keras 3 ``BatchNormalization.build`` both create them in this order)."""
    names = []
    if layer.config.get("scale", True):
        names.append("gamma")
    if layer.config.get("center", True):
        names.append("beta")
    names += ["moving_mean", "moving_variance"]
    if layer.config.get("renorm"):
        names += RENORM_VARIABLES
    return names


def assemble_bn_arrays(values: dict[str, np.ndarray], where: str) -> BNArrays:
    """The named vectors of one BN as :class:`BNArrays`; :class:`LoadError` when the moving
    statistics are missing or the vectors differ in length (every loader's weights store)."""
    missing = [n for n in ("moving_mean", "moving_variance") if n not in values]
    if missing:
        raise LoadError(f"{where}: no {', '.join(missing)} in the weights file")
    sizes = {v.shape[0] for v in values.values()}
    if len(sizes) != 1:
        raise LoadError(f"{where}: BN vectors of different lengths {sorted(sizes)}")
    return BNArrays(
        values.get("gamma"), values.get("beta"), values["moving_mean"], values["moving_variance"]
    )
