"""The Markdown summary: escaping of untrusted text, the row cap, and a real run."""

from __future__ import annotations

import os
import subprocess
import sys

from bnaudit import AuditResult, Finding, Report, Severity
from bnaudit_markdown import MAX_ROWS, render

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def finding(layer: str, message: str = "m", severity: Severity = Severity.WARNING) -> Finding:
    return Finding("BN101", "dropout-before-batchnorm", severity, message, "models/a.keras", layer)


def test_text_from_the_model_cannot_break_out_of_its_cell():
    hostile = finding("bn|<img src=x onerror=alert(1)>", "cc @octocat\nsee [here](http://x) `code`")
    text = render(Report([AuditResult("models/a.keras", findings=[hostile])], rules={}))
    row = next(line for line in text.splitlines() if line.startswith("| warning"))
    assert row.count(" | ") == 4  # five cells, the layer's pipe escaped
    assert "bn\\|&lt;img src=x onerror=alert(1)&gt;" in row
    assert "<img" not in text and "\n see" not in text
    assert "@\u2060octocat" in row and "\\[here\\](http://x) \\`code\\`" in row


def test_long_runs_are_capped_most_severe_first():
    many = [finding(f"bn{i}") for i in range(MAX_ROWS + 7)] + [finding("worst", severity=Severity.ERROR)]
    text = render(Report([AuditResult("models/a.keras", findings=many)], rules={}))
    rows = [line for line in text.splitlines() if line.startswith("| warning") or line.startswith("| error")]
    assert len(rows) == MAX_ROWS and rows[0].startswith("| error | BN101")
    assert "… and 8 more findings" in text
    assert "The check **fails**" in text


def test_a_real_run_renders_the_findings_of_a_keras_model(tmp_path):
    import keras
    from keras import layers

    model = keras.Sequential([keras.Input((4,)), layers.Dense(3, name="fc"), layers.BatchNormalization(name="bn"), layers.Dense(1, name="out")])
    gamma, beta, _, _ = model.get_layer("bn").get_weights()
    model.get_layer("bn").set_weights([gamma, beta, gamma * 0.5, gamma * 2.0])  # learned statistics
    model.save(tmp_path / "biased.keras")
    proc = subprocess.run(
        [sys.executable, "-m", "bnaudit", "check", str(tmp_path / "biased.keras"), "--isolated", "--format", "markdown"],
        capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("### bnaudit: 1 model, 1 finding (1 info)")
    assert "The check **passes**" in proc.stdout
    assert f"| info | BN102 bias-before-batchnorm | {tmp_path}/biased.keras | bn | Dense 'fc' has a bias" in proc.stdout.replace("\\_", "_")
