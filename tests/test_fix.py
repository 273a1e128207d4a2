"""``bnaudit fix``: each fix on sample models in every format, re-audited and compared with Keras.

Every sample comes as ``NAME.keras`` (Keras 3), ``NAME.h5`` (Keras 3's legacy writer) and
``k2_NAME.h5`` (tf-keras); the proof loads each copy in the Keras that wrote it.
"""

from __future__ import annotations

import hashlib
import json
import sys

import numpy as np
import pytest

from bnaudit import audit, fix
from bnaudit.engine import Auditor
from bnaudit.loaders import LoadError
from conftest import ROOT, SAMPLES, frameworks_imported, run_bnaudit

#: The .keras variant runs in the quick suite; the .h5 variants are marked slow (CI runs them all).
FORMATS = ["{}.keras", pytest.param("{}.h5", marks=pytest.mark.slow), pytest.param("k2_{}.h5", marks=pytest.mark.slow)]


def findings(path, **options) -> set[tuple[str, str]]:
    result = audit(path, **options)
    assert not result.errors, result.errors
    return {(f.code, f.layer) for f in result.findings}


def digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def fix_in_subprocess(source, out, *args, env: dict[str, str] | None = None) -> dict:
    """``bnaudit fix`` in its own process, as JSON: a training-mode statistics pass runs
    collectives under a MirroredStrategy whose state would outlive it in this process."""
    report = out.with_suffix(".json")
    run = run_bnaudit("fix", source, "-o", out, *args, "--format", "json", "--report", report, env=env)
    assert run.returncode == 0, run.stderr
    assert run.stderr == ""  # TensorFlow ran for the proof: its start-up lines stay off the terminal
    return json.loads(report.read_text())


def batchnorm_paths(path) -> list[str]:
    graph = Auditor().load(path)
    graph.weights.close()
    return [bn.path for bn in graph.batchnorms()]


@pytest.mark.parametrize("pattern", FORMATS)
def test_absorb_bias_removes_bn102_with_the_same_outputs(samples, tmp_path, pattern):
    source = samples / pattern.format("bias_before_bn")
    before, original = findings(source), digest(source)
    out = tmp_path / source.name
    report = fix(source, out, absorb_bias=True)
    assert digest(source) == original
    assert [(c.layer, c.what) for c in report.changes] == [
        ("bn1", "moving_mean -= bias of 'conv1'"),
        ("conv1", "use_bias=False"),
        ("bn_fc", "moving_mean -= bias of 'fc'"),
        ("fc", "use_bias=False"),
    ]
    removed = report.changes[1].arrays[0]
    assert (removed.name, removed.action) == ("bias", "removed") and removed.max_abs_delta > 0
    assert report.changes[0].arrays[0].max_abs_delta == pytest.approx(removed.max_abs_delta)
    assert {("BN102", "bn1"), ("BN102", "bn_fc")} <= before
    assert findings(out) == before - {("BN102", "bn1"), ("BN102", "bn_fc")}
    assert report.proof.status == "passed", report.proof
    assert report.proof.checked_codes == ["BN102"] and report.proof.remaining == []
    assert report.proof.outputs_max_abs_delta < 1e-5 and report.proof.tolerance == 1e-4


@pytest.mark.parametrize("pattern", FORMATS)
def test_unbake_removes_bn106_and_the_copy_passes_bn402_bn403(samples, tmp_path, pattern):
    source = samples / pattern.format("bn_training_baked")
    assert ("BN106", "bn1") in findings(source)
    out = tmp_path / source.name
    report = fix(source, out, unbake=True)
    assert [(c.fix, c.layer, c.what, c.arrays) for c in report.changes] == [("unbake", "bn1", "removed training=True from 1 call(s)", [])]
    assert ("BN106", "bn1") not in findings(out)
    assert findings(out, select=["BN402", "BN403"], inference=True) == set()
    assert report.proof.checked_codes == ["BN106", "BN402", "BN403"] and report.proof.remaining == []
    assert report.proof.status == "passed", report.proof
    assert report.proof.tolerance is None  # unbaking may change predict's outputs: reported, not judged
    from bnaudit.fixes.report import verdict

    assert "(reported, not judged: unbake may change them)" in verdict(report)


@pytest.mark.parametrize("pattern", FORMATS)
def test_fold_removes_every_batchnorm_after_a_linear_layer(samples, tmp_path, pattern):
    source = samples / pattern.format("clean_conv_bn_relu")
    out = tmp_path / source.name
    report = fix(source, out, fold=True)
    folded = [c.layer for c in report.changes if c.what.startswith("removed")]
    assert folded == batchnorm_paths(source) and folded
    assert batchnorm_paths(out) == []
    assert report.proof.status == "passed" and report.proof.outputs_max_abs_delta < 1e-5


def test_a_folded_batchnorm_is_listed_as_folded_without_a_delta(samples, tmp_path):
    """The BN's arrays have no max |Δ| of their own (they are gone); the kernel and bias they
    were folded into keep theirs. Text, JSON and HTML say the same."""
    source = samples / "clean_conv_bn_relu.keras"
    run = run_bnaudit("fix", source, "-o", tmp_path / "x.keras", "--fold", "--no-verify", "--format", "json")
    assert run.returncode == 0, run.stderr
    document = json.loads(run.stdout)
    bns = [c for c in document["changes"] if c["layer"] in ("bn1", "bn2")]
    assert [(c["layer"], c["what"]) for c in bns] == [
        ("bn1", "removed; its arrays folded into 'conv1', whose output its consumers read"),
        ("bn2", "removed; its arrays folded into 'conv2', whose output its consumers read"),
    ]
    for change in bns:
        assert change["arrays"] == [{"name": name, "action": "folded", "max_abs_delta": None} for name in ("gamma", "beta", "moving_mean", "moving_variance")]
    convs = {c["layer"]: c["arrays"] for c in document["changes"] if c["layer"] in ("conv1", "conv2")}
    assert sorted(convs) == ["conv1", "conv2"]
    for arrays in convs.values():
        assert [(a["name"], a["action"]) for a in arrays] == [("kernel", "changed"), ("bias", "added")]
        assert all(a["max_abs_delta"] > 0 for a in arrays)
    text = run_bnaudit("fix", source, "-o", tmp_path / "y.keras", "--fold", "--no-verify").stdout.splitlines()
    kernel = f"kernel changed max|Δ| {convs['conv1'][0]['max_abs_delta']:.3g}, bias added max|Δ| {convs['conv1'][1]['max_abs_delta']:.3g}"
    assert text[1].split() == ["fold", "conv1", "folded", "BN", "'bn1'", "into", "the", "kernel", "and", "bias", *kernel.split()]
    assert text[2].split() == ["fold", "bn1", *"removed; its arrays folded into 'conv1', whose output its consumers read".split(), *"gamma folded, beta folded, moving_mean folded, moving_variance folded".split()]
    assert "max|Δ| 1" not in "\n".join(text) and "removed max" not in "\n".join(text)
    html = run_bnaudit("fix", source, "-o", tmp_path / "z.keras", "--fold", "--no-verify", "--format", "html").stdout
    assert "gamma folded<br>beta folded<br>moving_mean folded<br>moving_variance folded</td>" in html
    assert "kernel changed max|Δ| " in html and "gamma removed" not in html


@pytest.mark.parametrize("pattern", FORMATS)
def test_fold_lists_what_it_cannot_fold_and_why(samples, tmp_path, pattern):
    source = samples / pattern.format("shared_and_branches")
    report = fix(source, tmp_path / source.name, fold=True)
    assert [(r.layer, r.why) for r in report.refused] == [
        ("bn_right", "'shared_conv' is shared (2 calls)"),
        ("bn_left", "'shared_conv' is shared (2 calls)"),
        ("bn_merge", "its input comes from Add 'add', not a Dense or convolution"),
    ]
    assert batchnorm_paths(tmp_path / source.name) == ["bn_right", "bn_left", "bn_merge"]
    assert report.proof.status == "passed"


def _every_kind_of_linear_layer(keras, layers):
    """Conv2D, depthwise (multiplier 2, no bias), separable, transposed (no bias), grouped, Conv1D, Dense."""
    image = keras.Input((8, 8, 3), name="image")
    x = layers.Conv2D(6, 3, padding="same", name="conv")(image)
    x = layers.BatchNormalization(name="bn_conv")(x)
    x = layers.DepthwiseConv2D(3, depth_multiplier=2, padding="same", use_bias=False, name="dw")(x)
    x = layers.BatchNormalization(name="bn_dw")(x)
    x = layers.SeparableConv2D(5, 3, padding="same", depth_multiplier=2, name="sep")(x)
    x = layers.BatchNormalization(name="bn_sep")(x)
    x = layers.Conv2DTranspose(4, 3, strides=2, padding="same", use_bias=False, name="tconv")(x)
    x = layers.BatchNormalization(name="bn_tconv")(x)
    x = layers.Conv2D(4, 3, padding="same", groups=2, name="grouped")(x)
    x = layers.BatchNormalization(name="bn_grouped")(x)
    x = layers.Activation("relu")(x)
    x = layers.Reshape((16 * 16, 4))(x)
    x = layers.Conv1D(3, 3, padding="same", name="conv1d")(x)
    x = layers.BatchNormalization(name="bn_conv1d")(x)
    x = layers.GlobalAveragePooling1D()(x)
    x = layers.Dense(5, name="fc")(x)
    x = layers.BatchNormalization(name="bn_fc", axis=-1)(x)
    model = keras.Model(image, x)
    rng = np.random.default_rng(3)
    for layer in model.layers:
        if isinstance(layer, layers.BatchNormalization):
            n = layer.moving_mean.shape[0]
            layer.set_weights([rng.uniform(0.5, 2, n), rng.normal(0, 0.5, n), rng.normal(0, 0.5, n), rng.uniform(0.3, 3, n)])
        elif getattr(layer, "bias", None) is not None:
            layer.bias.assign(rng.normal(0, 0.5, layer.bias.shape).astype("float32"))
    return model


LINEAR_KINDS = ["conv", "dw", "sep", "tconv", "grouped", "conv1d"]


@pytest.mark.parametrize(
    "writer,suffix", [("keras", ".keras"), pytest.param("keras", ".h5", marks=pytest.mark.slow), pytest.param("tf_keras", ".h5", marks=pytest.mark.slow)]
)
def test_fold_handles_every_kernel_layout(tmp_path, writer, suffix):
    keras = pytest.importorskip(writer)
    source = tmp_path / f"kinds{suffix}"
    _every_kind_of_linear_layer(keras, keras.layers).save(source)
    report = fix(source, tmp_path / f"folded{suffix}", fold=True)
    folded = [c.layer for c in report.changes if c.what.startswith("folded")]
    # tf-keras saves BN's axis as [1] for the Dense's output, and records no rank on it: the
    # rank is walked back through the global pooling to the Input
    assert folded == LINEAR_KINDS + ["fc"]
    assert report.refused == []
    added = {c.layer: [a.name for a in c.arrays if a.action == "added"] for c in report.changes if c.what.startswith("folded")}
    assert added["dw"] == ["bias"] and added["tconv"] == ["bias"] and added["conv"] == []
    assert report.proof.status == "passed", report.proof
    assert report.proof.outputs_max_abs_delta < 1e-4


def test_absorb_then_fold_in_one_run_and_the_order_is_safe(samples, tmp_path):
    source = samples / "bias_before_bn.keras"
    report = fix(source, tmp_path / "x.keras", fold=True, absorb_bias=True)
    assert report.fixes == ["absorb-bias", "fold"]
    assert batchnorm_paths(tmp_path / "x.keras") == []
    assert report.proof.status == "passed" and report.proof.tolerance == 1e-4


def test_recalibrate_writes_population_statistics_and_clears_bn301(tmp_path, samples):
    import keras

    source = samples / "clean_conv_bn_relu.keras"
    rng = np.random.default_rng(1)
    data = (rng.standard_normal((96, 8, 8, 3)) * 3 + 2).astype("float32")
    np.save(tmp_path / "shifted.npy", data)
    assert {code for code, _ in findings(source, select=["BN301"], data=str(tmp_path / "shifted.npy"))} == {"BN301"}
    out = tmp_path / "recalibrated.keras"
    report = fix_in_subprocess(source, out, "--recalibrate", "--data", tmp_path / "shifted.npy", "--batch-size", "32")
    assert [c["layer"] for c in report["changes"]] == batchnorm_paths(source)
    assert findings(out, select=["BN301"], data=str(tmp_path / "shifted.npy")) == set()
    assert "BN301" in report["proof"]["checked_codes"] and report["proof"]["remaining"] == []
    assert report["proof"]["status"] == "passed" and report["proof"]["tolerance"] is None
    # The first BN's input depends on no BN: its new statistics are the population moments of conv1(x).
    model = keras.saving.load_model(source, compile=False)
    first = batchnorm_paths(source)[0]
    producer = model.get_layer(first)._inbound_nodes[0].input_tensors[0]
    features = keras.Model(model.inputs, producer).predict(data, verbose=0).astype(np.float64)
    fixed = keras.saving.load_model(out, compile=False).get_layer(first)
    np.testing.assert_allclose(fixed.moving_mean.numpy(), features.mean(axis=(0, 1, 2)), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(fixed.moving_variance.numpy(), features.var(axis=(0, 1, 2)), rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_recalibrate_from_statistics_merged_from_shards(tmp_path, samples):
    source = samples / "clean_conv_bn_relu.keras"
    data = tmp_path / "d.npy"
    np.save(data, (np.random.default_rng(2).standard_normal((64, 8, 8, 3)) * 2 - 1).astype("float32"))
    for k in (1, 2):
        run = run_bnaudit("stats", source, "--data", data, "--upstream", "training", "--batch-size", "16", "--shard", f"{k}/2", "-o", tmp_path / f"p{k}.npz")
        assert run.returncode == 0, run.stderr
    assert run_bnaudit("merge", tmp_path / "p1.npz", tmp_path / "p2.npz", "-o", tmp_path / "all.npz").returncode == 0
    sharded = fix(source, tmp_path / "sharded.keras", recalibrate=True, stats=str(tmp_path / "all.npz"), verify=False)
    direct = fix_in_subprocess(source, tmp_path / "direct.keras", "--recalibrate", "--data", data, "--batch-size", "16", "--no-verify")
    assert [c.layer for c in sharded.changes] == [c["layer"] for c in direct["changes"]]
    for a, b in zip(sharded.changes, direct["changes"]):
        for x, y in zip(a.arrays, b["arrays"]):
            assert x.max_abs_delta == pytest.approx(y["max_abs_delta"], rel=1e-5)
    run = run_bnaudit("stats", source, "--data", data, "--batch-size", "16", "-o", tmp_path / "inference.npz")
    with pytest.raises(LoadError, match="upstream BNs in inference mode"):
        fix(source, tmp_path / "no.keras", recalibrate=True, stats=str(tmp_path / "inference.npz"))
    assert not (tmp_path / "no.keras").exists()


def test_static_fixes_import_no_tensorflow(tmp_path, samples):
    code = (
        "import bnaudit\n"
        f"r = bnaudit.fix({str(samples / 'bias_before_bn.keras')!r}, {str(tmp_path / 'x.keras')!r}, absorb_bias=True, fold=True, unbake=True, verify=False)\n"
        "assert r.changes and r.proof.status == 'not run', r\n"
    )
    assert frameworks_imported(code) == []


def test_without_tensorflow_the_proof_says_it_did_not_run(tmp_path, samples):
    """TensorFlow made unimportable (None in sys.modules): the copy is written, the proof says why it is missing."""
    code = (
        "import sys\nsys.modules['tensorflow'] = None\nimport importlib.util, bnaudit\n"
        "importlib.util.find_spec = lambda name, *a: None if name == 'tensorflow' else __import__('importlib.machinery').machinery.PathFinder.find_spec(name)\n"
        f"r = bnaudit.fix({str(samples / 'bias_before_bn.h5')!r}, {str(tmp_path / 'x.h5')!r}, absorb_bias=True)\n"
        "print(r.proof.status, '|', r.proof.checked_codes, '|', r.proof.detail)\n"
    )
    import subprocess

    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, env={"PYTHONPATH": str(ROOT), "PATH": ""})
    assert proc.returncode == 0, proc.stderr
    status, codes, detail = proc.stdout.strip().split(" | ")
    assert status == "not run" and codes == "['BN102']"
    assert detail.startswith("TensorFlow is not installed")
    assert (tmp_path / "x.h5").is_file()


def test_cli_text_and_json(tmp_path, samples):
    run = run_bnaudit("fix", samples / "bias_before_bn.h5", "-o", tmp_path / "x.h5", "--absorb-bias", "--format", "json", "--report", tmp_path / "r.json")
    assert run.returncode == 0, run.stderr
    document = json.loads((tmp_path / "r.json").read_text())
    assert document["version"] == 2 and document["fixes"] == ["absorb-bias"]
    assert [c["layer"] for c in document["changes"]] == ["bn1", "conv1", "bn_fc", "fc"]
    assert document["proof"]["status"] == "passed"
    run = run_bnaudit("fix", samples / "bias_before_bn.h5", "-o", tmp_path / "y.h5", "--absorb-bias", "--no-verify")
    assert run.returncode == 0
    assert run.stdout.splitlines()[1].split()[:2] == ["absorb-bias", "bn1"]
    assert run.stdout.splitlines()[-1] == "proof: not run - not asked for (--no-verify)"


def test_html_escapes_what_the_model_file_says(tmp_path, samples):
    from bnaudit.fixes.changes import Change, FixReport, Refusal
    from bnaudit.fixes.report import render

    report = FixReport("m.keras", "o.keras", "keras", ["fold"], [Change("fold", "<script>x</script>", "removed")], [Refusal("fold", "a\x1b[31m", "<b>")])
    html = render(report, "html")
    assert "<script>x" not in html and "&lt;script&gt;x&lt;/script&gt;" in html and "&lt;b&gt;" in html
    assert "\x1b" not in render(report, "text") and "\\x1b[31m" in render(report, "text")


BAD = [
    (["--fold", "-o", "{src}"], "is the input; the input is never modified"),
    (["-o", "{tmp}/x.keras"], "no fix chosen"),
    (["--fold", "-o", "{tmp}/x.h5"], "would change the format (.keras -> .h5)"),
    (["--recalibrate", "-o", "{tmp}/x.keras"], "--recalibrate needs the data to measure"),
    (["--fold", "-o", "{tmp}/no/such/dir/x.keras"], "does not exist"),
]


@pytest.mark.parametrize("args,message", BAD)
def test_bad_requests_are_one_line_exit_2_nothing_written(tmp_path, samples, args, message):
    source = tmp_path / "m.keras"
    source.write_bytes((samples / "bias_before_bn.keras").read_bytes())
    original = digest(source)
    run = run_bnaudit("fix", source, *[a.format(src=source, tmp=tmp_path) for a in args])
    assert run.returncode == 2
    assert run.stderr.count("\n") == 1 and run.stderr.startswith(f"bnaudit: error: {source}: ") and message in run.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.keras"] and digest(source) == original


def test_a_non_numeric_epsilon_is_one_line_exit_2_nothing_written(tmp_path, samples):
    """A config value of the wrong kind found while folding is the file's fault, said as
    such (not an internal error), and nothing is written."""
    import zipfile

    source = tmp_path / "m.keras"
    with zipfile.ZipFile(samples / "bias_before_bn.keras") as original, zipfile.ZipFile(source, "w") as copy:
        for info in original.infolist():
            data = original.read(info)
            if info.filename == "config.json":
                data = data.replace(b'"epsilon": 0.001', b'"epsilon": "x"')
            copy.writestr(info, data)
    run = run_bnaudit("fix", source, "-o", tmp_path / "x.keras", "--fold", "--no-verify")
    assert run.returncode == 2 and run.stderr.count("\n") == 1, run.stderr
    assert "epsilon is 'x', not a number (the file was not written by Keras as saved)" in run.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.keras"]


def test_layers_inside_wrappers_are_refused_not_crashed_on(tmp_path):
    """BN102 sees a Dense and a BN inside TimeDistributed; the fixes do not rewrite wrapped
    layers, and say so in one line with nothing written."""
    import keras

    inputs = keras.Input((8, 12))
    dense = keras.layers.TimeDistributed(keras.layers.Dense(16, name="dense"), name="td_dense")(inputs)
    outputs = keras.layers.TimeDistributed(keras.layers.BatchNormalization(name="batch_normalization"), name="td_bn")(dense)
    keras.Model(inputs, outputs).save(tmp_path / "td.keras")
    assert [(f.code, f.layer) for f in audit(tmp_path / "td.keras", select=["BN102"]).findings] == [("BN102", "td_bn/batch_normalization")]
    for flag, says in (("--absorb-bias", "no bias can be absorbed: td_bn/batch_normalization: 'td_dense/dense' sits inside TimeDistributed 'td_dense'; wrapped layers are not rewritten"),
                       ("--fold", "no BN can be folded: td_bn/batch_normalization: its input comes from TimeDistributed 'td_dense', not a Dense or convolution")):
        run = run_bnaudit("fix", tmp_path / "td.keras", "-o", tmp_path / "x.keras", flag, "--no-verify")
        assert run.returncode == 2 and run.stderr.count("\n") == 1 and says in run.stderr, run.stderr
        assert sorted(p.name for p in tmp_path.iterdir()) == ["td.keras"]


def test_optimizer_state_is_said_dropped_only_where_the_file_held_one(tmp_path, samples):
    import keras

    inputs = keras.Input((4,))
    outputs = keras.layers.BatchNormalization(name="bn")(keras.layers.Dense(3, name="fc")(inputs))
    model = keras.Model(inputs, outputs)
    model.compile("adam", "mse")
    model.fit(np.ones((8, 4), "float32"), np.ones((8, 3), "float32"), epochs=1, verbose=0)
    model.save(tmp_path / "trained.keras")
    for source, dropped in ((tmp_path / "trained.keras", True), (samples / "clean_conv_bn_relu.keras", False)):
        report = fix(source, tmp_path / f"out_{source.name}", fold=True, verify=False)
        assert report.dropped_optimizer_state is dropped, source.name


def test_unfoldable_model_and_wrong_data_write_nothing(tmp_path, samples):
    import keras

    inputs = keras.Input((4,))
    outputs = keras.layers.BatchNormalization(name="bn")(keras.layers.Dense(3, activation="relu", name="fc")(inputs))
    keras.Model(inputs, outputs).save(tmp_path / "relu_between.keras")
    run = run_bnaudit("fix", tmp_path / "relu_between.keras", "-o", tmp_path / "x.keras", "--fold")
    assert run.returncode == 2 and "no BN can be folded: bn: 'fc' applies relu before the BN (a non-linearity between)" in run.stderr
    (tmp_path / "relu_between.keras").unlink()
    np.save(tmp_path / "wrong.npy", np.zeros((4, 5, 5, 3), "float32"))
    run = run_bnaudit("fix", samples / "clean_conv_bn_relu.keras", "-o", tmp_path / "y.keras", "--recalibrate", "--data", tmp_path / "wrong.npy")
    assert run.returncode == 2 and "expects shape (None, 8, 8, 3)" in run.stderr, run.stderr
    assert "Traceback" not in run.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["wrong.npy"]
    run = run_bnaudit("fix", tmp_path / "wrong.npy", "-o", tmp_path / "z.npy", "--fold")
    assert run.returncode == 2 and "not a model file bnaudit can read" in run.stderr


@pytest.mark.slow
def test_resnet50_absorb_then_fold_within_tolerance(tmp_path):
    """keras.applications.ResNet50: every conv before a BN keeps its bias (BN102 x 53); absorb, then fold all 53."""
    import keras

    from model_builders import set_trained_statistics

    model = keras.applications.ResNet50(weights=None)
    set_trained_statistics(model, seed=5)
    source = tmp_path / "resnet50.keras"
    model.save(source)
    before = findings(source)
    assert sum(code == "BN102" for code, _ in before) == 53
    absorbed = fix(source, tmp_path / "absorbed.keras", absorb_bias=True)
    assert absorbed.proof.status == "passed" and absorbed.proof.outputs_max_abs_delta < 1e-4
    assert findings(tmp_path / "absorbed.keras") == {f for f in before if f[0] != "BN102"}
    folded = fix(tmp_path / "absorbed.keras", tmp_path / "folded.keras", fold=True)
    assert folded.refused == [] and batchnorm_paths(tmp_path / "folded.keras") == []
    assert sum(c.what.startswith("folded") for c in folded.changes) == 53
    assert folded.proof.status == "passed", folded.proof
    assert folded.proof.outputs_max_abs_delta < 1e-4


def test_a_model_tensorflow_cannot_run_here_is_folded_and_the_proof_says_why_not(tmp_path):
    """A channels_first convolution has no CPU kernel in TensorFlow's own (Eigen) kernels:
    the fold (config and arrays only) is written, the output comparison is "not run" with
    TensorFlow's reason in one line, and `check --inference` gives that reason in one line
    too. oneDNN's kernels, which TensorFlow uses by default on some x86 CPUs and not on
    others, do run it, so they are turned off (``TF_ENABLE_ONEDNN_OPTS=0``) for every machine."""
    import keras

    model = keras.Sequential([
        keras.Input((3, 8, 8)),
        keras.layers.Conv2D(4, 3, data_format="channels_first", use_bias=False, name="conv"),
        keras.layers.BatchNormalization(axis=1, name="bn"),
        keras.layers.Flatten(),
        keras.layers.Dense(2),
    ])
    source = tmp_path / "nchw.keras"
    model.save(source)
    eigen_kernels = {"TF_ENABLE_ONEDNN_OPTS": "0"}
    report = fix_in_subprocess(source, tmp_path / "folded.keras", "--fold", env=eigen_kernels)
    assert [(c["layer"], c["fix"]) for c in report["changes"]] == [("conv", "fold"), ("bn", "fold")]
    assert report["proof"]["status"] == "not run"
    assert report["proof"]["detail"] == (
        "outputs not compared: TensorFlow could not run the models (UnimplementedError: The Conv2D op currently only "
        "supports the NHWC tensor format on the CPU. The op was given the format: NCHW)"
    )
    assert batchnorm_paths(tmp_path / "folded.keras") == []
    run = run_bnaudit("check", source, "--inference", "--select", "BN401", env=eigen_kernels)
    assert run.returncode == 2 and run.stderr.splitlines() == [
        f"bnaudit: error: {source} [BN401]: rule crashed: UnimplementedError: The Conv2D op currently only supports the NHWC "
        "tensor format on the CPU. The op was given the format: NCHW (run with --debug for the traceback)"
    ]


def test_a_dense_and_bn_inside_a_nested_sequential_fold(tmp_path):
    """The nested model's config gives no input shapes, so the rank is unknown; a BN on
    axis -1 after a Dense is on its channel axis whatever the rank."""
    import keras

    block = keras.Sequential([keras.layers.Dense(8, use_bias=False, name="dense"), keras.layers.BatchNormalization(name="bn")], name="blk")
    keras.Sequential([keras.Input((4,)), block, keras.layers.Dense(2, name="head")]).save(tmp_path / "nested.keras")
    report = fix_in_subprocess(tmp_path / "nested.keras", tmp_path / "folded.keras", "--fold")
    assert [(c["layer"], c["fix"]) for c in report["changes"]] == [("blk/dense", "fold"), ("blk/bn", "fold")]
    assert report["refused"] == [] and report["proof"]["status"] == "passed"
    assert batchnorm_paths(tmp_path / "folded.keras") == []


def test_a_bn_on_another_axis_than_a_nested_dense_is_neither_folded_nor_absorbed(tmp_path):
    """The same nested block on a sequence, its BN on axis -2 (the time steps): the rank
    walked back to the Input is 3, the Dense's channels axis 2, so the BN is not a
    per-channel affine map of them and its bias is not cancelled: absorb finds nothing,
    fold refuses with the reason, and nothing is written."""
    import keras

    block = keras.Sequential([keras.layers.Dense(8, name="dense"), keras.layers.BatchNormalization(axis=-2, name="bn")], name="blk")
    keras.Sequential([keras.Input((5, 4)), block, keras.layers.Dense(2, name="head")]).save(tmp_path / "sequence.keras")
    run = run_bnaudit("fix", tmp_path / "sequence.keras", "-o", tmp_path / "fixed.keras", "--fold", "--absorb-bias", "--no-verify")
    assert run.returncode == 2 and run.stdout == ""
    assert run.stderr.splitlines() == [
        f"bnaudit: error: {tmp_path / 'sequence.keras'}: no BN can be folded: "
        "blk/bn: its axis -2 is not the channel axis (2) of 'blk/dense' (nothing was written)"
    ]
    assert not (tmp_path / "fixed.keras").exists()


def test_a_proof_on_constant_outputs_says_it_shows_little(tmp_path):
    """A Dense with a zero kernel gives every sample the same outputs: the copy's equal
    outputs are no evidence, and the verdict says so (the figure is in the JSON too)."""
    import keras

    inputs = keras.Input((4,))
    x = keras.layers.Dense(3, kernel_initializer="zeros", bias_initializer="ones", name="fc")(inputs)
    x = keras.layers.BatchNormalization(name="bn")(x)
    keras.Model(inputs, keras.layers.Dense(2, name="head")(x)).save(tmp_path / "flat.keras")
    report = fix_in_subprocess(tmp_path / "flat.keras", tmp_path / "absorbed.keras", "--absorb-bias")
    assert report["proof"]["status"] == "passed" and report["proof"]["figures"]["constant_outputs"] is True
    run = run_bnaudit("fix", tmp_path / "flat.keras", "-o", tmp_path / "again.keras", "--absorb-bias")
    assert "the original gives every sample the same outputs (untrained?), so equal outputs show little" in run.stdout.splitlines()[-1]
    report = fix_in_subprocess(SAMPLES / "bias_before_bn.keras", tmp_path / "trained.keras", "--absorb-bias")
    assert "constant_outputs" not in report["proof"]["figures"]
