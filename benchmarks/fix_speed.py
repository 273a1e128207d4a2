"""``bnaudit fix``: the static fixes on a ResNet50 .keras, and recalibration vs. ``model.predict``.

In one run:

1. ResNet50 (weights=None, BN statistics set as if trained), saved as ``.keras``; then
   ``python -m bnaudit fix R.keras -o OUT --absorb-bias --fold --no-verify`` and
   ``... --unbake --no-verify`` as users run them, each in a fresh process: wall time
   (Python start-up included) and peak RSS. Targets: <= 2 s and <= 200 MB, and no
   TensorFlow imported (the edits are config + h5py).
2. The statistics pass recalibration runs (``collect(..., upstream="training")`` reading
   a ``.npy``, as ``--recalibrate --data`` does) against a plain ``model.predict`` over
   the same samples in memory, same batch size (32), each including its own tracing,
   alternating, medians compared. Target: <= 1.2x. MobileNetV2 (96x96x3, 52 BN).

    python benchmarks/fix_speed.py [--samples 1024] [--repeat 3] [--static-only]

The CPU time (user + system) of the fix process is printed next to its wall time: on a
shared machine the wall time mostly measures waiting for a core.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from processes import predict_seconds

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
ROOT = Path(__file__).resolve().parent.parent
BATCH = 32


def trained_resnet50(path: Path) -> None:
    import keras
    import numpy as np

    keras.utils.set_random_seed(0)
    model = keras.applications.ResNet50(weights=None)
    rng = np.random.default_rng(0)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            n = layer.moving_mean.shape[0]
            layer.set_weights([rng.uniform(0.8, 1.2, n), rng.normal(0, 0.3, n), rng.normal(0, 0.3, n), rng.uniform(0.5, 2, n)])
    model.save(path)


CHILD = """
import resource, sys, time
started = time.perf_counter()
from bnaudit.cli.fix import fix
try:
    fix.main(sys.argv[1:], standalone_mode=False)
except SystemExit:
    pass
seconds = time.perf_counter() - started
assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules
usage = resource.getrusage(resource.RUSAGE_SELF)
print(seconds, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024, file=sys.stderr)
"""


def static_fix(source: Path, out: Path, *flags: str) -> tuple[float, float, float]:
    """Wall seconds (process start to exit), CPU seconds and peak RSS (MB) of one ``bnaudit fix`` process."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", CHILD, str(source), "-o", str(out), *flags, "--no-verify"], env=env, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if proc.returncode:
        raise SystemExit(proc.stderr)
    _inner, cpu, rss = map(float, proc.stderr.split()[-3:])
    return wall, cpu, rss


def statistics_pass(model, data: Path) -> float:
    from bnaudit.runtime.data import iter_batches
    from bnaudit.runtime.statistics import collect

    started = time.perf_counter()
    collect(model, iter_batches(str(data), model, BATCH, None), batch_size=BATCH, upstream="training")
    return time.perf_counter() - started


def predict(model, x) -> float:
    return predict_seconds(model, x, BATCH)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--samples", type=int, default=1024)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--static-only", action="store_true", help="Skip the recalibration timing.")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        source = tmp / "resnet50.keras"
        subprocess.run([sys.executable, "-c", f"import sys; sys.path.insert(0, {str(ROOT / 'benchmarks')!r}); import fix_speed; fix_speed.trained_resnet50(__import__('pathlib').Path({str(source)!r}))"], check=True)
        for flags in (["--absorb-bias", "--fold"], ["--unbake"]):
            runs = [static_fix(source, tmp / "out.keras", *flags) for _ in range(args.repeat)]
            wall = statistics.median(r[0] for r in runs)
            cpu = statistics.median(r[1] for r in runs)
            rss = max(r[2] for r in runs)
            print(f"fix {' '.join(flags)} on ResNet50 .keras ({source.stat().st_size / 1e6:.0f} MB): "
                  f"wall {wall:.2f} s (target <= 2 s, ratio {wall / 2:.2f}), CPU {cpu:.2f} s, peak RSS {rss:.0f} MB "
                  f"(target <= 200 MB, ratio {rss / 200:.2f}), no TensorFlow imported; load average {os.getloadavg()[0]:.1f}")
        if args.static_only:
            return

        import keras
        import numpy as np

        os.environ["BNAUDIT_LOGICAL_CPUS"] = "1"  # one device, as model.predict uses
        keras.utils.set_random_seed(0)
        model = keras.applications.MobileNetV2(weights=None, input_shape=(96, 96, 3))
        x = np.random.default_rng(0).standard_normal((args.samples, 96, 96, 3)).astype("float32")
        np.save(tmp / "data.npy", x)
        model.predict(x[:BATCH], verbose=0)  # warm the kernels for both
        ours, theirs = [], []
        for _ in range(args.repeat):
            ours.append(statistics_pass(model, tmp / "data.npy"))
            theirs.append(predict(model, x))
        ratio = statistics.median(ours) / statistics.median(theirs)
        print(f"recalibration pass on MobileNetV2 96x96 (52 BN), {args.samples} samples: {statistics.median(ours):.2f} s, "
              f"predict {statistics.median(theirs):.2f} s, ratio {ratio:.2f} (target <= 1.2)")


if __name__ == "__main__":
    main()
