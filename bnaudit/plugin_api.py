"""Everything a plugin author may import: the public, stable surface for plugins.

A plugin (entry-point group ``bnaudit``, or ``-p module``) imports from here and from
:mod:`bnaudit` only; the modules behind these names may move between releases, these
names do not. The hooks a plugin can implement, and when each is called, are in
:mod:`bnaudit.hookspecs` (and docs/plugins.md).

Rules
    :func:`rule` turns a check function into a :class:`Rule`; the check receives a
    :class:`RuleContext` and yields :class:`Finding` (``ctx.finding(...)``),
    :class:`Measurement` (a plain topic and JSON value, shown as generic tables) and
    :class:`Note` values, or raises :class:`SkipRule`. The
    graph helpers (:data:`CONV_RANKS`, :func:`channel_axis_mismatch`) are the ones
    bnaudit's own placement rules use.
Loaders
    return a :class:`ModelGraph` from ``bnaudit_load_model``, or raise :class:`LoadError`.
Reporters
    a :class:`Reporter` renders a :class:`Report` (its results are :class:`AuditResult`
    values, each with one :class:`RuleOutcome` per rule, and bnaudit's typed
    measurements, read by kind: ``result.measured(BatchNormDrift)``; see
    :mod:`bnaudit.measurements`); :func:`summary_line` and
    :func:`exit_code` give the verdict exactly as ``bnaudit check`` states it.
"""

from __future__ import annotations

from .context import RuleContext
from .engine import exit_code
from .findings import ExitCode, Finding, Severity
from .graph import Layer, ModelGraph, build_graph, is_identity
from .hookspecs import hookimpl
from .loaders import LoadError
from .reporters import RenderError, Report, Reporter
from .reporters.text import summary_line
from .result import AuditResult, ModelError, RuleOutcome, Status
from .measurements import (
    BatchNormDrift,
    BatchNormNeighbourhood,
    BatchNormNotMeasured,
    CallPathComparison,
    DeviceComparison,
    InferenceSetup,
    Measured,
    Measurement,
    StatisticsPass,
    TrainInferenceComparison,
)
from .rule import Note, Rule, SkipRule, rule
from .rules.layers import CONV_RANKS, channel_axis_mismatch

__all__ = [
    "AuditResult",
    "BatchNormDrift",
    "BatchNormNeighbourhood",
    "BatchNormNotMeasured",
    "CONV_RANKS",
    "CallPathComparison",
    "DeviceComparison",
    "ExitCode",
    "Finding",
    "InferenceSetup",
    "Layer",
    "LoadError",
    "Measured",
    "Measurement",
    "ModelError",
    "ModelGraph",
    "Note",
    "RenderError",
    "Report",
    "Reporter",
    "Rule",
    "RuleContext",
    "RuleOutcome",
    "SkipRule",
    "Severity",
    "StatisticsPass",
    "Status",
    "TrainInferenceComparison",
    "build_graph",
    "channel_axis_mismatch",
    "exit_code",
    "hookimpl",
    "is_identity",
    "rule",
    "summary_line",
]
