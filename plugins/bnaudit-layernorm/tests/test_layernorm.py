"""LN101, LN201 and LN202 on models built by Keras, through the installed ``bnaudit`` command."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def findings(*args) -> dict[tuple[str, str], dict]:
    """(code, layer) -> finding, for the LN rules on the models given."""
    proc = subprocess.run(
        [sys.executable, "-m", "bnaudit", "check", "--select", "LN", "--format", "json", "--isolated", *map(str, args)],
        capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=120,
    )
    assert proc.returncode in (0, 1), proc.stderr
    return {(f["code"], f["layer"]): f for model in json.loads(proc.stdout)["models"] for f in model["findings"]}


@pytest.fixture(scope="session")
def models(tmp_path_factory):
    """One model with every problem the rules know, and one with none, in .keras and .h5."""
    import keras
    from keras import layers

    inp = keras.Input((3, 8, 8))
    x = layers.Conv2D(4, 3, padding="same", data_format="channels_first", name="conv_cf")(inp)
    x = layers.GroupNormalization(groups=2, name="gn_width")(x)  # axis=-1: the width, not the channels
    x = layers.GroupNormalization(groups=2, axis=1, name="gn_channels")(x)
    x = layers.Flatten(name="flat")(x)
    x = layers.Dense(6, name="fc")(x)
    x = layers.LayerNormalization(name="ln_collapsed")(x)
    x = layers.LayerNormalization(center=False, name="ln_nan")(x)
    broken = keras.Model(inp, layers.Dense(2, name="out")(x))
    gamma, beta = broken.get_layer("ln_collapsed").get_weights()
    gamma[:4] = 0.0
    broken.get_layer("ln_collapsed").set_weights([gamma, beta])
    (gamma,) = broken.get_layer("ln_nan").get_weights()
    gamma[1] = np.nan
    broken.get_layer("ln_nan").set_weights([gamma])

    inp = keras.Input((8, 8, 3))
    x = layers.Conv2D(4, 3, name="conv")(inp)
    x = layers.GroupNormalization(groups=2, name="gn")(x)
    x = layers.Flatten()(x)
    x = layers.LayerNormalization(name="ln")(layers.Dense(6, name="fc")(x))
    clean = keras.Model(inp, layers.Dense(2, name="out")(x))

    root = tmp_path_factory.mktemp("ln_models")
    paths = {}
    for name, model in (("broken", broken), ("clean", clean)):
        for suffix in (".keras", ".h5"):
            paths[name + suffix] = root / f"{name}{suffix}"
            model.save(paths[name + suffix])
    return paths


@pytest.mark.parametrize("suffix", [".keras", ".h5"])
def test_each_rule_fires_on_the_layer_it_is_about(models, suffix):
    found = findings(models["broken" + suffix])
    assert set(found) == {("LN101", "gn_width"), ("LN201", "ln_nan"), ("LN202", "ln_collapsed")}
    assert found[("LN101", "gn_width")]["details"]["channel_axis"] == 1
    assert found[("LN201", "ln_nan")]["details"]["problems"] == {"gamma": {"non_finite": 1, "features": [1]}}
    assert found[("LN202", "ln_collapsed")]["details"]["dead"] == 4
    assert found[("LN202", "ln_collapsed")]["severity"] == "warning"  # 4 of 6 features


@pytest.mark.parametrize("suffix", [".keras", ".h5"])
def test_a_well_built_model_gives_nothing(models, suffix):
    assert findings(models["clean" + suffix]) == {}


def test_the_collapse_threshold_comes_from_the_config(models, tmp_path):
    (tmp_path / "bnaudit.toml").write_text("[ln202]\ndead-gamma = 2.0\n")
    proc = subprocess.run(
        [sys.executable, "-m", "bnaudit", "check", "--select", "LN202", "--format", "json", str(models["clean.keras"])],
        capture_output=True, text=True, cwd=tmp_path, stdin=subprocess.DEVNULL, timeout=120,
    )
    found = {f["layer"]: f["details"] for m in json.loads(proc.stdout)["models"] for f in m["findings"]}
    assert found == {"gn": {"dead": 4, "features": 4, "fraction": 1.0, "dead_features": [0, 1, 2, 3]},
                     "ln": {"dead": 6, "features": 6, "fraction": 1.0, "dead_features": [0, 1, 2, 3, 4, 5]}}
