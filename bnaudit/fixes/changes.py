"""What a fix run did, built before anything is rendered: changes, refusals and the proof.

The JSON form (``FixReport.to_dict``) is documented in docs/fix.md ("JSON schema"); its
``version`` changes when a field changes meaning.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from .heldout import Heldout

SCHEMA_VERSION = 2


@dataclass
class ArrayChange:
    """One variable of a layer: ``changed`` (max |new - old|), ``added`` or ``removed`` (max |value|),
    or ``folded`` into the layer before it with the BN that held it (None: the change
    shows in that layer's arrays, not in a Δ of its own)."""

    name: str
    action: str
    max_abs_delta: float | None

    @classmethod
    def between(cls, name: str, old: np.ndarray, new: np.ndarray) -> ArrayChange:
        if not old.size:
            return cls(name, "changed", 0.0)
        delta = np.subtract(new, old)
        return cls(name, "changed", float(np.abs(delta, out=delta).max()))  # one temporary array, not two (kernels are large)

    @classmethod
    def of(cls, name: str, action: str, values: np.ndarray) -> ArrayChange:
        return cls(name, action, float(np.max(np.abs(values))) if values.size else 0.0)


@dataclass
class Change:
    """One edit of one layer (or nested model) of the copy."""

    fix: str
    layer: str
    what: str
    arrays: list[ArrayChange] = field(default_factory=list)


@dataclass
class Refusal:
    """A layer a fix was asked to handle and did not, with why."""

    fix: str
    layer: str
    why: str


@dataclass
class Proof:
    """The evidence that the copy is right, or why there is none.

    ``status``: ``passed``, ``failed`` or ``not run`` (never ``passed`` unless every
    check below ran). ``outputs_max_abs_delta``: max |copy - original| over every model
    output on ``samples`` inputs (``inputs`` says which); ``tolerance``: the bound it
    was held to (None where a change of outputs is the point, as for recalibration).
    ``remaining``: findings of the fixed codes still reported on the copy.
    """

    status: str
    detail: str = ""
    inputs: str = ""
    samples: int = 0
    outputs_max_abs_delta: float | None = None
    tolerance: float | None = None
    checked_codes: list[str] = field(default_factory=list)
    remaining: list[dict[str, str]] = field(default_factory=list)
    #: Other measurements (BN301 drift before/after...), by name.
    figures: dict[str, Any] = field(default_factory=dict)


@dataclass
class FixReport:
    """The result of ``bnaudit fix``: returned by :func:`bnaudit.fix`, rendered by the command."""

    path: str
    output: str
    format: str
    fixes: list[str]
    changes: list[Change] = field(default_factory=list)
    refused: list[Refusal] = field(default_factory=list)
    proof: Proof = field(default_factory=lambda: Proof("not run"))
    dropped_optimizer_state: bool = False
    #: False when the fixes found nothing to change: no copy was written and no proof ran.
    written: bool = True
    #: How the statistics were measured (``method``, ``passes`` over the data), for ``--recalibrate``.
    recalibration: dict[str, Any] | None = None
    #: Before/after figures on held-out data (``--verify-data``); None when not asked for.
    heldout: "Heldout | None" = None
    #: ``all_fixes`` without data: the findings only a recalibration fixes ("BN202 bn1").
    needs_data: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"version": SCHEMA_VERSION, **asdict(self)}
