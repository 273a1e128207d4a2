"""ONNX files: the same rules on the same layers as the Keras original, and hostile files refused.

The committed ``sample_models/onnx/*.onnx`` are the sample models converted by tf2onnx
(``sample_models/build_exports.py``); the graphs below that tf2onnx cannot produce
(``training_mode=1``, subgraphs, local functions, external data) are built with
``onnx.helper``, the way the ONNX project's own tests build models.
"""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest

from conftest import audited_by_path, frameworks_imported, SAMPLES, run_bnaudit

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

import bnaudit  # noqa: E402

sys.path.insert(0, str(SAMPLES))
from build_exports import LOST_IN_ONNX  # noqa: E402

EXPECTED = json.loads((SAMPLES / "expected.json").read_text())
EXPORTED = json.loads((SAMPLES / "expected_exports.json").read_text())
ONNX_SAMPLES = sorted(k for k in EXPORTED if k.startswith("onnx/"))
C = 4


@pytest.fixture(scope="module")
def audited():
    return audited_by_path(*ONNX_SAMPLES, cwd=SAMPLES)


@pytest.mark.parametrize("name", ONNX_SAMPLES)
def test_converted_samples_give_exactly_the_expected_findings(audited, name):
    model = audited[name]
    assert model["errors"] == []
    assert model["meta"]["format"] == "onnx"
    got = sorted((f["code"], f["layer"]) for f in model["findings"])
    assert got == sorted((f["code"], f["layer"]) for f in EXPORTED[name])


@pytest.mark.parametrize("name", ONNX_SAMPLES)
def test_every_finding_of_the_keras_original_is_kept_or_its_loss_explained(name):
    """The name mapping of docs/formats.md: Keras layer ``bn1`` of model ``m`` -> node ``m/bn1/FusedBatchNormV3``."""
    stem = name.removeprefix("onnx/").removesuffix(".onnx")
    original = EXPECTED[f"k2_{stem}.h5"]
    kept = {(f["code"], f["layer"].split("/", 1)[1].rsplit("/", 1)[0]) for f in EXPORTED[name]}
    for finding in original:
        key = (finding["code"], finding["layer"])
        assert (key in kept) != ((stem, finding["layer"]) in LOST_IN_ONNX), key
    assert {layer for (_, layer) in kept} <= {f["layer"] for f in original}


def test_the_samples_cover_weights_placement_and_axis_rules():
    fired = {f["code"] for name in ONNX_SAMPLES for f in EXPORTED[name]}
    assert {"BN102", "BN103", "BN105", "BN107", "BN109", "BN201", "BN202", "BN203", "BN204"} <= fired


# -- hand-built graphs ---------------------------------------------------------------------


def _vec(name, values):
    return numpy_helper.from_array(np.asarray(values, dtype=np.float32), name)


def _bn_tensors(prefix, var=None):
    rng = np.random.default_rng(0)
    return [
        _vec(f"{prefix}_scale", rng.uniform(0.5, 1.5, C)),
        _vec(f"{prefix}_bias", rng.normal(0, 0.1, C)),
        _vec(f"{prefix}_mean", rng.normal(0, 0.3, C)),
        _vec(f"{prefix}_var", rng.uniform(0.5, 1.5, C) if var is None else var),
    ]


def _bn(name, x, y, **attrs):
    return helper.make_node("BatchNormalization", [x, f"{name}_scale", f"{name}_bias", f"{name}_mean", f"{name}_var"], [y], name=name, **attrs)


def _save(tmp_path, nodes, initializers, name="m.onnx", functions=(), opset=17, inputs=None, outputs=None):
    graph = helper.make_graph(
        nodes,
        "hand_built",
        inputs or [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, C, 8, 8])],
        outputs or [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        initializer=initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset), helper.make_opsetid("local", 1)], functions=list(functions))
    path = tmp_path / name
    onnx.save(model, path)
    return path


def _findings(path):
    result = bnaudit.audit(path)
    assert result.errors == [], result.errors
    return sorted((f.code, f.layer) for f in result.findings)


def test_training_mode_1_is_bn106_and_training_mode_0_is_not(tmp_path):
    path = _save(
        tmp_path,
        [_bn("bn_train", "x", "h", training_mode=1), helper.make_node("Relu", ["h"], ["r"], name="relu"), _bn("bn_infer", "r", "y", training_mode=0)],
        _bn_tensors("bn_train") + _bn_tensors("bn_infer"),
    )
    found = _findings(path)
    assert ("BN106", "bn_train") in found
    assert ("BN106", "bn_infer") not in found
    assert ("BN103", "bn_infer") in found  # Relu feeds it


def test_opset_9_running_statistics_outputs_mean_training(tmp_path):
    node = helper.make_node(
        "BatchNormalization", ["x", "bn_scale", "bn_bias", "bn_mean", "bn_var"], ["y", "running_mean", "running_var"], name="bn"
    )
    path = _save(tmp_path, [node, helper.make_node("Relu", ["y"], ["z"], name="relu")], _bn_tensors("bn"), opset=9,
                 outputs=[helper.make_tensor_value_info("z", TensorProto.FLOAT, None)])
    assert ("BN106", "bn") in _findings(path)


def test_placement_rules_on_onnx_operators(tmp_path):
    w = numpy_helper.from_array(np.ones((C, C), np.float32), "W")
    b = _vec("b", np.full(C, 0.1))
    k = numpy_helper.from_array(np.ones((C, C, 3, 3), np.float32), "K")
    nodes = [
        helper.make_node("Conv", ["x", "K"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("Transpose", ["c"], ["t1"], name="to_nhwc", perm=[0, 2, 3, 1]),
        helper.make_node("Transpose", ["t1"], ["t2"], name="to_nchw", perm=[0, 3, 1, 2]),
        _bn("bn_after_conv", "t2", "h1"),  # the transposes cancel: no BN107
        helper.make_node("Dropout", ["h1"], ["d"], name="drop"),
        _bn("bn_after_dropout", "d", "h2"),
        _bn("bn_twice", "h2", "h3"),
        helper.make_node("GlobalAveragePool", ["h3"], ["g"], name="gap"),
        helper.make_node("Flatten", ["g"], ["f"], name="flat"),
        helper.make_node("MatMul", ["f", "W"], ["mm"], name="fc"),
        helper.make_node("Add", ["mm", "b"], ["fa"], name="fc_bias"),
        _bn("bn_after_dense", "fa", "h4"),
        helper.make_node("Softmax", ["h4"], ["y"], name="softmax"),
    ]
    tensors = [w, b, k] + [t for n in ("bn_after_conv", "bn_after_dropout", "bn_twice", "bn_after_dense") for t in _bn_tensors(n)]
    found = _findings(_save(tmp_path, nodes, tensors))
    assert found == [("BN101", "bn_after_dropout"), ("BN102", "bn_after_dense"), ("BN105", "bn_twice")]


def test_a_transpose_that_moves_the_channels_is_bn107(tmp_path):
    k = numpy_helper.from_array(np.ones((C, C, 3, 3), np.float32), "K")
    nodes = [
        helper.make_node("Conv", ["x", "K"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("Transpose", ["c"], ["t"], name="nhwc_bn_in", perm=[0, 3, 1, 2]),
        _bn("bn", "t", "y"),
    ]
    result = bnaudit.audit(_save(tmp_path, nodes, [k] + _bn_tensors("bn")))
    [finding] = [f for f in result.findings if f.code == "BN107"]
    assert finding.layer == "bn" and finding.details["axis"] == 3 and finding.details["channel_axis"] == 1


def test_if_branches_and_local_functions_are_expanded(tmp_path):
    then_graph = helper.make_graph(
        [helper.make_node("Dropout", ["x"], ["d"], name="drop"), _bn("bn_then", "d", "then_out")],
        "then",
        [],
        [helper.make_tensor_value_info("then_out", TensorProto.FLOAT, None)],
    )
    else_graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["else_out"], name="pass")], "else", [], [helper.make_tensor_value_info("else_out", TensorProto.FLOAT, None)]
    )
    function = helper.make_function(
        "local",
        "DropBN",
        ["inp", "scale", "bias", "mean", "var"],
        ["out"],
        [
            helper.make_node("Dropout", ["inp"], ["dropped"], name="fdrop"),
            helper.make_node("BatchNormalization", ["dropped", "scale", "bias", "mean", "var"], ["out"], name="fbn"),
        ],
        opset_imports=[helper.make_opsetid("", 17)],
    )
    cond = numpy_helper.from_array(np.array(True), "cond")
    nodes = [
        helper.make_node("If", ["cond"], ["branch"], name="maybe", then_branch=then_graph, else_branch=else_graph),
        helper.make_node("DropBN", ["branch", "call_scale", "call_bias", "call_mean", "call_var"], ["y"], name="call", domain="local"),
    ]
    path = _save(tmp_path, nodes, [cond] + _bn_tensors("bn_then") + _bn_tensors("call"), functions=[function])
    found = _findings(path)
    assert ("BN101", "maybe/then_branch/bn_then") in found
    assert ("BN101", "call/fbn") in found
    result = bnaudit.audit(path)
    assert result.meta["batchnorm_layers"] == 2


def test_weights_rules_read_onnx_initializers(tmp_path):
    var = np.ones(C, np.float32)
    var[2] = np.nan
    path = _save(tmp_path, [_bn("bn", "x", "h"), helper.make_node("Relu", ["h"], ["y"], name="relu")], _bn_tensors("bn", var=var))
    result = bnaudit.audit(path)
    [finding] = [f for f in result.findings if f.code == "BN201"]
    assert finding.layer == "bn" and finding.details["problems"]["moving_variance"]["channels"] == [2]


def test_custom_domain_operator_is_bn501_and_standard_ones_are_not(tmp_path):
    nodes = [helper.make_node("MyScale", ["x"], ["s"], name="scale", domain="com.example"), _bn("bn", "s", "y")]
    found = _findings(_save(tmp_path, nodes, _bn_tensors("bn")))
    assert ("BN501", "scale") in found
    assert not [f for f in found if f[0] == "BN501" and f[1] != "scale"]


# -- external data ---------------------------------------------------------------------


def _external_model(tmp_path, location, *, offset=0, dims=(C,)):
    """A BN whose moving variance is external data at ``location``."""
    folder = tmp_path / "model"
    folder.mkdir(exist_ok=True)
    (folder / "weights.bin").write_bytes(np.full(C, 0.5, np.float32).tobytes())
    var = TensorProto(name="bn_var", data_type=TensorProto.FLOAT, dims=list(dims), data_location=TensorProto.EXTERNAL)
    for key, value in (("location", location), ("offset", str(offset)), ("length", str(int(np.prod(dims)) * 4))):
        var.external_data.add(key=key, value=value)
    return _save(folder, [_bn("bn", "x", "y")], _bn_tensors("bn")[:3] + [var])


def test_external_data_inside_the_folder_is_read(tmp_path):
    result = bnaudit.audit(_external_model(tmp_path, "weights.bin"))
    assert result.errors == []
    assert "BN201" in result.rules_run and not [f for f in result.findings if f.code in ("BN201", "BN202")]


@pytest.mark.parametrize(
    "location, kwargs, message",
    [
        ("../secret.bin", {}, "lies outside the model's folder"),
        ("/etc/passwd", {}, "lies outside the model's folder"),
        ("weights.bin", {"offset": 1 << 40}, "does not fit"),
        ("weights.bin", {"dims": (1 << 40,)}, "too large to read"),
        ("missing.bin", {}, "is missing"),
    ],
)
def test_hostile_external_data_is_one_line_and_exit_2(tmp_path, location, kwargs, message):
    (tmp_path / "secret.bin").write_bytes(np.ones(C, np.float32).tobytes())
    path = _external_model(tmp_path, location, **kwargs)
    before = path.read_bytes()
    run = run_bnaudit("check", path)
    assert run.returncode == 2
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"bnaudit: error: {path}: ") and message in lines[0]
    assert "Traceback" not in run.stderr
    assert path.read_bytes() == before


def test_truncated_and_mutated_onnx_files_are_one_line_and_exit_2(tmp_path):
    good = SAMPLES / "onnx" / "clean_conv_bn_relu.onnx"
    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 3])
    huge = _save(tmp_path, [_bn("bn", "x", "y")], _bn_tensors("bn")[:3] + [TensorProto(name="bn_var", data_type=TensorProto.FLOAT, dims=[1 << 40], raw_data=b"\0" * 16)], name="huge.onnx")
    short = _save(tmp_path, [_bn("bn", "x", "y")], _bn_tensors("bn")[:3] + [TensorProto(name="bn_var", data_type=TensorProto.FLOAT, dims=[C], raw_data=b"\0" * 3)], name="short.onnx")
    missing_inputs = _save(tmp_path, [helper.make_node("BatchNormalization", ["x", "s"], ["y"], name="bn")], [], name="bn_two_inputs.onnx")
    run = run_bnaudit("check", truncated, huge, short, missing_inputs, good)
    assert run.returncode == 2 and "Traceback" not in run.stderr
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 4, lines
    for path, message in ((truncated, "not a readable ONNX model"), (huge, "too large to read"), (short, "but holds 3 bytes"), (missing_inputs, "has 2 inputs, expected 5")):
        assert any(line.startswith(f"bnaudit: error: {path}: ") and message in line for line in lines), (path, lines)
    assert "5 models, 0 findings, 4 unreadable" in run.stdout  # the good model is still audited


def test_static_onnx_audit_imports_no_tensorflow():
    code = (
        "import bnaudit\nr = bnaudit.audit('sample_models/onnx/bias_before_bn.onnx', select=['BN1', 'BN2'])\n"
        "assert not r.errors, r.errors\nassert r.findings"
    )
    assert frameworks_imported(code, ("tensorflow", "keras", "tf_keras", "onnxruntime")) == []


@pytest.mark.slow
def test_a_fresh_tf2onnx_conversion_matches_the_committed_expectations(tmp_path):
    """build_exports.py's conversion, run now: the same findings as the committed file."""
    import tf_keras

    from build import SPECS, make
    from build_exports import to_onnx

    spec = next(s for s in SPECS if s.name == "consecutive_bn")
    to_onnx(make(tf_keras, spec), tmp_path / "consecutive_bn.onnx")
    assert _findings(tmp_path / "consecutive_bn.onnx") == sorted((f["code"], f["layer"]) for f in EXPORTED["onnx/consecutive_bn.onnx"])


@pytest.mark.slow
def test_the_documented_tf2onnx_recipe_keeps_every_bn_node(tmp_path):
    """docs/formats.md's conversion snippet, run as written on a tf-keras file: the BN
    nodes the default tf2onnx optimizers fold (consecutive_bn: a BN after a Conv2D) stay."""
    import re
    import shutil
    import subprocess

    from conftest import ROOT

    text = (ROOT / "docs" / "formats.md").read_text(encoding="utf-8")
    snippet = next(block for block in re.findall(r"```python\n(.*?)```", text, re.S) if "tf2onnx.convert.from_keras" in block)
    shutil.copy(SAMPLES / "k2_consecutive_bn.h5", tmp_path / "model.h5")
    run = subprocess.run([sys.executable, "-c", snippet], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    assert _findings(tmp_path / "model.onnx") == sorted((f["code"], f["layer"]) for f in EXPORTED["onnx/consecutive_bn.onnx"])


def test_bn302_bn403_on_onnx_are_skipped_with_the_reason_not_passed(tmp_path):
    """With --data, ONNX runs BN301/BN303 (tests/test_onnx_statistics.py); BN302 and
    BN403 cannot run on ONNX, BN401/402/404 wait for --inference."""
    data = tmp_path / "data.npz"
    np.savez(data, x=np.zeros((4, 8, 8, 3), np.float32))
    run = run_bnaudit("check", "--data", data, "--format", "json", "onnx/consecutive_bn.onnx", cwd=SAMPLES)
    assert run.returncode == 0 and "Traceback" not in run.stderr, run.stderr  # BN105 is a warning
    [onnx_model] = json.loads(run.stdout)["models"]
    codes = ("BN302", "BN401", "BN402", "BN403", "BN404")
    skipped = {s["code"]: s["reason"] for s in onnx_model["skipped"]}
    assert set(codes) <= set(skipped)
    assert not set(codes) & set(onnx_model["rules_run"])
    assert {"BN301", "BN303"} <= set(onnx_model["rules_run"])
    assert "pass --inference" in skipped["BN401"]
    assert "runs on its stored statistics" in skipped["BN302"]


@pytest.mark.slow
def test_every_report_format_renders_onnx_and_savedmodel_results(tmp_path):
    formats = ["text", "json", "html", "sarif", "junit", "github"]
    args = [a for f in formats for a in ("--format", f, "-o", str(tmp_path / f"report.{f}"))]
    run = run_bnaudit("check", "--exit-zero", *args, "onnx/consecutive_bn.onnx", "savedmodel/bias_before_bn", cwd=SAMPLES)
    assert run.returncode == 0, run.stderr
    for f in formats:
        text = (tmp_path / f"report.{f}").read_text()
        assert "consecutive_bn/bn2/FusedBatchNormV3" in text, f
        assert "bn_fc" in text, f
    sarif = json.loads((tmp_path / "report.sarif").read_text())
    assert {r["ruleId"] for r in sarif["runs"][0]["results"]} == {"BN102", "BN105"}


def test_onnx_runtime_rules_find_a_training_mode_bn_and_pass_an_inference_one(tmp_path):
    """--inference on ONNX runs ONNX Runtime: BN402 (batch dependence) on the training-mode
    BN, nothing on its inference twin; BN401/BN402/BN404 ran, BN403 skipped (one call path)."""
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", C, 8, 8])]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", C, 8, 8])]
    paths = {}
    for mode in (0, 1):
        folder = tmp_path / f"mode{mode}"
        folder.mkdir()
        node = helper.make_node(
            "BatchNormalization", ["x", "bn_scale", "bn_bias", "bn_mean", "bn_var"], ["y", "running_mean", "running_var"][: 1 + 2 * mode],
            name="bn", training_mode=mode,
        )  # the spec wants the running statistics as outputs in training mode
        paths[mode] = _save(folder, [node], _bn_tensors("bn"), inputs=inputs, outputs=outputs)
    run = run_bnaudit("check", "--inference", "--format", "json", "--exit-zero", paths[0], paths[1])
    assert run.returncode == 0 and "Traceback" not in run.stderr, run.stderr
    models = {m["path"]: m for m in json.loads(run.stdout)["models"]}
    clean, baked = models[str(paths[0])], models[str(paths[1])]
    for model in (clean, baked):
        assert model["errors"] == []
        assert {"BN401", "BN402", "BN404"} <= set(model["rules_run"])
        assert "BN403" in {s["code"] for s in model["skipped"]}
        assert model["measurements"]["inference"]["repeatability"] and all(r["passed"] for r in model["measurements"]["inference"]["repeatability"])
    # both BNs are the model's output (BN104); only the training-mode one depends on its batch
    assert sorted((f["code"], f["layer"]) for f in clean["findings"]) == [("BN104", "bn")]
    assert sorted((f["code"], f["layer"]) for f in baked["findings"]) == [("BN104", "bn"), ("BN106", "bn"), ("BN402", "y")]


def test_bn205_is_skipped_with_its_reason_where_there_is_no_step_count():
    """ONNX has no optimizer state; the sample SavedModel was saved without one (its
    checkpoint is read: tests/test_convergence.py): skipped, saying why, never passed."""
    reasons = {
        "onnx/bias_before_bn.onnx": "the optimizer's step count is read from .keras and .h5 files and tf-keras SavedModels only",
        "savedmodel/bias_before_bn": "the file holds no optimizer state: saved with include_optimizer=False, or never compiled",
    }
    run = run_bnaudit("check", "--select", "BN205", "--format", "json", *reasons, cwd=SAMPLES)
    models = {m["path"]: m for m in json.loads(run.stdout)["models"]}
    assert run.returncode == 0, run.stderr
    for path, reason in reasons.items():
        assert models[path]["rules_run"] == [] and models[path]["findings"] == []
        assert models[path]["skipped"] == [{"code": "BN205", "reason": reason}]


def test_bn108_is_skipped_on_onnx_with_the_reason_not_shown_as_passed():
    """An ONNX file records no trainable flag: the frozen BN of frozen_bn cannot be seen."""
    run = run_bnaudit("check", "--format", "json", "onnx/frozen_bn.onnx", cwd=SAMPLES)
    model = json.loads(run.stdout)["models"][0]
    assert "BN108" not in model["rules_run"]
    assert {s["code"]: s["reason"] for s in model["skipped"]}["BN108"] == (
        "an ONNX file records no trainable flag (which BN layers were frozen in training); audit the .keras original for BN108"
    )
    run = run_bnaudit("check", "--format", "junit", "onnx/frozen_bn.onnx", cwd=SAMPLES)
    assert 'name="BN108' in run.stdout and "<skipped" in run.stdout.split('name="BN108', 1)[1].split("</testcase>", 1)[0]


def test_bn101_is_skipped_on_an_onnx_graph_without_dropout():
    """tf2onnx drops Dropout from the inference graph: dropout_before_bn.onnx shows none,
    so BN101 cannot judge it and says so, as on clean_conv_bn_relu.onnx, never passed."""
    from bnaudit.loaders.onnx import NO_DROPOUT

    run = run_bnaudit("check", "--format", "json", "--select", "BN101", "--exit-zero", "onnx/dropout_before_bn.onnx", "onnx/clean_conv_bn_relu.onnx", cwd=SAMPLES)
    for model in json.loads(run.stdout)["models"]:
        assert model["rules_run"] == [] and model["findings"] == [], model["path"]
        assert model["skipped"] == [{"code": "BN101", "reason": NO_DROPOUT}]
    # A graph with a Dropout node is judged: test_placement_rules_on_onnx_operators (BN101 on bn_after_dropout).


def test_advice_on_a_converted_file_points_at_the_model_it_came_from():
    """An ONNX node or a SavedModel is not edited by hand, and `bnaudit fix` rewrites only
    .keras and .h5: the fix says where the change belongs."""
    run = run_bnaudit("check", "--format", "json", "--select", "BN102,BN106", "savedmodel/bn_training_baked", "onnx/bias_before_bn.onnx", cwd=SAMPLES)
    fixes = {(f["code"], f["layer"]): f["fix"] for m in json.loads(run.stdout)["models"] for f in m["findings"]}
    assert fixes == {
        ("BN106", "bn1"): "save the model again without training=True in the call (`bnaudit fix --unbake` rewrites the .keras or .h5 it came from)",
        ("BN102", "bias_before_bn/bn1/FusedBatchNormV3"): (
            "set use_bias=False on the layer 'bias_before_bn/conv1/BiasAdd' comes from, in the Keras model, and convert or export again"
        ),
    }


def test_an_onnx_graph_without_batchnorm_nodes_says_what_that_may_mean(tmp_path):
    from bnaudit.loaders.onnx import NO_BATCHNORM_NODE

    nodes = [helper.make_node("Relu", ["x"], ["y"], name="relu")]
    result = bnaudit.audit(_save(tmp_path, nodes, []))
    assert result.errors == [] and result.findings == []
    assert NO_BATCHNORM_NODE in result.notes
