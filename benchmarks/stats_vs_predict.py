"""The statistics pass (BN301-BN303) vs. a plain ``model.predict`` over the same samples.

In one run, on MobileNetV2 (weights=None, 96x96x3, 52 BN layers) and on an MLP (3 BN
layers): times ``bnaudit.runtime.statistics.collect`` reading the data from a ``.npy``
(what ``--data`` does) against ``model.predict`` over the same samples in memory, with
the same batch size, each including its own tracing; runs alternate and the medians
are compared. Then the naive approach (a Keras sub-model per BN layer, one predict
each, numpy moments) on fewer samples, against predict on those. Then the peak RSS of
the pass over N and 8N samples, each in a fresh process. Targets: pass/predict <= 1.3,
RSS growth <= 10%.

    python benchmarks/stats_vs_predict.py [--scale 1] [--repeat 3]

Samples per timed run: 2048 for MobileNetV2, 16384 for the MLP (one batch of the MLP
costs ~1/100 of a MobileNetV2 batch; fewer would time mostly tracing), times --scale.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from processes import predict_seconds

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
BATCH = 32
SAMPLES = {"mobilenetv2": 2048, "mlp": 16384}


def build(kind: str):
    import keras
    from keras import layers

    keras.utils.set_random_seed(0)
    if kind == "mobilenetv2":
        return keras.applications.MobileNetV2(weights=None, input_shape=(96, 96, 3))
    inp = keras.Input((784,), name="pixels")
    x = inp
    for width in (1024, 512, 256):
        x = layers.Dense(width, use_bias=False)(x)
        x = layers.BatchNormalization()(x)
        x = layers.ReLU()(x)
    return keras.Model(inp, layers.Dense(10, activation="softmax")(x), name="mlp")


def write_data(path: Path, shape: tuple[int, ...], samples: int) -> None:
    """Random inputs written in chunks, so the parent never holds them all."""
    import numpy as np

    rng = np.random.default_rng(0)
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(samples, *shape))
    for start in range(0, samples, 256):
        out[start : start + 256] = rng.uniform(-1, 1, size=(min(256, samples - start), *shape))
    out.flush()
    del out


def statistics_pass(model, data: Path) -> float:
    from bnaudit.runtime.data import iter_batches
    from bnaudit.runtime.statistics import collect

    started = time.perf_counter()
    collect(model, iter_batches(str(data), model, BATCH, None), batch_size=BATCH)
    return time.perf_counter() - started


def predict(model, x) -> float:
    return predict_seconds(model, x, BATCH)


def naive(model, x) -> float:
    """One sub-model per BN layer, each run over all samples, moments with numpy."""
    import keras
    import numpy as np

    from bnaudit.runtime.statistics import batchnorm_layers

    started = time.perf_counter()
    for layer in batchnorm_layers(model).values():
        values = keras.Model(model.inputs, layer.input).predict(x, batch_size=BATCH, verbose=0).astype(np.float64)
        values = values.reshape(-1, values.shape[-1])
        values.mean(axis=0), values.var(axis=0)
    return time.perf_counter() - started


def rss_child(model_path: str, data: str) -> None:
    """In a fresh process: load the model, run the pass, print peak RSS (MB)."""
    from bnaudit.runtime import import_tensorflow

    import_tensorflow()
    import keras

    statistics_pass(keras.saving.load_model(model_path), Path(data))
    # VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the parent across fork+exec.
    status = Path("/proc/self/status").read_text()
    peak_kb = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM:"))
    print(json.dumps({"rss_mb": peak_kb / 1024}))


def peak_rss(model_path: Path, data: Path) -> float:
    proc = subprocess.run(
        [sys.executable, __file__, "--rss-child", str(model_path), str(data)],
        capture_output=True, text=True, check=True, env={**os.environ, "BNAUDIT_LOGICAL_CPUS": "1"},
    )  # fmt: skip
    return json.loads(proc.stdout.strip().splitlines()[-1])["rss_mb"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=1.0, help="multiply the samples per timed run (default 1)")
    parser.add_argument("--naive-samples", type=int, default=256, help="samples for the naive comparison (default 256)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--rss-child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rss_child:
        rss_child(*args.rss_child)
        return
    os.environ["BNAUDIT_LOGICAL_CPUS"] = "1"  # one device, as model.predict uses
    from bnaudit.runtime import import_tensorflow

    import_tensorflow()
    import numpy as np

    print(f"batch size {BATCH}; medians of {args.repeat} alternating runs, tracing included")
    with tempfile.TemporaryDirectory() as tmp:
        for kind, base in SAMPLES.items():
            samples = int(base * args.scale)
            model = build(kind)
            shape = tuple(model.inputs[0].shape[1:])
            data = Path(tmp, f"{kind}.npy")
            write_data(data, shape, samples)
            x = np.load(data)
            model.predict(x[:BATCH], verbose=0)  # warm the kernels for both
            ours, theirs = [], []
            for _ in range(args.repeat):
                theirs.append(predict(model, x))
                ours.append(statistics_pass(model, data))
            ratio = statistics.median(ours) / statistics.median(theirs)
            print(
                f"{kind:<12} {samples} samples: pass {statistics.median(ours):.2f} s, "
                f"predict {statistics.median(theirs):.2f} s, ratio {ratio:.2f} (target <= 1.3)"
            )
            few = x[: args.naive_samples]
            np.save(Path(tmp, "few.npy"), few)
            few_pass = statistics_pass(model, Path(tmp, "few.npy"))
            few_predict = predict(model, few)
            naive_seconds = naive(model, few)
            print(
                f"{'':<12} {args.naive_samples} samples: naive sub-model per BN layer {naive_seconds:.1f} s = "
                f"{naive_seconds / few_predict:.1f}x predict; the pass {few_pass / few_predict:.2f}x predict"
            )
            model_path = Path(tmp, f"{kind}.keras")
            model.save(model_path)
            big = Path(tmp, f"{kind}-8x.npy")
            write_data(big, shape, 8 * samples)
            small_rss, big_rss = peak_rss(model_path, data), peak_rss(model_path, big)
            print(
                f"{'':<12} peak RSS of the pass: {small_rss:.0f} MB for {samples} samples, "
                f"{big_rss:.0f} MB for {8 * samples}: {100 * (big_rss / small_rss - 1):+.1f}% (target <= +10%)"
            )
            big.unlink()


if __name__ == "__main__":
    main()
