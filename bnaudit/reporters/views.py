"""What the HTML report shows, built as plain objects before any template runs.

Templates stay simple (and overridable) because everything that needs a decision is
made here: verdicts, grouping of findings by severity and rule, the layer sequence
around each finding, and tables and charts from the measurements.

Measurements come from rules that evolve independently (statistics, inference, third-
party plugins), so they are read generically and defensively: a per-layer record with
numbers becomes a table row, per-channel arrays become charts, nested mappings become
tables; whatever is absent is omitted, and nothing here raises on an unexpected shape.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any, Iterator

from markupsafe import Markup

from ..findings import Finding, Severity
from ..result import AuditResult
from ..rule import Rule
from . import Report
from .json import without_timings
from .svg import bar_chart, finite, line_chart, severity_bar

#: Measurement topics with their own section; any other topic is shown as tables.
KNOWN_TOPICS = ("layers", "statistics", "inference")
#: Rows shown per generic table; the rest are counted, not rendered (report size).
MAX_ROWS = 200
#: Preferred per-layer drift number, by the first of these its name contains.
DRIFT_HINTS = ("drift", "score", "kl", "shift")
#: Per-channel arrays that compare or spread rather than describe (``mean_shift``,
#: ``batch_mean_std``): charted apart from the means and variances, whose scale they do
#: not share.
COMPARISON_WORDS = frozenset({"shift", "ratio", "kl", "score", "drift", "log", "diff", "delta", "std", "spread"})


@dataclass
class Table:
    title: str
    columns: list[str]
    rows: list[list[str]]
    hidden_rows: int = 0
    #: Rows whose record says it did not pass (``"passed": false``), highlighted.
    failed_rows: frozenset[int] = frozenset()


@dataclass
class Node:
    """A layer in the sequence drawn around a finding."""

    path: str
    class_name: str
    marked: bool = False  # the layer the finding is about
    batchnorm: bool = False  # the BN the sequence is centred on
    involved: bool = False  # named in the finding's details (e.g. the Dropout of BN101)


@dataclass
class LayerStatistics:
    layer: str
    values: dict[str, str]
    charts: list[tuple[str, Markup]]
    marked: bool = False


@dataclass
class StatisticsView:
    columns: list[str]
    layers: list[LayerStatistics]
    drift_key: str | None
    drift_chart: Markup | None
    #: Whatever else the topic holds (thresholds, totals), as tables.
    tables: list[Table]


@dataclass
class ModelView:
    result: AuditResult
    anchor: str
    verdict: str
    counts: dict[str, int]
    severity_chart: Markup
    skipped: list[tuple[str, list[str]]]
    devices: list[str]
    #: Every BN layer with the sequence around it and the codes of its findings.
    batchnorms: list[tuple[str, list[list[Node]], list[str]]] = field(default_factory=list)
    statistics: StatisticsView | None = None
    inference: list[Table] = field(default_factory=list)
    other: list[Table] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def path(self) -> str:
        return self.result.path

    @property
    def meta(self) -> dict[str, Any]:
        return self.result.meta


@dataclass
class Entry:
    model: ModelView
    finding: Finding
    sequence: list[list[Node]]
    details: list[tuple[str, str]]


@dataclass
class RuleGroup:
    code: str
    name: str
    rule: Rule | None
    entries: list[Entry]

    @property
    def docs(self) -> dict[str, str]:
        return self.rule.doc_sections() if self.rule else {}


@dataclass
class SeverityGroup:
    severity: Severity
    rules: list[RuleGroup]

    @property
    def count(self) -> int:
        return sum(len(r.entries) for r in self.rules)


def build(report: Report) -> dict[str, Any]:
    """The template context: models (summary cards and details) and grouped findings."""
    models = [model_view(result, report, f"model-{i + 1}") for i, result in enumerate(report.results)]
    return {"models": models, "groups": group_findings(models, report), "summary": report.summary()}


def model_view(result: AuditResult, report: Report, anchor: str) -> ModelView:
    measurements = result.measurements if isinstance(result.measurements, dict) else {}
    if not report.options.get("timestamp"):
        measurements = without_timings(measurements)
    inference = measurements.get("inference")
    skipped: dict[str, list[str]] = {}
    for item in result.skipped:
        skipped.setdefault(item.reason, []).append(item.code)
    marked = {f.layer for f in result.findings}
    view = ModelView(
        result=result,
        anchor=anchor,
        verdict=verdict(result, report.fail_on),
        counts=result.counts(),
        severity_chart=severity_bar({k: v for k, v in reversed(result.counts().items())}),
        skipped=sorted(skipped.items()),
        devices=devices(inference),
        statistics=statistics_view(measurements.get("statistics"), marked),
        notes=list(result.notes),
    )
    neighbourhoods = measurements.get("layers")
    if isinstance(neighbourhoods, dict):
        codes: dict[str, list[str]] = {}
        for f in result.findings:
            codes.setdefault(f.layer, []).append(f.code)
        for bn in neighbourhoods:
            around = sequence(neighbourhoods, bn)
            for node in (n for step in around for n in step):
                node.marked = node.marked and bn in codes
            view.batchnorms.append((bn, around, sorted(set(codes.get(bn, [])))))
    if inference is not None:
        view.inference = topic_tables("inference", inference, key_names=("device", "output"))
    for topic, value in measurements.items():
        if topic not in KNOWN_TOPICS:
            view.other += topic_tables(topic, value)
    return view


def verdict(result: AuditResult, fail_on: Severity) -> str:
    if result.unreadable:
        return "unreadable"
    if result.errors:
        return "incomplete"
    if any(f.severity >= fail_on for f in result.findings):
        return "fail"
    return "pass"


def group_findings(models: list[ModelView], report: Report) -> list[SeverityGroup]:
    groups = []
    for severity in sorted(Severity, reverse=True):
        by_rule: dict[str, RuleGroup] = {}
        for model in models:
            neighbourhoods = model.result.measurements.get("layers") if isinstance(model.result.measurements, dict) else None
            for finding in model.result.findings:
                if finding.severity != severity:
                    continue
                group = by_rule.setdefault(finding.code, RuleGroup(finding.code, finding.name, report.rules.get(finding.code), []))
                around = sequence(neighbourhoods, finding.layer, finding.details)
                group.entries.append(Entry(model, finding, around, detail_rows(finding.details)))
        if by_rule:
            groups.append(SeverityGroup(severity, [by_rule[code] for code in sorted(by_rule)]))
    return groups


# -- the layer sequence around a finding ------------------------------------------------


def sequence(neighbourhoods: Any, layer: str, details: dict[str, Any] | None = None) -> list[list[Node]]:
    """producer(s) -> BN -> consumer(s) around ``layer``, which is marked.

    Uses the neighbourhoods the engine records; a layer that is not a BN (e.g. BN501's
    Lambda) is shown in the sequence of a BN next to it, if any. Layers named in a
    finding's ``details`` are marked as involved.
    """
    if not layer:
        return []
    try:
        centre = _centre(neighbourhoods, layer)
        if centre is None:
            return [[Node(layer, "", marked=True)]]
        around = neighbourhoods[centre]
        steps = [*around.get("before", []), [[centre, around.get("class", "")]], *around.get("after", [])]
        involved = set(_strings(details or {}))
        return [
            [Node(str(path), str(cls), marked=path == layer, batchnorm=path == centre, involved=path in involved) for path, cls in step]
            for step in steps
        ]
    except (AttributeError, TypeError, ValueError, KeyError):  # a hand-edited or foreign document
        return [[Node(layer, "", marked=True)]]


def _centre(neighbourhoods: Any, layer: str) -> str | None:
    if not isinstance(neighbourhoods, dict):
        return None
    if layer in neighbourhoods:
        return layer
    for bn, around in neighbourhoods.items():
        steps = [*around.get("before", []), *around.get("after", [])]
        if any(item[0] == layer for step in steps for item in step):
            return bn
    return None


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)


def detail_rows(details: dict[str, Any]) -> list[tuple[str, str]]:
    return [(key, format_value(value)) for key, value in _flatten(details).items()]


# -- generic measurement readers ---------------------------------------------------------


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


def _flatten(value: dict[str, Any], prefix: str = "", depth: int = 0) -> dict[str, Any]:
    """Nested mappings as dotted keys (three levels at most; deeper stays one cell)."""
    flat: dict[str, Any] = {}
    for key, item in value.items():
        name = f"{prefix}{key}"
        if isinstance(item, dict) and depth < 3:
            flat.update(_flatten(item, name + ".", depth + 1))
        else:
            flat[name] = item
    return flat


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_series(value: Any) -> bool:
    return isinstance(value, list) and len(value) > 1 and all(_is_number(v) or v is None for v in value)


def topic_tables(topic: str, value: Any, key_names: tuple[str, ...] = ()) -> list[Table]:
    """Tables for one measurement topic: its scalars as a settings table, then one table
    per entry that holds records (a list of objects, or nested mappings)."""
    if not isinstance(value, dict):
        table = records_table(_title(topic), value, key_names)
        return [table] if table else []
    tables = []
    holds_records = [k for k, v in value.items() if isinstance(v, dict) or (isinstance(v, list) and any(isinstance(i, dict) for i in v))]
    scalars = [[str(k), format_value(v)] for k, v in value.items() if k not in holds_records]
    if scalars:
        tables.append(Table(f"{_title(topic)}: settings", ["name", "value"], scalars))
    for key in holds_records:
        table = records_table(f"{_title(topic)}: {_title(key)}", value[key], key_names)
        if table:
            tables.append(table)
    return tables


def _title(key: str) -> str:
    return str(key).replace("_", " ").capitalize()


def records_table(title: str, value: Any, key_names: tuple[str, ...] = ()) -> Table | None:
    records = list(_records(value, ()))
    if not records:
        return None
    depth = max(len(keys) for keys, _ in records)
    key_columns = [key_names[i] if i < len(key_names) else f"key {i + 1}" for i in range(depth)]
    columns: list[str] = []
    for _, fields in records:
        columns += [c for c in fields if c not in columns]
    rows = [
        [*keys, *[""] * (depth - len(keys)), *[format_value(fields[c]) if c in fields else "" for c in columns]]
        for keys, fields in records
    ]
    failed = frozenset(i for i, (_, fields) in enumerate(records[:MAX_ROWS]) if fields.get("passed") is False)
    return Table(title, key_columns + columns, rows[:MAX_ROWS], max(len(rows) - MAX_ROWS, 0), failed)


def _records(value: Any, keys: tuple[str, ...]) -> Iterator[tuple[tuple[str, ...], dict[str, Any]]]:
    if isinstance(value, list):
        for item in value:
            if isinstance(item, dict):
                yield keys, _flatten(item)
    elif isinstance(value, dict) and value:
        if all(isinstance(v, (dict, list)) for v in value.values()) and len(keys) < 4:
            for key, item in value.items():
                yield from _records(item, keys + (str(key),))
        else:
            yield keys, _flatten(value)


def devices(inference: Any) -> list[str]:
    """Device names from the inference measurements (a list of names or of objects)."""
    if not isinstance(inference, dict):
        return []
    found = inference.get("devices")
    if isinstance(found, dict):
        found = list(found)
    if not isinstance(found, list):
        return []
    names = []
    for item in found:
        if isinstance(item, dict):
            item = item.get("name") or item.get("device")
        if item is not None:
            names.append(str(item))
    return names


def statistics_view(statistics: Any, marked: set[str]) -> StatisticsView | None:
    """Per-layer numbers as a table and one drift chart; per-channel arrays as charts."""
    if statistics is None:
        return None
    records, rest = _layer_records(statistics)
    layers: list[LayerStatistics] = []
    columns: list[str] = []
    numeric: dict[str, dict[str, float]] = {}
    for layer, record in records:
        flat = _flatten(record)
        values = {k: format_value(v) for k, v in flat.items() if not _is_series(v) and not isinstance(v, (dict, list))}
        columns += [c for c in values if c not in columns]
        numeric[layer] = {k: float(v) for k, v in flat.items() if _is_number(v)}
        series = {k: v for k, v in flat.items() if _is_series(v)}
        layers.append(LayerStatistics(layer, values, channel_charts(layer, series), layer in marked))
    drift_key = _drift_key(numeric)
    chart = None
    if drift_key:
        chart = bar_chart(
            [l.layer for l in layers],
            [numeric[l.layer].get(drift_key) for l in layers],
            label=f"{drift_key} per BN layer, input to output",
            marked=frozenset(l.layer for l in layers if l.marked),
        )
    tables = topic_tables("statistics", rest) if rest else []
    if not layers and not tables:
        return None
    return StatisticsView(columns, layers, drift_key, chart, tables)


def _layer_records(statistics: Any) -> tuple[list[tuple[str, dict]], Any]:
    """Find the per-layer part: ``{"layers": ...}``, ``{path: {...}}`` or ``[{"layer": ...}]``."""
    if isinstance(statistics, dict):
        for key in ("layers", "per_layer", "by_layer"):
            if isinstance(statistics.get(key), (dict, list)):
                records, _ = _layer_records(statistics[key])
                return records, {k: v for k, v in statistics.items() if k != key}
        if statistics and all(isinstance(v, dict) for v in statistics.values()):
            return [(str(k), v) for k, v in statistics.items()], {}
        return [], statistics
    if isinstance(statistics, list):
        records = []
        for i, item in enumerate(statistics):
            if isinstance(item, dict):
                name = item.get("layer") or item.get("path") or item.get("name") or f"#{i}"
                records.append((str(name), {k: v for k, v in item.items() if k not in ("layer", "path")}))
        return records, {}
    return [], None


def _drift_key(numeric: dict[str, dict[str, float]]) -> str | None:
    keys: list[str] = []
    for values in numeric.values():
        keys += [k for k in values if k not in keys]
    for hint in DRIFT_HINTS:
        for key in keys:
            if hint in key.lower():
                return key
    return None


def channel_charts(layer: str, series: dict[str, list]) -> list[tuple[str, Markup]]:
    """Means together, variances together, anything else per channel together.

    Legends use the last part of a dotted name (``per_channel.data_mean`` -> ``data_mean``)
    when that is still unique.
    """
    short = {name: name.rpartition(".")[2] for name in series}
    if len(set(short.values())) < len(short):
        short = {name: name for name in series}
    groups: dict[str, dict[str, list]] = {"mean": {}, "variance": {}, "per channel": {}}
    for name, values in series.items():
        words = set(re.split(r"[^a-z]+", short[name].lower()))
        if words & COMPARISON_WORDS:
            kind = "per channel"
        elif words & {"mean", "mu"}:
            kind = "mean"
        elif words & {"var", "variance", "sigma"}:
            kind = "variance"
        else:
            kind = "per channel"
        groups[kind][short[name]] = values
    charts = []
    for kind, members in groups.items():
        if members and finite(v for values in members.values() for v in values):
            charts.append((kind, line_chart(members, label=f"{layer}: {kind} per channel")))
    return charts
