"""Inference re-run rules BN401-BN404: the same inputs through other devices and call paths.

They load the model with Keras (safe mode; code-carrying layers refused unless
``--unsafe-load``) and run only with ``--data`` or ``--inference``. One set of passes,
:func:`bnaudit.runtime.inference.run_inference_checks`, serves all four: the first rule
to run computes it through ``RuleContext.shared``; each rule yields the device x output
comparisons as typed measurements (:mod:`bnaudit.measurements`) and which devices ran as notes.
"""

from __future__ import annotations

from typing import Any

from ..findings import Severity
from ..hookspecs import hookimpl
from ..rule import Note, rule

NEEDS = ("graph", "runtime")


def _results(ctx):
    """The shared re-runs of this model, computed by whichever BN40x rule runs first
    (a failure stops the four rules with one error)."""

    def compute() -> Any:
        if ctx.graph.runner == "onnxruntime":
            from ..runtime.onnx_inference import run_inference_checks  # ONNX Runtime, no TensorFlow
        elif ctx.graph.runner == "serving":
            from ..runtime.serving_inference import run_inference_checks  # a SavedModel's serving signature
        else:
            from ..runtime.inference import run_inference_checks  # TensorFlow only from here on

        return run_inference_checks(ctx.runtime)

    return ctx.shared("inference", compute)


def _recorded(results):
    """The re-runs' table and notes: each BN40x rule yields them, the engine keeps them once."""
    yield from results.measured()
    for note in results.notes:
        yield Note(note)


def _failing(results, table: str):
    """The failing rows of one comparison table of the shared re-runs."""
    return [row for row in getattr(results, table) if not row.passed]


def _numbers(row, tol) -> str:
    return (
        f"max abs error {row.max_abs:.3g}, max rel error {row.max_rel:.3g}; "
        f"{row.mismatched} of {row.elements} elements beyond atol {tol.atol:g} + rtol {tol.rtol:g} x |reference|; "
        f"worst at {row.describe_worst()}"
    )


def _details(row, results) -> dict[str, Any]:
    return {**row.to_dict(), "tolerance": vars(results.tolerance), "compute_dtype": results.compute_dtype}


@rule("BN401", "device-mismatch", Severity.ERROR, needs=NEEDS)
def device_mismatch(ctx):
    """The model's outputs on two devices differ beyond tolerance.

    ## What it does
    Runs the same inputs with `model.predict` on every device TensorFlow lists (each CPU
    and GPU; TF32 off unless `--allow-tf32`) and compares each output with the first
    CPU's, or with a float64 run of the model on that CPU (`--reference float64`):
    max, mean and 99th-percentile absolute and relative error per output, failing when
    an element exceeds `atol + rtol * |reference|` (`--atol`, `--rtol`; defaults depend on
    the model's compute dtype, see docs/inference.md). Inputs come from `--data`, or are
    seeded synthetic samples with `--inference`.

    ## Why is this bad?
    Deploying on another device gives other answers. Beyond reordered sums (well inside
    the defaults), large differences come from reduced-precision kernels (TF32, float16
    accumulation), device-specific bugs, or a layer whose result depends on how the
    device batches the work.

    ## Example
    A float16 model whose BN epsilon underflows on the GPU, giving NaN there and finite
    values on the CPU.

    ## Use instead
    Fix the precision problem (larger epsilon, float32 BN under mixed precision), or, when
    the difference is acceptable, say so with `--atol`/`--rtol`.
    """
    results = _results(ctx)
    yield from _recorded(results)
    for row in _failing(results, "devices"):
        yield ctx.finding(
            row.output,
            f"output {row.output!r} on {row.run} differs from {row.reference}: {_numbers(row, results.tolerance)}",
            details=_details(row, results),
            fix="look for reduced-precision kernels or device-specific ops; if the difference is acceptable, raise --atol/--rtol",
        )


@rule("BN402", "batch-dependent-inference", Severity.ERROR, needs=NEEDS)
def batch_dependent_inference(ctx):
    """A sample's output at inference depends on the other samples of its batch.

    ## What it does
    Runs a few samples of the first batch (4, evenly spaced, first and last included)
    each alone, through `model.predict` and through a direct call `model(x)`, and
    compares them with their outputs inside the batch. A call path whose repeated run
    already differs (BN404) is not judged here, since its noise hides any batch effect.

    ## Why is this bad?
    At inference BN should normalise with its moving statistics, so each sample's output
    is its own. When it depends on the batch, BN (or another layer) runs on batch
    statistics: results change with batch size and with whoever shares the batch.
    In Keras 3 a BN called with a baked-in `training=True` (BN106) does this under
    `model(x)`, while `model.predict` hides it.

    ## Example
    ```python
    x = layers.BatchNormalization()(x, training=True)
    ```

    ## Use instead
    ```python
    x = layers.BatchNormalization()(x)
    ```
    """
    results = _results(ctx)
    yield from _recorded(results)
    for row in _failing(results, "batch_dependence"):
        if row.path not in results.unrepeatable_paths:
            yield ctx.finding(
                row.output,
                f"with {row.path}, output {row.output!r} of a sample run alone differs from the same sample run "
                f"{row.reference.removeprefix(row.path + ', ')}: {_numbers(row, results.tolerance)}",
                details=_details(row, results),
                fix="a layer uses batch statistics at inference: remove training=True from layer calls (see BN106) and rebuild",
            )


@rule("BN403", "call-predict-mismatch", Severity.ERROR, needs=NEEDS)
def call_predict_mismatch(ctx):
    """`model(x)` and `model.predict(x)` give different outputs for the same inputs.

    ## What it does
    Runs the first batch through a direct call `model(x)` and compares it with the
    outputs `model.predict` gave for the same batch.

    ## Why is this bad?
    Serving code calls the model directly (or through a SavedModel signature) while
    evaluation uses `predict`: when they disagree, the accuracy measured is not the
    accuracy served. The usual cause is a layer call saved with `training=True` (BN106),
    which `predict` overrides and `model(x)` obeys.

    ## Example
    ```python
    x = layers.BatchNormalization()(x, training=True)
    ```

    ## Use instead
    ```python
    x = layers.BatchNormalization()(x)  # model(x, training=False) does not override a saved training=True
    ```
    """
    results = _results(ctx)
    yield from _recorded(results)
    for row in _failing(results, "call_vs_predict"):
        yield ctx.finding(
            row.output,
            f"output {row.output!r} of model(x) differs from model.predict(x) on the same batch: {_numbers(row, results.tolerance)}",
            details=_details(row, results),
            fix="remove training=True from layer calls (see BN106) and rebuild (passing training=False at call time does not override it)",
        )


@rule("BN404", "nondeterministic-inference", Severity.WARNING, needs=NEEDS)
def nondeterministic_inference(ctx):
    """Running the same inputs twice on one device gives different outputs.

    ## What it does
    Runs the first batch a second time on the reference CPU, through `model.predict` and
    through `model(x)`, and compares each run with the first.

    ## Why is this bad?
    Results cannot be reproduced, and every other comparison becomes noisy. At inference
    the usual cause is a random layer (Dropout, GaussianNoise) called with
    `training=True`, or an op without a deterministic kernel.

    ## Example
    ```python
    x = layers.Dropout(0.5)(x, training=True)
    ```

    ## Use instead
    ```python
    x = layers.Dropout(0.5)(x)  # active in fit() only
    ```
    """
    results = _results(ctx)
    yield from _recorded(results)
    for row in _failing(results, "repeatability"):
        yield ctx.finding(
            row.output,
            f"with {row.path}, output {row.output!r} differs between two runs of the same batch: {_numbers(row, results.tolerance)}",
            details=_details(row, results),
            fix="remove training=True from Dropout/GaussianNoise calls, or enable deterministic ops (tf.config.experimental.enable_op_determinism)",
        )


@hookimpl
def bnaudit_register_rules():
    return [device_mismatch, batch_dependent_inference, call_predict_mismatch, nondeterministic_inference]
