"""Every JSON document bnaudit writes validates against docs/json-schema.json."""

from __future__ import annotations

import copy
import json

import jsonschema
import pytest

from conftest import ROOT, invoke

SCHEMA = json.loads((ROOT / "docs" / "json-schema.json").read_text())


@pytest.fixture(scope="module")
def validator():
    jsonschema.Draft202012Validator.check_schema(SCHEMA)
    return jsonschema.Draft202012Validator(SCHEMA, format_checker=jsonschema.FormatChecker())


@pytest.fixture(scope="module")
def documents(tmp_path_factory):
    """Every sample model (all formats, every static rule firing), plus unreadable inputs."""
    out = tmp_path_factory.mktemp("json")
    (out / "not_a_model.keras").write_text("hello")
    runs = [
        invoke("check", "sample_models", "--format", "json", "--exit-zero", cwd=ROOT),
        invoke("check", "sample_models/dropout_before_bn.keras", str(out / "not_a_model.keras"), "nope.h5", "--timestamp", "--format", "json", cwd=ROOT),
    ]
    (out / "a.json").write_text(runs[0].stdout)
    runs.append(invoke("report", str(out / "a.json"), "--format", "json", cwd=ROOT))
    for run in runs:
        assert "Traceback" not in run.stderr
    return [json.loads(run.stdout) for run in runs]


def test_every_output_validates(validator, documents):
    for document in documents:
        errors = [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(document)]
        assert errors == []
    assert sum(len(m["findings"]) for m in documents[0]["models"]) > 20
    assert {bool(m["errors"]) for m in documents[1]["models"]} == {True, False}


def test_the_schema_rejects_what_it_must(validator, documents):
    broken = copy.deepcopy(documents[0])
    model = next(m for m in broken["models"] if m["findings"])
    model["findings"][0]["severity"] = "fatal"
    model["measurements"]["layers"] = {"bn": {"before": [[["only-a-path"]]], "class": "BatchNormalization", "after": []}}
    del broken["summary"]["by_severity"]["info"]
    messages = sorted(e.message for e in validator.iter_errors(broken))
    assert any("'fatal' is not one of" in m for m in messages)
    assert any("is too short" in m for m in messages)
    assert any("'info' is a required property" in m for m in messages)


def test_layer_neighbourhoods_cover_every_batchnorm(documents):
    for model in documents[0]["models"]:
        if model["errors"]:
            continue
        assert len(model["measurements"].get("layers", {})) == model["meta"]["batchnorm_layers"], model["path"]  # none without BN layers
