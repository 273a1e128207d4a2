"""Shared test plumbing: quiet TensorFlow, two logical CPUs, and running the real command."""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# The multi-device code paths run for real on two logical CPU devices (no GPU here).
os.environ.setdefault("BNAUDIT_LOGICAL_CPUS", "2")

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "sample_models"


def pytest_addoption(parser):
    parser.addoption("--regen-gold", action="store_true", help="Rewrite the gold files of tests/test_gold.py from this run.")


def pytest_configure(config):
    """Split the CPU before any test builds a model: TensorFlow fixes its devices at first use,
    so the in-process multi-device tests depend on this running first, whatever the order."""
    from bnaudit.runtime import import_tensorflow

    import_tensorflow()


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


@pytest.fixture
def bnaudit_cmd():
    return run_bnaudit


@pytest.fixture(scope="session")
def samples() -> Path:
    return SAMPLES
