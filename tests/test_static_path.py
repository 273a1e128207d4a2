"""The static path imports neither TensorFlow nor Keras (DESIGN.md: start-up is the product)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import ROOT


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory):
    from model_builders import nested_variants

    path = tmp_path_factory.mktemp("static") / "nested.keras"
    nested_variants().save(path)
    return path


def test_static_check_imports_no_tensorflow_or_keras(saved_model):
    code = (
        "import sys, json\n"
        "from bnaudit.cli import cli\n"
        "try:\n"
        f"    cli(['check', '--format', 'json', {str(saved_model)!r}], standalone_mode=False)\n"
        "finally:\n"
        "    heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'keras', 'tf_keras') or m.startswith('bnaudit.runtime'))\n"
        "    print(json.dumps(heavy), file=sys.stderr)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    heavy = json.loads(proc.stderr.strip().splitlines()[-1])
    assert heavy == []
    [result] = json.loads(proc.stdout)["models"]
    # The audit really ran, weights included, and found the model clean.
    assert result["meta"]["batchnorm_layers"] == 4
    assert {"BN101", "BN201", "BN202", "BN501"} <= set(result["rules_run"])
    assert result["findings"] == [] and result["errors"] == []


#: Imported only by the command, format or option that needs them.
ON_DEMAND = (
    "bnaudit.cli.report",
    "bnaudit.cli.stats",
    "bnaudit.cli.rules",
    "bnaudit.cli.plugins",
    "bnaudit.cli.formats",
    "bnaudit.reporters.views",
    "jinja2",
    "markupsafe",
)
# multiprocessing and concurrent.futures are not on the list: every model is read in a
# child process (a native crash on a hostile file costs that model only).


def imported_by_check(*args: str) -> list[str]:
    """Which of ON_DEMAND a fresh ``bnaudit check ARGS`` (the console script's body) imports."""
    code = (
        "import sys, json\n"
        "from bnaudit.cli import cli\n"
        "try:\n"
        f"    cli(['check', *{list(args)!r}], standalone_mode=False)\n"
        "finally:\n"
        f"    print(json.dumps(sorted(m for m in {ON_DEMAND!r} if m in sys.modules)), file=sys.stderr)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    return json.loads(proc.stderr.strip().splitlines()[-1])


def test_a_static_check_imports_only_what_it_runs(tmp_path):
    model = str(ROOT / "sample_models" / "dropout_before_bn.keras")
    assert imported_by_check(model) == []
    # An HTML report does need its views and templates: the measurement sees imports.
    assert imported_by_check(model, "--format", "html", "-o", str(tmp_path / "r.html")) == ["bnaudit.reporters.views", "jinja2", "markupsafe"]
