"""The statistics pass on a ``tf.distribute.MultiWorkerMirroredStrategy`` cluster named by ``TF_CONFIG``.

When ``TF_CONFIG`` (TensorFlow's own variable, read by ``TFConfigClusterResolver``)
describes more than one ``chief``/``worker`` task, every task runs the same bnaudit
command on the same data and keeps its own shard of the batches: the task with
TensorFlow's ``id_in_cluster`` *i* of *n* (the chief 0, then the workers) measures
batches *i*, *i + n*, ... exactly as ``--shard i+1/n`` does, so the batch boundaries
are those of a single pass. At the end of the pass the per-channel moments of every
task are summed by TensorFlow's collective all-reduce (RING on CPU) under the
strategy, and every task holds the statistics of the whole data (:func:`all_reduce`).
Only the chief writes outputs.

Each task steps through its batches on its own devices; the tasks meet once per pass,
at the all-reduce, so a task that got fewer batches (or none) does not stall the
others batch after batch, and the collective keys stay in step across tasks because
every task runs the same passes in the same order.

Start-up is bounded by ``BNAUDIT_CLUSTER_TIMEOUT`` seconds (default 120): before
TensorFlow is told about the cluster, each task listens on its own address and waits
until it can connect to every other one (:func:`_rendezvous`). TensorFlow's own
start-up would wait for a missing task forever, inside one call that holds the GIL
(its ``cluster_register_timeout_in_ms`` did not end the wait in TensorFlow 2.21), so
the wait has to happen before it. The all-reduce itself has the same timeout
(``CommunicationOptions.timeout_seconds``) counted from when the first task reaches it.

Parsing ``TF_CONFIG`` needs no TensorFlow, so the command line knows which task it is
before anything is loaded.
"""

from __future__ import annotations

import json
import os
import socket
import time
from dataclasses import dataclass, replace
from typing import Any, Mapping

import numpy as np

from ..analysis.cka import ModeComparison
from ..analysis.moments import Moments
from ..analysis.statistics import DataStatistics, LayerStatistics
from ..loaders import LoadError

TF_CONFIG = "TF_CONFIG"
TIMEOUT_ENV = "BNAUDIT_CLUSTER_TIMEOUT"
DEFAULT_TIMEOUT = 120.0
#: The task types that take part in the pass, in TensorFlow's ``id_in_cluster`` order.
_TASK_TYPES = ("chief", "worker")
_HINT = 'TF_CONFIG is JSON: {"cluster": {"worker": ["host:port", ...]}, "task": {"type": "worker", "index": I}}'


class ClusterError(LoadError):
    """``TF_CONFIG`` that does not describe a cluster bnaudit can run on, or a task that cannot be reached."""


@dataclass(frozen=True)
class Cluster:
    """The tasks of the cluster (``host:port``, in ``id_in_cluster`` order) and which one this is."""

    addresses: tuple[str, ...]
    index: int
    task_type: str
    task_index: int
    timeout: float = DEFAULT_TIMEOUT

    @property
    def workers(self) -> int:
        return len(self.addresses)

    @property
    def chief(self) -> bool:
        """The task that writes outputs: ``chief`` 0 if the cluster has one, else ``worker`` 0 (TensorFlow's rule)."""
        return self.index == 0

    @property
    def shard(self) -> tuple[int, int]:
        """This task's batches as ``--shard K/N`` numbers them (K from 1)."""
        return self.index + 1, self.workers

    def describe(self) -> str:
        return f"task {self.task_type}:{self.task_index} ({self.index + 1} of {self.workers})"


def from_environment(environ: Mapping[str, str] | None = None) -> Cluster | None:
    """The cluster ``TF_CONFIG`` describes, or None when it is unset or names a single task.

    Raises:
        ClusterError: ``TF_CONFIG`` is not JSON, lacks ``cluster``/``task``, names a task
            outside the cluster or of a type that takes no part (``ps``, ``evaluator``),
            or ``BNAUDIT_CLUSTER_TIMEOUT`` is not a positive number.
    """
    environ = os.environ if environ is None else environ
    text = environ.get(TF_CONFIG, "").strip()
    if not text:
        return None
    try:
        config = json.loads(text)
    except ValueError as exc:
        raise ClusterError(f"TF_CONFIG is not JSON ({exc})", _HINT) from None
    cluster = config.get("cluster") if isinstance(config, dict) else None
    if not isinstance(cluster, dict) or not cluster:
        raise ClusterError("TF_CONFIG names no cluster", _HINT)
    addresses: list[str] = []
    for task_type in _TASK_TYPES:
        listed = cluster.get(task_type, [])
        if not isinstance(listed, list) or not all(isinstance(a, str) and _port(a) is not None for a in listed):
            raise ClusterError(f"TF_CONFIG cluster {task_type!r} is not a list of host:port addresses", _HINT)
        addresses += listed
    if len(addresses) <= 1:
        return None
    task = config.get("task")
    task_type = task.get("type") if isinstance(task, dict) else None
    task_index = task.get("index", 0) if isinstance(task, dict) else None
    if task_type not in _TASK_TYPES or not isinstance(task_index, int) or not 0 <= task_index < len(cluster.get(task_type, [])):
        raise ClusterError(
            f"TF_CONFIG task {json.dumps(task)[:80]} is not a chief or worker task of its cluster",
            "give each task its own type and index, e.g. \"task\": {\"type\": \"worker\", \"index\": 1}",
        )
    index = task_index + (len(cluster.get("chief", [])) if task_type == "worker" else 0)
    return Cluster(tuple(addresses), index, task_type, task_index, _timeout(environ))


def _timeout(environ: Mapping[str, str]) -> float:
    raw = environ.get(TIMEOUT_ENV, "") or str(DEFAULT_TIMEOUT)
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise ClusterError(f"{TIMEOUT_ENV}={raw!r} is not a positive number of seconds")
    return value


def _port(address: str) -> int | None:
    host, _, port = address.rpartition(":")
    return int(port) if host and port.isdigit() and 0 < int(port) < 65536 else None


def _rendezvous(cluster: Cluster) -> None:
    """Listen on this task's port and wait until every other task accepts a connection.

    Raises:
        ClusterError: a task still unreachable after ``cluster.timeout`` seconds, or this
            task's port already taken.
    """
    me = cluster.addresses[cluster.index]
    try:
        listener = socket.create_server(("", _port(me)), reuse_port=False)
    except OSError as exc:
        raise ClusterError(f"cannot listen on {me}, this task's TF_CONFIG address ({exc.strerror or exc})", "give each task a free port") from None
    deadline = time.monotonic() + cluster.timeout
    waiting = [a for i, a in enumerate(cluster.addresses) if i != cluster.index]
    try:
        while waiting:
            address = waiting[0]
            host, _, port = address.rpartition(":")
            try:
                socket.create_connection((host, int(port)), timeout=1.0).close()
                waiting.pop(0)
                continue
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise ClusterError(
                    f"cluster task at {address} unreachable after {cluster.timeout:g} s ({cluster.describe()} waited for it)",
                    f"start every task named in TF_CONFIG, or raise {TIMEOUT_ENV}",
                )
            time.sleep(0.2)
    finally:
        listener.close()


_started: dict[str, Any] = {}


def start(cluster: Cluster):
    """The process's ``MultiWorkerMirroredStrategy`` for ``cluster`` (created once, after the rendezvous).

    Call it before anything else runs on TensorFlow: collective ops are configured at
    the start of the program.

    Raises:
        ClusterError: a task unreachable, or TensorFlow already started without the cluster.
    """
    if "strategy" in _started:
        return _started["strategy"]
    from . import import_tensorflow

    _rendezvous(cluster)
    tf = import_tensorflow()
    options = tf.distribute.experimental.CommunicationOptions(
        implementation=tf.distribute.experimental.CommunicationImplementation.RING, timeout_seconds=cluster.timeout
    )
    try:
        strategy = tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)
    except (RuntimeError, ValueError) as exc:
        raise ClusterError(f"TensorFlow could not join the cluster ({exc})", "run the statistics pass first in its own bnaudit command") from None
    _started["strategy"] = strategy
    return strategy


def all_reduce(cluster: Cluster, local: DataStatistics) -> DataStatistics:
    """The statistics of the whole data from this task's share, summed across tasks by TensorFlow.

    Two collective sums in float64: first the count and the sum (count x mean) of every
    channel, and the sample, batch and BN302 totals; then each task's M2 plus
    count x (its mean - the global mean)^2, whose sum is the global M2 (the parallel
    form of Chan, Golub and LeVeque, 1979). Equal to a single pass up to float64
    rounding of the order of 1e-15 relative. Every task gets the same result.

    Raises:
        ClusterError: a task failed or fell silent for longer than the timeout.
    """
    paths = sorted(local.layers)
    parts = [m for path in paths for m in _layer_moments(local.layers[path])]
    count, mean, m2 = (np.concatenate([getattr(m, name) for m in parts] or [np.zeros(0)]) for name in ("count", "mean", "m2"))
    comparison = local.comparison or ModeComparison()
    totals = [local.samples, local.batches, comparison.hsic_xy, comparison.hsic_xx, comparison.hsic_yy,
              comparison.agreeing, comparison.compared, comparison.non_finite_batches]
    first = _sum(np.concatenate([count, count * mean, np.asarray(totals, np.float64)]))
    n = count.shape[0]
    all_count, all_sum, summed = first[:n], first[n:2 * n], first[2 * n:]
    with np.errstate(invalid="ignore", divide="ignore"):
        all_mean = np.where(all_count > 0, all_sum / all_count, 0.0)
    all_m2 = _sum(m2 + count * np.square(np.where(count > 0, mean - all_mean, 0.0)))
    merged = Moments(all_count, all_mean, all_m2)
    layers, start = {}, 0
    for path in paths:
        width = local.layers[path].moments.channels
        pieces = [merged[slice(start + i * width, start + (i + 1) * width)] for i in range(3)]
        layers[path] = LayerStatistics(path, *pieces)
        start += 3 * width
    samples, batches, xy, xx, yy, agreeing, compared, non_finite = summed
    return replace(
        local,
        layers=layers,
        samples=int(samples),
        batches=int(batches),
        replicas=local.replicas * cluster.workers,
        comparison=None if local.comparison is None else ModeComparison(xy, xx, yy, int(agreeing), int(compared), int(non_finite)),
        shards=[1],
        shard_count=1,
    )


def _layer_moments(layer: LayerStatistics) -> tuple[Moments, Moments, Moments]:
    return layer.moments, layer.batch_means, layer.batch_variances


def _sum(values: np.ndarray) -> np.ndarray:
    """``values`` summed over every task of the cluster (a float64 collective all-reduce)."""
    from . import import_tensorflow

    tf = import_tensorflow()
    strategy = _started["strategy"]
    logger = tf.get_logger()
    level = logger.level
    # Eager: two small reductions per pass, whose overhead TensorFlow warns about; the
    # same call inside a tf.function fails in TensorFlow 2.21 ("destinations can not be empty").
    logger.setLevel("ERROR")
    try:
        value = tf.constant(values, tf.float64)
        result = strategy.reduce("SUM", strategy.run(lambda: tf.identity(value)), axis=None)
        return np.asarray(result, np.float64)
    except (tf.errors.UnavailableError, tf.errors.DeadlineExceededError, tf.errors.CancelledError, tf.errors.InternalError) as exc:
        message = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise ClusterError(f"the cluster's all-reduce failed ({message})", f"check that every task runs the same command on the same data, or raise {TIMEOUT_ENV}") from None
    finally:
        logger.setLevel(level)
