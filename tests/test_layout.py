"""The package layout's rules (pyproject's ``[tool.importlinter]`` contracts), checked with import-linter.

No import cycle between sibling modules; ``bnaudit.analysis`` imports neither TensorFlow
nor the rest of the machinery; ``bnaudit.runtime`` never imports back from the engine,
the rules, the reporters or the CLI; each CLI command stands alone.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CONTRACTS = (
    "No import cycle between sibling modules, at any depth",
    "The maths in bnaudit.analysis needs neither TensorFlow nor the rest of bnaudit's machinery",
    "bnaudit.runtime does not import back from the engine, the rules, the reporters or the CLI",
    "Each command of the CLI stands alone (shared code lives in bnaudit.cli.options)",
)

pytest.importorskip("importlinter", reason="import-linter is in the test extra")


def lint_imports(root: Path) -> subprocess.CompletedProcess:
    """``lint-imports`` on the ``bnaudit`` package under ``root`` (its own process: another sys.path)."""
    env = {**os.environ, "PYTHONPATH": str(root), "COLUMNS": "400"}
    command = "from importlinter.cli import lint_imports; raise SystemExit(lint_imports(no_cache=True, no_logo=True))"
    return subprocess.run([sys.executable, "-c", command], cwd=root, env=env, capture_output=True, text=True, timeout=120)


def test_the_layout_keeps_every_contract():
    run = lint_imports(ROOT)
    assert run.returncode == 0, run.stdout + run.stderr
    for name in CONTRACTS:
        assert f"{name} KEPT" in run.stdout


def test_a_cycle_or_a_forbidden_import_breaks_the_contracts(tmp_path):
    shutil.copytree(ROOT / "bnaudit", tmp_path / "bnaudit", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    additions = {
        "analysis/moments.py": "from ..rules import layers  # analysis -> rules -> analysis: a cycle",
        "runtime/devices.py": "from ..engine import Auditor  # runtime -> engine",
        "cli/report.py": "from .check import check  # one command importing another",
    }
    for path, line in additions.items():
        module = tmp_path / "bnaudit" / path
        module.write_text(module.read_text(encoding="utf-8") + f"\n{line}\n", encoding="utf-8")
    run = lint_imports(tmp_path)
    assert run.returncode == 1, run.stdout + run.stderr
    for name in CONTRACTS:
        assert f"{name} BROKEN" in run.stdout
    assert "bnaudit.runtime is not allowed to import bnaudit.engine" in run.stdout
    assert "bnaudit.cli.report is not allowed to import bnaudit.cli.check" in run.stdout
