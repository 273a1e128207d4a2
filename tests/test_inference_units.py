"""The numbers behind BN401-BN404: error statistics, tolerances, device choice, inputs, float64 copies."""

from __future__ import annotations

import numpy as np
import pytest

from bnaudit.loaders import LoadError
from bnaudit.runtime.devices import select_devices
from bnaudit.analysis.tolerances import Tolerance, compare, compute_dtype, tolerance

TIGHT = Tolerance(atol=1e-3, rtol=0.0, source="test")


def test_error_statistics_and_worst_element():
    expected = np.zeros((100, 2))
    expected[:, 1] = 1.0
    actual = expected.copy()
    actual[7, 1] += 0.5  # the one element beyond tolerance
    actual[:, 0] += 1e-4  # everywhere, within atol; relative error undefined (reference 0)
    row = compare("out", "GPU:0", "CPU:0", actual, expected, TIGHT, "float64")
    assert (row.mismatched, row.elements, row.passed) == (1, 200, False)
    assert row.max_abs == pytest.approx(0.5)
    assert row.mean_abs == pytest.approx((0.5 + 100 * 1e-4) / 200)
    assert row.p99_abs == pytest.approx(1e-4)
    assert row.max_rel == pytest.approx(0.5) and row.mean_rel == pytest.approx(0.5 / 100)
    assert row.worst == {"sample": 7, "index": [1], "value": 1.5, "reference": 1.0, "abs": 0.5, "rel": 0.5}
    assert row.describe_worst() == "sample 7, index [1]: 1.5 vs 1"


def test_worst_is_the_element_furthest_beyond_tolerance_not_the_largest_error():
    expected = np.array([[1000.0, 0.01]])
    actual = np.array([[1000.5, 0.02]])  # 0.5 is within rtol of 1000; 0.01 is not within atol
    row = compare("out", "a", "b", actual, expected, Tolerance(1e-3, 1e-3, "test"), "float64", samples=[42])
    assert row.mismatched == 1 and row.worst["sample"] == 42 and row.worst["index"] == [1]


def test_nan_agrees_with_nan_and_differs_from_numbers():
    expected = np.array([[np.nan, 1.0, np.inf]])
    same = compare("out", "a", "b", expected.copy(), expected, TIGHT, "float64")
    assert same.passed and same.max_abs == 0.0
    other = compare("out", "a", "b", np.array([[0.0, 1.0, np.inf]]), expected, TIGHT, "float64")
    assert other.mismatched == 1 and other.to_dict()["max_abs"] == "inf"  # JSON has no infinity


def test_outputs_are_compared_in_the_compute_dtype():
    expected = np.array([[1.0]], dtype=np.float32)
    actual = expected + np.float32(1e-4)  # below float16 resolution at 1.0 (9.8e-4)
    exact = Tolerance(0.0, 0.0, "test")
    assert not compare("out", "a", "b", actual, expected, exact, "float32").passed
    assert compare("out", "a", "b", actual, expected, exact, "float16").passed


@pytest.mark.parametrize(
    "policies, dtype",
    [
        (["float32", "float32"], "float32"),
        (["float32", "mixed_float16", "float32"], "float16"),
        (["mixed_bfloat16", "float32"], "bfloat16"),
        (["float64"], "float64"),
        (["int32", ""], "float32"),
    ],
)
def test_compute_dtype_is_the_coarsest_float_policy(policies, dtype):
    assert compute_dtype(policies) == dtype


def test_tolerances_default_by_dtype_and_yield_to_flags():
    assert tolerance("float32") == Tolerance(1e-4, 1e-3, "default for float32")
    assert tolerance("float16") == Tolerance(1e-2, 1e-2, "default for float16")
    assert tolerance("float32", atol=0.0) == Tolerance(0.0, 1e-3, "--atol")
    assert tolerance("bfloat16", 1.0, 2.0) == Tolerance(1.0, 2.0, "--atol/--rtol")


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
