"""One forward pass over the data that measures the input of every BatchNormalization layer.

Each BN layer's ``call`` is wrapped for the duration of the pass (and restored after):
the wrapper reduces the layer's input to per-channel count, mean and variance on the
device, and returns those vectors from the compiled step next to the model outputs.
So a single ``tf.function`` call per batch measures every BN layer, nested models and
shared layers included, and only per-channel vectors leave the device; the host merges
them in float64 (:mod:`bnaudit.analysis.moments`), so memory does not grow with the data.

The wrapper also chooses how each BN normalizes: ``"inference"`` (moving statistics,
what deployment sees) or ``"training"`` (the batch's own statistics, computed here
rather than by Keras so that the moving statistics are never updated). The model is
always called with ``training=False``, so Dropout and friends stay off either way.
With ``compare_modes`` the step calls the model a second time in the other mode, on the
same batch, for BN302.

With more than one device (several GPUs, or ``BNAUDIT_LOGICAL_CPUS``) the step runs
under a ``tf.distribute.MirroredStrategy``: each replica measures its slice of the
batch and the per-replica moments are merged like any others. In training mode the
replicas normalize with the statistics of the whole batch (an all-reduce, as
synchronized BN does), so results do not depend on the number of devices.
On a ``TF_CONFIG`` cluster each task runs this pass over its share of the batches and
the moments are all-reduced across the tasks at the end (:mod:`bnaudit.runtime.cluster`).

What the pass returns, how shards merge and the file they are saved in are
TensorFlow-free and live in :mod:`bnaudit.analysis`.
"""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING, Any, Callable, Iterable

import numpy as np

from ..analysis.cka import ModeComparison
from ..analysis.moments import Moments
from ..analysis.statistics import UPSTREAM_MODES, DataStatistics, FlatTotals, fingerprint
from . import import_tensorflow
from .cluster import all_reduce

if TYPE_CHECKING:
    from ..progress import Progress
    from .cluster import Cluster


#: Keras 3 and tf-keras BN classes (tf-keras's share ``BatchNormalizationBase``).
_BATCHNORM_BASES = frozenset({"BatchNormalization", "BatchNormalizationBase", "SyncBatchNormalization"})
#: Where Keras 2 and 3 wrappers keep the layers they wrap (see ``bnaudit.graph.WRAPPED_KEYS``).
_WRAPPED_ATTRIBUTES = ("layer", "forward_layer", "backward_layer", "cell")


def batchnorm_layers(model) -> dict[str, Any]:
    """Every BatchNormalization in ``model`` (Keras 3 or tf-keras) by bnaudit layer path
    (``base/bn_1``, ``time_distributed/bn``): nested models and wrapped layers included."""
    found: dict[str, Any] = {}

    def walk(layer, path: str) -> None:
        if any(cls.__name__ in _BATCHNORM_BASES for cls in type(layer).__mro__):
            found[path] = layer
            return
        children = list(getattr(layer, "layers", None) or [])
        if not children and type(layer).__name__ == "Bidirectional":
            children = [layer.forward_layer, layer.backward_layer]
        elif not children:
            children = [getattr(layer, a) for a in _WRAPPED_ATTRIBUTES if hasattr(getattr(layer, a, None), "weights")]
        for child in children:
            walk(child, f"{path}/{child.name}" if path else child.name)

    for layer in model.layers:
        walk(layer, layer.name)
    return found


def channel_axis_of(layer) -> int:
    """The axis a live BN layer normalizes, for an input of the layer's own rank.

    tf-keras keeps ``axis`` as a list, and shifts it by one when ``virtual_batch_size``
    adds its dimension in ``build``; the layer's input has no such dimension."""
    axis = layer.axis[0] if isinstance(layer.axis, (list, tuple)) else layer.axis
    return axis - 1 if getattr(layer, "virtual_batch_size", None) and axis > 0 else axis


def model_fingerprint(model) -> str:
    return fingerprint(
        (path, np.ravel(layer.moving_mean.numpy()), np.ravel(layer.moving_variance.numpy()))
        for path, layer in batchnorm_layers(model).items()
    )


class _Instrument:
    """Wraps every BN layer's ``call`` while the pass runs; restores them on exit.

    The wrappers read what to do from a thread-local (MirroredStrategy traces each
    replica in its own thread): the mode to normalize in, and where to append the
    input's moments (None: do not measure).
    """

    def __init__(self, layers: dict[str, Any], frozen_use_batch: bool = False) -> None:
        self.layers = layers
        self.frozen_use_batch = frozen_use_batch
        self.state = threading.local()

    def __enter__(self) -> "_Instrument":
        for path, layer in self.layers.items():
            layer.call = self._wrap(path, layer, layer.call)
        return self

    def __exit__(self, *exc: Any) -> None:
        for layer in self.layers.values():
            del layer.call  # the class's own method shows through again

    def run(self, model, inputs, mode: str, measure: bool):
        """Call the model with every BN in ``mode``; returns outputs and [(path, count, mean, variance)]."""
        self.state.mode = mode
        self.state.sink = [] if measure else None
        try:
            outputs = model(inputs[0] if len(inputs) == 1 else inputs, training=False)
            return outputs, self.state.sink
        finally:
            self.state.mode = self.state.sink = None

    def _wrap(self, path: str, layer, original: Callable):
        tf = import_tensorflow()
        state = self.state

        def call(inputs, training=None, mask=None):
            # A frozen BN stays on moving statistics in training mode, as in fit() of Keras 3
            # and tf.keras on TensorFlow 2 (``frozen_use_batch`` for writers that normalize
            # it with batch statistics); a call from outside ``run`` gets the layer's own behaviour.
            # tf-keras's BN takes no ``mask``: it is passed on only when there is one.
            masked = {} if mask is None else {"mask": mask}
            sink = getattr(state, "sink", None)
            train = getattr(state, "mode", None) == "training" and (layer.trainable or self.frozen_use_batch)
            if getattr(state, "mode", None) is None:
                return original(inputs, training=training, **masked)
            if sink is None and not train:
                return original(inputs, training=False, **masked)
            x = tf.cast(inputs, tf.float32)
            axis = channel_axis_of(layer) % len(x.shape)
            count, mean, variance = channel_moments(x, axis)
            if sink is not None:
                sink.append((path, count, mean, variance))
            if not train:
                return original(inputs, training=False, **masked)
            # Statistics of the whole batch (whatever the replicas), applied here rather
            # than by Keras, which would also update the moving statistics.
            mean, variance = whole_batch_moments(count, mean, variance)
            outputs = normalize(x, axis, mean, variance, layer.gamma, layer.beta, layer.epsilon)
            return tf.cast(outputs, layer.compute_dtype)

        return call


#: ``data_format`` of the fused batch-norm kernel for an input rank and channel axis.
_FUSED_FORMATS = {(4, 3): "NHWC", (4, 1): "NCHW", (5, 4): "NDHWC", (5, 1): "NCDHW"}
#: cuDNN's ``CUDNN_BN_MIN_EPSILON`` (1e-5) with TensorFlow's margin: the smallest epsilon a
#: GPU's fused batch-norm kernel is documented to take.
_FUSED_MIN_EPSILON = 1.001e-5


def normalize(x, axis: int, mean, variance, scale, offset, epsilon: float):
    """``x`` (float32) normalized with the given per-channel ``mean`` and ``variance``
    (float64 vectors) along ``axis``, then scaled and shifted (``scale``/``offset`` may be
    None: a BN with ``scale=False``/``center=False``); Ioffe & Szegedy's transform.

    A rank-4 or rank-5 input with its channels first or last goes through TensorFlow's
    fused batch-norm kernel in inference form (``FusedBatchNormV3``, ``is_training=False``,
    fed the given moments): one read and one write of ``x``, where
    ``tf.nn.batch_normalization`` takes a multiply and an add over it (two of each).
    Every other shape takes ``tf.nn.batch_normalization``, and so does an ``epsilon``
    under :data:`_FUSED_MIN_EPSILON`, so that no device's kernel can differ in it.
    """
    tf = import_tensorflow()
    channels = x.shape[axis]
    mean, variance = tf.cast(mean, tf.float32), tf.cast(variance, tf.float32)
    data_format = _FUSED_FORMATS.get((len(x.shape), axis))
    if data_format is not None and channels is not None and epsilon >= _FUSED_MIN_EPSILON:
        scale = tf.ones([channels], tf.float32) if scale is None else tf.cast(scale, tf.float32)
        offset = tf.zeros([channels], tf.float32) if offset is None else tf.cast(offset, tf.float32)
        outputs, *_ = tf.compat.v1.nn.fused_batch_norm(
            x, scale, offset, mean, variance, epsilon=epsilon, data_format=data_format, is_training=False
        )
        return outputs
    shape = [1] * len(x.shape)
    shape[axis] = -1

    def per_channel(vector):  # vectors broadcast along the last axis as they are: no reshape to trace
        if vector is None:
            return None
        vector = tf.cast(vector, tf.float32)
        return vector if axis == len(x.shape) - 1 else tf.reshape(vector, shape)

    return tf.nn.batch_normalization(x, per_channel(mean), per_channel(variance), per_channel(offset), per_channel(scale), epsilon)


def channel_moments(x, axis: int):
    """Count (scalar), mean and variance (float64 vectors) of ``x`` per channel along ``axis``.

    Reads ``x`` twice and writes nothing: per sample and channel, the sum and the
    Euclidean norm over the positions (float32 reductions), then in float64 the sums
    over the samples of the sums and of the squared norms, from which
    ``mean = sum / n`` and ``variance = sum of squares / n - mean^2``. That is Chan et
    al.'s merge of the per-sample moments written out (the within- and between-sample
    terms add up to the same sums); its cancellation is in float64 (a relative error of
    1e-16 x mean^2 / variance). The one float32 cancellation left is within a sample:
    a relative error of about 1e-7 x (1 + mean^2 / variance) of that sample's values
    (~1e-6 measured on MobileNetV2), where the exact two-pass alternative costs one
    more read and a write of every BN input (~15% of a MobileNetV2 forward pass on
    CPU). A BN input of rank 2 (after a Dense layer) has one position per sample and is
    exact. Every operation here is a node per BN to trace and optimize, the pass's
    fixed cost next to ``model.predict``'s (docs/fix.md, "Speed and memory"): hence
    as few as the sums need.
    """
    tf = import_tensorflow()
    if axis != len(x.shape) - 1:
        x = tf.experimental.numpy.moveaxis(x, axis, -1)
    inner = list(range(1, len(x.shape) - 1))
    count = tf.cast(tf.size(x, out_type=tf.int64), tf.float64) / x.shape[-1]  # samples x positions
    if inner:
        sums, norms = tf.cast(tf.reduce_sum(x, inner), tf.float64), tf.cast(tf.math.reduce_euclidean_norm(x, inner), tf.float64)
    else:
        sums = norms = tf.cast(x, tf.float64)
    total, squares = tf.unstack(tf.reduce_sum(tf.stack([sums, norms * norms]), 1))
    mean = tf.math.divide_no_nan(total, count)  # a replica may get no samples of a short batch
    variance = tf.maximum(tf.math.divide_no_nan(squares, count) - mean * mean, 0.0)
    return count, mean, variance


def whole_batch_moments(count, mean, variance):
    """Mean and variance of the whole batch from each replica's share (one all-reduce).

    So that training-mode BN sees the chosen batch size however many devices run it
    (synchronized BN). Sums of x^2 are safe here: they are float64.
    """
    tf = import_tensorflow()
    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync == 1:
        return mean, variance
    sums = context.all_reduce("sum", tf.stack([tf.fill(tf.shape(mean), count), count * mean, count * (variance + mean * mean)]))
    whole_mean = sums[1] / sums[0]
    return whole_mean, sums[2] / sums[0] - whole_mean * whole_mean


_STRATEGIES: dict[tuple[str, ...], Any] = {}


def mirrored_strategy(devices: list[str]):
    """One ``MirroredStrategy`` per device set for the whole process: a second one would
    number its collective all-reduces from the same keys as the first, and TensorFlow
    then refuses a key reused with another shape (seen auditing two models in a row)."""
    key = tuple(devices)
    if key not in _STRATEGIES:
        _STRATEGIES[key] = import_tensorflow().distribute.MirroredStrategy(devices)
    return _STRATEGIES[key]


def devices_for_pass() -> list[str] | None:
    """The devices to mirror the pass over: several GPUs, else several logical CPUs, else None."""
    tf = import_tensorflow()
    for kind in ("GPU", "CPU"):
        names = [d.name for d in tf.config.list_logical_devices(kind)]
        if len(names) > 1:
            return names
    return None


def collect(
    model,
    batches: Iterable[list[np.ndarray]],
    *,
    batch_size: int,
    upstream: str = "inference",
    compare_modes: bool = False,
    frozen_use_batch: bool = False,
    progress: "Progress | None" = None,
    shard: tuple[int, int] | None = None,
    cluster: "Cluster | None" = None,
) -> DataStatistics:
    """Run the model once over ``batches`` and return the statistics at every BN input.

    ``cluster``: ``batches`` are this task's share of a ``TF_CONFIG`` cluster's data; the
    result is the statistics of the whole data, all-reduced across the tasks
    (:func:`bnaudit.runtime.cluster.all_reduce`; :func:`bnaudit.runtime.cluster.start` first).

    ``frozen_use_batch``: in training mode, frozen BN layers normalize with batch
    statistics too, as the file's writer does (standalone Keras, tf.keras on
    TensorFlow 1.x; see ``bnaudit.writers``).
    """
    if upstream not in UPSTREAM_MODES:
        raise ValueError(f"upstream must be one of {UPSTREAM_MODES}, not {upstream!r}")
    tf = import_tensorflow()
    layers = batchnorm_layers(model)
    # A task of a cluster steps on its default device: TensorFlow runs no local
    # MirroredStrategy next to a multi-worker one ("in-graph multi-worker" refused).
    devices = None if cluster is not None else devices_for_pass()
    strategy = mirrored_strategy(devices) if devices else tf.distribute.get_strategy()
    other = "training" if upstream == "inference" else "inference"
    started = time.perf_counter()
    result = DataStatistics(
        layers={},
        batch_size=batch_size,
        upstream=upstream,
        fingerprint=model_fingerprint(model),
        replicas=strategy.num_replicas_in_sync,
        comparison=ModeComparison() if compare_modes else None,
        shards=[shard[0]] if shard else [1],
        shard_count=shard[1] if shard else 1,
    )
    #: Which (layer, channels) each stretch of the flat moment vectors belongs to, in call order.
    layout: list[tuple[str, int]] = []
    totals = FlatTotals()

    with _Instrument(layers, frozen_use_batch) as instrument:

        def replica_step(inputs):
            outputs, sink = instrument.run(model, inputs, upstream, measure=True)
            compared = instrument.run(model, inputs, other, measure=False)[0] if compare_modes else None
            layout[:] = [(path, int(mean.shape[0])) for path, _, mean, _ in sink]
            counts = tf.stack([count for _, count, _, _ in sink]) if sink else tf.zeros([0], tf.float64)
            flat = [counts] + [tf.concat([call[i] for call in sink], 0) if sink else tf.zeros([0], tf.float64) for i in (2, 3)]
            return tf.nest.flatten(outputs), flat, tf.nest.flatten(compared) if compare_modes else []

        @tf.function(reduce_retracing=True, autograph=False)
        def step(inputs):
            return strategy.run(replica_step, args=(inputs,))

        try:
            for batch in batches:
                slices = [np.array_split(array, strategy.num_replicas_in_sync) for array in batch]
                inputs = strategy.experimental_distribute_values_from_function(
                    lambda ctx: [s[ctx.replica_id_in_sync_group] for s in slices]
                )
                outputs, flat, compared = step(inputs)
                widths = [n for _, n in layout]
                replicas = zip(*(strategy.experimental_local_results(t) for t in flat))
                totals.add(
                    [Moments.of_batch(np.repeat(np.asarray(c), widths), np.asarray(m), np.asarray(v)) for c, m, v in replicas],
                    full_batch=len(batch[0]) == batch_size,
                )
                if compare_modes:
                    first = [_gather(strategy, o) for o in outputs]
                    second = [_gather(strategy, o) for o in compared]
                    inference, training = (first, second) if upstream == "inference" else (second, first)
                    result.comparison.add(inference, training)
                result.samples += len(batch[0])
                result.batches += 1
                if progress:
                    progress.update(result.samples, result.batches)
        finally:  # the progress line never outlives the pass, even when it fails
            if progress:
                progress.done()
    result.layers = totals.per_layer(layout, {path: int(np.prod(layer.moving_mean.shape)) for path, layer in layers.items()})
    if cluster is not None:
        result = all_reduce(cluster, result)
    result.seconds = round(time.perf_counter() - started, 3)
    return result


def _gather(strategy, value) -> np.ndarray:
    return np.concatenate([np.asarray(v) for v in strategy.experimental_local_results(value)])
