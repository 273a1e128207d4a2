"""JUnit XML, the shape GitLab, Jenkins and most CI dashboards read.

One ``<testsuite>`` per model; one ``<testcase>`` per rule × layer checked, so a dashboard
shows what passed as well as what failed. A rule is taken to have checked every BN layer
of the model (the neighbourhoods the engine records) plus any layer it reported on; a
model without BN layers gets one case per rule. ``classname`` is the rule
(``BN106.batchnorm-training-baked``), ``name`` is ``model::layer``, unique in the file.

Findings at or above ``--fail-on`` are ``<failure>``s; findings below it keep their case
passing and are printed in its ``<system-out>``, so the dashboard agrees with the exit
code. Rules that did not run are ``<skipped>`` with the reason; an unreadable model or a
failed rule is an ``<error>`` (a rule stopped by another's error is skipped, pointing at it). Durations and a timestamp only with ``--timestamp``.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from ..findings import Finding
from ..measurements import BatchNormNeighbourhood
from ..hookspecs import hookimpl
from ..result import AuditResult, Status
from . import Report, Reporter
from .locations import relative_path

if TYPE_CHECKING:
    import xml.etree.ElementTree as ET

MODEL_CASE = "<model>"
#: Characters XML 1.0 cannot carry even escaped; a layer name may hold them.
XML_ILLEGAL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")


def render(report: Report) -> str:
    # The XML library is imported by the first JUnit report, not by every run that
    # registers this format (docs/ci.md, "Start-up"); the helpers below use it then.
    global ET
    import xml.etree.ElementTree as ET

    root = ET.Element("testsuites", name="bnaudit")
    seen: set[tuple[str, str]] = set()
    for result in report.results:
        root.append(_suite(result, report, seen))
    _count(root, root.findall("testsuite/testcase"))
    if report.options.get("timestamp"):
        root.set("timestamp", report.options["timestamp"])
    ET.indent(root)
    return XML_ILLEGAL.sub("\ufffd", ET.tostring(root, encoding="unicode", xml_declaration=True)) + "\n"


def _suite(result: AuditResult, report: Report, seen: set[tuple[str, str]]) -> ET.Element:
    model = relative_path(result.path)
    suite = ET.Element("testsuite", name=model, file=model)
    properties = ET.SubElement(suite, "properties")
    for key in ("keras_version", "format", "batchnorm_layers"):
        if key in result.meta:
            ET.SubElement(properties, "property", name=key, value=str(result.meta[key]))
    if report.options.get("timestamp"):
        suite.set("timestamp", report.options["timestamp"])
        if "seconds" in result.meta:
            suite.set("time", str(result.meta["seconds"]))

    def case(classname: str, layer: str) -> ET.Element:
        name = f"{model}::{layer}"
        key, n = (classname, name), 1
        while key in seen:  # the same model twice (merged documents): keep names unique
            n += 1
            key = (classname, f"{name} #{n}")
        seen.add(key)
        return ET.SubElement(suite, "testcase", classname=key[0], name=key[1], file=model)

    of_outcomes = {id(outcome.error) for outcome in result.outcomes if outcome.error is not None}
    for error in result.errors:  # those no rule's outcome carries: an unreadable model, a failed plugin hook
        if id(error) not in of_outcomes:
            classname, kind = (f"bnaudit.{error.rule}", "error") if error.rule else ("bnaudit.load", "unreadable")
            ET.SubElement(case(classname, MODEL_CASE), "error", message=error.message, type=kind).text = error.hint
    bn_layers = [bn.layer for bn in result.measured(BatchNormNeighbourhood)]
    names = {f.code: f.name for f in result.findings}
    for outcome in result.outcomes:
        classname = _classname(outcome.code, report, names)
        if outcome.status is Status.FAILED and outcome.error is not None:
            error = outcome.error
            ET.SubElement(case(classname, MODEL_CASE), "error", message=error.message, type="rule-failed").text = error.hint
        elif outcome.status is Status.RAN:
            by_layer: dict[str, list[Finding]] = {}
            for finding in result.findings:
                if finding.code == outcome.code:
                    by_layer.setdefault(finding.layer or MODEL_CASE, []).append(finding)
            layers = list(dict.fromkeys(bn_layers + list(by_layer))) or [MODEL_CASE]
            for layer in layers:
                _outcome(case(classname, layer), by_layer.get(layer, []), report)
    for item in result.skipped:
        ET.SubElement(case(_classname(item.code, report, names), MODEL_CASE), "skipped", message=item.reason)
    _count(suite, suite.findall("testcase"))
    return suite


def _outcome(testcase: ET.Element, findings: list[Finding], report: Report) -> None:
    failing = [f for f in findings if f.severity >= report.fail_on]
    if failing:
        worst = max(failing, key=lambda f: f.severity)
        failure = ET.SubElement(testcase, "failure", message=worst.message, type=worst.severity.label)
        failure.text = "\n\n".join(_describe(f) for f in failing)
    below = [f for f in findings if f.severity < report.fail_on]
    if below:
        ET.SubElement(testcase, "system-out").text = "\n\n".join(_describe(f) for f in below)


def _describe(finding: Finding) -> str:
    lines = [f"{finding.code} {finding.name} ({finding.severity.label}): {finding.message}"]
    if finding.fix:
        lines.append(f"fix: {finding.fix}")
    lines += [f"{key}: {value}" for key, value in finding.details.items()]
    return "\n".join(lines)


def _classname(code: str, report: Report, names: dict[str, str]) -> str:
    rule = report.rules.get(code)
    name = rule.name if rule else names.get(code, "")
    return f"{code}.{name}" if name else code


def _count(element: ET.Element, cases: list[ET.Element]) -> None:
    counts: dict[str, Any] = {
        "tests": len(cases),
        "failures": sum(1 for c in cases if c.find("failure") is not None),
        "errors": sum(1 for c in cases if c.find("error") is not None),
        "skipped": sum(1 for c in cases if c.find("skipped") is not None),
    }
    for key, value in counts.items():
        element.set(key, str(value))


@hookimpl
def bnaudit_register_reporters():
    return [Reporter("junit", "JUnit XML: a suite per model, a case per rule and layer", render, ".xml")]
