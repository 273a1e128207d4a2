"""What the HTML report shows, built as plain objects before any template runs.

Templates stay simple (and overridable) because everything that needs a decision is
made here: verdicts, grouping of findings by severity and rule, the layer sequence
around each finding, and tables and charts from the measurements.

The measurements are rendered by kind in :mod:`.measurements`; the BN neighbourhoods
(:class:`~bnaudit.measurements.BatchNormNeighbourhood`) become the layer sequences here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterator

from markupsafe import Markup

from ..findings import Finding, Severity
from ..measurements import BatchNormNeighbourhood
from ..result import AuditResult, Status
from ..rule import Rule
from . import Report, common_skipped
from .locations import relative_path
from .measurements import StatisticsView, Table, format_value, flatten, sections
from .svg import severity_bar

#: The rule and setting whose applied value the drift chart draws.
DRIFT_THRESHOLD = ("BN301", "drift-score")


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
    return common_skipped([m.skipped for m in audited]) if len(audited) >= 2 else []


def model_view(result: AuditResult, report: Report, anchor: str) -> ModelView:
    codes: dict[str, list[str]] = {}
    for f in result.findings:
        codes.setdefault(f.layer, []).append(f.code)
    page = sections(result.measurements, codes, applied_threshold(result, *DRIFT_THRESHOLD), timings=bool(report.options.get("timestamp")))
    view = ModelView(
        result=result,
        anchor=anchor,
        verdict=verdict(result, report.fail_on),
        verdict_words=verdict_words(result, report.fail_on),
        counts=result.counts(),
        severity_chart=severity_bar({k: v for k, v in reversed(result.counts().items())}),
        skipped=result.skipped_by_reason(),
        devices=page.devices,
        statistics=page.statistics,
        diff=page.diff,
        inference=page.inference,
        other=page.other,
        notes=list(result.notes),
    )
    neighbourhoods = neighbourhoods_of(result)
    for bn in neighbourhoods:
        around = sequence(neighbourhoods, bn)
        for node in (n for step in around for n in step):
            node.marked = node.marked and bn in codes
        view.batchnorms.append((bn, around, sorted(set(codes.get(bn, [])))))
    return view


def applied_threshold(result: AuditResult, code: str, setting: str) -> tuple[float, str] | None:
    """(the value rule ``code`` applied for ``setting``, its label) as its outcome recorded
    it (defaults overridden by the config or ``bnaudit.audit(settings=...)``); None when the rule did not run."""
    for outcome in result.outcomes:
        if outcome.code == code and outcome.status is Status.RAN:
            value = outcome.settings.get(setting)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                return float(value), f"{code} threshold ({code.lower()}.{setting})"
    return None


def neighbourhoods_of(result: AuditResult) -> dict[str, BatchNormNeighbourhood]:
    """Each BN layer's neighbourhood, by the BN's path."""
    return {bn.layer: bn for bn in result.measured(BatchNormNeighbourhood)}


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
            neighbourhoods = neighbourhoods_of(model.result)
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


def sequence(neighbourhoods: dict[str, BatchNormNeighbourhood], layer: str, details: dict[str, Any] | None = None) -> list[list[Node]]:
    """producer(s) -> BN -> consumer(s) around ``layer``, which is marked.

    Uses the neighbourhoods the engine records; a layer that is not a BN (e.g. BN501's
    Lambda) is shown in the sequence of a BN next to it, if any. Layers named in a
    finding's ``details`` are marked as involved.
    """
    if not layer:
        return []
    centre = _centre(neighbourhoods, layer)
    if centre is None:
        return [[Node(layer, "", marked=True)]]
    around = neighbourhoods[centre]
    steps = [*around.before, [[centre, around.class_name]], *around.after]
    involved = set(_strings(details or {}))
    return [
        [Node(str(path), str(cls), marked=path == layer, batchnorm=path == centre, involved=path in involved) for path, cls in step]
        for step in steps
    ]


def _centre(neighbourhoods: dict[str, BatchNormNeighbourhood], layer: str) -> str | None:
    if layer in neighbourhoods:
        return layer
    for bn, around in neighbourhoods.items():
        if any(item[0] == layer for step in [*around.before, *around.after] for item in step):
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
