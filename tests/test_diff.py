"""``bnaudit diff BASE TUNED`` on checkpoints that Keras itself fine-tuned (BN211, BN212).

Every tuned model below is the base trained further with ``model.fit``; what differs is
how the BN layers were (or were not) frozen, so the findings come from real training.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import xml.etree.ElementTree as ET

import pytest

from conftest import ROOT, SAMPLES, run_bnaudit


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    import keras
    import tf_keras
    from model_builders import fit_steps, small_convnet

    out = tmp_path_factory.mktemp("checkpoints")

    def copy_of(base, **kwargs):
        model = small_convnet(keras, **kwargs)
        model.set_weights(base.get_weights())
        return model

    base = small_convnet(keras)
    fit_steps(base, 5)
    base.save(out / "base.keras")
    base.save(out / "base.h5")

    toggled = copy_of(base)  # trained with bn_a trainable, frozen only before saving
    fit_steps(toggled, 3, seed=1, shift=2.0)
    toggled.get_layer("bn_a").trainable = False
    toggled.save(out / "toggled.keras")

    frozen = copy_of(base)  # frozen before compile and fit: keeps the base's values
    frozen.get_layer("bn_a").trainable = False
    fit_steps(frozen, 3, seed=1, shift=2.0)
    frozen.save(out / "frozen.keras")

    renamed = copy_of(base, names=("conv_1", "norm_1", "conv_2", "norm_2"))
    fit_steps(renamed, 3, seed=1, shift=2.0)
    renamed.save(out / "renamed.keras")

    def transfer(freeze_first: bool):
        """The base nested in a new model with a new head, as in transfer learning."""
        nested = copy_of(base)
        nested.trainable = not freeze_first
        inputs = keras.Input((8, 8, 3))
        x = nested(inputs, training=False)
        model = keras.Model(inputs, keras.layers.Dense(3, name="new_head")(x), name="tuned")
        fit_steps(model, 3, seed=2, shift=2.0)
        nested.trainable = False
        return model

    transfer(freeze_first=False).save(out / "transfer_drifted.keras")
    transfer(freeze_first=True).save(out / "transfer_frozen.keras")

    # tf-keras keeps a node's training=False while the model trains (Keras 3 lets the
    # outer training=True win): bn_b never updates, its neighbours do.
    k2_base = small_convnet(tf_keras)
    fit_steps(k2_base, 5)
    k2_base.save(out / "k2_base.h5")
    layer = {name: k2_base.get_layer(name) for name in ("c1", "bn_a", "c2", "bn_b", "head")}
    inputs = tf_keras.Input((8, 8, 3), name="image")
    x = tf_keras.layers.Activation("relu")(layer["bn_a"](layer["c1"](inputs)))
    x = tf_keras.layers.Activation("relu")(layer["bn_b"](layer["c2"](x), training=False))
    k2_tuned = tf_keras.Model(inputs, layer["head"](tf_keras.layers.GlobalAveragePooling2D()(x)), name="base")
    fit_steps(k2_tuned, 3, seed=1, shift=2.0)
    k2_tuned.save(out / "k2_inference_bn.h5")

    other = keras.Sequential([keras.Input((5,)), keras.layers.Dense(7), keras.layers.BatchNormalization(name="bn_a")])
    other.save(out / "unrelated.keras")
    keras.Sequential([keras.Input((5,)), keras.layers.Dense(7)]).save(out / "no_bn.keras")
    (out / "garbage.keras").write_bytes(b"PK\x03\x04 not really a zip")
    return out


def diff_json(base, tuned, *args):
    run = run_bnaudit("diff", base, tuned, "--format", "json", *args)
    assert run.stderr == "", run.stderr
    [model] = json.loads(run.stdout)["models"]
    return run, model


def codes(model):
    return [(f["code"], f["layer"]) for f in model["findings"]]


def test_bn_frozen_only_after_training_is_bn211(checkpoints):
    run, model = diff_json(checkpoints / "base.keras", checkpoints / "toggled.keras")
    assert run.returncode == 0  # a warning, below the default --fail-on error
    assert codes(model) == [("BN211", "bn_a")]
    details = model["findings"][0]["details"]
    assert details["frozen_base"] is False and details["frozen_tuned"] is True and details["statistics_changed"] is True
    assert details["mean_shift"] > 0 and details["paired_by"] == "path"
    assert model["rules_run"] == ["BN211", "BN212"]
    layers = model["measurements"]["diff"]["layers"]
    assert list(layers) == ["bn_a", "bn_b"]
    assert layers["bn_b"]["frozen_tuned"] is False and layers["bn_b"]["statistics_changed"] is True


def test_the_base_as_legacy_h5_pairs_with_the_tuned_keras_file(checkpoints):
    _, from_keras = diff_json(checkpoints / "base.keras", checkpoints / "toggled.keras")
    _, from_h5 = diff_json(checkpoints / "base.h5", checkpoints / "toggled.keras")
    assert codes(from_h5) == [("BN211", "bn_a")]
    assert from_h5["measurements"]["diff"]["layers"] == from_keras["measurements"]["diff"]["layers"]


def test_bn_frozen_before_training_is_clean(checkpoints):
    run, model = diff_json(checkpoints / "base.keras", checkpoints / "frozen.keras", "--fail-on", "info")
    assert run.returncode == 0 and model["findings"] == []
    bn_a = model["measurements"]["diff"]["layers"]["bn_a"]
    assert bn_a["frozen_tuned"] is True and bn_a["statistics_changed"] is False
    assert bn_a["mean_shift"] == 0 and bn_a["gamma_change"] == 0 and bn_a["beta_change"] == 0


def test_nested_base_trained_then_frozen_is_bn211_on_every_bn(checkpoints):
    # Keras 3 lets fit's training=True override base(x, training=False): the trainable
    # base's statistics follow the new data, though it is frozen in the saved model.
    run, model = diff_json(checkpoints / "base.keras", checkpoints / "transfer_drifted.keras", "--fail-on", "warning")
    assert run.returncode == 1
    assert codes(model) == [("BN211", "base/bn_a"), ("BN211", "base/bn_b")]
    diff = model["measurements"]["diff"]
    assert diff["nested_base"] == "base" and diff["unpaired_base"] == [] and diff["pairs"] == 2
    assert {c["paired_by"] for c in diff["layers"].values()} == {"path"}


def test_nested_base_frozen_before_training_is_clean(checkpoints):
    run, model = diff_json(checkpoints / "base.keras", checkpoints / "transfer_frozen.keras", "--fail-on", "info")
    assert run.returncode == 0 and model["findings"] == []
    assert all(not c["statistics_changed"] and c["frozen_tuned"] for c in model["measurements"]["diff"]["layers"].values())


def test_arguments_in_the_wrong_order_are_pointed_out(checkpoints):
    """The transfer model given as BASE and its backbone as TUNED: paired by position,
    a note says the order may be reversed; the right order has no such note."""
    _, swapped = diff_json(checkpoints / "transfer_frozen.keras", checkpoints / "base.keras")
    assert swapped["notes"] == [
        "BASE holds TUNED's BN layers inside a nested model: if TUNED is the model before fine-tuning, give it first (bnaudit diff BASE TUNED)"
    ]
    _, right = diff_json(checkpoints / "base.keras", checkpoints / "transfer_frozen.keras")
    assert right["notes"] == []


def test_renamed_layers_pair_by_position(checkpoints):
    _, model = diff_json(checkpoints / "base.keras", checkpoints / "renamed.keras", "--fail-on", "info")
    layers = model["measurements"]["diff"]["layers"]
    assert {path: (c["base"], c["paired_by"]) for path, c in layers.items()} == {
        "norm_1": ("bn_a", "position"),
        "norm_2": ("bn_b", "position"),
    }
    assert model["findings"] == []  # trained, trainable, changed: as meant


def test_bn_called_with_training_false_while_neighbours_trained_is_bn212(checkpoints):
    run, model = diff_json(checkpoints / "k2_base.h5", checkpoints / "k2_inference_bn.h5", "--fail-on", "info")
    assert run.returncode == 1
    assert codes(model) == [("BN212", "bn_b")]
    finding = model["findings"][0]
    assert "called with training=False" in finding["message"]
    assert finding["details"]["changed_neighbours"] == ["bn_a"] and finding["details"]["statistics_changed"] is False


def test_select_ignore_and_exit_zero_apply(checkpoints):
    base, tuned = checkpoints / "base.keras", checkpoints / "toggled.keras"
    _, ignored = diff_json(base, tuned, "--ignore", "BN211", "--fail-on", "info")
    assert ignored["findings"] == [] and ignored["rules_run"] == ["BN212"]
    _, selected = diff_json(base, tuned, "--select", "BN212")
    assert selected["rules_run"] == ["BN212"]
    run = run_bnaudit("diff", base, tuned, "--fail-on", "warning", "--exit-zero")
    assert run.returncode == 0 and "BN211" in run.stdout
    unknown = run_bnaudit("diff", base, tuned, "--select", "BN999")
    assert unknown.returncode == 2 and unknown.stderr.startswith("bnaudit: error: BN999 match no rule")


def test_text_shows_the_change_of_every_layer(checkpoints):
    run = run_bnaudit("diff", checkpoints / "base.keras", checkpoints / "frozen.keras")
    lines = run.stdout.splitlines()
    assert f"  change since {checkpoints / 'base.keras'} (2 BN layers):" in lines
    header = next(line for line in lines if line.startswith("    BN layer")).split()
    assert header == ["BN", "layer", "base", "(paired", "by)", "frozen", "mean", "shift", "sd", "change", "gamma", "beta"]
    bn_a = next(line for line in lines if line.strip().startswith("bn_a ")).split()
    assert bn_a[:7] == ["bn_a", "bn_a", "(path)", "no->yes", "0", "0.0%", "0"]
    assert lines[-1] == "1 model, 0 findings"


def test_html_sarif_and_junit_like_check(checkpoints, tmp_path):
    run = run_bnaudit(
        "diff", checkpoints / "base.keras", checkpoints / "toggled.keras", "--fail-on", "warning",
        "--format", "html", "-o", tmp_path / "d.html", "--format", "sarif", "-o", tmp_path / "d.sarif",
        "--format", "junit", "-o", tmp_path / "d.xml",
    )  # fmt: skip
    assert run.returncode == 1 and run.stdout == ""
    assert run.stderr.splitlines() == ["1 model, 1 finding (1 warning)"]
    html = (tmp_path / "d.html").read_text()
    assert "<h4>Change since the base checkpoint</h4>" in html
    assert "<title>bn_a: " in html and "<title>bn_b: " in html  # the per-layer chart
    # Named as the diff measures it (base σ, largest over channels), not as BN301's drift.
    assert "Per BN layer, input to output: largest moving-mean shift (base σ)" in html
    assert "moving σ, channel mean" not in html
    assert "<th scope=\"col\">frozen in tuned</th>" in html and "Pairing with the base checkpoint" in html
    [sarif_run] = json.loads((tmp_path / "d.sarif").read_text())["runs"]
    [result] = sarif_run["results"]
    assert result["ruleId"] == "BN211" and result["level"] == "warning"
    assert result["locations"][0]["physicalLocation"]["artifactLocation"]["uri"].endswith("toggled.keras")
    suite = ET.parse(tmp_path / "d.xml").getroot().find("testsuite")
    failed = [c.get("classname") + " " + c.get("name").rpartition("::")[2] for c in suite if c.find("failure") is not None]
    assert failed == ["BN211.frozen-batchnorm-changed bn_a"]
    assert int(suite.get("tests")) == 4  # two rules x two BN layers


@pytest.mark.parametrize(
    "base, tuned, message",
    [
        ("base.keras", "unrelated.keras", "bnaudit: error: BASE {dir}/base.keras, TUNED {dir}/unrelated.keras: BN 'bn_a' has 4 channels in BASE, its counterpart 'bn_a' 7 in TUNED (paired by path) (the models are not two checkpoints of one architecture)"),
        ("base.keras", "no_bn.keras", "bnaudit: error: BASE {dir}/base.keras, TUNED {dir}/no_bn.keras: TUNED has no BatchNormalization layer: nothing to compare (give two checkpoints of a model with BN layers)"),
        ("garbage.keras", "base.keras", "bnaudit: error: BASE {dir}/garbage.keras: not a readable .keras file (File is not a zip file) (the file is truncated or not a Keras zip; save it again with model.save('garbage.keras'))"),
        ("base.keras", "missing.keras", "bnaudit: error: TUNED {dir}/missing.keras: no such file (check the path)"),
    ],
)
def test_bad_or_mismatched_inputs_are_one_line_and_exit_2(checkpoints, base, tuned, message):
    before = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in checkpoints.iterdir()}
    run = run_bnaudit("diff", checkpoints / base, checkpoints / tuned)
    assert run.returncode == 2 and run.stdout == ""
    assert run.stderr.splitlines() == [message.format(dir=checkpoints)]
    assert {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in checkpoints.iterdir()} == before


def test_unrelated_models_with_nothing_in_common(checkpoints, tmp_path):
    import keras

    odd = keras.Sequential([keras.Input((5,)), keras.layers.Dense(3), keras.layers.BatchNormalization(name="x1"),
                            keras.layers.Dense(3), keras.layers.BatchNormalization(name="x2"), keras.layers.BatchNormalization(name="x3")])  # fmt: skip
    odd.save(tmp_path / "odd.keras")
    run = run_bnaudit("diff", checkpoints / "base.keras", tmp_path / "odd.keras")
    assert run.returncode == 2
    assert run.stderr.splitlines() == [
        f"bnaudit: error: BASE {checkpoints / 'base.keras'}, TUNED {tmp_path / 'odd.keras'}: "
        "no BatchNormalization layer of BASE (2) matches one of TUNED (3) by path or by position "
        "(the models look unrelated: compare a model with its own fine-tuned copy)"
    ]


def test_diff_imports_no_tensorflow_or_keras(checkpoints):
    code = (
        "import sys, json\n"
        "from bnaudit.cli import cli\n"
        "try:\n"
        f"    cli(['diff', '--format', 'json', {str(checkpoints / 'base.h5')!r}, {str(checkpoints / 'toggled.keras')!r}], standalone_mode=False)\n"
        "finally:\n"
        "    heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'keras', 'tf_keras') or m.startswith('bnaudit.runtime'))\n"
        "    print(json.dumps(heavy), file=sys.stderr)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert json.loads(proc.stderr.strip().splitlines()[-1]) == []
    [model] = json.loads(proc.stdout)["models"]
    assert codes(model) == [("BN211", "bn_a")]


@pytest.mark.slow
def test_docs_checkpoints_example_runs_as_written(tmp_path):
    """docs/checkpoints.md: its script, run by Keras, gives its outputs line for line (numbers aside)."""
    doc = (ROOT / "docs" / "checkpoints.md").read_text()
    [script] = re.findall(r"```python\n(.*?)```", doc, re.S)
    consoles = re.findall(r"```console\n\$ (.*?)\n(.*?)```", doc, re.S)
    assert [command for command, _ in consoles] == ["bnaudit diff base.keras tuned.keras", "bnaudit check tuned.keras"]
    (tmp_path / "finetune.py").write_text(script)
    subprocess.run([sys.executable, "finetune.py"], cwd=tmp_path, check=True, capture_output=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    numbers = re.compile(r"\d+(\.\d+)?(e-?\d+)?%?")
    for command, shown in consoles:
        run = run_bnaudit(*command.split()[1:], cwd=tmp_path)
        assert run.returncode == 0 and run.stderr == ""
        mask = lambda text: [" ".join(numbers.sub("N", line).split()) for line in text.splitlines()]  # noqa: E731
        assert mask(run.stdout) == mask(shown)


def test_diff_json_validates_against_the_schema(checkpoints):
    import jsonschema

    schema = json.loads((ROOT / "docs" / "json-schema.json").read_text())
    for tuned in ("toggled.keras", "renamed.keras", "transfer_drifted.keras"):
        run = run_bnaudit("diff", checkpoints / "base.keras", checkpoints / tuned, "--format", "json")
        document = json.loads(run.stdout)
        jsonschema.Draft202012Validator(schema).validate(document)
        assert document["models"][0]["meta"]["base"] == str(checkpoints / "base.keras")


def test_a_selection_without_a_diff_rule_is_one_line_and_quiet_keeps_the_findings(checkpoints):
    run = run_bnaudit("diff", checkpoints / "base.keras", checkpoints / "toggled.keras", "--select", "BN101")
    assert (run.returncode, run.stdout) == (2, "")
    assert run.stderr.splitlines() == [
        "bnaudit: error: the selection leaves none of the rules diff runs (BN211, BN212); the others run with `bnaudit check`"
    ]
    run = run_bnaudit("check", checkpoints / "toggled.keras", "--select", "BN211")
    assert (run.returncode, run.stdout) == (2, "")
    assert run.stderr == "bnaudit: error: the selection holds only rules that compare two checkpoints; run them with `bnaudit diff BASE TUNED`\n"
    quiet = run_bnaudit("diff", checkpoints / "base.keras", checkpoints / "toggled.keras", "-q")
    loud = run_bnaudit("diff", checkpoints / "base.keras", checkpoints / "toggled.keras")
    assert quiet.returncode == loud.returncode == 0  # BN211 is a warning; the gate fails on errors
    assert "change since" in loud.stdout and "change since" not in quiet.stdout
    assert [line for line in quiet.stdout.splitlines() if line.startswith("  BN")] == [
        line for line in loud.stdout.splitlines() if line.startswith("  BN")
    ] and [line.split()[0] for line in quiet.stdout.splitlines() if line.startswith("  BN")] == ["BN211"]


def test_a_format_without_a_trainable_flag_shows_it_unknown_and_skips_bn211_bn212():
    """ONNX records no trainable flag: every node would read as trainable, which says
    nothing. The diff shows the flag as unknown (null, "?") and BN211/BN212, which judge
    it, are skipped with the reason, never passed."""
    run = run_bnaudit("diff", "clean_conv_bn_relu.keras", "onnx/clean_conv_bn_relu.onnx", "--format", "json", cwd=SAMPLES)
    assert run.returncode == 0, run.stderr
    [model] = json.loads(run.stdout)["models"]
    reason = "an ONNX file records no trainable flag (which BN layers were frozen in training); diff the .keras originals"
    assert model["rules_run"] == [] and model["findings"] == []
    assert model["skipped"] == [{"code": "BN211", "reason": reason}, {"code": "BN212", "reason": reason}]
    layers = model["measurements"]["diff"]["layers"]
    assert [(layer["base"], layer["frozen_base"], layer["frozen_tuned"]) for layer in layers.values()] == [("bn1", False, None), ("bn2", False, None)]
    text = run_bnaudit("diff", "clean_conv_bn_relu.keras", "onnx/clean_conv_bn_relu.onnx", cwd=SAMPLES).stdout
    assert "bn1 (position)    no->?" in text
