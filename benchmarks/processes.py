"""Measurements the benchmarks share: one whole process, and one re-traced ``predict``.

Imported by the benchmark scripts beside it (``python benchmarks/NAME.py`` puts this
folder on ``sys.path``).
"""

from __future__ import annotations

import os
import subprocess
import time
from dataclasses import dataclass


@dataclass(frozen=True)
class Usage:
    """One process, start to exit: wall seconds, CPU seconds (user + system), peak RSS in MB."""

    wall: float
    cpu: float
    peak_mb: float


def run_process(command: list[str], env: dict[str, str] | None = None) -> Usage:
    """Run ``command`` (in ``env``, default this process's) with its output discarded and
    measure it (``os.wait4`` rusage, which includes the children it waited for).

    Exit 0 or 1 counts as success (1 is bnaudit's "findings"); anything else stops the
    benchmark with the command and its status.
    """
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    _, status, usage = os.wait4(process.pid, 0)
    elapsed = time.perf_counter() - started
    code = os.waitstatus_to_exitcode(status)
    if code not in (0, 1):
        raise SystemExit(f"{' '.join(command[-3:])} exited with {code}")
    return Usage(elapsed, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024)


def predict_seconds(model, x, batch_size: int) -> float:
    """Seconds of one ``model.predict`` over ``x``, its tracing included (the statistics
    pass traces too, so the comparison is like for like)."""
    model.make_predict_function(force=True)
    started = time.perf_counter()
    model.predict(x, batch_size=batch_size, verbose=0)
    return time.perf_counter() - started
