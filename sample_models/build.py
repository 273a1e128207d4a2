"""Rebuild bnaudit's sample models with Keras itself.

Usage::

    python sample_models/build.py [OUTDIR] [--only NAME ...] [--no-keras2] [--verify]

OUTDIR defaults to this script's directory.  Needs ``tensorflow``, ``keras`` (3) and
``tf-keras`` (the Keras 2 line, for the legacy ``k2_*.h5`` files) plus ``h5py``.

Every model is tiny (8x8x3 or 16-feature inputs, 8 channels) and is written three
times, so each rule can be tested against every format bnaudit reads:

* ``NAME.keras``  -- Keras 3 native zip (``config.json`` + ``model.weights.h5``),
* ``NAME.h5``     -- Keras 3 legacy HDF5 (``model.save("NAME.h5")``),
* ``k2_NAME.h5``  -- Keras 2 legacy HDF5 written by ``tf_keras``.

``expected.json`` (written next to the models) maps every file name to the exact list
of findings ``{"code", "layer"}`` the static rules (BN1xx, BN2xx, BN501) must report.
Convention for ``layer``: the path of layer names from the top model down, joined by
``/`` (``base/stem_bn``), never including the top model's own name.  BN1xx and BN2xx
findings are reported on the BatchNormalization layer concerned (for BN101-BN103 the
BN fed by the offending layer, for BN105 the second, redundant BN); BN501 on the
unsafe layer itself.

Every layer has an explicit ``name=`` so paths do not depend on Keras's auto-naming.

Weights.  Nothing is trained: BatchNormalization weights are set explicitly to
plausible "trained" values (gamma in [0.6, 1.4], beta ~ N(0, 0.1), moving mean ~
N(0, 0.3), moving variance in [0.3, 1.5]) and every bias to small non-zero values, so
that BN202 (statistics never updated) does not fire on models that are not about it.
Then each model applies its own deliberate defect.  Kernels keep Keras's seeded
initialisation.  Seeds are fixed per model (crc32 of its name), so the arrays and
configs are reproducible; the files' bytes are not quite (Keras stores ``date_saved``
in ``metadata.json`` and zip member times).

Why each model exists (expected findings in brackets):

clean_conv_bn_relu          Conv(no bias) -> BN -> ReLU twice, GAP, softmax head.  The
                            canonical order; must produce nothing.  []
clean_sequential_dense      The same idea as a Sequential MLP (Sequential configs have
                            no inbound_nodes), with a Dropout that feeds a Dense, not a
                            BN.  []
dropout_before_bn           Conv -> Dropout -> BN.  [BN101 bn2]
dropout_through_flatten     Conv -> SpatialDropout2D -> Flatten -> BN: the dropout
                            reaches the BN through a pass-through layer.  [BN101 bn_flat]
bias_before_bn              Conv2D and Dense with use_bias=True, linear, feeding BNs
                            (biases non-zero, so bias folding can be checked exactly).
                            [BN102 bn1, BN102 bn_fc]
activation_before_bn        Conv with fused activation="relu" -> BN, and a separate
                            ReLU layer -> BN.  [BN103 bn1, BN103 bn2]
bn_after_softmax            BN directly after the Dense softmax output, as the last
                            layer; a fused softmax feeding a BN is also BN103.
                            [BN103 bn_out, BN104 bn_out]
bn_as_final_layer           BN as the model's last layer after linear logits (no
                            activation before it, so only BN104).  [BN104 bn_out]
consecutive_bn              BN -> BN on the same axis.  [BN105 bn2]
bn_training_baked           Functional call ``BatchNormalization()(x, training=True)``:
                            the saved node carries training=True.  [BN106 bn1]
bn_axis_mismatch            Conv2D(data_format="channels_first") -> BN(axis=-1); the
                            input is 3x6x6 so the BN's 6 weights cover the width, not
                            the 8 channels.  Built and saved only (channels_first conv
                            does not run on CPU).  [BN107 bn1]
frozen_bn                   One BN trainable=False among trainable layers.  [BN108 bn1]
bn_unusual_momentum         momentum=0.5.  [BN109 bn1]
bn_large_epsilon            epsilon=0.5.  [BN109 bn1]
bn_fp16_small_epsilon       mixed_float16 dtype policy, BN epsilon=1e-6 (bn2 keeps the
                            default 1e-3 and is fine).  [BN109 bn1]
nan_moving_variance         A NaN in bn1's moving variance.  [BN201 bn1]
negative_moving_variance    A negative value in bn1's moving variance.  [BN201 bn1]
stats_never_updated         gamma/beta look trained but moving mean/variance are still
                            exactly 0/1 in both BNs (keras issue #6752).
                            [BN202 bn1, BN202 bn2]
dead_channels               bn1: |gamma| < 1e-6 on 5 of 8 channels (warning); bn2: on 1 of
                            8 (info).  [BN203 bn1, BN203 bn2]
extreme_scale               bn1 epsilon=1e-5, gamma 120 on a channel whose moving
                            variance is 1e-9: gamma/sqrt(var+eps) ~ 3.8e4.  [BN204 bn1]
lambda_layer                A Lambda (Python bytecode in the config) before the first
                            conv.  [BN501 rescale_lambda]
custom_layer                A registered custom layer class (bnaudit_samples>ChannelScale)
                            outside Keras's built-ins.  [BN501 channel_scale]
nested_transfer             Transfer-learning shape: a Functional "base" (stem conv with
                            bias, as in keras.applications ResNet50) inside a Sequential
                            with a new head.  Tests nested layer paths and nested weight
                            keys.  [BN102 base/stem_bn]
nested_cross_boundary       Outer Dropout feeds a nested Functional "block" whose first
                            layer after its input is a BN: the rule must look through
                            the nested model's boundary.  [BN101 block/block_bn]
nested_sequential_block     A Sequential "mlp_block" (with its own Input) inside a
                            Functional, after Dense(no bias); its first BN has 6 of 8
                            gammas at zero.  A weights finding inside a nested
                            Sequential exercises the trickiest weight-key mapping.
                            [BN203 mlp_block/mlp_bn]
shared_and_branches         Two inputs, one shared Conv2D (use_bias=True) called twice
                            (node index 1 for the second call), a BN after each call,
                            Add of a ReLU and a Dropout branch feeding a BN (Add is a
                            boundary: no BN101/BN103 there), Concatenate, two outputs.
                            [BN102 bn_left, BN102 bn_right]
bn_no_center_no_scale       bn1 center=False, bn2 scale=False, bn3 both False, so the
                            ``vars/N`` indices in .keras shift.  bn2's beta is exactly 0
                            (read as gamma by a loader that ignores the shift, it would
                            look like dead channels); bn3 (vars = [mean, var]) has a
                            negative moving variance that only a correct reader sees.
                            [BN201 bn3]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import warnings  # noqa: E402

warnings.filterwarnings("ignore")

import numpy as np  # noqa: E402

HERE = Path(__file__).resolve().parent
IMG = (8, 8, 3)  # channels_last image input used by most models
C = 8  # channels / units


# --------------------------------------------------------------------------- helpers


def _short(var) -> str:
    """'bn1/gamma:0' (tf_keras) or 'gamma' (Keras 3) -> 'gamma'."""
    return var.name.split("/")[-1].split(":")[0]


def _assign(var, value) -> None:
    current = np.asarray(var.numpy())
    var.assign(np.asarray(value, dtype=current.dtype).reshape(current.shape))


def walk_layers(K, model, prefix=""):
    """Yield (path, layer) for every layer, nested models included."""
    for layer in model.layers:
        path = prefix + layer.name
        yield path, layer
        if isinstance(layer, K.Model):
            yield from walk_layers(K, layer, path + "/")


def is_bn(K, layer) -> bool:
    return isinstance(layer, K.layers.BatchNormalization)


def set_bn(layer, **values) -> None:
    """Assign gamma/beta/moving_mean/moving_variance by name (absent ones are skipped)."""
    for var in layer.weights:
        name = _short(var)
        if name in values:
            _assign(var, values[name])


def bn_get(layer, name):
    for var in layer.weights:
        if _short(var) == name:
            return np.array(var.numpy())
    raise KeyError(name)


def look_trained(K, model, rng, *, stats=True) -> None:
    """Give BN layers plausible trained values and biases small non-zero values."""
    for _, layer in walk_layers(K, model):
        if is_bn(K, layer):
            n = layer.weights[0].shape[0]
            vals = {
                "gamma": rng.uniform(0.6, 1.4, n),
                "beta": rng.normal(0.0, 0.1, n),
            }
            if stats:
                vals["moving_mean"] = rng.normal(0.0, 0.3, n)
                vals["moving_variance"] = rng.uniform(0.3, 1.5, n)
            set_bn(layer, **vals)
        else:
            for var in layer.weights:
                if _short(var) == "bias":
                    _assign(var, rng.normal(0.0, 0.05, var.shape))


def bn_layer(K, model, path):
    layer = dict(walk_layers(K, model))[path]
    assert is_bn(K, layer), path
    return layer


# Custom layer: one class per Keras flavour, registered under the same name.
_CUSTOM: dict[str, type] = {}


def channel_scale_class(K):
    if K.__name__ not in _CUSTOM:

        @K.saving.register_keras_serializable(package="bnaudit_samples")
        class ChannelScale(K.layers.Layer):
            """Multiplies its input by a constant (a stand-in for any user class)."""

            def __init__(self, factor=1.0, **kwargs):
                super().__init__(**kwargs)
                self.factor = float(factor)

            def call(self, inputs):
                return inputs * self.factor

            def get_config(self):
                return {**super().get_config(), "factor": self.factor}

        _CUSTOM[K.__name__] = ChannelScale
    return _CUSTOM[K.__name__]


# --------------------------------------------------------------------------- blocks


def conv_bn_relu(K, x, i, *, use_bias=False, **bn_kwargs):
    L = K.layers
    x = L.Conv2D(C, 3, padding="same", use_bias=use_bias, name=f"conv{i}")(x)
    x = L.BatchNormalization(name=f"bn{i}", **bn_kwargs)(x)
    return L.ReLU(name=f"relu{i}")(x)


def classifier_head(K, x, classes=4):
    L = K.layers
    x = L.GlobalAveragePooling2D(name="gap")(x)
    return L.Dense(classes, activation="softmax", name="head")(x)


def image_input(K, name="image"):
    return K.Input(shape=IMG, name=name)


def two_block_model(K, name, bn1_kwargs=None, bn2_kwargs=None):
    """image -> conv1/bn1/relu1 -> conv2/bn2/relu2 -> GAP -> softmax head."""
    inp = image_input(K)
    x = conv_bn_relu(K, inp, 1, **(bn1_kwargs or {}))
    x = conv_bn_relu(K, x, 2, **(bn2_kwargs or {}))
    return K.Model(inp, classifier_head(K, x), name=name)


# --------------------------------------------------------------------------- models


def m_clean_conv_bn_relu(K):
    return two_block_model(K, "clean_conv_bn_relu")


def m_clean_sequential_dense(K):
    L = K.layers
    return K.Sequential(
        [
            K.Input(shape=(16,), name="features"),
            L.Dense(C, use_bias=False, name="fc1"),
            L.BatchNormalization(name="bn1"),
            L.ReLU(name="relu1"),
            L.Dense(C, use_bias=False, name="fc2"),
            L.BatchNormalization(name="bn2"),
            L.ReLU(name="relu2"),
            L.Dropout(0.2, name="drop"),
            L.Dense(3, activation="softmax", name="head"),
        ],
        name="clean_sequential_dense",
    )


def m_dropout_before_bn(K):
    L = K.layers
    inp = image_input(K)
    x = conv_bn_relu(K, inp, 1)
    x = L.Conv2D(C, 3, padding="same", use_bias=False, name="conv2")(x)
    x = L.Dropout(0.3, name="drop")(x)
    x = L.BatchNormalization(name="bn2")(x)
    x = L.ReLU(name="relu2")(x)
    return K.Model(inp, classifier_head(K, x), name="dropout_before_bn")


def m_dropout_through_flatten(K):
    L = K.layers
    inp = image_input(K)
    x = conv_bn_relu(K, inp, 1)
    x = L.Conv2D(4, 3, padding="same", use_bias=False, name="conv2")(x)
    x = L.SpatialDropout2D(0.2, name="sdrop")(x)
    x = L.Flatten(name="flatten")(x)
    x = L.BatchNormalization(name="bn_flat")(x)
    x = L.ReLU(name="relu_flat")(x)
    out = L.Dense(4, activation="softmax", name="head")(x)
    return K.Model(inp, out, name="dropout_through_flatten")


def m_bias_before_bn(K):
    L = K.layers
    inp = image_input(K)
    x = conv_bn_relu(K, inp, 1, use_bias=True)
    x = conv_bn_relu(K, x, 2)
    x = L.GlobalAveragePooling2D(name="gap")(x)
    x = L.Dense(C, use_bias=True, name="fc")(x)
    x = L.BatchNormalization(name="bn_fc")(x)
    x = L.ReLU(name="relu_fc")(x)
    out = L.Dense(4, activation="softmax", name="head")(x)
    return K.Model(inp, out, name="bias_before_bn")


def m_activation_before_bn(K):
    L = K.layers
    inp = image_input(K)
    x = L.Conv2D(C, 3, padding="same", use_bias=False, activation="relu", name="conv1")(inp)
    x = L.BatchNormalization(name="bn1")(x)
    x = L.Conv2D(C, 3, padding="same", use_bias=False, name="conv2")(x)
    x = L.ReLU(name="relu2")(x)
    x = L.BatchNormalization(name="bn2")(x)
    return K.Model(inp, classifier_head(K, x), name="activation_before_bn")


def m_bn_after_softmax(K):
    L = K.layers
    inp = image_input(K)
    x = conv_bn_relu(K, inp, 1)
    x = L.GlobalAveragePooling2D(name="gap")(x)
    x = L.Dense(4, activation="softmax", name="probs")(x)
    out = L.BatchNormalization(name="bn_out")(x)
    return K.Model(inp, out, name="bn_after_softmax")


def m_bn_as_final_layer(K):
    L = K.layers
    inp = image_input(K)
    x = conv_bn_relu(K, inp, 1)
    x = L.GlobalAveragePooling2D(name="gap")(x)
    x = L.Dense(4, use_bias=False, name="logits")(x)
    out = L.BatchNormalization(name="bn_out")(x)
    return K.Model(inp, out, name="bn_as_final_layer")


def m_consecutive_bn(K):
    L = K.layers
    inp = image_input(K)
    x = L.Conv2D(C, 3, padding="same", use_bias=False, name="conv1")(inp)
    x = L.BatchNormalization(name="bn1")(x)
    x = L.BatchNormalization(name="bn2")(x)
    x = L.ReLU(name="relu1")(x)
    x = conv_bn_relu(K, x, 3)
    return K.Model(inp, classifier_head(K, x), name="consecutive_bn")


def m_bn_training_baked(K):
    L = K.layers
    inp = image_input(K)
    x = L.Conv2D(C, 3, padding="same", use_bias=False, name="conv1")(inp)
    x = L.BatchNormalization(name="bn1")(x, training=True)
    x = L.ReLU(name="relu1")(x)
    x = conv_bn_relu(K, x, 2)
    return K.Model(inp, classifier_head(K, x), name="bn_training_baked")


def m_bn_axis_mismatch(K):
    L = K.layers
    inp = K.Input(shape=(3, 6, 6), name="image_chw")
    x = L.Conv2D(
        C, 3, padding="same", use_bias=False, data_format="channels_first", name="conv1"
    )(inp)
    x = L.BatchNormalization(axis=-1, name="bn1")(x)
    x = L.ReLU(name="relu1")(x)
    x = L.GlobalAveragePooling2D(data_format="channels_first", name="gap")(x)
    out = L.Dense(4, activation="softmax", name="head")(x)
    return K.Model(inp, out, name="bn_axis_mismatch")


def m_frozen_bn(K):
    model = two_block_model(K, "frozen_bn")
    model.get_layer("bn1").trainable = False
    return model


def m_bn_unusual_momentum(K):
    return two_block_model(K, "bn_unusual_momentum", bn1_kwargs={"momentum": 0.5})


def m_bn_large_epsilon(K):
    return two_block_model(K, "bn_large_epsilon", bn1_kwargs={"epsilon": 0.5})


def m_bn_fp16_small_epsilon(K):
    L = K.layers
    K.mixed_precision.set_global_policy("mixed_float16")
    try:
        inp = image_input(K)
        x = conv_bn_relu(K, inp, 1, epsilon=1e-6)
        x = conv_bn_relu(K, x, 2)
        x = L.GlobalAveragePooling2D(name="gap")(x)
        out = L.Dense(4, activation="softmax", dtype="float32", name="head")(x)
        return K.Model(inp, out, name="bn_fp16_small_epsilon")
    finally:
        K.mixed_precision.set_global_policy("float32")


def m_lambda_layer(K):
    L = K.layers
    inp = image_input(K)
    x = L.Lambda(lambda t: t * 2.0 - 1.0, name="rescale_lambda")(inp)
    x = conv_bn_relu(K, x, 1)
    return K.Model(inp, classifier_head(K, x), name="lambda_layer")


def m_custom_layer(K):
    inp = image_input(K)
    x = conv_bn_relu(K, inp, 1)
    x = channel_scale_class(K)(0.5, name="channel_scale")(x)
    return K.Model(inp, classifier_head(K, x), name="custom_layer")


def m_nested_transfer(K):
    L = K.layers
    b_in = K.Input(shape=IMG, name="base_image")
    y = L.Conv2D(C, 3, padding="same", use_bias=True, name="stem_conv")(b_in)
    y = L.BatchNormalization(name="stem_bn")(y)
    y = L.ReLU(name="stem_relu")(y)
    y = L.Conv2D(C, 3, padding="same", use_bias=False, name="block_conv")(y)
    y = L.BatchNormalization(name="block_bn")(y)
    y = L.ReLU(name="block_relu")(y)
    base = K.Model(b_in, y, name="base")
    return K.Sequential(
        [
            K.Input(shape=IMG, name="image"),
            base,
            L.GlobalAveragePooling2D(name="gap"),
            L.Dropout(0.2, name="drop"),
            L.Dense(4, activation="softmax", name="head"),
        ],
        name="nested_transfer",
    )


def m_nested_cross_boundary(K):
    L = K.layers
    b_in = K.Input(shape=(8, 8, C), name="block_in")
    y = L.BatchNormalization(name="block_bn")(b_in)
    y = L.ReLU(name="block_relu")(y)
    y = L.Conv2D(C, 3, padding="same", use_bias=False, name="block_conv")(y)
    y = L.BatchNormalization(name="block_bn2")(y)
    y = L.ReLU(name="block_relu2")(y)
    block = K.Model(b_in, y, name="block")

    inp = image_input(K)
    x = conv_bn_relu(K, inp, 1)
    x = L.Conv2D(C, 3, padding="same", use_bias=False, name="conv2")(x)
    x = L.Dropout(0.3, name="drop")(x)
    x = block(x)
    return K.Model(inp, classifier_head(K, x), name="nested_cross_boundary")


def m_nested_sequential_block(K):
    L = K.layers
    block = K.Sequential(
        [
            K.Input(shape=(C,), name="mlp_in"),
            L.BatchNormalization(name="mlp_bn"),
            L.ReLU(name="mlp_relu"),
            L.Dense(C, use_bias=False, name="mlp_fc"),
            L.BatchNormalization(name="mlp_bn2"),
            L.ReLU(name="mlp_relu2"),
        ],
        name="mlp_block",
    )
    inp = image_input(K)
    x = conv_bn_relu(K, inp, 1)
    x = K.layers.GlobalAveragePooling2D(name="gap")(x)
    x = L.Dense(C, use_bias=False, name="fc")(x)
    x = block(x)
    out = L.Dense(4, activation="softmax", name="head")(x)
    return K.Model(inp, out, name="nested_sequential_block")


def m_shared_and_branches(K):
    L = K.layers
    left = K.Input(shape=IMG, name="left")
    right = K.Input(shape=IMG, name="right")
    shared = L.Conv2D(C, 3, padding="same", use_bias=True, name="shared_conv")
    a = L.BatchNormalization(name="bn_left")(shared(left))
    a = L.ReLU(name="relu_left")(a)
    b = L.BatchNormalization(name="bn_right")(shared(right))
    b = L.ReLU(name="relu_right")(b)
    b = L.Dropout(0.3, name="drop_right")(b)
    m = L.Add(name="add")([a, b])
    m = L.BatchNormalization(name="bn_merge")(m)
    m = L.ReLU(name="relu_merge")(m)
    c = L.Concatenate(name="concat")([m, a])
    c = L.Conv2D(C, 1, use_bias=False, name="fuse_conv")(c)
    c = L.BatchNormalization(name="bn_fuse")(c)
    c = L.ReLU(name="relu_fuse")(c)
    g = L.GlobalAveragePooling2D(name="gap")(c)
    cls = L.Dense(3, activation="softmax", name="class_out")(g)
    score = L.Dense(1, name="score_out")(g)
    return K.Model([left, right], [cls, score], name="shared_and_branches")


def m_bn_no_center_no_scale(K):
    L = K.layers
    inp = image_input(K)
    x = conv_bn_relu(K, inp, 1, center=False)
    x = conv_bn_relu(K, x, 2, scale=False)
    x = conv_bn_relu(K, x, 3, center=False, scale=False)
    return K.Model(inp, classifier_head(K, x), name="bn_no_center_no_scale")


# --------------------------------------------------------------------------- defects


def d_nan_moving_variance(K, model, rng):
    bn = bn_layer(K, model, "bn1")
    var = bn_get(bn, "moving_variance")
    var[2] = np.nan
    set_bn(bn, moving_variance=var)


def d_negative_moving_variance(K, model, rng):
    bn = bn_layer(K, model, "bn1")
    var = bn_get(bn, "moving_variance")
    var[1] = -0.25
    set_bn(bn, moving_variance=var)


def d_dead_channels(K, model, rng):
    bn1 = bn_layer(K, model, "bn1")
    g = bn_get(bn1, "gamma")
    g[[0, 2, 3, 5]] = 0.0
    g[7] = 1e-8  # below 1e-6 but not exactly zero
    set_bn(bn1, gamma=g)  # 5 of 8 dead -> warning
    bn2 = bn_layer(K, model, "bn2")
    g = bn_get(bn2, "gamma")
    g[4] = 0.0
    set_bn(bn2, gamma=g)  # 1 of 8 dead -> info


def d_extreme_scale(K, model, rng):
    bn = bn_layer(K, model, "bn1")
    g = bn_get(bn, "gamma")
    v = bn_get(bn, "moving_variance")
    g[3] = 120.0
    v[3] = 1e-9
    set_bn(bn, gamma=g, moving_variance=v)


def d_nested_sequential_block(K, model, rng):
    bn = bn_layer(K, model, "mlp_block/mlp_bn")
    g = bn_get(bn, "gamma")
    g[[0, 1, 3, 4, 6, 7]] = 0.0
    set_bn(bn, gamma=g)


def d_bn_no_center_no_scale(K, model, rng):
    set_bn(bn_layer(K, model, "bn2"), beta=np.zeros(C))
    bn3 = bn_layer(K, model, "bn3")
    v = bn_get(bn3, "moving_variance")
    v[5] = -0.5
    set_bn(bn3, moving_variance=v)


# --------------------------------------------------------------------------- catalogue


@dataclass
class Spec:
    name: str
    build: Callable
    expected: list[tuple[str, str]]
    defect: Callable | None = None
    stats: bool = True  # give BNs trained-looking moving statistics
    keras2: bool = True  # also write k2_NAME.h5 with tf_keras


SPECS = [
    Spec("clean_conv_bn_relu", m_clean_conv_bn_relu, []),
    Spec("clean_sequential_dense", m_clean_sequential_dense, []),
    Spec("dropout_before_bn", m_dropout_before_bn, [("BN101", "bn2")]),
    Spec("dropout_through_flatten", m_dropout_through_flatten, [("BN101", "bn_flat")]),
    Spec("bias_before_bn", m_bias_before_bn, [("BN102", "bn1"), ("BN102", "bn_fc")]),
    Spec("activation_before_bn", m_activation_before_bn, [("BN103", "bn1"), ("BN103", "bn2")]),
    Spec("bn_after_softmax", m_bn_after_softmax, [("BN103", "bn_out"), ("BN104", "bn_out")]),
    Spec("bn_as_final_layer", m_bn_as_final_layer, [("BN104", "bn_out")]),
    Spec("consecutive_bn", m_consecutive_bn, [("BN105", "bn2")]),
    Spec("bn_training_baked", m_bn_training_baked, [("BN106", "bn1")]),
    Spec("bn_axis_mismatch", m_bn_axis_mismatch, [("BN107", "bn1")]),
    Spec("frozen_bn", m_frozen_bn, [("BN108", "bn1")]),
    Spec("bn_unusual_momentum", m_bn_unusual_momentum, [("BN109", "bn1")]),
    Spec("bn_large_epsilon", m_bn_large_epsilon, [("BN109", "bn1")]),
    Spec("bn_fp16_small_epsilon", m_bn_fp16_small_epsilon, [("BN109", "bn1")]),
    Spec("nan_moving_variance", m_clean_conv_bn_relu, [("BN201", "bn1")], d_nan_moving_variance),
    Spec(
        "negative_moving_variance",
        m_clean_conv_bn_relu,
        [("BN201", "bn1")],
        d_negative_moving_variance,
    ),
    Spec(
        "stats_never_updated",
        m_clean_conv_bn_relu,
        [("BN202", "bn1"), ("BN202", "bn2")],
        stats=False,
    ),
    Spec("dead_channels", m_clean_conv_bn_relu, [("BN203", "bn1"), ("BN203", "bn2")], d_dead_channels),
    Spec("extreme_scale", lambda K: two_block_model(K, "extreme_scale", {"epsilon": 1e-5}),
         [("BN204", "bn1")], d_extreme_scale),
    Spec("lambda_layer", m_lambda_layer, [("BN501", "rescale_lambda")]),
    Spec("custom_layer", m_custom_layer, [("BN501", "channel_scale")]),
    Spec("nested_transfer", m_nested_transfer, [("BN102", "base/stem_bn")]),
    Spec("nested_cross_boundary", m_nested_cross_boundary, [("BN101", "block/block_bn")]),
    Spec(
        "nested_sequential_block",
        m_nested_sequential_block,
        [("BN203", "mlp_block/mlp_bn")],
        d_nested_sequential_block,
    ),
    Spec("shared_and_branches", m_shared_and_branches, [("BN102", "bn_left"), ("BN102", "bn_right")]),
    Spec("bn_no_center_no_scale", m_bn_no_center_no_scale, [("BN201", "bn3")], d_bn_no_center_no_scale),
]


# --------------------------------------------------------------------------- driver


def seed_for(name: str) -> int:
    return zlib.crc32(name.encode()) & 0x7FFFFFFF


def make(K, spec: Spec):
    K.backend.clear_session()
    seed = seed_for(spec.name)
    K.utils.set_random_seed(seed)
    model = spec.build(K)
    rng = np.random.default_rng(seed)
    look_trained(K, model, rng, stats=spec.stats)
    if spec.defect is not None:
        spec.defect(K, model, rng)
    return model


def file_names(spec: Spec, keras2: bool) -> list[str]:
    names = [f"{spec.name}.keras", f"{spec.name}.h5"]
    if keras2 and spec.keras2:
        names.append(f"k2_{spec.name}.h5")
    return names


def build_all(outdir: Path, only=None, keras2=True) -> dict:
    import keras

    outdir.mkdir(parents=True, exist_ok=True)
    specs = [s for s in SPECS if not only or s.name in only]
    expected = {}
    for spec in specs:
        model = make(keras, spec)
        model.save(outdir / f"{spec.name}.keras")
        model.save(outdir / f"{spec.name}.h5")
        print(f"keras {keras.__version__}: {spec.name}.keras, {spec.name}.h5", file=sys.stderr)
    if keras2:
        import tf_keras

        for spec in specs:
            if spec.keras2:
                model = make(tf_keras, spec)
                model.save(outdir / f"k2_{spec.name}.h5", save_format="h5")
                print(f"tf_keras {tf_keras.__version__}: k2_{spec.name}.h5", file=sys.stderr)
    for spec in specs:
        findings = [{"code": c, "layer": l} for c, l in sorted(spec.expected)]
        for fname in file_names(spec, keras2):
            expected[fname] = findings
    return expected


def verify(outdir: Path, expected: dict) -> None:
    """Load every file back with the Keras that wrote it and compare BN arrays."""
    import keras
    import tf_keras

    for spec in SPECS:
        for fname in file_names(spec, True):
            path = outdir / fname
            if fname not in expected or not path.exists():
                continue
            K = tf_keras if fname.startswith("k2_") else keras
            ref = make(K, spec)
            if K is keras:
                loaded = keras.saving.load_model(path, safe_mode=False, compile=False)
            else:
                loaded = tf_keras.models.load_model(path, compile=False, safe_mode=False)
            want = {p: [np.asarray(w) for w in layer.get_weights()] for p, layer in walk_layers(K, ref)}
            got = {p: [np.asarray(w) for w in layer.get_weights()] for p, layer in walk_layers(K, loaded)}
            assert want.keys() == got.keys(), (fname, set(want) ^ set(got))
            for p in want:
                for a, b in zip(want[p], got[p], strict=True):
                    np.testing.assert_array_equal(a, b, err_msg=f"{fname}:{p}")
            print(f"verified {fname}", file=sys.stderr)


def format_expected(expected: dict) -> str:
    """One file per line, so diffs stay readable."""
    rows = [f"  {json.dumps(k)}: {json.dumps(v)}" for k, v in sorted(expected.items())]
    return "{\n" + ",\n".join(rows) + "\n}\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("outdir", nargs="?", default=str(HERE))
    ap.add_argument("--only", nargs="*", help="build only these model names")
    ap.add_argument("--no-keras2", action="store_true", help="skip the tf_keras k2_*.h5 files")
    ap.add_argument("--verify", action="store_true", help="reload every file and compare weights")
    args = ap.parse_args(argv)
    outdir = Path(args.outdir)
    expected = build_all(outdir, only=args.only, keras2=not args.no_keras2)
    exp_path = outdir / "expected.json"
    if args.only and exp_path.exists():  # partial rebuild: merge into the existing file
        merged = json.loads(exp_path.read_text())
        merged.update(expected)
        expected = merged
    exp_path.write_text(format_expected(expected))
    if args.verify:
        verify(outdir, expected)
    total = sum(p.stat().st_size for p in outdir.iterdir() if p.suffix in (".keras", ".h5"))
    print(f"{len(expected)} model files, {total / 1e6:.2f} MB in {outdir}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
