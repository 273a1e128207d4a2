"""BN401, BN402 and BN404 on a SavedModel without Keras configs, through its serving signature.

Keras 3 ``export()`` and ``tf.saved_model.save`` keep no layer configs, only functions:
the model is what its serving signature computes, the function TF Serving calls. That
signature (``serving_default``, or the only one there is) is run with TensorFlow in
the passes of :mod:`bnaudit.runtime.single_path`, on seeded synthetic inputs built
from the signature's input specs (:func:`~bnaudit.runtime.synthetic.synthetic_arrays`):
BN401 on each TensorFlow device of the plan (``--devices``, logical CPUs, GPUs),
compared with the reference CPU; BN402, a few samples of the first batch each alone
against their rows in the batch (a batch-norm op fed batch moments fails it); BN404, the
first batch again. A signature is one call path, so BN403 does not apply, and it
exposes no BN layer's input, so BN301-BN303 cannot be measured (the engine says so).

Loading a SavedModel restores its objects and can run its functions, so before
``tf.saved_model.load`` the functions it can run are searched for ops that reach
beyond the computation (files, Python, printing: :data:`bnaudit.loaders.serving.UNSAFE_OPS`);
one found refuses the model unless ``--unsafe-load``. The model is loaded only here, in
the child process the engine audits it in.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ..analysis.tolerances import tolerance
from ..loaders import LoadError
from ..loaders.serving import unsafe_ops
from . import _first_line, import_tensorflow
from .data import InputSpec
from .devices import plan_devices
from .inference import DEFAULT_BATCH_SIZE, DEFAULT_SAMPLES, InferenceResults, _Timer
from .single_path import in_batches, single_path_checks
from .synthetic import synthetic_arrays

if TYPE_CHECKING:
    from . import Runtime

#: The signature TF Serving calls when a request names none.
SERVING_DEFAULT = "serving_default"


def run_inference_checks(runtime: "Runtime") -> InferenceResults:
    """The passes of the module docstring on the SavedModel at ``runtime.path``.

    Raises :class:`LoadError` when the model holds an unsafe op (without
    ``--unsafe-load``), cannot be loaded, has no signature to run, or a signature input
    without synthetic values.
    """
    tf = import_tensorflow()
    options = runtime.options.runtime
    risky = unsafe_ops(runtime.path)
    if risky and not options.unsafe_load:
        raise LoadError(
            f"refusing to run a SavedModel whose functions reach beyond the computation: {', '.join(risky[:3])}",
            "only for models you trust: pass --unsafe-load",
        )
    seconds: dict[str, float] = {}
    with _Timer(seconds)("load model"):
        try:
            loaded = tf.saved_model.load(str(runtime.path))
        except Exception as exc:  # TensorFlow raises many types for SavedModels it cannot restore
            raise LoadError(f"TensorFlow could not load the SavedModel ({_first_line(exc)})", "the static checks still ran") from None
    name, function = _signature(loaded)
    specs, fixed_batch = _input_specs(function)
    names = sorted(function.structured_outputs)
    samples = options.max_samples or DEFAULT_SAMPLES
    batch_size = fixed_batch or options.batch_size or DEFAULT_BATCH_SIZE
    seed = options.inference.seed
    arrays = synthetic_arrays(specs, samples, seed)
    if fixed_batch:  # whole batches only: at least one
        arrays = [a[: max(fixed_batch, len(a) // fixed_batch * fixed_batch)] for a in arrays]
    dtype = "float16" if any(s.dtype == np.float16 for s in specs) else "float32"
    plan = plan_devices(tf, options.inference.devices, options.inference.allow_tf32)
    results = InferenceResults(
        plan=plan,
        reference=plan.reference,
        inputs={
            "source": "synthetic", "seed": seed, "distribution": "N(0, 1) floats, uniform integers", "signature": name,
            "samples": len(arrays[0]), "batch_size": batch_size, "shapes": [list(a.shape) for a in arrays],
        },
        compute_dtype=dtype,
        tolerance=tolerance(dtype, options.inference.atol, options.inference.rtol),
        seconds=seconds,
    )

    def run(device: str, inputs: list[np.ndarray], batch: int) -> list[np.ndarray]:
        def call(part: list[np.ndarray]) -> list[np.ndarray]:
            with tf.device(f"/{device}"):
                outputs = function(**{spec.name: tf.constant(a) for spec, a in zip(specs, part)})
            return [np.asarray(outputs[n]) for n in names]

        return in_batches(call, inputs, batch)

    single_path_checks(results, run, names, arrays, batch_size, f"signature {name!r}")
    if options.inference.reference == "float64":
        results.notes.append("--reference float64 applies to Keras models: a serving signature runs in the dtypes it was saved with")
    if runtime.options.data:
        results.notes.append("the serving signature was re-run on synthetic inputs; --data feeds Keras models and ONNX statistics")
    ran = ", ".join(plan.all)
    results.notes.insert(
        0,
        f"serving signature {name!r} re-run on {ran}"
        + (f"; compared with {plan.reference}" if plan.compared else f" only; {plan.gpu_status}: the cross-device comparison (BN401) compared nothing"),
    )
    return results


def _signature(loaded):
    """(name, concrete function) of the signature to run: ``serving_default``, else the only one."""
    signatures = dict(getattr(loaded, "signatures", {}) or {})
    if SERVING_DEFAULT in signatures:
        return SERVING_DEFAULT, signatures[SERVING_DEFAULT]
    if len(signatures) == 1:
        return next(iter(signatures.items()))
    listed = ", ".join(sorted(signatures)) or "none"
    raise LoadError(f"the SavedModel has no {SERVING_DEFAULT!r} signature to re-run (signatures: {listed})", "export it with a serving_default signature")


def _input_specs(function) -> tuple[list[InputSpec], int | None]:
    """The signature's inputs as :class:`InputSpec` (keyword order), and the batch size
    its specs fix (None when the first dimension is open)."""
    _args, kwargs = function.structured_input_signature
    specs, fixed = [], None
    for key, spec in kwargs.items():
        shape = spec.shape.as_list() if spec.shape.rank is not None else None
        if not shape:
            raise LoadError(f"signature input {key!r} has no batch dimension ({spec})", "the re-runs need batched inputs")
        if shape[0] is not None:
            fixed = shape[0]
        specs.append(InputSpec(str(key), tuple(shape[1:]), np.dtype(spec.dtype.as_numpy_dtype)))
    return specs, fixed

