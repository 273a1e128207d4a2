"""Two checkpoints of one model: which BN layers correspond, and how much each changed.

``bnaudit diff BASE TUNED`` compares a model before and after fine-tuning. The tuned
model is either the same architecture or holds the base as a nested model (transfer
learning: ``Sequential([base, head])``), so a base layer ``bn_1`` is ``bn_1`` or
``<nested>/bn_1`` in the tuned model. Layers are paired by path first; those left over
are paired by position, in graph order, where the names changed but the count did not
(Keras numbers auto-named layers per session: ``batch_normalization_3`` in one script is
``batch_normalization_17`` in the next). A pair whose channel counts differ means the
two files are not checkpoints of one architecture: :class:`MismatchError`.

The change of each pair is measured on the saved vectors (read with h5py, no Keras):

- ``mean_shift``: max over channels of |mean_tuned - mean_base| / sqrt(var_base + eps),
  the move of the moving mean in units of the base's standard deviation (the same unit
  as BN301's data drift);
- ``std_change``: max over channels of |sd_tuned - sd_base| / sd_base with
  sd = sqrt(moving_variance + eps), the relative change of the standard deviation;
- ``gamma_change`` / ``beta_change``: max absolute change (None when scale/center is off).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .graph import Layer, ModelGraph
from .loaders import LoadError
from .loaders.arrays import BNArrays
from .measurements import BatchNormChange, CheckpointPairing


class MismatchError(LoadError):
    """The two files are readable but not two checkpoints of one model."""


@dataclass
class Pair:
    """One BN layer in both checkpoints, and what changed between them."""

    base: Layer
    tuned: Layer
    #: "path" (same path, or the same path below the nested base) or "position".
    paired_by: str
    base_arrays: BNArrays
    tuned_arrays: BNArrays
    #: ``trainable=False`` in each file; None where the format records no trainable flag
    #: (ONNX, a SavedModel's serving graph: ``ModelGraph.records_trainable``).
    frozen_base: bool | None = None
    frozen_tuned: bool | None = None

    @property
    def statistics_changed(self) -> bool:
        b, t = self.base_arrays, self.tuned_arrays
        return not (
            np.array_equal(b.moving_mean, t.moving_mean, equal_nan=True)
            and np.array_equal(b.moving_variance, t.moving_variance, equal_nan=True)
        )

    @property
    def affine_changed(self) -> bool:
        return any(_max_change(getattr(self.base_arrays, n), getattr(self.tuned_arrays, n)) for n in ("gamma", "beta"))

    def change(self) -> BatchNormChange:
        """What changed in this pair, as the ``diff`` measurement of its tuned layer."""
        b, t = self.base_arrays, self.tuned_arrays
        epsilon = float(self.tuned.config.get("epsilon", 1e-3))
        with np.errstate(all="ignore"):
            base_sd = np.sqrt(np.maximum(b.moving_variance, 0) + epsilon)
            tuned_sd = np.sqrt(np.maximum(t.moving_variance, 0) + epsilon)
            mean_shift = np.abs(t.moving_mean - b.moving_mean) / base_sd
            std_change = np.abs(tuned_sd - base_sd) / base_sd
        return BatchNormChange(
            layer=self.tuned.path,
            base=self.base.path,
            paired_by=self.paired_by,
            channels=b.channels,
            frozen_base=self.frozen_base,
            frozen_tuned=self.frozen_tuned,
            mean_shift=_largest(mean_shift),
            std_change=_largest(std_change),
            gamma_change=_max_change(b.gamma, t.gamma),
            beta_change=_max_change(b.beta, t.beta),
            statistics_changed=self.statistics_changed,
        )


@dataclass
class Checkpoints:
    """The pairing of two checkpoints' BN layers, in the tuned model's graph order."""

    base_path: str
    #: The tuned model's nested model that holds the base ("" for the same architecture).
    prefix: str
    pairs: list[Pair]
    unpaired_base: list[str] = field(default_factory=list)
    unpaired_tuned: list[str] = field(default_factory=list)

    def neighbours(self, index: int) -> list[Pair]:
        """The pairs just before and after ``pairs[index]`` (the "layers around it")."""
        return [self.pairs[i] for i in (index - 1, index + 1) if 0 <= i < len(self.pairs)]

    def measurements(self) -> list[CheckpointPairing | BatchNormChange]:
        """The pairing, then each pair's change in the tuned model's graph order."""
        pairing = CheckpointPairing(self.base_path, self.prefix, len(self.pairs), list(self.unpaired_base), list(self.unpaired_tuned))
        return [pairing, *(pair.change() for pair in self.pairs)]


def pair_checkpoints(base: ModelGraph, tuned: ModelGraph, base_path: str) -> Checkpoints:
    """Pair the BN layers of ``base`` with those of ``tuned``; read both sides' vectors.

    Raises :class:`MismatchError` when either has no BN layer, when no BN of one
    corresponds to a BN of the other by path or by position, or when a pair's channel
    counts differ; :class:`LoadError` when a BN's vectors cannot be read.
    """
    base_bns, tuned_bns = base.batchnorms(), tuned.batchnorms()
    for graph, bns, role in ((base, base_bns, "BASE"), (tuned, tuned_bns, "TUNED")):
        if not bns:
            raise MismatchError(f"{role} has no BatchNormalization layer: nothing to compare", "give two checkpoints of a model with BN layers")
        if graph.weights is None:
            raise MismatchError(f"{role} holds no weights", "save the whole model, with its weights")
    prefix, matched = _best_scope(base_bns, tuned_bns, tuned)
    scope = [l for l in tuned_bns if l.path.startswith(prefix)]
    by_base = {b.path: t for b, t in matched}
    rest_base = [b for b in base_bns if b.path not in by_base]
    taken = {t.path for _, t in matched}
    rest_tuned = [t for t in scope if t.path not in taken]
    positional = len(rest_base) == len(rest_tuned)
    if not matched and not positional:
        raise MismatchError(
            f"no BatchNormalization layer of BASE ({len(base_bns)}) matches one of TUNED ({len(tuned_bns)}) by path or by position",
            "the models look unrelated: compare a model with its own fine-tuned copy",
        )
    kinds = dict.fromkeys(by_base, "path")
    if positional:
        for b, t in zip(rest_base, rest_tuned):
            by_base[b.path] = t
            kinds[b.path] = "position"
    base_of = {t.path: b for b in base_bns for t in [by_base.get(b.path)] if t is not None}
    pairs = []
    for t in tuned_bns:  # tuned graph order
        b = base_of.get(t.path)
        if b is None:
            continue
        pair = Pair(
            b, t, kinds[b.path], base.weights.bn_arrays(b), tuned.weights.bn_arrays(t),
            frozen_base=not b.trainable if base.records_trainable else None,
            frozen_tuned=not t.trainable if tuned.records_trainable else None,
        )
        if pair.base_arrays.channels != pair.tuned_arrays.channels:
            raise MismatchError(
                f"BN {b.path!r} has {pair.base_arrays.channels} channels in BASE, its counterpart {t.path!r} "
                f"{pair.tuned_arrays.channels} in TUNED (paired by {pair.paired_by})",
                "the models are not two checkpoints of one architecture",
            )
        pairs.append(pair)
    paired_tuned = {p.tuned.path for p in pairs}
    return Checkpoints(
        base_path=base_path,
        prefix=prefix.rstrip("/"),
        pairs=pairs,
        unpaired_base=[b.path for b in base_bns if b.path not in by_base],
        unpaired_tuned=[t.path for t in tuned_bns if t.path not in paired_tuned],
    )


def _best_scope(base_bns: list[Layer], tuned_bns: list[Layer], tuned: ModelGraph) -> tuple[str, list[tuple[Layer, Layer]]]:
    """The tuned model (prefix "") or nested model ("base/") that holds the base: the one
    matching most base paths, else the one with as many BN layers as the base."""
    by_path = {l.path: l for l in tuned_bns}
    scopes = [""] + [path + "/" for path in tuned.nested]
    best: tuple[int, int, str, list] | None = None
    for prefix in scopes:
        matched = [(b, by_path[prefix + b.path]) for b in base_bns if prefix + b.path in by_path]
        same_count = sum(1 for l in tuned_bns if l.path.startswith(prefix)) == len(base_bns)
        key = (len(matched), int(same_count))
        if best is None or key > best[:2]:
            best = (*key, prefix, matched)
    assert best is not None
    return best[2], best[3]


def _largest(values: np.ndarray) -> float:
    finite = values[np.isfinite(values)]
    return round(float(finite.max()), 6) if finite.size else 0.0


def _max_change(base: np.ndarray | None, tuned: np.ndarray | None) -> float | None:
    if base is None or tuned is None:
        return None
    return _largest(np.abs(tuned - base))
