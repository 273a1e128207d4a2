"""``fix --recalibrate``: one pass (upstream BNs on batch statistics) against per-level (exact).

In one run: a 10-level CNN (Conv-BN-ReLU x 10, 16x16x3 input, BN statistics set as if
trained) is recalibrated on N(0, 1) samples by both methods with ``bnaudit.fix``; prints
the BN depth (passes of the per-level method), the time of each, the max and median over
the BN layers of the max relative difference of moving variance (per-level as
reference), and how far the two copies' outputs differ (max |delta|, top-1 agreement).

    python benchmarks/recalibrate_methods.py [--samples 512] [--batch-size 32]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))


def build(path: Path):
    import keras
    from keras import layers

    from model_builders import set_trained_statistics

    inputs = keras.Input((16, 16, 3))
    x = inputs
    for i in range(10):
        x = layers.ReLU()(layers.BatchNormalization(name=f"bn{i}")(layers.Conv2D(16, 3, padding="same", strides=2 if i in (3, 6) else 1)(x)))
    model = keras.Model(inputs, layers.Dense(10, activation="softmax")(layers.GlobalAveragePooling2D()(x)))
    set_trained_statistics(model, seed=5)
    model.save(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()
    import keras

    from bnaudit import fix

    with tempfile.TemporaryDirectory() as tmp:
        source, data = Path(tmp) / "cnn10.keras", Path(tmp) / "data.npy"
        build(source)
        x = np.random.default_rng(0).standard_normal((args.samples, 16, 16, 3)).astype("float32")
        np.save(data, x)
        variances, outputs = {}, {}
        for method in ("one-pass", "per-level"):
            started = time.perf_counter()
            report = fix(source, Path(tmp) / f"{method}.keras", recalibrate=True, data=str(data), recalibrate_method=method, batch_size=args.batch_size, verify=False)
            seconds = time.perf_counter() - started
            print(f"{method}: {report.recalibration['passes']} passes, {seconds:.1f} s")
            model = keras.saving.load_model(Path(tmp) / f"{method}.keras", compile=False)
            variances[method] = {f"bn{i}": model.get_layer(f"bn{i}").moving_variance.numpy() for i in range(10)}
            outputs[method] = model.predict(x, verbose=0)
    exact = variances["per-level"]
    relative = np.array([np.max(np.abs(variances["one-pass"][k] - exact[k]) / exact[k]) for k in exact])
    print(f"{args.samples} samples, batch size {args.batch_size}: max relative difference of moving variance, one-pass vs per-level: "
          f"max {relative.max():.2e}, median {np.median(relative):.2e} over the BN layers")
    delta = np.abs(outputs["one-pass"] - outputs["per-level"]).max()
    agreement = np.mean(outputs["one-pass"].argmax(-1) == outputs["per-level"].argmax(-1))
    print(f"outputs of the two copies: max |delta| {delta:.2e}, top-1 agreement {agreement:.3f}")


if __name__ == "__main__":
    main()
