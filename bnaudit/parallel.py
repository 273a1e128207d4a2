"""Audit many models, in this process or spread over worker processes (``-j N``).

Workers are forked from the command while it has not imported TensorFlow (it never
does on the static path, so workers start in milliseconds); otherwise they come from a
clean 'forkserver' process ('spawn' where there is none): a process that forks after
TensorFlow started its threads can deadlock. Each worker builds its plugin manager and rules once and imports TensorFlow
only when a runtime rule first asks for it, then keeps it for the models that follow;
its thread pools are sized to its share of the CPUs, since N workers each using every
core would only fight over them.
Results come back in the order the models were given, so ``-j N`` reports exactly what
``-j 1`` does. A worker that dies (a native crash on a hostile file) costs only the
model it was auditing: each worker marks the model it is on, so after a crash the
marked models are audited again one at a time and the unmarked ones together.

TensorFlow writes its start-up logs from C++ straight to file descriptor 2, past
``TF_CPP_MIN_LOG_LEVEL``; while models are audited that descriptor points at
``/dev/null`` unless ``--debug``. bnaudit's own messages are written after the audit.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections import defaultdict
from pathlib import Path
from typing import Iterator, Sequence


from .engine import AuditOptions, Auditor
from .result import AuditResult, ModelError

Job = tuple[Path, AuditOptions]


def run_options(command):
    """``-j``, ``-q`` and ``-v`` for ``bnaudit check``."""
    import click

    command = click.option("-v", "--verbose", is_flag=True, help="Also print the time each check took (stderr).")(command)
    command = click.option("-q", "--quiet", is_flag=True, help="Print findings and errors only: no notes, no summary.")(command)
    return click.option(
        "-j", "--jobs", type=click.IntRange(min=0), default=1, show_default=True, help="Audit models in N processes (0: one per CPU)."
    )(command)


def audit_models(jobs: Sequence[Job], workers: int, auditor: Auditor) -> list[AuditResult]:
    """Audit every (path, options) job; ``workers`` > 1 uses that many processes (0: one per CPU)."""
    workers = min(workers or os.cpu_count() or 1, len(jobs))
    debug = auditor.options.debug
    if workers <= 1:
        with native_stderr_silenced(not debug):
            return [auditor.audit(path, options) for path, options in jobs]
    results, suspects = _in_pool(jobs, workers, auditor.options)
    lost = [index for index, result in enumerate(results) if result is None]
    suspects = (suspects & set(lost)) or set(lost)  # none marked: a worker died between audits
    for index in sorted(suspects):
        results[index] = _in_pool([jobs[index]], 1, auditor.options)[0][0] or _died(jobs[index][0])
    innocent = [index for index in lost if index not in suspects]
    if innocent:  # cut short by another model's crash: together again
        for index, result in zip(innocent, audit_models([jobs[i] for i in innocent], workers, auditor)):
            results[index] = result
    return results  # type: ignore[return-value]


def _in_pool(jobs: Sequence[Job], workers: int, options: AuditOptions) -> tuple[list[AuditResult | None], set[int]]:
    """Results in job order, None where a worker died; and the jobs a dead worker was on."""
    import multiprocessing  # only with -j: a single-process run starts without it
    import tempfile
    from concurrent.futures import ProcessPoolExecutor
    from concurrent.futures.process import BrokenProcessPool

    context = multiprocessing.get_context(_start_method())
    if context.get_start_method() == "forkserver":
        context.set_forkserver_preload([__name__])
    results: list[AuditResult | None] = []
    threads = max(1, (os.cpu_count() or 1) // workers)
    with tempfile.TemporaryDirectory(prefix="bnaudit-jobs-") as markers:
        with ProcessPoolExecutor(workers, mp_context=context, initializer=_start_worker, initargs=(options, threads)) as pool:
            futures = [pool.submit(_audit_in_worker, index, path, options, markers) for index, (path, options) in enumerate(jobs)]
            for (path, _), future in zip(jobs, futures):
                try:
                    results.append(future.result())
                except BrokenProcessPool:
                    results.append(None)
                except Exception as exc:  # a result that cannot travel back, or a bug: this model only
                    results.append(AuditResult(str(path), errors=[ModelError(f"internal error: {type(exc).__name__}: {exc}", hint="run with -j 1 --debug")]))
        return results, {int(name) for name in os.listdir(markers)}


def _start_method() -> str:
    """'fork' while no TensorFlow thread exists here (the static path): a worker starts in
    milliseconds. Otherwise a clean 'forkserver' ('spawn' where there is none)."""
    import multiprocessing

    methods = multiprocessing.get_all_start_methods()
    if "tensorflow" not in sys.modules and "fork" in methods:
        return "fork"
    return "forkserver" if "forkserver" in methods else "spawn"


def _died(path: Path) -> AuditResult:
    return AuditResult(
        str(path),
        errors=[ModelError("the process auditing this model died (a crash in a native library)", hint="run with -j 1 --debug to see why")],
    )


_worker: dict[str, Auditor] = {}


#: What TensorFlow (and the oneDNN/OpenMP kernels under it) read for their thread counts.
THREAD_VARIABLES = ("TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS", "OMP_NUM_THREADS")


def _start_worker(options: AuditOptions, threads: int) -> None:
    """The worker's one :class:`Auditor`: its plugin manager and rules, built once."""
    for variable in THREAD_VARIABLES:  # before TensorFlow is imported; the user's choice wins
        os.environ.setdefault(variable, str(threads))
    if not options.debug:
        _point_stderr_at_devnull()
    _worker["auditor"] = Auditor(options)


def _audit_in_worker(index: int, path: Path, options: AuditOptions, markers: str) -> AuditResult:
    """Audit one model, with a marker file naming it while it is being audited."""
    marker = Path(markers, str(index))
    marker.touch()
    result = _worker["auditor"].audit(path, options)
    marker.unlink()
    return result


def _point_stderr_at_devnull() -> int:
    """Send fd 2 to /dev/null; return a duplicate of what it was."""
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    os.close(devnull)
    return saved


@contextlib.contextmanager
def native_stderr_silenced(enabled: bool = True) -> Iterator[None]:
    """Drop whatever native libraries write to fd 2 inside the block (when ``enabled``)."""
    if not enabled:
        yield
        return
    saved = _point_stderr_at_devnull()
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)


def timing_lines(results: Sequence[AuditResult], wall_seconds: float) -> list[str]:
    """``-v``: seconds per check summed over the models, slowest first, then per model."""
    per_rule: dict[str, float] = defaultdict(float)
    for result in results:
        for code, seconds in result.meta.get("rule_seconds", {}).items():
            per_rule[code] += seconds
    models = f"{len(results)} model{'s' if len(results) != 1 else ''}"
    lines = [f"timings: {models} in {wall_seconds:.2f} s wall time; seconds per check, summed over the models:"]
    lines += [f"  {code:<8} {seconds:8.3f}" for code, seconds in sorted(per_rule.items(), key=lambda item: -item[1])]
    lines.append("seconds per model (loading included):")
    lines += [f"  {r.meta['seconds']:8.3f}  {r.path}" for r in results if "seconds" in r.meta]
    return lines
