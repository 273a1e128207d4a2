"""The re-runs of a model with one call path: an ONNX Runtime session, a SavedModel's serving signature.

The counterpart of the Keras passes of :mod:`bnaudit.runtime.inference` for models
that have no ``model(x)`` beside ``predict`` (so BN403 does not apply). With N inputs
in batches of B and the first batch of F = min(B, N) samples:

1. all N samples, in batches, on each device of the plan (the reference first), each
   compared with the reference                                          (BN401)
2. the first batch again on the reference                               (BN404)
3. the subset (up to :data:`~bnaudit.runtime.inference.SUBSET_SIZE` samples of the
   first batch, evenly spaced), each sample alone, compared with its row in the batch (BN402)

Rows are compared with :func:`~bnaudit.analysis.tolerances.compare` at the tolerance
of ``results``, and added to its tables.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from ..analysis.tolerances import compare
from .inference import SUBSET_SIZE, InferenceResults, _Timer

#: ``run(device, arrays, batch_size)``: the model's outputs (one array per output, in
#: ``names`` order) for ``arrays`` (one per input), run on ``device`` in batches.
Run = Callable[[str, list[np.ndarray], int], list[np.ndarray]]


def in_batches(call: Callable[[list[np.ndarray]], list[np.ndarray]], arrays: list[np.ndarray], batch_size: int) -> list[np.ndarray]:
    """``call`` on consecutive slices of ``batch_size`` rows, outputs concatenated."""
    parts = [call([a[start : start + batch_size] for a in arrays]) for start in range(0, len(arrays[0]), batch_size)]
    return [np.concatenate(outs) for outs in zip(*parts)]


def single_path_checks(results: InferenceResults, run: Run, names: list[str], inputs: list[np.ndarray], batch_size: int, path: str) -> None:
    """Run the passes of the module docstring, named ``path`` (``session.run``), into ``results``."""
    plan, timer = results.plan, _Timer(results.seconds)
    dtype = results.compute_dtype

    def rows(run_name, reference, actual, expected, subset=None, path=""):
        found = [compare(name, run_name, reference, a, e, results.tolerance, dtype, subset) for name, a, e in zip(names, actual, expected)]
        for row in found:
            row.path = path
        return found

    outputs = {}
    for device in plan.all:
        with timer(f"run {device}"):
            outputs[device] = run(device, inputs, batch_size)
    for device in plan.compared:
        results.devices += rows(device, plan.reference, outputs[device], outputs[plan.reference])
    first = min(batch_size, len(inputs[0]))
    base = [o[:first] for o in outputs[plan.reference]]
    with timer("run repeat"):
        again = run(plan.reference, [a[:first] for a in inputs], first)
    results.repeatability += rows(f"{path} on {plan.reference}, repeated", f"{path}, first run", again, base, path=path)
    if not all(row.passed for row in results.repeatability):
        results.unrepeatable_paths.append(path)
    subset = sorted({int(round(i)) for i in np.linspace(0, first - 1, SUBSET_SIZE)}) if first > 1 else []
    if subset:
        with timer("run alone"):
            alone = run(plan.reference, [a[subset] for a in inputs], 1)
        results.batch_dependence += rows(f"{path}, each sample alone", f"{path}, in a batch of {first}", alone, [o[subset] for o in base], subset, path=path)
    else:
        results.notes.append("batch dependence (BN402) was not checked: the model's batch dimension is fixed at 1")
