"""Static ONNX audit vs. ``onnx.load`` of the same file, as whole processes.

Converts a tf-keras ResNet50 (weights=None, 224x224x3) to ONNX with tf2onnx, the way
``sample_models/build_exports.py`` does (BatchNormalization nodes kept: 53 of them),
then times, in one run, ``bnaudit check model.onnx`` against
``python -c "import onnx; onnx.load(path)"`` — what any ONNX-reading tool pays at
least. Prints wall time and peak RSS of each and the ratio. Target: <= 1.5x.

    python benchmarks/onnx_vs_load.py [--repeat 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from static_vs_keras import measure  # noqa: E402

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
SAMPLES = Path(__file__).resolve().parent.parent / "sample_models"


def build(path: Path) -> None:
    code = (
        "import os, sys; os.environ['TF_CPP_MIN_LOG_LEVEL']='3'\n"
        f"sys.path.insert(0, {str(SAMPLES)!r})\n"
        "import tf_keras\n"
        "from build_exports import to_onnx\n"
        f"to_onnx(tf_keras.applications.ResNet50(weights=None, input_shape=(224, 224, 3)), __import__('pathlib').Path({str(path)!r}))\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, stderr=subprocess.DEVNULL, stdout=subprocess.DEVNULL)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        model = Path(tmp) / "resnet50.onnx"
        build(model)
        bnaudit = [sys.executable, "-m", "bnaudit", "check", str(model)]
        onnx_load = [sys.executable, "-c", f"import onnx; onnx.load({str(model)!r})"]
        ours, theirs = [], []
        for _ in range(args.repeat):  # interleaved, so a busy moment hits both
            ours.append(measure(bnaudit))
            theirs.append(measure(onnx_load))
        size_mb = model.stat().st_size / 1e6
    ours_s, ours_mb = statistics.median(t for t, _ in ours), max(m for _, m in ours)
    theirs_s, theirs_mb = statistics.median(t for t, _ in theirs), max(m for _, m in theirs)
    print(f"model: ResNet50 .onnx ({size_mb:.0f} MB, tf2onnx), {args.repeat} runs each, median wall time, max peak RSS")
    print(f"bnaudit check          {ours_s:7.2f} s  {ours_mb:7.0f} MB")
    print(f"onnx.load              {theirs_s:7.2f} s  {theirs_mb:7.0f} MB")
    print(f"ratio: {ours_s / theirs_s:.2f}x the time of onnx.load (target <= 1.5x)")


if __name__ == "__main__":
    main()
