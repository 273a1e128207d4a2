"""``bnaudit fix`` on input a new user gave it (issue 13): statistics holding NaN or a
negative variance (BN201), data that is missing, of the wrong shape or in batches too
small, API keywords of the wrong type, and ``--all`` without the data a finding needs.
Each is one line and exit 2 with nothing written, or a report that says what was not done."""

from __future__ import annotations

import json

import numpy as np
import pytest

from bnaudit import audit, fix
from bnaudit.fixes import FixError
from bnaudit.loaders import LoadError
from bnaudit.options import OptionsError
from bnaudit.runtime.data import DataError
from conftest import run_bnaudit

NAN_REFUSAL = "its moving_variance holds NaN or Inf (BN201): measure it again with --recalibrate --data DATA"
NEGATIVE_REFUSAL = "its moving_variance is negative (BN201): measure it again with --recalibrate --data DATA"


def listing(directory) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


@pytest.mark.parametrize("sample,why", [("nan_moving_variance", NAN_REFUSAL), ("negative_moving_variance", NEGATIVE_REFUSAL)])
def test_fold_leaves_a_bn201_batchnorm_in_place_and_says_why(tmp_path, samples, sample, why):
    """conv1 -> bn1 (BN201) -> relu -> conv2 -> bn2: bn2 folds, bn1 stays, and the copy
    still shows BN201 on bn1 instead of NaN hidden in a kernel."""
    out = tmp_path / "folded.keras"
    run = run_bnaudit("fix", samples / f"{sample}.keras", "-o", out, "--fold", "--no-verify", "--format", "json")
    assert run.returncode == 0 and run.stderr == "", run.stderr
    report = json.loads(run.stdout)
    assert [(c["fix"], c["layer"]) for c in report["changes"]] == [("fold", "conv2"), ("fold", "bn2")]
    assert report["refused"] == [{"fix": "fold", "layer": "bn1", "why": why}]
    assert {(f.code, f.layer) for f in audit(out, select=["BN2"]).findings} == {("BN201", "bn1")}


def test_a_bn201_batchnorm_is_neither_absorbed_nor_folded_and_a_named_fix_is_refused(tmp_path):
    """Dense(bias) -> BN with a NaN moving variance: BN102 is reported, but moving its bias
    into NaN statistics, or folding them, fixes nothing; asked by name, both are refused."""
    import keras

    inputs = keras.Input((4,))
    bn = keras.layers.BatchNormalization(name="bn")
    model = keras.Model(inputs, bn(keras.layers.Dense(3, name="fc")(inputs)))
    gamma, beta, mean, _ = bn.get_weights()
    bn.set_weights([gamma, beta, mean + 0.5, np.array([1.0, np.nan, 2.0], "float32")])
    model.save(tmp_path / "m.keras")
    assert {(f.code, f.layer) for f in audit(tmp_path / "m.keras", select=["BN102", "BN201"]).findings} == {("BN102", "bn"), ("BN201", "bn")}
    for flag, says in (("--absorb-bias", f"no bias can be absorbed: bn: {NAN_REFUSAL}"), ("--fold", f"no BN can be folded: bn: {NAN_REFUSAL}")):
        run = run_bnaudit("fix", tmp_path / "m.keras", "-o", tmp_path / "x.keras", flag, "--no-verify")
        assert run.returncode == 2 and run.stdout == ""
        assert run.stderr == f"bnaudit: error: {tmp_path / 'm.keras'}: {says} (nothing was written)\n"
        assert listing(tmp_path) == ["m.keras"]


def test_json_holds_non_finite_numbers_as_check_writes_them(tmp_path, samples):
    """Recalibrating NaN statistics changes them by NaN: the JSON says "nan" (as `check
    --format json` does), exit 0; the recalibrated bn1 then folds."""
    np.save(tmp_path / "d.npy", np.random.default_rng(0).normal(size=(64, 8, 8, 3)).astype("float32"))
    out = tmp_path / "fixed.keras"
    run = run_bnaudit("fix", samples / "nan_moving_variance.keras", "-o", out, "--recalibrate", "--data", tmp_path / "d.npy", "--fold", "--no-verify", "--format", "json")
    assert run.returncode == 0 and run.stderr == "", run.stderr
    report = json.loads(run.stdout)  # strict JSON: json.loads would take NaN, so look for it
    assert "NaN" not in run.stdout and "Infinity" not in run.stdout
    recalibrated = {c["layer"]: {a["name"]: a["max_abs_delta"] for a in c["arrays"]} for c in report["changes"] if c["fix"] == "recalibrate"}
    assert recalibrated["bn1"]["moving_variance"] == "nan" and isinstance(recalibrated["bn2"]["moving_variance"], float)
    assert [c["layer"] for c in report["changes"] if c["fix"] == "fold"] == ["conv1", "bn1", "conv2", "bn2"] and report["refused"] == []
    assert {(f.code, f.layer) for f in audit(out, select=["BN2"]).findings} == set()


@pytest.mark.parametrize("flag", ["--data", "--verify-data"])
def test_missing_data_is_refused_as_check_refuses_it_before_tensorflow(tmp_path, samples, flag):
    missing = tmp_path / "nope.npy"
    np.save(tmp_path / "d.npy", np.zeros((4, 8, 8, 3), "float32"))
    extra = ["--recalibrate", "--data", tmp_path / "d.npy"] if flag == "--verify-data" else ["--unbake"]
    run = run_bnaudit("fix", samples / "clean_conv_bn_relu.keras", "-o", tmp_path / "x.keras", *extra, flag, missing)
    line = f"bnaudit: error: {flag} {missing}: no such file or directory (--data takes a .npy or .npz file, an image directory, or package.module:function)\n"
    assert (run.returncode, run.stdout, run.stderr) == (2, "", line)
    if flag == "--data":
        assert run_bnaudit("check", samples / "clean_conv_bn_relu.keras", "--data", missing).stderr == line
    assert listing(tmp_path) == ["d.npy"]
    with pytest.raises(DataError) as raised:
        fix(samples / "clean_conv_bn_relu.keras", tmp_path / "x.keras", unbake=True, data=missing)
    assert raised.value.message == f"--data {missing}: no such file or directory"


def test_data_of_the_wrong_shape_is_refused_for_a_fix_that_does_not_recalibrate(tmp_path, samples):
    """The proof reads the data before the copy is moved into place: one line, exit 2,
    nothing written; with --no-verify nothing would read it, which is said instead."""
    np.save(tmp_path / "wrong.npy", np.zeros((4, 5, 5, 3), "float32"))
    source = samples / "bn_training_baked.keras"
    run = run_bnaudit("fix", source, "-o", tmp_path / "x.keras", "--unbake", "--data", tmp_path / "wrong.npy")
    assert (run.returncode, run.stdout) == (2, "")
    assert run.stderr == (
        f"bnaudit: error: {source}: --data {tmp_path / 'wrong.npy'}: input 'image' expects shape (None, 8, 8, 3) float32; "
        "the data has shape (4, 5, 5, 3) float32 (reshape the data to the model's input shape)\n"
    )
    assert listing(tmp_path) == ["wrong.npy"]
    run = run_bnaudit("fix", source, "-o", tmp_path / "x.keras", "--unbake", "--data", tmp_path / "wrong.npy", "--no-verify")
    assert (run.returncode, run.stdout) == (2, "")
    assert run.stderr == f"bnaudit: error: {source}: --data is read by --recalibrate and by the proof, which --no-verify turns off (drop one of them)\n"
    assert listing(tmp_path) == ["wrong.npy"]


def test_one_pass_recalibration_in_batches_of_one_is_refused(tmp_path, samples):
    np.save(tmp_path / "d.npy", np.random.default_rng(0).normal(size=(8, 8, 8, 3)).astype("float32"))
    source = samples / "clean_conv_bn_relu.keras"
    message = "one-pass recalibration at --batch-size 1: each BN would normalize by the statistics of one sample"
    hint = "give --batch-size 2 or more, or --recalibrate-method per-level, which measures each BN in inference mode at any batch size"
    run = run_bnaudit("fix", source, "-o", tmp_path / "x.keras", "--recalibrate", "--data", tmp_path / "d.npy", "--batch-size", "1")
    assert (run.returncode, run.stdout, run.stderr) == (2, "", f"bnaudit: error: {source}: {message} ({hint})\n")
    with pytest.raises(FixError) as raised:
        fix(source, tmp_path / "x.keras", recalibrate=True, data=tmp_path / "d.npy", batch_size=1)
    assert (raised.value.message, raised.value.hint) == (message, hint)
    assert listing(tmp_path) == ["d.npy"]
    # per-level measures in inference mode, where one sample per batch is right; on one
    # device (mirrored over two, a batch of one leaves a replica empty, which TensorFlow
    # refuses: a limit of per-level left as it is)
    run = run_bnaudit("fix", source, "-o", tmp_path / "x.keras", "--recalibrate", "--data", tmp_path / "d.npy", "--batch-size", "1",
                      "--recalibrate-method", "per-level", "--no-verify", "--format", "json", env={"BNAUDIT_LOGICAL_CPUS": "1"})
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout)["recalibration"] == {"method": "per-level", "passes": 2, "samples": 8}


@pytest.mark.parametrize(
    "keywords,message",
    [
        ({"fold": "no"}, "option 'fold' = 'no': expected True or False"),
        ({"fold": True, "absorb_bias": 1}, "option 'absorb_bias' = 1: expected True or False"),
        ({"fold": True, "batch_size": 0}, "option 'batch_size' = 0: expected a positive integer"),
        ({"fold": True, "force": "yes"}, "option 'force' = 'yes': expected True or False"),
        ({"fold": True, "data": 3}, "option 'data' = 3: expected text"),
        ({"fold": True, "before_write": "render"}, "option 'before_write' = 'render': expected a function of the report"),
    ],
)
def test_the_api_checks_its_keywords_as_audit_does(tmp_path, samples, keywords, message):
    with pytest.raises(OptionsError) as raised:
        fix(samples / "bias_before_bn.keras", tmp_path / "x.keras", verify=False, **keywords)
    assert str(raised.value) == message
    assert listing(tmp_path) == []


def test_every_bad_input_error_is_a_load_error():
    """docs/fix.md: ``except LoadError`` catches the request's, the data's and the model's."""
    assert issubclass(FixError, LoadError) and issubclass(DataError, LoadError) and issubclass(OptionsError, ValueError)


def test_all_without_data_says_recalibration_needs_it(tmp_path):
    """A freshly built model: BN102 (absorbed) and BN202 (never-updated statistics, which
    only a recalibration fixes); without --data the report says so."""
    import keras

    inputs = keras.Input((4,))
    keras.Model(inputs, keras.layers.BatchNormalization(name="bn")(keras.layers.Dense(3, name="fc")(inputs))).save(tmp_path / "m.keras")
    run = run_bnaudit("fix", tmp_path / "m.keras", "-o", tmp_path / "x.keras", "--all", "--no-verify")
    assert run.returncode == 0, run.stderr
    line = "not recalibrated: BN202 bn is fixed by --recalibrate, which needs --data DATA or --stats FILE"
    assert run.stdout.splitlines()[-2:] == [line, "proof: not run - not asked for (--no-verify)"]
    report = fix(tmp_path / "m.keras", tmp_path / "y.keras", all_fixes=True, verify=False)
    assert report.written and report.needs_data == ["BN202 bn"] and [c.layer for c in report.changes] == ["bn", "fc"]
