"""``bnaudit fix``: the static fixes on a ResNet50 in each format, and recalibration vs. ``model.predict``.

In one run:

1. ResNet50 (weights=None, BN statistics set as if trained) saved as ``.keras``, as a
   Keras 3 ``.h5`` and as a tf-keras (Keras 2) ``.h5``; then ``bnaudit fix M -o OUT
   --absorb-bias --fold --no-verify`` and ``... --unbake --no-verify`` on each, every
   run a fresh process as users run it, into a new output file: median wall time
   (Python's start-up included), median CPU time (user + system, from ``os.wait4``),
   peak RSS, each against its target (<= 2 s, <= 200 MB), and that no TensorFlow was
   imported (the process exits 3 if it was). Python's bytecode is cached (in a
   temporary ``PYTHONPYCACHEPREFIX``, by one unmeasured run first), as an installed
   package has it. The floor, ``python -c "import numpy, h5py"``, is printed beside.
2. The statistics pass recalibration runs (``bnaudit.fixes.recalibrate.one_pass`` reading
   a ``.npy``, as ``--recalibrate --data`` does) against a plain ``model.predict`` over
   the same samples in memory, same batch size (32), each including its own tracing,
   alternating, medians compared. Target: <= 1.2x. MobileNetV2 (96x96x3, 52 BN).

    python benchmarks/fix_speed.py [--samples 1024] [--repeat 3] [--static-only | --recalibration-only]

On a shared machine the wall time mostly measures waiting for a core; the CPU time is
the figure that does not depend on the load (the load average is printed).
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

from processes import predict_seconds, run_process

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
ROOT = Path(__file__).resolve().parent.parent
BATCH = 32
#: The targets of issue 13 for the static fixes on a ResNet50.
TARGET_SECONDS, TARGET_MB = 2.0, 200.0
#: The saved formats, by suffix of the file name, and the Keras that writes each.
FORMATS = {"resnet50.keras": "keras", "resnet50.h5": "keras", "resnet50_k2.h5": "tf_keras"}
FIXES = (["--absorb-bias", "--fold"], ["--unbake"])


def trained_resnet50(path: Path, writer: str = "keras") -> None:
    """ResNet50 with BN statistics set as if trained, saved by ``writer`` (keras or tf_keras)."""
    import numpy as np

    keras = __import__(writer)
    keras.utils.set_random_seed(0)
    model = keras.applications.ResNet50(weights=None)
    rng = np.random.default_rng(0)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            n = layer.moving_mean.shape[0]
            layer.set_weights([rng.uniform(0.8, 1.2, n), rng.normal(0, 0.3, n), rng.normal(0, 0.3, n), rng.uniform(0.5, 2, n)])
    model.save(path)


#: ``bnaudit`` as its console script runs it; exit 3 if TensorFlow was imported.
CHILD = """
import os, runpy, sys
sys.argv = ["bnaudit", *sys.argv[1:]]
code = 0
try:
    runpy.run_module("bnaudit", run_name="__main__")
except SystemExit as exc:
    code = exc.code if isinstance(exc.code, int) else 2
os._exit(3 if "tensorflow" in sys.modules or "keras" in sys.modules else code)
"""


def static_fixes(tmp: Path, repeat: int) -> None:
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
    os.environ.update(PYTHONPATH=str(ROOT), PYTHONPYCACHEPREFIX=str(tmp / "pycache"))
    for name, writer in FORMATS.items():
        build = f"import sys; sys.path.insert(0, {str(ROOT / 'benchmarks')!r}); import fix_speed, pathlib; fix_speed.trained_resnet50(pathlib.Path({str(tmp / name)!r}), {writer!r})"
        subprocess.run([sys.executable, "-c", build], check=True)
    floor = [run_process([sys.executable, "-c", "import numpy, h5py"]) for _ in range(repeat + 1)][1:]
    print(f"floor python -c 'import numpy, h5py': wall {statistics.median(u.wall for u in floor):.2f} s, CPU {statistics.median(u.cpu for u in floor):.2f} s")
    for name in FORMATS:
        source, out = tmp / name, tmp / f"out{Path(name).suffix}"
        for flags in FIXES:
            runs = []
            for _ in range(repeat + 1):  # the first writes the bytecode and is not counted
                out.unlink(missing_ok=True)
                runs.append(run_process([sys.executable, "-c", CHILD, "fix", str(source), "-o", str(out), *flags, "--no-verify"]))
            wall, cpu, peak = statistics.median(u.wall for u in runs[1:]), statistics.median(u.cpu for u in runs[1:]), max(u.peak_mb for u in runs[1:])
            print(f"fix {' '.join(flags):22s} {name:15s} ({source.stat().st_size / 1e6:.0f} MB): wall {wall:.2f} s, CPU {cpu:.2f} s "
                  f"(ratio to the {TARGET_SECONDS:.0f} s target: wall {wall / TARGET_SECONDS:.2f}, CPU {cpu / TARGET_SECONDS:.2f}), "
                  f"peak RSS {peak:.0f} MB (ratio {peak / TARGET_MB:.2f}); load average {os.getloadavg()[0]:.1f}")


def statistics_pass(model, data: Path) -> None:
    from bnaudit.fixes.recalibrate import one_pass
    from bnaudit.runtime.data import iter_batches

    one_pass(model, iter_batches(str(data), model, BATCH, None), BATCH)


def wall_and_cpu(run) -> tuple[float, float]:
    """Wall and CPU seconds (this process's user + system, every thread) of ``run()``."""
    wall, cpu = time.perf_counter(), time.process_time()
    run()
    return time.perf_counter() - wall, time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--samples", type=int, default=1024)
    parser.add_argument("--repeat", type=int, default=3)
    parts = parser.add_mutually_exclusive_group()
    parts.add_argument("--static-only", action="store_true", help="Skip the recalibration timing.")
    parts.add_argument("--recalibration-only", action="store_true", help="Skip the static fixes.")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if not args.recalibration_only:
            static_fixes(tmp, args.repeat)
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
            ours.append(wall_and_cpu(lambda: statistics_pass(model, tmp / "data.npy")))
            theirs.append(wall_and_cpu(lambda: predict_seconds(model, x, BATCH)))
        (wall, cpu), (predict_wall, predict_cpu) = ([statistics.median(t[i] for t in runs) for i in (0, 1)] for runs in (ours, theirs))
        print(f"recalibration pass on MobileNetV2 96x96 (52 BN), {args.samples} samples: wall {wall:.2f} s vs predict {predict_wall:.2f} s, "
              f"ratio {wall / predict_wall:.2f} (target <= 1.2); CPU {cpu:.2f} s vs {predict_cpu:.2f} s, ratio {cpu / predict_cpu:.2f}; "
              f"runs {', '.join(f'{a[0]:.1f}/{b[0]:.1f}' for a, b in zip(ours, theirs))} s; load average {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
