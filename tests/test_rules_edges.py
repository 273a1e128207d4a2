"""Rule edges the sample models do not show: where one rule stops and another starts."""

from __future__ import annotations

import pytest

import bnaudit


@pytest.fixture(scope="module")
def hidden_sigmoid(tmp_path_factory):
    """Dense(sigmoid) -> BN -> Dense: an activation before BN (BN103), not an output (no BN104)."""
    import keras
    from keras import layers

    from model_builders import set_trained_statistics

    model = keras.Sequential(
        [keras.Input((4,)), layers.Dense(3, activation="sigmoid", name="gate"), layers.BatchNormalization(name="bn"), layers.Dense(2, name="out")]
    )
    set_trained_statistics(model)
    path = tmp_path_factory.mktemp("edges") / "hidden_sigmoid.keras"
    model.save(path)
    return path


def test_hidden_sigmoid_before_bn_is_bn103_only(hidden_sigmoid):
    result = bnaudit.audit(hidden_sigmoid)
    assert [(f.code, f.layer) for f in result.findings] == [("BN103", "bn")]


def test_findings_of_one_code_follow_the_model_not_the_alphabet(tmp_path):
    """An untrained backbone (BN202 on every BN): the layer named ``z_bn`` runs first and
    is listed first, as a linter lists by line."""
    import keras

    from model_builders import small_convnet

    path = tmp_path / "untrained.keras"
    small_convnet(keras, names=("c1", "z_bn", "c2", "a_bn")).save(path)
    result = bnaudit.audit(path, select=["BN202"])
    assert [(f.code, f.layer) for f in result.findings] == [("BN202", "z_bn"), ("BN202", "a_bn")]
