"""SARIF output: valid 2.1.0, shaped as GitHub code scanning demands, fingerprints that survive retraining."""

from __future__ import annotations

import hashlib
import json
import shutil

import jsonschema
import pytest

from conftest import ROOT, invoke

#: The official schema, kept under tests/ (tests/schemas/README.md gives its source and licence).
SARIF_SCHEMA = ROOT / "tests" / "schemas" / "sarif-schema-2.1.0.json"
SARIF_SCHEMA_SHA256 = "3f5f2d5ee0fd9b57cbe873a8bf870597cea6da7cbdff57f7bc34aea4570ce33b"
MODELS = ["sample_models/dropout_before_bn.keras", "sample_models/bn_training_baked.keras", "sample_models/nested_transfer.keras"]


def sarif(*args, cwd=ROOT):
    run = invoke("check", *args, "--format", "sarif", cwd=cwd)
    assert "Traceback" not in run.stderr
    return json.loads(run.stdout)


@pytest.fixture(scope="module")
def log():
    return sarif(*MODELS)


def test_validates_against_the_official_schema(log):
    raw = SARIF_SCHEMA.read_bytes()
    assert hashlib.sha256(raw).hexdigest() == SARIF_SCHEMA_SHA256, "tests/schemas/sarif-schema-2.1.0.json is not the published file"
    schema = json.loads(raw)
    errors = [f"{list(e.absolute_path)}: {e.message}" for e in jsonschema.Draft7Validator(schema).iter_errors(log)]
    assert errors == []
    assert log["version"] == "2.1.0"


def test_rules_carry_what_github_shows(log):
    rules = log["runs"][0]["tool"]["driver"]["rules"]
    assert [r["id"] for r in rules] == sorted(r["id"] for r in rules)
    assert {"BN101", "BN106", "BN501"} <= {r["id"] for r in rules}
    for rule in rules:
        assert rule["shortDescription"]["text"] and rule["fullDescription"]["text"] and rule["help"]["text"]
        assert "helpUri" not in rule  # the package declares no documentation URL: no link to a page that does not exist
        assert rule["defaultConfiguration"]["level"] in {"error", "warning", "note"}
    by_id = {r["id"]: r for r in rules}
    assert by_id["BN106"]["defaultConfiguration"]["level"] == "error"
    assert by_id["BN102"]["defaultConfiguration"]["level"] == "note"
    assert by_id["BN101"]["name"] == "dropout-before-batchnorm"
    assert "## Why is this bad?" in by_id["BN101"]["help"]["markdown"]


def test_results_locate_the_model_file_and_the_layer(log):
    run = log["runs"][0]
    rules = run["tool"]["driver"]["rules"]
    got = sorted(
        (
            r["ruleId"],
            r["level"],
            r["locations"][0]["physicalLocation"]["artifactLocation"]["uri"],
            r["locations"][0]["physicalLocation"]["region"]["startLine"],
            r["locations"][0]["logicalLocations"][0]["fullyQualifiedName"],
        )
        for r in run["results"]
    )
    assert got == [
        ("BN101", "warning", "sample_models/dropout_before_bn.keras", 1, "bn2"),
        ("BN102", "note", "sample_models/nested_transfer.keras", 1, "base/stem_bn"),
        ("BN106", "error", "sample_models/bn_training_baked.keras", 1, "bn1"),
    ]
    for result in run["results"]:
        assert rules[result["ruleIndex"]]["id"] == result["ruleId"]
        assert result["message"]["text"]
    assert run["invocations"][0]["executionSuccessful"] is True


def test_uris_are_relative_to_the_working_directory(tmp_path):
    models = tmp_path / "repo" / "models"
    models.mkdir(parents=True)
    shutil.copy(ROOT / MODELS[1], models / "my model.keras")
    inside = sarif(str(models / "my model.keras"), cwd=tmp_path / "repo")
    location = inside["runs"][0]["results"][0]["locations"][0]["physicalLocation"]["artifactLocation"]
    assert location["uri"] == "models/my%20model.keras"
    outside = sarif(str(models / "my model.keras"), cwd=ROOT)
    location = outside["runs"][0]["results"][0]["locations"][0]["physicalLocation"]["artifactLocation"]
    assert location["uri"] == (models / "my model.keras").as_uri()


def test_unreadable_models_and_skipped_rules_are_notifications(tmp_path):
    broken = tmp_path / "broken.keras"
    broken.write_bytes(b"PK\x03\x04 not really a zip")
    log = sarif(str(broken), MODELS[0], "--format", "json", "-o", str(tmp_path / "r.json"))
    invocation = log["runs"][0]["invocations"][0]
    assert invocation["executionSuccessful"] is False
    [note] = invocation["toolExecutionNotifications"]
    assert note["level"] == "error"
    assert note["locations"][0]["physicalLocation"]["artifactLocation"]["uri"] == broken.as_uri()
    skipped = {(s["code"], s["reason"]) for m in json.loads((tmp_path / "r.json").read_text())["models"] for s in m["skipped"]}
    configured = {(n["descriptor"]["id"], n["message"]["text"]) for n in invocation["toolConfigurationNotifications"]}
    assert configured == {(code, f"{code} did not run: {reason}") for code, reason in skipped}


@pytest.mark.slow
def test_fingerprints_survive_retraining_and_tell_layers_apart(tmp_path):
    """The same architecture saved before and after a training step: other bytes, same alerts."""
    import keras
    import numpy as np
    from keras import layers

    keras.utils.set_random_seed(0)
    inp = keras.Input((6,), name="x")
    h = layers.Dense(8, use_bias=False, name="dense_a")(inp)
    h = layers.Dropout(0.2, name="drop_a")(h)
    h = layers.BatchNormalization(name="bn_a")(h)
    h = layers.Dense(8, use_bias=False, name="dense_b")(h)
    h = layers.Dropout(0.2, name="drop_b")(h)
    h = layers.BatchNormalization(name="bn_b")(h)
    model = keras.Model(inp, layers.Dense(1, name="out")(h))
    model.compile(optimizer="sgd", loss="mse")
    model.fit(np.ones((16, 6)), np.ones((16, 1)), epochs=1, verbose=0)
    model.save(tmp_path / "model.keras")
    before = sarif("model.keras", cwd=tmp_path)
    first_bytes = (tmp_path / "model.keras").read_bytes()
    model.fit(np.random.default_rng(1).normal(size=(32, 6)), np.zeros((32, 1)), epochs=2, verbose=0)
    model.save(tmp_path / "model.keras")
    after = sarif("model.keras", cwd=tmp_path)
    assert (tmp_path / "model.keras").read_bytes() != first_bytes

    def prints(log):
        return {r["locations"][0]["logicalLocations"][0]["fullyQualifiedName"]: r["partialFingerprints"] for r in log["runs"][0]["results"] if r["ruleId"] == "BN101"}

    assert set(prints(before)) == {"bn_a", "bn_b"}
    assert prints(before) == prints(after)
    assert prints(before)["bn_a"] != prints(before)["bn_b"]
