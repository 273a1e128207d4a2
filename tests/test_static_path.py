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
