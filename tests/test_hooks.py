"""One test per hook: each is called when docs/plugins.md says, through pluggy (so an
implementation may take fewer arguments than its spec), and what it returns is used.

In-process with a fresh plugin manager per test (pluggy's own advice).
``bnaudit_register_commands``, which only an installed entry point reaches, is tested with
a real entry point and a real process in tests/test_plugin_commands.py.
"""

from __future__ import annotations

import shutil
import xml.etree.ElementTree as ET

import pytest

from bnaudit.config import parse
from bnaudit.engine import AuditOptions, Auditor
from bnaudit.hookspecs import hookimpl
from bnaudit.parallel import audit_models
from bnaudit.plugin_api import Measurement, Reporter, Severity, rule
from bnaudit.plugins import collect_reporters, make_plugin_manager, plugin_infos
from bnaudit.reporters import Report
from conftest import SAMPLES


@rule("HK101", "every-batchnorm", Severity.INFO)
def every_batchnorm(ctx):
    """Marks every BatchNormalization (a probe for the hook tests).

    ## What it does
    Yields one finding per BN and the number of BNs as a measurement.

    ## Why is this bad?
    It is not; it shows the hooks at work.

    ## Example
    Any model.

    ## Use instead
    Nothing.
    """
    bns = ctx.graph.batchnorms()
    yield Measurement("probe", {"batchnorms": len(bns)})
    for bn in bns:
        yield ctx.finding(bn, f"{bn.path} is a BatchNormalization")


class Probe:
    """Counts the calls of every hook it implements."""

    def __init__(self) -> None:
        self.calls: dict[str, int] = {}
        self.settings: dict = {}

    def _count(self, hook: str) -> None:
        self.calls[hook] = self.calls.get(hook, 0) + 1

    @hookimpl
    def bnaudit_register_rules(self):
        self._count("register_rules")
        return [every_batchnorm]

    @hookimpl
    def bnaudit_configure(self, settings):
        self._count("configure")
        self.settings = dict(settings)

    @hookimpl
    def bnaudit_modify_findings(self, findings):  # fewer arguments than the spec: allowed
        self._count("modify_findings")
        for finding in findings:
            if finding.code == "HK101" and finding.layer == "bn1":
                finding.severity = Severity.ERROR

    @hookimpl
    def bnaudit_register_reporters(self):
        self._count("register_reporters")
        return [Reporter("probe", "one line per finding", lambda report: "".join(f"{f.code}:{f.layer}\n" for r in report.results for f in r.findings))]


@pytest.fixture
def probe():
    plugin = Probe()
    pm = make_plugin_manager(autoload=False)
    pm.register(plugin, name="probe")
    return plugin, pm


def test_register_rules_and_configure_run_once_per_run_even_with_per_file_ignores(probe, tmp_path):
    plugin, pm = probe
    for name in ("a", "b", "c"):
        shutil.copy(SAMPLES / "consecutive_bn.keras", tmp_path / f"{name}.keras")
    config = parse({"per-file-ignores": {"b.keras": ["HK"], "c.keras": ["BN105"]}, "hk101": {}}, tmp_path / "bnaudit.toml")
    options = AuditOptions(settings={"bn301.drift-score": 2.0})
    auditor = Auditor(options, pm=pm)
    config.validate(auditor.rules)
    jobs = [(tmp_path / f"{n}.keras", config.options_for(tmp_path / f"{n}.keras", options)) for n in "abc"]
    results = audit_models(jobs, 1, auditor)
    assert plugin.calls["register_rules"] == 1 and plugin.calls["configure"] == 1
    assert plugin.settings == {"bn301.drift-score": 2.0}
    found = [sorted({(f.code, f.layer) for f in r.findings if f.code in ("HK101", "BN105")}) for r in results]
    assert found[0] == [("BN105", "bn2"), ("HK101", "bn1"), ("HK101", "bn2"), ("HK101", "bn3")]
    assert found[1] == [("BN105", "bn2")]  # HK101 ignored for b.keras: its findings are dropped, the rule set stays
    assert found[2] == [("HK101", "bn1"), ("HK101", "bn2"), ("HK101", "bn3")]
    assert "HK101" in results[0].rules_run and "HK101" not in results[1].rules_run and "BN105" not in results[2].rules_run


def test_modify_findings_runs_once_per_model_with_fewer_arguments_than_its_spec(probe):
    plugin, pm = probe
    auditor = Auditor(AuditOptions(), pm=pm)
    result = auditor.audit(SAMPLES / "consecutive_bn.keras")
    assert plugin.calls["modify_findings"] == 1
    severities = {f.layer: f.severity for f in result.findings if f.code == "HK101"}
    assert severities == {"bn1": Severity.ERROR, "bn2": Severity.INFO, "bn3": Severity.INFO}
    assert result.measurements[-1] == Measurement("probe", {"batchnorms": 3})  # a plain measurement, kept as given
    assert result.to_dict()["measurements"]["probe"] == {"batchnorms": 3}
    assert auditor.audit(SAMPLES / "no_such_model.keras").errors  # unreadable: the hook is not called
    assert plugin.calls["modify_findings"] == 1


def test_a_failing_modify_findings_is_one_error_that_every_format_reports():
    """The hook's failure costs its own change only, and no report shows the run as clean:
    JUnit has an error case for it (no rule's outcome carries it)."""

    class Broken:
        @hookimpl
        def bnaudit_modify_findings(self):
            raise RuntimeError("boom")

    pm = make_plugin_manager(autoload=False)
    pm.register(Broken(), name="broken")
    result = Auditor(AuditOptions(), pm=pm).audit(SAMPLES / "consecutive_bn.keras")
    assert [(f.code, f.layer) for f in result.findings] == [("BN105", "bn2")]
    assert [e.message for e in result.errors] == ["bnaudit_modify_findings failed: RuntimeError: boom"]
    junit = collect_reporters(pm)["junit"].render(Report([result], rules={}))
    suite = ET.fromstring(junit).find("testsuite")
    assert suite.get("errors") == "1"
    [error] = suite.iter("error")
    assert error.get("message") == "bnaudit_modify_findings failed: RuntimeError: boom"


def test_register_reporters_adds_a_format_and_plugin_info_comes_through_pluggy(probe):
    plugin, pm = probe
    reporters = collect_reporters(pm)
    assert plugin.calls["register_reporters"] == 1
    result = Auditor(AuditOptions(), pm=pm).audit(SAMPLES / "consecutive_bn.keras")
    assert reporters["probe"].render(Report([result], rules={})).splitlines()[:2] == ["HK101:bn1", "BN105:bn2"]
    [info] = [i for i in plugin_infos(pm) if i.name == "probe"]
    assert (info.rules, info.reporters) == (["HK101"], ["probe"])


def test_load_model_first_non_none_wins_and_none_falls_through(tmp_path):
    seen = []

    class Loader:
        @hookimpl(tryfirst=True)
        def bnaudit_load_model(self, path):
            seen.append(path.name)
            return None  # not ours: the built-in loaders are asked next

    pm = make_plugin_manager(autoload=False)
    pm.register(Loader(), name="loader")
    result = Auditor(AuditOptions(), pm=pm).audit(SAMPLES / "consecutive_bn.keras")
    assert seen == ["consecutive_bn.keras"] and result.errors == [] and result.meta["format"] == "keras"


def test_prepare_jinja2_environment_is_called_per_html_report(probe):
    _, pm = probe
    calls = []

    class Jinja:
        @hookimpl
        def bnaudit_prepare_jinja2_environment(self, env):
            calls.append(env)
            env.globals["probe"] = True

    pm.register(Jinja(), name="jinja")
    html = collect_reporters(pm)["html"]
    result = Auditor(AuditOptions(), pm=pm).audit(SAMPLES / "consecutive_bn.keras")
    html.render(Report([result], rules={}, plugin_manager=pm))
    assert len(calls) == 1 and calls[0].globals["probe"] is True
