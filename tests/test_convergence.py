"""BN205: the optimizer's step count against each BN's momentum, in every format Keras writes.

Models are trained a known number of steps (batches) by Keras 3 and by tf-keras, with
the current and the legacy optimizers, so the count bnaudit reads is checked against
the count Keras kept.
"""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest

from conftest import invoke, run_bnaudit

STEPS = 8


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    import keras
    import tf_keras
    from model_builders import fit_steps, small_convnet

    out = tmp_path_factory.mktemp("trained")
    slow = small_convnet(keras)  # momentum 0.99: 0.99^8 = 0.92 of the initial values left
    fit_steps(slow, STEPS)
    assert int(slow.optimizer.iterations.numpy()) == STEPS
    slow.save(out / "slow.keras")
    slow.save(out / "slow.h5")
    fast = small_convnet(keras, momentum=0.5)  # 0.5^8 = 0.004
    fit_steps(fast, STEPS)
    fast.save(out / "fast.keras")
    mid = small_convnet(keras, momentum=0.9)  # 0.9^8 = 0.43: lowering the momentum to 0.9 is no advice
    fit_steps(mid, STEPS)
    mid.save(out / "mid.keras")
    small_convnet(keras).save(out / "untrained.keras")  # never compiled: no optimizer state
    # Mixed precision: LossScaleOptimizer saves its own count (0) and its inner optimizer's.
    mixed = small_convnet(keras)
    mixed.compile(keras.optimizers.LossScaleOptimizer(keras.optimizers.Adam()), "sparse_categorical_crossentropy", run_eagerly=True)
    fit_steps(mixed, STEPS)
    assert int(mixed.optimizer.iterations.numpy()) == STEPS
    mixed.save(out / "mixed.keras")
    mixed.save(out / "mixed.h5")
    # A BN inside a wrapper trains with the model: the count bounds its updates.
    wrapped = keras.Sequential([
        keras.Input((8, 8, 3)),
        keras.layers.TimeDistributed(keras.layers.Dense(4), name="td_dense"),
        keras.layers.TimeDistributed(keras.layers.BatchNormalization(name="bn"), name="td"),
        keras.layers.GlobalAveragePooling2D(),
        keras.layers.Dense(2, activation="softmax"),
    ])
    fit_steps(wrapped, STEPS)
    wrapped.save(out / "wrapped.keras")

    # A backbone nested in a new model, and a frozen BN of the new head: the count
    # bounds neither's updates.
    inputs = keras.Input((8, 8, 3))
    x = small_convnet(keras, name="backbone")(inputs)
    x = keras.layers.BatchNormalization(name="head_bn")(x)
    x = keras.layers.BatchNormalization(name="frozen_bn", trainable=False)(x)
    nested = keras.Model(inputs, x)
    fit_steps(nested, STEPS)
    nested.save(out / "nested.keras")

    k2 = small_convnet(tf_keras)
    fit_steps(k2, STEPS)
    k2.save(out / "k2_slow.h5")
    k2.save(out / "k2_slow_sm")  # a tf-keras SavedModel: the count is in its checkpoint
    legacy = small_convnet(tf_keras)
    legacy.compile(tf_keras.optimizers.legacy.SGD(momentum=0.9), "sparse_categorical_crossentropy", run_eagerly=True)
    fit_steps(legacy, 6)
    legacy.save(out / "k2_legacy_sgd.h5")
    k2_fast = small_convnet(tf_keras, momentum=0.5)
    fit_steps(k2_fast, STEPS)
    k2_fast.save(out / "k2_fast.h5")
    k2.save(out / "k2_no_optimizer.h5", include_optimizer=False)
    return out


@pytest.fixture(scope="module")
def audited(trained):
    run = run_bnaudit("check", trained, "--select", "BN205", "--format", "json")
    assert run.returncode == 0, run.stderr
    return {model["path"].rpartition("/")[2]: model for model in json.loads(run.stdout)["models"]}


@pytest.mark.parametrize("name, steps", [
    ("slow.keras", STEPS), ("slow.h5", STEPS), ("k2_slow.h5", STEPS), ("k2_legacy_sgd.h5", 6), ("mixed.keras", STEPS), ("mixed.h5", STEPS), ("k2_slow_sm", STEPS),
])
def test_too_few_steps_for_momentum_099_fire_on_every_bn(audited, name, steps):
    model = audited[name]
    assert [(f["code"], f["layer"], f["severity"]) for f in model["findings"]] == [("BN205", "bn_a", "warning"), ("BN205", "bn_b", "warning")]
    details = model["findings"][0]["details"]
    assert details == {"steps": steps, "momentum": 0.99, "residual": round(0.99**steps, 6), "limit": 0.05, "steps_needed": 299}
    assert "bnaudit fix --recalibrate" in model["findings"][0]["fix"] and "0.9 settles in 29" in model["findings"][0]["fix"]


def test_a_bn_inside_a_wrapper_is_judged_not_set_aside_as_nested(audited):
    model = audited["wrapped.keras"]
    assert [(f["code"], f["layer"]) for f in model["findings"]] == [("BN205", "td/bn")]
    assert model["notes"] == []


def test_the_message_states_the_recorded_count_and_advises_only_what_helps(audited):
    [first, _] = audited["slow.keras"]["findings"]
    assert first["message"] == (
        "BatchNormalization 'bn_a': the file records 8 training steps; at momentum 0.99 its initial values still "
        "weigh 0.92 in the moving statistics (> 0.05; 299 steps needed)"
    )
    [mid, _] = audited["mid.keras"]["findings"]
    assert mid["fix"] == "train at least 29 steps, or recompute the statistics on training data (bnaudit fix --recalibrate)"


def test_a_residual_just_above_the_limit_is_shown_above_it():
    from bnaudit.rules.weights import _above

    assert (_above(0.050037, 0.05), _above(0.92274, 0.05), _above(0.0500001, 0.05)) == ("0.05004", "0.92", "0.0500001")


@pytest.mark.parametrize("name", ["fast.keras", "k2_fast.h5"])
def test_enough_steps_for_the_momentum_is_clean_and_the_rule_ran(audited, name):
    assert audited[name]["findings"] == [] and audited[name]["rules_run"] == ["BN205"] and audited[name]["notes"] == []


@pytest.mark.parametrize("name", ["untrained.keras", "k2_no_optimizer.h5"])
def test_without_optimizer_state_the_rule_is_skipped_not_passed(audited, name):
    model = audited[name]
    assert model["findings"] == [] and model["rules_run"] == []
    assert model["skipped"] == [{"code": "BN205", "reason": "the file holds no optimizer state: saved with include_optimizer=False, or never compiled"}]


def test_nested_and_frozen_layers_are_left_out_with_a_note(audited):
    model = audited["nested.keras"]
    assert [(f["code"], f["layer"]) for f in model["findings"]] == [("BN205", "head_bn")]
    assert model["notes"] == [
        "BN205 did not check 2 BN layers (inside nested model 'backbone', possibly restored: backbone/bn_a, backbone/bn_b): the optimizer's 8 steps do not bound their updates",
        "BN205 did not check 1 BN layer (frozen: frozen_bn): the optimizer's 8 steps do not bound their updates",
    ]


def test_the_limit_is_a_config_threshold(trained, tmp_path):
    (tmp_path / "bnaudit.toml").write_text("[bn205]\nresidual = 0.95\n")
    run = run_bnaudit("check", trained / "slow.keras", "--select", "BN205", "--format", "json", cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout)["models"][0]["findings"] == []  # 0.99^8 = 0.92 < 0.95


def test_rules_doc_names_the_threshold():
    run = invoke("rules", "BN205")
    assert run.returncode == 0
    assert "Thresholds ([tool.bnaudit.bn205] in the config): residual = 0.05 (0 to 1)." in run.stdout
    assert "three time constants" in run.stdout


def test_count_that_is_not_an_integer_scalar_is_not_trusted(tmp_path):
    from bnaudit.loaders.optimizer import keras3_iterations, legacy_h5_iterations

    cases = {"vector": np.arange(3), "negative": np.int64(-4), "fraction": np.float32(2.5), "text": np.bytes_(b"8"), "good": np.int64(12)}
    found = {}
    for name, value in cases.items():
        with h5py.File(tmp_path / f"{name}.h5", "w") as h5:
            h5["optimizer/vars/0"] = value
            h5["optimizer_weights/adam/iteration"] = value
        with h5py.File(tmp_path / f"{name}.h5", "r") as h5:
            found[name] = (keras3_iterations(h5), legacy_h5_iterations(h5))
    assert found == {"vector": (None, None), "negative": (None, None), "fraction": (None, None), "text": (None, None), "good": (12, 12)}


@pytest.mark.slow
@pytest.mark.parametrize("name", ["slow.keras", "slow.h5", "k2_slow.h5"])
def test_a_recalibrated_copy_is_not_dated_by_its_training_steps(trained, tmp_path, name):
    """BN205 advises `bnaudit fix --recalibrate`: the copy's moving statistics are then
    population statistics of the data, which the optimizer's 8 steps no longer date. The
    copy says so (metadata.json / a root attribute, which Keras ignores: the proof loads
    it), and BN205 is skipped on it with that reason, never passed; the original still fires."""
    from bnaudit.loaders import RECALIBRATED_REASON

    np.save(tmp_path / "data.npy", np.random.default_rng(0).normal(size=(64, 8, 8, 3)).astype("float32"))
    copy = tmp_path / f"copy{'.keras' if name.endswith('.keras') else '.h5'}"
    run = run_bnaudit("fix", trained / name, "-o", copy, "--recalibrate", "--data", tmp_path / "data.npy", "--format", "json")
    assert run.returncode == 0, run.stderr
    report = json.loads(run.stdout)
    assert report["proof"]["status"] == "passed" and [c["layer"] for c in report["changes"]] == ["bn_a", "bn_b"]
    checked = {}
    for path in (trained / name, copy):
        run = run_bnaudit("check", path, "--select", "BN205", "--format", "json")
        assert run.returncode == 0, run.stderr
        checked[path] = json.loads(run.stdout)["models"][0]
    assert [(f["code"], f["layer"]) for f in checked[trained / name]["findings"]] == [("BN205", "bn_a"), ("BN205", "bn_b")]
    assert checked[copy]["findings"] == [] and checked[copy]["rules_run"] == []
    assert checked[copy]["skipped"] == [{"code": "BN205", "reason": RECALIBRATED_REASON}]
