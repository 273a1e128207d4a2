"""Re-run a saved model's inference on every device and call path, and measure the differences.

One :func:`run_inference_checks` per model serves the four rules BN401-BN404 (the rules
share it through ``Runtime.memo("inference")``). With N samples in batches of B, and
the first batch of F = min(B, N) samples, it runs, in this order:

1. ``model.predict`` of all N samples on each device, the reference CPU first  (BN401)
2. with ``--reference float64``: a float64 copy of the model, on the reference CPU (BN401)
3. ``model.predict`` of the first batch again, on the reference CPU              (BN404)
4. ``model.predict`` of the subset, each sample in a batch of its own             (BN402)
5. ``model(x)`` of the first batch, twice                                          (BN403, BN404)
6. ``model(x)`` of each subset sample alone                                        (BN402)

The subset is :data:`SUBSET_SIZE` samples evenly spaced over the first batch (its first
and last included), so a sample alone is compared with the very batch it sat in.
Beyond one ``predict`` per device this costs about three batches and ``2 x SUBSET_SIZE``
single samples. Direct calls run last, and the model's non-trainable state (moving
statistics, dropout seeds) is restored after them: a BatchNormalization called with a
baked-in ``training=True`` updates its moving statistics on every ``model(x)``, and other
rules share this loaded model.

How two runs are compared, and the default tolerances, is in :mod:`bnaudit.analysis.tolerances`.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from ..analysis.tolerances import Comparison, Tolerance, compare, compute_dtype, tolerance
from ..graph import dtype_policy
from ..measurements import CALL_PATH_CHECKS, CallPathComparison, DeviceComparison, InferenceSetup, Measured
from . import import_tensorflow
from .data import DEFAULT_BATCH_SIZE
from .devices import DevicePlan, plan_devices
from .synthetic import integer_high, synthetic_inputs

if TYPE_CHECKING:
    from . import Runtime

#: Samples run (synthetic or the first of ``--data``) unless ``max_samples`` says otherwise.
DEFAULT_SAMPLES = 128
#: Samples of the first batch that are also run alone (BN402).
SUBSET_SIZE = 4
#: The two call paths, as findings and tables name them.
PREDICT = "model.predict"
CALL = "model(x)"


@dataclass
class InferenceResults:
    """Every comparison the re-runs made, grouped by the rule that judges them."""

    plan: DevicePlan
    #: The run every device is compared with: the reference CPU, or its float64 copy.
    reference: str
    inputs: dict[str, Any]
    compute_dtype: str
    tolerance: Tolerance
    devices: list[Comparison] = field(default_factory=list)  # BN401
    batch_dependence: list[Comparison] = field(default_factory=list)  # BN402
    call_vs_predict: list[Comparison] = field(default_factory=list)  # BN403
    repeatability: list[Comparison] = field(default_factory=list)  # BN404
    #: Paths whose repeat differed: their batch-dependence rows say nothing (noise).
    unrepeatable_paths: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def measured(self) -> list[Measured]:
        """What the reports show: how the re-runs were made, then every comparison row."""
        setup = InferenceSetup(
            devices=list(self.plan.all),
            reference=self.reference,
            gpu=self.plan.gpu_status,
            tf32=self.plan.tf32,
            inputs=self.inputs,
            compute_dtype=self.compute_dtype,
            tolerance=vars(self.tolerance),
            seconds=self.seconds,
        )
        rows: list[Measured] = [DeviceComparison(row) for row in self.devices]
        for check in CALL_PATH_CHECKS:
            rows += [CallPathComparison(check, row) for row in getattr(self, check)]
        return [setup, *rows]


def run_inference_checks(runtime: "Runtime") -> InferenceResults:
    """Run every pass of the module docstring on ``runtime.model`` and compare the outputs."""
    tf = import_tensorflow()
    options = runtime.options.runtime
    seconds: dict[str, float] = {}
    with _Timer(seconds)("load model"):  # ~0 when another rule loaded it first
        model = runtime.model
    plan = plan_devices(tf, options.inference.devices, options.inference.allow_tf32)
    batch_size = options.batch_size or DEFAULT_BATCH_SIZE
    inputs, described = _inputs(runtime, batch_size)
    dtype = compute_dtype(dtype_policy(layer) for layer in runtime.graph)
    float64 = options.inference.reference == "float64"
    results = InferenceResults(
        plan=plan,
        reference=f"{plan.reference} (float64)" if float64 else plan.reference,
        inputs=described,
        compute_dtype=dtype,
        tolerance=tolerance(dtype, options.inference.atol, options.inference.rtol),
        seconds=seconds,
    )
    passes = _Passes(tf, model, _output_names(model, runtime.graph), plan, results, batch_size)
    reference = float64_copy(model, safe_mode=not options.unsafe_load) if float64 else None
    base = passes.on_devices(inputs, reference)
    first = min(batch_size, len(inputs[0]))
    subset = sorted({int(round(i)) for i in np.linspace(0, first - 1, SUBSET_SIZE)}) if first > 1 else []
    if not subset:
        results.notes.append("batch dependence (BN402) was not checked: it needs at least 2 samples")
    passes.predict_path(inputs, base, first, subset)
    passes.call_path(inputs, base, first, subset)
    results.notes.insert(0, _devices_note(plan, results.reference))
    return results


class _Passes:
    """The runs of one model and the comparisons they feed (see the module docstring)."""

    def __init__(self, tf, model, names: list[str], plan: DevicePlan, results: InferenceResults, batch_size: int) -> None:
        self.tf, self.model, self.names, self.plan = tf, model, names, plan
        self.results, self.batch_size = results, batch_size
        self.timer = _Timer(results.seconds)

    def on_devices(self, inputs: list[np.ndarray], float64_model=None) -> list[np.ndarray]:
        """``predict`` on every device, compared with the reference; returns the reference CPU's outputs."""
        outputs = {}
        for device in self.plan.all:
            with self.timer(f"predict {device}"):
                outputs[device] = self._predict(self.model, device, inputs, self.batch_size)
        if float64_model is not None:
            with self.timer("predict float64"):
                reference = self._predict(float64_model, self.plan.reference, inputs, self.batch_size)
            runs = self.plan.all
        else:
            reference, runs = outputs[self.plan.reference], self.plan.compared
        for device in runs:
            self.results.devices += self._compare(PREDICT, device, self.results.reference, outputs[device], reference)
        return outputs[self.plan.reference]

    def predict_path(self, inputs, base, first: int, subset: list[int]) -> None:
        """The first batch again (BN404) and the subset one sample per batch (BN402)."""
        with self.timer("predict repeat"):
            again = self._predict(self.model, self.plan.reference, [x[:first] for x in inputs], self.batch_size)
        self._check_repeat(PREDICT, again, [o[:first] for o in base])
        if subset:
            with self.timer("predict alone"):
                alone = self._predict(self.model, self.plan.reference, [x[subset] for x in inputs], 1)
            self.results.batch_dependence += self._compare(
                PREDICT, f"{PREDICT}, each sample alone", f"{PREDICT}, in a batch of {first}", alone, [o[subset] for o in base], subset
            )

    def call_path(self, inputs, base, first: int, subset: list[int]) -> None:
        """``model(x)`` on the first batch twice (BN403, BN404) and on each subset sample (BN402)."""
        head = [x[:first] for x in inputs]
        with _state_restored(self.model), self.timer("call"):
            called = self._call(head)
            called_again = self._call(head)
            alone = [self._call([x[i : i + 1] for x in inputs]) for i in subset]
        self.results.call_vs_predict += self._compare("", CALL, PREDICT, called, [o[:first] for o in base])
        self._check_repeat(CALL, called_again, called)
        if subset:
            stacked = [np.concatenate(parts) for parts in zip(*alone)]
            self.results.batch_dependence += self._compare(
                CALL, f"{CALL}, each sample alone", f"{CALL}, in a batch of {first}", stacked, [o[subset] for o in called], subset
            )

    def _check_repeat(self, path: str, again, first_run) -> None:
        rows = self._compare(path, f"{path} on {self.plan.reference}, repeated", f"{path}, first run", again, first_run)
        self.results.repeatability += rows
        if not all(row.passed for row in rows):
            self.results.unrepeatable_paths.append(path)

    def _compare(self, path, run, reference, actual, expected, samples=None) -> list[Comparison]:
        results = self.results
        rows = [
            compare(name, run, reference, a, e, results.tolerance, results.compute_dtype, samples)
            for name, a, e in zip(self.names, actual, expected)
        ]
        for row in rows:
            row.path = path
        return rows

    def _predict(self, model, device: str, inputs: list[np.ndarray], batch_size: int) -> list[np.ndarray]:
        with self.tf.device(f"/{device}"):
            return flat_outputs(model.predict(_feed(inputs), batch_size=batch_size, verbose=0))

    def _call(self, inputs: list[np.ndarray]) -> list[np.ndarray]:
        with self.tf.device(f"/{self.plan.reference}"):
            return flat_outputs(self.model(_feed(inputs)))


def float64_copy(model, safe_mode: bool = True):
    """The model rebuilt with every layer computing in float64, holding the same weights.

    Layers are rebuilt from their serialised form, in the same safe mode the model was
    loaded in (a Lambda needs ``--unsafe-load`` here too), by the Keras the model belongs to.
    """
    from . import keras_of

    keras = keras_of(model)

    def to_float64(layer):
        serialized = keras.saving.serialize_keras_object(layer)
        if "dtype" in serialized["config"]:
            serialized["config"]["dtype"] = "float64"
        own_class = {type(layer).__name__: type(layer)}  # custom classes resolve without a registry
        return keras.saving.deserialize_keras_object(serialized, custom_objects=own_class, safe_mode=safe_mode)

    # Keras 3 clones nested models layer by layer; tf-keras's clone_model has no such option.
    nested = {"recursive": True} if keras.__name__ == "keras" else {}
    copy = keras.models.clone_model(model, clone_function=to_float64, **nested)
    copy.set_weights(model.get_weights())
    return copy


def _inputs(runtime: "Runtime", batch_size: int) -> tuple[list[np.ndarray], dict[str, Any]]:
    """The samples to run: from ``--data`` (through ``data.iter_batches``) or synthetic."""
    options = runtime.options
    limit = options.runtime.max_samples or DEFAULT_SAMPLES
    if options.data:
        from .data import data_order, iter_batches

        batches = iter_batches(options.data, runtime.model, batch_size, limit, **data_order(options.runtime))
        arrays = [np.concatenate(parts) for parts in zip(*list(batches))]
        described = {"source": "data", "data": str(options.data), "order": batches.order}
    else:
        seed = options.runtime.inference.seed
        arrays = synthetic_inputs(runtime.model, limit, seed, integer_high(runtime.graph))
        described = {"source": "synthetic", "seed": seed, "distribution": "N(0, 1) floats, uniform integers"}
    described.update(samples=len(arrays[0]), batch_size=batch_size, shapes=[list(a.shape) for a in arrays])
    return arrays, described


def _feed(arrays: list[np.ndarray]):
    return arrays[0] if len(arrays) == 1 else list(arrays)


def flat_outputs(outputs) -> list[np.ndarray]:
    """A model's outputs (tensor, list or dict) as numpy arrays, in Keras's flattening order."""
    import keras

    return [np.asarray(keras.ops.convert_to_numpy(o)) for o in keras.tree.flatten(outputs)]


@contextmanager
def _state_restored(model):
    """Undo what direct calls change: moving statistics under a baked-in training=True, seeds."""
    saved = [(variable, np.array(variable.numpy())) for variable in model.non_trainable_variables]
    try:
        yield
    finally:
        for variable, value in saved:
            variable.assign(value)


def _output_names(model, graph) -> list[str]:
    """Output layer paths as the static rules name them, else Keras's output names."""
    count = len(model.outputs)
    if len(graph.outputs) == count:
        return list(graph.outputs)
    names = list(getattr(model, "output_names", None) or [])
    return names if len(names) == count else [f"output_{i}" for i in range(count)]


def _devices_note(plan: DevicePlan, reference: str) -> str:
    ran = ", ".join(plan.all)
    if plan.gpus:
        return f"inference re-runs on {ran}; compared with {reference}; {plan.gpu_status}"
    if plan.compared:
        return f"inference re-runs on {ran}; compared with {reference}; no GPU found: the CPU-GPU comparison was skipped"
    return f"inference re-runs on {ran} only; no GPU found: the cross-device comparison (BN401) compared nothing"


class _Timer:
    """``with timer("pass"):`` adds the pass's wall time, in seconds, to a dict."""

    def __init__(self, seconds: dict[str, float]) -> None:
        self.seconds = seconds

    @contextmanager
    def __call__(self, name: str):
        started = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = round(self.seconds.get(name, 0.0) + time.perf_counter() - started, 4)
