"""Keras 3 ``export()`` SavedModels (no ``keras_metadata.pb``) audited like their ``.keras`` originals.

The exports are written here with Keras itself (``model.export(dir, format="tf_saved_model")``,
one subprocess: ``sample_models/build_exports.py --keras3-export``) and audited from their
serving graph (:mod:`bnaudit.loaders.export_graph`): the same rule codes on the same layer
paths as the ``.keras`` save, less the findings the serving graph cannot hold
(``LOST_IN_EXPORT``, each skipped with its reason) and plus those it adds (``ADDED_IN_EXPORT``).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time

import pytest
from conftest import ROOT, SAMPLES, audited_by_path, run_bnaudit

pytest.importorskip("tensorflow")

sys.path.insert(0, str(SAMPLES))
from build import SPECS  # noqa: E402
from build_exports import ADDED_IN_EXPORT, LOST_IN_EXPORT  # noqa: E402

from bnaudit.loaders import export_graph, tf_functions  # noqa: E402

EXPECTED = json.loads((SAMPLES / "expected.json").read_text())
NAMES = [spec.name for spec in SPECS]


def _export_samples(outdir, *names: str) -> None:
    """Keras 3 exports of the named samples (all when none), in one child process."""
    only = ["--only", *names] if names else []
    proc = subprocess.run(
        [sys.executable, str(SAMPLES / "build_exports.py"), "--keras3-export", str(outdir), *only],
        cwd=ROOT, capture_output=True, text=True, env={**__import__("os").environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )
    assert proc.returncode == 0, proc.stderr[-2000:]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """Every sample exported and audited once: ``{name: the model's JSON result}``, and the seconds each step took."""
    outdir = tmp_path_factory.mktemp("keras3_exports")
    start = time.monotonic()
    _export_samples(outdir)
    exported_at = time.monotonic()
    audited = audited_by_path(*NAMES, cwd=outdir)
    print(f"\nexported {len(NAMES)} samples in {exported_at - start:.1f} s, audited them in {time.monotonic() - exported_at:.1f} s")
    return audited


def _keys(findings) -> list[tuple[str, str]]:
    return sorted((f["code"], f["layer"]) for f in findings)


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_an_export_gives_the_findings_of_its_keras_original(exported, name):
    model = exported[name]
    assert model["errors"] == []
    assert model["meta"]["format"] == "savedmodel"
    original = {(f["code"], f["layer"]) for f in EXPECTED[f"{name}.keras"]}
    lost = {(code, layer) for (sample, code, layer) in LOST_IN_EXPORT if sample == name}
    added = {(code, layer) for (sample, code, layer) in ADDED_IN_EXPORT if sample == name}
    assert lost <= original and not added & original
    assert _keys(model["findings"]) == sorted((original - lost) | added)


@pytest.mark.slow
def test_what_an_export_loses_is_skipped_with_its_reason_never_passed(exported):
    for (sample, code, _layer), why in LOST_IN_EXPORT.items():
        skipped = {s["code"]: s["reason"] for s in exported[sample]["skipped"]}
        if code == "BN109":  # runs on epsilon and dtype; the momentum it cannot see is a note
            assert code in exported[sample]["rules_run"] and export_graph.MOMENTUM_NOTE in exported[sample]["notes"], why
        else:
            assert skipped[code] == export_graph.NOT_RECORDED[code], why
            assert code not in exported[sample]["rules_run"]


@pytest.mark.slow
def test_the_exports_fire_every_placement_and_weight_rule_the_serving_graph_holds(exported):
    fired = {f["code"] for model in exported.values() for f in model["findings"]}
    assert fired >= {"BN102", "BN103", "BN104", "BN105", "BN106", "BN107", "BN109", "BN201", "BN202", "BN203", "BN204"}


@pytest.mark.slow
def test_the_layers_around_a_bn_carry_the_keras_names(exported):
    """What the findings name besides the BN: the shared convolution called twice is one
    layer, as in Keras; the fused softmax of a Dense keeps its op name below the layer's."""
    shared = [f["details"]["producer"] for f in exported["shared_and_branches"]["findings"]]
    assert shared == ["shared_conv", "shared_conv"]
    [after_softmax] = [f for f in exported["bn_after_softmax"]["findings"] if f["code"] == "BN104"]
    assert after_softmax["details"]["producer"] == "probs/Softmax"
    [cancelled] = exported["nested_transfer"]["findings"]
    assert cancelled["details"]["producer"] == "base/stem_conv"


@pytest.mark.slow
def test_bn_vectors_of_an_export_equal_those_of_its_keras_save(tmp_path):
    """One model, saved as .keras and exported: BN201-BN204 give the same findings with the
    same numbers (a negative moving variance, gammas near zero, an extreme scale, in a nested
    model, under a build-time name scope, and with scale=False/center=False, where the
    vectors a BN reads shift); the layers around the BNs carry the .keras paths."""
    code = """if True:
        import sys, numpy as np, keras
        L = keras.layers
        inner_in = keras.Input((8, 8, 8), name="inner_in")
        y = L.Conv2D(8, 3, padding="same", use_bias=False, name="inner_conv")(inner_in)
        y = L.BatchNormalization(name="inner_bn")(y)
        block = keras.Model(inner_in, L.ReLU(name="inner_relu")(y), name="block")
        inputs = keras.Input((8, 8, 3), name="image")
        x = L.Conv2D(8, 3, padding="same", use_bias=False, name="conv1")(inputs)
        x = L.BatchNormalization(scale=False, center=False, name="bn_plain")(x)
        x = block(L.ReLU(name="relu1")(x))
        with keras.name_scope("stage"):  # in the variable names (stage/bn_dead/gamma), not in the layer paths
            x = L.Conv2D(8, 3, padding="same", use_bias=False, name="conv2")(x)
            x = L.BatchNormalization(epsilon=1e-5, name="bn_dead")(x)
        x = L.SeparableConv2D(8, 3, padding="same", name="sep")(L.ReLU(name="relu2")(x))  # with a bias: BN102
        x = L.BatchNormalization(name="bn_sep")(x)
        x = L.GlobalAveragePooling2D(name="gap")(x)
        model = keras.Model(inputs, L.Dense(3, activation="softmax", name="head")(x), name="vectors")
        rng = np.random.default_rng(0)
        def set_bn(layer, **values):
            for var in layer.weights:
                name = var.path.rsplit("/", 1)[-1]
                value = values.get(name, {"gamma": rng.uniform(0.6, 1.4, 8), "beta": rng.normal(0, 0.1, 8),
                                          "moving_mean": rng.normal(0, 0.3, 8), "moving_variance": rng.uniform(0.3, 1.5, 8)}[name])
                var.assign(np.asarray(value, "float32"))
        variance = rng.uniform(0.3, 1.5, 8); variance[2] = -0.5
        set_bn(model.get_layer("bn_plain"), moving_variance=variance)
        gamma = rng.uniform(0.6, 1.4, 8); gamma[:5] = 1e-9; gamma[6] = 120.0
        dead_variance = rng.uniform(0.3, 1.5, 8); dead_variance[6] = 1e-9
        set_bn(model.get_layer("bn_dead"), gamma=gamma, moving_variance=dead_variance)
        set_bn(block.get_layer("inner_bn"))
        set_bn(model.get_layer("bn_sep"))
        model.save(sys.argv[1] + "/vectors.keras")
        model.export(sys.argv[1] + "/vectors", format="tf_saved_model", verbose=False)
    """
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, env={**__import__("os").environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    audited = audited_by_path("vectors.keras", "vectors", cwd=tmp_path)
    keras_save, export = audited["vectors.keras"], audited["vectors"]
    assert export["errors"] == [] and keras_save["errors"] == []
    weight_findings = {(f["code"], f["layer"]): f["details"] for f in keras_save["findings"] if f["code"].startswith("BN2")}
    assert sorted(weight_findings) == [("BN201", "bn_plain"), ("BN203", "bn_dead"), ("BN204", "bn_dead")]
    assert {(f["code"], f["layer"]): f["details"] for f in export["findings"] if f["code"].startswith("BN2")} == weight_findings
    assert _keys(export["findings"]) == _keys(keras_save["findings"])
    assert ("BN102", "bn_sep") in _keys(export["findings"])
    graph = export_graph.export_graph(tmp_path / "vectors")
    assert graph["block/inner_bn"].producers == ["block/inner_conv"]  # the nested model's path, from the name scope
    assert (graph["bn_dead"].producers, graph["bn_dead"].consumers) == (["conv2"], ["relu2"])
    assert (graph["sep"].class_name, graph["bn_sep"].producers) == ("SeparableConv2D", ["sep"])  # depthwise + pointwise: one layer
    assert (graph["bn_plain"].config["scale"], graph["bn_plain"].config["center"]) == (False, False)


@pytest.fixture(scope="module")
def small_export(tmp_path_factory):
    """One real export to damage, written once for the tests below."""
    outdir = tmp_path_factory.mktemp("small_export")
    _export_samples(outdir, "clean_sequential_dense")
    return outdir / "clean_sequential_dense"


def _copy(small_export, tmp_path):
    model = tmp_path / "exported"
    shutil.copytree(small_export, model)
    return model


def _self_calling_export(model):
    """The export with its model function also calling itself: nesting without end."""
    from tensorflow.core.protobuf import saved_model_pb2

    saved = saved_model_pb2.SavedModel()
    saved.ParseFromString((model / "saved_model.pb").read_bytes())
    library = saved.meta_graphs[0].graph_def.library.function
    body = next(f for f in library if f.signature.name.startswith("__inference___call__"))
    call = body.node_def.add(name="again", op="StatefulPartitionedCall")
    call.attr["f"].func.name = body.signature.name
    (model / "saved_model.pb").write_bytes(saved.SerializeToString())
    return model


def _fanned_out_export(model, levels: int = 12, calls: int = 10):
    """The export with its model function calling fan_0, which calls fan_1 ``calls`` times,
    and so on: ``calls ** levels`` calls, no recursion, no op."""
    from tensorflow.core.protobuf import saved_model_pb2

    saved = saved_model_pb2.SavedModel()
    saved.ParseFromString((model / "saved_model.pb").read_bytes())
    library = saved.meta_graphs[0].graph_def.library
    for level in range(levels):
        function = library.function.add()
        function.signature.name = f"fan_{level}"
        for index in range(calls if level + 1 < levels else 0):
            function.node_def.add(name=f"call_{index}", op=f"fan_{level + 1}")
    body = next(f for f in library.function if f.signature.name.startswith("__inference___call__"))
    body.node_def.add(name="fan", op="fan_0")
    (model / "saved_model.pb").write_bytes(saved.SerializeToString())
    return model


@pytest.mark.slow
@pytest.mark.parametrize(
    ("hostile", "says"),
    [
        (_fanned_out_export, f"a serving signature runs more than {tf_functions.MAX_OPS} ops and calls"),
        (_self_calling_export, f"function calls nest deeper than {tf_functions.MAX_DEPTH} levels"),
    ],
    ids=["calls that multiply without end", "a function that calls itself"],
)
def test_hostile_call_graphs_are_one_line_and_exit_2(small_export, tmp_path, hostile, says):
    model = hostile(_copy(small_export, tmp_path))
    run = run_bnaudit("check", model)
    assert run.returncode == 2 and "Traceback" not in run.stderr
    assert run.stderr.strip().splitlines() == [f"bnaudit: error: {model}: saved_model.pb: {says} (this is not a plausible model)"]
