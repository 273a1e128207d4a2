"""Gold-file tests for every reporter (coverage.py's ``tests/goldtest.py``, ruff's
snapshot tests): one shared set of results, rendered by each format, compared with the
committed file under ``tests/gold/`` after scrubbing what differs between machines and
releases (bnaudit's version, the checkout's path).

The results are real: sample models audited by the engine, plus a probe plugin whose
rules fail, skip and stop each other, and a path that names no file, so every outcome
(ran, skipped, failed, unreadable) reaches every format.

When a change to a report is intended, regenerate the files and review the diff::

    python -m pytest tests/test_gold.py --regen-gold
"""

from __future__ import annotations

import difflib

import pytest

import bnaudit
from bnaudit.engine import AuditOptions, Auditor, discover
from bnaudit.plugin_api import LoadError, Severity, SkipRule, hookimpl, rule
from bnaudit.plugins import collect_reporters, make_plugin_manager
from bnaudit.reporters import Report
from conftest import ROOT

GOLD = ROOT / "tests" / "gold"
MODELS = ("sample_models/dropout_before_bn.keras", "sample_models/bn_training_baked.h5", "sample_models/no_such_model.keras")
SUFFIX = {"text": "txt", "json": "json", "sarif": "sarif", "junit": "xml", "github": "txt", "html": "html"}


def _shared(ctx):
    def compute():
        raise LoadError("the shared probe computation failed", "nothing to do: it always fails")

    return ctx.shared("probe", compute)


@rule("GD101", "probe-fails", Severity.WARNING)
def probe_fails(ctx):
    """Meets the failure of a computation it shares with GD102.

    ## What it does
    Asks for a shared computation that fails.

    ## Why is this bad?
    It shows a failed rule in every report.

    ## Example
    Any model.

    ## Use instead
    Nothing.
    """
    yield from _shared(ctx)


@rule("GD102", "probe-stopped", Severity.WARNING)
def probe_stopped(ctx):
    """Stopped by the failure GD101 met first.

    ## What it does
    Asks for the same shared computation.

    ## Why is this bad?
    It shows a rule stopped by another's error.

    ## Example
    Any model.

    ## Use instead
    Nothing.
    """
    yield from _shared(ctx)


@rule("GD103", "probe-skips", Severity.INFO)
def probe_skips(ctx):
    """Skips itself.

    ## What it does
    Raises SkipRule.

    ## Why is this bad?
    It shows a rule skipped at run time.

    ## Example
    Any model.

    ## Use instead
    Nothing.
    """
    if ctx.graph.name:
        raise SkipRule("the probe does not apply to this model")
    yield from ()


class GoldProbe:
    @hookimpl
    def bnaudit_register_rules(self):
        return [probe_fails, probe_stopped, probe_skips]


@pytest.fixture(scope="module")
def report(request):
    """The shared results, audited from the checkout's root so paths are relative."""
    request.getfixturevalue("monkeypatch_module").chdir(ROOT)
    pm = make_plugin_manager(autoload=False)
    pm.register(GoldProbe(), name="gold-probe")
    auditor = Auditor(AuditOptions(), pm=pm)
    files, problems = discover(MODELS)
    results = [auditor.audit(path) for path in files] + problems
    return Report(results, rules=auditor.rules, version=bnaudit.__version__, plugin_manager=pm), collect_reporters(pm)


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as patch:
        yield patch


def scrub(text: str) -> str:
    """What differs between machines and releases, replaced by placeholders."""
    return text.replace(str(ROOT), "<root>").replace(bnaudit.__version__, "<version>")


@pytest.mark.parametrize("name", sorted(SUFFIX))
def test_each_format_renders_the_shared_results_as_its_gold_file(report, name, request):
    shared, reporters = report
    rendered = scrub(reporters[name].render(shared))
    gold = GOLD / f"report.{name}.{SUFFIX[name]}"
    if request.config.getoption("--regen-gold"):
        gold.write_text(rendered, encoding="utf-8")
    assert gold.is_file(), f"{gold} is missing: python -m pytest tests/test_gold.py --regen-gold"
    expected = gold.read_text(encoding="utf-8")
    if rendered != expected:
        diff = "".join(difflib.unified_diff(expected.splitlines(True), rendered.splitlines(True), str(gold), "rendered"))
        pytest.fail(f"{name} output differs from its gold file (if intended: python -m pytest tests/test_gold.py --regen-gold):\n{diff}")


def test_every_format_has_a_gold_file(report):
    _, reporters = report
    assert sorted(reporters) == sorted(SUFFIX)
    assert sorted(p.name for p in GOLD.iterdir()) == sorted(f"report.{n}.{s}" for n, s in SUFFIX.items())
