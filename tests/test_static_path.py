"""The static path imports neither TensorFlow nor Keras (DESIGN.md: start-up is the product)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from conftest import ROOT
from import_probe import modules_where_audited


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory):
    from model_builders import nested_variants

    path = tmp_path_factory.mktemp("static") / "nested.keras"
    nested_variants().save(path)
    return path


def modules_of_check(tmp_path, *args: str) -> tuple[set[str], subprocess.CompletedProcess]:
    """Everything a fresh ``bnaudit check ARGS`` (the console script's body) imports, in the
    main process and in the process that audited each model."""
    out = tmp_path / "modules.jsonl"
    code = (
        "import sys, json\n"
        "from bnaudit.cli import cli\n"
        "try:\n"
        f"    cli(['check', '-p', 'import_probe', *{list(args)!r}], standalone_mode=False)\n"
        "finally:\n"
        "    print(json.dumps(sorted(sys.modules)), file=sys.stderr)\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "tests"), str(ROOT)]), "IMPORT_PROBE_OUT": str(out)}
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    where_audited = modules_where_audited(str(out))
    assert where_audited, proc.stderr  # the probe ran where the models were audited
    return set(json.loads(proc.stderr.strip().splitlines()[-1])) | where_audited, proc


def test_static_check_imports_no_tensorflow_or_keras(saved_model, tmp_path):
    modules, proc = modules_of_check(tmp_path, "--format", "json", str(saved_model))
    heavy = sorted(m for m in modules if m.split(".")[0] in ("tensorflow", "keras", "tf_keras") or m.startswith("bnaudit.runtime"))
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
    # Only when a distribution declares the entry-point group "bnaudit" (none does here).
    "importlib.metadata",
    "xml.etree.ElementTree",
    # Only for -j N: at -j 1 the one child that reads the models is a plain fork.
    "multiprocessing",
    "concurrent.futures",
)


def test_a_static_check_imports_only_what_it_runs(tmp_path):
    model = str(ROOT / "sample_models" / "dropout_before_bn.keras")
    modules, _ = modules_of_check(tmp_path, model)
    assert sorted(m for m in ON_DEMAND if m in modules) == []
    # An HTML report does need its views and templates: the measurement sees imports.
    modules, _ = modules_of_check(tmp_path, model, "--format", "html", "-o", str(tmp_path / "r.html"))
    assert sorted(m for m in ON_DEMAND if m in modules) == ["bnaudit.reporters.views", "jinja2", "markupsafe"]
