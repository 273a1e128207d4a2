"""``-j N``: the same findings as one process, TensorFlow once per worker and only when
needed, silence on the terminal, and a dying worker costing only its own model."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT, SAMPLES, run_bnaudit

#: Rules that report where they ran: in which process, whether it is a -j worker, and
#: whether TensorFlow had been imported there. PR201 loads the model with Keras; PR301
#: kills its process on a model named crash*, as a native crash in a library would.
PROBE_PLUGIN = '''
import multiprocessing
import os
import sys

import bnaudit
from bnaudit import Severity, rule


#: The command's own process: plugins are loaded there before any worker forks from it
#: (a forkserver or spawned worker imports this module itself, and is a multiprocessing child).
COMMAND_PID = os.getpid()


def where():
    worker = multiprocessing.parent_process() is not None or os.getpid() != COMMAND_PID
    return {"pid": os.getpid(), "worker": worker, "tensorflow": "tensorflow" in sys.modules}


@rule("PR101", "static-probe", Severity.INFO)
def static_probe(ctx):
    """Where a static rule runs."""
    yield ctx.finding("", "probe", details=where())


@rule("PR201", "runtime-probe", Severity.INFO, needs=("runtime",))
def runtime_probe(ctx):
    """Where a runtime rule runs, and whether TensorFlow was already there."""
    before = where()
    ctx.runtime.model
    yield ctx.finding("", "probe", details=before)


@rule("PR301", "crash-probe", Severity.INFO)
def crash_probe(ctx):
    """Dies on models named crash*; segfaults (a real SIGSEGV) on models named segv*."""
    if ctx.model_path.name.startswith("crash"):
        os._exit(3)
    if ctx.model_path.name.startswith("segv"):
        import ctypes

        ctypes.string_at(0)
    return []


@bnaudit.hookimpl
def bnaudit_register_rules():
    return [static_probe, runtime_probe, crash_probe]
'''


@pytest.fixture(scope="module")
def probe(tmp_path_factory) -> dict[str, str]:
    directory = tmp_path_factory.mktemp("probe")
    (directory / "probe_plugin.py").write_text(PROBE_PLUGIN)
    return {"PYTHONPATH": str(directory)}


def as_json(proc) -> list[dict]:
    return json.loads(proc.stdout)["models"]


def test_j2_reports_exactly_what_j1_does(tmp_path):
    expected = json.loads((SAMPLES / "expected.json").read_text())
    for name in expected:
        shutil.copy(SAMPLES / name, tmp_path / name)
    (tmp_path / "not_fetched.keras").write_text("version https://git-lfs.github.com/spec/v1\noid sha256:0\nsize 1\n")
    (tmp_path / "truncated.h5").write_bytes((SAMPLES / "dead_channels.h5").read_bytes()[:2000])
    serial = run_bnaudit("check", tmp_path, "--isolated", "--format", "json", "-j", "1")
    parallel = run_bnaudit("check", tmp_path, "--isolated", "--format", "json", "-j", "2")
    assert serial.returncode == parallel.returncode == 2  # the two unreadable files
    assert serial.stderr == parallel.stderr
    strip = lambda models: [{k: v for k, v in m.items() if k != "meta"} for m in models]  # noqa: E731 - timings differ
    assert strip(as_json(parallel)) == strip(as_json(serial))
    found = {Path(m["path"]).name: sorted((f["code"], f["layer"]) for f in m["findings"]) for m in as_json(parallel)}
    assert found == {**{name: sorted((f["code"], f["layer"]) for f in fs) for name, fs in expected.items()}, "not_fetched.keras": [], "truncated.h5": []}


def test_static_rules_run_in_workers_without_tensorflow(probe):
    models = [SAMPLES / name for name in ("bias_before_bn.keras", "consecutive_bn.h5", "frozen_bn.keras", "dead_channels.h5")]
    serial = as_json(run_bnaudit("check", *models, "--isolated", "--format", "json", "-p", "probe_plugin", "--select", "PR101", "-j", "1", env=probe))
    parallel = as_json(run_bnaudit("check", *models, "--isolated", "--format", "json", "-p", "probe_plugin", "--select", "PR101", "-j", "2", env=probe))
    assert [m["findings"][0]["details"]["worker"] for m in serial + parallel] == [True] * 8  # -j 1 reads in a child too
    assert len({m["findings"][0]["details"]["pid"] for m in serial}) == 1  # one long-lived worker
    assert not any(m["findings"][0]["details"]["tensorflow"] for m in serial + parallel)


@pytest.mark.slow
def test_tensorflow_is_imported_once_per_worker_and_its_noise_stays_off_the_terminal(probe):
    models = [SAMPLES / name for name in ("clean_conv_bn_relu.keras", "bias_before_bn.keras", "clean_sequential_dense.keras", "consecutive_bn.keras")]
    proc = run_bnaudit("check", *models, "--isolated", "--inference", "--format", "json", "-p", "probe_plugin", "--select", "PR201", "-j", "2", env=probe)
    assert proc.returncode == 0
    assert proc.stderr == ""  # nothing from TensorFlow
    runs: dict[int, list[bool]] = {}
    for model in as_json(proc):
        details = model["findings"][0]["details"]
        assert details["worker"]
        runs.setdefault(details["pid"], []).append(details["tensorflow"])
    assert all(seen[0] is False and all(seen[1:]) for seen in runs.values()), runs  # imported by each worker's first model only


def test_a_worker_that_dies_costs_only_its_own_model(probe, tmp_path):
    for name in ("bias_before_bn.keras", "dropout_before_bn.keras", "consecutive_bn.keras", "frozen_bn.keras", "nested_transfer.keras"):
        shutil.copy(SAMPLES / name, tmp_path / name)
    shutil.copy(SAMPLES / "clean_conv_bn_relu.keras", tmp_path / "crash_me.keras")
    shutil.copy(SAMPLES / "clean_conv_bn_relu.keras", tmp_path / "crash_too.keras")
    proc = run_bnaudit("check", tmp_path, "--isolated", "--format", "json", "-p", "probe_plugin", "--select", "BN1,PR301", "-j", "2", env=probe)
    assert proc.returncode == 2
    found = {Path(m["path"]).name: ({(f["code"], f["layer"]) for f in m["findings"]}, [e["message"] for e in m["errors"]]) for m in as_json(proc)}
    assert found == {
        "bias_before_bn.keras": ({("BN102", "bn1"), ("BN102", "bn_fc")}, []),
        "consecutive_bn.keras": ({("BN105", "bn2")}, []),
        "crash_me.keras": (set(), ["the process auditing this model died (a crash in a native library)"]),
        "crash_too.keras": (set(), ["the process auditing this model died (a crash in a native library)"]),
        "dropout_before_bn.keras": ({("BN101", "bn2")}, []),
        "frozen_bn.keras": ({("BN108", "bn1")}, []),
        "nested_transfer.keras": ({("BN102", "base/stem_bn")}, []),
    }
    assert proc.stderr.startswith(f"bnaudit: error: {tmp_path / 'crash_me.keras'}: the process auditing this model died")


def test_each_worker_caps_tensorflow_threads_at_its_share_of_the_cpus(tmp_path):
    """-j N with --data must not have N TensorFlows each using every core: the thread
    variables TensorFlow and OpenMP read are set in each worker before it can import them."""
    (tmp_path / "threads_probe.py").write_text(
        "import os\n"
        "import bnaudit\n"
        "from bnaudit import Severity, rule\n\n"
        "@rule('THR001', 'thread-settings', Severity.INFO)\n"
        "def probe(ctx):\n"
        "    names = ('TF_NUM_INTRAOP_THREADS', 'TF_NUM_INTEROP_THREADS', 'OMP_NUM_THREADS')\n"
        "    yield ctx.finding(ctx.graph.batchnorms()[0], ' '.join(f'{n}={os.environ.get(n)}' for n in names))\n\n"
        "@bnaudit.hookimpl\n"
        "def bnaudit_register_rules():\n"
        "    return [probe]\n"
    )
    models = [SAMPLES / "dropout_before_bn.keras", SAMPLES / "clean_conv_bn_relu.keras"]
    env = {name: "" for name in ("TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS", "OMP_NUM_THREADS")}
    clean = {k: v for k, v in os.environ.items() if k not in env}
    proc = subprocess.run(
        [sys.executable, "-m", "bnaudit", "check", *map(str, models), "--isolated", "-j", "2", "-p", "threads_probe", "--select", "THR", "--format", "json"],
        cwd=tmp_path, env={**clean, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    share = max(1, (os.cpu_count() or 1) // 2)
    messages = [f["message"] for m in json.loads(proc.stdout)["models"] for f in m["findings"]]
    assert messages == [f"TF_NUM_INTRAOP_THREADS={share} TF_NUM_INTEROP_THREADS={share} OMP_NUM_THREADS={share}"] * 2


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_native_crashes_cost_their_models_only_at_any_j(probe, tmp_path, jobs):
    """Three crashing files in one folder (a lone leftover is re-audited in a child, never
    in the main process) and a real segmentation fault, at -j 1 and -j 2."""
    shutil.copy(SAMPLES / "consecutive_bn.keras", tmp_path / "a_good.keras")
    for name in ("crash_1.keras", "crash_2.keras", "segv_3.keras"):
        shutil.copy(SAMPLES / "clean_conv_bn_relu.keras", tmp_path / name)
    shutil.copy(SAMPLES / "consecutive_bn.keras", tmp_path / "z_good.keras")
    proc = run_bnaudit("check", tmp_path, "--isolated", "--format", "json", "-p", "probe_plugin", "--select", "BN105,PR301", "-j", jobs, env=probe)
    assert proc.returncode == 2
    found = {Path(m["path"]).name: ({(f["code"], f["layer"]) for f in m["findings"]}, [e["message"] for e in m["errors"]]) for m in as_json(proc)}
    died = (set(), ["the process auditing this model died (a crash in a native library)"])
    assert found == {"a_good.keras": ({("BN105", "bn2")}, []), "crash_1.keras": died, "crash_2.keras": died, "segv_3.keras": died, "z_good.keras": ({("BN105", "bn2")}, [])}
    assert len(proc.stderr.splitlines()) == 3 and "Traceback" not in proc.stderr
