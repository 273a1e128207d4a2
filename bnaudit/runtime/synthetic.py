"""Seeded synthetic inputs built from a model's input spec, for ``--inference`` without data.

The inference checks compare two runs of the *same* inputs (two devices, two call paths,
a sample alone and in a batch, a run and its repeat), so the inputs need not look like
real data: they need to be reproducible, to reach every channel with non-degenerate
values, and to be of the scale BN-normalised networks work at. Hence:

* floating inputs: independent standard-normal values, N(0, 1);
* integer inputs (token ids, categories): uniform integers in ``[0, high)``, where
  ``high`` is the smallest ``input_dim`` of the model's Embedding layers (so every id is
  valid), or :data:`INTEGER_HIGH` when it has none;
* boolean inputs: fair coin flips;
* a dimension the spec leaves open (``None`` besides the batch) gets :data:`OPEN_DIM`.

The generator is NumPy's PCG64 seeded with the runtime option ``seed`` (default 0; ``bnaudit.audit(..., seed=N)``), one stream drawn
input by input in the model's input order, so the same model and seed always give the
same arrays on every machine.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ..loaders import LoadError
from .data import InputSpec, input_specs

if TYPE_CHECKING:
    from ..graph import ModelGraph

#: Size given to input dimensions the model leaves open (other than the batch).
OPEN_DIM = 32
#: Upper bound (exclusive) of integer inputs when no Embedding bounds them.
INTEGER_HIGH = 10


def integer_high(graph: "ModelGraph") -> int:
    """Exclusive bound of synthetic integer inputs: every id must be valid for every Embedding."""
    dims = [int(layer.config["input_dim"]) for layer in graph.of_class("Embedding") if layer.config.get("input_dim")]
    return min(dims) if dims else INTEGER_HIGH


def synthetic_inputs(model, samples: int, seed: int = 0, high: int = INTEGER_HIGH) -> list[np.ndarray]:
    """``samples`` synthetic rows for every model input (one array per input, in call order)."""
    try:
        specs = input_specs(model)
    except (AttributeError, ValueError):  # a subclassed model that was never called on an Input
        specs = []
    return synthetic_arrays(specs, samples, seed, high)


def synthetic_arrays(specs: "list[InputSpec]", samples: int, seed: int = 0, high: int = INTEGER_HIGH) -> list[np.ndarray]:
    """``samples`` synthetic rows for each input spec, in order (the model's, or a
    SavedModel signature's); arrays of shape ``(samples, *spec.shape)``, ``spec.dtype``.

    Raises :class:`LoadError` when there is no spec, or one of a dtype without synthetic values.
    """
    if not specs:
        raise LoadError(
            "the model declares no input shape, so no synthetic inputs can be built for it",
            "pass --data with real inputs",
        )
    rng = np.random.default_rng(seed)
    arrays = []
    for spec in specs:
        shape = (samples, *(OPEN_DIM if d is None else d for d in spec.shape))
        if spec.dtype.kind == "f":
            values = rng.standard_normal(shape).astype(spec.dtype)
        elif spec.dtype.kind in "iu":
            values = rng.integers(0, high, size=shape).astype(spec.dtype)
        elif spec.dtype.kind == "b":
            values = rng.random(shape) < 0.5
        else:
            raise LoadError(f"cannot build synthetic values for {spec.describe()}", "pass --data with real inputs")
        arrays.append(values)
    return arrays
