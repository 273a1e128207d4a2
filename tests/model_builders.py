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


#: Where Keras 2 and 3 wrappers keep the layers they wrap.
WRAPPED_ATTRIBUTES = ("layer", "forward_layer", "backward_layer", "cell")


def all_layers(model):
    """Every layer inside ``model``: nested models and wrapped layers included."""
    for _, layer in layer_paths(model):
        yield layer


def layer_paths(container, prefix: str = ""):
    """(bnaudit layer path, layer) for every layer inside ``container``, depth first."""
    children = list(getattr(container, "layers", None) or [])
    if not children and prefix:
        children = _wrapped(container)
    for layer in children:
        path = prefix + layer.name
        yield path, layer
        yield from layer_paths(layer, path + "/")


def _wrapped(layer):
    if type(layer).__name__ == "Bidirectional":
        return [layer.forward_layer, layer.backward_layer]
    found = []
    for attribute in WRAPPED_ATTRIBUTES:
        inner = getattr(layer, attribute, None)
        if inner is not None and hasattr(inner, "weights") and not isinstance(inner, (list, tuple)):
            found.append(inner)
    return found


def batchnorm_paths(model) -> dict:
    """Keras's own list of its BN layers, by bnaudit layer path (Keras 2 or 3 objects)."""
    return {path: layer for path, layer in layer_paths(model) if "BatchNormalization" in type(layer).__name__}


def saved_variables(layer) -> dict:
    """A layer's variables as flat float arrays by short name (``gamma``), Keras 2 or 3."""
    found = {}
    for variable in layer.weights:
        name = getattr(variable, "path", None) or variable.name
        found[name.split("/")[-1].split(":")[0]] = np.asarray(variable.numpy(), dtype=np.float64).reshape(-1)
    return found


def set_trained_statistics_any(model, seed: int = 0) -> None:
    """Plausible learned values in every BN variable of a Keras 2 or 3 model, whatever its shape."""
    rng = np.random.default_rng(seed)
    for layer in batchnorm_paths(model).values():
        values = []
        for variable in layer.weights:
            name = (getattr(variable, "path", None) or variable.name).split("/")[-1]
            low, high = (0.5, 2.0) if ("variance" in name or "stddev" in name or "gamma" in name) else (-0.5, 0.5)
            values.append(rng.uniform(low, high, variable.shape).astype("float32"))
        layer.set_weights(values)


def keras_layer(model, path: str):
    """The Keras layer at a bnaudit layer path (``base/bn_1``, ``time_distributed/bn``)."""
    return dict(layer_paths(model))[path]


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


def assert_bn_arrays_match(path, model) -> None:
    """bnaudit's BN layers (paths and count) and arrays equal those of the Keras model that wrote ``path``."""
    from bnaudit.engine import Auditor

    graph = Auditor().load(path)
    try:
        ours = {bn.path: graph.weights.bn_arrays(bn) for bn in graph.batchnorms()}
    finally:
        if graph.weights is not None:
            graph.weights.close()
    theirs = batchnorm_paths(model)
    assert set(ours) == set(theirs), (path, sorted(set(ours) ^ set(theirs))[:5])
    for bn_path, arrays in ours.items():
        expected = saved_variables(theirs[bn_path])
        for name in ("gamma", "beta", "moving_mean", "moving_variance"):
            got = getattr(arrays, name)
            if name not in expected:
                assert got is None, (bn_path, name)
            else:
                np.testing.assert_array_equal(got, expected[name], err_msg=f"{path} {bn_path}.{name}")


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
