"""Measurements as tables and charts for the HTML report, each kind by its own renderer.

The typed kinds of :mod:`bnaudit.measurements` each have one renderer here, listed in
:data:`RENDERERS` with the section of the page it fills: the statistics pass and the
per-layer drift (a per-layer table, a drift chart with the threshold the rule applied,
per-channel charts), the train/inference comparison, the inference set-up and its
comparison tables. Adding a kind is its class plus one function here. A plugin's plain
:class:`~bnaudit.measurements.Measurement` (or a topic of a hand-edited document that is
no known kind) is shown generically: mappings of scalars as a settings table, records
as rows; nothing here raises on an unexpected shape, and every string is escaped by the
template.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, Sequence

from markupsafe import Markup

from ..measurements import (
    BatchNormChange,
    BatchNormDrift,
    BatchNormNeighbourhood,
    BatchNormNotMeasured,
    CallPathComparison,
    CheckpointPairing,
    ComparisonRow,
    DeviceComparison,
    InferenceSetup,
    Measured,
    Measurement,
    StatisticsPass,
    TrainInferenceComparison,
    finite_number,
)
from .json import without_timings
from .labels import label
from .svg import bar_chart, finite, line_chart

#: Rows shown per table; the rest are counted, not rendered (report size).
MAX_ROWS = 200
#: Per-channel series of :class:`BatchNormDrift` charted together: the two means, the two
#: variances; the others (shifts, ratios, spreads) share neither's scale.
CHANNEL_GROUPS = (
    ("mean per channel", ("moving_mean", "data_mean")),
    ("variance per channel", ("moving_variance", "data_variance")),
)
#: The per-layer columns of the statistics table, in :class:`BatchNormDrift`'s order.
DRIFT_COLUMNS = (
    "channels", "values_per_channel", "drift_score", "worst_channel", "worst_channel_kl", "mean_shift",
    "max_mean_shift", "variance_ratio", "max_abs_log_variance_ratio", "dead_channels", "full_batches",
    "batch_mean_spread", "batch_variance_spread",
)
#: The columns of a comparison row (:class:`~bnaudit.analysis.tolerances.Comparison`).
COMPARISON_COLUMNS = ("output", "run", "reference", "max_abs", "mean_abs", "p99_abs", "max_rel", "mean_rel", "p99_rel", "mismatched", "elements")
#: What each call-path table compares, and the rule that judges it.
CALL_PATH_TITLES = {
    "batch_dependence": "each sample alone against in its batch (BN402)",
    "call_vs_predict": "model(x) against model.predict (BN403)",
    "repeatability": "a repeated run against the first (BN404)",
}


@dataclass
class Table:
    title: str
    columns: list[str]
    rows: list[list[str]]
    hidden_rows: int = 0
    #: Rows whose record says it did not pass (``"passed": false``), highlighted.
    failed_rows: frozenset[int] = frozenset()


def format_value(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4g}" if math.isfinite(value) else str(value)
    if isinstance(value, (list, tuple)):
        if len(value) > 8:
            return f"[{len(value)} values]"
        return ", ".join(format_value(v) for v in value) or "—"
    return str(value)


def flatten(value: dict[str, Any], prefix: str = "", depth: int = 0) -> dict[str, Any]:
    """Nested mappings as dotted keys (three levels at most; deeper stays one cell)."""
    flat: dict[str, Any] = {}
    for key, item in value.items():
        name = f"{prefix}{key}"
        if isinstance(item, dict) and depth < 3:
            flat.update(flatten(item, name + ".", depth + 1))
        else:
            flat[name] = item
    return flat


def topic_tables(topic: str, value: Any, key_names: tuple[str, ...] = ()) -> list[Table]:
    """Tables for one measurement topic: its scalars as a settings table, then one table
    per entry that holds records (a list of objects, or nested mappings)."""
    if not isinstance(value, dict):
        table = records_table(_title(topic), value, key_names)
        return [table] if table else []
    tables = []
    holds_records = [k for k, v in value.items() if isinstance(v, dict) or (isinstance(v, list) and any(isinstance(i, dict) for i in v))]
    scalars = [[label(k), format_value(v)] for k, v in value.items() if k not in holds_records]
    if scalars:
        tables.append(Table(f"{_title(topic)}: settings", ["setting", "value"], scalars))
    for key in holds_records:
        table = records_table(f"{_title(topic)}: {_title(key)}", value[key], key_names)
        if table:
            tables.append(table)
    return tables


def _title(key: str) -> str:
    words = label(key)
    return words[:1].upper() + words[1:]


def records_table(title: str, value: Any, key_names: tuple[str, ...] = ()) -> Table | None:
    records = list(_records(value, ()))
    if not records:
        return None
    depth = max(len(keys) for keys, _ in records)
    key_columns = [key_names[i] if i < len(key_names) else f"key {i + 1}" for i in range(depth)]
    columns: list[str] = []
    for _, fields in records:
        columns += [c for c in fields if c not in columns and c != "passed"]
    judged = any(isinstance(fields.get("passed"), bool) for _, fields in records)  # the verdict leads the row
    rows = [
        [
            *([_passed(fields.get("passed"))] if judged else []),
            *keys, *[""] * (depth - len(keys)),
            *[format_value(fields[c]) if c in fields else "" for c in columns],
        ]
        for keys, fields in records
    ]
    failed = frozenset(i for i, (_, fields) in enumerate(records[:MAX_ROWS]) if fields.get("passed") is False)
    headers = (["verdict"] if judged else []) + key_columns + [label(c) for c in columns]
    return Table(title, headers, rows[:MAX_ROWS], max(len(rows) - MAX_ROWS, 0), failed)


def _passed(value: Any) -> str:
    return {True: "within tolerance", False: "FAILS: beyond tolerance"}.get(value, "not judged")


def _records(value: Any, keys: tuple[str, ...]) -> Iterator[tuple[tuple[str, ...], dict[str, Any]]]:
    if isinstance(value, list):
        for item in value:
            if isinstance(item, dict):
                yield keys, flatten(item)
    elif isinstance(value, dict) and value:
        if all(isinstance(v, (dict, list)) for v in value.values()) and len(keys) < 4:
            for key, item in value.items():
                yield from _records(item, keys + (str(key),))
        else:
            yield keys, flatten(value)


@dataclass
class LayerRow:
    """One BN layer's row of the statistics table, and its per-channel charts."""

    layer: str
    values: dict[str, str]
    charts: list[tuple[str, Markup]]
    #: Codes of the findings on this layer (any rule), which lead its row.
    codes: tuple[str, ...] = ()

    @property
    def marked(self) -> bool:
        return bool(self.codes)

    @property
    def verdict(self) -> str:
        return f"finding: {', '.join(self.codes)}" if self.codes else "no finding"


@dataclass
class StatisticsView:
    columns: list[str]
    layers: list[LayerRow]
    drift_key: str | None
    drift_chart: Markup | None
    #: How the statistics were measured, BN302's comparison, as tables.
    tables: list[Table]
    #: Column and chart names of this view where they differ from :mod:`.labels`' words.
    labels: dict[str, str] = field(default_factory=dict)


@dataclass
class Sections:
    """What a model's measurements put on the page, section by section."""

    statistics: StatisticsView | None = None
    #: ``bnaudit diff``'s per-layer change since the base checkpoint, charted by mean shift.
    diff: StatisticsView | None = None
    inference: list[Table] = field(default_factory=list)
    devices: list[str] = field(default_factory=list)
    other: list[Table] = field(default_factory=list)


def sections(
    items: Iterable[Measured | Measurement],
    codes: dict[str, list[str]],
    threshold: tuple[float, str] | None = None,
    timings: bool = False,
) -> Sections:
    """Every measurement of one model, each kind by its renderer, the plain ones generically.

    ``codes`` maps a layer to the codes of its findings (its row leads with them);
    ``threshold`` is (the drift score limit BN301 applied, its label), drawn on the drift
    chart; ``timings`` shows durations (``--timestamp``).
    """
    items = list(items)
    by_kind: dict[type, list] = {}
    plain: dict[str, list[Any]] = {}
    for item in items:
        if isinstance(item, Measurement):
            plain.setdefault(item.topic, []).append(item.value)
        else:
            by_kind.setdefault(type(item), []).append(item)
    by_kind.pop(BatchNormNeighbourhood, None)  # drawn as the layer sequences (views.sequence)
    page = Sections()
    page.statistics = statistics_view(by_kind.pop(BatchNormDrift, []) + by_kind.pop(BatchNormNotMeasured, []), codes, threshold)
    page.diff = change_view(by_kind.pop(BatchNormChange, []), codes)
    for kind, (section, render) in RENDERERS.items():
        if kind in by_kind:
            tables = render(by_kind.pop(kind), timings)
            if section in ("statistics", "diff"):
                view = getattr(page, section) or StatisticsView([], [], None, None, [])
                view.tables += tables
                setattr(page, section, view)
            else:
                getattr(page, section).extend(tables)
    for kind, values in by_kind.items():  # a typed kind no renderer knows (a plugin's): its rows as given
        page.other += topic_tables(kind.kind or kind.__name__, [value.to_dict() for value in values])
    for setup in (item for item in items if isinstance(item, InferenceSetup)):
        page.devices = [str(d) for d in setup.devices] if isinstance(setup.devices, list) else []
    for topic, values in plain.items():
        for value in values:
            page.other += topic_tables(topic, value if timings else without_timings(value))
    return page


# -- one renderer per kind ----------------------------------------------------------------


def statistics_view(layers: Sequence[BatchNormDrift | BatchNormNotMeasured], codes: dict[str, list[str]], threshold: tuple[float, str] | None = None) -> StatisticsView | None:
    """The per-layer table, one drift-score chart (with the threshold BN301 applied) and the
    per-channel charts of each layer."""
    if not layers:
        return None
    not_measured = any(isinstance(layer, BatchNormNotMeasured) for layer in layers)
    columns = list(DRIFT_COLUMNS) + (["not_measured"] if not_measured else [])
    rows = []
    for layer in layers:
        values = {c: format_value(getattr(layer, c)) for c in columns if hasattr(layer, c)}
        per_channel = layer.per_channel if isinstance(layer, BatchNormDrift) else None
        rows.append(LayerRow(layer.layer, values, channel_charts(layer.layer, per_channel), tuple(sorted(set(codes.get(layer.layer, []))))))
    drifts = [finite_number(getattr(layer, "drift_score", None)) for layer in layers]
    chart = None
    if any(d is not None for d in drifts):
        limit = {"threshold": threshold[0], "threshold_label": threshold[1]} if threshold else {}
        chart = bar_chart(
            [layer.layer for layer in layers],
            drifts,
            label=f"{label('drift_score')} per BN layer, input to output",
            marked=frozenset(row.layer for row in rows if row.marked),
            **limit,
        )
    return StatisticsView(columns, rows, "drift_score" if chart else None, chart, [])


#: The per-layer columns of the change table (:class:`BatchNormChange`), with their words.
CHANGE_COLUMNS = {
    "base": "base layer",
    "paired_by": "paired by",
    "channels": "channels",
    "frozen_base": "frozen in base",
    "frozen_tuned": "frozen in tuned",
    "mean_shift": "largest moving-mean shift (base σ)",
    "std_change": "largest relative change of σ",
    "gamma_change": "largest |Δ gamma|",
    "beta_change": "largest |Δ beta|",
    "statistics_changed": "moving statistics changed",
}


def change_view(changes: Sequence[BatchNormChange], codes: dict[str, list[str]]) -> StatisticsView | None:
    """``bnaudit diff``: one row per paired BN layer and a chart of the moving mean's
    largest shift, in the base's standard deviations (:mod:`bnaudit.checkpoints`)."""
    if not changes:
        return None
    rows = [
        LayerRow(change.layer, {c: format_value(getattr(change, c)) for c in CHANGE_COLUMNS}, [], tuple(sorted(set(codes.get(change.layer, [])))))
        for change in changes
    ]
    chart = bar_chart(
        [change.layer for change in changes],
        [finite_number(change.mean_shift) for change in changes],
        label=f"{CHANGE_COLUMNS['mean_shift']} per BN layer, input to output",
        marked=frozenset(row.layer for row in rows if row.marked),
    )
    return StatisticsView(list(CHANGE_COLUMNS), rows, "mean_shift", chart, [], labels=CHANGE_COLUMNS)


def pairing_tables(pairings: list[CheckpointPairing], timings: bool) -> list[Table]:
    """How the base checkpoint's BN layers were paired with the tuned model's."""
    rows = [[label(k), format_value(v)] for k, v in pairings[-1].to_dict().items()]
    return [Table("Pairing with the base checkpoint", ["setting", "value"], rows)]


def channel_charts(layer: str, per_channel: Any) -> list[tuple[str, Markup]]:
    """The means together, the variances together, the other series together."""
    if not isinstance(per_channel, dict):
        return []
    series = {name: values for name, values in per_channel.items() if isinstance(values, list) and finite(values)}
    grouped = {name for _, members in CHANNEL_GROUPS for name in members}
    groups = [(title, {n: series[n] for n in members if n in series}) for title, members in CHANNEL_GROUPS]
    groups.append(("other numbers per channel", {n: v for n, v in series.items() if n not in grouped}))
    return [(title, line_chart(members, label=f"{layer}: {title}")) for title, members in groups if members]


def pass_tables(passes: list[StatisticsPass], timings: bool) -> list[Table]:
    """How the statistics were measured: samples, batches, source, order."""
    rows = [[label(k), format_value(v)] for k, v in passes[-1].to_dict().items() if timings or k != "seconds"]
    return [Table("Statistics: how they were measured", ["setting", "value"], rows)]


def train_inference_tables(compared: list[TrainInferenceComparison], timings: bool) -> list[Table]:
    """BN302's comparison of outputs with BN on batch and on moving statistics."""
    rows = [[label(k), format_value(v)] for k, v in compared[-1].to_dict().items()]
    return [Table("Training mode against inference mode (BN302)", ["measure", "value"], rows)]


def setup_tables(setups: list[InferenceSetup], timings: bool) -> list[Table]:
    """How the re-runs were made: devices, reference, tolerance, inputs (durations with ``--timestamp``)."""
    setup = setups[-1]
    fields = {k: v for k, v in setup.to_dict().items() if timings or k != "seconds"}
    return [Table("Inference: how the re-runs were made", ["setting", "value"], [[label(k), format_value(v)] for k, v in flatten(fields).items()])]


def device_tables(rows: list[DeviceComparison], timings: bool) -> list[Table]:
    """BN401's device table: each output on each device against the reference run."""
    return [comparison_table("Inference: each device against the reference (BN401)", rows)]


def call_path_tables(rows: list[CallPathComparison], timings: bool) -> list[Table]:
    """BN402-BN404: one table per check, in the order the re-runs made them."""
    checks = dict.fromkeys(row.check for row in rows)
    return [comparison_table(f"Inference: {CALL_PATH_TITLES.get(c, label(c))}", [r for r in rows if r.check == c], call_path=True) for c in checks]


def comparison_table(title: str, rows: Sequence[ComparisonRow], call_path: bool = False) -> Table:
    """Comparison rows with their verdict first; failing rows highlighted."""
    columns = list(COMPARISON_COLUMNS) + (["path"] if call_path else [])
    cells = [
        [_passed(row.passed), *(format_value(getattr(row.comparison, c)) for c in columns), _worst(row.comparison)]
        for row in rows
    ]
    failed = frozenset(i for i, row in enumerate(rows[:MAX_ROWS]) if not row.passed)
    return Table(title, ["verdict", *(label(c) for c in columns), label("worst")], cells[:MAX_ROWS], max(len(cells) - MAX_ROWS, 0), failed)


def _worst(comparison: Any) -> str:
    try:
        return comparison.describe_worst()
    except (KeyError, TypeError, ValueError):  # a worst element read back from an edited document
        return format_value(comparison.worst)


#: Typed kind -> (the page section it fills, its renderer). The per-layer drift and the
#: BN neighbourhoods have views of their own (:func:`statistics_view`, ``views.sequence``).
RENDERERS: dict[type, tuple[str, Callable[[list, bool], list[Table]]]] = {
    StatisticsPass: ("statistics", pass_tables),
    TrainInferenceComparison: ("statistics", train_inference_tables),
    InferenceSetup: ("inference", setup_tables),
    DeviceComparison: ("inference", device_tables),
    CallPathComparison: ("inference", call_path_tables),
    CheckpointPairing: ("diff", pairing_tables),
}
