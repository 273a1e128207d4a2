"""--data and --inference on SavedModel directories.

A tf-keras SavedModel (``model.save("dir")``, with ``keras_metadata.pb``) is re-run with
tf-keras exactly as the ``.h5`` saved from the same model: the tests compare the two,
rule code by rule code and layer by layer. Loading runs Lambda code, so the load guard
must refuse it first, on every object config ``keras_metadata.pb`` holds.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from conftest import ROOT, SAMPLES, audited_by_path, frameworks_imported, run_bnaudit

RUNTIME_CODES = ("BN3", "BN4")

#: The static rules that run on a SavedModel's serving graph (docs/formats.md); the others
#: are skipped with the reason the graph does not record them.
STATIC_ON_EXPORTS = ["BN102", "BN103", "BN104", "BN105", "BN106", "BN107", "BN109", "BN201", "BN202", "BN203", "BN204"]


def runtime_findings(model: dict) -> list[tuple[str, str]]:
    return sorted((f["code"], f["layer"]) for f in model["findings"] if f["code"].startswith(RUNTIME_CODES))


def _with_lambda_in_a_layer_node(tmp_path):
    """``savedmodel/bias_before_bn`` whose ``bn2`` node metadata (what tf-keras revives
    ``bn2`` from) was replaced by a Lambda; the root's model config still shows none."""
    from bnaudit.loaders.savedmodel import _saved_metadata_class

    model = tmp_path / "hidden_lambda"
    shutil.copytree(SAMPLES / "savedmodel" / "bias_before_bn", model)
    message = _saved_metadata_class()()
    message.ParseFromString((model / "keras_metadata.pb").read_bytes())
    [node] = [n for n in message.nodes if json.loads(n.metadata or "{}").get("name") == "bn2"]
    node.metadata = json.dumps({"name": "bn2", "class_name": "Lambda", "config": {"name": "bn2", "function": {"class_name": "__lambda__", "config": {"code": "4wEAAAAAAAAA"}}}})
    (model / "keras_metadata.pb").write_bytes(message.SerializeToString())
    return model


def test_a_lambda_in_a_layer_node_of_keras_metadata_is_refused_before_anything_loads(tmp_path):
    """tf-keras revives each layer from its own node's metadata: the guard reads those too,
    and refuses before tf-keras, the Keras that would load it, is imported."""
    model = _with_lambda_in_a_layer_node(tmp_path)
    code = (
        "import bnaudit\n"
        f"r = bnaudit.audit({str(model)!r}, inference=True, select=['BN4', 'BN501'], in_process=True)\n"
        "assert [e.message for e in r.errors] == ['refusing to load a model that can execute code: bn2 (Lambda)'], r.errors\n"
        "assert [(f.code, f.layer) for f in r.findings] == [('BN501', 'bn2')], r.findings"
    )
    assert frameworks_imported(code, ("tf_keras",)) == []


@pytest.mark.slow
def test_a_tf_keras_savedmodel_is_re_run_as_the_h5_of_the_same_model():
    """bn_training_baked: tf-keras obeys the saved training=True under predict and model(x)
    alike, so each sample alone differs from the batch on both paths (BN402), and the
    paths agree with each other (no BN403). The clean model gives no BN4xx finding."""
    names = ["savedmodel/bn_training_baked", "k2_bn_training_baked.h5", "savedmodel/clean_conv_bn_relu", "k2_clean_conv_bn_relu.h5"]
    run = run_bnaudit("check", "--inference", "--format", "json", "--exit-zero", *names, cwd=SAMPLES)
    assert "Traceback" not in run.stderr
    models = {m["path"]: m for m in json.loads(run.stdout)["models"]}
    for name in names:
        assert models[name]["errors"] == [] and {"BN401", "BN402", "BN403", "BN404"} <= set(models[name]["rules_run"]), name
    baked = models["savedmodel/bn_training_baked"]
    assert runtime_findings(baked) == [("BN402", "head"), ("BN402", "head")]
    assert sorted(f["details"]["path"] for f in baked["findings"] if f["code"] == "BN402") == ["model(x)", "model.predict"]
    assert runtime_findings(baked) == runtime_findings(models["k2_bn_training_baked.h5"])
    assert runtime_findings(models["savedmodel/clean_conv_bn_relu"]) == runtime_findings(models["k2_clean_conv_bn_relu.h5"]) == []
    inference = baked["measurements"]["inference"]
    assert inference["devices"] == ["CPU:0", "CPU:1"] and inference["inputs"]["shapes"] == [[128, 8, 8, 3]]


@pytest.fixture(scope="module")
def convnet(tmp_path_factory):
    """small_convnet saved by tf-keras as .h5 and as a SavedModel, its moving statistics
    set to the exact statistics of ``own.npy`` at each BN's input; ``drifted.npy`` is the
    same images scaled by 3 and shifted by 2, on which the weights of seed 0 give BN302
    (linear CKA 0.63 between inference and training mode, threshold 0.75)."""
    import tf_keras

    from model_builders import small_convnet

    folder = tmp_path_factory.mktemp("convnet")
    tf_keras.utils.set_random_seed(0)  # BN302's CKA depends on the random weights: 0.63 with these (0.82-0.92 with others)
    model = small_convnet(tf_keras, name="convnet")
    own = np.random.default_rng(5).normal(size=(64, 8, 8, 3)).astype("float32")
    for name in ("bn_a", "bn_b"):
        bn = model.get_layer(name)
        seen = tf_keras.Model(model.input, bn.input).predict(own, verbose=0)
        bn.moving_mean.assign(seen.mean(axis=(0, 1, 2)))
        bn.moving_variance.assign(seen.var(axis=(0, 1, 2)))
    model.save(folder / "convnet.h5")
    model.save(folder / "convnet_sm", save_format="tf")
    np.save(folder / "own.npy", own)
    np.save(folder / "drifted.npy", own * 3.0 + 2.0)
    return folder


@pytest.mark.slow
@pytest.mark.parametrize("data, expected", [("own.npy", []), ("drifted.npy", [("BN301", "bn_a"), ("BN301", "bn_b"), ("BN302", "")])])
def test_data_rules_on_a_tf_keras_savedmodel_match_its_h5(convnet, data, expected):
    models = audited_by_path("convnet_sm", "convnet.h5", "--data", data, "--select", "BN3", cwd=convnet)
    for name in ("convnet_sm", "convnet.h5"):
        assert models[name]["errors"] == [] and models[name]["rules_run"] == ["BN301", "BN302", "BN303"], name
    assert runtime_findings(models["convnet_sm"]) == runtime_findings(models["convnet.h5"]) == expected
    assert models["convnet_sm"]["meta"]["keras_version"] == models["convnet.h5"]["meta"]["keras_version"]


@pytest.mark.slow
def test_a_real_tf_keras_lambda_is_refused_and_never_runs(tmp_path):
    """The Lambda touches a marker file when called (tf-keras calls it while rebuilding
    the model): refused, the marker stays absent; with --unsafe-load it runs."""
    marker = tmp_path / "lambda_ran"
    code = textwrap.dedent(
        f"""
        import os, tf_keras
        inp = tf_keras.Input((4,), name="x")
        x = tf_keras.layers.BatchNormalization(name="bn")(tf_keras.layers.Dense(4, use_bias=False, name="fc")(inp))
        namespace = {{}}
        exec("touch = lambda t: (open({str(marker)!r}, 'a').close(), t)[1]", namespace)
        x = tf_keras.layers.Lambda(namespace["touch"], name="touch")(x)
        tf_keras.Model(inp, x, name="with_lambda").save({str(tmp_path / "with_lambda")!r}, save_format="tf")
        os.remove({str(marker)!r})
        """
    )
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)
    assert not marker.exists()
    run = run_bnaudit("check", "--inference", tmp_path / "with_lambda")
    assert run.returncode == 2 and "Traceback" not in run.stderr
    assert f"{tmp_path / 'with_lambda'} [BN401, BN402, BN403, BN404]: refusing to load a model that can execute code: touch (Lambda)" in run.stderr
    assert not marker.exists()
    run = run_bnaudit("check", "--inference", "--unsafe-load", "--select", "BN4", tmp_path / "with_lambda")
    assert run.returncode == 0, run.stderr
    assert marker.exists()


@pytest.mark.slow
def test_without_tf_keras_a_savedmodel_re_run_says_what_to_install():
    code = (
        "import sys, runpy; sys.modules['tf_keras'] = None;"
        "sys.argv = ['bnaudit', 'check', '--inference', '--select', 'BN401', 'sample_models/savedmodel/clean_conv_bn_relu'];"
        "runpy.run_module('bnaudit', run_name='__main__')"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, env={"PYTHONPATH": str(ROOT), "PATH": "", "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == (
        "bnaudit: error: sample_models/savedmodel/clean_conv_bn_relu [BN401]: re-running a tf-keras SavedModel needs tf-keras, "
        "which is not installed (Keras 3 cannot load it) (install tf-keras (pip install tf-keras, or \"bnaudit[tensorflow]\") "
        "to run Keras-2 files with the Keras that wrote them)"
    )


# -- SavedModels without keras_metadata.pb: the serving signature is re-run -------------


def _keras3_export(folder, name: str, train_last: bool):
    """Conv -> BN -> ReLU -> Conv -> BN exported with Keras 3 ``export()``; the last BN
    called with ``training=True`` when ``train_last`` (its serving op normalises each
    batch with that batch's moments)."""
    import keras

    inputs = keras.Input((8, 8, 3), name="image")
    x = keras.layers.Conv2D(4, 3, use_bias=False, name="conv")(inputs)
    x = keras.layers.BatchNormalization(name="bn")(x)
    x = keras.layers.ReLU(name="relu")(x)
    x = keras.layers.Conv2D(4, 3, use_bias=False, name="conv2")(x)
    x = keras.layers.BatchNormalization(name="bn_last")(x, training=True if train_last else None)
    keras.Model(inputs, x, name=name).export(folder / name, format="tf_saved_model", verbose=False)
    assert not (folder / name / "keras_metadata.pb").exists()
    return folder / name


@pytest.mark.slow
def test_an_export_of_a_bn_called_with_training_true_is_batch_dependent_through_its_signature(tmp_path):
    _keras3_export(tmp_path, "baked", train_last=True)
    _keras3_export(tmp_path, "clean", train_last=False)
    models = audited_by_path("baked", "clean", "--inference", cwd=tmp_path)
    for name in ("baked", "clean"):
        assert models[name]["errors"] == [] and models[name]["rules_run"] == [*STATIC_ON_EXPORTS, "BN401", "BN402", "BN404"], name
        assert models[name]["measurements"]["inference"]["inputs"]["signature"] == "serving_default"
        assert models[name]["measurements"]["inference"]["devices"] == ["CPU:0", "CPU:1"]
    baked = models["baked"]
    assert runtime_findings(baked) == [("BN402", "output_0")]
    [finding] = [f for f in baked["findings"] if f["code"] == "BN402"]
    assert finding["message"].startswith("with signature 'serving_default', output 'output_0' of a sample run alone differs")
    assert runtime_findings(models["clean"]) == []
    inference = models["clean"]["measurements"]["inference"]
    assert inference["inputs"]["shapes"] == [[128, 8, 8, 3]]
    assert all(r["passed"] for key in ("device_table", "batch_dependence", "repeatability") for r in inference[key])
    assert [r["elements"] for r in inference["batch_dependence"]] == [4 * 4 * 4 * 4]  # 4 samples alone (4x4x4 each), one path


@pytest.mark.slow
def test_a_savedmodel_whose_serving_function_writes_a_file_is_not_run(tmp_path):
    """tf.io.write_file in the serving function: refused before tf.saved_model.load, so
    the file is never written; --unsafe-load runs it (and it writes)."""
    marker = tmp_path / "written"
    code = textwrap.dedent(
        f"""
        import tensorflow as tf
        class Module(tf.Module):
            def __init__(self):
                self.scale = tf.Variable(tf.ones([3]))
            @tf.function(input_signature=[tf.TensorSpec([None, 4, 4, 3], tf.float32)])
            def __call__(self, x):
                tf.io.write_file({str(marker)!r}, "ran")
                return x * self.scale
        module = Module()
        tf.saved_model.save(module, {str(tmp_path / "writer")!r}, signatures={{"serving_default": module.__call__}})
        """
    )
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)
    run = run_bnaudit("check", "--inference", tmp_path / "writer")
    assert run.returncode == 2 and "Traceback" not in run.stderr
    assert "[BN401, BN402, BN404]: refusing to run a SavedModel whose functions reach beyond the computation: WriteFile in " in run.stderr
    assert not marker.exists()
    run = run_bnaudit("check", "--inference", "--unsafe-load", tmp_path / "writer")
    assert run.returncode == 0, run.stderr
    assert marker.read_text() == "ran"


def test_on_a_savedmodel_without_keras_metadata_the_rules_a_signature_cannot_measure_say_why(tmp_path):
    """--data alone: BN401/402/404 wait for --inference (synthetic inputs only); BN403 and
    BN301-BN303 cannot be measured on a serving signature, whatever is passed."""
    from bnaudit.engine import NOT_MEASURED, SYNTHETIC_ONLY

    model = tmp_path / "served"
    shutil.copytree(SAMPLES / "savedmodel" / "dropout_before_bn", model)
    (model / "keras_metadata.pb").unlink()
    np.save(tmp_path / "data.npy", np.zeros((4, 8, 8, 3), np.float32))
    [result] = audited_by_path(str(model), "--data", str(tmp_path / "data.npy"), cwd=tmp_path).values()
    assert result["errors"] == [] and result["rules_run"] == STATIC_ON_EXPORTS
    skipped = {s["code"]: s["reason"] for s in result["skipped"]}
    assert {c: skipped[c] for c in ("BN401", "BN402", "BN404")} == dict.fromkeys(("BN401", "BN402", "BN404"), SYNTHETIC_ONLY["serving"])
    assert {c: skipped[c] for c in ("BN301", "BN302", "BN303", "BN403")} == {c: NOT_MEASURED["serving"][c] for c in ("BN301", "BN302", "BN303", "BN403")}
    assert "not each BN layer's input" in skipped["BN301"] and "one call path" in skipped["BN403"]
