"""GitHub Actions annotations: escaped as the runner parses them, capped, full table in the job summary."""

from __future__ import annotations

import json
import shutil

from bnaudit.findings import Finding, Severity
from bnaudit.reporters import Report
from bnaudit.reporters.github import escape_data, escape_property, step_summary
from bnaudit.result import AuditResult
from conftest import ROOT, invoke


def test_escaping_follows_the_runner():
    assert escape_data("50% done\r\nnext: a, b") == "50%25 done%0D%0Anext: a, b"
    assert escape_property("dir:a,b%\n") == "dir%3Aa%2Cb%25%0A"


def test_one_annotation_per_finding_with_file_and_rule_title(tmp_path):
    odd = tmp_path / "odd:name,1.keras"
    shutil.copy(ROOT / "sample_models/bn_training_baked.keras", odd)
    shutil.copy(ROOT / "sample_models/dropout_before_bn.keras", tmp_path / "dropout.keras")
    run = invoke("check", odd.name, "dropout.keras", "--format", "github", cwd=tmp_path, env={"GITHUB_STEP_SUMMARY": ""})
    assert run.returncode == 1
    lines = run.stdout.splitlines()
    assert lines[0].startswith(
        "::error file=odd%3Aname%2C1.keras,title=BN106 batchnorm-training-baked::bn1: BatchNormalization 'bn1' is called with training=True"
    )
    assert "%0AFix: " in lines[0]
    assert lines[1].startswith("::warning file=dropout.keras,title=BN101 dropout-before-batchnorm::bn2: Dropout 'drop' feeds")
    assert lines[2:] == ["2 models, 2 findings (1 error, 1 warning)"]


def test_capped_at_ten_per_severity_and_everything_in_the_step_summary(tmp_path):
    summary = tmp_path / "summary.md"
    summary.write_text("earlier step\n")
    run = invoke(
        "check", "sample_models", "nope.keras", "--exit-zero", "--format", "json", "-o", str(tmp_path / "r.json"), "--format", "github",
        cwd=ROOT, env={"GITHUB_STEP_SUMMARY": str(summary)},
    )
    assert run.returncode == 2  # nope.keras
    models = json.loads((tmp_path / "r.json").read_text())["models"]
    findings = [f for m in models for f in m["findings"]]
    errors = sum(len(m["errors"]) for m in models)
    lines = run.stdout.splitlines()
    for severity, command in (("error", "error"), ("warning", "warning"), ("info", "notice")):
        total = sum(1 for f in findings if f["severity"] == severity) + (errors if severity == "error" else 0)
        assert total > 10, severity  # the sample models exercise the cap for every severity
        assert sum(1 for line in lines if line.startswith(f"::{command} ")) == 10
        assert f"bnaudit: {total - 10} more {severity} annotations not shown; all are in the job summary" in lines
    text = summary.read_text()
    assert text.startswith("earlier step\n## bnaudit\n")
    rows = [line for line in text.splitlines() if line.startswith("| ") and not line.startswith("| severity")]
    assert len(rows) == len(findings) + errors
    assert "| error | unreadable model | nope.keras |  | no such file or directory |" in rows


def test_step_summary_cells_cannot_break_the_table_or_inject_markup():
    finding = Finding("BN101", "dropout-before-batchnorm", Severity.WARNING, "a | b\n<script>alert(1)</script> *x*", "m.keras", layer="<b>bn</b>")
    text = step_summary(Report(results=[AuditResult(path="m.keras", findings=[finding])], rules={}))
    [row] = [line for line in text.splitlines() if line.startswith("| warning")]
    assert row == (
        r"| warning | BN101 dropout-before-batchnorm | m.keras | &lt;b&gt;bn&lt;/b&gt; | "
        r"a \| b<br>&lt;script&gt;alert(1)&lt;/script&gt; \*x\* |"
    )
