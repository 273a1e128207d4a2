"""``--verify-data HELDOUT``: before/after figures of a recalibration on data it did not see.

Recalibration makes BN301 clean on the data it measured by construction; whether the
new statistics describe the distribution rather than those samples shows on held-out
samples of it. Three figures, each for the original ("before") and the copy ("after"):

* BN301's drift score per BN layer (mean symmetric KL between the data's and the moving
  statistics, :mod:`bnaudit.analysis.drift`), its max and median over the layers, and
  the layers BN301 reports;
* BN302's comparison of training-mode and inference-mode outputs (top-1 agreement and
  linear CKA, :mod:`bnaudit.analysis.cka`);
* and once, copy against original: the max |copy - original| over every output and,
  over the outputs with a class axis (last axis >= 2, as BN302 counts them), the
  fraction of positions whose argmax (top-1 class) is the same.

The first two are BN301 and BN302 themselves, run by :func:`bnaudit.audit` on each file
with ``--data HELDOUT`` and the fix's ``--batch-size``/``--max-samples``, so they are the
numbers ``bnaudit check --data HELDOUT`` prints. They are reported, not judged: the
proof's status does not depend on them. A figure that could not be computed is listed
in ``not_run`` with the reason, never filled in.

:func:`before` runs before the copy is written, so held-out data that does not fit the
model stops the fix (one line, exit 2) with nothing written.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..analysis.drift import rounded
from ..measurements import BatchNormDrift, BatchNormNotMeasured, StatisticsPass, TrainInferenceComparison
from .copy import FixError

#: The rules whose measurements are compared.
CODES = ("BN301", "BN302")


@dataclass
class Side:
    """BN301 and BN302 on one model file over the held-out data.

    ``drift``: BN301 drift score per measured BN layer path; ``drift_max`` and
    ``drift_median`` over those layers (None when no layer was measured); ``reported``:
    the layers BN301 reports; ``top1_agreement`` and ``cka``: BN302's training- vs.
    inference-mode comparison (None when it could not be computed, with the reason in
    :attr:`Heldout.not_run`).
    """

    drift: dict[str, float | None] = field(default_factory=dict)
    drift_max: float | None = None
    drift_median: float | None = None
    reported: list[str] = field(default_factory=list)
    top1_agreement: float | None = None
    cka: float | None = None


@dataclass
class Heldout:
    """The figures of ``--verify-data`` (``FixReport.heldout``; JSON in docs/fix.md).

    ``samples``: held-out samples run through each model; ``outputs_max_abs_delta``:
    max |copy - original| over every output (float, output units);
    ``outputs_top1_agreement``: fraction in [0, 1] of class-axis positions with the
    same argmax in both; ``not_run``: ``{figure: why}`` for each figure not computed.
    """

    data: str
    samples: int = 0
    before: Side = field(default_factory=Side)
    after: Side = field(default_factory=Side)
    outputs_max_abs_delta: float | None = None
    outputs_top1_agreement: float | None = None
    not_run: dict[str, str] = field(default_factory=dict)


def before(original: Path, heldout: str, options: dict[str, Any]) -> Heldout:
    """BN301/BN302 on the original over ``heldout``; raises :class:`FixError` when they cannot run.

    :raises FixError: the held-out data cannot be read or does not fit the model (its
        message names ``--verify-data``), or TensorFlow cannot run the model.
    """
    figures = Heldout(data=heldout)
    result = _audit(original, heldout, options)
    if result.errors:
        error = result.errors[0]
        message = error.message.replace(f"--data {heldout}", f"--verify-data {heldout}", 1)
        raise FixError(message if "--verify-data" in message else f"--verify-data {heldout}: {message}", error.hint)
    figures.before = _side(result, figures.not_run, "before")
    figures.samples = sum(how.samples for how in result.measured(StatisticsPass)[-1:])
    return figures


def after(figures: Heldout, original: Path, copy: Path, graph, options: dict[str, Any]) -> None:
    """Fill in the copy's side and the output change; what cannot run goes to ``not_run``."""
    from ..loaders import LoadError

    result = _audit(copy, figures.data, options)
    for error in result.errors:
        figures.not_run["after"] = f"BN301/BN302 could not run on the copy: {error.message}"
    if not result.errors:
        figures.after = _side(result, figures.not_run, "after")
    try:
        _output_change(figures, original, copy, graph, options)
    except LoadError as exc:
        figures.not_run["outputs"] = exc.message + (f" ({exc.hint})" if exc.hint else "")


def _audit(path: Path, heldout: str, options: dict[str, Any]):
    from ..api import audit

    runtime = {k: options[k] for k in ("batch_size", "max_samples", "unsafe_load") if options.get(k)}
    # In this process: `bnaudit fix` already runs in a child that read the original
    # under limits, and the copy is its own output.
    return audit(path, select=CODES, data=heldout, in_process=True, **runtime)


def _side(result, not_run: dict[str, str], label: str) -> Side:
    """BN301's drift scores and BN302's comparison from one audit's measurements."""
    side = Side(reported=[f.layer for f in result.findings if f.code == "BN301"])
    side.drift = {layer.layer: layer.drift_score for layer in result.measured(BatchNormDrift)}
    unmeasured = {layer.layer: layer.not_measured for layer in result.measured(BatchNormNotMeasured)}
    if unmeasured:
        not_run[f"{label}.drift"] = "; ".join(f"{path}: {why}" for path, why in unmeasured.items())
    scores = [score for score in side.drift.values() if score is not None]
    if scores:
        side.drift_max, side.drift_median = rounded(max(scores)), rounded(np.median(scores))
    elif not unmeasured:
        not_run[f"{label}.drift"] = "no BN layer was reached by the data" if "BN301" in result.rules_run else _why_not(result, "BN301")
    compared = result.measured(TrainInferenceComparison)[-1:]
    side.top1_agreement, side.cka = (compared[0].top1_agreement, compared[0].cka) if compared else (None, None)
    if compared and compared[0].not_judged:
        not_run[f"{label}.bn302"] = "; ".join(compared[0].not_judged)
    elif "BN302" not in result.rules_run:
        not_run[f"{label}.bn302"] = _why_not(result, "BN302")
    return side


def _why_not(result, code: str) -> str:
    reasons = [s.reason for s in result.skipped if s.code == code] + [e.message for e in result.errors if code in e.rules]
    return f"{code} did not run: " + ("; ".join(reasons) or "no reason given")


def _output_change(figures: Heldout, original: Path, copy: Path, graph, options: dict[str, Any]) -> None:
    """Both models' ``predict`` on the held-out batches, compared batch by batch (memory: one batch)."""
    from ..options import RuntimeOptions
    from ..runtime import load_keras_model
    from ..runtime.data import DEFAULT_BATCH_SIZE, iter_batches
    from ..runtime.inference import flat_outputs

    loading = RuntimeOptions(unsafe_load=bool(options.get("unsafe_load")))
    models = load_keras_model(original, graph, loading), load_keras_model(copy, graph, loading)
    batch_size = int(options.get("batch_size") or DEFAULT_BATCH_SIZE)
    largest, agreeing, compared = 0.0, 0, 0
    for batch in iter_batches(figures.data, models[0], batch_size, options.get("max_samples")):
        feed = batch[0] if len(batch) == 1 else batch
        expected, actual = (flat_outputs(model.predict_on_batch(feed)) for model in models)
        for e, a in zip(expected, actual):
            largest = max(largest, float(np.max(np.abs(a.astype(np.float64) - e))) if e.size else 0.0)
            if e.ndim >= 2 and e.shape[-1] >= 2:
                agreeing += int((e.argmax(-1) == a.argmax(-1)).sum())
                compared += int(e[..., 0].size)
    if np.isfinite(largest):
        figures.outputs_max_abs_delta = largest
    else:
        figures.not_run["outputs.max_abs_delta"] = "an output of the original or the copy holds NaN or Inf"
    if compared:
        figures.outputs_top1_agreement = rounded(agreeing / compared)
    else:
        figures.not_run["outputs.top1_agreement"] = "no output has a class axis (last axis of at least 2)"
