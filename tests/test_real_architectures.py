"""keras.applications architectures (weights=None), saved as .keras and .h5, audited statically.

Expected findings come from the Keras model itself: which layers are BN, and which
convolution feeds each. With weights=None every BN still has its initial statistics
(BN202 on each); ResNet50 keeps use_bias=True on the convs before its BNs (BN102 on
each), MobileNetV2 and DenseNet121 do not. Nothing else may fire.
"""

from __future__ import annotations

import json

import pytest

from conftest import run_bnaudit

pytestmark = pytest.mark.slow

ARCHITECTURES = {
    "ResNet50": {"BN102", "BN202"},
    "MobileNetV2": {"BN202"},
    "DenseNet121": {"BN202"},
}


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    import keras

    folder = tmp_path_factory.mktemp("apps")
    expected = {}
    for name, codes in ARCHITECTURES.items():
        model = getattr(keras.applications, name)(weights=None, input_shape=(32, 32, 3), classes=10)
        bns = [l.name for l in model.layers if isinstance(l, keras.layers.BatchNormalization)]
        findings = {(code, bn) for code in codes for bn in bns}
        for suffix in (".keras", ".h5"):
            path = folder / f"{name}{suffix}"
            model.save(path)
            expected[str(path)] = findings
    return expected


def test_each_architecture_gives_exactly_the_expected_findings(saved):
    run = run_bnaudit("check", "--format", "json", *saved)
    assert run.returncode == 1, run.stderr  # BN202 is an error
    models = {m["path"]: m for m in json.loads(run.stdout)["models"]}
    assert set(models) == set(saved)
    for path, expected in saved.items():
        model = models[path]
        assert model["errors"] == []
        got = {(f["code"], f["layer"]) for f in model["findings"]}
        assert got == expected, (path, sorted(got ^ expected)[:10])
        assert model["meta"]["batchnorm_layers"] == len({layer for _, layer in expected})
