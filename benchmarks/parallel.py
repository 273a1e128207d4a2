"""Benchmark: `bnaudit check DIR -j 2` against `-j 1` on a directory of 16 small models.

Builds 16 small Conv/BN models with Keras in a temporary directory, then times the real
command (a subprocess, as a CI job runs it) serially and in parallel, alternating, three
times each, and keeps the best run of each (the least disturbed by other work on the
machine). Two workloads:

- static rules only (the default `check`): milliseconds per model, so start-up decides;
- `--inference` (BN4xx, the model loaded by Keras and re-run): seconds per model, the
  case `-j` is for;
- `--data` (BN3xx: the model loaded by Keras and run once over 256 samples).

The findings of both runs are compared, and the ratio serial/parallel printed.

    python benchmarks/parallel.py [--jobs 2] [--models 16] [--repeat 3] [--only static|inference|data]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def build_models(directory: Path, count: int) -> None:
    import keras
    import numpy as np
    from keras import layers

    rng = np.random.default_rng(0)
    for index in range(count):
        width = 8 + 4 * (index % 4)
        model = keras.Sequential(
            [
                keras.Input((16, 16, 3)),
                layers.Conv2D(width, 3, use_bias=index % 3 == 0, name="conv1"),
                layers.BatchNormalization(name="bn1"),
                layers.Activation("relu", name="relu1"),
                layers.Conv2D(width, 3, use_bias=False, name="conv2"),
                layers.BatchNormalization(name="bn2"),
                layers.Activation("relu", name="relu2"),
                layers.GlobalAveragePooling2D(name="gap"),
                layers.Dense(10, name="logits"),
            ],
            name=f"small_{index}",
        )
        for bn in ("bn1", "bn2"):
            gamma, beta, _, _ = model.get_layer(bn).get_weights()
            model.get_layer(bn).set_weights([gamma, beta, rng.normal(0, 0.2, width), rng.uniform(0.5, 2, width)])
        model.save(directory / f"small_{index:02d}.keras")


def run(directory: Path, jobs: int, extra: list[str]) -> tuple[float, list]:
    started = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "bnaudit", "check", str(directory), "--isolated", "--format", "json", "-j", str(jobs), *extra],
        capture_output=True, text=True, stdin=subprocess.DEVNULL,
    )
    seconds = time.perf_counter() - started
    if proc.returncode not in (0, 1):
        sys.exit(f"bnaudit failed ({proc.returncode}): {proc.stderr}")
    findings = [(m["path"], f["code"], f["layer"]) for m in json.loads(proc.stdout)["models"] for f in m["findings"]]
    return seconds, findings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--models", type=int, default=16)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--only", choices=("static", "inference", "data"), help="run one workload")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, tempfile.TemporaryDirectory() as data_dir:
        directory = Path(tmp)
        build_models(directory, args.models)
        data = Path(data_dir) / "data.npy"
        import numpy as np

        np.save(data, np.random.default_rng(1).normal(size=(256, 16, 16, 3)).astype(np.float32))
        workloads = {
            "static": ("static rules", []),
            "inference": ("--inference --select BN4", ["--inference", "--select", "BN4"]),
            "data": ("--data --select BN3", ["--data", str(data), "--select", "BN3"]),
        }
        for key, (label, extra) in workloads.items():
            if args.only and key != args.only:
                continue
            serial, parallel = [], []
            for _ in range(args.repeat):
                serial.append(run(directory, 1, extra))
                parallel.append(run(directory, args.jobs, extra))
            serial, parallel = min(serial), min(parallel)
            same = "same findings" if serial[1] == parallel[1] else "DIFFERENT FINDINGS"
            print(
                f"{args.models} models, {label}: -j 1 {serial[0]:.2f} s, -j {args.jobs} {parallel[0]:.2f} s, "
                f"ratio {serial[0] / parallel[0]:.2f}x ({same}, {len(serial[1])} findings)"
            )


if __name__ == "__main__":
    main()
