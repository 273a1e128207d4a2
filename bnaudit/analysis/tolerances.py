"""Two runs of a model compared element by element within a tolerance (BN401-BN404).

Two runs are compared Polygraphy-style, element by element, in the model's compute
dtype: absolute error ``|a - r|``, relative error ``|a - r| / |r|``, each summarised by
max, mean and 99th percentile (relative error over the elements whose reference is not
0); an element passes when ``|a - r| <= atol + rtol * |r|`` (NumPy's ``allclose`` rule).
The runs themselves (TensorFlow) are in :mod:`bnaudit.runtime.inference`; numpy only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterable

import numpy as np

#: Floating dtypes, coarsest first: a model is compared in the coarsest one it computes in.
PRECISIONS = ("bfloat16", "float16", "float32", "float64")

#: Default (atol, rtol) per compute dtype. Devices, batch sizes and call paths legitimately
#: pick other kernels and reorder sums, which changes the last bits and grows with depth:
#: a ResNet50 in float32 differs from its float64 twin by up to 2.9e-6 on unit-scale
#: logits (docs/inference.md). 1e-4/1e-3 leave over an order of magnitude above that,
#: while a BN on batch statistics moves outputs by about 1e-1. float16 (epsilon 9.8e-4)
#: and bfloat16 (7.8e-3) get about ten of their epsilons; float64 keeps float32's ratio
#: to its epsilon.
DEFAULT_TOLERANCES = {
    "float64": (1e-10, 1e-9),
    "float32": (1e-4, 1e-3),
    "float16": (1e-2, 1e-2),
    "bfloat16": (5e-2, 5e-2),
}


@dataclass(frozen=True)
class Tolerance:
    atol: float
    rtol: float
    #: Where the numbers come from: "default for float16", "--atol/--rtol".
    source: str


def compute_dtype(policies: Iterable[str]) -> str:
    """The coarsest floating dtype among the layers' dtype policies ("mixed_float16" -> float16)."""
    found = {p.removeprefix("mixed_") for p in policies}
    return next((d for d in PRECISIONS if d in found), "float32")


def tolerance(dtype: str, atol: float | None = None, rtol: float | None = None) -> Tolerance:
    """The user's ``--atol``/``--rtol`` where given, else the default for ``dtype``."""
    default_atol, default_rtol = DEFAULT_TOLERANCES[dtype]
    given = [flag for flag, value in (("--atol", atol), ("--rtol", rtol)) if value is not None]
    source = "/".join(given) if given else f"default for {dtype}"
    return Tolerance(
        default_atol if atol is None else float(atol),
        default_rtol if rtol is None else float(rtol),
        source,
    )


@dataclass
class Comparison:
    """One output of one run against the same output of a reference run: a table row."""

    output: str
    run: str
    reference: str
    max_abs: float
    mean_abs: float
    p99_abs: float
    max_rel: float
    mean_rel: float
    p99_rel: float
    #: Elements beyond ``atol + rtol * |reference|``, of ``elements``.
    mismatched: int
    elements: int
    #: The element furthest beyond tolerance (the largest error when all pass):
    #: its sample number in the inputs, index within the sample, both values, errors.
    worst: dict[str, Any]
    #: The call path both runs took (``model.predict`` or ``model(x)``), when they share one.
    path: str = ""

    @property
    def passed(self) -> bool:
        return self.mismatched == 0

    def to_dict(self) -> dict[str, Any]:
        row = {k: _json_number(v) for k, v in vars(self).items() if k != "worst"}
        row["passed"] = self.passed
        row["worst"] = {k: _json_number(v) if isinstance(v, float) else v for k, v in self.worst.items()}
        return row

    def describe_worst(self) -> str:
        w = self.worst
        where = f"sample {w['sample']}" + (f", index {w['index']}" if w["index"] else "")
        return f"{where}: {w['value']:.6g} vs {w['reference']:.6g}"


def compare(
    output: str,
    run: str,
    reference: str,
    actual: np.ndarray,
    expected: np.ndarray,
    tol: Tolerance,
    dtype: str,
    samples: list[int] | None = None,
) -> Comparison:
    """Compare ``actual`` with ``expected`` in ``dtype``; ``samples`` maps axis 0 to sample numbers."""
    a = _as_compute_dtype(actual, dtype)
    e = _as_compute_dtype(expected, dtype)
    if a.shape != e.shape:
        raise ValueError(f"output {output!r}: {run} gives shape {a.shape}, {reference} {e.shape}")
    with np.errstate(invalid="ignore", over="ignore"):
        diff = np.abs(a - e)
        same = (np.isnan(a) & np.isnan(e)) | (a == e)  # equal infinities and NaN-for-NaN agree
        diff = np.where(same, 0.0, np.where(np.isnan(diff), np.inf, diff))
        scale = np.abs(np.where(np.isfinite(e), e, 0.0))
        defined = scale > 0  # relative error means nothing where the reference is 0
        rel = np.where(defined, diff / np.where(defined, scale, 1.0), np.nan)
        allowed = tol.atol + tol.rtol * scale
        beyond = diff > allowed
        excess = np.where(diff == 0, 0.0, diff / np.where(allowed > 0, allowed, np.finfo(np.float64).tiny))
    position = np.unravel_index(int(np.argmax(excess if beyond.any() else diff)), diff.shape)
    sample = int(position[0])
    worst = {
        "sample": samples[sample] if samples is not None else sample,
        "index": [int(i) for i in position[1:]],
        "value": float(a[position]),
        "reference": float(e[position]),
        "abs": float(diff[position]),
        "rel": float(rel[position]) if defined[position] else None,
    }
    return Comparison(
        output=output,
        run=run,
        reference=reference,
        max_abs=_stat(np.max, diff),
        mean_abs=_stat(np.mean, diff),
        p99_abs=_p99(diff),
        max_rel=_stat(np.max, rel[defined]),
        mean_rel=_stat(np.mean, rel[defined]),
        p99_rel=_p99(rel[defined]),
        mismatched=int(beyond.sum()),
        elements=int(diff.size),
        worst=worst,
    )


def _as_compute_dtype(values: np.ndarray, dtype: str) -> np.ndarray:
    """``values`` rounded to ``dtype`` (a float16 model is judged in float16), as float64."""
    target = _numpy_dtype(dtype)
    values = np.asarray(values)
    if values.dtype.kind == "f" and np.finfo(values.dtype).bits > _bits(target):
        values = values.astype(target)
    return values.astype(np.float64)


def _numpy_dtype(name: str):
    if name == "bfloat16":
        import ml_dtypes  # shipped with Keras 3

        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(name)


def _bits(dtype) -> int:
    return 16 if dtype.name == "bfloat16" else np.finfo(dtype).bits


def _stat(function, values: np.ndarray) -> float:
    """``function(values)``, 0 for no values (no element has a relative error)."""
    return float(function(values)) if values.size else 0.0


def _p99(values: np.ndarray) -> float:
    """99th percentile as an element of ``values`` (no interpolation across an infinity)."""
    return float(np.percentile(values, 99, method="higher")) if values.size else 0.0


def _json_number(value: Any) -> Any:
    """JSON has no NaN or infinity: those become the strings "nan", "inf"."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value
