"""``bnaudit diff`` of two ResNet50 checkpoints vs. one static ``bnaudit check``, as whole processes.

Builds a ResNet50 (weights=None, 224x224x3) `.keras` as the base and, as the tuned
checkpoint, the same model with every BN's moving mean moved and its first half frozen
(so BN211 has work to do). Times `bnaudit diff base tuned` against `bnaudit check base`
in one run and prints the ratio. Target: diff <= 2x one static check.

    python benchmarks/diff_vs_check.py [--repeat 5]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from static_vs_keras import measure


def build(base: Path, tuned: Path) -> None:
    code = (
        "import os; os.environ['TF_CPP_MIN_LOG_LEVEL']='3'\n"
        "import keras, numpy as np\n"
        "model = keras.applications.ResNet50(weights=None, input_shape=(224, 224, 3))\n"
        f"model.save({str(base)!r})\n"
        "bns = [l for l in model.layers if isinstance(l, keras.layers.BatchNormalization)]\n"
        "for i, layer in enumerate(bns):\n"
        "    gamma, beta, mean, var = layer.get_weights()\n"
        "    layer.set_weights([gamma, beta, mean + 0.1, var])\n"
        "    layer.trainable = i >= len(bns) // 2\n"
        f"model.save({str(tuned)!r})\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, stderr=subprocess.DEVNULL)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        base, tuned = Path(tmp) / "base.keras", Path(tmp) / "tuned.keras"
        build(base, tuned)
        check = [sys.executable, "-m", "bnaudit", "check", str(base)]
        diff = [sys.executable, "-m", "bnaudit", "diff", str(base), str(tuned)]
        found = subprocess.run(diff, capture_output=True, text=True).stdout.splitlines()[-1]
        runs = {"check": [], "diff": []}
        for _ in range(args.repeat):  # interleaved, so a busy moment costs both alike
            runs["check"].append(measure(check))
            runs["diff"].append(measure(diff))
    check_s, check_mb = statistics.median(t for t, _ in runs["check"]), max(m for _, m in runs["check"])
    diff_s, diff_mb = statistics.median(t for t, _ in runs["diff"]), max(m for _, m in runs["diff"])
    print(f"models: ResNet50 .keras, 53 BN layers, base and tuned; {args.repeat} runs each, median wall time, max peak RSS")
    print(f"bnaudit check base        {check_s:6.2f} s  {check_mb:5.0f} MB")
    print(f"bnaudit diff base tuned   {diff_s:6.2f} s  {diff_mb:5.0f} MB   ({found})")
    print(f"ratio: diff = {diff_s / check_s:.2f}x one static check (target <= 2x)")


if __name__ == "__main__":
    main()
