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
marked models are audited again one at a time, each in a fresh child, and the unmarked
ones together. At ``-j 1`` the models are read in one forked worker too (a plain fork
and a pipe, not a pool: :func:`_in_forked_child`), so the same holds; only a process
that already imported TensorFlow audits in-process.

TensorFlow writes its start-up logs from C++ straight to file descriptor 2, past
``TF_CPP_MIN_LOG_LEVEL``; while models are audited that descriptor points at
``/dev/null`` unless ``--debug``. bnaudit's own messages are written after the audit.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time
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
    """Audit every (path, options) job; ``workers`` > 1 uses that many processes (0: one per CPU).

    Models are read in child processes even at ``-j 1`` (one long-lived forked worker),
    so a native crash on a hostile file costs that model only. The one exception is a
    process that already runs TensorFlow (a program calling bnaudit, or the test suite):
    forking it can deadlock, and a clean child would import TensorFlow again per run, so
    ``-j 1`` audits in-process there.
    """
    if not jobs:
        return []
    workers = min(workers or os.cpu_count() or 1, len(jobs))
    debug = auditor.options.debug
    if workers <= 1 and _start_method() != "fork":
        with native_stderr_silenced(not debug):
            return [auditor.audit(path, options) for path, options in jobs]
    return _isolated(jobs, workers, auditor)


def _isolated(jobs: Sequence[Job], workers: int, auditor: Auditor) -> list[AuditResult]:
    """Audit in ``workers`` child processes; after a crash, the model(s) a dead worker was on
    are audited again alone, each in a fresh child, and the others together; never here."""
    results, marked = _in_pool(jobs, workers, auditor)
    lost = [index for index, result in enumerate(results) if result is None]
    if not lost:
        return results  # type: ignore[return-value]
    if len(jobs) == 1:  # it was alone: that was its re-audit
        return [_died(jobs[0][0], marked.get(0, False))]
    suspects = (set(marked) & set(lost)) or set(lost)  # none marked: a worker died between audits
    for index in sorted(suspects):
        alone, hung = _in_pool([jobs[index]], 1, auditor)
        results[index] = alone[0] or _died(jobs[index][0], hung.get(0, False))
    innocent = [index for index in lost if index not in suspects]
    if innocent:  # cut short by another model's crash: together again
        again = _isolated([jobs[i] for i in innocent], min(workers, len(innocent)), auditor)
        for index, result in zip(innocent, again):
            results[index] = result
    return results  # type: ignore[return-value]


def _in_pool(jobs: Sequence[Job], workers: int, auditor: Auditor) -> tuple[list[AuditResult | None], dict[int, bool]]:
    """Results in job order, None where a worker died; and the jobs a dead worker was on,
    each with whether it ran out of time (its marker is as old as the time limit).

    A forked worker inherits ``auditor`` itself (its plugin manager, plugins registered
    in-process included, and its rules: nothing is built again); a forkserver or spawned
    one builds its own from ``auditor.options``.
    """
    import tempfile

    forked = _start_method() == "fork"
    if forked:
        _worker["auditor"] = auditor
    with tempfile.TemporaryDirectory(prefix="bnaudit-jobs-") as markers:
        if workers == 1 and forked:
            results = _in_forked_child(jobs, auditor.options, markers)
        else:
            results = _in_executor(jobs, workers, auditor.options, markers)
        now = time.time()
        return results, {int(name): now - os.stat(Path(markers, name)).st_mtime >= STATIC_SECONDS - 1 for name in os.listdir(markers)}


def _in_executor(jobs: Sequence[Job], workers: int, options: AuditOptions, markers: str) -> list[AuditResult | None]:
    """``workers`` processes of a ``ProcessPoolExecutor`` (``-j N``, or any run after TensorFlow started)."""
    import multiprocessing  # only here: a -j 1 static run starts without it
    from concurrent.futures import ProcessPoolExecutor
    from concurrent.futures.process import BrokenProcessPool

    context = multiprocessing.get_context(_start_method())
    if context.get_start_method() == "forkserver":
        context.set_forkserver_preload([__name__])
    inherited = context.get_start_method() == "fork"
    results: list[AuditResult | None] = []
    threads = max(1, (os.cpu_count() or 1) // workers)
    with ProcessPoolExecutor(workers, mp_context=context, initializer=_start_worker, initargs=(options, threads, inherited)) as pool:
        futures = [pool.submit(_audit_in_worker, index, path, job_options, markers) for index, (path, job_options) in enumerate(jobs)]
        for (path, _), future in zip(jobs, futures):
            try:
                results.append(future.result())
            except BrokenProcessPool:
                results.append(None)
            except Exception as exc:  # a result that cannot travel back, or a bug: this model only
                results.append(_internal_error(path, exc))
    return results


def _in_forked_child(jobs: Sequence[Job], options: AuditOptions, markers: str) -> list[AuditResult | None]:
    """One forked child audits the jobs in turn and sends each result down a pipe as it
    is done (pickled, as a pool would); None for each job whose result never came.

    The same isolation as a one-process pool, without what a pool adds to every run:
    importing ``multiprocessing`` and ``concurrent.futures``, two queues with their
    feeder threads, a manager thread, and the shutdown handshake, together about a
    tenth of a second of a static check's wall time on a 2-core machine (docs/ci.md,
    "Start-up"). The child never returns into the caller: it ends with ``os._exit``.
    """
    import pickle

    for stream in (sys.stdout, sys.stderr):  # what is buffered here must not be written twice
        stream.flush()
    readable, writable = os.pipe()
    pid = os.fork()
    if pid == 0:
        status = 1
        try:
            os.close(readable)
            _start_worker(options, os.cpu_count() or 1, inherited=True)
            with os.fdopen(writable, "wb") as pipe:
                for index, (path, job_options) in enumerate(jobs):
                    try:
                        result = _audit_in_worker(index, path, job_options, markers)
                        message = pickle.dumps(result, pickle.HIGHEST_PROTOCOL)
                    except Exception as exc:  # a result that cannot travel back, or a bug: this model only
                        message = pickle.dumps(_internal_error(path, exc), pickle.HIGHEST_PROTOCOL)
                    pipe.write(message)
                    pipe.flush()
            status = 0
        finally:
            for stream in (sys.stdout, sys.stderr):
                with contextlib.suppress(Exception):
                    stream.flush()
            os._exit(status)
    os.close(writable)
    results: list[AuditResult | None] = []
    with os.fdopen(readable, "rb") as pipe:
        while len(results) < len(jobs):
            try:
                results.append(pickle.load(pipe))
            except Exception:  # the child died: nothing more, or half a result, came
                break
    os.waitpid(pid, 0)
    return results + [None] * (len(jobs) - len(results))


def _internal_error(path: Path, exc: Exception) -> AuditResult:
    return AuditResult(str(path), errors=[ModelError(f"internal error: {type(exc).__name__}: {exc}", hint="run with -j 1 --debug")])


def _start_method() -> str:
    """'fork' while no TensorFlow thread exists here (the static path): a worker starts in
    milliseconds. Otherwise a clean 'forkserver' ('spawn' where there is none)."""
    if "tensorflow" not in sys.modules and hasattr(os, "fork"):  # multiprocessing offers fork wherever os has it
        return "fork"
    import multiprocessing

    return "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"


def _died(path: Path, hung: bool = False) -> AuditResult:
    if hung:
        message = f"reading this model did not finish in {STATIC_SECONDS} s (an endless loop in a native library); the process was stopped"
    else:
        message = "the process auditing this model died (a crash in a native library)"
    return AuditResult(str(path), errors=[ModelError(message, hint="run with -j 1 --debug to see why")])


_worker: dict[str, Auditor] = {}


#: Seconds a static-only audit of one model may take in a worker (``BNAUDIT_STATIC_SECONDS``);
#: the static checks take milliseconds per model, ResNet-sized ones well under a second.
STATIC_SECONDS = int(os.environ.get("BNAUDIT_STATIC_SECONDS", "") or 120)

#: Address space a static-only audit may add to a worker: configs are capped at 16 MiB and
#: BN vectors at what the file stores, so a legitimate audit stays far below this.
STATIC_MEMORY_BYTES = 1 << 30


@contextlib.contextmanager
def _memory_ceiling(extra: int | None) -> Iterator[None]:
    """Cap this process's address space at its current size plus ``extra`` bytes (Linux;
    nothing where ``/proc/self/statm`` or ``RLIMIT_AS`` is missing, or ``extra`` is None)."""
    try:
        import resource

        with open("/proc/self/statm") as statm:
            current = int(statm.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
        soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    except (ImportError, OSError, ValueError, AttributeError):
        extra = None
    if extra is None:
        yield
        return
    ceiling = current + extra
    if hard != resource.RLIM_INFINITY:
        ceiling = min(ceiling, hard)
    resource.setrlimit(resource.RLIMIT_AS, (ceiling, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


#: What TensorFlow (and the oneDNN/OpenMP kernels under it) read for their thread counts.
THREAD_VARIABLES = ("TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS", "OMP_NUM_THREADS")


def _start_worker(options: AuditOptions, threads: int, inherited: bool) -> None:
    """The worker's one :class:`Auditor`: inherited through fork, else built once here."""
    for variable in THREAD_VARIABLES:  # before TensorFlow is imported; the user's choice wins
        os.environ.setdefault(variable, str(threads))
    if not options.debug:
        _point_stderr_at_devnull()
    if not inherited:
        _worker["auditor"] = Auditor(options)


def _audit_in_worker(index: int, path: Path, options: AuditOptions, markers: str) -> AuditResult:
    """Audit one model, with a marker file naming it while it is being audited.

    A static-only audit runs under an alarm whose default action ends the process: an
    endless loop inside libhdf5 (a corrupt attribute can cause one) never returns to
    Python, so only the process's end stops it; the model then counts as hung. It also
    runs under an address-space ceiling: a corrupt variable-length string can make
    libhdf5 allocate gigabytes before it checks anything, and with the ceiling that
    allocation fails and the read is one clean error. Audits that run the model
    (``--data``, ``--inference``) may legitimately take hours and gigabytes: neither.
    """
    marker = Path(markers, str(index))
    marker.touch()
    static = not (options.data or options.inference or options.runtime.statistics.stats)
    if static:
        signal.signal(signal.SIGALRM, signal.SIG_DFL)
        signal.alarm(STATIC_SECONDS)
    try:
        with _memory_ceiling(STATIC_MEMORY_BYTES if static else None):
            result = _worker["auditor"].audit(path, options)
    finally:
        if static:
            signal.alarm(0)
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
