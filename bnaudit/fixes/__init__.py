"""``bnaudit fix``: write a corrected copy of a model, then prove it is right.

Each fix is one module with ``NAME``, the rule ``CODES`` it answers and
``apply(copy) -> (changes, refusals)`` over a :class:`~.copy.ModelCopy`; this module
checks the request, runs the fixes in a safe order (unbake, recalibrate, absorb-bias,
fold: statistics are measured with the model as it will be served, a bias is absorbed
into statistics already recalibrated, and folding, which removes the BNs, comes last),
writes the copy atomically and hands it to :mod:`.proof`. Unbake, absorb-bias and fold
edit only the config and the arrays, without TensorFlow; recalibration runs the model.
"""

from __future__ import annotations

import importlib.util
import os
import tempfile
from pathlib import Path
from typing import Any

from ..engine import Auditor, read_batchnorm_vectors
from ..loaders import LoadError
from ..parallel import reading_limits
from . import absorb
from . import fold as folding
from . import recalibrate as recalibration
from . import unbake as unbaking
from .changes import FixReport
from .copy import FixError, ModelCopy
from .proof import prove

__all__ = ["FixError", "FixReport", "fix"]

#: Every fix in the order it runs.
ORDER = (unbaking.NAME, recalibration.NAME, absorb.NAME, folding.NAME)


def fix(
    path: str | Path,
    out: str | Path,
    *,
    unbake: bool = False,
    absorb_bias: bool = False,
    fold: bool = False,
    recalibrate: bool = False,
    all_fixes: bool = False,
    data: str | None = None,
    stats: str | None = None,
    batch_size: int | None = None,
    max_samples: int | None = None,
    verify: bool = True,
    unsafe_load: bool = False,
    seed: int = 0,
) -> FixReport:
    """Write a fixed copy of the model at ``path`` to ``out`` and return what changed.

    ``all_fixes`` applies every fix the findings call for: unbake (BN106), absorb-bias
    (BN102) and, given ``data`` or ``stats``, recalibrate; never fold, which changes
    what the model is (inference only). ``data`` is what ``--data`` takes (.npy, .npz,
    an image directory, module:function); ``stats`` a complete statistics file merged
    by ``bnaudit merge`` from passes with ``--upstream training``.

    :returns: the :class:`FixReport` (changes, refusals, proof); ``out`` holds the copy.
    :raises LoadError: (or its subclass :class:`FixError`) for a model, request or data
        that cannot be handled; nothing is written then, and the input is never written.
    """
    path, out = Path(path), Path(out)
    wanted = _requested(unbake, absorb_bias, fold, recalibrate, all_fixes, data, stats)
    _check_paths(path, out)
    with reading_limits():  # bounded in the child process of `bnaudit fix`
        graph = Auditor().load(path)
        read_batchnorm_vectors(graph)  # a file `check` refuses is refused here
    if all_fixes:
        wanted |= {unbaking.NAME, absorb.NAME}
    options = {"data": data, "batch_size": batch_size, "max_samples": max_samples, "unsafe_load": unsafe_load, "seed": seed}
    report = FixReport(path=str(path), output=str(out), format=graph.format, fixes=[name for name in ORDER if name in wanted])
    with tempfile.TemporaryDirectory(prefix=".bnaudit-fix-", dir=out.parent) as workdir:
        copy = ModelCopy(path, graph, Path(workdir))
        try:
            for name in report.fixes:
                if name == recalibration.NAME:
                    measured = recalibration.load_statistics(stats, copy) if stats else _measure(copy, path, Path(workdir), bool(report.changes), options)
                    changes, refused = recalibration.apply(copy, measured)
                else:
                    changes, refused = {unbaking.NAME: unbaking, absorb.NAME: absorb, folding.NAME: folding}[name].apply(copy)
                if refused and not changes and name in (folding.NAME, absorb.NAME):
                    nothing = {folding.NAME: folding.NOTHING, absorb.NAME: absorb.NOTHING}[name]
                    raise FixError(f"{nothing} ({refused[0].layer}: {refused[0].why})", "nothing was written")
                report.changes += changes
                report.refused += refused
            report.dropped_optimizer_state = copy.dropped_optimizer
            copy.save(out)
        finally:
            copy.close()
    if verify:
        modules = {unbaking.NAME: unbaking, recalibration.NAME: recalibration, absorb.NAME: absorb, folding.NAME: folding}
        static = [code for name in report.fixes for code in modules[name].CODES if code in ("BN102", "BN106", "BN202")]
        changed = [name for name in report.fixes if any(change.fix == name for change in report.changes)]
        report.proof = prove(path, out, graph, changed, static, {**options, "data": data})
    else:
        report.proof.detail = "not asked for (--no-verify)"
    return report


def _requested(unbake, absorb_bias, fold, recalibrate, all_fixes, data, stats) -> set[str]:
    wanted = {name for name, on in ((unbaking.NAME, unbake), (absorb.NAME, absorb_bias), (folding.NAME, fold), (recalibration.NAME, recalibrate)) if on}
    if not wanted and not all_fixes:
        raise FixError("no fix chosen", "give --unbake, --absorb-bias, --fold, --recalibrate --data DATA, or --all")
    if data and stats:
        raise FixError("give --data (measure now) or --stats (measured before), not both")
    if recalibrate and not (data or stats):
        raise FixError("--recalibrate needs the data to measure", "give --data DATA or --stats FILE from `bnaudit merge`")
    if all_fixes and (data or stats):
        wanted.add(recalibration.NAME)
    if data and recalibration.NAME in wanted and importlib.util.find_spec("tensorflow") is None:
        raise FixError("--recalibrate --data runs the model with TensorFlow, which is not installed", 'pip install "bnaudit[tensorflow]"')
    return wanted


def _check_paths(path: Path, out: Path) -> None:
    if not path.is_file():
        raise LoadError("no such file", "check the path")
    if out.exists() and os.path.samefile(path, out) or out.resolve() == path.resolve():
        raise FixError(f"-o {out} is the input; the input is never modified", "give another output path")
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
    return recalibration.measure(stage, copy.graph, options)
