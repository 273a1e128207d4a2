"""What reading models in a child process costs a ``bnaudit.audit()`` caller.

    python benchmarks/api_isolation.py              # a caller without TensorFlow (forked children)
    python benchmarks/api_isolation.py --tensorflow # a caller running TensorFlow (forkserver children)

Audits one small sample model (the static rules) ``--calls`` times with the default
(a child process per call) and with ``in_process=True``, alternating, and prints the
median seconds per call of each and their ratio. The first isolated call with
``--tensorflow`` also starts the forkserver; it is reported apart.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
MODEL = ROOT / "sample_models" / "consecutive_bn.keras"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=10)
    parser.add_argument("--tensorflow", action="store_true", help="import TensorFlow first, as a Keras program has")
    args = parser.parse_args()
    if args.tensorflow:
        import tensorflow  # noqa: F401
    import bnaudit

    started = time.perf_counter()
    assert not bnaudit.audit(MODEL).errors
    first = time.perf_counter() - started
    times: dict[bool, list[float]] = {False: [], True: []}
    for _ in range(args.calls):
        for in_process in (False, True):
            started = time.perf_counter()
            result = bnaudit.audit(MODEL, in_process=in_process)
            times[in_process].append(time.perf_counter() - started)
            assert [f.code for f in result.findings] == ["BN105"]
    isolated, here = statistics.median(times[False]), statistics.median(times[True])
    caller = "with TensorFlow imported (forkserver children)" if args.tensorflow else "without TensorFlow (forked children)"
    print(f"caller {caller}: first call {first:.3f} s; median of {args.calls}: child process {isolated:.3f} s, in_process=True {here:.3f} s, ratio {isolated / here:.1f}x")


if __name__ == "__main__":
    main()
