"""LN101, LN201 and LN202 on models built by Keras, through the installed ``bnaudit`` command."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def findings(*args, cwd=None) -> dict[tuple[str, str, str], dict]:
    """(model file name, code, layer) -> finding, for the LN rules on the models given."""
    proc = subprocess.run(
        [sys.executable, "-m", "bnaudit", "check", "--select", "LN", "--format", "json", *map(str, args)],
        capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=120, cwd=cwd,
    )
    assert proc.returncode in (0, 1), proc.stderr
    return {(Path(m["path"]).name, f["code"], f["layer"]): f for m in json.loads(proc.stdout)["models"] for f in m["findings"]}


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


def test_each_rule_fires_on_the_layer_it_is_about_and_only_there(models):
    found = findings("--isolated", *models.values())
    for suffix in (".keras", ".h5"):
        model = "broken" + suffix
        assert {key for key in found if key[0] == model} == {(model, "LN101", "gn_width"), (model, "LN201", "ln_nan"), (model, "LN202", "ln_collapsed")}
        assert found[(model, "LN101", "gn_width")]["details"]["channel_axis"] == 1
        assert found[(model, "LN201", "ln_nan")]["details"]["problems"] == {"gamma": {"non_finite": 1, "features": [1]}}
        assert found[(model, "LN202", "ln_collapsed")]["details"]["dead"] == 4
        assert found[(model, "LN202", "ln_collapsed")]["severity"] == "warning"  # 4 of 6 features
    assert not any(key[0].startswith("clean") for key in found)


def test_the_collapse_threshold_comes_from_the_config(models, tmp_path):
    (tmp_path / "bnaudit.toml").write_text("[ln202]\ndead-gamma = 2.0\n")
    found = findings(models["clean.keras"], cwd=tmp_path)
    assert {key[2]: f["details"] for key, f in found.items()} == {
        "gn": {"dead": 4, "features": 4, "fraction": 1.0, "dead_features": [0, 1, 2, 3]},
        "ln": {"dead": 6, "features": 6, "fraction": 1.0, "dead_features": [0, 1, 2, 3, 4, 5]},
    }
