"""The proof that a fixed copy is right, run after it is written.

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

    proof = Proof("passed")
    notes: list[str] = []
    runtime_codes = [code for fix in applied for code in RUNTIME_CODES.get(fix, ())]
    have_tf = importlib.util.find_spec("tensorflow") is not None
    codes = static_codes + (runtime_codes if have_tf else [])
    if codes:
        runtime = {k: options[k] for k in ("batch_size", "max_samples", "unsafe_load") if options.get(k)}
        result = audit(copy, select=codes, data=options.get("data") if "BN301" in codes else None, inference="BN402" in codes, **runtime)
        proof.checked_codes = [code for code in codes if code in result.rules_run]
        proof.remaining = [{"code": f.code, "layer": f.layer, "message": f.message} for f in result.findings]
        for error in result.errors:
            notes.append(f"{error.rule or 'audit'} could not run on the copy: {error.message}")
        not_run = [code for code in codes if code not in result.rules_run]
        if not_run:
            notes.append(f"{', '.join(not_run)} did not run on the copy")
    if not have_tf:
        notes.append('TensorFlow is not installed, so outputs and BN3xx/BN4xx were not checked (pip install "bnaudit[tensorflow]")')
    elif options.get("verify_outputs", True):
        try:
            _compare_outputs(original, copy, graph, applied, options, proof)
        except LoadError as exc:
            notes.append(f"outputs not compared: {exc.message}" + (f" ({exc.hint})" if exc.hint else ""))
    proof.detail = "; ".join(notes)
    if proof.remaining or (proof.tolerance is not None and proof.outputs_max_abs_delta is not None and proof.figures.get("beyond_tolerance")):
        proof.status = "failed"
    elif notes:
        proof.status = "not run"
    return proof


def load_as_written(path: Path, graph, unsafe_load: bool = False):
    """Load ``path`` with the Keras that wrote it: tf-keras for Keras 2 files, Keras 3 otherwise."""
    from ..runtime import import_tensorflow, unsafe_layers

    risky = unsafe_layers(graph)
    if risky and not unsafe_load:
        raise LoadError(f"it can execute code when loaded: {', '.join(risky[:3])}", "only for models you trust: pass --unsafe-load")
    import_tensorflow()
    try:
        if graph.format == "h5-keras2":
            if importlib.util.find_spec("tf_keras") is None:
                raise LoadError("the file was written by Keras 2 and tf-keras is not installed", "pip install tf-keras")
            import tf_keras

            return tf_keras.models.load_model(str(path), compile=False)
        import keras

        return keras.saving.load_model(str(path), compile=False, safe_mode=not unsafe_load)
    except LoadError:
        raise
    except Exception as exc:  # Keras raises many types for files it cannot rebuild
        raise LoadError(f"Keras could not load {path.name} ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})") from None


def _compare_outputs(original: Path, copy: Path, graph, applied: list[str], options: dict[str, Any], proof: Proof) -> None:
    from ..analysis.tolerances import compare, compute_dtype, tolerance
    from ..graph import dtype_policy
    from ..runtime.synthetic import integer_high, synthetic_inputs

    before = load_as_written(original, graph, bool(options.get("unsafe_load")))
    after = load_as_written(copy, graph, bool(options.get("unsafe_load")))
    if options.get("data"):
        from ..runtime.data import iter_batches

        batches = list(iter_batches(options["data"], before, SAMPLES, int(options.get("max_samples") or SAMPLES)))
        inputs = [np.concatenate(parts) for parts in zip(*batches)]
        proof.inputs = f"samples of {options['data']} (the first)"
    else:
        inputs = synthetic_inputs(before, SAMPLES, int(options.get("seed") or 0), integer_high(graph))
        proof.inputs = "seeded synthetic N(0, 1) samples"
    proof.samples = len(inputs[0])
    feed = inputs[0] if len(inputs) == 1 else inputs
    expected = _flat(before.predict(feed, batch_size=SAMPLES, verbose=0))
    actual = _flat(after.predict(feed, batch_size=SAMPLES, verbose=0))
    dtype = compute_dtype(dtype_policy(layer) for layer in graph)
    tol = tolerance(dtype)
    rows = [compare(f"output_{i}", "copy", "original", a, e, tol, dtype) for i, (a, e) in enumerate(zip(actual, expected))]
    proof.outputs_max_abs_delta = max(row.max_abs for row in rows)
    if applied and set(applied) <= set(SAME_OUTPUTS):
        proof.tolerance = tol.atol
        proof.figures["rtol"] = tol.rtol
        proof.figures["beyond_tolerance"] = sum(row.mismatched for row in rows)


def _flat(outputs) -> list[np.ndarray]:
    if isinstance(outputs, dict):
        return [np.asarray(outputs[key]) for key in sorted(outputs)]
    if isinstance(outputs, (list, tuple)):
        return [np.asarray(value) for value in outputs]
    return [np.asarray(outputs)]
