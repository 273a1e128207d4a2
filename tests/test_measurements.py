"""Typed measurements: each kind's JSON is the document's shape, read back into the same
values; a rule yielding one twice keeps it once; anything that is no known kind stays a
plain topic, so nothing is lost when a document is written again. numpy only."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import ClassVar

import pytest

from bnaudit.analysis.tolerances import Comparison
from bnaudit.engine import record
from bnaudit.measurements import (
    BatchNormDrift,
    BatchNormNeighbourhood,
    BatchNormNotMeasured,
    CallPathComparison,
    DeviceComparison,
    InferenceSetup,
    Measured,
    Measurement,
    StatisticsPass,
    TrainInferenceComparison,
    from_json,
    to_json,
)
from bnaudit.reporters.json import dumps
from bnaudit.reporters.measurements import sections
from bnaudit.result import AuditResult


def row(output: str, run: str, max_abs: float = 0.0, mismatched: int = 0) -> Comparison:
    worst = {"sample": 0, "index": [], "value": 1.0, "reference": 1.0, "abs": max_abs, "rel": None}
    return Comparison(output, run, "CPU:0", max_abs, max_abs, max_abs, math.inf if mismatched else 0.0, 0.0, 0.0, mismatched, 10, worst, path="model.predict")


DRIFT = BatchNormDrift(
    "block/bn", channels=2, values_per_channel=32, drift_score=0.25, worst_channel=1, worst_channel_kl=0.4, mean_shift=0.5,
    max_mean_shift=0.7, variance_ratio=1.1, max_abs_log_variance_ratio=0.2, dead_channels=0, full_batches=4,
    batch_mean_spread=None, batch_variance_spread=0.03,
)
EVERY_KIND = [
    BatchNormNeighbourhood("block/bn", "BatchNormalization", [[["block/conv", "Conv2D"]]], [[["block/relu", "ReLU"]]]),
    StatisticsPass(samples=64, batches=2, batch_size=32, upstream="inference", replicas=1, source="data", seconds=1.5, order="sorted (file order)"),
    DRIFT,
    BatchNormNotMeasured("head/bn", 3, "its moving statistics hold NaN or Inf (see BN201)"),
    TrainInferenceComparison(cka=None, top1_agreement=0.9, compared_predictions=64, samples=64, not_judged=("linear CKA needs batches of at least 4 samples",)),
    InferenceSetup(["CPU:0", "CPU:1"], "CPU:0", "no GPU found", None, {"source": "synthetic", "seed": 0}, "float32", {"atol": 1e-4, "rtol": 1e-3, "source": "default for float32"}, {"predict CPU:0": 0.5}),
    DeviceComparison(row("out", "CPU:1", 0.5, 3)),
    CallPathComparison("call_vs_predict", row("out", "model(x)")),
    CallPathComparison("repeatability", row("out", "model.predict on CPU:0, repeated")),
]


def test_the_json_keeps_the_documents_shape():
    document = to_json(EVERY_KIND)
    assert list(document) == ["layers", "statistics", "train_inference", "inference"]
    assert document["layers"] == {"block/bn": {"before": [[["block/conv", "Conv2D"]]], "class": "BatchNormalization", "after": [[["block/relu", "ReLU"]]]}}
    assert list(document["statistics"]) == ["samples", "batches", "batch_size", "upstream", "replicas", "source", "seconds", "order", "layers"]
    assert document["statistics"]["layers"]["head/bn"] == {"channels": 3, "not_measured": "its moving statistics hold NaN or Inf (see BN201)"}
    assert "per_channel" not in document["statistics"]["layers"]["block/bn"]  # only with --per-channel
    assert document["train_inference"]["not_judged"] == ["linear CKA needs batches of at least 4 samples"]
    assert list(document["inference"]) == [
        "devices", "reference", "gpu", "tf32", "inputs", "compute_dtype", "tolerance",
        "device_table", "batch_dependence", "call_vs_predict", "repeatability", "seconds",
    ]
    assert document["inference"]["batch_dependence"] == []  # a table with no rows is still there
    assert document["inference"]["device_table"][0]["passed"] is False


def test_every_kind_reads_back_from_its_json_as_the_same_value():
    written = json.loads(dumps(to_json(EVERY_KIND)))  # through strict JSON: inf becomes "inf"
    assert from_json(written) == EVERY_KIND
    assert to_json(from_json(written)) == written


def test_a_measurement_yielded_again_is_kept_once_in_its_place():
    result = AuditResult("m.keras")
    moved = StatisticsPass(samples=64, batches=2, batch_size=32, upstream="inference", replicas=1, source="data", seconds=2.0)
    for item in (EVERY_KIND[1], DRIFT, EVERY_KIND[1], moved, DRIFT):  # BN301 then BN303, each with the pass
        record(result, item)
    assert result.measurements == [moved, DRIFT]
    assert result.measured(BatchNormDrift) == [DRIFT]


def test_plain_measurements_merge_by_topic_and_stay_plain():
    items = [Measurement("probe", {"a": {"x": 1}}), Measurement("probe", {"a": {"y": 2}, "b": [1]})]
    assert to_json(items) == {"probe": {"a": {"x": 1, "y": 2}, "b": [1]}}
    assert from_json({"probe": {"a": 1}}) == [Measurement("probe", {"a": 1})]


@pytest.mark.parametrize(
    "topic, value",
    [
        ("statistics", {"layers": {"bn": {"drift_score": 0.5}}}),  # a record missing its kind's fields
        ("statistics", {"layers": {"bn": {**DRIFT.to_dict(), "<script>": 1}}}),  # one field too many
        ("statistics", {"layers": {"bn": {**DRIFT.to_dict(), "layer": "other"}}}),  # the key names the layer
        ("statistics", "not a mapping"),
        ("layers", {"bn": {"before": "garbage", "class": "BatchNormalization", "after": []}}),
        ("layers", {"bn": {"before": [[["only-a-path"]]], "class": "BatchNormalization", "after": []}}),
        ("inference", [1, 2]),
        ("inference", {"device_table": [{"output": "head", "passed": True}]}),
        ("inference", {"unknown_check": []}),
        ("train_inference", {"cka": 0.5}),
    ],
)
def test_what_is_no_known_kind_stays_a_plain_topic_as_given(topic, value):
    assert from_json({topic: value}) == [Measurement(topic, value)]
    assert to_json(from_json({topic: value})) == {topic: value}


def test_a_typed_kind_no_renderer_knows_is_shown_as_rows_escaped():
    """A plugin's own Measured subclass: the HTML report shows its JSON as a table."""
    @dataclass(frozen=True)
    class Thermal(Measured):
        kind: ClassVar[str] = "thermal-zone"
        topic: ClassVar[str] = "thermal"
        slot: ClassVar[str] = "zones[]"
        zone: str
        celsius: float

    items = [Thermal("<b>cpu</b>", 41.0), Thermal("gpu", 55.5)]
    assert to_json(items) == {"thermal": {"zones": [{"zone": "<b>cpu</b>", "celsius": 41.0}, {"zone": "gpu", "celsius": 55.5}]}}
    [table] = sections(items, {}).other
    assert (table.title, table.columns, table.rows) == ("Thermal-zone", ["zone", "celsius"], [["<b>cpu</b>", "41"], ["gpu", "55.5"]])
