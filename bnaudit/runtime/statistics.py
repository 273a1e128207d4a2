"""One forward pass over the data that measures the input of every BatchNormalization layer.

Each BN layer's ``call`` is wrapped for the duration of the pass (and restored after):
the wrapper reduces the layer's input to per-channel count, mean and variance on the
device, and returns those vectors from the compiled step next to the model outputs.
So a single ``tf.function`` call per batch measures every BN layer, nested models and
shared layers included, and only per-channel vectors leave the device; the host merges
them in float64 (:mod:`.moments`), so memory does not grow with the data.

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

Statistics are saved as ``.npz`` (:meth:`DataStatistics.save`) so that shards measured
on different machines merge (:meth:`DataStatistics.merge`) to the single-pass result.
"""

from __future__ import annotations

import hashlib
import io
import json
import threading
import time
import zipfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterable, TextIO

import numpy as np

from ..loaders import LoadError
from . import import_tensorflow
from .moments import Moments

FORMAT = "bnaudit-statistics"
FORMAT_VERSION = 1
UPSTREAM_MODES = ("inference", "training")


# -- results -------------------------------------------------------------------------


@dataclass
class LayerStatistics:
    """What the data produced at one BN layer's input, per channel."""

    path: str
    moments: Moments
    #: Spread across full batches of each batch's mean and variance (what training-mode BN sees).
    batch_means: Moments
    batch_variances: Moments

    def merge(self, other: "LayerStatistics") -> "LayerStatistics":
        return LayerStatistics(
            self.path,
            self.moments.merge(other.moments),
            self.batch_means.merge(other.batch_means),
            self.batch_variances.merge(other.batch_variances),
        )


@dataclass
class ModeComparison:
    """Model outputs with BN on batch statistics vs. on moving statistics, summed over batches.

    Linear CKA is the minibatch form of Nguyen et al. (2021): unbiased HSIC estimates
    (Song et al., 2012) summed over batches, so no more than one batch is ever held.
    It needs the model's outputs, so it lives only in a pass over ``--data`` and is
    not saved with the moments.
    """

    hsic_xy: float = 0.0
    hsic_xx: float = 0.0
    hsic_yy: float = 0.0
    agreeing: int = 0
    compared: int = 0

    @property
    def cka(self) -> float | None:
        denominator = self.hsic_xx * self.hsic_yy
        if not denominator > 0:
            return None
        return float(self.hsic_xy / np.sqrt(denominator))

    @property
    def agreement(self) -> float | None:
        return self.agreeing / self.compared if self.compared else None

    def add(self, inference: list[np.ndarray], training: list[np.ndarray]) -> None:
        x = np.concatenate([o.reshape(len(o), -1) for o in inference], axis=1).astype(np.float64)
        y = np.concatenate([o.reshape(len(o), -1) for o in training], axis=1).astype(np.float64)
        if len(x) >= 4:
            k, l = x @ x.T, y @ y.T
            self.hsic_xy += _unbiased_hsic(k, l)
            self.hsic_xx += _unbiased_hsic(k, k)
            self.hsic_yy += _unbiased_hsic(l, l)
        for a, b in zip(inference, training):
            if a.ndim >= 2 and a.shape[-1] >= 2:
                self.agreeing += int((a.argmax(-1) == b.argmax(-1)).sum())
                self.compared += int(a[..., 0].size)


def _unbiased_hsic(k: np.ndarray, l: np.ndarray) -> float:
    n = k.shape[0]
    k = k.copy()
    l = l.copy()
    np.fill_diagonal(k, 0.0)
    np.fill_diagonal(l, 0.0)
    kl = k @ l
    value = np.trace(kl) + k.sum() * l.sum() / ((n - 1) * (n - 2)) - 2.0 * kl.sum() / (n - 2)
    return float(value / (n * (n - 3)))


@dataclass
class DataStatistics:
    """Everything one pass (or the merge of several shards) measured for one model."""

    layers: dict[str, LayerStatistics]
    batch_size: int
    upstream: str
    #: Hash of the model's moving statistics: shards and audits must be of the same model.
    fingerprint: str
    samples: int = 0
    batches: int = 0
    replicas: int = 1
    comparison: ModeComparison | None = None
    #: Shards held (numbered from 1) out of ``shard_count``; a single pass holds [1] of 1.
    shards: list[int] = field(default_factory=lambda: [1])
    shard_count: int = 1
    seconds: float = 0.0

    @property
    def complete(self) -> bool:
        return sorted(self.shards) == list(range(1, self.shard_count + 1))

    def merge(self, other: "DataStatistics") -> "DataStatistics":
        """Combine two shards of the same model, data cut and settings."""
        mine = (self.fingerprint, self.batch_size, self.upstream, self.shard_count, list(self.layers))
        theirs = (other.fingerprint, other.batch_size, other.upstream, other.shard_count, list(other.layers))
        names = ("model", "batch size", "upstream mode", "shard count", "BN layers")
        for name, a, b in zip(names, mine, theirs):
            if a != b:
                raise LoadError(f"cannot merge statistics measured with different {name} ({_short(a)} vs {_short(b)})")
        overlap = set(self.shards) & set(other.shards)
        if overlap:
            raise LoadError(f"shard {sorted(overlap)[0]}/{self.shard_count} is given twice", "merge each shard once")
        return replace(
            self,
            layers={path: layer.merge(other.layers[path]) for path, layer in self.layers.items()},
            samples=self.samples + other.samples,
            batches=self.batches + other.batches,
            replicas=max(self.replicas, other.replicas),
            comparison=None,
            shards=sorted(self.shards + other.shards),
            seconds=self.seconds + other.seconds,
        )

    # -- files ------------------------------------------------------------------------
    def save(self, path: str | Path) -> None:
        """Write an ``.npz`` (plain arrays plus a JSON header; nothing pickled), atomically."""
        from ..output import write_atomic

        arrays: dict[str, np.ndarray] = {}
        for index, layer in enumerate(self.layers.values()):
            arrays.update(layer.moments.to_arrays(f"l{index}."))
            arrays.update(layer.batch_means.to_arrays(f"l{index}.batch_means."))
            arrays.update(layer.batch_variances.to_arrays(f"l{index}.batch_variances."))
        header = {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "layers": list(self.layers),
            "batch_size": self.batch_size,
            "upstream": self.upstream,
            "fingerprint": self.fingerprint,
            "samples": self.samples,
            "batches": self.batches,
            "replicas": self.replicas,
            "shards": self.shards,
            "shard_count": self.shard_count,
            "seconds": self.seconds,
        }
        arrays["header"] = np.array(json.dumps(header))
        write_atomic(path, _npz_bytes(arrays))

    @classmethod
    def load(cls, path: str | Path) -> "DataStatistics":
        """Read a file written by :meth:`save`; a LoadError names what is wrong with it."""
        hint = "write it with `bnaudit stats -o` or `bnaudit merge`"
        if not Path(path).is_file():
            raise LoadError(f"{path}: no such statistics file", hint)
        if not zipfile.is_zipfile(path):
            raise LoadError(f"{path} is not a bnaudit statistics file (not an .npz)", hint)
        try:
            with np.load(path, allow_pickle=False) as arrays:
                header = json.loads(str(arrays["header"]))
                if header.get("format") != FORMAT or header.get("version") != FORMAT_VERSION:
                    raise LoadError(f"{path} is not a bnaudit statistics file (version {FORMAT_VERSION})", hint)
                layers = {
                    name: LayerStatistics(
                        name,
                        Moments.from_arrays(arrays, f"l{index}."),
                        Moments.from_arrays(arrays, f"l{index}.batch_means."),
                        Moments.from_arrays(arrays, f"l{index}.batch_variances."),
                    )
                    for index, name in enumerate(header["layers"])
                }
            return cls(
                layers=layers,
                batch_size=int(header["batch_size"]),
                upstream=str(header["upstream"]),
                fingerprint=str(header["fingerprint"]),
                samples=int(header["samples"]),
                batches=int(header["batches"]),
                replicas=int(header["replicas"]),
                shards=[int(k) for k in header["shards"]],
                shard_count=int(header["shard_count"]),
                seconds=float(header.get("seconds", 0.0)),
            )
        except LoadError:
            raise
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise LoadError(f"cannot read the statistics file {path} ({type(exc).__name__}: {exc})", hint) from None


def _short(value: Any) -> str:
    text = str(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def fingerprint(moving: Iterable[tuple[str, np.ndarray, np.ndarray]]) -> str:
    """A short hash of each BN's path, moving mean and moving variance (as float64), in path order."""
    digest = hashlib.sha256()
    for path, mean, variance in sorted(moving, key=lambda item: item[0]):
        digest.update(path.encode("utf-8", "surrogatepass"))
        digest.update(np.asarray(mean, np.float64).tobytes())
        digest.update(np.asarray(variance, np.float64).tobytes())
    return digest.hexdigest()[:16]


# -- the pass ------------------------------------------------------------------------


def batchnorm_layers(model) -> dict[str, Any]:
    """Every BatchNormalization in ``model`` by bnaudit layer path (``base/bn_1``), nested models included."""
    import keras

    found: dict[str, Any] = {}

    def walk(container, prefix: str) -> None:
        for layer in container.layers:
            if isinstance(layer, keras.layers.BatchNormalization):
                found[prefix + layer.name] = layer
            elif hasattr(layer, "layers"):
                walk(layer, f"{prefix}{layer.name}/")

    walk(model, "")
    return found


def model_fingerprint(model) -> str:
    return fingerprint(
        (path, layer.moving_mean.numpy(), layer.moving_variance.numpy()) for path, layer in batchnorm_layers(model).items()
    )


class _Instrument:
    """Wraps every BN layer's ``call`` while the pass runs; restores them on exit.

    The wrappers read what to do from a thread-local (MirroredStrategy traces each
    replica in its own thread): the mode to normalize in, and where to append the
    input's moments (None: do not measure).
    """

    def __init__(self, layers: dict[str, Any]) -> None:
        self.layers = layers
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
            # A frozen BN stays on moving statistics in training mode, as in fit(); a call
            # from outside ``run`` (another thread) gets the layer's own behaviour.
            sink = getattr(state, "sink", None)
            train = getattr(state, "mode", None) == "training" and layer.trainable
            if getattr(state, "mode", None) is None:
                return original(inputs, training=training, mask=mask)
            if sink is None and not train:
                return original(inputs, training=False, mask=mask)
            x = tf.cast(inputs, tf.float32)
            axis = layer.axis % len(x.shape)
            count, mean, variance = channel_moments(x, axis)
            if sink is not None:
                sink.append((path, count, mean, variance))
            if not train:
                return original(inputs, training=False, mask=mask)
            # Statistics of the whole batch (whatever the replicas), applied here rather
            # than by Keras, which would also update the moving statistics.
            mean, variance = whole_batch_moments(count, mean, variance)
            shape = [1] * len(x.shape)
            shape[axis] = -1

            def per_channel(vector):
                return None if vector is None else tf.reshape(tf.cast(vector, tf.float32), shape)

            outputs = tf.nn.batch_normalization(
                x, per_channel(mean), per_channel(variance), per_channel(layer.beta), per_channel(layer.gamma), layer.epsilon
            )
            return tf.cast(outputs, layer.compute_dtype)

        return call


def channel_moments(x, axis: int):
    """Count (scalar), mean and variance (float64 vectors) of ``x`` per channel along ``axis``.

    Reads ``x`` twice and writes nothing: per sample and channel, the sum and the sum
    of squares over the positions (float32 reductions, the second a Euclidean norm),
    then everything else in float64, combining the samples by Chan et al.'s formula.
    The one float32 cancellation left is within a sample: a relative error of about
    1e-7 x (1 + mean^2 / variance) of that sample's values (~1e-6 measured on
    MobileNetV2), where the exact two-pass alternative costs one more read and a
    write of every BN input (~15% of a MobileNetV2 forward pass on CPU). A BN input
    of rank 2 (after a Dense layer) has one position per sample and is exact.
    """
    tf = import_tensorflow()
    if axis != len(x.shape) - 1:
        x = tf.experimental.numpy.moveaxis(x, axis, -1)
    inner = list(range(1, len(x.shape) - 1))
    count_per_sample = x.shape[1:-1].num_elements()  # None when the model leaves positions open
    if count_per_sample is None:
        count_per_sample = tf.cast(tf.reduce_prod(tf.shape(x)[1:-1]), tf.float64)
    count = tf.cast(tf.shape(x)[0], tf.float64) * count_per_sample
    if not inner:
        sums = tf.cast(x, tf.float64)
        within = tf.zeros_like(sums)
    else:
        sums = tf.cast(tf.reduce_sum(x, inner), tf.float64)
        squares = tf.square(tf.cast(tf.math.reduce_euclidean_norm(x, inner), tf.float64))
        within = tf.maximum(squares - sums * sums / count_per_sample, 0.0)  # M2 of each sample
    mean = tf.math.divide_no_nan(tf.reduce_sum(sums, 0), count)  # a replica may get no samples of a short batch
    between = count_per_sample * tf.square(sums / count_per_sample - mean)
    variance = tf.math.divide_no_nan(tf.reduce_sum(within + between, 0), count)
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
    progress: "Progress | None" = None,
    shard: tuple[int, int] | None = None,
) -> DataStatistics:
    """Run the model once over ``batches`` and return the statistics at every BN input."""
    if upstream not in UPSTREAM_MODES:
        raise ValueError(f"upstream must be one of {UPSTREAM_MODES}, not {upstream!r}")
    tf = import_tensorflow()
    layers = batchnorm_layers(model)
    devices = devices_for_pass()
    strategy = tf.distribute.MirroredStrategy(devices) if devices else tf.distribute.get_strategy()
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
    totals = _FlatTotals()

    with _Instrument(layers) as instrument:

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
    result.layers = totals.per_layer(layout, {path: int(layer.moving_mean.shape[0]) for path, layer in layers.items()})
    result.seconds = round(time.perf_counter() - started, 3)
    return result


class _FlatTotals:
    """Running moments of all layers as flat vectors: one merge per batch, whatever the depth."""

    def __init__(self) -> None:
        self.moments: Moments | None = None
        self.batch_means: Moments | None = None
        self.batch_variances: Moments | None = None

    def add(self, replicas: list[Moments], full_batch: bool) -> None:
        batch = replicas[0]
        for replica in replicas[1:]:
            batch = batch.merge(replica)
        if self.moments is None:
            self.moments, self.batch_means, self.batch_variances = (Moments.empty(batch.channels) for _ in range(3))
        self.moments = self.moments.merge(batch)
        if full_batch:
            self.batch_means = self.batch_means.merge(Moments.of_observation(batch.mean))
            self.batch_variances = self.batch_variances.merge(Moments.of_observation(batch.variance))

    def per_layer(self, layout: list[tuple[str, int]], channels: dict[str, int]) -> dict[str, LayerStatistics]:
        """Split the flat vectors by layer; a layer called several times per batch merges its calls."""
        layers = {path: LayerStatistics(path, *(Moments.empty(n) for _ in range(3))) for path, n in channels.items()}
        if self.moments is None:
            return layers
        start = 0
        for path, n in layout:
            part = slice(start, start + n)
            layers[path] = layers[path].merge(LayerStatistics(path, self.moments[part], self.batch_means[part], self.batch_variances[part]))
            start += n
        return layers


def _gather(strategy, value) -> np.ndarray:
    return np.concatenate([np.asarray(v) for v in strategy.experimental_local_results(value)])


class Progress:
    """Samples, batches per second and ETA on one rewritten line of the user's terminal.

    The command line names the terminal its stderr is attached to before any audit
    starts (``Runtime`` options ``progress_terminal``): while models are audited, fd 2
    itself points at /dev/null to keep native libraries quiet, and workers of ``-j``
    run in other processes. No terminal, no progress.
    """

    def __init__(self, total: int | None, stream: TextIO, every: float = 0.5) -> None:
        self.total = total
        self.stream = stream
        self.every = every
        self.started = time.perf_counter()
        self.shown = 0.0

    @classmethod
    def on_terminal(cls, terminal: str | None, total: int | None) -> "Progress | None":
        if not terminal:
            return None
        try:
            return cls(total, open(terminal, "w", encoding="utf-8"))
        except OSError:  # the terminal went away: carry on without progress
            return None

    def update(self, samples: int, batches: int) -> None:
        now = time.perf_counter()
        if now - self.shown < self.every:
            return
        self.shown = now
        elapsed = max(now - self.started, 1e-9)
        line = f"bnaudit: statistics: {samples} samples, {batches} batches, {batches / elapsed:.1f} batches/s"
        if self.total:
            remaining = (self.total - samples) * elapsed / max(samples, 1)
            line += f", ETA {remaining:.0f}s"
        self.stream.write("\r" + line + "\033[K")
        self.stream.flush()

    def done(self) -> None:
        if self.shown:
            self.stream.write("\r\033[K")
        self.stream.close()
