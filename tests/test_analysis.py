"""The TensorFlow-free maths of bnaudit.analysis, on numpy arrays with known answers.

Nothing here imports TensorFlow (a test below checks that in a fresh process), so these
run in a second on a machine without it.
"""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile

import numpy as np
import pytest

from bnaudit.analysis import statistics_file
from bnaudit.analysis.cka import ModeComparison
from bnaudit.analysis.drift import compare_layer
from bnaudit.analysis.moments import Moments
from bnaudit.analysis.statistics import DataStatistics, LayerStatistics, fingerprint
from bnaudit.analysis.tolerances import Tolerance, compare, compute_dtype, tolerance
from bnaudit.loaders import LoadError

from conftest import ROOT


def test_the_analysis_package_imports_no_tensorflow():
    code = (
        "import sys, pkgutil, importlib, bnaudit.analysis as a\n"
        "for m in pkgutil.iter_modules(a.__path__): importlib.import_module('bnaudit.analysis.' + m.name)\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'keras', 'tf_keras')))\n"
    )
    run = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "[]"


# -- moments ---------------------------------------------------------------------------


def test_moments_merge_in_any_grouping_equals_numpy_on_the_whole():
    rng = np.random.default_rng(5)
    values = rng.normal(1e3, 1e-2, size=(1000, 3))  # a large mean: where sums of squares cancel
    cuts = [0, 1, 1, 7, 300, 301, 1000]  # including an empty piece and single rows
    pieces = [values[a:b] for a, b in zip(cuts, cuts[1:])]
    merged = Moments.empty(3)
    for piece in pieces:
        nan = np.full(3, np.nan)  # what an empty replica slice reports
        merged = merged.merge(Moments.of_batch(len(piece), piece.mean(0) if len(piece) else nan, piece.var(0) if len(piece) else nan))
    np.testing.assert_allclose(merged.mean, values.mean(0), rtol=1e-12)
    np.testing.assert_allclose(merged.variance, values.var(0), rtol=1e-9)
    assert np.all(merged.count == 1000)
    assert np.all(np.isnan(Moments.empty(3).variance))


# -- statistics of a pass, their merge and their file ------------------------------------


def _statistics(values: np.ndarray, shard: int = 1, shard_count: int = 1, batch_size: int = 10) -> DataStatistics:
    """What a pass over ``values`` (samples x channels) in batches of ``batch_size`` measures at one layer."""
    layer = LayerStatistics("bn", *(Moments.empty(values.shape[1]) for _ in range(3)))
    for start in range(0, len(values), batch_size):
        batch = values[start : start + batch_size]
        part = Moments.of_batch(len(batch), batch.mean(0), batch.var(0))
        means = Moments.of_observation(batch.mean(0)) if len(batch) == batch_size else Moments.empty(values.shape[1])
        variances = Moments.of_observation(batch.var(0)) if len(batch) == batch_size else Moments.empty(values.shape[1])
        layer = layer.merge(LayerStatistics("bn", part, means, variances))
    batches = -(-len(values) // batch_size)
    return DataStatistics({"bn": layer}, batch_size, "inference", "f" * 16, len(values), batches, shards=[shard], shard_count=shard_count)


def test_shards_merge_to_the_whole_and_refuse_what_does_not_add_up():
    values = np.random.default_rng(3).normal(2.0, 3.0, size=(60, 4))
    first, second = _statistics(values[:30], 1, 2), _statistics(values[30:], 2, 2)
    merged = second.merge(first)
    assert merged.complete and not first.complete and merged.shards == [1, 2]
    assert (merged.samples, merged.batches) == (60, 6)
    np.testing.assert_allclose(merged.layers["bn"].moments.mean, values.mean(0), rtol=1e-12)
    np.testing.assert_allclose(merged.layers["bn"].moments.variance, values.var(0), rtol=1e-12)
    batch_means = values.reshape(6, 10, 4).mean(1)
    np.testing.assert_allclose(merged.layers["bn"].batch_means.variance, batch_means.var(0), rtol=1e-9)
    with pytest.raises(LoadError, match=r"shard 1/2 is given twice"):
        first.merge(first)
    other_model = _statistics(values[30:], 2, 2)
    other_model.fingerprint = "0" * 16
    with pytest.raises(LoadError, match=r"different model \(ffffffffffffffff vs 0000000000000000\)"):
        first.merge(other_model)


def test_fingerprint_depends_on_paths_and_values_not_on_order():
    a = ("bn_a", np.zeros(2), np.ones(2))
    b = ("bn_b", np.ones(2), np.ones(2))
    assert fingerprint([a, b]) == fingerprint([b, a])
    assert fingerprint([a, b]) != fingerprint([a, ("bn_b", np.ones(2), np.full(2, 1.5))])
    assert fingerprint([a, b]) != fingerprint([a, ("bn_c", *b[1:])])
    assert len(fingerprint([a])) == 16


def test_statistics_file_round_trip_is_exact(tmp_path):
    values = np.random.default_rng(4).normal(size=(25, 3))
    original = _statistics(values, 2, 3)
    statistics_file.save(original, tmp_path / "part.npz")
    loaded = statistics_file.load(tmp_path / "part.npz")
    assert (loaded.samples, loaded.batches, loaded.shards, loaded.shard_count, loaded.fingerprint) == (25, 3, [2], 3, "f" * 16)
    for part in ("moments", "batch_means", "batch_variances"):
        ours, theirs = getattr(loaded.layers["bn"], part), getattr(original.layers["bn"], part)
        for field in ("count", "mean", "m2"):
            np.testing.assert_array_equal(getattr(ours, field), getattr(theirs, field))
    with np.load(tmp_path / "part.npz", allow_pickle=False) as arrays:  # plain arrays, nothing pickled
        assert json.loads(str(arrays["header"]))["format"] == "bnaudit-statistics"


def test_statistics_file_refuses_what_it_did_not_write(tmp_path):
    (tmp_path / "text.npz").write_text("hello")
    with pytest.raises(LoadError, match=r"is not a bnaudit statistics file \(not an .npz\)"):
        statistics_file.load(tmp_path / "text.npz")
    np.savez(tmp_path / "other.npz", header=np.array(json.dumps({"format": "something-else", "version": 1})))
    with pytest.raises(LoadError, match=r"is not a bnaudit statistics file \(version 1\)"):
        statistics_file.load(tmp_path / "other.npz")
    np.savez(tmp_path / "pickled.npz", header=np.array([{"format": "bnaudit-statistics"}], dtype=object))
    with pytest.raises(LoadError, match=r"cannot read the statistics file .*ValueError"):
        statistics_file.load(tmp_path / "pickled.npz")  # an object array would need pickle: refused
    with pytest.raises(LoadError, match=r"no such statistics file"):
        statistics_file.load(tmp_path / "missing.npz")
    assert zipfile.is_zipfile(tmp_path / "pickled.npz")


# -- drift scores ------------------------------------------------------------------------


def test_drift_of_a_known_shift_and_a_dead_channel():
    # channel 0: data N(1, 4) against moving N(0, 1); channel 1: constant on the data (dead).
    moments = Moments(np.array([100.0, 100.0]), np.array([1.0, 5.0]), np.array([400.0, 0.0]))
    layer = LayerStatistics("bn", moments, Moments.empty(2), Moments.empty(2))
    drift = compare_layer(layer, np.zeros(2), np.ones(2), epsilon=1e-12)
    assert drift.mean_shift[0] == pytest.approx(1.0)
    assert drift.log_variance_ratio[0] == pytest.approx(np.log(4.0))
    # (4 + 1/4 - 2) / 2 + 1 * (1/4 + 1) / 2
    assert drift.symmetric_kl[0] == pytest.approx(1.75)
    assert drift.dead.tolist() == [False, True]
    assert drift.drift_score == pytest.approx(1.75) and drift.worst_channel == 0  # the dead channel is left out
    assert drift.drifted(mean_shift=0.5, log_variance_ratio=10.0).tolist() == [True, False]
    summary = drift.summary()
    assert summary["dead_channels"] == 1 and summary["variance_ratio"] == pytest.approx(4.0)
    assert summary["batch_mean_spread"] is None  # no full batch: no spread


# -- CKA ---------------------------------------------------------------------------------


def _biased_linear_cka(x: np.ndarray, y: np.ndarray) -> float:
    """Kornblith et al. (2019), eq. 5: the plain (biased) estimate, close to the unbiased one for large n."""
    x = x - x.mean(0)
    y = y - y.mean(0)
    return float(np.linalg.norm(y.T @ x) ** 2 / (np.linalg.norm(x.T @ x) * np.linalg.norm(y.T @ y)))


def test_cka_is_invariant_to_rotation_and_scale_and_close_to_the_plain_estimate():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(600, 5))
    rotation, _ = np.linalg.qr(rng.normal(size=(5, 5)))
    same = ModeComparison()
    same.add([x], [3.0 * x @ rotation])
    assert same.cka == pytest.approx(1.0, abs=1e-9)
    y = x[:, :2] @ rng.normal(size=(2, 5)) + 0.5 * rng.normal(size=(600, 5))
    related = ModeComparison()
    for start in range(0, 600, 200):  # summed over three batches
        related.add([x[start : start + 200]], [y[start : start + 200]])
    assert related.cka == pytest.approx(_biased_linear_cka(x, y), abs=0.03)
    assert 0.1 < related.cka < 0.9


def test_cka_needs_four_samples_and_agreement_counts_top1():
    small = ModeComparison()
    small.add([np.eye(3)], [np.eye(3)])
    assert small.cka is None  # unbiased HSIC needs n >= 4
    assert small.agreement == 1.0 and small.compared == 3
    flipped = ModeComparison()
    flipped.add([np.array([[1.0, 0.0], [0.0, 1.0]])], [np.array([[0.0, 1.0], [0.0, 1.0]])])
    assert flipped.agreement == 0.5


# -- tolerance comparison ----------------------------------------------------------------


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
