"""``--unbake`` (BN106): remove a fixed ``training=True`` from the saved calls of BN layers.

Only the config changes: the call keyword is deleted (not set to False), so the layer
again follows the ``training`` flag of the call of the whole model, as Keras intends.
Where the flag sits on the call of a nested model it is removed there, which also
frees the other layers inside it (Dropout too) from it.
"""

from __future__ import annotations

from typing import Any

from ..rules.layers import baked_training
from .changes import Change, Refusal
from .copy import ModelCopy

NAME = "unbake"
CODES = ("BN106",)


def apply(copy: ModelCopy) -> tuple[list[Change], list[Refusal]]:
    sources = {baked_training(copy.graph, bn) for bn in copy.graph.batchnorms()} - {None}
    changes = []
    for path in sorted(sources):
        entry = copy.entry(path)
        removed = sum(_drop_training(node) for node in entry.get("inbound_nodes") or [])
        changes.append(Change(NAME, path, f"removed training=True from {removed} call(s)"))
    copy.refresh()
    return changes, []


def _drop_training(node: Any) -> int:
    """Delete ``training: true`` from one inbound node (Keras 3 ``kwargs`` or Keras 2 item dicts)."""
    if isinstance(node, dict):
        kwargs = node.get("kwargs") or {}
        return int(kwargs.pop("training", None) is True) if kwargs.get("training") is True else 0
    removed = 0
    for item in node if isinstance(node, list) else []:
        if isinstance(item, list) and len(item) > 3 and isinstance(item[3], dict) and item[3].get("training") is True:
            del item[3]["training"]
            removed += 1
    return removed
