"""What each report format costs, against the plain text report, on a ResNet50's results.

Builds a ResNet50 (weights=None, 224x224x3) `.keras`, audits it once to JSON, then
times `bnaudit report results.json --format NAME` for every format (whole processes,
median of --repeat runs), and prints wall time, size and the ratio to `text` — the
baseline every process pays (interpreter, plugins, reading the JSON).
Targets: the HTML report <= 2 MB and <= 2x the text report's time.

    python benchmarks/report_render.py [--repeat 5]
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

from static_vs_keras import build

FORMATS = ("text", "json", "sarif", "junit", "github", "html")


def timed(command: list[str], repeat: int) -> float:
    runs = []
    for _ in range(repeat):
        started = time.perf_counter()
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL, env={**os.environ, "GITHUB_STEP_SUMMARY": ""})
        runs.append(time.perf_counter() - started)
    return statistics.median(runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        model, results = Path(tmp) / "resnet50.keras", Path(tmp) / "results.json"
        build(model)
        subprocess.run([sys.executable, "-m", "bnaudit", "check", str(model), "--format", "json", "-o", str(results), "--exit-zero"], check=True)
        rows = []
        for name in FORMATS:
            out = Path(tmp) / f"report.{name}"
            seconds = timed([sys.executable, "-m", "bnaudit", "report", str(results), "--format", name, "-o", str(out)], args.repeat)
            rows.append((name, seconds, out.stat().st_size))
    baseline = rows[0][1]
    print(f"{'format':<8} {'wall (median)':>14} {'vs text':>8} {'size':>10}")
    for name, seconds, size in rows:
        print(f"{name:<8} {seconds:>12.3f} s {seconds / baseline:>7.2f}x {size / 1024:>8.1f} KB")


if __name__ == "__main__":
    main()
