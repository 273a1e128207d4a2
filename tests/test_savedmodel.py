"""SavedModel directories: the graph of the .h5 from keras_metadata.pb, the BN vectors from the checkpoint.

``sample_models/savedmodel/NAME/`` are tf-keras ``model.save(dir, save_format="tf")`` of
the sample models (``sample_models/build_exports.py``); their layer paths are the Keras
paths, so the findings must be exactly those of ``NAME.keras``.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from bnaudit.loaders import export_graph
from conftest import audited_by_path, ROOT, SAMPLES, run_bnaudit

EXPECTED = json.loads((SAMPLES / "expected.json").read_text())
EXPORTED = json.loads((SAMPLES / "expected_exports.json").read_text())
SAVEDMODELS = sorted(k for k in EXPORTED if k.startswith("savedmodel/"))


@pytest.fixture(scope="module")
def audited():
    return audited_by_path(*SAVEDMODELS, cwd=SAMPLES)


@pytest.mark.parametrize("name", SAVEDMODELS)
def test_same_findings_on_the_same_layers_as_the_keras_original(audited, name):
    model = audited[name]
    assert model["errors"] == []
    assert model["meta"]["format"] == "savedmodel"
    got = sorted((f["code"], f["layer"]) for f in model["findings"])
    keras_original = EXPECTED[name.removeprefix("savedmodel/") + ".keras"]
    assert got == sorted((f["code"], f["layer"]) for f in keras_original)
    assert got == sorted((f["code"], f["layer"]) for f in EXPORTED[name])


def test_weight_rules_ran_on_checkpoint_values(audited):
    model = audited["savedmodel/bn_no_center_no_scale"]
    assert not {"BN201", "BN202", "BN203", "BN204"} & {s["code"] for s in model["skipped"]}
    [finding] = [f for f in model["findings"] if f["code"] == "BN201"]
    # only a reader that maps bn3's two variables (no gamma, no beta) to the right keys sees it
    assert finding["layer"] == "bn3" and finding["details"]["problems"]["moving_variance"]["negative"] == 1


def test_a_folder_of_savedmodels_and_onnx_files_is_discovered(tmp_path):
    shutil.copytree(SAMPLES / "savedmodel" / "bias_before_bn", tmp_path / "exports" / "bias_sm")
    (tmp_path / "exports" / "nested").mkdir()
    shutil.copy(SAMPLES / "onnx" / "consecutive_bn.onnx", tmp_path / "exports" / "nested" / "consecutive_bn.onnx")
    run = run_bnaudit("check", "--format", "json", "--exit-zero", tmp_path / "exports")
    paths = sorted(m["path"] for m in json.loads(run.stdout)["models"])
    assert paths == [str(tmp_path / "exports" / "bias_sm"), str(tmp_path / "exports" / "nested" / "consecutive_bn.onnx")]


def _copy(tmp_path, name="bias_before_bn"):
    target = tmp_path / name
    shutil.copytree(SAMPLES / "savedmodel" / name, target)
    return target


def _one_line_exit_2(path, message):
    run = run_bnaudit("check", path)
    assert run.returncode == 2 and "Traceback" not in run.stderr
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"bnaudit: error: {path}: ") and message in lines[0], lines


def test_truncated_metadata_is_one_line_and_exit_2(tmp_path):
    model = _copy(tmp_path)
    metadata = model / "keras_metadata.pb"
    metadata.write_bytes(metadata.read_bytes()[:1000])
    _one_line_exit_2(model, "keras_metadata.pb")


def test_metadata_that_is_not_json_is_one_line_and_exit_2(tmp_path):
    from bnaudit.loaders.savedmodel import _saved_metadata_class

    model = _copy(tmp_path)
    message = _saved_metadata_class()()
    node = message.nodes.add()
    node.node_path, node.identifier, node.metadata = "root", "_tf_keras_model", "{not json"
    (model / "keras_metadata.pb").write_bytes(message.SerializeToString())
    _one_line_exit_2(model, "is not JSON")


def test_damaged_checkpoint_is_one_error_not_a_crash(tmp_path):
    model = _copy(tmp_path)
    index = model / "variables" / "variables.index"
    index.write_bytes(index.read_bytes()[:40])
    run = run_bnaudit("check", "--format", "json", model)
    assert run.returncode == 2 and "Traceback" not in run.stderr
    [result] = json.loads(run.stdout)["models"]
    assert result["errors"] and all("checkpoint is unreadable" in e["message"] for e in result["errors"])


@pytest.mark.parametrize("damage", ["index", "data"])
def test_damaged_checkpoint_is_one_error_for_every_weight_rule(tmp_path, damage):
    """The index truncated, or the data file it points at missing: one error, naming every
    weight rule it stopped (before, with the data file missing, every rule after the
    first crashed on a half-opened reader, one "rule crashed" line each)."""
    model = _copy(tmp_path)
    if damage == "index":
        index = model / "variables" / "variables.index"
        index.write_bytes(index.read_bytes()[:40])
    else:
        for data in (model / "variables").glob("variables.data-*"):
            data.unlink()
    run = run_bnaudit("check", "--format", "json", model)
    assert run.returncode == 2 and "Traceback" not in run.stderr
    [result] = json.loads(run.stdout)["models"]
    [error] = result["errors"]
    assert error["rules"] == ["BN201", "BN202", "BN203", "BN204", "BN205"]
    assert error["message"].startswith("the SavedModel's checkpoint is unreadable")
    assert run.stderr.count("\n") == 1 and "rule crashed" not in run.stderr


@pytest.mark.slow
def test_a_compiled_tf_keras_savedmodel_is_not_bn501_for_its_builtin_metrics(tmp_path):
    """A compiled, trained tf-keras model saves its metrics (Mean, MeanMetricWrapper) as
    objects of keras_metadata.pb: built-in metrics, not layers, so no BN501 and the
    runtime re-runs load it without --unsafe-load, as its .h5."""
    code = f"""if True:
        import numpy as np, tf_keras
        inp = tf_keras.Input((4,))
        x = tf_keras.layers.Dense(8, use_bias=False, name="fc")(inp)
        x = tf_keras.layers.BatchNormalization(name="bn")(x)
        model = tf_keras.Model(inp, tf_keras.layers.Dense(3, activation="softmax", name="head")(x))
        model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
        model.fit(np.random.rand(400, 4), np.random.randint(0, 3, 400), epochs=1, verbose=0)
        model.save({str(tmp_path / "compiled")!r})
    """
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)
    assert "_tf_keras_metric" in (tmp_path / "compiled" / "keras_metadata.pb").read_bytes().decode("latin-1")
    run = run_bnaudit("check", tmp_path / "compiled", "--select", "BN501,BN401", "--inference", "--format", "json")
    assert run.returncode == 0, run.stderr
    [result] = json.loads(run.stdout)["models"]
    assert result["errors"] == [] and result["findings"] == []
    assert result["rules_run"] == ["BN401", "BN501"]


def test_a_savedmodel_without_keras_metadata_is_audited_as_its_serving_graph(tmp_path):
    """tf-keras's serving graph of bias_before_bn without its layer configs: the three fused
    BN ops in inference mode, named by their variables (``bn1/gamma``), fed by the convolution
    and Dense whose BiasAdd follows them: BN102 on the same layers as the .keras original;
    what a serving graph does not record is skipped with the reason."""
    model = _copy(tmp_path)
    (model / "keras_metadata.pb").unlink()
    result = __import__("bnaudit").audit(model)
    assert result.errors == []
    assert sorted((f.code, f.layer) for f in result.findings) == [("BN102", "bn1"), ("BN102", "bn_fc")]
    graph = export_graph.export_graph(model)
    assert {p: (layer.config["is_training"], layer.producers) for p, layer in graph.layers.items() if layer.class_name == "BatchNormalization"} == {
        "bn1": (False, ["conv1"]),
        "bn2": (False, ["conv2"]),
        "bn_fc": (False, ["fc"]),
    }
    assert (graph["conv1"].config["use_bias"], graph["conv2"].config["use_bias"], graph["fc"].class_name) == (True, False, "Dense")
    assert {"BN102", "BN106", "BN107", "BN201", "BN204"} <= set(result.rules_run)
    skipped = {s.code: s.reason for s in result.skipped}
    checked = {code: why for code, why in export_graph.NOT_RECORDED.items() if code not in ("BN211", "BN212")}  # those two: bnaudit diff's
    assert {c: skipped[c] for c in checked} == checked


def test_a_text_savedmodel_without_keras_metadata_is_one_line_and_exit_2(tmp_path):
    model = _copy(tmp_path)
    (model / "keras_metadata.pb").unlink()
    (model / "saved_model.pb").rename(model / "saved_model.pbtxt")
    _one_line_exit_2(model, "neither keras_metadata.pb nor saved_model.pb")


def test_a_truncated_saved_model_pb_without_keras_metadata_is_one_line_and_exit_2(tmp_path):
    model = _copy(tmp_path)
    (model / "keras_metadata.pb").unlink()
    data = (model / "saved_model.pb").read_bytes()
    (model / "saved_model.pb").write_bytes(data[: len(data) // 2])
    _one_line_exit_2(model, "saved_model.pb is not readable")


@pytest.mark.parametrize("keep_metadata", [False, True])
def test_an_empty_saved_model_pb_is_one_line_and_exit_2_not_a_pass(tmp_path, keep_metadata):
    """An empty file parses as an empty SavedModel message: no MetaGraph, nothing audited."""
    model = _copy(tmp_path)
    if not keep_metadata:
        (model / "keras_metadata.pb").unlink()
    (model / "saved_model.pb").write_bytes(b"")
    _one_line_exit_2(model, "saved_model.pb holds no MetaGraph (it is empty or not a SavedModel)")


def test_without_tensorflow_a_savedmodel_without_keras_metadata_says_what_to_install(tmp_path):
    model = _copy(tmp_path)
    (model / "keras_metadata.pb").unlink()
    code = f"import sys, runpy; sys.modules['tensorflow'] = None; sys.argv = ['bnaudit', 'check', {str(model)!r}]; runpy.run_module('bnaudit', run_name='__main__')"
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, env={"PYTHONPATH": str(ROOT), "PATH": ""})
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [
        f"bnaudit: error: {model}: this SavedModel has no keras_metadata.pb, and reading its serving graph needs TensorFlow "
        "(pip install 'bnaudit[tensorflow]')"
    ]


def test_without_tensorflow_the_architecture_rules_run_and_the_weight_rules_are_skipped_with_a_note():
    """``sys.modules["tensorflow"] = None`` is how Python marks a module as not importable."""
    code = (
        "import sys; sys.modules['tensorflow'] = None; import json, bnaudit;"
        "r = bnaudit.audit('sample_models/savedmodel/bias_before_bn');"
        "print(json.dumps({'findings': sorted((f.code, f.layer) for f in r.findings), 'skipped': {s.code: s.reason for s in r.skipped},"
        " 'notes': r.notes, 'errors': [e.message for e in r.errors]}))"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, env={"PYTHONPATH": str(ROOT), "PATH": ""})
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["errors"] == []
    assert out["findings"] == [["BN102", "bn1"], ["BN102", "bn_fc"]]
    assert set(out["skipped"]) >= {"BN201", "BN202", "BN203", "BN204"}
    assert all("TensorFlow's checkpoint reader" in out["skipped"][c] for c in ("BN201", "BN204"))
    assert any("pip install 'bnaudit[tensorflow]'" in n for n in out["notes"])


@pytest.mark.slow
def test_a_serving_function_that_runs_batchnorm_in_training_mode_is_bn106(tmp_path):
    """A BN subclass that always calls the fused kernel with training=True: the config
    shows nothing, the serving signature's FusedBatchNormV3 has is_training=true."""
    import numpy as np
    import tf_keras

    class BatchNormalization(tf_keras.layers.BatchNormalization):  # unregistered: saved as "BatchNormalization"
        def call(self, inputs, training=None):
            return super().call(inputs, training=True)

    inputs = tf_keras.Input((8, 8, 3), name="image")
    x = tf_keras.layers.Conv2D(4, 3, use_bias=False, name="conv")(inputs)
    x = BatchNormalization(name="always_training_bn")(x)
    x = tf_keras.layers.ReLU(name="relu")(x)
    x = tf_keras.layers.Conv2D(4, 3, use_bias=False, name="conv2")(x)
    x = tf_keras.layers.BatchNormalization(name="plain_bn")(x)
    outputs = tf_keras.layers.ReLU(name="relu2")(x)
    model = tf_keras.Model(inputs, outputs, name="forced")
    for layer in model.layers:
        for var in layer.weights:
            if "moving" in var.name:
                var.assign(np.full(var.shape, 0.5 if "variance" in var.name else 0.1, np.float32))
    model.save(tmp_path / "forced", save_format="tf")
    result = __import__("bnaudit").audit(tmp_path / "forced")
    assert result.errors == []
    baked = [f for f in result.findings if f.code == "BN106"]
    assert [f.layer for f in baked] == ["always_training_bn"]
    assert "serving signature 'serving_default'" in baked[0].details["source"]
    assert "is_training=true" in baked[0].details["source"]


def _keras3_export(tmp_path, train_last: bool):
    """Conv -> BN -> ReLU -> Conv -> BN exported with Keras 3; the last BN called with
    ``training=True`` when ``train_last``."""
    import keras

    inputs = keras.Input((8, 8, 3), name="image")
    x = keras.layers.Conv2D(4, 3, use_bias=False, name="conv")(inputs)
    x = keras.layers.BatchNormalization(name="bn")(x)
    x = keras.layers.ReLU(name="relu")(x)
    x = keras.layers.Conv2D(4, 3, use_bias=False, name="conv2")(x)
    x = keras.layers.BatchNormalization(epsilon=0.01, name="bn_last")(x, training=True if train_last else None)
    keras.Model(inputs, x, name="exported").export(tmp_path / "exported", format="tf_saved_model", verbose=False)
    assert not (tmp_path / "exported" / "keras_metadata.pb").exists()
    return tmp_path / "exported"


@pytest.mark.slow
def test_a_keras3_export_is_audited_on_its_serving_graph(tmp_path):
    """Keras 3 runs tf.nn.batch_normalization (unfused): both BN layers are named by their
    variables (``bn_last/gamma``), in inference mode; bn_last is the model's output (BN104, as
    on the .keras), the untrained moving statistics are BN202 (read from the checkpoint), and
    what a serving graph does not record is skipped with the reason."""
    model = _keras3_export(tmp_path, train_last=False)
    run = run_bnaudit("check", model, "--format", "json")
    assert run.returncode == 1, run.stderr
    report = json.loads(run.stdout)["models"][0]
    assert sorted((f["code"], f["layer"]) for f in report["findings"]) == [("BN104", "bn_last"), ("BN202", "bn"), ("BN202", "bn_last")]
    assert report["errors"] == []
    skipped = {s["code"]: s["reason"] for s in report["skipped"]}
    assert not {"BN102", "BN103", "BN104", "BN105", "BN106", "BN107", "BN109", "BN201", "BN204"} & set(skipped)
    assert {c: skipped[c] for c in ("BN101", "BN108", "BN205", "BN501")} == {c: export_graph.NOT_RECORDED[c] for c in ("BN101", "BN108", "BN205", "BN501")}
    assert skipped["BN401"] == "needs --data or --inference"  # the serving signature is re-run with --inference
    graph = export_graph.export_graph(model)
    assert {p: (l.config["epsilon"], l.config["is_training"], l.producers) for p, l in graph.layers.items() if l.class_name == "BatchNormalization"} == {
        "bn": (1e-3, False, ["conv"]),
        "bn_last": (1e-2, False, ["conv2"]),
    }


@pytest.mark.slow
def test_a_keras3_export_of_a_bn_called_with_training_true_is_bn106_on_the_serving_op(tmp_path):
    model = _keras3_export(tmp_path, train_last=True)
    result = __import__("bnaudit").audit(model)
    assert result.errors == []
    assert sorted((f.code, f.layer) for f in result.findings) == [("BN104", "bn_last"), ("BN106", "bn_last"), ("BN202", "bn"), ("BN202", "bn_last")]
    finding = next(f for f in result.findings if f.code == "BN106")
    assert "of the serving graph runs in training mode" in finding.message
    assert "runs 'exported_1/bn_last_1/batchnorm/Rsqrt' on the variance of the batch (a Mean over its input), not a moving variance" in finding.details["source"]


@pytest.mark.slow
def test_a_tf_module_running_fused_batch_norm_in_training_mode_is_bn106_in_every_format(tmp_path):
    """tf.saved_model.save of a tf.Module: no Keras at all, one FusedBatchNormV3 with
    is_training=true under the name scope ``block``: its variables carry no Keras name, so the
    layer keeps the scope; it is also the function's output (BN104). json, sarif and junit render it."""
    code = """if True:
        import sys, tensorflow as tf
        class Module(tf.Module):
            def __init__(self):
                self.scale, self.offset = tf.Variable(tf.ones([3])), tf.Variable(tf.zeros([3]))
            @tf.function(input_signature=[tf.TensorSpec([None, 4, 4, 3], tf.float32)])
            def __call__(self, x):
                with tf.name_scope("block"):
                    return tf.compat.v1.nn.fused_batch_norm(x, self.scale, self.offset, epsilon=0.01, is_training=True)[0]
        module = Module()
        tf.saved_model.save(module, sys.argv[1], signatures={"serving_default": module.__call__})
    """
    subprocess.run([sys.executable, "-c", code, str(tmp_path / "module")], check=True, capture_output=True)
    result = __import__("bnaudit").audit(tmp_path / "module")
    assert sorted((f.code, f.layer) for f in result.findings) == [("BN104", "block"), ("BN106", "block")]
    baked = next(f for f in result.findings if f.code == "BN106")
    assert baked.details["source"] == "serving signature 'serving_default' runs 'block/FusedBatchNormV3' with is_training=true"
    assert export_graph.export_graph(tmp_path / "module").layers["block"].config["epsilon"] == 0.01
    # its moving statistics are the empty constants of training mode, not variables: nothing to read
    assert "are not variables of this SavedModel" in {s.code: s.reason for s in result.skipped}["BN201"]
    outputs = {fmt: tmp_path / f"report.{fmt}" for fmt in ("json", "sarif", "junit")}
    for fmt, out in outputs.items():
        run = run_bnaudit("check", tmp_path / "module", "--format", fmt, "-o", out)
        assert run.returncode == 1, run.stderr
        assert "BN106" in out.read_text() and "block" in out.read_text()
    assert json.loads(outputs["sarif"].read_text())["runs"][0]["results"][0]["ruleId"] == "BN106"


@pytest.mark.slow
def test_parallel_workers_give_the_same_findings_on_onnx_and_savedmodel():
    args = ("check", "--exit-zero", "--format", "json", "onnx/consecutive_bn.onnx", "onnx/extreme_scale.onnx", "savedmodel/nested_transfer", "savedmodel/bn_no_center_no_scale")
    serial = json.loads(run_bnaudit(*args, cwd=SAMPLES).stdout)["models"]
    parallel = json.loads(run_bnaudit(args[0], "-j", "2", *args[1:], cwd=SAMPLES).stdout)["models"]

    def key(models):
        return [(m["path"], sorted((f["code"], f["layer"]) for f in m["findings"]), m["errors"]) for m in models]
    assert key(serial) == key(parallel)
    assert all(m["findings"] for m in serial)


def test_diff_pairs_a_savedmodel_with_the_h5_it_was_saved_from():
    """The SavedModel export of a sample holds the same BN variables as its .h5: every
    layer pairs by path, nothing changed, no finding."""
    run = run_bnaudit("diff", "bias_before_bn.h5", "savedmodel/bias_before_bn", "--format", "json", cwd=SAMPLES)
    assert run.returncode == 0, run.stderr
    [model] = json.loads(run.stdout)["models"]
    assert model["findings"] == [] and model["rules_run"] == ["BN211", "BN212"]
    layers = model["measurements"]["diff"]["layers"]
    assert list(layers) == ["bn1", "bn2", "bn_fc"]
    assert all(c["paired_by"] == "path" and c["mean_shift"] == 0 and not c["statistics_changed"] for c in layers.values())


def test_a_savedmodel_missing_its_graph_file_is_named_as_such(tmp_path):
    model = _copy(tmp_path)
    (model / "saved_model.pb").unlink()
    (model / "keras_metadata.pb").unlink()
    run = run_bnaudit("check", model)
    assert (run.returncode, run.stderr) == (
        2,
        f"bnaudit: error: {model}: this looks like a SavedModel (it has variables/) but holds no saved_model.pb "
        "(the SavedModel is incomplete: copy or save it again)\n",
    )
