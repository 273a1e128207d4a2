"""What a new user meets first: arguments checked before TensorFlow starts, one import rule
for the modules the command line names, -o that knows its format, SavedModel directories
named as such, and a static-only switch the pre-commit hook relies on."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass

import numpy as np
import pytest
import yaml

from conftest import ROOT, SAMPLES, invoke, run_bnaudit

MODEL = SAMPLES / "dropout_before_bn.keras"


#: Runs the command line, then records which TensorFlow modules were imported, in this
#: process and where each model was audited (a child process: tests/import_probe.py).
#: (``-X importtime`` cannot tell: stderr is pointed at /dev/null while models are audited.)
RECORDING_MAIN = """
import atexit, json, os, sys
from import_probe import modules_where_audited
def record():
    modules = set(sys.modules) | modules_where_audited(os.environ["IMPORT_PROBE_OUT"])
    open(os.environ["RECORD_MODULES"], "w").write(json.dumps(sorted(m for m in modules if m.split(".")[0] == "tensorflow")))
atexit.register(record)
sys.argv[0] = "bnaudit"
if sys.argv[1:2] == ["check"]:
    sys.argv[2:2] = ["-p", "import_probe"]
from bnaudit.cli import main
main()
"""


@dataclass
class Recorded:
    returncode: int
    stdout: str
    stderr: str
    tensorflow: bool


def run_recorded(*args, cwd) -> Recorded:
    """``bnaudit ARGS`` in a real process, telling whether it imported TensorFlow."""
    record = cwd / ".modules.json"
    proc = subprocess.run(
        [sys.executable, "-c", RECORDING_MAIN, *map(str, args)],
        cwd=cwd, env={**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "tests"), str(ROOT)]), "RECORD_MODULES": str(record), "IMPORT_PROBE_OUT": str(cwd / ".probe.jsonl")},
        stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=300,
    )
    modules = json.loads(record.read_text())
    record.unlink()
    (cwd / ".probe.jsonl").unlink(missing_ok=True)
    return Recorded(proc.returncode, proc.stdout, proc.stderr, bool(modules))


@pytest.mark.parametrize(
    "args, expected",
    [
        (["--data", "missing.npy"], "bnaudit: error: --data missing.npy: no such file or directory (--data takes a .npy or .npz file, an image directory, or package.module:function)"),
        (["--data", "notes.txt"], "bnaudit: error: --data notes.txt: unknown data format '.txt' (--data takes a .npy or .npz file, an image directory, or package.module:function)"),
        (["--data", "nosuchmodule:batches"], "bnaudit: error: --data nosuchmodule:batches: no module named 'nosuchmodule' in the working directory ({cwd}) or on sys.path (run from the directory that holds the module, or install it)"),
        (["--inference", "--unsafe-load", "--custom-objects", "nosuchmodule:OBJECTS"], "bnaudit: error: --custom-objects nosuchmodule:OBJECTS: no module named 'nosuchmodule' in the working directory ({cwd}) or on sys.path (run from the directory that holds the module, or install it)"),
        (["--inference", "--unsafe-load", "--custom-objects", "justamodule"], "bnaudit: error: --custom-objects justamodule: not MODULE:DICT (e.g. mylayers:CUSTOM_OBJECTS)"),
        (["--static", "--inference"], "bnaudit: error: --static runs only the static rules: drop --data, --inference and --stats, or --static"),
        (["-q", "-v"], "bnaudit: error: --quiet and --verbose ask for less and for more: give one of them"),
    ],
)
def test_bad_arguments_are_refused_before_tensorflow_is_imported(tmp_path, args, expected):
    (tmp_path / "notes.txt").write_text("not data\n")
    run = run_recorded("check", MODEL, "--isolated", *args, cwd=tmp_path)
    assert run.returncode == 2
    assert run.stderr.splitlines() == [expected.format(cwd=tmp_path)]
    assert not run.tensorflow


def test_stats_checks_its_data_before_tensorflow_too(tmp_path):
    run = run_recorded("stats", MODEL, "--data", "missing.npz", cwd=tmp_path)
    assert run.returncode == 2 and run.stderr.splitlines()[0].startswith("bnaudit: error: --data missing.npz: no such file or directory")
    assert not run.tensorflow


def test_plugins_custom_objects_and_data_factories_import_from_the_working_directory(tmp_path):
    """One rule for every module the command line names: the working directory first, as ``python -m``."""
    (tmp_path / "acme_rules.py").write_text(
        "import bnaudit\n"
        "from bnaudit import Severity, rule\n\n"
        "@rule('ACME001', 'every-batchnorm', Severity.INFO)\n"
        "def every_bn(ctx):\n"
        "    return [ctx.finding(bn, f'{bn.name} seen') for bn in ctx.graph.batchnorms()]\n\n"
        "@bnaudit.hookimpl\n"
        "def bnaudit_register_rules():\n"
        "    return [every_bn]\n"
    )
    (tmp_path / "my_layers.py").write_text("CUSTOM_OBJECTS = {}\n")
    run = run_recorded("check", MODEL, "--isolated", "-p", "acme_rules", "--select", "ACME", "--format", "json", cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    (model,) = json.loads(run.stdout)["models"]
    assert [(f["code"], f["layer"]) for f in model["findings"]] == [("ACME001", "bn1"), ("ACME001", "bn2")]
    # --custom-objects finds the module where -p does: past the check, the audit starts
    from bnaudit.arguments import module_problem

    assert module_problem("my_layers") is not None  # not from the test's own working directory
    ok = run_recorded("check", MODEL, "--isolated", "--select", "BN101", "--unsafe-load", "--custom-objects", "my_layers:CUSTOM_OBJECTS", cwd=tmp_path)
    assert ok.returncode == 0 and ok.stderr.splitlines() == [], ok.stderr


@pytest.mark.parametrize(
    "outputs, formats",
    [(["report.html"], ["html"]), (["results.json", "bnaudit.sarif", "junit.xml"], ["json", "sarif", "junit"])],
)
def test_an_output_without_format_takes_the_format_of_its_suffix(tmp_path, outputs, formats):
    args = [arg for output in outputs for arg in ("-o", output)]
    run = run_bnaudit("check", MODEL, "--isolated", *args, cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    starts = {"html": "<!doctype html", "json": '{\n  "version": 1', "sarif": "{", "junit": "<?xml"}
    for output, fmt in zip(outputs, formats):
        text = (tmp_path / output).read_text()
        assert text.lower().startswith(starts[fmt].lower()), (output, text[:40])
    assert '"$schema"' in (tmp_path / "bnaudit.sarif").read_text() if "bnaudit.sarif" in outputs else True
    assert run.stdout == ""


@pytest.mark.parametrize(
    "output, expected",
    [
        ("report.out", "bnaudit: error: -o report.out: no format writes .out (.html, .json, .sarif, .txt, .xml); give --format NAME before -o"),
        ("report.txt", "bnaudit: error: -o report.txt: github and text both write .txt; give --format NAME before -o"),
    ],
)
def test_an_output_whose_suffix_names_no_single_format_is_refused(tmp_path, output, expected):
    run = run_bnaudit("check", MODEL, "--isolated", "-o", output, cwd=tmp_path)
    assert (run.returncode, run.stderr.strip()) == (2, expected)
    assert not (tmp_path / output).exists()


def test_a_savedmodel_directory_is_audited_and_its_graph_file_named(tmp_path):
    """A SavedModel is read as its directory (one without Keras configs as its serving graph,
    here one without batch norm); its saved_model.pb alone is named for what it is."""
    import tensorflow as tf

    class Doubler(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, 2], tf.float32)])
        def __call__(self, x):
            return 2 * x

    tf.saved_model.save(Doubler(), str(tmp_path / "exported"))
    assert (tmp_path / "exported" / "saved_model.pb").is_file()
    run = run_bnaudit("check", "exported", "--isolated", "--format", "json", cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    report = json.loads(run.stdout)["models"][0]
    assert report["findings"] == [] and report["errors"] == []
    assert "no batch-norm op is reachable from a serving signature of this SavedModel" in report["notes"]
    assert "BN106" not in {s["code"] for s in report["skipped"]}
    run = run_bnaudit("check", "exported/saved_model.pb", str(MODEL), "--isolated", cwd=tmp_path)
    assert run.returncode == 2
    assert run.stderr.strip() == (
        "bnaudit: error: exported/saved_model.pb: the graph file of a TensorFlow SavedModel, not a model by itself "
        "(pass its directory: bnaudit check exported)"
    )
    assert "BN101" in run.stdout  # the other model is still audited


@pytest.fixture
def repository_with_data_config(tmp_path):
    """A repository whose config asks for --data and the BN3/BN4 rules, as CI would run them."""
    (tmp_path / "models").mkdir()
    for name in ("dropout_before_bn.keras", "bn_training_baked.keras"):
        shutil.copy(SAMPLES / name, tmp_path / "models" / name)
    np.save(tmp_path / "sample.npy", np.zeros((4, 8, 8, 3), np.float32))
    (tmp_path / "pyproject.toml").write_text(
        '[tool.bnaudit]\nselect = ["BN1", "BN3", "BN4"]\n\n[tool.bnaudit.data]\n"models/*.keras" = "sample.npy"\n'
    )
    return tmp_path


def test_the_pre_commit_hook_runs_exactly_the_static_rules_whatever_the_config_says(repository_with_data_config):
    (entry,) = yaml.safe_load((ROOT / ".pre-commit-hooks.yaml").read_text())
    command = shlex.split(entry["entry"])
    assert command[:3] == ["bnaudit", "check", "--static"]
    run = run_recorded(*command[1:], "models/dropout_before_bn.keras", "models/bn_training_baked.keras", "--format", "json", cwd=repository_with_data_config)
    assert run.returncode == 1, run.stderr  # BN106 is an error
    assert run.stderr.splitlines() == []
    assert not run.tensorflow
    models = json.loads(run.stdout)["models"]
    assert [[f["code"] for f in m["findings"]] for m in models] == [["BN101"], ["BN106"]]
    for model in models:  # the config's select still holds; only the static rules of it ran
        assert model["rules_run"] == [f"BN10{i}" for i in range(1, 10)]
        assert model["skipped"] == []


@pytest.mark.slow
def test_without_static_the_same_config_runs_the_data_rules(repository_with_data_config):
    run = run_recorded("check", "models/dropout_before_bn.keras", "--format", "json", "--select", "BN301", cwd=repository_with_data_config)
    assert run.tensorflow
    (model,) = json.loads(run.stdout)["models"]
    assert model["rules_run"] == ["BN301"]


def test_report_infers_the_format_of_its_outputs_too(tmp_path):
    run = run_bnaudit("check", MODEL, "--isolated", "-o", "results.json", cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    again = run_bnaudit("report", "results.json", "-o", "report.html", "-o", "junit.xml", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert (tmp_path / "report.html").read_text().startswith("<!doctype html>")
    assert (tmp_path / "junit.xml").read_text().startswith("<?xml")


# -- paths that name a directory where a file is wanted, or no model at all --------------

OUTPUT_DIRECTORY_CASES = [
    (["check", MODEL, "-o", "{d}"], "-o {d}: is a directory (give a file name)"),
    (["check", MODEL, "--format", "sarif", "-o", "{d}"], "-o {d}: is a directory (give a file name)"),
    (["check", MODEL, "--write-baseline", "{d}"], "--write-baseline {d}: is a directory (give a file name)"),
    (["check", MODEL, "--baseline", "{d}"], "--baseline {d}: is a directory (give the file --write-baseline wrote)"),
    (["check", MODEL, "--stats", "{d}"], "--stats {d}: is a directory (give the .npz file written by `bnaudit merge`)"),
    (["report", "results.json", "--format", "html", "-o", "{d}"], "-o {d}: is a directory (give a file name)"),
    (["stats", MODEL, "--data", "data.npy", "-o", "{d}"], "-o {d}: is a directory (give a file name)"),
    (["stats", "{d}", "--data", "data.npy"], "{d}: is a directory (give a model file: .keras, .h5 or .onnx; for a SavedModel directory, bnaudit check DIR --data DATA)"),
    (["merge", "part.npz", "-o", "{d}"], "-o {d}: is a directory (give a file name)"),
    (["merge", "{d}", "-o", "merged.npz"], "{d}: is a directory (give the .npz files written by `bnaudit stats --shard K/N -o PART`)"),
    (["fix", MODEL, "--absorb-bias", "-o", "{d}"], "-o {d}: is a directory (give a file name)"),
    (["fix", MODEL, "--absorb-bias", "-o", "fixed.keras", "--report", "{d}"], "--report {d}: is a directory (give a file name)"),
    (["fix", MODEL, "--recalibrate", "--stats", "{d}", "-o", "fixed.keras"], "--stats {d}: is a directory (give the .npz file written by `bnaudit merge`)"),
    (["fix", "{d}", "--absorb-bias", "-o", "fixed.keras"], "{d}: is a directory (give a model file: .keras or .h5)"),
]


@pytest.mark.parametrize("args, expected", OUTPUT_DIRECTORY_CASES, ids=[" ".join(map(str, a[:1] + a[2:])) for a, _ in OUTPUT_DIRECTORY_CASES])
def test_a_directory_where_a_file_is_wanted_is_one_line(tmp_path, args, expected):
    """click's own ``dir_okay=False`` check printed its usage block; every command that
    takes a file (-o, --report, --write-baseline, --baseline, --stats, a model, parts) says it in one line."""
    directory = tmp_path / "out"
    directory.mkdir()
    run = invoke(*[str(a).format(d=directory) for a in args], cwd=tmp_path)
    assert (run.returncode, run.stdout, run.stderr) == (2, "", f"bnaudit: error: {expected.format(d=directory)}\n")
    assert list(directory.iterdir()) == [] and sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # nothing written


def test_paths_that_name_no_model_alone_are_one_line_each_and_no_report(tmp_path):
    """An empty directory is what a missing path is: one line, exit 2. With nothing else to
    audit, that is all (no "1 model, 0 findings, 1 unreadable" summary, as pytest and ruff
    stop); beside real models it is listed as unreadable and the models are still audited."""
    empty = tmp_path / "empty"
    empty.mkdir()
    lines = [
        f"bnaudit: error: {empty}: no .keras, .h5, .hdf5 or .onnx files or SavedModel directories in this directory (pass model files or a directory holding them)",
        f"bnaudit: error: {tmp_path / 'missing.keras'}: no such file or directory (check the path)",
    ]
    for args in ([empty], [tmp_path / "missing.keras"], [empty, tmp_path / "missing.keras"]):
        run = invoke("check", *args, "--format", "json")
        assert (run.returncode, run.stdout, run.stderr.splitlines()) == (2, "", [line for line in lines if any(f"{a}:" in line for a in args)])
    beside = invoke("check", empty, MODEL, "--format", "json")
    assert beside.returncode == 2 and beside.stderr.splitlines() == lines[:1]
    models = {m["path"]: ([e["message"] for e in m["errors"]], [(f["code"], f["layer"]) for f in m["findings"]]) for m in json.loads(beside.stdout)["models"]}
    assert models == {str(empty): (["no .keras, .h5, .hdf5 or .onnx files or SavedModel directories in this directory"], []), str(MODEL): ([], [("BN101", "bn2")])}


def test_the_needs_of_a_rule_have_one_vocabulary():
    """`bnaudit rules`, a rule's page, the README's catalog and the plugin guide name what a
    rule reads alike: graph, weights, optimizer, base, data, runtime (graph left out where there is more)."""
    import re

    from bnaudit.plugins import collect_rules, make_plugin_manager

    rules = collect_rules(make_plugin_manager())
    listed = {line.split()[0]: line.split()[3] for line in invoke("rules").stdout.splitlines()}
    assert listed == {code: rule.needs_label for code, rule in rules.items()}
    assert set(listed.values()) == {"graph", "weights", "optimizer+weights", "base+weights", "data+weights", "data+runtime", "runtime"}
    assert "Default severity: warning. Needs: data+weights.\n" in invoke("rules", "BN301").stdout
    readme = (ROOT / "README.md").read_text()
    table = dict(re.findall(r"^\| (BN\d{3}) \| [a-z0-9-]+ \| \w+ \| ([^|]+?) \|", readme, re.M))
    assert table == listed
    plugins_guide = (ROOT / "docs" / "plugins.md").read_text()
    assert all(f'`"{name}"`' in plugins_guide for name in ("graph", "weights", "optimizer", "base", "data", "runtime"))


@pytest.mark.parametrize("name, data, hint", [
    ("m.keras", b"PK\x03\x04 not a zip", "save it again with model.save('m.keras')"),
    ("resnet.h5", b"\x89HDF\r\n\x1a\n truncated", "save the model again with model.save('resnet.h5')"),
    ("net.hdf5", b"\x89HDF\r\n\x1a\n truncated", "save the model again with model.save('net.hdf5')"),
])
def test_the_hint_for_a_broken_file_names_the_file(tmp_path, name, data, hint):
    (tmp_path / name).write_bytes(data)
    run = invoke("check", tmp_path / name)
    assert run.returncode == 2 and run.stderr.endswith(f"; {hint})\n"), run.stderr
