"""The runtime side of BN401-BN404: device choice, synthetic inputs, float64 copies (the comparisons: test_analysis.py)."""

from __future__ import annotations

import numpy as np
import pytest

from bnaudit.loaders import LoadError
from bnaudit.runtime.devices import select_devices



@pytest.mark.parametrize(
    "wanted, reference, compared",
    [
        (None, "CPU:0", ["CPU:1", "GPU:0"]),
        ("all", "CPU:0", ["CPU:1", "GPU:0"]),
        ("gpu:0", "CPU:0", ["GPU:0"]),
        ("/device:CPU:1, CPU:0", "CPU:0", ["CPU:1"]),
    ],
)
def test_select_devices(wanted, reference, compared):
    assert select_devices(["CPU:0", "CPU:1", "GPU:0"], wanted) == (reference, compared)


def test_select_devices_refuses_a_device_tensorflow_does_not_list():
    with pytest.raises(LoadError) as info:
        select_devices(["CPU:0", "CPU:1"], "GPU:0")
    assert info.value.message == "--devices names 'GPU:0', which TensorFlow does not list"
    assert info.value.hint == "choose from CPU:0, CPU:1; no GPU found"


@pytest.mark.slow
def test_synthetic_inputs_are_seeded_and_follow_the_input_spec():
    import keras
    from keras import layers

    from bnaudit.runtime.synthetic import synthetic_inputs

    image = keras.Input((None, 4, 3), name="image")
    tokens = keras.Input((5,), dtype="int32", name="tokens")
    pooled = layers.GlobalAveragePooling2D()(image)
    embedded = layers.Flatten()(layers.Embedding(7, 2)(tokens))
    model = keras.Model([image, tokens], layers.Concatenate()([pooled, embedded]))
    first = synthetic_inputs(model, 3, seed=1, high=7)
    again = synthetic_inputs(model, 3, seed=1, high=7)
    assert [a.shape for a in first] == [(3, 32, 4, 3), (3, 5)]  # the open dimension becomes 32
    assert [a.dtype for a in first] == [np.float32, np.int32]
    assert first[1].min() >= 0 and first[1].max() < 7
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(first[0], synthetic_inputs(model, 3, seed=2)[0])


@pytest.mark.slow
def test_float64_copy_computes_every_nested_layer_in_float64():
    import keras
    from keras import layers

    from bnaudit.runtime.inference import float64_copy
    from model_builders import all_layers, nested_variants, set_trained_statistics

    model = nested_variants()
    set_trained_statistics(model)
    copy = float64_copy(model)
    assert {l.compute_dtype for l in all_layers(copy) if not isinstance(l, (keras.Model, layers.InputLayer))} == {"float64"}
    x = np.random.default_rng(0).normal(size=(4, *model.inputs[0].shape[1:])).astype("float32")
    ours, exact = model.predict(x, verbose=0), copy.predict(x, verbose=0)
    assert exact.dtype == np.float64
    np.testing.assert_allclose(ours, exact, rtol=1e-4, atol=1e-5)
    assert not np.array_equal(ours.astype(np.float64), exact)
