"""``--absorb-bias`` (BN102): move the bias of a Dense/convolution into the BN after it.

With ``z = x + b`` feeding BN, inference computes
``gamma * (x + b - moving_mean) / sqrt(moving_variance + eps) + beta``, which equals the
same expression on ``x`` with ``moving_mean - b``; in training mode the batch mean
absorbs ``b`` by itself (Ioffe & Szegedy 2015, section 3.2). So ``use_bias=False`` plus
``moving_mean -= b`` computes exactly the same function; only float32 rounding differs.
A layer shared by several calls, each into its own BN, has its bias moved into each.
The layers are the ones BN102 reports (:func:`bnaudit.rules.layers.cancelled_bias`).
"""

from __future__ import annotations

from ..rules.layers import cancelled_bias
from .changes import ArrayChange, Change, Refusal
from .copy import ModelCopy

NAME = "absorb-bias"
#: What `bnaudit fix` says when every layer was refused.
NOTHING = "no bias can be absorbed"
CODES = ("BN102",)


def apply(copy: ModelCopy) -> tuple[list[Change], list[Refusal]]:
    graph = copy.graph
    targets: dict[str, list] = {}
    refused = []
    wrappers = {inner: layer for layer in graph for inner in layer.wrapped}
    for bn in graph.batchnorms():
        producer = cancelled_bias(graph, bn)
        if producer is None:
            continue
        inner = next((layer for layer in (producer, bn) if layer.path in wrappers), None)
        if inner is not None:  # its variables live under the wrapper's, in each writer's own layout
            wrapper = wrappers[inner.path]
            refused.append(Refusal(NAME, bn.path, f"{inner.path!r} sits inside {wrapper.class_name} {wrapper.path!r}; wrapped layers are not rewritten"))
            continue
        targets.setdefault(producer.path, []).append(bn)
    for path, bns in list(targets.items()):  # moving_mean - b keeps a NaN: the bias stays where BN201 can be fixed
        invalid = {bn.path: copy.invalid_statistics(bn) for bn in bns}
        first = next((where for where, why in invalid.items() if why), None)
        if first is not None:  # a layer shared into several BNs keeps its bias for all of them
            refused += [Refusal(NAME, bn.path, invalid[bn.path] or f"{path!r} also feeds {first!r}, whose statistics are invalid") for bn in bns]
            del targets[path]
    changes = []
    for path, bns in targets.items():
        producer = graph[path]
        bias = copy.read(producer, ("bias",))["bias"]
        for bn in bns:
            old = copy.read(bn, ("moving_mean",))["moving_mean"]
            new = old - bias
            copy.write(bn, "moving_mean", new)
            changes.append(Change(NAME, bn.path, f"moving_mean -= bias of {path!r}", [ArrayChange.between("moving_mean", old, new)]))
        copy.drop_bias(producer)
        copy.entry(path)["config"]["use_bias"] = False
        changes.append(Change(NAME, path, "use_bias=False", [ArrayChange.of("bias", "removed", bias)]))
    copy.refresh()
    return changes, refused
