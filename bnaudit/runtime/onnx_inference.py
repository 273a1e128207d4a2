"""BN401, BN402 and BN404 on an ONNX file, re-run with ONNX Runtime instead of Keras.

The counterpart of :mod:`bnaudit.runtime.inference` for ``.onnx`` (same
:class:`~bnaudit.runtime.inference.InferenceResults`, same Polygraphy-style
:func:`~bnaudit.analysis.tolerances.compare`, same tolerances), with ONNX Runtime's
execution providers in the place of TensorFlow's devices:

the passes of :mod:`bnaudit.runtime.single_path` (BN401 across the execution providers
present, CPU first: CUDA, TensorRT, ... where installed; BN402; BN404). ONNX has one call
path, so BN403 (``model(x)`` vs ``predict``) does not apply. Inputs
are seeded N(0, 1) floats shaped by the graph's declared inputs (the first dimension is
the batch; another open dimension gets :data:`~bnaudit.runtime.synthetic.OPEN_DIM`).
The session is created from the file on disk with graph optimizations left at ONNX
Runtime's default; loading never runs anything but the model's operators, and an
operator from a custom domain (BN501) is refused by ONNX Runtime itself, since no
custom-operator library is registered.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..loaders import LoadError
from .devices import NO_GPU, DevicePlan
from ..analysis.tolerances import tolerance
from .inference import DEFAULT_BATCH_SIZE, DEFAULT_SAMPLES, InferenceResults, _Timer
from .single_path import in_batches, single_path_checks
from .synthetic import OPEN_DIM

if TYPE_CHECKING:
    from . import Runtime

CPU_PROVIDER = "CPUExecutionProvider"
#: Providers that send the model elsewhere instead of running it on a device here.
REMOTE_PROVIDERS = frozenset({"AzureExecutionProvider"})
GPU_PROVIDERS = frozenset({"CUDAExecutionProvider", "TensorrtExecutionProvider", "ROCMExecutionProvider", "MIGraphXExecutionProvider", "DmlExecutionProvider"})
#: The one call path of an ONNX model, as the BN402/BN404 rows name it.
RUN = "session.run"
#: ONNX tensor element types the synthetic inputs can fill.
_FLOAT_TYPES = {"tensor(float)": np.float32, "tensor(double)": np.float64, "tensor(float16)": np.float16}


def _onnxruntime():
    try:
        import onnxruntime
    except ImportError:
        raise LoadError(
            "re-running an ONNX model needs onnxruntime, which is not installed",
            'pip install "bnaudit[onnx]"',
        ) from None
    return onnxruntime


def run_inference_checks(runtime: "Runtime") -> InferenceResults:
    """The passes of the module docstring on ``runtime.path``; rows for BN401, BN402, BN404."""
    ort = _onnxruntime()
    options = runtime.options.runtime
    seconds: dict[str, float] = {}
    timer = _Timer(seconds)
    providers = [p for p in ort.get_available_providers() if p != CPU_PROVIDER and p not in REMOTE_PROVIDERS]
    sessions = {}
    with timer("load model"):
        for provider in [CPU_PROVIDER, *providers]:
            sessions[provider] = _session(ort, runtime.path, provider)
    plan = DevicePlan(reference=CPU_PROVIDER, compared=providers, gpus=[p for p in providers if p in GPU_PROVIDERS])
    batch_size = options.batch_size or DEFAULT_BATCH_SIZE
    samples = options.max_samples or DEFAULT_SAMPLES
    seed = options.inference.seed
    reference_session = sessions[CPU_PROVIDER]
    inputs, fixed_batch = _synthetic_inputs(reference_session, samples, seed)
    if fixed_batch is not None:
        batch_size = fixed_batch
    names = [o.name for o in reference_session.get_outputs()]
    results = InferenceResults(
        plan=plan,
        reference=CPU_PROVIDER,
        inputs={"source": "synthetic", "seed": seed, "distribution": "N(0, 1) floats", "samples": len(inputs[0]), "batch_size": batch_size, "shapes": [list(a.shape) for a in inputs]},
        compute_dtype="float32",
        tolerance=tolerance("float32", options.inference.atol, options.inference.rtol),
        seconds=seconds,
    )

    def run(provider, arrays, batch) -> list[np.ndarray]:
        session = sessions[provider]
        feeds = [i.name for i in session.get_inputs()]
        return in_batches(lambda part: session.run(None, dict(zip(feeds, part))), arrays, batch)

    single_path_checks(results, run, names, inputs, batch_size, RUN)
    if options.inference.devices or options.inference.reference == "float64":
        results.notes.append("--devices and --reference float64 apply to Keras models: ONNX re-runs compare every execution provider with the CPU")
    ran = ", ".join(plan.all)
    results.notes.insert(
        0,
        f"ONNX Runtime re-runs on {ran}" + ("" if providers else f" only; {NO_GPU}: the cross-provider comparison (BN401) compared nothing"),
    )
    return results


def _session(ort, path: Path, provider: str):
    session_options = ort.SessionOptions()
    session_options.log_severity_level = 3
    try:
        return ort.InferenceSession(str(path), sess_options=session_options, providers=[provider])
    except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph/NotImplemented types
        raise LoadError(
            f"ONNX Runtime cannot load the model on {provider} ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})",
            "the static checks still ran; the re-runs need a model ONNX Runtime can execute",
        ) from None


def _synthetic_inputs(session, samples: int, seed: int) -> tuple[list[np.ndarray], int | None]:
    """Seeded N(0, 1) inputs; the batch size when the graph fixes it, else None."""
    rng = np.random.default_rng(seed)
    arrays: list[np.ndarray] = []
    fixed: int | None = None
    for spec in session.get_inputs():
        dtype = _FLOAT_TYPES.get(spec.type)
        if dtype is None or not spec.shape:
            raise LoadError(f"ONNX input {spec.name!r} is {spec.type} {spec.shape}: no synthetic values for it", "the re-runs need floating-point inputs")
        batch, *rest = spec.shape
        if isinstance(batch, int) and batch > 0:
            fixed = batch
        shape: list[Any] = [samples, *(d if isinstance(d, int) and d > 0 else OPEN_DIM for d in rest)]
        arrays.append(rng.standard_normal(shape).astype(dtype))
    if fixed is not None:
        arrays = [a[: max(fixed, (len(a) // fixed) * fixed)] for a in arrays]
    return arrays, fixed
