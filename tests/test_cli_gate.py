"""The gate as CI and people see it: quiet and verbose output, the summary line, Git LFS
pointers, and the pre-commit and CI examples run as written."""

from __future__ import annotations

import re
import shlex
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import yaml

from conftest import ROOT, SAMPLES, run_bnaudit

LFS_POINTER = "version https://git-lfs.github.com/spec/v1\noid sha256:4d7a214614ab2935c943f9e0ff69d22eadbb8f32b1258daaa5e2ca24d17e2393\nsize 12345\n"


@pytest.fixture
def models(tmp_path) -> Path:
    """models/: one with two findings, one with a note and a finding, one Git LFS pointer."""
    (tmp_path / "models").mkdir()
    shutil.copy(SAMPLES / "bias_before_bn.keras", tmp_path / "models" / "bias_before_bn.keras")
    shutil.copy(SAMPLES / "custom_layer.h5", tmp_path / "models" / "custom_layer.h5")
    (tmp_path / "models" / "big.keras").write_text(LFS_POINTER)
    return tmp_path


def test_an_lfs_pointer_is_reported_as_not_fetched_and_the_rest_is_audited(models):
    proc = run_bnaudit("check", "models", "--isolated", cwd=models)
    assert proc.returncode == 2
    assert proc.stderr == (
        f"bnaudit: error: {Path('models/big.keras')}: not fetched (Git LFS pointer), not the model itself "
        "(run `git lfs pull` (or set `lfs: true` on actions/checkout) and audit again)\n"
    )
    assert "BN102 info    bn_fc" in proc.stdout and "BN501 warning channel_scale" in proc.stdout
    assert proc.stdout.endswith("\n3 models, 3 findings (1 warning, 2 infos), 1 unreadable\n")
    assert LFS_POINTER == (models / "models" / "big.keras").read_text()  # input never modified


def test_quiet_prints_findings_and_errors_only(models):
    loud = run_bnaudit("check", "models", "--isolated", cwd=models)
    quiet = run_bnaudit("check", "models", "--isolated", "-q", cwd=models)
    assert quiet.returncode == loud.returncode == 2
    assert "note: unknown layer class 'bnaudit_samples>ChannelScale'" in loud.stdout and "unreadable" in loud.stdout.splitlines()[-1]
    assert loud.stdout.splitlines()[-2].startswith("skipped on every model audited: BN301, BN302, BN303 (needs --data); ")
    expected = [line for line in loud.stdout.splitlines() if "note:" not in line][:-2]
    assert quiet.stdout.splitlines() == expected  # the same, less notes, skipped rules and summary
    assert quiet.stderr == loud.stderr  # errors are never silenced


def test_reports_written_to_files_leave_the_summary_line_on_stderr(models):
    to_files = run_bnaudit("check", "models", "--isolated", "--format", "json", "-o", "r.json", "--format", "sarif", "-o", "r.sarif", cwd=models)
    assert to_files.stdout == ""
    assert to_files.stderr.splitlines()[1:] == ["3 models, 3 findings (1 warning, 2 infos), 1 unreadable"]
    on_stdout = run_bnaudit("check", "models", "--isolated", "--format", "json", cwd=models)
    assert on_stdout.stdout.startswith("{") and on_stdout.stderr == to_files.stderr.splitlines(keepends=True)[0]  # the error only
    quiet = run_bnaudit("check", "models", "--isolated", "--format", "json", "-o", "r.json", "-q", cwd=models)
    assert quiet.stderr == on_stdout.stderr


@pytest.mark.slow
def test_verbose_times_each_check_and_tensorflow_stays_silent(tmp_path):
    proc = run_bnaudit("check", SAMPLES / "clean_conv_bn_relu.keras", "--isolated", "--inference", "--select", "BN4", "-v", "-j", "1", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stderr.splitlines()
    assert lines[0] == "config: no config file"
    assert re.fullmatch(r"timings: 1 model in \d+\.\d\d s wall time; seconds per check, summed over the models:", lines[1])
    timed = [re.fullmatch(r"  (BN40\d) +(\d+\.\d{3})", line) for line in lines[2:6]]
    assert sorted(m.group(1) for m in timed) == ["BN401", "BN402", "BN403", "BN404"]
    assert lines[6:] == ["seconds per model (loading included):", lines[7]] and lines[7].endswith("clean_conv_bn_relu.keras")


def test_the_pre_commit_hook_takes_models_only_serially_and_runs(models):
    (entry,) = yaml.safe_load((ROOT / ".pre-commit-hooks.yaml").read_text())
    assert (entry["id"], entry["language"], entry["require_serial"]) == ("bnaudit", "python", True)
    wanted = re.compile(entry["files"])
    assert [name for name in ("a.keras", "dir/b.h5", "c.keras.bak", "d.py", "e.hdf5") if wanted.search(name)] == ["a.keras", "dir/b.h5"]
    command = shlex.split(entry["entry"])
    assert command[0] == "bnaudit"
    proc = run_bnaudit(*command[1:], "--isolated", "models/bias_before_bn.keras", "models/custom_layer.h5", cwd=models)  # as pre-commit passes files
    assert proc.returncode == 0 and "2 models, 3 findings" in proc.stdout


def steps_using(workflow: dict, action: str) -> list[dict]:
    return [step for job in workflow["jobs"].values() for step in job["steps"] if step.get("uses", "").startswith(action)]


def test_the_github_workflow_writes_what_it_uploads(models):
    workflow = yaml.safe_load((ROOT / "examples" / "github-workflow.yml").read_text())
    assert workflow["permissions"]["security-events"] == "write"
    assert steps_using(workflow, "actions/checkout")[0]["with"]["lfs"] is True
    (sarif,) = steps_using(workflow, "github/codeql-action/upload-sarif")
    (artifact,) = steps_using(workflow, "actions/upload-artifact")
    assert sarif["if"] == artifact["if"] == "always()"
    (command,) = [shlex.split(step["run"])[1:] for job in workflow["jobs"].values() for step in job["steps"] if step.get("run", "").startswith("bnaudit check")]
    (models / "models" / "big.keras").unlink()  # a fetched checkout
    proc = run_bnaudit(*command, "--isolated", cwd=models)
    assert proc.returncode == 0, proc.stderr
    assert (models / sarif["with"]["sarif_file"]).read_text().lstrip().startswith("{")
    assert (models / artifact["with"]["path"]).read_text().lstrip().lower().startswith("<!doctype html")
    assert "::warning file=models/custom_layer.h5" in proc.stdout  # annotations in the log


def test_the_gitlab_job_writes_the_junit_report_it_declares(models):
    job = yaml.safe_load((ROOT / "examples" / "gitlab-ci.yml").read_text())["bnaudit"]
    (command,) = [shlex.split(line)[1:] for line in job["script"] if line.startswith("bnaudit check")]
    proc = run_bnaudit(*command, "--isolated", cwd=models)
    assert proc.returncode == 2  # the LFS pointer
    suites = ET.parse(models / job["artifacts"]["reports"]["junit"]).getroot()
    assert len(suites.findall(".//testsuite")) == 3
    assert (models / job["artifacts"]["paths"][0]).is_file() and job["artifacts"]["when"] == "always"
