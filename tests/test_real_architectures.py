"""Every keras.applications family (weights=None, small inputs), saved by Keras itself and audited.

Each family's smallest member is built by Keras 3 and saved as ``.keras`` and ``.h5``, and
by tf-keras and saved as a Keras-2 ``.h5``. Its BN layers get learned-looking values
(``set_trained_statistics_any``), so the weight rules have something true to say. For each
file: no error; bnaudit's BN layers are exactly Keras's own (paths and count, nested and
wrapped included); every BN array equals the one Keras holds; and the findings are
exactly the expected ones. Only ResNet50 (V1) keeps ``use_bias=True`` on the
convolutions before its BNs (BN102 on each); ConvNeXt has no BN at all, which a note says.
"""

from __future__ import annotations

import pytest

from bnaudit import audit
from model_builders import assert_bn_arrays_match, batchnorm_paths, set_trained_statistics_any

pytestmark = pytest.mark.slow

#: Family -> (smallest member, input size it accepts, BN-rule codes expected on every BN).
FAMILIES = {
    "ResNet": ("ResNet50", 32, {"BN102"}),
    "ResNetV2": ("ResNet50V2", 32, set()),
    "MobileNet": ("MobileNet", 32, set()),
    "MobileNetV2": ("MobileNetV2", 32, set()),
    "MobileNetV3": ("MobileNetV3Small", 32, set()),
    "EfficientNet": ("EfficientNetB0", 32, set()),
    "EfficientNetV2": ("EfficientNetV2B0", 32, set()),
    "DenseNet": ("DenseNet121", 32, set()),
    "InceptionV3": ("InceptionV3", 75, set()),
    "InceptionResNetV2": ("InceptionResNetV2", 75, set()),
    "Xception": ("Xception", 71, set()),
    "NASNet": ("NASNetMobile", 32, set()),
    "ConvNeXt": ("ConvNeXtTiny", 32, set()),
}
NO_BATCHNORM = {"ConvNeXt"}


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_application_family_in_every_format(tmp_path, family):
    import keras
    import tf_keras

    name, size, codes = FAMILIES[family]
    arguments = {"weights": None, "input_shape": (size, size, 3), "classes": 10}
    saved = []
    model = getattr(keras.applications, name)(**arguments)
    set_trained_statistics_any(model)
    for suffix in (".keras", ".h5"):
        model.save(tmp_path / f"{name}{suffix}")
        saved.append((tmp_path / f"{name}{suffix}", model))
    k2_model = getattr(tf_keras.applications, name)(**arguments)
    set_trained_statistics_any(k2_model)
    k2_model.save(tmp_path / f"k2_{name}.h5")
    saved.append((tmp_path / f"k2_{name}.h5", k2_model))

    for path, writer in saved:
        bns = batchnorm_paths(writer)
        assert (len(bns) == 0) == (family in NO_BATCHNORM)
        result = audit(path)
        assert result.errors == [], (path, result.errors[:2])
        assert result.meta["batchnorm_layers"] == len(bns), path
        got = {(f.code, f.layer) for f in result.findings}
        expected = {(code, bn) for code in codes for bn in bns}
        assert got == expected, (path, sorted(got ^ expected)[:10])
        assert not any("unknown layer class" in note for note in result.notes), result.notes
        if family in NO_BATCHNORM:
            assert any("no BatchNormalization layer" in note for note in result.notes)
        else:
            assert_bn_arrays_match(path, writer)
    keras.backend.clear_session()
    tf_keras.backend.clear_session()
