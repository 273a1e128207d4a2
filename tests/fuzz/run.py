"""Run the fuzzer for as long as asked; print the figures docs/security.md records.

    python tests/fuzz/run.py --seed 1 --files 100000          # or --seconds 3600
    python tests/fuzz/run.py --seed 1 --files 200 --batch 50  # a short look

Each batch of generated files (tests/fuzz/mutate.py) is audited by one ``bnaudit check``
run and every model's outcome checked; a batch with a fault keeps its files under
``--keep`` for a rerun (``make_case(seed, index)`` rebuilds any file exactly).
"""

from __future__ import annotations

import argparse
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from mutate import MAX_PEAK_MIB, check_batch, make_case  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--files", type=int, default=1000, help="stop after this many files")
    parser.add_argument("--seconds", type=float, default=0, help="stop after this long (0: no limit)")
    parser.add_argument("--batch", type=int, default=100, help="files per bnaudit run")
    parser.add_argument("--start", type=int, default=0, help="first file index (to resume a run)")
    parser.add_argument("--keep", type=Path, default=Path("fuzz-faults"), help="where batches with faults are kept")
    args = parser.parse_args()
    started = time.perf_counter()
    done = clean = refused = contained = faults = 0
    peak = 0.0
    index = args.start
    while done < args.files and not (args.seconds and time.perf_counter() - started > args.seconds):
        count = min(args.batch, args.files - done)
        with tempfile.TemporaryDirectory(prefix="bnaudit-fuzz-") as scratch:
            paths = [make_case(args.seed, i, Path(scratch)) for i in range(index, index + count)]
            report = check_batch(paths)
            if report.faults:
                kept = args.keep / f"seed{args.seed}_{index}"
                shutil.copytree(scratch, kept, dirs_exist_ok=True)
                print(f"batch {index}..{index + count - 1}: {len(report.faults)} faults, files kept in {kept}", file=sys.stderr)
                for fault in report.faults[:20]:
                    print(f"  {fault}", file=sys.stderr)
        done, index = done + count, index + count
        clean, refused, faults = clean + report.clean_results, refused + report.refused, faults + len(report.faults)
        contained += report.contained
        peak = max(peak, report.peak_mib)
        elapsed = time.perf_counter() - started
        print(f"\r{done} files, {faults} faults, {elapsed:.0f} s", end="", file=sys.stderr, flush=True)
    elapsed = time.perf_counter() - started
    print(file=sys.stderr)
    print(
        f"seed {args.seed}, files {args.start}..{index - 1}: {done} files in {elapsed:.0f} s ({done / elapsed:.1f} files/s); "
        f"{clean} audited, {refused} refused with one-line errors ({contained} of them native crashes or endless loops, contained); {faults} faults; "
        f"peak RSS per batch {peak:.0f} MiB (bound {MAX_PEAK_MIB}); {platform.machine()}, {platform.python_version()}"
    )
    return 1 if faults else 0


if __name__ == "__main__":
    sys.exit(main())
