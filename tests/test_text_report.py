"""The text report says what did not run: skipped rules by reason, once for the run when
every model skipped them alike, per model otherwise; rules an error stopped stay named
by that error. Real sample models audited by the engine, with a probe plugin whose rule
skips itself on one model only."""

from __future__ import annotations

import pytest

from bnaudit.engine import AuditOptions, Auditor, discover
from bnaudit.plugin_api import Report, Severity, SkipRule, hookimpl, rule
from bnaudit.plugins import collect_reporters, make_plugin_manager
from bnaudit.selection import Selection
from conftest import ROOT

BAKED = "sample_models/bn_training_baked.h5"
CLEAN = "sample_models/clean_conv_bn_relu.keras"


@rule("TX101", "probe-skips-on-h5", Severity.INFO)
def probe_skips_on_h5(ctx):
    """Skips itself on legacy .h5 files.

    ## What it does
    Raises SkipRule on a .h5 file, passes elsewhere.

    ## Why is this bad?
    It shows a rule skipped on one model only.

    ## Example
    Any model.

    ## Use instead
    Nothing.
    """
    if ctx.graph.format != "keras":
        raise SkipRule("reads only .keras files")
    yield from ()


class Probe:
    @hookimpl
    def bnaudit_register_rules(self):
        return [probe_skips_on_h5]


def text(*models: str, select: tuple[str, ...] = ("BN", "TX"), **options) -> str:
    pm = make_plugin_manager(autoload=False)
    pm.register(Probe(), name="text-probe")
    auditor = Auditor(AuditOptions(selection=Selection(select)), pm=pm)
    files, problems = discover(models)
    report = Report([auditor.audit(path) for path in files] + problems, auditor.rules, options=options)
    return collect_reporters(pm)["text"].render(report)


@pytest.fixture(autouse=True)
def at_root(monkeypatch):
    monkeypatch.chdir(ROOT)


def test_skips_shared_by_every_model_are_one_line_and_a_models_own_are_under_it():
    assert text(CLEAN, BAKED).splitlines() == [
        "sample_models/bn_training_baked.h5",
        "  BN106 error   bn1: BatchNormalization 'bn1' is called with training=True (its own call): it uses batch statistics at "
        "inference (under model(x) in Keras 3; model.predict of the loaded model uses the moving statistics)",
        "        = fix: `bnaudit fix --unbake` writes a copy without training=True in the call (or rebuild the model without it "
        "and copy the weights over)",
        "  skipped: TX101 (reads only .keras files)",
        "",
        "skipped on every model audited: BN301, BN302, BN303 (needs --data); BN401, BN402, BN403, BN404 (needs --data or --inference); BN205 (the file holds no optimizer state: saved with include_optimizer=False, or never compiled)",
        "2 models, 1 finding (1 error)",
    ]


def test_a_model_with_nothing_but_a_skip_is_listed_for_it():
    """A clean model that skipped a rule the others ran is not silent about it."""
    lines = text(BAKED, "sample_models/dropout_before_bn.keras", select=("TX",)).splitlines()
    assert lines == ["sample_models/bn_training_baked.h5", "  skipped: TX101 (reads only .keras files)", "", "2 models, 0 findings"]


def test_one_model_says_skipped_without_every():
    assert text(CLEAN).splitlines() == [
        "skipped: BN301, BN302, BN303 (needs --data); BN401, BN402, BN403, BN404 (needs --data or --inference); BN205 (the file holds no optimizer state: saved with include_optimizer=False, or never compiled)",
        "1 model, 0 findings",
    ]


def test_nothing_skipped_nothing_said_and_quiet_says_no_skips():
    assert text(CLEAN, select=("BN1", "BN201", "BN202", "BN203", "BN204", "TX")) == "1 model, 0 findings\n"
    assert text(CLEAN, BAKED, quiet=True).splitlines() == [
        "sample_models/bn_training_baked.h5",
        "  BN106 error   bn1: BatchNormalization 'bn1' is called with training=True (its own call): it uses batch statistics at "
        "inference (under model(x) in Keras 3; model.predict of the loaded model uses the moving statistics)",
        "        = fix: `bnaudit fix --unbake` writes a copy without training=True in the call (or rebuild the model without it "
        "and copy the weights over)",
        "",
    ]


def test_an_unreadable_model_does_not_count_as_one_that_skipped():
    assert text(CLEAN, "sample_models/no_such_model.keras", select=("BN3",)).splitlines() == [
        "sample_models/no_such_model.keras",
        "  error [unreadable] no such file or directory (check the path)",
        "",
        "skipped: BN301, BN302, BN303 (needs --data)",
        "2 models, 0 findings, 1 unreadable",
    ]
