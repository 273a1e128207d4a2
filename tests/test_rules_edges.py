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
