"""The optimizer's step count, as a model file saved with its optimizer records it.

BN205 compares this count with a BatchNormalization's momentum: each training step of
``model.fit`` is one optimizer step and one update of the moving statistics. Where the
count lives (checked against files Keras itself writes; see tests/test_convergence.py):

- ``.keras`` (Keras 3 ``saving_lib``): ``model.weights.h5`` holds the optimizer's
  variables under ``optimizer/vars/<i>`` in the order of ``optimizer.variables``, and
  ``BaseOptimizer.__init__`` creates ``iterations`` first, so it is ``optimizer/vars/0``,
  a scalar int64.
- ``.h5`` written by Keras 3's legacy writer: ``optimizer_weights/<name>/iteration``.
- a tf-keras SavedModel: the checkpoint's object graph, ``root.optimizer._iterations``
  (``iter`` for ``optimizers.legacy``), read by :mod:`.savedmodel`.
- ``.h5`` written by Keras 2 / tf-keras: ``optimizer_weights`` with a ``weight_names``
  attribute; the count is ``iteration:0`` (optimizers of TF >= 2.11), ``<Name>/iter:0``
  (``keras.optimizers.legacy``) or ``iterations:0`` (Keras <= 2.2).

A wrapping optimizer holds a second count: Keras 3's ``LossScaleOptimizer`` (mixed
precision) saves its own ``iterations``, which stays 0, and its inner optimizer's under
``optimizer/inner_optimizer/vars/0`` (``.keras``) or ``<inner name>/iteration``
(legacy ``.h5``), which counts the applied steps. The count read is therefore the
largest of those the file holds. A step skipped for a loss-scale overflow still updated
the moving statistics but is not counted: the count is a lower bound of the updates.

Every function returns None where the file holds no optimizer state or the count is not
a non-negative integer scalar: the file is untrusted, and a wrong guess would make
BN205 fire on every layer.
"""

from __future__ import annotations

from typing import Iterable, Iterator

import h5py
import numpy as np

from .h5guard import MAX_WEIGHT_NAMES_BYTES, get_object, read_dataset, read_text_attribute

#: The last part of the count's name in each layout, without ``:0``.
COUNT_NAMES = frozenset({"iteration", "iterations", "iter"})
#: ``optimizer_weights`` of a legacy ``.h5`` is searched this deep, no deeper (hostile files).
MAX_DEPTH = 3
WHERE = "the optimizer's step count"


def keras3_iterations(h5: h5py.File) -> int | None:
    """The count in a ``.keras`` file's ``model.weights.h5``: ``optimizer/vars/0``, or
    ``optimizer/inner_optimizer/vars/0`` where an optimizer wraps another.

    Raises:
        LoadError: the path holds a link or dataset Keras never writes (:mod:`.h5guard`).
    """
    return largest(_count(get_object(h5, path, WHERE)) for path in ("optimizer/vars/0", "optimizer/inner_optimizer/vars/0"))


def legacy_h5_iterations(h5: h5py.File) -> int | None:
    """The count in a full-model ``.h5`` (Keras 2 or Keras 3's legacy writer).

    Raises:
        LoadError: as :func:`keras3_iterations`.
    """
    group = get_object(h5, "optimizer_weights", WHERE)
    if not isinstance(group, h5py.Group):
        return None
    names = read_text_attribute(group, "weight_names", MAX_WEIGHT_NAMES_BYTES) or []
    counts = [name for name in ([names] if isinstance(names, str) else names) if name.split("/")[-1].split(":")[0] in COUNT_NAMES]
    if counts:  # the names say which datasets are counts
        return largest(_count(get_object(group, name, WHERE)) for name in counts)
    return largest(_search(group, 0))


def _search(group: h5py.Group, depth: int) -> Iterator[int | None]:
    """Without usable ``weight_names``: every count found by its name, ``MAX_DEPTH`` deep."""
    subgroups = []
    for key in group:
        item = get_object(group, key, WHERE)
        if isinstance(item, h5py.Dataset) and key.split(":")[0] in COUNT_NAMES:
            yield _count(item)
        if isinstance(item, h5py.Group):
            subgroups.append(item)
    if depth + 1 < MAX_DEPTH:
        for item in subgroups:
            yield from _search(item, depth + 1)


def largest(counts: Iterable[int | None]) -> int | None:
    """The largest count read (a wrapper's own stays 0); None when none could be read."""
    return max((count for count in counts if count is not None), default=None)


def _count(dataset: object) -> int | None:
    """A non-negative integral scalar, read through the guard; None for anything else."""
    if not isinstance(dataset, h5py.Dataset) or dataset.shape != () or dataset.dtype.kind not in "iuf":
        return None
    return valid_count(float(read_dataset(dataset, WHERE, 1)))


def valid_count(value: float) -> int | None:
    """``value`` as a step count: a finite non-negative integer, else None (untrusted file)."""
    if not (np.isfinite(value) and value.is_integer() and value >= 0):
        return None
    return int(value)
