"""BN301-BN303 and the statistics pass, on models trained here with Keras.

The model: features (16, each with its own scale and offset) -> bn_in -> fc1 -> bn1 ->
ReLU -> softmax head, trained with BN momentum 0.9 so that its moving statistics have
converged. Its own training data must not fire; a copy shifted by three standard
deviations, with feature 5 held constant, must fire BN301 on both BN layers, BN302,
and BN303 on channel 5 of bn_in. Tests run with two logical CPUs (conftest), so every
pass here runs under a MirroredStrategy.
"""

from __future__ import annotations

import json
import os
import pty
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import ROOT, SAMPLES, assert_same_statistics, run_bnaudit

DEAD_FEATURE = 5


@pytest.fixture(scope="module")
def keras():
    from bnaudit.runtime import import_tensorflow

    import_tensorflow()
    import keras

    return keras


@pytest.fixture(scope="module")
def trained(keras, tmp_path_factory):
    from keras import layers

    keras.utils.set_random_seed(3)
    rng = np.random.default_rng(3)
    scale, offset = rng.uniform(0.5, 3.0, 16), rng.normal(0, 2.0, 16)
    x = (rng.normal(size=(1024, 16)) * scale + offset).astype("float32")
    labels = np.argmax(((x - offset) / scale) @ rng.normal(size=(16, 3)), axis=1)
    inp = keras.Input((16,), name="features")
    h = layers.BatchNormalization(momentum=0.9, name="bn_in")(inp)
    h = layers.Dense(32, use_bias=False, name="fc1")(h)
    h = layers.BatchNormalization(momentum=0.9, name="bn1")(h)
    h = layers.Activation("relu", name="relu1")(h)
    model = keras.Model(inp, layers.Dense(3, activation="softmax", name="head")(h))
    model.compile(keras.optimizers.Adam(0.01), "sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(x, labels, batch_size=32, epochs=4, verbose=0)
    assert model.evaluate(x, labels, verbose=0)[1] > 0.85  # a real, working model
    folder = tmp_path_factory.mktemp("stats")
    model.save(folder / "mlp.keras")
    drifted = x + 3.0 * x.std(axis=0)
    drifted[:, DEAD_FEATURE] = x[:, DEAD_FEATURE].mean()
    np.save(folder / "train.npy", x)
    np.save(folder / "drifted.npy", drifted)
    return folder


def findings(model: dict) -> list[tuple[str, str]]:
    return sorted((f["code"], f["layer"]) for f in model["findings"])


@pytest.fixture(scope="module")
def audit_run(trained):
    """One ``check`` of three copies of the model, each with its own data (bnaudit.toml).

    ``wrong.keras`` gets data of the wrong width: its error must not stop the others.
    """
    for name in ("own", "drifted", "wrong"):
        shutil.copy(trained / "mlp.keras", trained / f"{name}.keras")
    np.save(trained / "wrong.npy", np.zeros((4, 15), np.float32))
    (trained / "bnaudit.toml").write_text(
        '[data]\n"own.keras" = "train.npy"\n"drifted.keras" = "drifted.npy"\n"wrong.keras" = "wrong.npy"\n'
    )
    run = run_bnaudit(
        "check", "own.keras", "drifted.keras", "wrong.keras", "--select", "BN3", "--format", "json", "--per-channel", cwd=trained
    )  # fmt: skip
    return run, {Path(m["path"]).stem: m for m in json.loads(run.stdout)["models"]}


def test_own_training_data_fires_nothing(audit_run):
    run, models = audit_run
    own = models["own"]
    assert findings(own) == [] and own["errors"] == []
    assert own["rules_run"] == ["BN301", "BN302", "BN303"]
    statistics = own["measurements"]["statistics"]
    assert statistics["samples"] == 1024 and statistics["batches"] == 32 and statistics["replicas"] == 2
    assert list(statistics["layers"]) == ["bn_in", "bn1"]
    for layer in statistics["layers"].values():
        assert layer["drift_score"] < 0.1 and layer["dead_channels"] == 0 and layer["full_batches"] == 32
    assert own["measurements"]["train_inference"]["cka"] > 0.9
    assert "batches/s" not in run.stderr  # no progress when stderr is not a terminal


def test_shifted_copy_fires_drift_divergence_and_the_dead_channel(audit_run):
    _, models = audit_run
    drifted = models["drifted"]
    assert findings(drifted) == [("BN301", "bn1"), ("BN301", "bn_in"), ("BN302", ""), ("BN303", "bn_in")]
    by_code = {(f["code"], f["layer"]): f for f in drifted["findings"]}
    drift = by_code["BN301", "bn_in"]["details"]
    assert drift["drift_score"] > 4 and drift["drifted_channels"] == 15 and drift["dead_channels"] == 1
    assert DEAD_FEATURE not in drift["drifted_channel_list"]  # dead channels are BN303's, not drift
    assert by_code["BN303", "bn_in"]["details"]["dead_channels"] == [DEAD_FEATURE]
    assert by_code["BN302", ""]["details"]["cka"] < 0.75
    per_channel = drifted["measurements"]["statistics"]["layers"]["bn_in"]["per_channel"]
    assert len(per_channel["mean_shift"]) == 16
    np.testing.assert_allclose(
        [s for i, s in enumerate(per_channel["mean_shift"]) if i != DEAD_FEATURE], 3.0, rtol=0.1
    )  # three standard deviations, as shifted
    assert per_channel["data_variance"][DEAD_FEATURE] < 1e-9


def test_data_that_does_not_fit_is_one_line_exit_2_and_the_other_models_still_run(audit_run, trained):
    run, models = audit_run
    assert run.returncode == 2
    errors = [line for line in run.stderr.splitlines() if line.startswith("bnaudit: error")]
    assert errors == [
        f"bnaudit: error: wrong.keras [BN301, BN302, BN303]: --data {trained / 'wrong.npy'}: input 'features' expects shape "
        "(None, 16) float32; the data has shape (4, 15) float32 (reshape the data to the model's input shape)"
    ]
    assert "Traceback" not in run.stderr
    reason = "not checked: see the error of BN301"
    assert models["wrong"]["skipped"] == [{"code": "BN302", "reason": reason}, {"code": "BN303", "reason": reason}]
    assert models["wrong"]["rules_run"] == []
    [error] = models["wrong"]["errors"]
    assert error["rule"] == "BN301" and error["rules"] == ["BN301", "BN302", "BN303"]
    assert models["wrong"]["outcomes"] == [
        {"code": "BN301", "status": "failed", "error": 0},
        {"code": "BN302", "status": "skipped", "reason": reason},
        {"code": "BN303", "status": "skipped", "reason": reason},
    ]
    assert models["own"]["errors"] == [] and models["drifted"]["errors"] == []


def test_wrong_shape_data_is_one_line_on_one_stream(audit_run, trained):
    """The text report on stdout does not repeat what stderr says; no rule repeats it, and
    the statistics pass and the re-runs, stopped by the same data, share one error."""
    run = run_bnaudit("check", "wrong.keras", "--select", "BN3,BN4", cwd=trained)
    assert run.returncode == 2
    assert [line for line in run.stderr.splitlines() if "expects shape" in line] == [
        f"bnaudit: error: wrong.keras [BN301, BN302, BN303, BN401, BN402, BN403, BN404]: --data {trained / 'wrong.npy'}: input 'features' expects shape "
        "(None, 16) float32; the data has shape (4, 15) float32 (reshape the data to the model's input shape)"
    ]
    assert "expects shape" not in run.stdout
    assert run.stdout == "1 model, 0 findings, 1 rule error\n"


def test_thresholds_are_settings(trained):
    import bnaudit

    data = str(trained / "drifted.npy")
    relaxed = {"bn301.drift-score": 1e6, "bn301.mean-shift": 1e6, "bn301.log-variance-ratio": 1e6, "bn303.variance-ratio": 0.0}
    result = bnaudit.audit(trained / "mlp.keras", select=["BN301", "BN303"], data=data, settings=relaxed, in_process=True)
    assert result.errors == [] and result.findings == []
    strict = bnaudit.audit(trained / "mlp.keras", select=["BN301"], data=str(trained / "train.npy"), settings={"bn301.drift-score": 0.0}, in_process=True)
    assert sorted(f.layer for f in strict.findings) == ["bn1", "bn_in"]


# -- correctness against the slow, obvious way ----------------------------------------


def reference_inputs(keras, model, path: str, inputs: list[np.ndarray]) -> np.ndarray:
    """A BN layer's input computed with a Keras sub-model per nesting level."""
    container, values = model, inputs
    *nesting, name = path.split("/")
    for nested_name in nesting:
        nested = container.get_layer(nested_name)
        feed = keras.Model(container.inputs, nested._inbound_nodes[0].input_tensors)
        values = feed.predict(values, verbose=0)
        container = nested
    return keras.Model(container.inputs, container.get_layer(name).input).predict(values, verbose=0)


def assert_matches_numpy(statistics, layer_input: np.ndarray, channels_axis: int = -1) -> None:
    values = np.moveaxis(layer_input.astype(np.float64), channels_axis, -1).reshape(-1, layer_input.shape[channels_axis])
    mean, variance = values.mean(axis=0), values.var(axis=0)
    scale = np.sqrt(variance) + np.abs(mean)
    np.testing.assert_allclose(statistics.moments.mean, mean, rtol=1e-5, atol=1e-5 * scale.max())
    np.testing.assert_allclose(statistics.moments.variance, variance, rtol=1e-5)
    assert np.all(statistics.moments.count == len(values))


@pytest.fixture(scope="module")
def reference_models(keras, tmp_path_factory):
    """Real saved models: nested with a residual-branch BN, transfer learning, two inputs."""
    from model_builders import nested_variants

    folder = tmp_path_factory.mktemp("reference")
    nested_variants().save(folder / "nested_residual.keras")
    return [folder / "nested_residual.keras", SAMPLES / "nested_transfer.keras", SAMPLES / "shared_and_branches.keras"]


def test_one_pass_matches_a_submodel_per_layer(keras, reference_models, tmp_path):
    from bnaudit.runtime.data import input_specs, iter_batches
    from bnaudit.runtime.statistics import batchnorm_layers, collect

    rng = np.random.default_rng(0)
    for path in reference_models:
        model = keras.saving.load_model(path)
        specs = input_specs(model)
        inputs = [rng.normal(1.0, 2.0, size=(70, *spec.shape)).astype("float32") for spec in specs]
        data = tmp_path / f"{path.stem}.npz"
        np.savez(data, **{spec.name: array for spec, array in zip(specs, inputs)})
        statistics = collect(model, iter_batches(str(data), model, 16, None, order="sorted"), batch_size=16)
        assert statistics.replicas == 2 and statistics.samples == 70
        layers = batchnorm_layers(model)
        assert set(statistics.layers) == set(layers) and len(layers) >= 2
        for bn_path in layers:
            reference = reference_inputs(keras, model, bn_path, inputs if len(inputs) > 1 else inputs[0])
            assert_matches_numpy(statistics.layers[bn_path], reference)
            # Full batches only: 4 of 16 samples, the fifth (6 samples) is left out of the spread.
            assert np.all(statistics.layers[bn_path].batch_means.count == 4)


def test_upstream_training_normalizes_with_the_whole_batch_across_replicas(keras, trained):
    from bnaudit.runtime.data import iter_batches
    from bnaudit.runtime.statistics import collect

    model = keras.saving.load_model(trained / "mlp.keras")
    x = np.load(trained / "drifted.npy")[:200]
    np.save(trained / "part.npy", x)
    measured = {
        mode: collect(model, iter_batches(str(trained / "part.npy"), model, 32, None, order="sorted"), batch_size=32, upstream=mode)
        for mode in ("inference", "training")
    }
    # bn_in has nothing upstream: the same either way.
    np.testing.assert_array_equal(measured["inference"].layers["bn_in"].moments.mean, measured["training"].layers["bn_in"].moments.mean)
    # bn1's input: fc1 of bn_in normalized with each batch's own statistics (the whole
    # batch of 32, though two replicas ran 16 samples each).
    bn_in, fc1 = model.get_layer("bn_in"), model.get_layer("fc1")
    gamma, beta = bn_in.gamma.numpy(), bn_in.beta.numpy()
    rows = []
    for start in range(0, len(x), 32):
        part = x[start : start + 32].astype(np.float64)
        normalized = (part - part.mean(0)) / np.sqrt(part.var(0) + bn_in.epsilon) * gamma + beta
        rows.append(normalized @ fc1.kernel.numpy())
    expected = np.concatenate(rows).astype(np.float64)
    training = measured["training"].layers["bn1"].moments
    np.testing.assert_allclose(training.mean, expected.mean(0), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(training.variance, expected.var(0), rtol=1e-4)
    assert not np.allclose(training.mean, measured["inference"].layers["bn1"].moments.mean, rtol=1e-2)
    # Measuring never touched the moving statistics.
    reloaded = keras.saving.load_model(trained / "mlp.keras")
    np.testing.assert_array_equal(bn_in.moving_mean.numpy(), reloaded.get_layer("bn_in").moving_mean.numpy())


# -- shards, merge, --stats -----------------------------------------------------------


@pytest.fixture(scope="module")
def stats_run(trained):
    """``bnaudit stats`` with stderr on a terminal (a pty), also writing the single-pass moments."""
    leader, follower = pty.openpty()
    command = ["stats", "mlp.keras", "--data", "drifted.npy", "-o", "single.npz"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-m", "bnaudit", *command], cwd=trained, env=env, stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=follower, text=True, timeout=300,
    )  # fmt: skip
    os.close(follower)
    terminal = b""
    try:
        while chunk := os.read(leader, 65536):
            terminal += chunk
    except OSError:  # the other end closed
        pass
    os.close(leader)
    assert proc.returncode == 0, terminal.decode(errors="replace")
    return proc.stdout, terminal.decode(errors="replace")


def test_stats_prints_the_table_and_progress_only_on_a_terminal(stats_run):
    table, terminal = stats_run
    lines = table.splitlines()
    assert lines[0].split() == ["layer", "channels", "drift", "score", "worst", "channel", "mean", "shift", "variance", "ratio"]
    assert [line.split()[:2] for line in lines[1:3]] == [["bn_in", "16"], ["bn1", "32"]]
    assert float(lines[1].split()[2]) > 4  # the drift that check reports
    assert lines[3].startswith("1024 samples in 32 batches of 32; upstream BN in inference mode; 2 replicas")
    assert "bnaudit: statistics: " in terminal and "batches/s" in terminal and "ETA" in terminal


def test_merged_shards_equal_the_single_pass_and_audit_without_the_data(keras, trained, stats_run, audit_run):
    from bnaudit.analysis import statistics_file
    from bnaudit.runtime.data import iter_batches
    from bnaudit.runtime.statistics import collect

    model = keras.saving.load_model(trained / "mlp.keras")
    data = str(trained / "drifted.npy")
    for k in (1, 3):
        part = collect(model, iter_batches(data, model, 32, None, shard=(k, 3)), batch_size=32, shard=(k, 3))
        statistics_file.save(part, trained / f"part{k}.npz")
    run = run_bnaudit("stats", trained / "mlp.keras", "--data", data, "--shard", "2/3", "-o", trained / "part2.npz")
    assert run.returncode == 0, run.stderr
    assert f"wrote shard 2/3 of {trained / 'mlp.keras'} (352 samples)" in run.stderr and run.stdout == ""

    merged_path = trained / "merged.npz"
    run = run_bnaudit("merge", *(trained / f"part{k}.npz" for k in (3, 1, 2)), "-o", merged_path)
    assert run.returncode == 0, run.stderr
    assert "1024 samples, 32 batches (complete)" in run.stderr
    merged, single = statistics_file.load(merged_path), statistics_file.load(trained / "single.npz")
    assert merged.samples == single.samples == 1024 and merged.batches == single.batches and merged.complete
    assert_same_statistics(merged, single, rtol=1e-9)

    # The merged file audits like --data (BN302 needs the model's outputs: skipped), without TensorFlow.
    code = (
        "import sys, json\n"
        "from bnaudit.cli import cli\n"
        "try:\n"
        f"    cli(['check', {str(trained / 'mlp.keras')!r}, '--stats', {str(merged_path)!r}, '--select', 'BN3', '--format', 'json'], standalone_mode=False)\n"
        "finally:\n"
        "    print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'keras'))), file=sys.stderr)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert json.loads(proc.stderr.strip().splitlines()[-1]) == []
    [result] = json.loads(proc.stdout)["models"]
    assert findings(result) == [("BN301", "bn1"), ("BN301", "bn_in"), ("BN303", "bn_in")]
    assert result["skipped"] == [{"code": "BN302", "reason": "needs --data or --inference"}]
    from_data = audit_run[1]["drifted"]["measurements"]["statistics"]["layers"]["bn_in"]
    assert result["measurements"]["statistics"]["layers"]["bn_in"]["drift_score"] == pytest.approx(from_data["drift_score"], rel=1e-6)


def test_merge_and_stats_refuse_what_does_not_add_up(keras, trained, tmp_path):
    from bnaudit.analysis import statistics_file

    part = statistics_file.load(trained / "part1.npz")
    run = run_bnaudit("merge", trained / "part1.npz", trained / "part1.npz", "-o", tmp_path / "twice.npz")
    assert run.returncode == 2 and run.stderr.strip() == "bnaudit: error: shard 1/3 is given twice (merge each shard once)"
    part.fingerprint = "0" * 16
    statistics_file.save(part, tmp_path / "other.npz")
    run = run_bnaudit("merge", trained / "part3.npz", tmp_path / "other.npz", "-o", tmp_path / "mixed.npz")
    assert run.returncode == 2 and "cannot merge statistics measured with different model" in run.stderr
    assert not (tmp_path / "mixed.npz").exists()
    run = run_bnaudit("merge", trained / "part1.npz", trained / "part3.npz", "-o", tmp_path / "partial.npz")
    assert run.returncode == 0 and "shards [1, 3] of 3: merge the rest before auditing" in run.stderr
    run = run_bnaudit("check", trained / "mlp.keras", "--stats", tmp_path / "partial.npz", "--select", "BN3")
    assert run.returncode == 2
    assert f"[BN301, BN303]: {tmp_path / 'partial.npz'} holds shards [1, 3] of 3 (merge every shard with `bnaudit merge`" in run.stderr
    run = run_bnaudit("check", trained / "mlp.keras", "--stats", trained / "merged.npz", "--data", trained / "train.npy")
    assert run.returncode == 2 and run.stderr.strip() == "bnaudit: error: give --data (measure now) or --stats (measured before), not both"
    run = run_bnaudit("check", SAMPLES / "clean_conv_bn_relu.keras", "--stats", trained / "merged.npz", "--select", "BN301")
    assert run.returncode == 2 and "was measured on another model" in run.stderr


@pytest.mark.parametrize(
    ("shape", "axis", "epsilon", "affine"),
    [
        ((4, 5, 6, 3), 3, 1e-3, True),  # NHWC: the fused kernel
        ((4, 3, 5, 6), 1, 1e-3, True),  # NCHW: the fused kernel
        ((2, 3, 4, 5, 3), 4, 1e-2, False),  # NDHWC, center=False and scale=False
        ((2, 3, 4, 5, 3), 1, 1e-3, True),  # NCDHW
        ((4, 7, 3), 2, 1e-3, True),  # rank 3: tf.nn.batch_normalization
        ((4, 5, 6, 3), 3, 1e-6, True),  # an epsilon under cuDNN's minimum: tf.nn.batch_normalization
    ],
)
def test_training_mode_normalization_is_ioffe_szegedys_transform_in_every_layout(keras, shape, axis, epsilon, affine):
    """What the pass's training-mode BN computes, against the transform written out in
    float64: fused or not, channels first or last, with and without gamma and beta. The
    channels' variance is of the order of 1e-6, so an epsilon off by 1e-5 would fail."""
    import tensorflow as tf

    from bnaudit.runtime.statistics import normalize

    rng = np.random.default_rng(3)
    x = rng.normal(0.5, 1e-3, shape).astype(np.float32)
    channels = shape[axis]
    reduce = tuple(i for i in range(len(shape)) if i != axis)
    mean, variance = x.astype(np.float64).mean(reduce), x.astype(np.float64).var(reduce)
    gamma, beta = (rng.uniform(0.5, 2, channels).astype(np.float32), rng.normal(0, 1, channels).astype(np.float32)) if affine else (None, None)
    outputs = normalize(tf.constant(x), axis, tf.constant(mean), tf.constant(variance), gamma, beta, epsilon).numpy()
    broadcast = [1] * len(shape)
    broadcast[axis] = channels
    expected = (x - mean.reshape(broadcast)) / np.sqrt(variance.reshape(broadcast) + epsilon)
    if affine:
        expected = expected * gamma.reshape(broadcast) + beta.reshape(broadcast)
    assert outputs.dtype == np.float32 and outputs.shape == shape
    np.testing.assert_allclose(outputs, expected, rtol=1e-4, atol=1e-4)
