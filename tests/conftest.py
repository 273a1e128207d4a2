"""Shared test plumbing: quiet TensorFlow, two logical CPUs for the tests that import it, and the command.

TensorFlow is imported only by the tests that need it: a static test run never pays for
it. Whoever imports it first (a fixture's ``import keras``, bnaudit's runtime), the CPU
is split into two logical devices right after TensorFlow's own import, before any
device can start, so the in-process multi-device tests hold whatever the order.

``invoke`` runs the command line in this process (what most CLI tests need: exit code,
stdout, stderr); ``run_bnaudit`` runs ``python -m bnaudit`` as a real subprocess, for
what only a process shows (start-up imports, plugins found on another PYTHONPATH,
worker processes, TensorFlow's native logs on fd 2).
"""

from __future__ import annotations

import json
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# The multi-device code paths run for real on two logical CPU devices (no GPU here).
os.environ.setdefault("BNAUDIT_LOGICAL_CPUS", "2")

import importlib.abc
import importlib.util
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "sample_models"


def pytest_addoption(parser):
    parser.addoption("--regen-gold", action="store_true", help="Rewrite the gold files of tests/test_gold.py from this run.")


class SplitCPUOnImport(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Runs ``bnaudit.runtime.import_tensorflow`` (which applies ``BNAUDIT_LOGICAL_CPUS``)
    the moment TensorFlow's module has executed, whoever imported it.

    TensorFlow fixes its devices at first use, so the split must come before any test
    builds a model; doing it on import rather than at start-up spares the tests that
    never touch TensorFlow the seconds its import takes.
    """

    def find_spec(self, fullname, path, target=None):
        if fullname != "tensorflow":
            return None
        sys.meta_path.remove(self)  # once: the real finders answer from here on
        spec = importlib.util.find_spec(fullname)
        if spec is None or spec.loader is None:
            return spec
        self.loader = spec.loader
        spec.loader = self
        return spec

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module):
        module.__loader__ = module.__spec__.loader = self.loader
        self.loader.exec_module(module)
        from bnaudit.runtime import import_tensorflow

        import_tensorflow()


def pytest_configure(config):
    if "tensorflow" not in sys.modules:
        sys.meta_path.insert(0, SplitCPUOnImport())


@dataclass
class Run:
    returncode: int
    stdout: str
    stderr: str


def run_bnaudit(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None, timeout: float = 300) -> Run:
    """Run ``python -m bnaudit ARGS`` in a real subprocess, with no standard input."""
    full_env = {**os.environ, **(env or {})}
    full_env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), full_env.get("PYTHONPATH", "")]))
    proc = subprocess.run(
        [sys.executable, "-m", "bnaudit", *map(str, args)],
        cwd=cwd or ROOT,
        env=full_env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return Run(proc.returncode, proc.stdout, proc.stderr)


def audited_by_path(*paths: str, cwd: Path) -> dict[str, dict]:
    """``bnaudit check --format json --exit-zero PATHS`` run in ``cwd``: each model's JSON
    result by its path as given (no traceback allowed on stderr)."""
    run = run_bnaudit("check", "--format", "json", "--exit-zero", *paths, cwd=cwd)
    assert "Traceback" not in run.stderr
    return {m["path"]: m for m in json.loads(run.stdout)["models"]}


def frameworks_imported(code: str, frameworks: tuple[str, ...] = ("tensorflow", "keras", "tf_keras")) -> list[str]:
    """Run ``code`` in a fresh interpreter (the checkout first on the path, nothing else
    in the environment) and return which modules of ``frameworks`` it left imported."""
    probe = f"{code}\nimport sys, json\nprint(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in {frameworks!r})))"
    proc = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, env={"PYTHONPATH": str(ROOT), "PATH": ""})
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def invoke(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None) -> Run:
    """Run ``bnaudit ARGS`` in this process (click's runner): exit code, stdout and stderr as
    the console script gives them. The working directory and environment are restored
    after; an exception other than the command's own exit is raised, never read as exit 1."""
    from click.testing import CliRunner

    from bnaudit.cli import cli

    saved_env, saved_cwd = dict(os.environ), os.getcwd()
    try:
        os.chdir(cwd or ROOT)
        result = CliRunner().invoke(cli, [str(arg) for arg in args], env=env, prog_name="bnaudit")
    finally:
        os.chdir(saved_cwd)
        os.environ.clear()
        os.environ.update(saved_env)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return Run(result.exit_code, result.stdout, result.stderr)


@pytest.fixture(scope="session")
def samples() -> Path:
    return SAMPLES


def assert_same_statistics(ours, theirs, rtol: float) -> None:
    """Two :class:`~bnaudit.analysis.statistics.DataStatistics` hold the same moments per layer:
    equal counts, means and M2 within ``rtol`` (the spread across batches included)."""
    import numpy as np

    assert sorted(ours.layers) == sorted(theirs.layers)
    for path, layer in theirs.layers.items():
        for part in ("moments", "batch_means", "batch_variances"):
            a, b = getattr(ours.layers[path], part), getattr(layer, part)
            np.testing.assert_array_equal(a.count, b.count)
            np.testing.assert_allclose(a.mean, b.mean, rtol=rtol, atol=1e-12)
            np.testing.assert_allclose(a.m2, b.m2, rtol=rtol)
