"""Small models built with Keras itself, for tests that need a particular shape of graph.

Imported lazily inside fixtures so that collecting the static tests never imports
TensorFlow.
"""

from __future__ import annotations

import numpy as np


def set_trained_statistics(model, seed: int = 0) -> None:
    """Give every BN layer plausible learned statistics (not its 0/1 initial values)."""
    import keras

    rng = np.random.default_rng(seed)
    for layer in all_layers(model):
        if isinstance(layer, keras.layers.BatchNormalization):
            values = []
            for variable in layer.weights:
                n = variable.shape[0]
                if "variance" in variable.path:
                    values.append(rng.uniform(0.5, 2.0, n).astype("float32"))
                elif "gamma" in variable.path:
                    values.append(rng.uniform(0.8, 1.2, n).astype("float32"))
                else:
                    values.append(rng.normal(0, 0.3, n).astype("float32"))
            layer.set_weights(values)


def all_layers(model):
    for layer in model.layers:
        yield layer
        if hasattr(layer, "layers"):
            yield from all_layers(layer)


def keras_layer(model, path: str):
    """The Keras layer at a bnaudit layer path (``base/bn_1``)."""
    layer = model
    for part in path.split("/"):
        layer = layer.get_layer(part)
    return layer


def nested_variants():
    """A model exercising nesting, center/scale off, repeated classes and a residual branch."""
    import keras
    from keras import layers

    inp = keras.Input((8, 8, 3), name="base_in")
    x = layers.Conv2D(4, 3, padding="same", use_bias=False, name="c1")(inp)
    x = layers.BatchNormalization(name="bn_a")(x)
    r = layers.Activation("relu", name="r1")(x)
    y = layers.Conv2D(4, 3, padding="same", use_bias=False, name="c2")(r)
    y = layers.BatchNormalization(name="bn_b", center=False)(y)
    x = layers.Add(name="add")([r, y])
    x = layers.BatchNormalization(name="bn_c", scale=False)(x)
    base = keras.Model(inp, x, name="base")
    model = keras.Sequential(
        [
            keras.Input((8, 8, 3), name="img"),
            base,
            layers.GlobalAveragePooling2D(name="gap"),
            layers.Dense(6, use_bias=False, name="fc"),
            layers.BatchNormalization(name="bn_head", center=False, scale=False),
            layers.Activation("relu", name="head_relu"),
            layers.Dense(2, name="out"),
        ],
        name="outer",
    )
    set_trained_statistics(model)
    return model


# -- checkpoints before and after fine-tuning (bnaudit diff, BN205) -------------------


def small_convnet(keras, names=("c1", "bn_a", "c2", "bn_b"), name="base", momentum=0.99):
    """Conv -> BN -> ReLU twice, then a classifier: the shape of a backbone with a head.

    ``keras`` is the module (Keras 3 or tf_keras), so one builder serves both formats.
    """
    layers = keras.layers
    inp = keras.Input((8, 8, 3), name="image")
    x = layers.Conv2D(4, 3, padding="same", use_bias=False, name=names[0])(inp)
    x = layers.BatchNormalization(momentum=momentum, name=names[1])(x)
    x = layers.Activation("relu")(x)
    x = layers.Conv2D(6, 3, padding="same", use_bias=False, name=names[2])(x)
    x = layers.BatchNormalization(momentum=momentum, name=names[3])(x)
    x = layers.Activation("relu")(x)
    x = layers.GlobalAveragePooling2D()(x)
    return keras.Model(inp, layers.Dense(2, name="head")(x), name=name)


def fit_steps(model, steps: int, seed: int = 0, shift: float = 0.0) -> None:
    """Train ``model`` for exactly ``steps`` optimizer steps (batches of 4) on random data;
    ``shift`` moves the inputs' mean, so fine-tuning data differs from the base's."""
    rng = np.random.default_rng(seed)
    x = rng.normal(shift, 1.0, (4 * steps, 8, 8, 3)).astype("float32")
    y = rng.integers(0, 2, 4 * steps)
    if getattr(model, "optimizer", None) is None:  # eager: no tracing, 4x faster for a few steps
        model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", run_eagerly=True)
    model.fit(x, y, batch_size=4, epochs=1, verbose=0, shuffle=False)
