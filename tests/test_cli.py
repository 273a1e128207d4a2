"""The check command as users and CI call it: exit codes, selection, outputs, plugins."""

from __future__ import annotations

import json
import textwrap

import pytest

from conftest import invoke, run_bnaudit


@pytest.fixture(scope="module")
def bias_model(tmp_path_factory):
    """Dense with bias -> BN (BN102, info) -> Dropout -> BN (BN101 warning)."""
    import keras
    from keras import layers

    from model_builders import set_trained_statistics

    model = keras.Sequential(
        [
            keras.Input((6,), name="x"),
            layers.Dense(4, name="fc"),
            layers.BatchNormalization(name="bn1"),
            layers.Activation("relu", name="act"),
            layers.Dropout(0.3, name="drop"),
            layers.BatchNormalization(name="bn2"),
            layers.Dense(2, name="out"),
        ]
    )
    set_trained_statistics(model)
    path = tmp_path_factory.mktemp("cli") / "bias.keras"
    model.save(path)
    return path


def _codes(run):
    return sorted((f["code"], f["layer"]) for m in json.loads(run.stdout)["models"] for f in m["findings"])


def test_json_document_shape(bias_model):
    run = invoke("check", "--format", "json", bias_model)
    assert run.returncode == 0  # only a warning and an info: below the default fail-on=error
    document = json.loads(run.stdout)
    assert document["version"] == 1
    [model] = document["models"]
    assert model["path"] == str(bias_model)
    assert _codes(run) == [("BN101", "bn2"), ("BN102", "bn1")]
    finding = next(f for f in model["findings"] if f["code"] == "BN101")
    assert finding == {
        "code": "BN101",
        "name": "dropout-before-batchnorm",
        "severity": "warning",
        "message": finding["message"],
        "layer": "bn2",
        "details": {"dropout": "drop", "rate": 0.3, "through": []},
        "fix": finding["fix"],
    }
    assert document["summary"]["by_severity"] == {"info": 1, "warning": 1, "error": 0}
    assert model["meta"]["format"] == "keras" and model["meta"]["keras_version"].startswith("3.")


@pytest.mark.parametrize(
    ("args", "code"),
    [
        ((), 0),
        (("--fail-on", "warning"), 1),
        (("--fail-on", "info"), 1),
        (("--fail-on", "info", "--exit-zero"), 0),
        (("--fail-on", "warning", "--ignore", "BN101"), 0),
        (("--fail-on", "info", "--select", "BN2,BN5"), 0),
    ],
)
def test_exit_codes(bias_model, args, code):
    assert invoke("check", *args, bias_model).returncode == code


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (("--select", "BN101"), [("BN101", "bn2")]),
        (("--ignore", "BN1"), []),
        (("--select", "BN1", "--ignore", "BN101"), [("BN102", "bn1")]),
        (("--select", "bn102"), [("BN102", "bn1")]),
    ],
)
def test_select_and_ignore(bias_model, args, expected):
    assert _codes(invoke("check", "--format", "json", *args, bias_model)) == expected


def test_unknown_code_and_format_are_usage_errors(bias_model):
    run = invoke("check", "--select", "BN999", bias_model)
    assert run.returncode == 2 and run.stderr.strip() == "bnaudit: error: --select BN999 matches no rule; `bnaudit rules` lists the codes"
    run = invoke("check", "--format", "yaml", bias_model)
    assert run.returncode == 2 and "unknown format 'yaml'" in run.stderr


def test_output_file_and_text_format(bias_model, tmp_path):
    out = tmp_path / "deep" / "r.json"
    run = invoke("check", "--format", "json", "-o", out, "--format", "text", bias_model)
    assert run.returncode == 0
    assert _codes(type("R", (), {"stdout": out.read_text()})) == [("BN101", "bn2"), ("BN102", "bn1")]
    assert "BN101 warning bn2:" in run.stdout
    assert run.stdout.strip().endswith("1 model, 2 findings (1 warning, 1 info)")
    assert "\x1b[" not in run.stdout  # no colour when not on a TTY


def test_rules_command_lists_and_documents():
    listing = invoke("rules").stdout
    assert listing.count("\n") >= 14 and "BN106  batchnorm-training-baked" in listing
    doc = invoke("rules", "BN101").stdout
    for section in ("## What it does", "## Why is this bad?", "## Example", "## Use instead"):
        assert section in doc
    assert invoke("rules", "dropout-before-batchnorm").stdout == doc
    assert invoke("rules", "BN999").returncode == 2


PLUGIN = textwrap.dedent(
    '''
    import bnaudit

    @bnaudit.rule("XY001", "count-batchnorms", bnaudit.Severity.INFO)
    def count_batchnorms(ctx):
        """Reports how many BN layers the model has."""
        yield ctx.finding("", f"{len(ctx.graph.batchnorms())} BN layers")

    @bnaudit.rule("XY002", "always-crashes", bnaudit.Severity.ERROR)
    def always_crashes(ctx):
        """Raises, to show that one broken rule does not stop the others."""
        raise RuntimeError("boom")

    @bnaudit.hookimpl
    def bnaudit_register_rules():
        return [count_batchnorms, always_crashes]
    '''
)


def test_p_plugin_rules_run_and_a_crashing_rule_is_an_error_not_a_stop(bias_model, tmp_path):
    (tmp_path / "xy_plugin.py").write_text(PLUGIN)
    env = {"PYTHONPATH": str(tmp_path)}
    run = run_bnaudit("check", "-p", "xy_plugin", "--format", "json", bias_model, env=env)
    assert run.returncode == 2
    [model] = json.loads(run.stdout)["models"]
    assert ("XY001", "") in {(f["code"], f["layer"]) for f in model["findings"]}
    assert {"BN101", "BN102"} <= {f["code"] for f in model["findings"]}
    assert model["errors"] == [
        {"rule": "XY002", "rules": ["XY002"], "message": "rule crashed: RuntimeError: boom", "hint": "run with --debug for the traceback"}
    ]
    assert {"code": "XY002", "status": "failed", "error": 0} in model["outcomes"] and "XY002" not in model["rules_run"]
    assert {"code": "XY001", "status": "ran"} in model["outcomes"] and "XY001" in model["rules_run"]
    assert run.stderr.strip() == f"bnaudit: error: {bias_model} [XY002]: rule crashed: RuntimeError: boom (run with --debug for the traceback)"
    listing = run_bnaudit("plugins", "-p", "xy_plugin", env=env).stdout
    assert "xy_plugin" in listing and "XY001, XY002" in listing
    assert invoke("check", "-p", "missing_plugin_module", bias_model).returncode == 2


def test_each_output_file_goes_with_the_format_written_just_before_it(bias_model, tmp_path):
    out = tmp_path / "r.json"
    run = invoke("check", "--format", "text", "--format", "json", "-o", out, bias_model)
    assert run.returncode == 0, run.stderr
    assert json.loads(out.read_text())["version"] == 1
    assert "BN101 warning bn2:" in run.stdout
    out.unlink()
    run = invoke("check", "--format=json", f"--output={out}", "--format", "text", bias_model)
    assert json.loads(out.read_text())["version"] == 1 and "BN101 warning bn2:" in run.stdout
    out.unlink()
    # An -o written before its --format would get the wrong one: refused, nothing written.
    run = invoke("check", "-o", out, "--format", "html", bias_model)
    assert (run.returncode, run.stdout) == (2, "") and not out.exists()
    assert run.stderr == f"bnaudit: error: -o {out} comes before any --format; give each --format before its -o\n"


def test_an_unwritable_output_is_one_line_and_exit_2(bias_model, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    run = invoke("check", "--format", "json", "-o", blocker / "r.json", bias_model)
    assert run.returncode == 2
    [line] = run.stderr.strip().splitlines()
    assert line.startswith(f"bnaudit: error: cannot write {blocker / 'r.json'}: ") and line.endswith("(check the path and its permissions)")


def test_rules_shows_each_threshold_readably_with_its_range():
    run = run_bnaudit("rules", "BN301")
    assert run.returncode == 0, run.stderr
    assert (
        "Thresholds ([tool.bnaudit.bn301] in the config): drift-score = 0.5 (>= 0), mean-shift = 1 (>= 0), "
        "log-variance-ratio = 1.38629 (>= 0), channel-fraction = 0.25 (0 to 1)."
    ) in run.stdout.splitlines()
