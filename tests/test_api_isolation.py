"""``bnaudit.audit()`` and ``bnaudit.audit_many()`` read models in a child process: a file
that crashes or hangs a native library costs its own result, never the caller's process.

Each case runs a real Python program calling the API (the process boundary is what is
tested: had the caller crashed, the program would end with a signal, not exit 0).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT, SAMPLES

#: A rule that crashes its process with a real SIGSEGV (a NULL read through ctypes) on
#: models named segv*, and reports the process it ran in otherwise.
CRASH_PLUGIN = '''
import ctypes
import os

import bnaudit
from bnaudit import Severity, rule


@rule("PR301", "crash-probe", Severity.INFO)
def crash_probe(ctx):
    """Segfaults on models named segv*; says where it ran on the others."""
    if ctx.model_path.name.startswith("segv"):
        ctypes.string_at(0)
    yield ctx.finding("", "probe", details={"pid": os.getpid()})


@bnaudit.hookimpl
def bnaudit_register_rules():
    return [crash_probe]
'''

#: The caller: audits what argv names, prints each result as one JSON line, and its own pid.
CALLER = '''
import json, os, sys
{prelude}
import bnaudit

paths = sys.argv[1:]
results = bnaudit.audit_many(paths, select=["BN105", "PR301"], plugins=["crash_plugin"])
single = bnaudit.audit(paths[0], select=["BN105", "PR301"], plugins=["crash_plugin"])
trusted = bnaudit.audit(paths[-1], select=["BN105", "PR301"], plugins=["crash_plugin"], in_process=True)
for result in [*results, single, trusted]:
    print(json.dumps({{
        "path": os.path.basename(result.path),
        "errors": [e.message for e in result.errors],
        "findings": sorted([f.code, f.layer] for f in result.findings),
        "pids": sorted({{f.details["pid"] for f in result.findings if f.code == "PR301"}}),
    }}))
print(json.dumps({{"caller": os.getpid()}}))
'''

DIED = "the process auditing this model died (a crash in a native library)"


def _hostile_models(directory: Path) -> list[Path]:
    """A real endless loop in libhdf5 (the fuzzer's seed 10 #612), a real multi-gigabyte
    allocation in libhdf5 (seed 11 #5745), a real segmentation fault, and a good model."""
    sys.path.insert(0, str(ROOT / "tests" / "fuzz"))
    try:
        from mutate import make_case
    finally:
        sys.path.pop(0)
    segv = directory / "segv_model.keras"
    segv.write_bytes((SAMPLES / "clean_conv_bn_relu.keras").read_bytes())
    good = directory / "good.keras"
    good.write_bytes((SAMPLES / "consecutive_bn.keras").read_bytes())
    return [make_case(10, 612, directory), make_case(11, 5745, directory), segv, good]


def _call_api(tmp_path: Path, prelude: str = "") -> tuple[list[dict], int]:
    (tmp_path / "crash_plugin.py").write_text(CRASH_PLUGIN)
    (tmp_path / "caller.py").write_text(CALLER.format(prelude=prelude))
    models = _hostile_models(tmp_path)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(tmp_path)]), "BNAUDIT_STATIC_SECONDS": "3"}
    proc = subprocess.run([sys.executable, "caller.py", *map(str, models)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    return lines[:-1], lines[-1]["caller"]


def _assert_contained(results: list[dict], caller: int) -> None:
    hung = "reading this model did not finish in 3 s (an endless loop in a native library); the process was stopped"
    corrupt = "the 'model_config' attribute is corrupt (Can't synchronously read data (memory allocation failed"
    *many, single, trusted = results
    assert [r["path"] for r in many] == ["m612.h5", "m5745.h5", "segv_model.keras", "good.keras"]
    assert many[0]["errors"] == [hung] and single["errors"] == [hung]
    assert len(many[1]["errors"]) == 1 and many[1]["errors"][0].startswith(corrupt)
    assert many[2]["errors"] == [DIED] and many[2]["findings"] == []
    assert many[3]["errors"] == [] and many[3]["findings"] == [["BN105", "bn2"], ["PR301", ""]]
    assert many[3]["pids"] != [caller]  # read in a child
    assert trusted["findings"] == many[3]["findings"] and trusted["pids"] == [caller]  # in_process=True: here


def test_a_model_that_crashes_or_hangs_a_native_library_costs_its_own_result(tmp_path):
    _assert_contained(*_call_api(tmp_path))


@pytest.mark.slow
def test_the_caller_survives_with_tensorflow_running(tmp_path):
    """A program that already runs TensorFlow is not forked (it can deadlock): its models
    are read in children of a clean 'forkserver' process, with the same outcome."""
    _assert_contained(*_call_api(tmp_path, prelude="import tensorflow"))


def test_audit_many_checks_its_own_keywords():
    import bnaudit
    from bnaudit.options import OptionsError

    with pytest.raises(OptionsError, match=r"^jobs: in_process=True audits in this process; give jobs=1 or in_process=False$"):
        bnaudit.audit_many([SAMPLES], jobs=2, in_process=True)
    with pytest.raises(OptionsError, match=r"^jobs: expected a count of processes \(0: one per CPU\), got -1$"):
        bnaudit.audit_many([SAMPLES], jobs=-1)
    with pytest.raises(OptionsError, match="batchsize"):
        bnaudit.audit_many([SAMPLES], batchsize=8)


def test_audit_many_reports_paths_that_name_no_model_first(tmp_path):
    import bnaudit

    results = bnaudit.audit_many([SAMPLES / "consecutive_bn.keras", tmp_path / "missing.h5"], select=["BN105"], jobs=2)
    assert [(Path(r.path).name, [e.message for e in r.errors], [(f.code, f.layer) for f in r.findings]) for r in results] == [
        ("missing.h5", ["no such file or directory"], []),
        ("consecutive_bn.keras", [], [("BN105", "bn2")]),
    ]



POOL_CALLER = """
import multiprocessing, sys
import bnaudit

def findings(path):
    return [(f.code, f.layer) for f in bnaudit.audit(path, select=["BN105"]).findings]

if __name__ == "__main__":
    with multiprocessing.get_context("fork").Pool(1) as pool:
        print(pool.map(findings, sys.argv[1:]))
"""


def test_a_multiprocessing_pool_worker_can_call_audit(tmp_path):
    """A daemonic process may start no child: it audits in its own process, not with an error."""
    (tmp_path / "pool_caller.py").write_text(POOL_CALLER)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "pool_caller.py", str(SAMPLES / "consecutive_bn.keras")], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert (proc.returncode, proc.stdout) == (0, "[[('BN105', 'bn2')]]\n"), proc.stderr[-2000:]


def test_a_directory_a_list_and_a_severity_as_a_user_meets_them(tmp_path):
    """audit() of a directory says to use audit_many(); of a list raises naming the
    parameter; a finding's severity prints as the reports write it."""
    import bnaudit
    from bnaudit.options import OptionsError

    result = bnaudit.audit(tmp_path, in_process=True)
    assert [(e.message, e.hint) for e in result.errors] == [
        ("a directory, not a model file or SavedModel directory", "audit the models in it with bnaudit check DIR or bnaudit.audit_many(DIR)")
    ]
    with pytest.raises(OptionsError, match=r"^path: expected one model's path, got list \(audit_many\(\) takes several\)$"):
        bnaudit.audit([SAMPLES / "dropout_before_bn.keras"])
    [finding] = bnaudit.audit(SAMPLES / "dropout_before_bn.keras", select=["BN101"], in_process=True).findings
    assert f"{finding.code} {finding.severity}" == "BN101 warning"
