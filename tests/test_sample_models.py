"""Every committed sample model gives exactly the findings `sample_models/expected.json` lists.

The sample models are saved by Keras 3 (`.keras`, `.h5`) and by tf-keras (Keras 2 `.h5`),
so this checks every static rule, firing and clean, in every format.
"""

from __future__ import annotations

import json

import pytest

from conftest import SAMPLES, invoke

EXPECTED = json.loads((SAMPLES / "expected.json").read_text())


@pytest.fixture(scope="module")
def audited():
    run = invoke("check", "--format", "json", "--exit-zero", *sorted(EXPECTED), cwd=SAMPLES)
    assert "Traceback" not in run.stderr
    return {m["path"]: m for m in json.loads(run.stdout)["models"]}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_exact_findings(audited, name):
    model = audited[name]
    assert model["errors"] == []
    got = sorted((f["code"], f["layer"]) for f in model["findings"])
    want = sorted((f["code"], f["layer"]) for f in EXPECTED[name])
    assert got == want


def test_every_static_rule_fires_somewhere_and_a_clean_model_exists_in_each_format():
    fired = {f["code"] for findings in EXPECTED.values() for f in findings}
    static = {f"BN{n}" for n in (101, 102, 103, 104, 105, 106, 107, 108, 109, 201, 202, 203, 204, 501)}
    assert static <= fired
    clean = {name.rsplit(".", 1)[1] + ("-k2" if name.startswith("k2_") else "") for name, f in EXPECTED.items() if not f}
    assert {"keras", "h5", "h5-k2"} <= clean


def test_sample_models_are_small():
    for path in SAMPLES.iterdir():
        if path.suffix in (".keras", ".h5"):
            assert path.stat().st_size < 1_000_000, path.name
