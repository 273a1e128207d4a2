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
from typing import Any, Callable, Iterator, Sequence, TypeVar

from .engine import AuditOptions, Auditor
from .loaders import LoadError
from .result import AuditResult, ModelError

Job = tuple[Path, AuditOptions]
T = TypeVar("T")


def run_options(command):
    """``-j``, ``-q`` and ``-v`` for ``bnaudit check``."""
    import click

    command = click.option("-v", "--verbose", is_flag=True, help="Also print the time each check took (stderr).")(command)
    command = click.option("-q", "--quiet", is_flag=True, help="Print findings and errors only: no notes, no summary.")(command)
    return click.option(
        "-j", "--jobs", type=click.IntRange(min=0), default=1, show_default=True, help="Audit models in N processes (0: one per CPU)."
    )(command)


def audit_models(jobs: Sequence[Job], workers: int, auditor: Auditor, isolate: bool = False) -> list[AuditResult]:
    """Audit every (path, options) job; ``workers`` > 1 uses that many processes (0: one per CPU).

    Models are read in child processes even at ``-j 1`` (one long-lived forked worker),
    so a native crash on a hostile file costs that model only. The command line makes one
    exception: in a process that already runs TensorFlow (the test suite calling the
    command), forking can deadlock and a clean child would import TensorFlow again per
    run, so ``-j 1`` audits in-process there. ``isolate=True`` (:func:`bnaudit.audit`'s
    default) makes no exception: a clean 'forkserver' child reads the models there. A
    daemonic process (a ``multiprocessing.Pool`` worker calling bnaudit) may not start
    children at all: it audits in-process.
    """
    if not jobs:
        return []
    workers = min(workers or os.cpu_count() or 1, len(jobs))
    debug = auditor.options.debug
    if (workers <= 1 and _start_method() != "fork" and not isolate) or _daemonic():
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
    each with whether it ran out of time (its marker, still empty, is as old as the time
    limit: an audit that runs the model writes to it once its limited first read is done).

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
        found = {int(name): os.stat(Path(markers, name)) for name in os.listdir(markers)}
        return results, {index: marker.st_size == 0 and now - marker.st_mtime >= STATIC_SECONDS - 1 for index, marker in found.items()}


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
        with _main_not_imported():  # the workers start as the jobs are submitted
            futures = [pool.submit(_audit_in_worker, index, path, job_options, markers) for index, (path, job_options) in enumerate(jobs)]
        for (path, _), future in zip(jobs, futures):
            try:
                results.append(future.result())
            except BrokenProcessPool:
                results.append(None)
            except Exception as exc:  # a result that cannot travel back, or a bug: this model only
                results.append(_internal_error(path, exc))
    return results


def _daemonic() -> bool:
    """True in a daemonic process (a ``multiprocessing.Pool`` worker), which may start no child."""
    module = sys.modules.get("multiprocessing")  # never imported: no multiprocessing worker either
    return module is not None and module.current_process().daemon


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
    if sys.modules.get("tensorflow") is None and hasattr(os, "fork"):  # None: marked not importable; fork wherever os has it
        return "fork"
    import multiprocessing

    return "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"


@contextlib.contextmanager
def _main_not_imported() -> Iterator[None]:
    """Start 'forkserver' and 'spawn' children here without them importing the caller's script.

    multiprocessing tells such a child to import the ``__main__`` script it was started
    from (as ``__mp_main__``), which runs the whole script again unless it is guarded by
    ``if __name__ == "__main__"``; a program calling :func:`bnaudit.audit` owes bnaudit no
    such guard, and bnaudit's children need nothing from the script. A ``__main__`` whose
    spec is named ``__main__`` is one multiprocessing skips, so the script's spec reads
    so while children start. Forked children are copies and import nothing: untouched.
    """
    import importlib.machinery

    main = sys.modules.get("__main__")
    if main is None or _start_method() == "fork":
        yield
        return
    spec = getattr(main, "__spec__", None)
    main.__spec__ = importlib.machinery.ModuleSpec("__main__", None)
    try:
        yield
    finally:
        main.__spec__ = spec


def _died(path: Path, hung: bool = False) -> AuditResult:
    return AuditResult(str(path), errors=[ModelError(_died_message(hung), hint="run with -j 1 --debug to see why")])


def _died_message(hung: bool) -> str:
    """What a model gets when the child process reading it was stopped (``hung``) or died."""
    if hung:
        return f"reading this model did not finish in {STATIC_SECONDS} s (an endless loop in a native library); the process was stopped"
    return "the process auditing this model died (a crash in a native library)"


_worker: dict[str, Auditor] = {}

#: True in a child process bnaudit started to read models: :func:`reading_limits` applies there only.
_in_child = False


#: Seconds a static-only audit of one model may take in a worker (``BNAUDIT_STATIC_SECONDS``);
#: the static checks take milliseconds per model, ResNet-sized ones well under a second.
STATIC_SECONDS = int(os.environ.get("BNAUDIT_STATIC_SECONDS", "") or 120)

#: Address space the reading of one model may add to a child process. The static audit
#: of the largest keras.applications model adds 35 MiB (NASNetLarge as a Keras 3 .h5; 29 MiB
#: as .keras, 27 MiB for EfficientNetB7): ten times that leaves room for bigger custom
#: models, and keeps a corrupt heap object that libhdf5 sizes from the file (a
#: ``weight_names`` string declaring hundreds of MiB) a failed allocation, not a process
#: grown past the fuzzer's 500 MiB bound (docs/security.md).
STATIC_MEMORY_BYTES = 384 << 20


@contextlib.contextmanager
def reading_limits(path: str | Path) -> Iterator[None]:
    """Bound the reading of a model file, in a child process bnaudit started; elsewhere nothing.

    An alarm whose default action ends the process after :data:`STATIC_SECONDS`: an
    endless loop inside libhdf5 (a corrupt attribute can cause one) never returns to
    Python, so only the process's end stops it. An address-space ceiling
    (:data:`STATIC_MEMORY_BYTES` more than now): a corrupt variable-length string can make
    libhdf5 allocate gigabytes before it checks anything; under the ceiling that
    allocation fails and the read is one clean error. In the caller's own process the
    alarm would end the caller, so neither applies there. ``path`` is the model read:
    a SavedModel directory gets the alarm only, since its variables are read with
    TensorFlow's checkpoint reader, whose import alone reserves gigabytes of address
    space (the loader checks each tensor's declared size in the index before reading).
    """
    if not _in_child:
        yield
        return
    signal.signal(signal.SIGALRM, signal.SIG_DFL)
    signal.alarm(STATIC_SECONDS)
    try:
        with _memory_ceiling(None if Path(path).is_dir() else STATIC_MEMORY_BYTES):
            yield
    finally:
        signal.alarm(0)


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
    global _in_child
    _in_child = True
    for variable in THREAD_VARIABLES:  # before TensorFlow is imported; the user's choice wins
        os.environ.setdefault(variable, str(threads))
    if not options.debug:
        _point_stderr_at_devnull()
    if not inherited:
        _worker["auditor"] = Auditor(options)


def _audit_in_worker(index: int, path: Path, options: AuditOptions, markers: str) -> AuditResult:
    """Audit one model, with a marker file naming it while it is being audited.

    A static-only audit runs whole under :func:`reading_limits`; if they stop it, the
    model counts as hung. An audit that runs the model (``--data``, ``--inference``) may
    legitimately take hours and gigabytes: only its first read of the file (the config,
    every BN vector: where a hostile file crashes or hangs a native library) runs under
    them; then the marker says so, and the audit runs unbounded.
    """
    marker = Path(markers, str(index))
    marker.touch()
    auditor = _worker["auditor"]
    if not (options.data or options.inference or options.runtime.statistics.stats):
        with reading_limits(path):
            result = auditor.audit(path, options)
    else:
        with reading_limits(path):
            unreadable = auditor.first_read(path)
        marker.write_text("read")
        result = unreadable or auditor.audit(path, options)
    marker.unlink()
    return result


class ChildDied(LoadError):
    """The child process running a command's work on a model died or was stopped."""


class Stopped(BaseException):
    """SIGTERM or SIGINT reached a process of :func:`call_in_child`: the work unwinds
    (``finally`` blocks, temporary directories) and the process ends. A ``BaseException``,
    so no ``except Exception`` on the way swallows it."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


#: The signals that stop a command's work, in the command's process and in its child.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
#: Linux ``prctl`` option: the signal the kernel sends this process when its parent ends.
_PR_SET_PDEATHSIG = 1
#: In a child of :func:`call_in_child`, the pid of the process that started it; None elsewhere.
_parent: int | None = None


def call_in_child(function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """``function(*args, **kwargs)`` run in a forked child process: its value, or its exception raised here.

    For a command's work on one model file (``bnaudit fix``): a native crash or endless
    loop while reading the file costs the child, and this process says so in one line.
    The function's own reading runs under :func:`reading_limits` there. Its value and
    exception must pickle. As :func:`audit_models` at ``-j 1``, a process that already
    runs TensorFlow (the test suite calling the command) cannot fork safely, and a
    daemonic one may not start children: the call runs here. Raises :class:`ChildDied` (a :class:`~bnaudit.loaders.LoadError`) when
    the child ended without an answer.

    The child does not outlive this process: on Linux the kernel sends it SIGTERM when
    this process ends, however it ends (SIGKILL included, ``prctl(PR_SET_PDEATHSIG)``),
    and :func:`unless_orphaned` lets it write nothing once orphaned. SIGTERM or
    SIGINT, here or in the child, makes the child unwind (:class:`Stopped`: its
    temporary files are removed); this process waits for that, then ends by the same
    signal. Called from a thread other than the main one, this process installs no
    handler (Python allows none there) and ends as the signal's default action says.
    """
    import multiprocessing

    if _start_method() != "fork" or _daemonic():
        return function(*args, **kwargs)
    context = multiprocessing.get_context("fork")
    receive, send = context.Pipe(duplex=False)
    child = context.Process(target=_answer, args=(send, os.getpid(), function, args, kwargs))  # not daemonic: the proof starts its own
    previous = _handle_stop_signals(_stop_here)
    try:
        child.start()
        send.close()
        ok, value = receive.recv()
    except EOFError:  # it died before answering
        child.join()
        raise ChildDied(_died_message(child.exitcode == -signal.SIGALRM), "run with --debug to see why") from None
    except Stopped as stopped:
        _handle_stop_signals(signal.SIG_DFL)  # a second signal ends this process now; the child still unwinds
        if child.pid is not None:
            child.terminate()
            child.join()
        os.kill(os.getpid(), stopped.signum)  # end as the signal asked, for the shell and `timeout` to see
        raise
    finally:
        receive.close()
        _restore(previous)
    child.join()
    if ok:
        return value
    raise value


def _stop_here(signum: int, frame: Any) -> None:
    raise Stopped(signum)


def _stop_child(signum: int, frame: Any) -> None:
    """In the child: unwind once; signals that come while it unwinds (the parent's
    SIGTERM after a Ctrl-C that reached both) must not cut its clean-up short."""
    _handle_stop_signals(signal.SIG_IGN)
    raise Stopped(signum)


def _handle_stop_signals(handler: Any) -> dict[int, Any]:
    """Set ``handler`` for :data:`STOP_SIGNALS`; the handlers before (empty outside the main thread)."""
    try:
        return {signum: signal.signal(signum, handler) for signum in STOP_SIGNALS}
    except ValueError:  # not the main thread
        return {}


def _restore(previous: dict[int, Any]) -> None:
    for signum, handler in previous.items():
        signal.signal(signum, handler)


def _die_with_parent(parent: int) -> None:
    """Ask the kernel for SIGTERM when the parent ends (Linux; elsewhere :func:`unless_orphaned`
    alone guards the writes); :class:`Stopped` when it ended already, before the request."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):  # no prctl: not Linux
        pass
    if os.getppid() != parent:
        raise Stopped(signal.SIGTERM)


def unless_orphaned() -> None:
    """Raise :class:`Stopped` in a child of :func:`call_in_child` whose parent has ended;
    called just before a write into the user's files, so that a run whose command was
    killed writes nothing (on Linux the kernel's SIGTERM stops it too; this covers the
    systems without ``PR_SET_PDEATHSIG`` and a signal still on its way). Outside such a
    child, nothing."""
    if _parent is not None and os.getppid() != _parent:
        raise Stopped(signal.SIGTERM)


def _answer(send: Any, parent: int, function: Callable[..., Any], args: tuple, kwargs: dict) -> None:
    """In the child: run ``function`` and send back (True, value) or (False, exception);
    stopped (:class:`Stopped`), it ends once ``function`` has unwound, sending nothing."""
    global _in_child, _parent
    _in_child = True
    _parent = parent
    _handle_stop_signals(_stop_child)
    try:
        _die_with_parent(parent)
        answer = (True, function(*args, **kwargs))
    except Stopped as stopped:
        os._exit(128 + stopped.signum)
    except Exception as exc:
        answer = (False, exc)
    try:
        send.send(answer)
    except Exception as exc:  # an answer that does not pickle: its text still travels
        send.send((False, RuntimeError(f"{type(exc).__name__}: {exc}")))
    send.close()


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
