"""The statistics pass (BN301, BN303) on an ONNX model: ONNX Runtime, numpy, no TensorFlow.

One session runs over ``--data`` on a copy of the model, held in memory, in which the
input ``X`` of every top-level ``BatchNormalization`` node is also a graph output: one
``session.run`` per batch returns the model's outputs and every BN input, and the host
reduces each to per-channel count, mean and variance (channel axis 1, as ONNX BN
normalizes, NCHW; a rank-2 input is (N, C)) and merges them in float64 with
:class:`~bnaudit.analysis.moments.Moments`, exactly as the Keras pass
(:mod:`bnaudit.runtime.statistics`) does. The result is the same
:class:`~bnaudit.analysis.statistics.DataStatistics`, so BN301 and BN303 judge it
unchanged, and ``bnaudit stats --shard`` / ``merge`` / ``--stats`` work the same way.

What differs from the Keras pass, and why:

- The BN layers upstream of a measured one normalize with their moving statistics
  (``upstream="inference"``): an ONNX ``BatchNormalization`` is an inference operator
  (``training_mode=0``) and nothing here rewrites it. ``--upstream training`` is refused.
- BN302 (outputs on batch statistics vs. moving statistics) is not computed: the model
  would have to be rewritten with every BN in its batch-statistics form, and an ONNX file
  no longer says which BN layers were frozen in training (the engine skips BN302 with
  that reason).
- A BN inside an ``If``/``Loop``/``Scan`` body or a local function has no tensor in the
  main graph to expose; it is not measured (the pass lists it, BN301-BN303 say so).
- The data is fed in the model's declared input shape: a model converted by tf2onnx
  from Keras keeps its NHWC input (the Transpose to NCHW is inside the graph), so the
  same ``.npy`` feeds the ``.keras`` and the ``.onnx``. A graph that fixes its batch
  dimension is run in batches of that size (``--batch-size`` is overridden, a short
  last batch is dropped and counted in the notes).

The session runs on the first GPU execution provider ONNX Runtime has (CUDA, ROCm,
MIGraphX, DirectML: :func:`pass_providers`), with the CPU provider behind it for the
operators the GPU one lacks, as the Keras pass runs on the GPUs TensorFlow sees; on the
CPU provider alone where there is none. The notes name the providers the session really
uses (ONNX Runtime falls back to the CPU when a GPU provider cannot start). Graph
optimizations stay at their default (the extra outputs keep every BN input from being
fused away). External data is read from the model's folder only after the loader
checked every window of it.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Iterable

import numpy as np

from ..analysis.moments import Moments
from ..analysis.statistics import DataStatistics, FlatTotals
from ..loaders import LoadError
from ..printable import exception_line
from .data import InputSpec
from .onnx_inference import CPU_PROVIDER, _onnxruntime

#: GPU execution providers the pass may run on, in the order preferred. TensorRT is left
#: out: it builds an engine per input shape (a short last batch is a second build) and
#: the pass is one plain forward pass per batch, which the CUDA provider runs as well.
PASS_GPU_PROVIDERS = ("CUDAExecutionProvider", "ROCMExecutionProvider", "MIGraphXExecutionProvider", "DmlExecutionProvider")


def pass_providers(available: Iterable[str]) -> list[str]:
    """The execution providers of the statistics pass, given ONNX Runtime's
    ``get_available_providers()``: the first of :data:`PASS_GPU_PROVIDERS` present, then
    the CPU (ONNX Runtime places each operator on the first provider that has it); the
    CPU alone without a GPU provider."""
    present = set(available)
    gpu = next((p for p in PASS_GPU_PROVIDERS if p in present), None)
    return [gpu, CPU_PROVIDER] if gpu else [CPU_PROVIDER]

if TYPE_CHECKING:
    from ..graph import ModelGraph
    from ..progress import Progress

#: ONNX Runtime's input types -> numpy dtypes the data is converted to.
_ORT_TYPES = {
    "tensor(float)": np.float32,
    "tensor(double)": np.float64,
    "tensor(float16)": np.float16,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(uint8)": np.uint8,
    "tensor(int8)": np.int8,
    "tensor(bool)": np.bool_,
}


def channel_moments(x: np.ndarray) -> Moments:
    """Moments per channel of one BN input ``x`` of shape (N, C, ...) (channel axis 1).

    The shifted-data algorithm (Chan, Golub and LeVeque, 1983): the mean m0, summed in
    float64 and rounded to float32 (kept float64 for a float64 ``x``), is subtracted
    from ``x``; the sums S1, S2 of the deviations and of their squares are accumulated
    in float64, and mean = m0 + S1/n, variance = (S2 - S1^2/n)/n, the population
    variance BatchNormalization computes. With the pivot this close to the mean there is
    no cancellation; each deviation carries the rounding of one float32 subtraction
    (relative ~6e-8). It needs one float32 temporary of ``x``'s size, not a float64 copy.

    Returns ``C`` channels, each with count ``N x prod(spatial dims)``.
    """
    if x.ndim < 2:
        raise LoadError(f"a BatchNormalization input of shape {list(x.shape)}: ONNX wants (N, C, ...)")
    values = x.reshape(x.shape[0], x.shape[1], int(np.prod(x.shape[2:])))
    if values.dtype != np.float64:
        values = values.astype(np.float32, copy=False)  # float16 deviations would lose 3 digits
    count = values.shape[0] * values.shape[2]
    if count == 0:
        return Moments.of_batch(0.0, np.zeros(x.shape[1]), np.zeros(x.shape[1]))
    pivot = (values.sum(axis=(0, 2), dtype=np.float64) / count).astype(values.dtype)
    deviations = values - pivot[None, :, None]
    s1 = deviations.sum(axis=(0, 2), dtype=np.float64)
    s2 = np.square(deviations).sum(axis=(0, 2), dtype=np.float64)
    variance = np.maximum(s2 - s1 * s1 / count, 0.0) / count
    return Moments.of_batch(float(count), pivot.astype(np.float64) + s1 / count, variance)


@dataclass
class OnnxStatisticsPass:
    """An ONNX model ready to measure: the instrumented session and where each BN reads from.

    ``measured`` maps bnaudit's layer path of each top-level BN (the node's name, see
    :mod:`bnaudit.loaders.onnx`) to the tensor it normalizes; ``unreachable`` lists the
    BN paths inside subgraphs and functions, which are not measured.
    """

    path: Path
    graph: "ModelGraph"
    measured: dict[str, str] = field(init=False, default_factory=dict)
    unreachable: list[str] = field(init=False, default_factory=list)
    #: Samples of a short last batch left out because the graph fixes its batch size.
    dropped: int = field(init=False, default=0)

    def __post_init__(self) -> None:
        self.session = self._instrumented_session()
        self.inputs = self.session.get_inputs()
        self.fixed_batch = next((int(i.shape[0]) for i in self.inputs if i.shape and isinstance(i.shape[0], int) and i.shape[0] > 0), None)

    def input_specs(self) -> list[InputSpec]:
        """The graph's inputs as ``bnaudit.runtime.data`` checks the data against them
        (shape without the batch axis; a symbolic dimension is open)."""
        specs = []
        for value in self.inputs:
            dtype = _ORT_TYPES.get(value.type)
            if dtype is None or not value.shape:
                raise LoadError(f"ONNX input {value.name!r} is {value.type} {value.shape}: --data cannot feed it", "the statistics pass feeds numeric tensors with a batch axis")
            shape = tuple(d if isinstance(d, int) and d > 0 else None for d in value.shape[1:])
            specs.append(InputSpec(value.name, shape, np.dtype(dtype)))
        return specs

    def collect(
        self,
        batches: Iterable[list[np.ndarray]],
        *,
        batch_size: int,
        fingerprint: str,
        progress: "Progress | None" = None,
        shard: tuple[int, int] | None = None,
    ) -> DataStatistics:
        """Run the session over ``batches`` and return the statistics at every BN input.

        ``fingerprint``: the model's moving statistics as :func:`bnaudit.analysis.statistics.fingerprint`
        hashes them (what ``--stats`` is checked against).
        """
        started = time.perf_counter()
        result = DataStatistics(
            layers={}, batch_size=batch_size, upstream="inference", fingerprint=fingerprint,
            shards=[shard[0]] if shard else [1], shard_count=shard[1] if shard else 1,
        )
        names = [value.name for value in self.inputs]
        wanted = list(self.measured.values())
        layout: list[tuple[str, int]] = []
        channels = {bn.path: int(self.graph.weights.bn_arrays(bn).moving_mean.shape[0]) for bn in self.graph.batchnorms() if bn.path in self.measured}
        totals = FlatTotals()
        self.dropped = 0
        try:
            for batch in batches:
                if self.fixed_batch is not None and len(batch[0]) != self.fixed_batch:
                    self.dropped += len(batch[0])
                    continue
                found = self.session.run(wanted, dict(zip(names, batch)))
                per_layer = [channel_moments(x) for x in found]
                layout = [(path, m.channels) for path, m in zip(self.measured, per_layer)]
                for path, width in layout:
                    if width != channels[path]:
                        raise LoadError(f"BN node {path!r} normalizes {width} channels of its input but holds {channels[path]} moving statistics", "the model is inconsistent; export it again")
                flat = Moments(*(np.concatenate([getattr(m, part) for m in per_layer]) if per_layer else np.zeros(0) for part in ("count", "mean", "m2")))
                totals.add([flat], full_batch=len(batch[0]) == batch_size)
                result.samples += len(batch[0])
                result.batches += 1
                if progress:
                    progress.update(result.samples, result.batches)
        finally:
            if progress:
                progress.done()
        result.layers = totals.per_layer(layout, channels)
        result.seconds = round(time.perf_counter() - started, 3)
        return result

    def notes(self) -> list[str]:
        """What the reports should say about this pass (the providers it ran on,
        unmeasured BNs, dropped samples)."""
        found = [f"ONNX Runtime ran the statistics pass on {', '.join(self.session.get_providers())}"]
        if self.unreachable:
            shown = ", ".join(repr(p) for p in self.unreachable[:5]) + (", ..." if len(self.unreachable) > 5 else "")
            found.append(f"BN301-BN303 did not measure {len(self.unreachable)} BN node(s) inside ONNX subgraphs or functions ({shown}): their inputs are not tensors of the main graph")
        if self.dropped:
            found.append(f"the ONNX graph fixes its batch at {self.fixed_batch}: the last {self.dropped} sample(s) of --data, a short batch, were not measured")
        return found

    def _instrumented_session(self):
        """An ONNX Runtime session of the model with every top-level BN input as an output."""
        ort = _onnxruntime()
        import onnx

        model = onnx.load_model(str(self.path), load_external_data=False)
        if any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer):
            # every window was checked by the loader (inside the folder, within the file)
            onnx.external_data_helper.load_external_data_for_model(model, str(self.path.resolve().parent))
        # the loader names a layer by its node's name, or <op>_<index> without one; a name
        # given twice was made unique there, so such nodes are left unmeasured, not guessed
        named = [node.name or f"{node.op_type}_{index}" for index, node in enumerate(model.graph.node)]
        given = Counter(named)
        top_level = {name: node for name, node in zip(named, model.graph.node) if node.op_type == "BatchNormalization" and given[name] == 1}
        for bn in self.graph.batchnorms():
            node = top_level.get(bn.path)
            if node is None or bn.container or not node.input or not node.input[0]:
                self.unreachable.append(bn.path)
            else:
                self.measured[bn.path] = node.input[0]
        exposed = {o.name for o in model.graph.output}
        for tensor in dict.fromkeys(self.measured.values()):
            if tensor not in exposed:
                model.graph.output.append(onnx.ValueInfoProto(name=tensor))  # ONNX Runtime infers its type
        options = ort.SessionOptions()
        options.log_severity_level = 3
        try:
            return ort.InferenceSession(model.SerializeToString(), sess_options=options, providers=pass_providers(ort.get_available_providers()))
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph/NotImplemented types
            raise LoadError(
                f"ONNX Runtime cannot load the model with its BN inputs exposed ({exception_line(exc)})",
                "the static checks still ran; the statistics pass needs a model ONNX Runtime can execute",
            ) from None
