"""Every BN array bnaudit reads must equal what Keras itself loads, in every format."""

from __future__ import annotations

import numpy as np
import pytest

from bnaudit.engine import Auditor
from bnaudit.graph import BATCHNORM_CLASSES
from conftest import SAMPLES

pytestmark = pytest.mark.slow


def _read_all(path):
    graph = Auditor().load(path)
    try:
        return {bn.path: graph.weights.bn_arrays(bn) for bn in graph.batchnorms()}
    finally:
        graph.weights.close()


def _assert_same(ours, keras_model):
    from model_builders import all_layers, keras_layer

    keras_bns = [l for l in all_layers(keras_model) if type(l).__name__ in BATCHNORM_CLASSES]
    assert ours and len(ours) == len(keras_bns)
    for path, arrays in ours.items():
        layer = keras_layer(keras_model, path)
        assert type(layer).__name__ in BATCHNORM_CLASSES
        expected = {
            "gamma": layer.gamma if layer.scale else None,
            "beta": layer.beta if layer.center else None,
            "moving_mean": layer.moving_mean,
            "moving_variance": layer.moving_variance,
        }
        for name, variable in expected.items():
            got = getattr(arrays, name)
            if variable is None:
                assert got is None, f"{path}.{name}"
            else:
                np.testing.assert_array_equal(got, np.asarray(variable), err_msg=f"{path}.{name}")


@pytest.mark.parametrize("suffix", [".keras", ".h5"])
def test_keras3_formats(tmp_path, suffix):
    import keras
    from model_builders import nested_variants

    path = tmp_path / f"nested{suffix}"
    nested_variants().save(path)
    _assert_same(_read_all(path), keras.saving.load_model(path, compile=False))


def test_keras2_h5(tmp_path):
    import tf_keras

    inp = tf_keras.Input((6, 6, 2), name="img")
    x = tf_keras.layers.Conv2D(3, 3, use_bias=False, name="c1")(inp)
    x = tf_keras.layers.BatchNormalization(name="bn1")(x)
    x = tf_keras.layers.BatchNormalization(name="bn2", center=False)(x)
    base = tf_keras.Model(inp, x, name="base")
    model = tf_keras.Sequential([base, tf_keras.layers.Flatten(name="flat"), tf_keras.layers.BatchNormalization(name="bn3", scale=False)])
    model.build((None, 6, 6, 2))
    rng = np.random.default_rng(1)
    for layer in [base.get_layer("bn1"), base.get_layer("bn2"), model.get_layer("bn3")]:
        layer.set_weights([rng.uniform(0.5, 2, w.shape).astype("float32") for w in layer.get_weights()])
    path = tmp_path / "k2.h5"
    model.save(path)
    loaded = tf_keras.models.load_model(path, compile=False)
    ours = _read_all(path)
    assert set(ours) == {"base/bn1", "base/bn2", "bn3"}
    for bn_path, arrays in ours.items():
        parts = bn_path.split("/")
        layer = loaded.get_layer(parts[0]) if len(parts) == 1 else loaded.get_layer(parts[0]).get_layer(parts[1])
        names = [w.name.split("/")[-1].split(":")[0] for w in layer.weights]
        for name, value in zip(names, layer.get_weights()):
            np.testing.assert_array_equal(getattr(arrays, name), value, err_msg=f"{bn_path}.{name}")


def test_keras3_repeated_classes_and_frozen(tmp_path):
    """Save keys count per class in layer order; a frozen BN keeps gamma, beta, mean, var order."""
    import keras
    from keras import layers

    from model_builders import set_trained_statistics

    model = keras.Sequential(
        [keras.Input((5,))]
        + [layer for i in range(3) for layer in (layers.Dense(4, use_bias=False), layers.BatchNormalization(trainable=i != 1))]
    )
    set_trained_statistics(model, seed=3)
    path = tmp_path / "repeated.keras"
    model.save(path)
    _assert_same(_read_all(path), keras.saving.load_model(path, compile=False))


SAMPLE_FILES = sorted(
    p.name
    for p in (SAMPLES).iterdir()
    if p.suffix in (".keras", ".h5") and not any(s in p.name for s in ("lambda_layer", "custom_layer"))
)


@pytest.mark.parametrize("name", SAMPLE_FILES)
def test_every_sample_model(name):
    """Each committed sample, loaded by the Keras that wrote it (tf-keras for Keras 2 files)."""
    path = SAMPLES / name
    ours = _read_all(path)
    if name.startswith("k2_"):
        import tf_keras

        loaded = tf_keras.models.load_model(path, compile=False)
        for bn_path, arrays in ours.items():
            layer = loaded
            for part in bn_path.split("/"):
                layer = layer.get_layer(part)
            for weight, value in zip(layer.weights, layer.get_weights()):
                name_ = weight.name.split("/")[-1].split(":")[0]
                np.testing.assert_array_equal(getattr(arrays, name_), value, err_msg=f"{bn_path}.{name_}")
    else:
        import keras

        _assert_same(ours, keras.saving.load_model(path, compile=False))


def test_a_rezipped_compressed_keras_file_reads_the_same_arrays(tmp_path):
    """Keras stores model.weights.h5 uncompressed (read in place); a deflated copy must agree."""
    import zipfile

    source = SAMPLES / "nested_transfer.keras"
    deflated = tmp_path / "deflated.keras"
    with zipfile.ZipFile(source) as src, zipfile.ZipFile(deflated, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            dst.writestr(info.filename, src.read(info))
    assert zipfile.ZipFile(deflated).getinfo("model.weights.h5").compress_type == zipfile.ZIP_DEFLATED
    stored, compressed = _read_all(source), _read_all(deflated)
    assert stored.keys() == compressed.keys() and stored
    for path in stored:
        for name in ("gamma", "beta", "moving_mean", "moving_variance"):
            a, b = getattr(stored[path], name), getattr(compressed[path], name)
            assert (a is None and b is None) or np.array_equal(a, b), (path, name)
