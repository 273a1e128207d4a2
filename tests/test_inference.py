"""BN401-BN404: the real command re-runs real models on two logical CPUs and every call path.

Most models are audited in one shared run (one TensorFlow start-up); each test then
asserts the exact BN4xx findings its model must give, and the ones it must not.
"""

from __future__ import annotations

import json
import textwrap

import numpy as np
import pytest

from conftest import SAMPLES, run_bnaudit

pytestmark = pytest.mark.slow

CUSTOM_MODULE = "inference_custom_layers"


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Small models saved with Keras itself: clean two-output, MC-dropout, custom layer."""
    import keras
    from keras import layers

    from model_builders import set_trained_statistics

    folder = tmp_path_factory.mktemp("inference")
    inp = keras.Input((6, 6, 3), name="image")
    x = layers.Conv2D(4, 3, padding="same", use_bias=False, name="conv")(inp)
    x = layers.BatchNormalization(name="bn")(x)
    x = layers.ReLU(name="relu")(x)
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    two_outputs = keras.Model(inp, [layers.Dense(3, activation="softmax", name="head")(x), layers.Dense(2, name="aux")(x)])
    set_trained_statistics(two_outputs)
    two_outputs.save(folder / "clean.keras")

    inp = keras.Input((8,), name="x")
    x = layers.Dense(8, use_bias=False, name="fc")(inp)
    x = layers.BatchNormalization(name="bn")(x)
    x = layers.Dropout(0.5, name="mc_dropout")(x, training=True)  # Monte-Carlo dropout, baked in
    mc_dropout = keras.Model(inp, layers.Dense(2, name="head")(x))
    set_trained_statistics(mc_dropout)
    mc_dropout.save(folder / "mc_dropout.keras")

    (folder / f"{CUSTOM_MODULE}.py").write_text(
        textwrap.dedent(
            """
            import keras

            class HalfScale(keras.layers.Layer):
                def call(self, inputs):
                    return inputs * 0.5

            custom_objects = {"HalfScale": HalfScale}
            """
        )
    )
    import importlib.util

    spec = importlib.util.spec_from_file_location(CUSTOM_MODULE, folder / f"{CUSTOM_MODULE}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    inp = keras.Input((5,), name="x")
    x = layers.Dense(4, use_bias=False, name="fc")(inp)
    x = layers.BatchNormalization(name="bn")(x)
    custom = keras.Model(inp, module.HalfScale(name="half")(x))
    set_trained_statistics(custom)
    custom.save(folder / "custom.keras")
    np.save(folder / "images.npy", np.random.default_rng(7).normal(size=(40, 8, 8, 3)).astype("float32"))  # the sample models take 8x8 RGB
    return folder


@pytest.fixture(scope="module")
def shared_run(models, tmp_path_factory):
    """One --inference run over five models, one of them refused (Lambda): JSON and text."""
    out = tmp_path_factory.mktemp("shared") / "out.json"
    paths = [
        models / "clean.keras",
        SAMPLES / "bn_training_baked.keras",
        models / "mc_dropout.keras",
        SAMPLES / "bn_fp16_small_epsilon.keras",
        SAMPLES / "lambda_layer.keras",
    ]
    run = run_bnaudit("check", *paths, "--inference", "--format", "json", "-o", out, "--format", "text")
    by_name = {m["path"].rsplit("/", 1)[-1]: m for m in json.loads(out.read_text())["models"]}
    return run, by_name


def bn4(model) -> list[tuple[str, str]]:
    return sorted((f["code"], f["layer"]) for f in model["findings"] if f["code"].startswith("BN4"))


def rows(model, table, **where):
    return [r for r in model["measurements"]["inference"][table] if all(r[k] == v for k, v in where.items())]


def test_clean_model_agrees_on_both_logical_cpus_and_every_path(shared_run):
    _, by_name = shared_run
    model = by_name["clean.keras"]
    assert bn4(model) == [] and model["errors"] == []
    inference = model["measurements"]["inference"]
    assert inference["devices"] == ["CPU:0", "CPU:1"] and inference["reference"] == "CPU:0"
    assert inference["gpu"] == "no GPU found"
    assert inference["inputs"]["source"] == "synthetic" and inference["inputs"]["shapes"] == [[128, 6, 6, 3]]
    table = {(r["run"], r["output"]): r for r in inference["device_table"]}
    assert sorted(table) == [("CPU:1", "aux"), ("CPU:1", "head")]
    assert table["CPU:1", "head"]["elements"] == 128 * 3 and table["CPU:1", "aux"]["elements"] == 128 * 2
    for row in table.values():
        assert row["passed"] and row["max_abs"] <= 1e-6 and set(row) >= {"mean_abs", "p99_abs", "max_rel", "mean_rel", "p99_rel"}
    assert all(r["passed"] for key in ("batch_dependence", "call_vs_predict", "repeatability") for r in inference[key])
    assert [r["elements"] for r in rows(model, "batch_dependence", output="head")] == [4 * 3, 4 * 3]  # 4 samples alone, 2 paths


def test_training_baked_in_a_saved_model_is_caught_through_model_call(shared_run):
    """Keras 3.15: predict ignores the baked training=True, a direct call obeys it."""
    _, by_name = shared_run
    model = by_name["bn_training_baked.keras"]
    assert bn4(model) == [("BN402", "head"), ("BN403", "head")]
    assert ("BN106", "bn1") in [(f["code"], f["layer"]) for f in model["findings"]]
    [batch] = [f for f in model["findings"] if f["code"] == "BN402"]
    assert batch["message"].startswith("with model(x), output 'head' of a sample run alone differs")
    assert [r["passed"] for r in rows(model, "batch_dependence", path="model.predict")] == [True]
    assert [r["passed"] for r in rows(model, "repeatability")] == [True, True]
    assert rows(model, "call_vs_predict")[0]["max_abs"] > 1e-2


def test_mc_dropout_is_nondeterministic_under_model_call_only(shared_run):
    _, by_name = shared_run
    model = by_name["mc_dropout.keras"]
    # BN402 is not judged on a path whose own repeat differs: that is noise, not the batch.
    assert bn4(model) == [("BN403", "head"), ("BN404", "head")]
    [repeat] = [f for f in model["findings"] if f["code"] == "BN404"]
    assert repeat["severity"] == "warning" and repeat["details"]["path"] == "model(x)"
    assert [r["passed"] for r in rows(model, "repeatability", path="model.predict")] == [True]


def test_mixed_precision_model_is_compared_in_float16_with_its_tolerances(shared_run):
    _, by_name = shared_run
    model = by_name["bn_fp16_small_epsilon.keras"]
    assert bn4(model) == [] and model["errors"] == []
    inference = model["measurements"]["inference"]
    assert inference["compute_dtype"] == "float16"
    assert inference["tolerance"] == {"atol": 1e-2, "rtol": 1e-2, "source": "default for float16"}


def test_lambda_model_is_refused_and_the_others_still_run(shared_run):
    run, by_name = shared_run
    assert run.returncode == 2
    model = by_name["lambda_layer.keras"]
    assert "inference" not in model["measurements"]
    [first] = model["errors"]  # one cause, one error: the other three rules are skipped
    assert first["rule"] == "BN401" and first["message"].startswith("refusing to load a model that can execute code: rescale_lambda (Lambda)")
    assert first["rules"] == ["BN401", "BN402", "BN403", "BN404"]
    assert not any(code.startswith("BN4") for code in model["rules_run"])
    assert "--unsafe-load" in first["hint"]
    assert [(s["code"], s["reason"]) for s in model["skipped"] if s["code"].startswith("BN4")] == [
        (code, "not checked: see the error of BN401") for code in ("BN402", "BN403", "BN404")
    ]
    refusals = [line for line in run.stderr.splitlines() if "refusing to load" in line]
    assert len(refusals) == 1 and "lambda_layer.keras [BN401, BN402, BN403, BN404]" in refusals[0]
    assert "refusing to load" not in run.stdout  # the text report on stdout does not repeat stderr
    assert all("measurements" in m and m["errors"] == [] for name, m in by_name.items() if name != "lambda_layer.keras")


def test_rules_a_runtime_failure_stopped_are_not_passed_and_their_baseline_entries_not_stale(tmp_path):
    """`--devices GPU:7` where there is no such device: BN401 fails, BN402-BN404 are
    skipped pointing at it; JUnit has no passing case for them and the baseline's
    accepted BN402/BN403 entries are not called stale (those rules did not run)."""
    import xml.etree.ElementTree as ET

    model = tmp_path / "baked.keras"
    model.write_bytes((SAMPLES / "bn_training_baked.keras").read_bytes())
    entries = [("BN106", "bn1"), ("BN402", "head"), ("BN403", "head")]
    baseline = {"version": 1, "tool": "bnaudit", "findings": [{"model": "baked.keras", "code": c, "layer": l} for c, l in entries]}
    (tmp_path / "baseline.json").write_text(json.dumps(baseline))
    run = run_bnaudit(
        "check", "baked.keras", "--isolated", "--inference", "--devices", "GPU:7", "--baseline", "baseline.json",
        "--fail-on-stale", "--format", "junit", "-o", "out.xml", "--format", "json", "-o", "out.json", cwd=tmp_path,
    )  # fmt: skip
    assert run.returncode == 2
    [error] = [line for line in run.stderr.splitlines() if line.startswith("bnaudit: error")]
    assert error.startswith("bnaudit: error: baked.keras [BN401, BN402, BN403, BN404]: ") and "GPU:7" in error
    assert "stale entries: 0" in run.stderr and "stale" not in " ".join(json.loads((tmp_path / "out.json").read_text())["models"][0]["notes"])
    suite = ET.parse(tmp_path / "out.xml").getroot().find("testsuite")
    cases = {}
    for case in suite.iter("testcase"):
        cases.setdefault(case.get("classname").split(".")[0], []).append([child.tag for child in case])
    assert cases["BN401"] == [["error"]]
    assert cases["BN402"] == cases["BN403"] == cases["BN404"] == [["skipped"]]
    assert suite.get("errors") == "1"
    assert cases["BN106"] and all(case == [] for case in cases["BN106"])  # ran; its finding accepted by the baseline: passing


def test_text_output_says_which_devices_ran_and_that_no_gpu_was_found(shared_run):
    run, _ = shared_run
    note = "note: inference re-runs on CPU:0, CPU:1; compared with CPU:0; no GPU found: the CPU-GPU comparison was skipped"
    assert run.stdout.count(note) == 4  # every model that loaded
    assert "BN403 error   head: output 'head' of model(x) differs from model.predict(x) on the same batch" in run.stdout


def test_float64_reference_with_zero_tolerance_names_output_devices_and_worst_element(models, tmp_path):
    out = tmp_path / "out.json"
    run = run_bnaudit(
        "check", models / "clean.keras", "--inference", "--select", "BN401", "--devices", "CPU:1",
        "--reference", "float64", "--atol", "0", "--rtol", "0", "--format", "json", "-o", out,
    )  # fmt: skip
    assert run.returncode == 1, run.stderr
    [model] = json.loads(out.read_text())["models"]
    assert model["measurements"]["inference"]["devices"] == ["CPU:0", "CPU:1"]  # the reference CPU always runs
    findings = sorted((f["layer"], f["details"]["run"]) for f in model["findings"])
    assert findings == [("aux", "CPU:0"), ("aux", "CPU:1"), ("head", "CPU:0"), ("head", "CPU:1")]
    for finding in model["findings"]:
        details = finding["details"]
        assert finding["message"].startswith(f"output {finding['layer']!r} on {details['run']} differs from CPU:0 (float64)")
        worst = details["worst"]
        assert f"worst at sample {worst['sample']}, index {worst['index']}" in finding["message"]
        assert worst["abs"] == details["max_abs"] and worst["value"] != worst["reference"]
        # float32 rounding is all that differs: the float32 defaults would pass it
        assert 0 < details["max_abs"] < 1e-5 and details["tolerance"]["source"] == "--atol/--rtol"


def test_custom_layer_and_lambda_load_only_with_unsafe_load(models, tmp_path):
    refused = run_bnaudit("check", models / "custom.keras", "--inference", "--custom-objects", f"{CUSTOM_MODULE}:custom_objects")
    assert refused.returncode == 2
    assert refused.stderr == "bnaudit: error: --custom-objects imports code for the model's custom layers: it needs --unsafe-load\n"

    out = tmp_path / "out.json"
    run = run_bnaudit(
        "check", models / "custom.keras", SAMPLES / "lambda_layer.keras", "--inference", "--select", "BN4",
        "--unsafe-load", "--custom-objects", f"{CUSTOM_MODULE}:custom_objects", "--format", "json", "-o", out,
        env={"PYTHONPATH": str(models)},
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    for model in json.loads(out.read_text())["models"]:
        assert model["findings"] == [] and model["errors"] == []
        assert [r["passed"] for r in model["measurements"]["inference"]["device_table"]] == [True]


def test_data_from_npy_feeds_the_same_checks(models, tmp_path):
    out = tmp_path / "out.json"
    run = run_bnaudit(
        "check", SAMPLES / "bn_training_baked.keras", "--data", models / "images.npy", "--select", "BN4",
        "--allow-tf32", "--format", "json", "-o", out,
    )  # fmt: skip
    assert run.returncode == 1, run.stderr
    [model] = json.loads(out.read_text())["models"]
    assert bn4(model) == [("BN402", "head"), ("BN403", "head")]
    inference = model["measurements"]["inference"]
    assert inference["inputs"]["source"] == "data" and inference["inputs"]["samples"] == 40
    assert inference["inputs"]["shapes"] == [[40, 8, 8, 3]]
    assert inference["tf32"] is None and inference["gpu"] == "no GPU found"  # --allow-tf32 has no GPU to act on


def test_without_data_or_inference_the_rules_are_skipped(models):
    run = run_bnaudit("check", models / "clean.keras", "--select", "BN4", "--format", "json")
    assert run.returncode == 0
    [model] = json.loads(run.stdout)["models"]
    assert model["skipped"] == [{"code": f"BN40{i}", "reason": "needs --data or --inference"} for i in range(1, 5)]
