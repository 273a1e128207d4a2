"""BN301 and BN303 on ONNX models: the ONNX Runtime pass over --data, checked against Keras.

A tf-keras model whose moving statistics are those of N(0, 1) data is saved as ``.h5``
and converted with tf2onnx (as ``sample_models/build_exports.py`` converts, BN folding
off); both are audited on the same data. Hand-built graphs (``onnx.helper``) cover what
tf2onnx does not write: unnamed BN nodes, BN inside an ``If``, a fixed batch dimension.
"""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest

from conftest import SAMPLES, frameworks_imported, run_bnaudit

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

MODEL = "drift_probe"
#: The Keras layers with a BN node in the converted file, and their node names (docs/formats.md).
KERAS_BNS = ("bn1", "bn2")
C = 4


def node_of(layer: str) -> str:
    return f"{MODEL}/{layer}/FusedBatchNormV3"


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """(folder): drift_probe.h5, drift_probe.onnx, matching.npy, drifted.npy, nchw.npy."""
    tf_keras = pytest.importorskip("tf_keras")
    pytest.importorskip("tf2onnx")
    sys.path.insert(0, str(SAMPLES))
    from build_exports import to_onnx

    folder = tmp_path_factory.mktemp("onnx_statistics")
    rng = np.random.default_rng(0)
    tf_keras.utils.set_random_seed(0)
    layers = tf_keras.layers
    inputs = tf_keras.Input((8, 8, 3), name="image")
    x = layers.Conv2D(8, 3, padding="same", use_bias=False, name="conv1")(inputs)
    x = layers.BatchNormalization(momentum=0.0, name="bn1")(x)
    x = layers.ReLU(name="relu1")(x)
    x = layers.Conv2D(8, 3, padding="same", use_bias=False, name="conv2")(x)
    x = layers.BatchNormalization(momentum=0.0, name="bn2")(x)
    x = layers.GlobalAveragePooling2D(name="pool")(x)
    model = tf_keras.Model(inputs, layers.Dense(4, name="head")(x), name=MODEL)
    # momentum 0: one training-mode call sets the moving statistics to those of this batch
    model(rng.normal(0, 1, (512, 8, 8, 3)).astype("float32"), training=True)
    model.save(folder / f"{MODEL}.h5")
    to_onnx(model, folder / f"{MODEL}.onnx")
    np.save(folder / "matching.npy", rng.normal(0, 1, (96, 8, 8, 3)).astype("float32"))
    np.save(folder / "drifted.npy", rng.normal(3, 4, (96, 8, 8, 3)).astype("float32"))
    np.save(folder / "nchw.npy", rng.normal(0, 1, (96, 3, 8, 8)).astype("float32"))
    return folder


def _audit(folder, data, *extra):
    run = run_bnaudit(
        "check", "--data", folder / data, "--select", "BN301,BN303", "--format", "json", "--exit-zero", *extra,
        folder / f"{MODEL}.h5", folder / f"{MODEL}.onnx",
    )
    assert run.returncode == 0 and "Traceback" not in run.stderr, run.stderr
    keras_model, onnx_model = json.loads(run.stdout)["models"]
    return keras_model, onnx_model


def _found(model):
    return sorted((f["code"], f["layer"]) for f in model["findings"])


@pytest.mark.slow
def test_bn301_fires_on_the_same_layers_as_the_keras_original_and_not_on_matching_data(converted):
    keras_model, onnx_model = _audit(converted, "drifted.npy")
    assert _found(keras_model) == [("BN301", "bn1"), ("BN301", "bn2")]
    assert _found(onnx_model) == [("BN301", node_of(layer)) for layer in KERAS_BNS]
    assert onnx_model["errors"] == [] and onnx_model["meta"]["format"] == "onnx"
    assert {"BN301", "BN303"} <= set(onnx_model["rules_run"])
    how = onnx_model["measurements"]["statistics"]
    assert (how["samples"], how["batch_size"], how["upstream"], how["source"]) == (96, 32, "inference", "data")
    # the drift scores agree with the Keras pass on the same data
    scores = {layer: m["drift_score"] for layer, m in keras_model["measurements"]["statistics"]["layers"].items()}
    measured = onnx_model["measurements"]["statistics"]["layers"]
    assert sorted(measured) == [node_of(layer) for layer in KERAS_BNS]
    for layer in KERAS_BNS:
        assert measured[node_of(layer)]["drift_score"] == pytest.approx(scores[layer], rel=1e-3)

    keras_model, onnx_model = _audit(converted, "matching.npy")
    assert _found(keras_model) == [] and _found(onnx_model) == []
    assert {"BN301", "BN303"} <= set(onnx_model["rules_run"])
    assert len(onnx_model["measurements"]["statistics"]["layers"]) == len(KERAS_BNS)


@pytest.mark.slow
def test_measured_moments_match_the_keras_pass_on_the_same_data(converted):
    import tf_keras

    from bnaudit.loaders.onnx import bnaudit_load_model
    from bnaudit.runtime.data import iter_batches
    from bnaudit.runtime.onnx_statistics import OnnxStatisticsPass
    from bnaudit.runtime.statistics import collect

    data = str(converted / "drifted.npy")
    model = tf_keras.models.load_model(converted / f"{MODEL}.h5", compile=False)
    keras = collect(model, iter_batches(data, model, 32, None, order="sorted"), batch_size=32)
    graph = bnaudit_load_model(converted / f"{MODEL}.onnx")
    onnx_pass = OnnxStatisticsPass(converted / f"{MODEL}.onnx", graph)
    measured = onnx_pass.collect(iter_batches(data, onnx_pass.input_specs(), 32, None, order="sorted"), batch_size=32, fingerprint="")
    assert sorted(measured.layers) == sorted(node_of(layer) for layer in KERAS_BNS)
    assert (measured.samples, measured.batches, measured.upstream) == (96, 3, "inference")
    for layer in KERAS_BNS:
        ours, theirs = measured.layers[node_of(layer)], keras.layers[layer]
        np.testing.assert_array_equal(ours.moments.count, theirs.moments.count)
        np.testing.assert_allclose(ours.moments.mean, theirs.moments.mean, rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(ours.moments.variance, theirs.moments.variance, rtol=1e-4)
        np.testing.assert_allclose(ours.batch_means.mean, theirs.batch_means.mean, rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_data_in_another_layout_is_one_line_and_exit_2(converted):
    run = run_bnaudit("check", "--data", converted / "nchw.npy", "--select", "BN301", converted / f"{MODEL}.onnx")
    assert run.returncode == 2 and "Traceback" not in run.stderr
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1, run.stderr
    assert "input 'image' expects shape (None, 8, 8, 3) float32; the data has shape (96, 3, 8, 8) float32" in lines[0]
    assert lines[0].startswith(f"bnaudit: error: {converted / MODEL}.onnx")


@pytest.mark.parametrize("shape, dtype, offset", [((16, 5, 7, 7), "float32", 1e3), ((64, 6), "float32", -40.0), ((8, 3, 4, 4, 4), "float16", 2.0), ((4, 3, 5), "float64", 1e6)])
def test_channel_moments_match_float64_numpy_over_batch_and_positions(shape, dtype, offset):
    from bnaudit.runtime.onnx_statistics import channel_moments

    x = (np.random.default_rng(2).normal(offset, 3, shape)).astype(dtype)
    exact = np.moveaxis(x.astype(np.float64), 1, -1).reshape(-1, shape[1])
    measured = channel_moments(x)
    assert measured.channels == shape[1] and (measured.count == len(exact)).all()
    np.testing.assert_allclose(measured.mean, exact.mean(axis=0), rtol=1e-7, atol=1e-7 * (abs(offset) + 3))
    np.testing.assert_allclose(measured.variance, exact.var(axis=0), rtol=1e-6)


# -- hand-built graphs: no TensorFlow needed ------------------------------------------------


def _vec(name, values):
    return numpy_helper.from_array(np.asarray(values, dtype=np.float32), name)


def _bn_model(folder, *, name="bn", batch="batch", in_if=False):
    """x (N, C, 4, 4) -> BatchNormalization (moving mean 0, variance 1) -> y, opset 17."""
    initializers = [_vec("scale", np.ones(C)), _vec("bias", np.zeros(C)), _vec("mean", np.zeros(C)), _vec("var", np.ones(C))]
    bn = helper.make_node("BatchNormalization", ["x", "scale", "bias", "mean", "var"], ["y"], name=name)
    nodes = [bn]
    if in_if:
        branch = helper.make_graph([bn], "then", [], [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
        other = helper.make_graph([helper.make_node("Identity", ["x"], ["y_else"])], "else", [], [helper.make_tensor_value_info("y_else", TensorProto.FLOAT, None)])
        initializers.append(numpy_helper.from_array(np.array(True), "cond"))
        nodes = [helper.make_node("If", ["cond"], ["out"], name="branch", then_branch=branch, else_branch=other)]
    output = "out" if in_if else "y"
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, C, 4, 4])],
        [helper.make_tensor_value_info(output, TensorProto.FLOAT, [batch, C, 4, 4])], initializers,
    )
    path = folder / "m.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def _data(folder, shift=0.0, dead=None, samples=20):
    x = np.random.default_rng(1).normal(0, 1, (samples, C, 4, 4)).astype("float32")
    x[:, 1] += shift
    if dead is not None:
        x[:, dead] = 0.5
    np.save(folder / "data.npy", x)
    return folder / "data.npy"


def _check(path, data, *extra):
    """``check --data DATA`` (``--stats FILE`` when ``data`` is None) as JSON."""
    source = ("--data", data) if data is not None else ()
    run = run_bnaudit("check", *source, "--select", "BN3", "--format", "json", "--exit-zero", *extra, path)
    assert "Traceback" not in run.stderr, run.stderr
    return json.loads(run.stdout)["models"][0]


@pytest.mark.parametrize("name", ["bn", ""])
def test_a_shifted_channel_is_bn301_and_a_constant_one_bn303_on_a_hand_built_graph(tmp_path, name):
    """An unnamed node is the loader's ``BatchNormalization_0``, measured all the same."""
    path = _bn_model(tmp_path, name=name)
    layer = name or "BatchNormalization_0"
    model = _check(path, _data(tmp_path, shift=4.0, dead=3))
    assert model["errors"] == []
    assert _found(model) == [("BN301", layer), ("BN303", layer)]
    bn303 = next(f for f in model["findings"] if f["code"] == "BN303")
    assert bn303["details"]["dead_channels"] == [3]
    clean = _check(path, _data(tmp_path))
    assert _found(clean) == [] and {"BN301", "BN303"} <= set(clean["rules_run"])
    layers = clean["measurements"]["statistics"]["layers"]
    assert list(layers) == [layer] and layers[layer]["drift_score"] < 0.05


@pytest.mark.parametrize(
    "available, expected",
    [
        (["CPUExecutionProvider"], ["CPUExecutionProvider"]),
        (["AzureExecutionProvider", "CPUExecutionProvider"], ["CPUExecutionProvider"]),
        (["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"], ["CUDAExecutionProvider", "CPUExecutionProvider"]),
        (["ROCMExecutionProvider", "CPUExecutionProvider"], ["ROCMExecutionProvider", "CPUExecutionProvider"]),
        (["TensorrtExecutionProvider", "CPUExecutionProvider"], ["CPUExecutionProvider"]),
    ],
)
def test_the_pass_runs_on_the_first_gpu_provider_with_the_cpu_behind_it(available, expected):
    from bnaudit.runtime.onnx_statistics import pass_providers

    assert pass_providers(available) == expected


def test_the_notes_name_the_providers_the_pass_ran_on(tmp_path):
    """Here, the providers ONNX Runtime has: the CPU alone without a GPU provider."""
    import onnxruntime

    from bnaudit.runtime.onnx_statistics import pass_providers

    model = _check(_bn_model(tmp_path), _data(tmp_path))
    ran = pass_providers(onnxruntime.get_available_providers())
    assert f"ONNX Runtime ran the statistics pass on {', '.join(ran)}" in model["notes"]


def test_the_pass_on_a_gpu_provider_finds_what_the_cpu_finds(tmp_path):
    import onnxruntime

    from bnaudit.runtime.onnx_statistics import PASS_GPU_PROVIDERS

    gpu = [p for p in PASS_GPU_PROVIDERS if p in onnxruntime.get_available_providers()]
    if not gpu:
        pytest.skip("no GPU execution provider in this ONNX Runtime")
    model = _check(_bn_model(tmp_path), _data(tmp_path, shift=4.0, dead=3))
    assert any(n.startswith(f"ONNX Runtime ran the statistics pass on {gpu[0]}") for n in model["notes"]), model["notes"]
    assert _found(model) == [("BN301", "bn"), ("BN303", "bn")]


def test_a_bn_inside_an_if_branch_is_not_measured_and_the_note_says_so(tmp_path):
    model = _check(_bn_model(tmp_path, in_if=True), _data(tmp_path, shift=4.0))
    assert model["errors"] == [] and _found(model) == []
    assert model["measurements"]["statistics"].get("layers", {}) == {}
    assert any("did not measure 1 BN node(s) inside ONNX subgraphs" in n and "'branch/then_branch/bn'" in n for n in model["notes"])


def test_a_fixed_batch_runs_in_batches_of_its_size_and_the_short_rest_is_noted(tmp_path):
    model = _check(_bn_model(tmp_path, batch=8), _data(tmp_path, samples=20), "--batch-size", "5")
    how = model["measurements"]["statistics"]
    assert (how["samples"], how["batches"], how["batch_size"]) == (16, 2, 8)
    assert any("fixes its batch at 8: the last 4 sample(s)" in n for n in model["notes"])


def test_a_model_onnx_runtime_cannot_run_is_one_line_and_exit_2(tmp_path):
    """A custom-domain operator (BN501) has no library registered: refused, not run."""
    _bn_model(tmp_path)
    model = onnx.load(tmp_path / "m.onnx")
    model.graph.node.append(helper.make_node("Foo", ["y"], ["z"], name="foo", domain="acme"))
    model.graph.output[0].name = "z"
    model.opset_import.append(helper.make_opsetid("acme", 1))
    onnx.save(model, tmp_path / "m.onnx")
    run = run_bnaudit("check", "--data", _data(tmp_path), "--select", "BN301", tmp_path / "m.onnx")
    assert run.returncode == 2 and "Traceback" not in run.stderr
    (line,) = run.stderr.strip().splitlines()
    assert "ONNX Runtime cannot load the model with its BN inputs exposed" in line and "acme" in line


def test_a_tf_config_cluster_is_refused_on_onnx_with_one_line(tmp_path):
    tf_config = json.dumps({"cluster": {"worker": ["localhost:1", "localhost:2"]}, "task": {"type": "worker", "index": 0}})
    run = run_bnaudit("check", "--data", _data(tmp_path), "--select", "BN301", _bn_model(tmp_path), env={"TF_CONFIG": tf_config})
    assert run.returncode == 2 and "Traceback" not in run.stderr
    (line,) = run.stderr.strip().splitlines()
    assert "a TF_CONFIG cluster runs the Keras pass; an ONNX model is measured with ONNX Runtime" in line


def test_upstream_training_is_refused_on_onnx_with_one_line(tmp_path):
    run = run_bnaudit("check", "--data", _data(tmp_path), "--select", "BN301", "--upstream", "training", _bn_model(tmp_path))
    assert run.returncode == 2 and "Traceback" not in run.stderr
    (line,) = run.stderr.strip().splitlines()
    assert "--upstream training needs every BN to run on batch statistics" in line


def test_stats_shards_of_an_onnx_model_merge_and_check_reads_them(tmp_path):
    path, data = _bn_model(tmp_path), _data(tmp_path, shift=4.0, samples=40)
    for k in (1, 2):
        run = run_bnaudit("stats", "--data", data, "--batch-size", "10", "--shard", f"{k}/2", "-o", tmp_path / f"part{k}.npz", path)
        assert run.returncode == 0, run.stderr
    assert run_bnaudit("merge", tmp_path / "part1.npz", tmp_path / "part2.npz", "-o", tmp_path / "all.npz").returncode == 0
    merged = _check(path, None, "--stats", tmp_path / "all.npz")
    direct = _check(path, data, "--batch-size", "10")
    assert _found(merged) == _found(direct) == [("BN301", "bn")]
    assert merged["measurements"]["statistics"]["layers"] == direct["measurements"]["statistics"]["layers"]


def test_the_onnx_statistics_pass_imports_no_tensorflow(tmp_path):
    path, data = _bn_model(tmp_path), _data(tmp_path, shift=4.0)
    code = (
        "import bnaudit\n"
        f"r = bnaudit.audit({str(path)!r}, select=['BN301'], data={str(data)!r}, in_process=True)\n"
        "assert not r.errors, r.errors\nassert [f.code for f in r.findings] == ['BN301'], r.findings"
    )
    assert frameworks_imported(code) == []
