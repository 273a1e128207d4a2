"""bnaudit's static check vs. loading the model with Keras, as whole processes.

Builds a ResNet50 (weights=None, 224x224x3) `.keras`, then times, in one run,
`bnaudit check` against `python -c "keras.saving.load_model(...)"` — the least any
Keras-based checker must pay. Prints wall time and peak RSS of each and the ratios.
Targets: bnaudit >= 15x faster, peak RSS <= 100 MB.

    python benchmarks/static_vs_keras.py [--repeat 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from processes import run_process

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def build(path: Path) -> None:
    code = (
        "import os; os.environ['TF_CPP_MIN_LOG_LEVEL']='3'\n"
        "import keras\n"
        f"keras.applications.ResNet50(weights=None, input_shape=(224, 224, 3)).save({str(path)!r})\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, stderr=subprocess.DEVNULL)


def measure(command: list[str]) -> tuple[float, float]:
    """Wall seconds and peak RSS (MB) of one whole process."""
    usage = run_process(command)
    return usage.wall, usage.peak_mb


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        model = Path(tmp) / "resnet50.keras"
        build(model)
        bnaudit = [sys.executable, "-m", "bnaudit", "check", str(model)]
        keras_load = [
            sys.executable,
            "-c",
            f"import os; os.environ['TF_CPP_MIN_LOG_LEVEL']='3'\nimport keras\nkeras.saving.load_model({str(model)!r})",
        ]
        ours = [measure(bnaudit) for _ in range(args.repeat)]
        theirs = [measure(keras_load) for _ in range(args.repeat)]
    ours_s, ours_mb = statistics.median(t for t, _ in ours), max(m for _, m in ours)
    theirs_s, theirs_mb = statistics.median(t for t, _ in theirs), max(m for _, m in theirs)
    print(f"model: ResNet50 .keras ({model.name}), {args.repeat} runs each, median wall time, max peak RSS")
    print(f"bnaudit check          {ours_s:7.2f} s  {ours_mb:7.0f} MB")
    print(f"keras load_model       {theirs_s:7.2f} s  {theirs_mb:7.0f} MB")
    print(f"speed-up: {theirs_s / ours_s:.1f}x (target >= 15x); memory ratio {theirs_mb / ours_mb:.1f}x; bnaudit peak RSS {ours_mb:.0f} MB (target <= 100 MB)")


if __name__ == "__main__":
    main()
