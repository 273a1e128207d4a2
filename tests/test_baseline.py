"""Baselines: today's findings accepted, only new ones reported, stale entries called out."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from conftest import SAMPLES, invoke

MODELS = ("bias_before_bn.keras", "dropout_before_bn.keras", "bn_training_baked.keras")


@pytest.fixture
def repo(tmp_path) -> Path:
    """models/ with three sample models (BN102 x2, BN101, BN106) and a baseline of them in ci/."""
    (tmp_path / "models").mkdir()
    for name in MODELS:
        shutil.copy(SAMPLES / name, tmp_path / "models" / name)
    proc = invoke("check", "models", "--isolated", "--write-baseline", "ci/baseline.json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr  # BN106 is an error, but writing the baseline accepts it
    assert "wrote 4 findings to the baseline ci/baseline.json" in proc.stderr
    return tmp_path


def check(repo: Path, *args: str, cwd: Path | None = None):
    proc = invoke("check", *args, "--isolated", "--format", "json", cwd=cwd or repo)
    document = json.loads(proc.stdout) if proc.stdout else {"models": []}
    found = {(Path(m["path"]).name, f["code"], f["layer"]) for m in document["models"] for f in m["findings"]}
    notes = {Path(m["path"]).name: m["notes"] for m in document["models"] if m["notes"]}
    return proc, found, notes


def test_the_baseline_records_model_rule_and_layer_relative_to_itself(repo):
    document = json.loads((repo / "ci" / "baseline.json").read_text())
    keys = [(e["model"], e["code"], e["layer"]) for e in document["findings"]]
    assert keys == [
        ("../models/bias_before_bn.keras", "BN102", "bn1"),
        ("../models/bias_before_bn.keras", "BN102", "bn_fc"),
        ("../models/bn_training_baked.keras", "BN106", "bn1"),
        ("../models/dropout_before_bn.keras", "BN101", "bn2"),
    ]
    assert document["version"] == 1


def test_with_the_baseline_only_new_findings_are_reported(repo):
    proc, found, _ = check(repo, "models", "--baseline", "ci/baseline.json")
    assert (proc.returncode, found) == (0, set())
    assert "baseline ci/baseline.json: findings suppressed: 4, stale entries: 0" in proc.stderr
    shutil.copy(SAMPLES / "consecutive_bn.keras", repo / "models" / "new.keras")
    shutil.copy(SAMPLES / "bn_axis_mismatch.keras", repo / "models" / "dropout_before_bn.keras")  # same name, new problem
    proc, found, _ = check(repo, "models", "--baseline", "ci/baseline.json")
    assert found == {("new.keras", "BN105", "bn2"), ("dropout_before_bn.keras", "BN107", "bn1")}
    assert proc.returncode == 1  # BN107 is an error
    assert "findings suppressed: 3, stale entries: 1" in proc.stderr  # dropout's BN101 went away


def test_the_same_baseline_works_from_any_working_directory(repo):
    (repo / "elsewhere").mkdir()
    proc, found, _ = check(repo, "../models/bias_before_bn.keras", "--baseline", str(repo / "ci" / "baseline.json"), cwd=repo / "elsewhere")
    assert found == set() and "findings suppressed: 2, stale entries: 0" in proc.stderr


def test_entries_that_match_nothing_are_stale_notes_and_can_fail_the_run(repo):
    shutil.copy(SAMPLES / "clean_conv_bn_relu.keras", repo / "models" / "bias_before_bn.keras")  # fixed
    (repo / "models" / "bn_training_baked.keras").unlink()  # deleted
    proc, found, notes = check(repo, "models", "--baseline", "ci/baseline.json")
    assert proc.returncode == 0 and found == set()
    assert "findings suppressed: 1, stale entries: 3" in proc.stderr
    assert notes == {
        "bias_before_bn.keras": [
            "baseline entry BN102 at bn1 matches no finding any more (stale): refresh the baseline with --write-baseline",
            "baseline entry BN102 at bn_fc matches no finding any more (stale): refresh the baseline with --write-baseline",
        ]
    }
    assert check(repo, "models", "--baseline", "ci/baseline.json", "--fail-on-stale")[0].returncode == 1


def test_a_partial_run_does_not_call_the_rest_stale(repo):
    one_model = check(repo, "models/dropout_before_bn.keras", "--baseline", "ci/baseline.json", "--fail-on-stale")[0]
    assert one_model.returncode == 0 and "findings suppressed: 1, stale entries: 0" in one_model.stderr
    one_rule = check(repo, "models", "--select", "BN101", "--baseline", "ci/baseline.json", "--fail-on-stale")[0]
    assert one_rule.returncode == 0 and "findings suppressed: 1, stale entries: 0" in one_rule.stderr


def test_retraining_a_model_keeps_its_entries(tmp_path):
    import keras
    from keras import layers

    model = keras.Sequential([keras.Input((4,)), layers.Dense(8, name="fc"), layers.BatchNormalization(name="bn"), layers.Dense(1, name="out")])
    model.compile(optimizer="sgd", loss="mse")
    rng = np.random.default_rng(0)
    model.fit(rng.normal(size=(32, 4)), rng.normal(size=(32, 1)), epochs=1, verbose=0)
    model.save(tmp_path / "m.keras")
    before = hashlib.sha256((tmp_path / "m.keras").read_bytes()).hexdigest()
    assert invoke("check", "m.keras", "--isolated", "--write-baseline", "b.json", cwd=tmp_path).returncode == 0
    model.fit(rng.normal(size=(32, 4)), rng.normal(size=(32, 1)), epochs=2, verbose=0)  # retrained: new weights
    model.save(tmp_path / "m.keras")
    assert hashlib.sha256((tmp_path / "m.keras").read_bytes()).hexdigest() != before
    proc, found, _ = check(tmp_path, "m.keras", "--baseline", "b.json", "--fail-on-stale")
    assert (proc.returncode, found) == (0, set())
    # BN102 and BN205 on bn (one step, then three: far too few for momentum 0.99)
    assert "findings suppressed: 2, stale entries: 0" in proc.stderr


@pytest.mark.parametrize(
    "content, message",
    [
        (None, "--baseline b.json: no such file (create it with --write-baseline b.json)"),
        ("not json", "--baseline b.json: not a bnaudit baseline (Expecting value: line 1 column 1 (char 0))"),
        ('{"version": 7, "findings": []}', "--baseline b.json: not a version-1 bnaudit baseline; write it again with --write-baseline"),
    ],
)
def test_a_bad_baseline_is_one_line_and_exit_2(repo, content, message):
    if content is not None:
        (repo / "b.json").write_text(content)
    proc = invoke("check", "models", "--isolated", "--baseline", "b.json", cwd=repo)
    assert (proc.returncode, proc.stdout, proc.stderr) == (2, "", f"bnaudit: error: {message}\n")
