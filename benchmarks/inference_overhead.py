"""The inference audit (BN401-BN404) against one `model.predict` per device, on MobileNetV2.

Builds a MobileNetV2 (weights=None, 96x96x3) `.keras` and 256 seeded synthetic samples,
then times, each in a fresh process so that neither side finds the other's traced
functions or warm caches:

- baseline: load the model, then `model.predict(x, batch_size=32)` once on each device
  (only the predicts are timed; the first call's tracing included, as a user pays it);
- audit: `bnaudit.audit(model, select=["BN4"], inference=True, max_samples=256)`, timed
  as the four rules' time minus the model load they include (reported separately).

Target: audit <= 2.5x baseline. The devices are TensorFlow's: every GPU, and the CPU
split into `--logical-cpus` devices (default 2, as the tests run), so on a machine
without a GPU the cross-device passes still run for real.

    python benchmarks/inference_overhead.py [--repeat 3] [--logical-cpus 2]
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

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

SAMPLES = 256
BATCH_SIZE = 32
SHAPE = (96, 96, 3)
TARGET = 2.5


def build(path: Path) -> None:
    import keras

    keras.applications.MobileNetV2(weights=None, input_shape=SHAPE).save(path)


def baseline(path: Path) -> dict:
    """Seconds of one cold ``model.predict`` per device, over the audit's own samples."""
    import keras

    from bnaudit.runtime import import_tensorflow
    from bnaudit.runtime.devices import short_name
    from bnaudit.runtime.synthetic import synthetic_inputs

    tf = import_tensorflow()
    model = keras.saving.load_model(path, compile=False)
    [x] = synthetic_inputs(model, SAMPLES, seed=0)
    seconds = {}
    for device in tf.config.list_logical_devices():
        if device.device_type in ("CPU", "GPU"):
            started = time.perf_counter()
            with tf.device(device.name):
                model.predict(x, batch_size=BATCH_SIZE, verbose=0)
            seconds[short_name(device.name)] = time.perf_counter() - started
    return seconds


def audit(path: Path) -> dict:
    """Seconds of the four rules, of the model load inside them, and of each pass."""
    import bnaudit
    from bnaudit.measurements import InferenceSetup
    from bnaudit.runtime import import_tensorflow

    import_tensorflow()  # a one-off process cost, outside the timings as in the baseline
    result = bnaudit.audit(path, select=["BN4"], inference=True, max_samples=SAMPLES, batch_size=BATCH_SIZE, in_process=True)
    if result.errors or result.findings:
        raise SystemExit(f"unexpected audit outcome: {[e.message for e in result.errors]} {[f.code for f in result.findings]}")
    [setup] = result.measured(InferenceSetup)
    rules = sum(result.meta["rule_seconds"].values())
    return {"rules": rules, "devices": setup.devices, "passes": dict(setup.seconds)}


def in_fresh_process(part: str, path: Path, logical_cpus: int) -> dict:
    env = {**os.environ, "BNAUDIT_LOGICAL_CPUS": str(logical_cpus)}
    proc = subprocess.run(
        [sys.executable, __file__, "--part", part, "--model", str(path)], env=env, capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        raise SystemExit(f"{part} failed:\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--logical-cpus", type=int, default=2)
    parser.add_argument("--part", choices=["baseline", "audit"], help=argparse.SUPPRESS)
    parser.add_argument("--model", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.part:
        print(json.dumps(baseline(args.model) if args.part == "baseline" else audit(args.model)))
        return

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "mobilenetv2_96.keras"
        build(path)
        baselines, audits, ratios = [], [], []
        for _ in range(args.repeat):  # interleaved, so load on the machine hits both alike
            predict = in_fresh_process("baseline", path, args.logical_cpus)
            run = in_fresh_process("audit", path, args.logical_cpus)
            work = run["rules"] - run["passes"]["load model"]
            baselines.append(sum(predict.values()))
            audits.append(work)
            ratios.append(work / sum(predict.values()))
    print(f"MobileNetV2 (weights=None, {SHAPE[0]}x{SHAPE[1]}), {SAMPLES} samples, batch {BATCH_SIZE}, devices: {', '.join(run['devices'])}")
    print(f"baseline, one model.predict per device: {statistics.median(baselines):.2f} s  ({', '.join(f'{d} {s:.2f} s' for d, s in predict.items())})")
    print(f"inference audit BN401-BN404, model load excluded: {statistics.median(audits):.2f} s (load {run['passes']['load model']:.2f} s)")
    print("  passes of the last run: " + ", ".join(f"{name} {s:.2f} s" for name, s in run["passes"].items() if name != "load model"))
    ratio = statistics.median(ratios)
    print(f"ratio (median of {args.repeat}): {ratio:.2f}x  (target <= {TARGET}x: {'met' if ratio <= TARGET else 'NOT met'})")


if __name__ == "__main__":
    main()
