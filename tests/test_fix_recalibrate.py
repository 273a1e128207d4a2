"""``bnaudit fix --recalibrate``, the data side: ``--verify-data`` on held-out data.

The sample ``clean_conv_bn_relu`` keeps moving statistics of N(0, 1)-like inputs; the
data here is N(2, 3^2), so its moving statistics are wrong for it and BN301 fires. The
model is recalibrated on one draw of that distribution and verified on another.
"""

from __future__ import annotations

import re
import shlex
import shutil

import numpy as np
import pytest

from bnaudit import audit
from bnaudit.measurements import BatchNormDrift, TrainInferenceComparison
from conftest import ROOT, run_bnaudit
from test_fix import batchnorm_paths, fix_in_subprocess


def shifted(path, seed: int, n: int = 96):
    np.save(path, (np.random.default_rng(seed).standard_normal((n, 8, 8, 3)) * 3 + 2).astype("float32"))
    return path


@pytest.fixture(scope="module")
def verified(tmp_path_factory, samples):
    """One recalibration with --verify-data, in JSON, plus what it ran on."""
    tmp = tmp_path_factory.mktemp("verify")
    source = samples / "clean_conv_bn_relu.keras"
    data, heldout = shifted(tmp / "data.npy", 1), shifted(tmp / "heldout.npy", 2)
    report = fix_in_subprocess(source, tmp / "fixed.keras", "--recalibrate", "--data", data, "--verify-data", heldout)
    return source, tmp / "fixed.keras", heldout, report


def test_verify_data_reports_bn301_before_and_clean_after(verified):
    source, out, heldout, report = verified
    figures = report["heldout"]
    layers = batchnorm_paths(source)
    assert figures["data"] == str(heldout) and figures["samples"] == 96
    assert figures["before"]["reported"] == layers == ["bn1", "bn2"]
    assert figures["after"]["reported"] == []
    assert list(figures["before"]["drift"]) == list(figures["after"]["drift"]) == layers
    assert figures["not_run"] == {}
    for side in ("before", "after"):
        scores = list(figures[side]["drift"].values())
        assert figures[side]["drift_max"] == pytest.approx(max(scores))
        assert figures[side]["drift_median"] == pytest.approx(float(np.median(scores)))
    # BN301's default threshold is 0.5: far above it before, far below after.
    assert figures["before"]["drift_max"] > 1.0 and figures["after"]["drift_max"] < 0.05
    # The same numbers `bnaudit check --data HELDOUT` measures on each file.
    for path, side in ((source, "before"), (out, "after")):
        checked = audit(path, select=["BN301", "BN302"], data=str(heldout), in_process=True)
        assert {m.layer: m.drift_score for m in checked.measured(BatchNormDrift)} == figures[side]["drift"]
        [compared] = checked.measured(TrainInferenceComparison)
        assert (compared.top1_agreement, compared.cka) == (figures[side]["top1_agreement"], figures[side]["cka"])
    # The proof itself is unchanged by --verify-data: BN301 on the recalibration data.
    assert report["proof"]["status"] == "passed" and report["proof"]["remaining"] == []


def test_verify_data_output_change_matches_keras_predict(verified):
    import keras

    source, out, heldout, report = verified
    x = np.load(heldout)
    original = keras.saving.load_model(source, compile=False).predict(x, verbose=0)
    fixed = keras.saving.load_model(out, compile=False).predict(x, verbose=0)
    figures = report["heldout"]
    assert figures["outputs_max_abs_delta"] == pytest.approx(float(np.abs(fixed - original).max()), rel=1e-5)
    assert figures["outputs_max_abs_delta"] > 0.01  # recalibration changes the outputs: that is its point
    assert figures["outputs_top1_agreement"] == pytest.approx(float(np.mean(fixed.argmax(-1) == original.argmax(-1))))


#: The command docs/fix.md shows for --verify-data, run as written.
DOC_COMMAND = "bnaudit fix model.keras -o fixed.keras --recalibrate --data train.npy --verify-data heldout.npy"


@pytest.mark.slow
def test_verify_data_in_text_as_docs_show_it_and_in_html(tmp_path, samples):
    shutil.copy(samples / "clean_conv_bn_relu.keras", tmp_path / "model.keras")
    shifted(tmp_path / "train.npy", 1), shifted(tmp_path / "heldout.npy", 2)
    run = run_bnaudit(*shlex.split(DOC_COMMAND)[1:], cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    shown = re.search(r"\$ " + re.escape(DOC_COMMAND) + r"\n\.\.\.\n(.*?)```", (ROOT / "docs" / "fix.md").read_text(), re.S).group(1).splitlines()
    start = lines.index(shown[0])
    number = re.compile(r"\d+(\.\d+)?(e-?\d+)?")
    assert [number.sub("N", line) for line in lines[start:]] == [number.sub("N", line) for line in shown]
    assert lines[start + 1].endswith("BN301 reports 2 -> 0 layers")
    run = run_bnaudit("fix", "model.keras", "-o", "x.keras", "--recalibrate", "--data", "train.npy", "--verify-data", "heldout.npy", "--no-verify", cwd=tmp_path)
    assert run.returncode == 2 and run.stderr.startswith("bnaudit: error: ") and "--no-verify" in run.stderr
    assert not (tmp_path / "x.keras").exists()
    run = run_bnaudit("fix", "model.keras", "-o", "x.keras", "--recalibrate", "--data", "train.npy", "--verify-data", "heldout.npy", "--format", "html", "--report", "r.html", cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    html = (tmp_path / "r.html").read_text()
    assert "<h2>Held-out data</h2>" in html and "<tr><td>layers BN301 reports</td><td>2</td><td>0</td></tr>" in html
    assert "<tr><td>bn2</td>" in html and "not run:" not in html


def test_bad_heldout_data_is_one_line_exit_2_nothing_written(tmp_path, samples):
    source = samples / "clean_conv_bn_relu.keras"
    data = shifted(tmp_path / "d.npy", 1, 32)
    np.save(tmp_path / "wrong.npy", np.zeros((4, 5, 5, 3), "float32"))
    run = run_bnaudit("fix", source, "-o", tmp_path / "x.keras", "--recalibrate", "--data", data, "--verify-data", tmp_path / "wrong.npy")
    assert run.returncode == 2
    assert run.stderr.splitlines() == [
        f"bnaudit: error: {source}: --verify-data {tmp_path / 'wrong.npy'}: input 'image' expects shape (None, 8, 8, 3) float32; "
        "the data has shape (4, 5, 5, 3) float32 (reshape the data to the model's input shape)"
    ]
    run = run_bnaudit("fix", source, "-o", tmp_path / "x.keras", "--absorb-bias", "--verify-data", data)
    assert run.returncode == 2 and "--verify-data measures a recalibration" in run.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.npy", "wrong.npy"]


@pytest.mark.slow
def test_verify_data_says_what_it_could_not_measure(tmp_path):
    """A regression output (one unit): no class axis, so no top-1 agreement anywhere, each said why."""
    import keras

    inputs = keras.Input((6,), name="features")
    hidden = keras.layers.BatchNormalization(name="bn")(keras.layers.Dense(5, name="fc")(inputs))
    keras.Model(inputs, keras.layers.Dense(1, name="out")(hidden)).save(tmp_path / "regression.keras")
    rng = np.random.default_rng(3)
    np.save(tmp_path / "d.npy", (rng.standard_normal((64, 6)) + 4).astype("float32"))
    np.save(tmp_path / "h.npy", (rng.standard_normal((64, 6)) + 4).astype("float32"))
    report = fix_in_subprocess(tmp_path / "regression.keras", tmp_path / "x.keras", "--recalibrate", "--data", tmp_path / "d.npy", "--verify-data", tmp_path / "h.npy")
    figures = report["heldout"]
    assert figures["before"]["reported"] == ["bn"] and figures["after"]["reported"] == []
    assert figures["outputs_top1_agreement"] is None and figures["before"]["top1_agreement"] is None
    assert figures["not_run"] == {
        "before.bn302": "top-1 agreement needs an output with a class axis of at least 2",
        "after.bn302": "top-1 agreement needs an output with a class axis of at least 2",
        "outputs.top1_agreement": "no output has a class axis (last axis of at least 2)",
    }
    assert figures["outputs_max_abs_delta"] > 0 and figures["before"]["cka"] is not None


def branching_model(path):
    """Three BN depth levels: bn_a; bn_b and bn_c on two branches after it; bn_d after their sum."""
    import keras
    from keras import layers

    from model_builders import set_trained_statistics

    inputs = keras.Input((8, 8, 3), name="image")
    a = layers.ReLU(name="ra")(layers.BatchNormalization(name="bn_a")(layers.Conv2D(6, 3, padding="same", name="ca")(inputs)))
    b = layers.BatchNormalization(name="bn_b")(layers.Conv2D(6, 3, padding="same", name="cb")(a))
    c = layers.BatchNormalization(name="bn_c")(layers.Conv2D(6, 1, name="cc")(a))
    d = layers.BatchNormalization(name="bn_d")(layers.Conv2D(6, 3, padding="same", name="cd")(layers.ReLU(name="rs")(layers.Add(name="sum")([b, c]))))
    model = keras.Model(inputs, layers.Dense(3, name="head")(layers.GlobalAveragePooling2D(name="gap")(d)))
    set_trained_statistics(model, seed=7)
    model.save(path)
    return path


def test_levels_group_batchnorms_by_depth(tmp_path):
    from bnaudit.engine import Auditor
    from bnaudit.fixes.recalibrate import levels

    graph = Auditor().load(branching_model(tmp_path / "branching.keras"))
    graph.weights.close()
    assert levels(graph) == [["bn_a"], ["bn_b", "bn_c"], ["bn_d"]]


def input_population_statistics(model, bn: str, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and variance per channel of ``bn``'s input, the model run in inference mode (float64)."""
    import keras

    producer = model.get_layer(bn)._inbound_nodes[0].input_tensors[0]
    features = keras.Model(model.inputs, producer).predict(x, verbose=0).astype(np.float64)
    return features.mean(axis=(0, 1, 2)), features.var(axis=(0, 1, 2))


def test_per_level_recalibration_is_exact_and_one_pass_is_not(tmp_path):
    """After per-level recalibration each BN's moving statistics are the population
    statistics of its input in the recalibrated model itself; after one pass (upstream
    BNs on batch statistics, small batches) the deeper ones are not."""
    import keras

    source = branching_model(tmp_path / "branching.keras")
    x = (np.random.default_rng(4).standard_normal((64, 8, 8, 3)) * 2 + 1).astype("float32")
    np.save(tmp_path / "d.npy", x)
    exact = fix_in_subprocess(source, tmp_path / "exact.keras", "--recalibrate", "--data", tmp_path / "d.npy", "--recalibrate-method", "per-level", "--batch-size", "4")
    assert exact["recalibration"] == {"method": "per-level", "passes": 3, "samples": 64}
    assert {c["what"] for c in exact["changes"]} == {"population statistics over 64 samples (upstream BNs recalibrated first)"}
    one = fix_in_subprocess(source, tmp_path / "one.keras", "--recalibrate", "--data", tmp_path / "d.npy", "--batch-size", "4")
    assert one["recalibration"] == {"method": "one-pass", "passes": 1, "samples": 64}
    for name, exactly in (("exact.keras", True), ("one.keras", False)):
        model = keras.saving.load_model(tmp_path / name, compile=False)
        for bn in ("bn_a", "bn_b", "bn_c", "bn_d"):
            mean, variance = input_population_statistics(model, bn, x)
            layer = model.get_layer(bn)
            close = np.allclose(layer.moving_mean.numpy(), mean, rtol=1e-4, atol=1e-5) and np.allclose(layer.moving_variance.numpy(), variance, rtol=1e-4, atol=1e-5)
            # bn_a depends on no BN: both methods measure it exactly.
            assert close == (exactly or bn == "bn_a"), (name, bn)


def test_per_level_needs_data_and_a_known_method(tmp_path, samples):
    from bnaudit import fix
    from bnaudit.loaders import LoadError

    source = samples / "clean_conv_bn_relu.keras"
    with pytest.raises(LoadError, match="--stats holds one-pass statistics; the per-level method measures with --data"):
        fix(source, tmp_path / "x.keras", recalibrate=True, stats=str(tmp_path / "all.npz"), recalibrate_method="per-level")
    with pytest.raises(LoadError, match="unknown recalibration method 'exact'"):
        fix(source, tmp_path / "x.keras", recalibrate=True, data=str(tmp_path / "d.npy"), recalibrate_method="exact")
    assert list(tmp_path.iterdir()) == []


def test_one_pass_recalibrates_a_model_with_frozen_batchnorms(tmp_path):
    """Transfer learning's usual model: the first two BNs frozen. One-pass recalibration
    replaces the frozen BNs' statistics too, so they must normalize with batch statistics
    in the pass like the others; measured behind their old moving statistics, the BNs
    after them got statistics of an input the copy no longer produces (BN301 on bn2,
    proof failed). With the whole data in one batch, one pass is then exact."""
    import keras

    inputs = keras.Input((8, 8, 3))
    x = inputs
    for i in range(3):
        x = keras.layers.Conv2D(4, 3, padding="same", use_bias=False, name=f"conv{i}")(x)
        x = keras.layers.BatchNormalization(name=f"bn{i}")(x)
        x = keras.layers.ReLU(name=f"relu{i}")(x)
    model = keras.Model(inputs, x)
    model.get_layer("bn0").trainable = model.get_layer("bn1").trainable = False
    model.save(tmp_path / "frozen.keras")
    x = (np.random.default_rng(6).standard_normal((64, 8, 8, 3)) * 3 + 2).astype("float32")
    np.save(tmp_path / "d.npy", x)
    report = fix_in_subprocess(tmp_path / "frozen.keras", tmp_path / "fixed.keras", "--recalibrate", "--data", tmp_path / "d.npy", "--batch-size", "64")
    assert report["proof"]["status"] == "passed" and report["proof"]["remaining"] == []
    fixed = keras.saving.load_model(tmp_path / "fixed.keras", compile=False)
    for bn in ("bn0", "bn1", "bn2"):
        mean, variance = input_population_statistics(fixed, bn, x)
        layer = fixed.get_layer(bn)
        np.testing.assert_allclose(layer.moving_mean.numpy(), mean, rtol=1e-3, atol=1e-4)
        np.testing.assert_allclose(layer.moving_variance.numpy(), variance, rtol=1e-3, atol=1e-4)
    # Statistics measured by `bnaudit stats` keep frozen BNs on their moving statistics: refused for this model.
    run = run_bnaudit("stats", tmp_path / "frozen.keras", "--data", tmp_path / "d.npy", "--upstream", "training", "-o", tmp_path / "s.npz")
    assert run.returncode == 0, run.stderr
    run = run_bnaudit("fix", tmp_path / "frozen.keras", "-o", tmp_path / "from_stats.keras", "--recalibrate", "--stats", tmp_path / "s.npz")
    assert run.returncode == 2 and run.stderr.count("\n") == 1 and "the model has frozen BN layers (bn0, bn1)" in run.stderr, run.stderr
    assert not (tmp_path / "from_stats.keras").exists()
