"""Measurements as tables and charts, read generically and defensively.

They come from rules that evolve independently (statistics, inference, third-party
plugins), so no shape is assumed: a per-layer record with numbers becomes a table row,
per-channel arrays become charts, nested mappings become tables; whatever is absent is
omitted, and nothing here raises on an unexpected shape.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Iterator

from markupsafe import Markup

from .labels import label
from .svg import bar_chart, finite, line_chart

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
class LayerStatistics:
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
    layers: list[LayerStatistics]
    drift_key: str | None
    drift_chart: Markup | None
    #: Whatever else the topic holds (thresholds, totals), as tables.
    tables: list[Table]


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


def statistics_view(statistics: Any, codes: dict[str, list[str]], thresholds: dict[str, tuple[float, str]] | None = None) -> StatisticsView | None:
    """Per-layer numbers as a table and one drift chart; per-channel arrays as charts.

    ``codes`` maps a layer to the codes of its findings (its row leads with them);
    ``thresholds`` maps a measurement key to (the limit a rule applied to it, its
    label), drawn on the drift chart when that key is the one charted.
    """
    if statistics is None:
        return None
    records, rest = _layer_records(statistics)
    layers: list[LayerStatistics] = []
    columns: list[str] = []
    numeric: dict[str, dict[str, float]] = {}
    for layer, record in records:
        flat = flatten(record)
        values = {k: format_value(v) for k, v in flat.items() if not _is_series(v) and not isinstance(v, (dict, list))}
        columns += [c for c in values if c not in columns]
        numeric[layer] = {k: float(v) for k, v in flat.items() if _is_number(v)}
        series = {k: v for k, v in flat.items() if _is_series(v)}
        layers.append(LayerStatistics(layer, values, channel_charts(layer, series), tuple(sorted(set(codes.get(layer, []))))))
    drift_key = _drift_key(numeric)
    chart = None
    if drift_key:
        chart = bar_chart(
            [l.layer for l in layers],
            [numeric[l.layer].get(drift_key) for l in layers],
            label=f"{label(drift_key)} per BN layer, input to output",
            marked=frozenset(l.layer for l in layers if l.marked),
            **_threshold((thresholds or {}).get(drift_key)),
        )
    tables = topic_tables("statistics", rest) if rest else []
    if not layers and not tables:
        return None
    return StatisticsView(columns, layers, drift_key, chart, tables)


def _threshold(given: tuple[float, str] | None) -> dict[str, Any]:
    return {"threshold": given[0], "threshold_label": given[1]} if given else {}


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
    groups: dict[str, dict[str, list]] = {"mean": {}, "variance": {}, "other": {}}
    for name, values in series.items():
        words = set(re.split(r"[^a-z]+", short[name].lower()))
        if words & COMPARISON_WORDS:
            kind = "other"
        elif words & {"mean", "mu"}:
            kind = "mean"
        elif words & {"var", "variance", "sigma"}:
            kind = "variance"
        else:
            kind = "other"
        groups[kind][short[name]] = values
    charts = []
    for kind, members in groups.items():
        if members and finite(v for values in members.values() for v in values):
            title = f"{kind} per channel" if kind != "other" else "other numbers per channel"
            charts.append((title, line_chart(members, label=f"{layer}: {title}")))
    return charts
