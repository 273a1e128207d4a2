"""`bnaudit report` re-renders saved JSON; every format is deterministic and written atomically."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from bnaudit.output import write_atomic
from bnaudit.reporters.json import DocumentError, results_from_document
from conftest import ROOT, invoke

MODELS = [
    "sample_models/dropout_before_bn.keras",
    "sample_models/bn_training_baked.keras",
    "sample_models/custom_layer.keras",
    "sample_models/nested_transfer.keras",
    "sample_models/clean_conv_bn_relu.h5",
    "sample_models/missing.keras",
]
FORMATS = {"json": "results.json", "html": "report.html", "sarif": "bnaudit.sarif", "junit": "junit.xml", "github": "annotations.txt", "text": "report.txt"}
NO_SUMMARY = {"GITHUB_STEP_SUMMARY": ""}


def check_all_formats(out: Path, *extra: str):
    args = [a for name, file in FORMATS.items() for a in ("--format", name, "-o", str(out / file))]
    return invoke("check", *MODELS, *args, *extra, cwd=ROOT, env=NO_SUMMARY)


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("first")
    run = check_all_formats(out)
    assert run.returncode == 2, run.stderr  # missing.keras is an error; the others still ran
    assert "Traceback" not in run.stderr
    return out


def test_every_format_is_identical_when_run_again(first_run, tmp_path):
    run = check_all_formats(tmp_path)
    assert run.returncode == 2
    for file in FORMATS.values():
        assert (tmp_path / file).read_bytes() == (first_run / file).read_bytes(), file


def test_report_re_renders_every_format_exactly_as_check_wrote_it(first_run, tmp_path):
    args = [a for name, file in FORMATS.items() for a in ("--format", name, "-o", str(tmp_path / file))]
    run = invoke("report", str(first_run / "results.json"), *args, cwd=ROOT, env=NO_SUMMARY)
    assert run.returncode == 0, run.stderr
    for file in FORMATS.values():
        assert (tmp_path / file).read_text() == (first_run / file).read_text(), file


def test_the_saved_results_hold_what_the_reports_need(first_run):
    models = {m["path"]: m for m in json.loads((first_run / "results.json").read_text())["models"]}
    assert [(f["code"], f["layer"]) for f in models["sample_models/bn_training_baked.keras"]["findings"]] == [("BN106", "bn1")]
    assert models["sample_models/missing.keras"]["errors"][0]["message"] == "no such file or directory"
    dropout = models["sample_models/dropout_before_bn.keras"]
    assert "seconds" not in dropout["meta"] and "rule_seconds" not in dropout["meta"]
    assert dropout["measurements"]["layers"]["bn2"] == {
        "before": [[["conv2", "Conv2D"]], [["drop", "Dropout"]]],
        "class": "BatchNormalization",
        "after": [[["relu2", "ReLU"]], [["gap", "GlobalAveragePooling2D"]]],
    }
    nested = models["sample_models/nested_transfer.keras"]["measurements"]["layers"]["base/stem_bn"]
    assert nested["before"][-1] == [["base/stem_conv", "Conv2D"]]
    assert nested["after"][0] == [["base/stem_relu", "ReLU"]]


def test_timestamp_stamps_reports_and_keeps_durations(tmp_path):
    run = invoke(
        "check", MODELS[0], "--timestamp", "--format", "json", "-o", str(tmp_path / "r.json"),
        "--format", "html", "-o", str(tmp_path / "r.html"), "--format", "junit", "-o", str(tmp_path / "j.xml"), cwd=ROOT,
    )
    assert run.returncode == 0, run.stderr
    document = json.loads((tmp_path / "r.json").read_text())
    stamp = document["generated"]
    assert stamp.endswith("+00:00")
    assert document["models"][0]["meta"]["seconds"] >= 0
    assert stamp in (tmp_path / "r.html").read_text()
    assert f'timestamp="{stamp}"' in (tmp_path / "j.xml").read_text()


def test_several_documents_render_as_one_report(first_run, tmp_path):
    run = invoke("check", MODELS[1], "--format", "json", "-o", str(tmp_path / "b.json"), cwd=ROOT)
    assert run.returncode == 1
    merged = invoke("report", str(first_run / "results.json"), str(tmp_path / "b.json"), "--format", "json", cwd=ROOT)
    assert merged.returncode == 0, merged.stderr
    document = json.loads(merged.stdout)
    first = json.loads((first_run / "results.json").read_text())
    assert [m["path"] for m in document["models"]] == [m["path"] for m in first["models"]] + [MODELS[1]]
    assert document["summary"]["by_severity"]["error"] == 2


def test_report_reads_standard_input(first_run):
    text = (first_run / "results.json").read_text()
    import subprocess
    import sys

    proc = subprocess.run(
        [sys.executable, "-m", "bnaudit", "report", "-", "--format", "text"], input=text, capture_output=True, text=True, cwd=ROOT
    )
    assert proc.returncode == 0, proc.stderr
    assert "BN106" in proc.stdout and "5 models" not in proc.stdout and "6 models" in proc.stdout


@pytest.mark.parametrize(
    "content, message",
    [
        (None, "no such file (give the JSON written by `bnaudit check --format json -o FILE`)"),
        ("{not json", "not JSON (Expecting property name enclosed in double quotes at line 1, column 2)"),
        ('{"version": 2, "models": []}', "document version 2 is not supported (this bnaudit reads version 1)"),
        (b"PK\x03\x04\xe7\x00", "not a JSON report (binary content; audit a model with `bnaudit check`, render its --format json output here)"),
    ],
)
def test_unreadable_documents_give_one_line_and_exit_2(tmp_path, content, message):
    document = tmp_path / "results.json"
    if isinstance(content, bytes):  # a model given by mistake
        document.write_bytes(content)
    elif content is not None:
        document.write_text(content)
    run = invoke("report", str(document), "--format", "html", "-o", str(tmp_path / "r.html"))
    assert run.returncode == 2
    assert run.stderr == f"bnaudit: error: {document}: {message}\n"
    assert not (tmp_path / "r.html").exists()


@pytest.mark.parametrize(
    "document, message",
    [
        ({"models": []}, "not a bnaudit results document (no 'version'); write one with `bnaudit check --format json`"),
        ({"version": 1, "models": {}}, "document.models: expected list, got dict"),
        ({"version": 1, "models": [{"findings": []}]}, "models[0]: 'path' is missing"),
        ({"version": 1, "models": [{"path": "m.keras", "findings": [{"code": "BN101", "message": "m"}]}]}, "models[0].findings[0]: 'severity' is missing"),
        ({"version": 1, "models": [{"path": "m.keras", "findings": [{"code": "BN101", "message": "m", "severity": "bad"}]}]},
         "models[0].findings[0]: unknown severity 'bad' (choose from info, warning, error)"),
        ({"version": 1, "models": [{"path": "m.keras", "errors": [{"rule": "BN101"}]}]}, "models[0].errors[0]: 'message' is missing"),
    ],
)
def test_documents_are_checked_where_it_matters(document, message):
    with pytest.raises(DocumentError) as raised:
        results_from_document(document)
    assert str(raised.value) == message


@pytest.mark.parametrize(
    "template, message",
    [
        ('{% extends "default:report.html.j2" %}{% block summary %}{{ 1 // 0 }}{% endblock %}', "template failed: ZeroDivisionError"),
        ("<p>{% if %}</p>", "line 1: Expected an expression"),
    ],
)
def test_a_failed_render_leaves_the_previous_file_and_no_partial_one(first_run, tmp_path, template, message):
    templates = tmp_path / "templates"
    templates.mkdir()
    (templates / "report.html.j2").write_text(template)
    out = tmp_path / "out"
    out.mkdir()
    (out / "report.html").write_text("the previous report")
    run = invoke(
        "report", str(first_run / "results.json"), "--templates", str(templates),
        "--format", "json", "-o", str(out / "results.json"), "--format", "html", "-o", str(out / "report.html"),
    )
    assert run.returncode == 2
    assert len(run.stderr.splitlines()) == 1 and message in run.stderr and "Traceback" not in run.stderr
    assert (out / "report.html").read_text() == "the previous report"
    assert sorted(p.name for p in out.iterdir()) == ["report.html", "results.json"]  # no temporary file left


def test_templates_must_be_a_directory(first_run, tmp_path):
    run = invoke("report", str(first_run / "results.json"), "--templates", str(tmp_path / "nope"), "--format", "html")
    assert run.returncode == 2
    assert run.stderr.startswith(f"bnaudit: error: --templates {tmp_path / 'nope'}: not a directory")


def test_write_atomic_keeps_the_old_file_when_writing_fails(tmp_path):
    target = tmp_path / "report.html"
    target.write_text("old")
    with pytest.raises(UnicodeEncodeError):
        write_atomic(target, "new text that cannot be encoded: \udc80")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["report.html"]
    write_atomic(target, "new")
    assert target.read_text() == "new"


def test_written_reports_are_as_readable_as_any_new_file(first_run, tmp_path):
    umask = os.umask(0o022)
    try:
        write_atomic(tmp_path / "fresh.html", "x")
        (tmp_path / "kept.html").write_text("old")
        (tmp_path / "kept.html").chmod(0o640)
        write_atomic(tmp_path / "kept.html", "new")
    finally:
        os.umask(umask)
    assert (tmp_path / "fresh.html").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "kept.html").stat().st_mode & 0o777 == 0o640
    assert (first_run / "report.html").stat().st_mode & 0o777 == 0o666 & ~umask
