"""What the HTML report shows, built as plain objects before any template runs.

Templates stay simple (and overridable) because everything that needs a decision is
made here: verdicts, grouping of findings by severity and rule, the layer sequence
around each finding, and tables and charts from the measurements.

The measurements (statistics, inference, plugins' topics) are read by
:mod:`.measurements`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterator

from markupsafe import Markup

from ..findings import Finding, Severity
from ..result import AuditResult
from ..rule import Rule
from . import Report
from .json import without_timings
from .locations import relative_path
from .measurements import StatisticsView, Table, devices, format_value, flatten, statistics_view, topic_tables
from .svg import severity_bar

#: Measurement topics with their own section; any other topic is shown as tables.
KNOWN_TOPICS = ("layers", "statistics", "inference", "diff")


@dataclass
class Node:
    """A layer in the sequence drawn around a finding."""

    path: str
    class_name: str
    marked: bool = False  # the layer the finding is about
    batchnorm: bool = False  # the BN the sequence is centred on
    involved: bool = False  # named in the finding's details (e.g. the Dropout of BN101)


@dataclass
class ModelView:
    result: AuditResult
    anchor: str
    verdict: str
    #: The verdict in words that match the gate: "passes the gate (fail-on error): 4 warnings".
    verdict_words: str
    counts: dict[str, int]
    severity_chart: Markup
    skipped: list[tuple[str, list[str]]]
    devices: list[str]
    #: Every BN layer with the sequence around it and the codes of its findings.
    batchnorms: list[tuple[str, list[list[Node]], list[str]]] = field(default_factory=list)
    statistics: StatisticsView | None = None
    #: ``bnaudit diff``'s per-layer change since the base checkpoint, charted by mean shift.
    diff: StatisticsView | None = None
    inference: list[Table] = field(default_factory=list)
    other: list[Table] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def path(self) -> str:
        """The model's path as every report locates it: relative to the working directory when inside it."""
        return relative_path(self.result.path)

    @property
    def meta(self) -> dict[str, Any]:
        return self.result.meta

    @property
    def rank(self) -> tuple:
        """Failing models first, then by findings, most severe first; then by path."""
        order = ("unreadable", "incomplete", "fail", "pass").index(self.verdict)
        return (order, *(-n for n in reversed(self.counts.values())), self.path)

    @property
    def writer(self) -> str:
        version, fmt = self.meta.get("keras_version"), self.meta.get("format")
        words = f"Keras {version}" if version else "unknown Keras version"
        return f"{words} ({fmt})" if fmt else words


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
    """The template context: the run's verdict, models (overview rows, failing first, and
    details in the order given), grouped findings and the skipped rules every model shares."""
    models = [model_view(result, report, f"model-{i + 1}") for i, result in enumerate(report.results)]
    common = _common_skipped(models)
    for model in models:
        model.skipped = [item for item in model.skipped if item not in common]
    return {
        "models": models,
        "overview": sorted(models, key=lambda m: m.rank),
        "run_verdict": run_verdict(models, report.fail_on),
        "common_skipped": common,
        "groups": group_findings(models, report),
        "summary": report.summary(),
    }


def _common_skipped(models: list[ModelView]) -> list[tuple[str, list[str]]]:
    """The (reason, codes) every audited model skipped alike: said once, not on every model."""
    audited = [m for m in models if not m.result.unreadable]
    if len(audited) < 2:
        return []
    return [item for item in audited[0].skipped if all(item in m.skipped for m in audited[1:])]


def model_view(result: AuditResult, report: Report, anchor: str) -> ModelView:
    measurements = result.measurements if isinstance(result.measurements, dict) else {}
    if not report.options.get("timestamp"):
        measurements = without_timings(measurements)
    inference = measurements.get("inference")
    skipped: dict[str, list[str]] = {}
    for item in result.skipped:
        skipped.setdefault(item.reason, []).append(item.code)
    codes: dict[str, list[str]] = {}
    for f in result.findings:
        codes.setdefault(f.layer, []).append(f.code)
    view = ModelView(
        result=result,
        anchor=anchor,
        verdict=verdict(result, report.fail_on),
        verdict_words=verdict_words(result, report.fail_on),
        counts=result.counts(),
        severity_chart=severity_bar({k: v for k, v in reversed(result.counts().items())}),
        skipped=sorted(skipped.items()),
        devices=devices(inference),
        statistics=statistics_view(measurements.get("statistics"), codes, applied_thresholds(result, report)),
        diff=statistics_view(measurements.get("diff"), codes),
        notes=list(result.notes),
    )
    neighbourhoods = measurements.get("layers")
    if isinstance(neighbourhoods, dict):
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


def applied_thresholds(result: AuditResult, report: Report) -> dict[str, tuple[float, str]]:
    """Measurement key -> (threshold, label) for the charts: as a finding recorded it
    (``details["thresholds"]``, the value the rule applied), else the rule's default.
    Threshold names are kebab-case settings (``drift-score``), keys snake_case."""
    found: dict[str, tuple[float, str]] = {}
    for rule in report.rules.values():
        if rule.code in result.rules_run:
            for name, value in rule.settings.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    found[name.replace("-", "_")] = (float(value), f"{rule.code} threshold (default)")
    for finding in result.findings:
        limits = finding.details.get("thresholds") if isinstance(finding.details, dict) else None
        for name, value in (limits or {}).items() if isinstance(limits, dict) else ():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                found[str(name).replace("-", "_")] = (float(value), f"{finding.code} threshold")
    return found


def verdict_words(result: AuditResult, fail_on: Severity) -> str:
    """The verdict as people read it, in the gate's own terms and with what was found.

    A model "passes the gate" when no finding reaches ``fail_on`` (the exit code's rule),
    which can still mean warnings: the words say so, so a green row never hides them.
    """
    counts = ", ".join(f"{n} {label}{'s' if n != 1 else ''}" for label, n in reversed(result.counts().items()) if n) or "no findings"
    gate = f"(fail-on {fail_on.label})"
    state = verdict(result, fail_on)
    if state == "unreadable":
        return "unreadable: not audited"
    if state == "incomplete":
        stopped = sorted({code for error in result.errors for code in error.rules})  # every rule each error stopped
        return f"incomplete: {', '.join(stopped)} could not run; {counts}"
    return f"{'fails' if state == 'fail' else 'passes'} the gate {gate}: {counts}"


def run_verdict(models: list[ModelView], fail_on: Severity) -> str:
    """The whole run in one sentence, matching the exit code (0 passes, 1 fails, 2 errors)."""
    states = [m.verdict for m in models]
    failing = states.count("fail")
    troubled = [f"{states.count(s)} {s}" for s in ("unreadable", "incomplete") if s in states]
    gate = f"(fail-on {fail_on.label})"
    if troubled:
        head = f"The run has errors ({', '.join(troubled)}): exit code 2"
        return head + (f"; {failing} of {len(models)} models fail the gate {gate}." if failing else ".")
    if failing:
        return f"The run fails the gate {gate}: {failing} of {len(models)} model{'s' if len(models) != 1 else ''} {'fail' if failing != 1 else 'fails'}."
    return f"The run passes the gate {gate}: no finding is at {fail_on.label} or above."


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
    return [(key, format_value(value)) for key, value in flatten(details).items()]
