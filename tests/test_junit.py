"""JUnit XML, read back with junitparser (the consumer GitLab-style dashboards resemble)."""

from __future__ import annotations

import json

import pytest
from junitparser import Error, Failure, JUnitXml

from conftest import ROOT, invoke

MODELS = ["sample_models/dropout_before_bn.keras", "sample_models/bn_training_baked.keras", "sample_models/custom_layer.keras", "sample_models/nope.keras"]


def junit(tmp_path, *extra):
    run = invoke(
        "check", *MODELS, *extra, "--format", "junit", "-o", str(tmp_path / "junit.xml"), "--format", "json", "-o", str(tmp_path / "r.json"), cwd=ROOT
    )
    assert "Traceback" not in run.stderr
    return JUnitXml.fromfile(str(tmp_path / "junit.xml")), {m["path"]: m for m in json.loads((tmp_path / "r.json").read_text())["models"]}


def outcomes(suite):
    return {(case.classname, case.name): case.result for case in suite}


@pytest.fixture(scope="module")
def default_run(tmp_path_factory):
    return junit(tmp_path_factory.mktemp("junit"))


def test_one_suite_per_model_one_case_per_rule_and_layer(default_run):
    xml, models = default_run
    suites = {suite.name: suite for suite in xml}
    assert sorted(suites) == sorted(MODELS)
    for path, model in models.items():
        if model["errors"]:
            continue
        bn_layers = list(model["measurements"]["layers"])
        extra = {(f["code"], f["layer"]) for f in model["findings"] if f["layer"] not in bn_layers}
        expected = len(model["rules_run"]) * len(bn_layers) + len(extra) + len(model["skipped"])
        assert suites[path].tests == expected == len(list(suites[path])), path
    names = [(case.classname, case.name) for suite in xml for case in suite]
    assert len(names) == len(set(names))


def test_findings_at_fail_on_fail_and_the_rest_pass(default_run):
    xml, _ = default_run
    suites = {suite.name: suite for suite in xml}
    baked = outcomes(suites["sample_models/bn_training_baked.keras"])
    [failure] = baked[("BN106.batchnorm-training-baked", "sample_models/bn_training_baked.keras::bn1")]
    assert isinstance(failure, Failure) and failure.type == "error" and "training=True" in failure.message
    failing = [key for key, result in baked.items() if any(isinstance(r, Failure) for r in result)]
    assert failing == [("BN106.batchnorm-training-baked", "sample_models/bn_training_baked.keras::bn1")]
    dropout = {(c.classname, c.name): c for c in suites["sample_models/dropout_before_bn.keras"]}
    warned = dropout[("BN101.dropout-before-batchnorm", "sample_models/dropout_before_bn.keras::bn2")]
    assert warned.is_passed and "feeds BatchNormalization 'bn2'" in warned.system_out
    assert dropout[("BN101.dropout-before-batchnorm", "sample_models/dropout_before_bn.keras::bn1")].is_passed
    custom = outcomes(suites["sample_models/custom_layer.keras"])
    assert ("BN501.unsafe-layer", "sample_models/custom_layer.keras::channel_scale") in custom
    [error] = outcomes(suites["sample_models/nope.keras"])[("bnaudit.load", "sample_models/nope.keras::<model>")]
    assert isinstance(error, Error) and error.message == "no such file or directory"
    assert xml.failures == 1 and xml.errors == 1


def test_skipped_rules_are_skipped_cases_with_the_reason(default_run):
    xml, models = default_run
    seen = 0
    for suite in xml:
        skipped = {case.classname.split(".")[0]: case.result[0].message for case in suite if case.is_skipped}
        assert skipped == {s["code"]: s["reason"] for s in models[suite.name]["skipped"]}
        seen += len(skipped)
    assert seen  # the BN3xx/BN4xx rules skip without --data: the check above compared something


def test_fail_on_warning_turns_warnings_into_failures(tmp_path):
    xml, _ = junit(tmp_path, "--fail-on", "warning")
    failing = sorted((case.classname, case.name) for suite in xml for case in suite if any(isinstance(r, Failure) for r in case.result))
    assert failing == [
        ("BN101.dropout-before-batchnorm", "sample_models/dropout_before_bn.keras::bn2"),
        ("BN106.batchnorm-training-baked", "sample_models/bn_training_baked.keras::bn1"),
        ("BN501.unsafe-layer", "sample_models/custom_layer.keras::channel_scale"),
    ]
