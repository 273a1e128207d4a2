"""The proof that a fixed copy is right, run on it before it is moved to ``-o OUT``.

Two kinds of evidence:

* the audit of the copy: the findings each applied fix is for (BN102, BN106, BN301...)
  must be gone. The static ones need no TensorFlow; BN402/BN403 (after ``--unbake``) and
  BN301 (after ``--recalibrate``, on the same data) run the copy with it.
* the outputs: original and copy are loaded in the Keras that wrote the original
  (tf-keras for a Keras 2 ``.h5``, Keras 3 otherwise) and run with ``predict`` on the
  same inputs (the first samples of ``--data``, else seeded N(0, 1) inputs, see
  :mod:`bnaudit.runtime.synthetic`). Absorbing a bias and folding must leave them
  equal within the float32 tolerance of the BN4xx checks (atol 1e-4 + rtol 1e-3
  |reference|). Unbaking changes them wherever the writer's ``predict`` honoured the
  baked flag (tf-keras does), and recalibration changes them on purpose: when either
  changed the copy, the change of outputs is reported, not judged.

Whatever could not run is said in ``Proof.detail``, and the status is then "not run" or
"failed", never "passed".
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import numpy as np

from ..loaders import LoadError
from ..printable import exception_line
from .changes import Proof

#: Fixes whose copy must compute the same outputs as the original.
SAME_OUTPUTS = ("absorb-bias", "fold")
#: Rules run on the copy after a fix that needs TensorFlow, by fix.
RUNTIME_CODES = {"unbake": ("BN402", "BN403"), "recalibrate": ("BN301",)}
#: Synthetic samples when no data is given.
SAMPLES = 32


def prove(original: Path, copy: Path, graph, applied: list[str], static_codes: list[str], options: dict[str, Any]) -> Proof:
    """Check ``copy`` against ``original`` for the ``applied`` fixes (those that changed it); see the module docstring."""
    from ..api import audit
    from ..runtime.data import DataError

    proof = Proof("passed")
    notes: list[str] = []
    runtime_codes = [code for fix in applied for code in RUNTIME_CODES.get(fix, ())]
    have_tf = importlib.util.find_spec("tensorflow") is not None
    codes = static_codes + (runtime_codes if have_tf else [])
    if codes:
        runtime = {k: options[k] for k in ("batch_size", "max_samples", "unsafe_load") if options.get(k)}
        # The copy is bnaudit's own output, from a file already read under the limits: read
        # here, where TensorFlow may already run, not in a child that would import it again.
        result = audit(copy, select=codes, data=options.get("data") if "BN301" in codes else None, inference="BN402" in codes, in_process=True, **runtime)
        proof.checked_codes = [code for code in codes if code in result.rules_run]
        proof.remaining = [{"code": f.code, "layer": f.layer, "message": f.message} for f in result.findings]
        for error in result.errors:
            notes.append(f"{error.rule or 'audit'} could not run on the copy: {error.message}")
        not_run = [code for code in codes if code not in result.rules_run]
        if not_run:
            notes.append(f"{', '.join(not_run)} did not run on the copy")
    if not have_tf:
        notes.append('TensorFlow is not installed, so outputs and BN3xx/BN4xx were not checked (pip install "bnaudit[tensorflow]")')
    else:
        try:
            _compare_outputs(original, copy, graph, applied, options, proof)
        except DataError:  # data that does not fit the model is bad input, found before the copy is written
            raise
        except LoadError as exc:
            notes.append(f"outputs not compared: {exc.message}" + (f" ({exc.hint})" if exc.hint else ""))
        except Exception as exc:  # TensorFlow cannot run the model here (an NCHW convolution on a CPU...)
            notes.append(f"outputs not compared: TensorFlow could not run the models ({exception_line(exc)})")
    proof.detail = "; ".join(notes)
    if proof.remaining or (proof.tolerance is not None and proof.outputs_max_abs_delta is not None and proof.figures.get("beyond_tolerance")):
        proof.status = "failed"
    elif notes:
        proof.status = "not run"
    return proof


def _compare_outputs(original: Path, copy: Path, graph, applied: list[str], options: dict[str, Any], proof: Proof) -> None:
    from ..analysis.tolerances import compare, compute_dtype, tolerance
    from ..graph import dtype_policy
    from ..options import RuntimeOptions
    from ..runtime import load_keras_model
    from ..runtime.inference import flat_outputs
    from ..runtime.synthetic import integer_high, synthetic_inputs

    # Loaded as the runtime loads any model: with the Keras that wrote it, in safe mode,
    # refusing code-carrying layers unless allowed and a Keras without the CVE fixes.
    loading = RuntimeOptions(unsafe_load=bool(options.get("unsafe_load")))
    before = load_keras_model(original, graph, loading)
    after = load_keras_model(copy, graph, loading)
    if options.get("data"):
        from ..runtime.data import iter_batches

        batches = iter_batches(options["data"], before, SAMPLES, int(options.get("max_samples") or SAMPLES))
        inputs = [np.concatenate(parts) for parts in zip(*list(batches))]
        proof.inputs = f"samples of {options['data']} ({batches.order})"
    else:
        inputs = synthetic_inputs(before, SAMPLES, int(options.get("seed") or 0), integer_high(graph))
        proof.inputs = "seeded synthetic N(0, 1) samples"
    proof.samples = len(inputs[0])
    feed = inputs[0] if len(inputs) == 1 else inputs
    expected = flat_outputs(before.predict(feed, batch_size=SAMPLES, verbose=0))
    actual = flat_outputs(after.predict(feed, batch_size=SAMPLES, verbose=0))
    if proof.samples > 1 and all(np.ptp(np.asarray(e, np.float64).reshape(len(e), -1), axis=0).max(initial=0) == 0 for e in expected):
        proof.figures["constant_outputs"] = True  # an untrained model: equal outputs prove little
    dtype = compute_dtype(dtype_policy(layer) for layer in graph)
    tol = tolerance(dtype)
    rows = [compare(f"output_{i}", "copy", "original", a, e, tol, dtype) for i, (a, e) in enumerate(zip(actual, expected))]
    proof.outputs_max_abs_delta = max(row.max_abs for row in rows)
    if applied and set(applied) <= set(SAME_OUTPUTS):
        proof.tolerance = tol.atol
        proof.figures["rtol"] = tol.rtol
        proof.figures["beyond_tolerance"] = sum(row.mismatched for row in rows)
