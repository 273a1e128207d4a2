"""Start-up of a static check against the floor of any h5py-based tool, as whole processes.

Builds a ResNet50 (224x224x3) and an EfficientNetB7 (600x600x3) `.keras` with
``weights=None`` (or reuses them from ``--models DIR``), then times, interleaved, the
floor ``python -c "import h5py, numpy"`` and ``bnaudit check MODEL`` as the console
script runs it (``from bnaudit.cli import main; main()``). Prints the median wall time
of each, their ratio per model, and whether it is within the target of 1.5x the floor;
also the ratio of CPU time (user + system), which load on a shared machine moves less.

Both commands run with compiled bytecode, as an installed package does (pip compiles it
on install; an editable install writes it on first use): ``PYTHONDONTWRITEBYTECODE`` is
dropped and ``PYTHONPYCACHEPREFIX`` points at a temporary directory that the first,
untimed run of each command fills, so the source tree is left as it was.

    python benchmarks/startup.py [--repeat 15] [--models DIR]
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

TARGET = 1.5
MODELS = {
    "resnet50.keras": "keras.applications.ResNet50(weights=None, input_shape=(224, 224, 3))",
    "efficientnetb7.keras": "keras.applications.EfficientNetB7(weights=None, input_shape=(600, 600, 3))",
}
FLOOR = [sys.executable, "-c", "import h5py, numpy"]
#: The body of the ``bnaudit`` console script (pyproject's ``bnaudit = "bnaudit.cli:main"``).
CONSOLE_SCRIPT = "import sys; sys.argv[0] = 'bnaudit'; from bnaudit.cli import main; sys.exit(main())"


def build(directory: Path) -> None:
    """Save the models not yet in ``directory`` (a minute or two: Keras builds them)."""
    missing = {name: code for name, code in MODELS.items() if not (directory / name).is_file()}
    if not missing:
        return
    lines = ["import os", "os.environ['TF_CPP_MIN_LOG_LEVEL'] = '3'", "import keras"]
    lines += [f"{code}.save({str(directory / name)!r})" for name, code in missing.items()]
    subprocess.run([sys.executable, "-c", "\n".join(lines)], check=True, stderr=subprocess.DEVNULL)


def timed(command: list[str], env: dict[str, str]) -> tuple[float, float]:
    """Wall and CPU seconds of one whole process, start to exit."""
    usage = run_process(command, env)
    return usage.wall, usage.cpu


def with_bytecode(cache: Path) -> dict[str, str]:
    """This process's environment, with bytecode written to and read from ``cache``."""
    env = {key: value for key, value in os.environ.items() if key != "PYTHONDONTWRITEBYTECODE"}
    return {**env, "PYTHONPYCACHEPREFIX": str(cache)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=15, help="runs of each command (median reported)")
    parser.add_argument("--models", type=Path, help="directory to keep the built models in (built when missing)")
    args = parser.parse_args()
    if args.repeat < 5:
        parser.error("--repeat: at least 5 runs, or the median means little")
    with tempfile.TemporaryDirectory() as tmp:
        directory = args.models or Path(tmp)
        directory.mkdir(parents=True, exist_ok=True)
        build(directory)
        env = with_bytecode(Path(tmp, "pycache"))
        timed(FLOOR, env)  # compile the floor's bytecode once
        print(f"{'command':<40} {'wall s':>7} {'x floor':>8} {'CPU s':>7} {'x floor':>8}")
        for name in MODELS:
            check = [sys.executable, "-c", CONSOLE_SCRIPT, "check", str(directory / name)]
            timed(check, env)  # warm the page cache and compile bnaudit's bytecode once
            floor, ours = [], []
            for _ in range(args.repeat):  # interleaved: load on the machine hits both alike
                floor.append(timed(FLOOR, env))
                ours.append(timed(check, env))
            floor_wall, floor_cpu = (statistics.median(t[i] for t in floor) for i in (0, 1))
            ours_wall, ours_cpu = (statistics.median(t[i] for t in ours) for i in (0, 1))
            ratio = ours_wall / floor_wall
            verdict = "within" if ratio <= TARGET else "OVER"
            print(f"{'import h5py, numpy':<40} {floor_wall:7.3f} {1.0:8.2f} {floor_cpu:7.3f} {1.0:8.2f}")
            print(
                f"{'bnaudit check ' + name:<40} {ours_wall:7.3f} {ratio:8.2f} {ours_cpu:7.3f} {ours_cpu / floor_cpu:8.2f}"
                f"  ({verdict} the {TARGET}x target)"
            )
    load = os.getloadavg()[0]
    print(f"machine: {os.cpu_count()} CPUs, load average {load:.1f}, Python {sys.version.split()[0]}, medians of {args.repeat} interleaved runs, bytecode compiled")


if __name__ == "__main__":
    main()
