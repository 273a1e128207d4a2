"""Real Keras models with every BatchNormalization variant, wrapper and writer.

Each model is built and saved by Keras itself (Keras 3 as ``.keras`` and ``.h5``,
tf-keras as a Keras-2 ``.h5``) and audited statically: exact findings (code, layer),
none of the others, no error, the BN count Keras itself gives, and every BN array equal
to what the writing Keras holds.
"""

from __future__ import annotations

import numpy as np
import pytest

from bnaudit import audit
from bnaudit.measurements import BatchNormDrift, BatchNormNotMeasured, CallPathComparison, DeviceComparison, StatisticsPass, TrainInferenceComparison
from model_builders import assert_bn_arrays_match as assert_arrays_match


def findings(result) -> set[tuple[str, str]]:
    return {(f.code, f.layer) for f in result.findings}


def save_all(model, folder, stem, formats=(".keras", ".h5")):
    paths = []
    for suffix in formats:
        path = folder / f"{stem}{suffix}"
        model.save(path)
        paths.append(path)
    return paths


# -- kind 1: BN inside wrappers ------------------------------------------------------


def test_timedistributed_batchnorm_is_audited_in_every_format(tmp_path):
    """The issue's example: TimeDistributed(Dense) -> TimeDistributed(BN), statistics still 0/1."""
    import keras
    import tf_keras
    from keras import layers

    inp = keras.Input((8, 12))
    x = layers.TimeDistributed(layers.Dense(16, name="dense"), name="td_dense")(inp)
    x = layers.TimeDistributed(layers.BatchNormalization(name="bn"), name="td_bn")(x)
    model = keras.Model(inp, x)
    k2_inp = tf_keras.Input((8, 12))
    y = tf_keras.layers.TimeDistributed(tf_keras.layers.Dense(16, name="dense"), name="td_dense")(k2_inp)
    y = tf_keras.layers.TimeDistributed(tf_keras.layers.BatchNormalization(name="bn"), name="td_bn")(y)
    k2_model = tf_keras.Model(k2_inp, y)
    k2_path = tmp_path / "k2_td.h5"
    k2_model.save(k2_path)
    for path, writer in [(p, model) for p in save_all(model, tmp_path, "td")] + [(k2_path, k2_model)]:
        result = audit(path)
        assert result.errors == [], path
        assert result.meta["batchnorm_layers"] == 1
        assert findings(result) == {
            ("BN202", "td_bn/bn"),  # the example's 0/1 statistics
            ("BN102", "td_bn/bn"),  # the wrapped Dense's bias is cancelled
            ("BN104", "td_bn/bn"),  # the wrapper is the model's output
        }, path
        producer = next(f for f in result.findings if f.code == "BN102").details["producer"]
        assert producer == ("td_dense/dense")
        assert_arrays_match(path, writer)


def test_nested_model_and_dropout_inside_wrappers(tmp_path):
    """A Sequential block inside TimeDistributed, a wrapped Dropout feeding a wrapped BN, a Bidirectional RNN."""
    import keras
    from keras import layers

    from model_builders import set_trained_statistics_any

    block = keras.Sequential(
        [keras.Input((6, 6, 2)), layers.Conv2D(3, 3, use_bias=False, name="conv"), layers.BatchNormalization(name="bn"), layers.ReLU(name="relu"), layers.GlobalAveragePooling2D(name="gap")],
        name="frame",
    )
    inp = keras.Input((4, 6, 6, 2))
    x = layers.TimeDistributed(block, name="per_frame")(inp)
    x = layers.TimeDistributed(layers.Dense(5, use_bias=False), name="td_proj")(x)
    x = layers.TimeDistributed(layers.Dropout(0.3), name="td_drop")(x)
    x = layers.TimeDistributed(layers.BatchNormalization(name="bn2"), name="td_bn")(x)
    x = layers.Bidirectional(layers.LSTM(3), name="bi")(x)
    model = keras.Model(inp, layers.Dense(2, name="out")(x))
    set_trained_statistics_any(model)
    for path in save_all(model, tmp_path, "wrapped"):
        result = audit(path)
        assert result.errors == [], path
        assert result.meta["batchnorm_layers"] == 2
        assert findings(result) == {("BN101", "td_bn/bn2")}, path
        assert result.findings[0].details["dropout"] == "td_drop/dropout"
        assert_arrays_match(path, model)


def test_unreadable_wrapped_layer_is_said_not_hidden(tmp_path):
    """A wrapper whose config holds no readable layer gets a note naming it."""
    import json
    import zipfile

    import keras
    from keras import layers

    inp = keras.Input((3, 4))
    model = keras.Model(inp, layers.TimeDistributed(layers.Dense(2), name="td")(inp))
    path = tmp_path / "td.keras"
    model.save(path)
    broken = tmp_path / "broken.keras"
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(broken, "w") as dst:
        for info in src.infolist():
            data = src.read(info)
            if info.filename == "config.json":
                config = json.loads(data)
                config["config"]["layers"][1]["config"]["layer"] = "not a layer"
                data = json.dumps(config).encode()
            dst.writestr(info, data)
    result = audit(broken)
    assert result.errors == []
    assert any("'td'" in note and "TimeDistributed" in note and "cannot be read" in note for note in result.notes), result.notes


def test_a_model_without_batchnorm_says_so(tmp_path):
    import keras
    from keras import layers

    from conftest import run_bnaudit

    path = tmp_path / "plain.keras"
    keras.Sequential([keras.Input((4,)), layers.Dense(2)]).save(path)
    text = run_bnaudit("check", path)
    assert text.returncode == 0, text.stderr
    assert "no BatchNormalization layer" in text.stdout
    result = audit(path)
    assert result.findings == [] and result.errors == []
    assert any("no BatchNormalization layer" in note for note in result.notes)


# -- kind 2: BN options that change what is saved ---------------------------------------

#: Keras 3 BatchNormalization options, each in its own model: Dense (with bias) -> BN -> ReLU -> Dense.
KERAS3_OPTIONS = {
    "renorm": {"renorm": True},
    "renorm_no_center_no_scale": {"renorm": True, "center": False, "scale": False},
    "synchronized": {"synchronized": True},
    "no_center": {"center": False},
    "no_scale": {"scale": False},
    "constraints_regularizers": {"gamma_constraint": "non_neg", "beta_regularizer": "l2", "gamma_regularizer": "l1"},
    "mixed_float16": {"dtype": "mixed_float16"},
}
#: tf-keras (Keras 2) options; ``fused`` needs a 4-D input, the rest run on Dense outputs too.
KERAS2_OPTIONS = {
    "renorm": {"renorm": True, "renorm_clipping": {"rmax": 3.0, "rmin": 0.3, "dmax": 5.0}},
    "renorm_no_scale": {"renorm": True, "scale": False},
    "virtual_batch_size": {"virtual_batch_size": 2},
    "fused": {"fused": True},
    "fused_false": {"fused": False},
    "sync": {},  # SyncBatchNormalization
    "no_center": {"center": False},
    "constraints_regularizers": {"gamma_constraint": "non_neg", "beta_regularizer": "l2"},
    "mixed_float16": {"dtype": "mixed_float16"},
}


def _option_model(layers, keras, options, conv: bool, bn_class=None):
    inp = keras.Input((6, 6, 2) if conv else (6,))
    x = (layers.Conv2D(4, 3, name="linear") if conv else layers.Dense(4, name="linear"))(inp)
    x = (bn_class or layers.BatchNormalization)(name="bn", **options)(x)
    x = layers.ReLU(name="relu")(x)
    if conv:
        x = layers.GlobalAveragePooling2D(name="gap")(x)
    return keras.Model(inp, layers.Dense(2, name="out")(x))


@pytest.mark.parametrize("option", sorted(KERAS3_OPTIONS))
def test_keras3_batchnorm_options(tmp_path, option):
    import keras
    from keras import layers

    from model_builders import set_trained_statistics_any

    model = _option_model(layers, keras, KERAS3_OPTIONS[option], conv=False)
    set_trained_statistics_any(model)
    for path in save_all(model, tmp_path, option):
        result = audit(path)
        assert result.errors == [], (path, result.errors)
        assert result.meta["batchnorm_layers"] == 1
        # The bias of 'linear' is cancelled whatever the option; nothing else fires.
        assert findings(result) == {("BN102", "bn")}, path
        assert_arrays_match(path, model)


@pytest.mark.parametrize("option", sorted(KERAS2_OPTIONS))
def test_keras2_batchnorm_options(tmp_path, option):
    import tf_keras

    from model_builders import set_trained_statistics_any

    layers = tf_keras.layers
    bn_class = layers.experimental.SyncBatchNormalization if option == "sync" else None
    model = _option_model(layers, tf_keras, KERAS2_OPTIONS[option], conv=option.startswith("fused"), bn_class=bn_class)
    set_trained_statistics_any(model)
    path = tmp_path / f"k2_{option}.h5"
    model.save(path)
    result = audit(path)
    assert result.errors == [], result.errors
    assert result.meta["batchnorm_layers"] == 1
    assert findings(result) == {("BN102", "bn")}  # never BN501, never BN107 for a shifted axis
    assert not any("unknown layer" in note for note in result.notes)
    if option == "virtual_batch_size":
        note = next(n for n in result.notes if "virtual_batch_size" in n)
        assert "known tf-keras serialization bug" in note and "normalizes axis [1]" in note
    assert_arrays_match(path, model)


# -- kind 5: Keras-2 files run with the Keras that wrote them ---------------------------


@pytest.fixture(scope="module")
def keras2_runtime_models(tmp_path_factory):
    """tf-keras files the runtime rules must load: SpatialDropout1D -> BN, and a wrapped BN."""
    import tf_keras

    from model_builders import set_trained_statistics_any

    folder = tmp_path_factory.mktemp("k2run")
    layers = tf_keras.layers
    inp = tf_keras.Input((10, 4))
    x = layers.Conv1D(6, 3, use_bias=False, name="conv")(inp)
    x = layers.SpatialDropout1D(0.2, name="drop")(x)
    x = layers.BatchNormalization(name="bn")(x)
    x = layers.GlobalAveragePooling1D(name="gap")(x)
    dropout = tf_keras.Model(inp, layers.Dense(3, activation="softmax", name="out")(x))
    inp = tf_keras.Input((8, 12))
    x = layers.TimeDistributed(layers.Dense(16, use_bias=False, name="dense"), name="td_dense")(inp)
    x = layers.TimeDistributed(layers.BatchNormalization(name="bn"), name="td_bn")(x)
    x = layers.Flatten(name="flat")(x)
    wrapped = tf_keras.Model(inp, layers.Dense(3, name="out")(x))
    rng = np.random.default_rng(0)
    paths = {}
    for name, model, shape in (("dropout", dropout, (64, 10, 4)), ("wrapped", wrapped, (64, 8, 12))):
        set_trained_statistics_any(model)
        paths[name] = folder / f"k2_{name}.h5"
        model.save(paths[name])
        np.save(folder / f"{name}.npy", rng.normal(size=shape).astype("float32"))
        paths[name + "_data"] = folder / f"{name}.npy"
    return paths


@pytest.mark.slow
def test_keras2_file_runs_with_tf_keras(keras2_runtime_models):
    """The issue's example: tf-keras SpatialDropout1D -> BN with --data, every runtime rule runs."""
    import json

    from conftest import run_bnaudit

    paths = keras2_runtime_models
    run = run_bnaudit("check", paths["dropout"], "--data", paths["dropout_data"], "--format", "json")
    assert run.returncode in (0, 1), run.stderr
    model = json.loads(run.stdout)["models"][0]
    assert model["errors"] == []
    assert {"BN301", "BN302", "BN303", "BN401", "BN402", "BN403", "BN404"} <= set(model["rules_run"])
    assert ("BN101", "bn") in {(f["code"], f["layer"]) for f in model["findings"]}
    assert not {f["code"] for f in model["findings"]} & {"BN402", "BN403", "BN404"}
    assert list(model["measurements"]["statistics"]["layers"]) == ["bn"]


@pytest.mark.slow
def test_data_and_runtime_rules_reach_a_wrapped_batchnorm(keras2_runtime_models):
    from bnaudit import audit as run_audit

    paths = keras2_runtime_models
    result = run_audit(paths["wrapped"], data=str(paths["wrapped_data"]), in_process=True)
    assert result.errors == []
    assert [m.layer for m in result.measured(BatchNormDrift)] == ["td_bn/bn"]
    assert [m.comparison.output for m in result.measured(DeviceComparison)] == [m.comparison.output for m in result.measured(CallPathComparison) if m.check == "call_vs_predict"]
    assert not {f.code for f in result.findings} & {"BN402", "BN403", "BN404"}


@pytest.mark.slow
def test_without_tf_keras_one_line_says_what_keras3_cannot_read(keras2_runtime_models, tmp_path):
    from conftest import run_bnaudit

    blocker = tmp_path / "no_tf_keras"
    blocker.mkdir()
    (blocker / "tf_keras.py").write_text('raise ImportError("tf_keras is not installed here")\n')
    paths = keras2_runtime_models
    run = run_bnaudit("check", paths["dropout"], "--data", paths["dropout_data"], "--select", "BN301", env={"PYTHONPATH": str(blocker)})
    assert run.returncode == 2
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1, run.stderr
    assert "cannot read this Keras 2.21.0 file" in lines[0] and "SpatialDropout1D" in lines[0]
    assert "install tf-keras" in lines[0]
    assert "config=" not in lines[0] and "--custom-objects" not in lines[0]


# -- kind 3: the channel axis through layers that keep the layout ------------------------


def _layout_models(keras, layers):
    inp = keras.Input((3, 8, 8))
    x = layers.Conv2D(4, 3, data_format="channels_first", use_bias=False, name="conv")(inp)
    x = layers.Activation("relu", name="act")(x)
    example = keras.Model(inp, layers.BatchNormalization(name="bn")(x))  # the example (axis -1)
    inp = keras.Input((3, 10))
    x = layers.Conv1D(4, 3, data_format="channels_first", use_bias=False, name="conv")(inp)
    x = layers.GaussianNoise(0.1, name="noise")(x)
    x = layers.MaxPooling1D(2, data_format="channels_first", name="pool")(x)
    pooled = keras.Model(inp, layers.BatchNormalization(name="bn")(x))
    inp = keras.Input((3, 8, 8))
    x = layers.Conv2D(4, 3, data_format="channels_first", use_bias=False, name="conv")(inp)
    x = layers.UpSampling2D(2, data_format="channels_last", name="up")(x)
    ambiguous = keras.Model(inp, layers.BatchNormalization(name="bn")(x))
    inp = keras.Input((3, 8, 8))
    x = layers.Conv2D(4, 3, data_format="channels_first", use_bias=False, name="conv")(inp)
    x = layers.LeakyReLU(name="leaky")(x)
    x = layers.Dropout(0.1, name="drop")(x)
    right = keras.Model(inp, layers.BatchNormalization(axis=1, name="bn")(x))
    return {"example": example, "pooled": pooled, "ambiguous": ambiguous, "right": right}


LAYOUT_EXPECTED = {
    # BN104: each BN is its model's output; BN103: a non-linear activation feeds it; BN101: dropout/noise feeds it.
    "example": {("BN107", "bn"), ("BN103", "bn"), ("BN104", "bn")},
    "pooled": {("BN107", "bn"), ("BN104", "bn")},
    "ambiguous": {("BN104", "bn")},  # the upsampling says channels_last: no axis can be blamed on the BN
    "right": {("BN101", "bn"), ("BN104", "bn")},
}


def test_channel_axis_is_found_through_layout_keeping_layers(tmp_path):
    import keras
    from keras import layers

    for name, model in _layout_models(keras, layers).items():
        for path in save_all(model, tmp_path, name):
            result = audit(path, ignore=("BN202",))
            assert result.errors == [], path
            assert findings(result) == LAYOUT_EXPECTED[name], path
            bn107 = [f for f in result.findings if f.code == "BN107"]
            if bn107:
                assert bn107[0].details["channel_axis"] == 1 and bn107[0].details["producer"] == "conv"
                assert bn107[0].fix == "set axis=1 on 'bn'"


# -- kind 4: behaviour stated for the file's own writer ----------------------------------

WRITERS = [
    # (format, keras_version, frozen-BN mode, words the name holds)
    ("keras", "3.15.0", "inference", "Keras 3.15.0"),
    ("h5-keras3", "3.15.0", "inference", "Keras 3.15.0"),
    ("h5-keras2", "2.21.0", "inference", "tf-keras on TensorFlow 2"),
    ("h5-keras2", "2.4.0", "inference", "tf.keras / tf-keras"),
    ("h5-keras2", "2.3.0-tf", "inference", "tf.keras 2.3.0-tf (TensorFlow 2)"),
    ("h5-keras2", "2.2.4-tf", "unknown", "TensorFlow 1.13-1.15 or 2.0-2.1"),
    ("h5-keras2", "2.1.6-tf", "batch", "tf.keras 2.1.6-tf (TensorFlow 1.x)"),
    ("h5-keras2", "2.2.4", "batch", "standalone Keras 2.2.4"),
    ("h5-keras2", "2.1.3", "batch", "standalone Keras 2.1.3"),
    ("h5-keras2", "", "unknown", "unknown Keras version"),
]


@pytest.mark.parametrize("file_format,version,mode,name", WRITERS)
def test_writer_semantics_table(file_format, version, mode, name):
    from bnaudit.writers import writer_of

    writer = writer_of(file_format, version)
    assert writer.frozen_bn == mode and name in writer.name
    sentence = writer.frozen_bn_behaviour()
    if mode == "unknown":
        assert "inference mode" in sentence and "batch's statistics" in sentence
    else:
        assert ("inference mode" in sentence) == (mode == "inference")


@pytest.fixture(scope="module")
def frozen_keras2_file(tmp_path_factory):
    import tf_keras

    from model_builders import set_trained_statistics_any

    layers = tf_keras.layers
    inp = tf_keras.Input((6,))
    x = layers.Dense(4, use_bias=False, name="fc")(inp)
    x = layers.BatchNormalization(name="bn", trainable=False)(x)
    model = tf_keras.Model(inp, layers.Dense(2, name="out")(layers.ReLU(name="relu")(x)))
    set_trained_statistics_any(model)
    path = tmp_path_factory.mktemp("frozen") / "frozen.h5"
    model.save(path)
    return path


@pytest.mark.parametrize(
    "version,says",
    [
        ("2.2.4", "standalone Keras 2.2.4 still normalizes it with the batch's statistics while training"),
        ("2.2.4-tf", "does not tell which runtime trains it"),
        (None, "(tf.keras / tf-keras on TensorFlow 2) runs it in inference mode"),
    ],
)
def test_frozen_batchnorm_is_described_for_its_writer(frozen_keras2_file, tmp_path, version, says):
    import shutil

    import h5py

    path = tmp_path / "model.h5"
    shutil.copy(frozen_keras2_file, path)
    if version is not None:  # the attribute standalone Keras / old tf.keras write, on an otherwise identical file
        with h5py.File(path, "r+") as h5:
            h5.attrs["keras_version"] = version
    result = audit(path)
    assert result.errors == []
    assert findings(result) == {("BN108", "bn")}
    finding = result.findings[0]
    assert says in finding.message
    if version == "2.2.4":
        assert "inference mode" not in finding.message and "batch statistics in training" in finding.fix
    if version == "2.2.4-tf":
        assert "inference mode" in finding.message and "batch's statistics" in finding.message


def test_baked_training_is_described_for_its_writer(samples):
    k3 = audit(samples / "bn_training_baked.keras", select=("BN106",))
    k2 = audit(samples / "k2_bn_training_baked.h5", select=("BN106",))
    assert findings(k3) == {("BN106", "bn1")} and findings(k2) == {("BN106", "bn1")}
    assert "(under model(x) in Keras 3; model.predict of the loaded model uses the moving statistics)" in k3.findings[0].message
    assert "(under model(x) and model.predict alike in Keras 2)" in k2.findings[0].message


# -- kind 8: advice that follows the layer's config and agrees with the other findings ---


def test_bias_advice_follows_the_batchnorm_config_and_bn104(tmp_path):
    import keras
    from keras import layers

    from model_builders import set_trained_statistics_any

    inp = keras.Input((6,))
    x = layers.Dense(4, name="fc")(inp)
    x = layers.BatchNormalization(center=False, name="bn")(x)
    x = layers.ReLU(name="relu")(x)
    no_beta = keras.Model(inp, layers.Dense(2, name="out")(x))
    inp = keras.Input((6,))
    x = layers.Dense(8, activation="relu", name="hidden")(inp)
    x = layers.Dense(1, name="out")(x)
    regressor = keras.Model(inp, layers.BatchNormalization(name="bn_out")(x))  # the regressor
    inp = keras.Input((6, 6, 2))
    x = layers.Conv2D(3, 3, name="conv")(inp)
    conv_output = keras.Model(inp, layers.BatchNormalization(center=False, name="bn_out")(x))
    cases = {
        "no_beta": (no_beta, {("BN102", "bn")}),
        "regressor": (regressor, {("BN102", "bn_out"), ("BN104", "bn_out")}),
        "conv_output": (conv_output, {("BN102", "bn_out"), ("BN104", "bn_out")}),
    }
    for name, (model, expected) in cases.items():
        set_trained_statistics_any(model)
        for path in save_all(model, tmp_path, name):
            result = audit(path)
            assert result.errors == [] and findings(result) == expected, path
            bias = next(f for f in result.findings if f.code == "BN102")
            assert "beta already provides" not in bias.fix, (path, bias.fix)
            if ("BN104", bias.layer) in expected:
                bn104 = next(f for f in result.findings if f.code == "BN104")
                assert "remov" in bn104.fix and "keep use_bias=True" in bias.fix
            else:
                assert "center=False" in bias.fix and bias.details["bn_center"] is False


# -- kind 6: data rules never computed on broken inputs ----------------------------------


@pytest.fixture(scope="module")
def overflowed_model(tmp_path_factory):
    """Two BNs; the second's moving variance overflowed (Inf, NaN) as in a mixed-precision run."""
    import keras
    from keras import layers

    from model_builders import set_trained_statistics_any

    inp = keras.Input((6,))
    x = layers.Dense(8, use_bias=False, name="fc1")(inp)
    x = layers.BatchNormalization(name="bn_ok")(x)
    x = layers.ReLU(name="relu")(x)
    x = layers.Dense(8, use_bias=False, name="fc2")(x)
    x = layers.BatchNormalization(name="bn_broken")(x)
    model = keras.Model(inp, layers.Dense(3, name="out")(x))
    set_trained_statistics_any(model)
    data = np.random.default_rng(0).normal(size=(64, 6)).astype("float32")
    inputs = data @ model.get_layer("fc1").get_weights()[0]  # what bn_ok sees: its statistics fit the data
    ok = model.get_layer("bn_ok")
    ok.set_weights(ok.get_weights()[:2] + [inputs.mean(0), inputs.var(0)])
    bn = model.get_layer("bn_broken")
    gamma, beta, mean, variance = bn.get_weights()
    variance[:2] = [np.inf, np.nan]
    bn.set_weights([gamma, beta, mean, variance])
    folder = tmp_path_factory.mktemp("overflow")
    model.save(folder / "overflow.keras")
    bn.set_weights([gamma, beta, mean, np.abs(np.nan_to_num(variance, nan=1.0, posinf=1.0))])
    model.save(folder / "healthy.keras")
    inp = keras.Input((6,))
    x = layers.BatchNormalization(name="bn")(layers.Dense(8, use_bias=False, name="fc")(inp))
    regressor = keras.Model(inp, layers.Dense(1, name="out")(x))
    set_trained_statistics_any(regressor)
    regressor.save(folder / "regressor.keras")
    np.save(folder / "x.npy", data)
    np.save(folder / "two.npy", np.random.default_rng(1).normal(size=(2, 6)).astype("float32"))
    return folder


@pytest.mark.slow
def test_layer_with_non_finite_statistics_is_not_measured(overflowed_model):
    result = audit(overflowed_model / "overflow.keras", data=str(overflowed_model / "x.npy"), select=("BN2", "BN3"), in_process=True)
    assert result.errors == []
    got = findings(result)
    assert ("BN201", "bn_broken") in got
    assert not {(c, l) for c, l in got if c in ("BN301", "BN303") and l == "bn_broken"}
    # bn_ok is measured as usual (its statistics fit the data); bn_broken is left to BN201.
    assert got == {("BN201", "bn_broken")}
    assert result.measured(BatchNormNotMeasured) == [BatchNormNotMeasured("bn_broken", 8, "its moving statistics hold NaN or Inf (see BN201)")]
    assert [m.layer for m in result.measured(BatchNormDrift)] == ["bn_ok"]
    assert any("did not measure 'bn_broken'" in note and "BN201" in note for note in result.notes)


@pytest.mark.slow
@pytest.mark.parametrize("data,batch_size", [("two.npy", None), ("x.npy", 3)])
def test_bn302_says_why_it_could_not_judge(overflowed_model, data, batch_size):
    options = {"batch_size": batch_size} if batch_size else {}
    cka_reason = "linear CKA needs batches of at least 4 samples"
    # A 3-class output still gives top-1 agreement: judged on that, and the result says CKA was not.
    result = audit(overflowed_model / "healthy.keras", data=str(overflowed_model / data), select=("BN302",), **options, in_process=True)
    assert result.errors == []
    [measured] = result.measured(TrainInferenceComparison)
    assert measured.cka is None and measured.top1_agreement is not None
    assert len(measured.not_judged) == 1 and measured.not_judged[0].startswith(cka_reason)
    assert [s for s in result.skipped if s.code == "BN302"] == []
    # A regressor has no class axis either: BN302 is listed as skipped, with both reasons.
    result = audit(overflowed_model / "regressor.keras", data=str(overflowed_model / data), select=("BN302",), **options, in_process=True)
    assert result.errors == [] and result.findings == []
    (skipped,) = [s for s in result.skipped if s.code == "BN302"]
    assert cka_reason in skipped.reason and "class axis" in skipped.reason


@pytest.mark.slow
def test_bn302_leaves_out_non_finite_outputs(overflowed_model):
    result = audit(overflowed_model / "overflow.keras", data=str(overflowed_model / "x.npy"), select=("BN302",), in_process=True)
    assert result.errors == [] and result.findings == []
    [measured] = result.measured(TrainInferenceComparison)
    assert measured.cka is None and measured.top1_agreement is None
    assert measured.not_judged == ("the outputs held NaN or Inf in 2 of 2 batches, left out",)
    assert [s.reason for s in result.skipped if s.code == "BN302"] == ["not judged: " + "; ".join(measured.not_judged)]


# -- kind 7: a verdict that does not depend on the order of the data ---------------------


def _grey_bmp(pixels: np.ndarray) -> bytes:
    """An 8-bit palette (grey) BMP, the kind TensorFlow's decoder refuses to convert to RGB itself."""
    import struct

    height, width = pixels.shape
    row = (width + 3) // 4 * 4
    palette = b"".join(bytes([i, i, i, 0]) for i in range(256))
    data = b"".join(bytes(pixels[height - 1 - r]) + b"\0" * (row - width) for r in range(height))
    offset = 14 + 40 + len(palette)
    header = b"BM" + struct.pack("<IHHI", offset + len(data), 0, 0, offset)
    return header + struct.pack("<IiiHHIIiiII", 40, width, height, 1, 8, 0, len(data), 2835, 2835, 256, 0) + palette + data


@pytest.fixture(scope="module")
def class_folders(tmp_path_factory):
    """Bright and dark images, one sub-folder per class (PNG and grey 8-bit BMP), the same
    images in one flat folder under shuffled names, and a classifier whose moving
    statistics are those of all the images."""
    import tensorflow as tf

    import keras
    from keras import layers

    rng = np.random.default_rng(0)
    root = tmp_path_factory.mktemp("images")
    nested, flat = root / "by_class", root / "flat"
    images = []
    for label, level in (("bright", 170), ("dark", 80)):
        (nested / label).mkdir(parents=True)
        for i in range(48):
            pixels = np.clip(rng.normal(level, 30, (8, 8)), 0, 255).astype(np.uint8)
            if i % 4 == 0:
                name, data = f"{i:03d}.bmp", _grey_bmp(pixels)
            else:
                name, data = f"{i:03d}.png", tf.io.encode_png(np.repeat(pixels[..., None], 3, -1)).numpy()
            (nested / label / name).write_bytes(data)
            images.append((name, data, pixels))
    flat.mkdir()
    for index in rng.permutation(len(images)):
        name, data, _ = images[index]
        (flat / f"{index:03d}_{rng.integers(1 << 30)}{name[-4:]}").write_bytes(data)
    inp = keras.Input((8, 8, 3))
    x = layers.Conv2D(1, 1, use_bias=False, name="gray")(inp)
    x = layers.BatchNormalization(name="bn")(x)
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    model = keras.Model(inp, layers.Dense(2, activation="softmax", name="out")(x))
    model.get_layer("gray").set_weights([np.full((1, 1, 3, 1), 1 / 3, np.float32)])
    model.get_layer("out").set_weights([np.array([[4.0, -4.0]], np.float32), np.zeros(2, np.float32)])
    values = np.stack([p for _, _, p in images]).astype(np.float64)
    bn = model.get_layer("bn")
    bn.set_weights([np.ones(1), np.zeros(1), np.array([values.mean()]), np.array([values.var()])])
    model.save(root / "classifier.keras")
    return root


@pytest.mark.slow
def test_bn302_verdict_does_not_depend_on_folder_order(class_folders):
    verdicts = {}
    for name in ("by_class", "flat"):
        result = audit(class_folders / "classifier.keras", data=str(class_folders / name), select=("BN302",), in_process=True)
        assert result.errors == [], result.errors
        [how] = result.measured(StatisticsPass)
        assert how.order == "shuffled (seed 0)"
        assert how.samples == 96  # every PNG and grey BMP decoded
        verdicts[name] = findings(result)
    assert verdicts == {"by_class": set(), "flat": set()}
    # Read one class per batch, the same images make training-mode BN describe a class, not the data.
    result = audit(class_folders / "classifier.keras", data=str(class_folders / "by_class"), select=("BN302",), data_order="sorted", in_process=True)
    assert result.measured(StatisticsPass)[0].order == "sorted (file order)"
    assert findings(result) == {("BN302", "")}


@pytest.mark.slow
def test_data_order_options_on_the_command_line(class_folders):
    import json

    from conftest import run_bnaudit

    model = class_folders / "classifier.keras"
    shuffled = run_bnaudit("check", model, "--data", class_folders / "by_class", "--select", "BN302", "--format", "json", "--data-seed", "7")
    ordered = run_bnaudit("check", model, "--data", class_folders / "by_class", "--select", "BN302", "--format", "json", "--data-order", "sorted")
    assert shuffled.returncode == 0 and ordered.returncode == 0, shuffled.stderr + ordered.stderr
    assert json.loads(shuffled.stdout)["models"][0]["measurements"]["statistics"]["order"] == "shuffled (seed 7)"
    assert json.loads(ordered.stdout)["models"][0]["measurements"]["statistics"]["order"] == "sorted (file order)"
    assert [f["code"] for f in json.loads(ordered.stdout)["models"][0]["findings"]] == ["BN302"]  # a warning: exit 0


@pytest.mark.parametrize(
    ("axis", "expected", "channel_axis"),
    [(-1, {("BN102", "blk/bn")}, None), (-2, {("BN107", "blk/bn")}, 2), (1, {("BN107", "blk/bn")}, 2)],
)
def test_the_rank_of_a_bn_after_a_nested_dense_is_walked_back_to_the_input(tmp_path, axis, expected, channel_axis):
    """A nested Sequential records no input shapes. Fed by the model's Input (5, 4), the
    rank is walked back to it: 3, channels on axis 2, so a BN on -2 or 1 normalizes the 5
    time steps (BN107, never BN102), and one on -1 is on the channels (BN102)."""
    import keras

    from model_builders import set_trained_statistics_any

    block = keras.Sequential([keras.layers.Dense(8, name="dense"), keras.layers.BatchNormalization(axis=axis, name="bn")], name="blk")
    model = keras.Sequential([keras.Input((5, 4)), block, keras.layers.Dense(2, name="head")])
    set_trained_statistics_any(model)
    for path in save_all(model, tmp_path, "sequence"):
        result = audit(path)
        assert result.errors == [], result.errors
        assert findings(result) == expected, path
    bn107 = [f for f in result.findings if f.code == "BN107"]
    if bn107:
        assert bn107[0].message == f"BatchNormalization 'blk/bn' normalizes axis {axis}, but 'blk/dense' (channels_last) puts channels on axis {channel_axis}"
        assert bn107[0].details["channel_axis"] == channel_axis and bn107[0].details["rank"] == 3


@pytest.mark.parametrize(
    ("axis", "data_format", "rank", "expected"),
    [
        (-1, "channels_last", None, ([-1], -1)),
        (-2, "channels_last", None, ([-2], -1)),
        (1, "channels_last", None, None),  # rank 2: the channels; rank 3: not
        ([1], "channels_first", None, ([1], 1)),
        (-1, "channels_first", None, None),
        (-2, "channels_last", 3, ([1], 2)),
        ([1, 2], "channels_last", 4, ([1, 2], 3)),
    ],
)
def test_axes_are_compared_from_the_end_where_the_rank_is_unknown(axis, data_format, rank, expected):
    from bnaudit.graph import Layer
    from bnaudit.rules.layers import axes_against_channels

    bn = Layer(path="bn", name="bn", class_name="BatchNormalization", config={"axis": axis})
    producer = Layer(path="conv", name="conv", class_name="Conv2D", config={"data_format": data_format})
    assert axes_against_channels(bn, producer, rank) == expected
