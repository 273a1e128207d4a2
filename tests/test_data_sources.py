"""``--data`` sources: arrays, image directories and factories, fed to real Keras models.

The tests call :func:`bnaudit.runtime.data.iter_batches` directly (it is the API the
statistics and inference rules share); tests/test_statistics.py runs the real command
with data that does not fit (one line on stderr, exit code 2).
"""

from __future__ import annotations

import sys
import textwrap

import numpy as np
import pytest



@pytest.fixture(scope="module")
def keras():
    from bnaudit.runtime import import_tensorflow

    import_tensorflow()
    import keras

    return keras


@pytest.fixture(scope="module")
def mlp(keras):
    inp = keras.Input((8,), name="features")
    return keras.Model(inp, keras.layers.Dense(2, name="out")(inp))


@pytest.fixture(scope="module")
def two_inputs(keras):
    a = keras.Input((4,), name="left")
    b = keras.Input((3,), name="right", dtype="int32")
    merged = keras.layers.Concatenate()([a, keras.layers.Embedding(10, 2)(b)[:, 0]])
    return keras.Model([a, b], keras.layers.Dense(2)(merged))


@pytest.fixture(scope="module")
def convnet(keras):
    inp = keras.Input((12, 10, 3), name="image")
    return keras.Model(inp, keras.layers.Conv2D(2, 3)(inp))


def batches(spec, model, batch_size=32, max_samples=None, shard=None, order="sorted", seed=0):
    """The reader's batches; in file order unless a test asks for the (default) shuffled one."""
    from bnaudit.runtime.data import iter_batches

    return iter_batches(str(spec), model, batch_size, max_samples, shard=shard, order=order, seed=seed)


def stacked(found):
    return [np.concatenate(column) for column in zip(*found)]


def test_npy_is_cut_into_batches_of_the_requested_size(tmp_path, mlp):
    x = np.arange(70 * 8, dtype=np.float64).reshape(70, 8)
    np.save(tmp_path / "x.npy", x)
    found = batches(tmp_path / "x.npy", mlp, batch_size=32)
    assert found.total == 70
    parts = list(found)
    assert [p[0].shape for p in parts] == [(32, 8), (32, 8), (6, 8)]
    assert parts[0][0].dtype == np.float32  # converted to the input's dtype
    np.testing.assert_array_equal(stacked(parts)[0], x)


def test_max_samples_stops_early_and_fortran_order_arrays_read_the_same(tmp_path, mlp):
    x = np.random.default_rng(0).normal(size=(50, 8))
    np.save(tmp_path / "f.npy", np.asfortranarray(x))
    found = batches(tmp_path / "f.npy", mlp, batch_size=16, max_samples=20)
    assert found.total == 20
    parts = list(found)
    assert [len(p[0]) for p in parts] == [16, 4]
    np.testing.assert_allclose(stacked(parts)[0], x[:20].astype(np.float32))


def test_npz_matches_arrays_by_input_name_whatever_their_order(tmp_path, two_inputs):
    left = np.random.default_rng(1).normal(size=(10, 4))
    right = np.arange(30).reshape(10, 3) % 10
    np.savez_compressed(tmp_path / "named.npz", right=right, left=left, labels=np.zeros(10))
    got = stacked(batches(tmp_path / "named.npz", two_inputs, batch_size=4))
    np.testing.assert_allclose(got[0], left.astype(np.float32))
    np.testing.assert_array_equal(got[1], right.astype(np.int32))


def test_npz_without_input_names_is_matched_by_order(tmp_path, two_inputs):
    left = np.ones((6, 4), np.float32)
    right = np.zeros((6, 3), np.int64)
    np.savez(tmp_path / "ordered.npz", left, right)
    got = stacked(batches(tmp_path / "ordered.npz", two_inputs))
    assert got[0].shape == (6, 4) and got[1].shape == (6, 3) and got[1].dtype == np.int32


def test_shards_cut_at_batch_boundaries_and_together_give_every_batch_once(tmp_path, mlp):
    x = np.arange(100 * 8, dtype=np.float32).reshape(100, 8)
    np.save(tmp_path / "x.npy", x)
    shards = [batches(tmp_path / "x.npy", mlp, batch_size=16, shard=(k, 3)) for k in (1, 2, 3)]
    assert [s.total for s in shards] == [36, 32, 32]  # batches 0,3,6 (which has 4 rows) | 1,4 | 2,5
    firsts = sorted(part[0][0, 0] for shard in shards for part in shard)
    assert firsts == [i * 16 * 8 for i in range(7)]


def test_image_directory_with_class_folders_is_resized_to_the_input(tmp_path, convnet):
    import tensorflow as tf

    for index, (folder, size) in enumerate([("cats", (20, 30)), ("dogs", (7, 5)), ("dogs", (12, 10))]):
        (tmp_path / "images" / folder).mkdir(parents=True, exist_ok=True)
        pixels = np.full((*size, 3), 40 * (index + 1), np.uint8)
        (tmp_path / "images" / folder / f"{index}.png").write_bytes(tf.io.encode_png(pixels).numpy())
    (tmp_path / "images" / "notes.txt").write_text("not an image")
    found = batches(tmp_path / "images", convnet, batch_size=2)
    assert found.total == 3
    [images] = stacked(found)
    assert images.shape == (3, 12, 10, 3) and images.dtype == np.float32
    np.testing.assert_allclose(images.reshape(3, -1).mean(axis=1), [40, 80, 120], atol=1e-3)  # 0-255, not rescaled


def test_flat_image_directory_and_an_undecodable_file(tmp_path, convnet):
    from bnaudit.runtime.data import DataError

    (tmp_path / "flat").mkdir()
    (tmp_path / "flat" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match=r"cannot decode image .*broken\.png"):
        list(batches(tmp_path / "flat", convnet))


@pytest.fixture
def factories(tmp_path, monkeypatch):
    """A real importable module of data factories, found from the working directory."""
    (tmp_path / "my_data.py").write_text(
        textwrap.dedent(
            """
            import numpy as np
            import tensorflow as tf

            X = np.arange(45 * 8, dtype=np.float32).reshape(45, 8)

            def arrays():
                return X

            def labelled_batches():
                for start in range(0, 45, 7):  # odd batch sizes, (inputs, targets) pairs
                    yield X[start:start + 7], np.zeros(len(X[start:start + 7]))

            def dataset():
                return tf.data.Dataset.from_tensor_slices({"features": X}).batch(10)

            def single_samples():
                return tf.data.Dataset.from_tensor_slices(X)

            def broken():
                raise RuntimeError("no database connection")
            """
        )
    )
    monkeypatch.chdir(tmp_path)
    yield np.arange(45 * 8, dtype=np.float32).reshape(45, 8)
    sys.modules.pop("my_data", None)


@pytest.mark.parametrize("function", ["arrays", "labelled_batches", "dataset", "single_samples"])
def test_factories_are_rebatched_to_the_batch_size(factories, mlp, function):
    parts = list(batches(f"my_data:{function}", mlp, batch_size=16))
    assert [len(p[0]) for p in parts] == [16, 16, 13]
    np.testing.assert_array_equal(stacked(parts)[0], factories)


def test_factory_that_raises_is_a_data_error(factories, mlp):
    from bnaudit.runtime.data import DataError

    with pytest.raises(DataError, match="the factory raised RuntimeError: no database connection"):
        batches("my_data:broken", mlp)


@pytest.mark.parametrize(
    "array, message",
    [
        (np.zeros((5, 9)), r"input 'features' expects shape \(None, 8\) float32; the data has shape \(5, 9\) float64"),
        (np.zeros((5, 8, 1)), r"expects shape \(None, 8\) float32; the data has shape \(5, 8, 1\) float64"),
        (np.array([["a"] * 8]), r"expects shape \(None, 8\) float32; the data has shape \(1, 8\) <U1"),
        (np.zeros((0, 8)), r"holds no samples"),
        (np.where(np.arange(40).reshape(5, 8) == 27, np.inf, 0.0), r"holds NaN or Inf \(first in sample 3"),
    ],
    ids=["shape", "rank", "dtype", "empty", "inf"],
)
def test_data_that_does_not_fit_names_expected_and_received(tmp_path, mlp, array, message):
    from bnaudit.runtime.data import DataError

    np.save(tmp_path / "bad.npy", array)
    with pytest.raises(DataError, match=message):
        list(batches(tmp_path / "bad.npy", mlp))


def test_float_data_never_feeds_an_integer_input_and_counts_must_match(tmp_path, two_inputs):
    from bnaudit.runtime.data import DataError

    np.savez(tmp_path / "floats.npz", left=np.zeros((3, 4)), right=np.zeros((3, 3)))
    with pytest.raises(DataError, match=r"input 'right' expects shape \(None, 3\) int32; the data has shape \(3, 3\) float64"):
        list(batches(tmp_path / "floats.npz", two_inputs))
    np.savez(tmp_path / "one.npz", left=np.zeros((3, 4)))
    with pytest.raises(DataError, match=r"the model takes 2 input\(s\) \(left, right\); the file holds 1 array\(s\) \(left\)"):
        batches(tmp_path / "one.npz", two_inputs)


@pytest.mark.parametrize(
    "spec, message",
    [("missing.npy", "no such file or directory"), ("table.csv", "unknown data format '.csv'"), ("no_such_module:load", "no module named 'no_such_module' in the working directory")],
)
def test_unknown_sources_say_what_data_takes(tmp_path, mlp, monkeypatch, spec, message):
    from bnaudit.runtime.data import DataError

    monkeypatch.chdir(tmp_path)
    (tmp_path / "table.csv").write_text("1,2\n")
    with pytest.raises(DataError, match=message):
        batches(spec, mlp)


@pytest.mark.parametrize("kind", ["npy", "npz_stored", "npz_compressed"])
def test_shuffled_order_is_a_seeded_permutation(tmp_path, mlp, kind):
    """The default order: every row once, in an order fixed by the seed and shared by every shard."""
    x = np.arange(70 * 8, dtype=np.float32).reshape(70, 8)
    path = tmp_path / ("x.npy" if kind == "npy" else "x.npz")
    if kind == "npy":
        np.save(path, x)
    elif kind == "npz_stored":
        np.savez(path, features=x)
    else:
        np.savez_compressed(path, features=x)
    found = batches(path, mlp, order="shuffled", seed=3)
    rows = stacked(list(found))[0]
    if kind == "npz_compressed":  # cannot be read by index: file order, and the result says so
        assert found.order.startswith("in file order") and np.array_equal(rows, x)
        return
    assert found.order == "shuffled (seed 3)"
    expected = x[np.random.default_rng(3).permutation(70)]
    np.testing.assert_array_equal(rows, expected)
    assert not np.array_equal(rows, x)
    shards = [stacked(list(batches(path, mlp, shard=(k, 2), order="shuffled", seed=3)))[0] for k in (1, 2)]
    np.testing.assert_array_equal(np.concatenate([shards[0][:32], shards[1][:32], shards[0][32:]]), expected)
    subset = stacked(list(batches(path, mlp, max_samples=10, order="shuffled", seed=3)))[0]
    np.testing.assert_array_equal(subset, expected[:10])
