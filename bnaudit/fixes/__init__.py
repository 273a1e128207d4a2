"""``bnaudit fix``: write a corrected copy of a model, then prove it is right.

Each fix is one module with ``NAME``, the rule ``CODES`` it answers and
``apply(copy) -> (changes, refusals)`` over a :class:`~.copy.ModelCopy`, listed once in
:data:`FIXES`, from which the keywords of :func:`fix`, the command's flags and ``--all``
are derived. This module checks the request, runs the fixes in a safe order (unbake, recalibrate, absorb-bias,
fold: statistics are measured with the model as it will be served, a bias is absorbed
into statistics already recalibrated, and folding, which removes the BNs, comes last),
writes the copy atomically and hands it to :mod:`.proof`. Unbake, absorb-bias and fold
edit only the config and the arrays, without TensorFlow; recalibration runs the model.
"""

from __future__ import annotations

import importlib.util
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, Callable

from ..arguments import data_problem
from ..engine import Auditor, read_batchnorm_vectors
from ..loaders import LoadError
from ..options import OptionsError, check_keywords
from ..parallel import reading_limits, unless_orphaned
from . import absorb, fold, heldout, recalibrate, unbake
from .changes import FixReport
from .copy import FixError, ModelCopy
from .proof import prove

__all__ = ["FIXES", "Fix", "FixError", "FixReport", "fix"]


@dataclass(frozen=True)
class Fix:
    """One fix as the API, the CLI and ``--all`` know it.

    ``module`` holds ``NAME``, ``CODES`` (the findings it answers, re-checked on the copy;
    a fix that answers none is never part of ``--all``), ``apply`` and, where refusing
    every layer means there is nothing to write, ``NOTHING`` (the message).
    """

    module: ModuleType
    #: The help of its command-line flag.
    help: str
    #: Applied only given ``--data`` or ``--stats`` (its ``apply`` takes the statistics).
    needs_data: bool = False

    @property
    def name(self) -> str:
        return self.module.NAME

    @property
    def keyword(self) -> str:
        """Its keyword argument of :func:`fix` (and :func:`bnaudit.fix`)."""
        return self.name.replace("-", "_")

    @property
    def flag(self) -> str:
        return f"--{self.name}"


#: Every fix, in the order it runs (the module docstring says why that order is safe).
FIXES = (
    Fix(unbake, "BN106: remove a fixed training=True from BN calls (config only)."),
    Fix(recalibrate, "BN301/BN202: recompute moving statistics as population statistics over --data (or --stats).", needs_data=True),
    Fix(absorb, "BN102: move the bias of the layer before a BN into its moving mean (exact)."),
    Fix(fold, "Fold each foldable BN into the Dense/convolution before it and remove it (inference-only model)."),
)
#: Codes a fix answers that the static audit of the copy re-checks without TensorFlow.
STATIC_CODES = ("BN102", "BN106", "BN202")


def fix(
    path: str | Path,
    out: str | Path,
    *,
    all_fixes: bool = False,
    data: str | os.PathLike[str] | None = None,
    stats: str | os.PathLike[str] | None = None,
    recalibrate_method: str = "one-pass",
    batch_size: int | None = None,
    max_samples: int | None = None,
    verify: bool = True,
    verify_data: str | os.PathLike[str] | None = None,
    unsafe_load: bool = False,
    seed: int = 0,
    force: bool = False,
    before_write: Callable[[FixReport], Any] | None = None,
    **chosen: bool,
) -> FixReport:
    """Write a fixed copy of the model at ``path`` to ``out`` and return what changed.

    ``chosen``: one keyword per fix of :data:`FIXES` (``unbake``, ``recalibrate``,
    ``absorb_bias``, ``fold``), True to apply it. ``all_fixes`` applies every fix the
    findings call for: unbake (BN106), absorb-bias (BN102) and, given ``data`` or
    ``stats``, recalibrate; never fold, which changes what the model is (inference
    only). ``data`` is what ``--data`` takes (.npy, .npz, an image directory,
    module:function); ``stats`` a complete statistics file merged by ``bnaudit merge``
    from passes with ``--upstream training``. ``verify_data``:
    held-out data (same forms as ``data``) on which a recalibration is measured before
    and after (``report.heldout``, see :mod:`.heldout`). ``recalibrate_method``: one of
    :data:`.recalibrate.METHODS` ("one-pass", the default, or "per-level": one pass per
    BN depth level with upstream BNs already recalibrated; ``data`` only). ``batch_size``
    (samples per batch, at least 2 for the one-pass method, whose BNs normalize by the
    batch) and ``max_samples``: of the statistics pass. ``force``:
    replace ``out`` when it exists (it is refused otherwise; ``out`` naming the input,
    under any spelling or through a link, is refused always). ``before_write``: called
    with the report once the proof has run, before the copy is moved to ``out``; what it
    raises leaves nothing written (the command renders its report there).

    The copy is built and proved in a temporary directory next to ``out`` and moved into
    place last, so ``out`` holds a copy only once its proof ran: any failure (bad data
    found by the proof, an interrupt) leaves no ``out`` and no temporary directory.

    :returns: the :class:`FixReport` (changes, refusals, proof); ``out`` holds the copy.
        When the fixes find nothing to change, nothing is written and no proof runs:
        ``report.written`` is False and ``report.changes`` empty. A fix asked for by
        name that refuses every layer it applies to raises instead (``all_fixes`` lists
        the refusals and goes on).
    :raises TypeError: for a keyword that names no fix.
    :raises bnaudit.options.OptionsError: (a ``ValueError``) naming the keyword whose value
        is of the wrong type (``fold="no"``, ``batch_size=0``).
    :raises LoadError: for a model that cannot be read; its subclasses
        :class:`FixError` for a request that cannot be met and
        :class:`~bnaudit.runtime.data.DataError` for data that is missing or does not
        fit the model. Nothing is written then, and the input is never written.
    """
    unknown = sorted(set(chosen) - {one.keyword for one in FIXES})
    if unknown:
        raise TypeError(f"fix() got an unexpected keyword argument {unknown[0]!r}")
    data, stats, verify_data = (os.fspath(value) if isinstance(value, os.PathLike) else value for value in (data, stats, verify_data))
    check_keywords(
        {**chosen, "all_fixes": all_fixes, "data": data, "stats": stats, "recalibrate_method": recalibrate_method, "batch_size": batch_size,
         "max_samples": max_samples, "verify": verify, "verify_data": verify_data, "unsafe_load": unsafe_load, "seed": seed, "force": force},
        {**dict.fromkeys((one.keyword for one in FIXES), bool), **_KEYWORD_TYPES},
    )
    if before_write is not None and not callable(before_write):
        raise OptionsError(f"option 'before_write' = {before_write!r}: expected a function of the report")
    path, out = Path(path), Path(out)
    wanted = _requested(chosen, all_fixes, data, stats)
    recalibrating = any(one.needs_data for one in wanted)
    _check_request(recalibrating, data, stats, verify, verify_data, recalibrate_method, batch_size)
    _check_paths(path, out, force)
    from ..runtime.cluster import from_environment

    if (data or verify_data) and from_environment() is not None:
        raise FixError(
            "bnaudit fix runs on one machine, and TF_CONFIG names a cluster",
            "measure on the cluster with `bnaudit stats --upstream training -o STATS.npz`, then run fix --recalibrate --stats STATS.npz without TF_CONFIG",
        )
    with reading_limits(path):  # bounded in the child process of `bnaudit fix`
        graph = Auditor().load(path)
        read_batchnorm_vectors(graph)  # a file `check` refuses is refused here
    options = {"data": data, "batch_size": batch_size, "max_samples": max_samples, "unsafe_load": unsafe_load, "seed": seed, "method": recalibrate_method}
    report = FixReport(path=str(path), output=str(out), format=graph.format, fixes=[f.name for f in wanted])
    if all_fixes and not recalibrating:
        report.needs_data = _needing_data(path)
    if verify_data:
        report.heldout = _heldout_before(path, verify_data, verify, recalibrating, options)
    with tempfile.TemporaryDirectory(prefix=".bnaudit-fix-", dir=out.parent) as workdir:
        staged = Path(workdir, f"fixed{path.suffix}")  # proved here, moved to `out` last
        copy = ModelCopy(path, graph, Path(workdir))
        try:
            for one in wanted:
                if one.needs_data:
                    measured = one.module.load_statistics(stats, copy) if stats else _measure(copy, path, Path(workdir), bool(report.changes), options)
                    changes, refused = one.module.apply(copy, measured)
                    report.recalibration = one.module.summary(recalibrate_method, copy.graph, measured)
                else:
                    changes, refused = one.module.apply(copy)
                nothing = getattr(one.module, "NOTHING", None)
                if refused and not changes and nothing and chosen.get(one.keyword):  # asked for by name, and impossible
                    raise FixError(f"{nothing}: {refused[0].layer}: {refused[0].why}", "nothing was written")
                report.changes += changes
                report.refused += refused
            report.dropped_optimizer_state = copy.dropped_optimizer
            if report.changes:
                copy.save(staged, last=True)
        finally:
            copy.close()
        if not report.changes:  # a copy equal to the input proves nothing: none is written, none is checked
            report.written = False
            report.proof.detail = "no copy written: nothing to fix"
            return report
        if verify:
            static = [code for one in wanted for code in one.module.CODES if code in STATIC_CODES]
            changed = [one.name for one in wanted if any(change.fix == one.name for change in report.changes)]
            report.proof = prove(path, staged, graph, changed, static, {**options, "data": data})
            if report.heldout is not None and not report.heldout.not_run.get("heldout"):
                heldout.after(report.heldout, path, staged, graph, options)
        else:
            report.proof.detail = "not asked for (--no-verify)"
        if before_write is not None:
            before_write(report)
        unless_orphaned()  # a run whose command was killed writes nothing
        os.replace(staged, out)
    return report


#: The types of :func:`fix`'s own keywords (the fixes' are bool), checked as runtime options are.
_KEYWORD_TYPES: dict[str, Any] = {
    "all_fixes": bool, "data": str, "stats": str, "recalibrate_method": str, "batch_size": int, "max_samples": int,
    "verify": bool, "verify_data": str, "unsafe_load": bool, "seed": int, "force": bool,
}


def _check_request(recalibrating: bool, data: str | None, stats: str | None, verify: bool, verify_data: str | None, method: str, batch_size: int | None) -> None:
    """What can be refused from the request alone, before the model is read (so in
    milliseconds, before TensorFlow starts): the method, data that is not there or that
    nothing would read, and a batch too small for the one-pass method."""
    if method not in recalibrate.METHODS:
        raise FixError(f"unknown recalibration method {method!r}", f"give one of {', '.join(recalibrate.METHODS)}")
    if method != "one-pass" and stats:
        raise FixError(f"--stats holds one-pass statistics; the {method} method measures with --data", "give --data, or the one-pass method")
    for flag, spec in (("--data", data), ("--verify-data", verify_data)):
        problem = data_problem(spec, flag) if spec else None
        if problem:
            from ..runtime.data import DataError

            raise DataError(*problem)
    if data and not recalibrating and not verify:
        raise FixError("--data is read by --recalibrate and by the proof, which --no-verify turns off", "drop one of them")
    if recalibrating and data and method == "one-pass" and batch_size is not None and batch_size < 2:
        raise FixError(
            f"one-pass recalibration at --batch-size {batch_size}: each BN would normalize by the statistics of one sample",
            "give --batch-size 2 or more, or --recalibrate-method per-level, which measures each BN in inference mode at any batch size",
        )


def _needing_data(path: Path) -> list[str]:
    """The findings on the original that only a recalibration fixes and that need no
    data to be found (BN202; BN301 needs the data itself), as "CODE layer"."""
    from ..api import audit

    codes = [code for one in FIXES if one.needs_data for code in one.module.CODES if code in STATIC_CODES]
    return [f"{f.code} {f.layer}" for f in audit(path, select=codes, in_process=True).findings]


def _requested(chosen: dict[str, bool], all_fixes: bool, data: str | None, stats: str | None) -> list[Fix]:
    """The fixes to run, in order; raises for a request that cannot be met."""
    wanted = [one for one in FIXES if chosen.get(one.keyword)]
    if not wanted and not all_fixes:
        flags = ", ".join(one.flag + (" --data DATA" if one.needs_data else "") for one in FIXES)
        raise FixError("no fix chosen", f"give {flags}, or --all")
    if data and stats:
        raise FixError("give --data (measure now) or --stats (measured before), not both")
    for one in wanted:
        if one.needs_data and not (data or stats):
            raise FixError(f"{one.flag} needs the data to measure", "give --data DATA or --stats FILE from `bnaudit merge`")
    if all_fixes:
        wanted = [one for one in FIXES if one in wanted or one.module.CODES and (data or stats or not one.needs_data)]
    if data and any(one.needs_data for one in wanted) and importlib.util.find_spec("tensorflow") is None:
        raise FixError("--recalibrate --data runs the model with TensorFlow, which is not installed", 'pip install "bnaudit[tensorflow]"')
    return wanted


def _heldout_before(path: Path, data: str, verify: bool, recalibrating: bool, options: dict[str, Any]) -> "heldout.Heldout":
    """The original's side of ``--verify-data``, measured before anything is written."""
    if not recalibrating:
        raise FixError("--verify-data measures a recalibration", "give it with --recalibrate (--data or --stats) or --all --data")
    if not verify:
        raise FixError("--verify-data is part of the proof, which --no-verify turns off", "drop one of them")
    if importlib.util.find_spec("tensorflow") is None:
        figures = heldout.Heldout(data=data)
        figures.not_run["heldout"] = 'TensorFlow is not installed (pip install "bnaudit[tensorflow]")'
        return figures
    return heldout.before(path, data, options)


def _check_paths(path: Path, out: Path, force: bool) -> None:
    if not path.is_file():
        raise LoadError("no such file", "check the path")
    if out.exists() and os.path.samefile(path, out) or out.resolve() == path.resolve():
        raise FixError(f"-o {out} is the input; the input is never modified", "give another output path")
    if os.path.lexists(out) and not force and not out.is_dir():  # a dangling link counts: replacing it is replacing what the user named
        raise FixError(f"-o {out} exists and would be replaced", "give --force to replace it, or another output path")
    if out.suffix.lower() != path.suffix.lower():
        raise FixError(f"-o {out} would change the format ({path.suffix} -> {out.suffix or 'no suffix'})", f"name the copy *{path.suffix}")
    if not out.parent.is_dir():
        raise FixError(f"-o {out}: the directory {out.parent} does not exist", "create it first")
    if out.is_dir():
        raise FixError(f"-o {out} is a directory", "give a file name")


def _measure(copy: ModelCopy, original: Path, workdir: Path, edited: bool, options: dict[str, Any]):
    """The statistics pass over the model as edited so far (the original when nothing changed yet)."""
    stage = original
    if edited:
        stage = workdir / f"stage{original.suffix}"
        copy.save(stage)
    return recalibrate.measure(stage, copy.graph, options)
