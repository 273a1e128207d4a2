"""One validation for every way in: ``bnaudit.audit()``, the command line and the config
file reject unknown keys, bad selectors and wrong types, naming the key."""

from __future__ import annotations

import dataclasses

import pytest

import bnaudit
from bnaudit.options import InferenceOptions, OptionsError, RuntimeOptions, StatisticsOptions, runtime_options
from conftest import SAMPLES, run_bnaudit

MODEL = SAMPLES / "dropout_before_bn.keras"


@pytest.mark.parametrize(
    "keywords, message",
    [
        ({"ignore": ["BN13"]}, "ignore BN13 matches no rule; `bnaudit rules` lists the codes"),
        ({"select": ["BN1", "XX9"]}, "select XX9 matches no rule; `bnaudit rules` lists the codes"),
        (
            {"settings": {"bn301.drift_score": 1}},
            "setting 'bn301.drift_score': unknown threshold 'drift_score' (did you mean 'drift-score'?) "
            "(the thresholds of BN301: drift-score, mean-shift, log-variance-ratio, channel-fraction)",
        ),
        ({"settings": {"bn999.limit": 1}}, "setting 'bn999.limit': there is no rule BN999; `bnaudit rules` lists the codes"),
        ({"settings": {"bn301.drift-score": "high"}}, "bn301.drift-score = 'high': expected a float like its default 0.5"),
        ({"settings": {"bn205.residual": 1.5}}, "bn205.residual = 1.5: expected a number from 0 to 1 (default 0.05)"),
        ({"settings": {"bn302.agreement": 80}}, "bn302.agreement = 80: expected a number from 0 to 1 (default 0.8)"),
        ({"settings": {"bn301.mean-shift": -1}}, "bn301.mean-shift = -1: expected a number >= 0 (default 1.0)"),
        ({"settings": {"bn301.drift-score": float("nan")}}, "bn301.drift-score = nan: expected a number >= 0 (default 0.5)"),
        ({"select": []}, "select is empty: it selects no rule (leave it out to run every rule, or name codes)"),
        ({"ignore": 5}, "option 'ignore' = 5: expected rule codes (a string or a list of strings)"),
        ({"ignore": ["BN1", 2]}, "option 'ignore': 2 is not a rule code (a string like 'BN101' or 'BN1')"),
        ({"batchsize": 8}, "unknown option 'batchsize' (did you mean 'batch_size'?)"),
        ({"ignor": ["BN1"]}, "unknown option 'ignor' (did you mean 'ignore'?)"),
        ({"batch_size": "8"}, "option 'batch_size' = '8': expected a positive integer"),
        ({"batch_size": 0}, "option 'batch_size' = 0: expected a positive integer"),
        ({"atol": -1}, "option 'atol' = -1: expected a number >= 0"),
        ({"reference": "gpu"}, "option 'reference' = 'gpu': choose from 'cpu', 'float64'"),
        ({"unsafe_load": "yes"}, "option 'unsafe_load' = 'yes': expected True or False"),
    ],
)
def test_the_api_rejects_typos_naming_the_key(keywords, message):
    with pytest.raises(OptionsError) as raised:
        bnaudit.audit(MODEL, **keywords)
    assert str(raised.value) == message


def test_the_issue_example_raises_instead_of_running_silently():
    with pytest.raises(OptionsError, match="batchsize"):
        bnaudit.audit(MODEL, ignore=["BN13"], settings={"bn301.drift_score": 1}, batchsize=8)


def test_valid_keywords_land_in_the_typed_options_and_the_audit_runs():
    options = runtime_options({"batch_size": 8, "devices": "CPU:1", "atol": 0, "per_channel": True, "shard": [2, 4], "seed": 0})
    assert options == RuntimeOptions(
        batch_size=8,
        statistics=StatisticsOptions(per_channel=True, shard=(2, 4)),
        inference=InferenceOptions(devices="CPU:1", atol=0.0),
    )
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.batch_size = 9  # type: ignore[misc]
    assert options.replace(batch_size=16).batch_size == 16 and options.batch_size == 8
    result = bnaudit.audit(MODEL, select=["BN1"], batch_size=8, settings={"bn301.drift-score": 2})
    assert [(f.code, f.layer) for f in result.findings] == [("BN101", "bn2")]
    assert result.rules_run == [f"BN10{i}" for i in range(1, 10)]


def test_the_command_line_goes_through_the_same_checks(tmp_path):
    run = run_bnaudit("check", MODEL, "--isolated", "--ignore", "BN13")
    assert (run.returncode, run.stderr) == (2, "bnaudit: error: --ignore BN13 matches no rule; `bnaudit rules` lists the codes\n")
    (tmp_path / "bnaudit.toml").write_text("[bn301]\ndrift_score = 1\n")
    run = run_bnaudit("check", MODEL, "--config", tmp_path / "bnaudit.toml")
    assert run.returncode == 2
    assert run.stderr == (
        f"bnaudit: error: {tmp_path / 'bnaudit.toml'}: [bn301]: unknown threshold 'drift_score' (did you mean 'drift-score'?) "
        "(the thresholds of BN301: drift-score, mean-shift, log-variance-ratio, channel-fraction)\n"
    )


def test_a_threshold_out_of_its_range_in_the_config_is_one_line_and_exit_2(tmp_path):
    (tmp_path / "bnaudit.toml").write_text("[bn205]\nresidual = 1.5\n")
    run = run_bnaudit("check", MODEL, "--config", tmp_path / "bnaudit.toml")
    assert (run.returncode, run.stderr) == (2, f"bnaudit: error: {tmp_path / 'bnaudit.toml'}: bn205.residual = 1.5: expected a number from 0 to 1 (default 0.05)\n")
    (tmp_path / "bnaudit.toml").write_text("[bn303]\nvariance-ratio = inf\n")
    run = run_bnaudit("check", MODEL, "--config", tmp_path / "bnaudit.toml")
    assert (run.returncode, run.stderr) == (2, f"bnaudit: error: {tmp_path / 'bnaudit.toml'}: bn303.variance-ratio = inf: expected a number from 0 to 1 (default 1e-06)\n")


def test_a_rule_cannot_bound_a_threshold_it_does_not_declare():
    from bnaudit.plugin_api import Severity, rule

    with pytest.raises(ValueError, match=r"^rule XX101 gives ranges to thresholds it does not declare: \['limt'\]$"):
        rule("XX101", "some-check", Severity.WARNING, settings={"limit": 1.0}, ranges={"limt": (0, 1)})(lambda ctx: ())


def test_codes_are_read_as_the_command_line_reads_them():
    """None is the default, a string with commas is several codes (``--ignore BN1,BN2``)."""
    assert [(f.code, f.layer) for f in bnaudit.audit(MODEL, ignore=None).findings] == [("BN101", "bn2")]
    assert bnaudit.audit(MODEL, ignore="BN1, BN2").findings == []
    assert [(f.code, f.layer) for f in bnaudit.audit(MODEL, select="BN101,BN2").findings] == [("BN101", "bn2")]


def test_an_empty_select_is_one_line_and_exit_2_from_the_config_and_the_command_line(tmp_path):
    """A gate that runs no rule passes every model: refused, never silent."""
    (tmp_path / "pyproject.toml").write_text("[tool.bnaudit]\nselect = []\n")
    run = run_bnaudit("check", MODEL, cwd=tmp_path)
    assert (run.returncode, run.stderr) == (2, f"bnaudit: error: {tmp_path / 'pyproject.toml'}: select = [] selects no rule (leave it out to run every rule, or name codes)\n")
    run = run_bnaudit("check", "--isolated", "--select", "", MODEL)
    assert (run.returncode, run.stderr) == (2, "bnaudit: error: --select is empty: it selects no rule (leave it out to run every rule, or name codes)\n")


def test_audit_many_suggests_its_own_keywords_too():
    with pytest.raises(OptionsError, match=r"^unknown option 'job' \(did you mean 'jobs'\?\)$"):
        bnaudit.audit_many([MODEL], job=2)


def test_several_unknown_codes_are_named_together():
    with pytest.raises(OptionsError, match=r"^select XX9, YY1 match no rule; `bnaudit rules` lists the codes$"):
        bnaudit.audit(SAMPLES / "dropout_before_bn.keras", select=["XX9", "YY1"])
