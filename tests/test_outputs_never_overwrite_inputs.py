"""No command writes over what it reads: a report, a baseline, statistics or a fix's
change list aimed at an input (a model, data, saved results, a shard, the copy ``fix``
writes) is one line and exit 2, and the input keeps its bytes.

The same file is found through a symlink, ``./`` and a directory search; a path inside
a SavedModel directory is part of that model. Outputs that merely sit next to the
inputs, or inside a directory that was only searched, are written as before.
"""

from __future__ import annotations

import hashlib
import shutil

import numpy as np
import pytest

from conftest import SAMPLES, invoke

MODEL = "dropout_before_bn.keras"


@pytest.fixture
def folder(tmp_path):
    shutil.copy(SAMPLES / MODEL, tmp_path / "model.keras")
    shutil.copy(SAMPLES / MODEL, tmp_path / "tuned.keras")
    (tmp_path / "link.keras").symlink_to("model.keras")
    np.save(tmp_path / "data.npy", np.zeros((4, 8, 8, 3), np.float32))
    return tmp_path


def digests(folder) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file() and not p.is_symlink()}


@pytest.mark.parametrize(
    ("args", "line"),
    [
        (["check", "model.keras", "--format", "text", "-o", "model.keras"], "-o model.keras would overwrite the input model.keras"),
        (["check", "model.keras", "--format", "json", "-o", "link.keras"], "-o link.keras would overwrite the input model.keras"),
        (["check", ".", "--format", "json", "-o", "./tuned.keras"], "-o ./tuned.keras would overwrite the input tuned.keras"),
        (["check", "model.keras", "--write-baseline", "model.keras"], "--write-baseline model.keras would overwrite the input model.keras"),
        (["diff", "model.keras", "tuned.keras", "--format", "json", "-o", "tuned.keras"], "-o tuned.keras would overwrite the input tuned.keras"),
        (["fix", "model.keras", "-o", "copy.keras", "--unbake", "--report", "model.keras"], "--report model.keras would overwrite the input model.keras"),
        (["fix", "model.keras", "-o", "copy.keras", "--unbake", "--report", "copy.keras"], "--report copy.keras would overwrite the copy -o writes, copy.keras; they need a path each"),
        (["stats", "model.keras", "--data", "data.npy", "-o", "data.npy"], "-o data.npy would overwrite the input data.npy"),
        (["merge", "data.npy", "-o", "data.npy"], "-o data.npy would overwrite the input data.npy"),
    ],
)
def test_an_output_naming_an_input_is_refused_and_the_input_is_untouched(folder, args, line):
    before = digests(folder)
    run = invoke(*args, cwd=folder)
    assert run.returncode == 2, (run.stdout, run.stderr)
    assert run.stderr.splitlines() == [f"bnaudit: error: {line}{'' if 'need a path' in line else '; inputs are never modified'} (give another path)"]
    assert digests(folder) == before
    assert not (folder / "copy.keras").exists()


def test_saved_results_are_not_rendered_over_themselves(folder):
    assert invoke("check", "model.keras", "--format", "json", "-o", "results.json", "--exit-zero", cwd=folder).returncode == 0
    before = digests(folder)
    run = invoke("report", "results.json", "--format", "json", "-o", "results.json", cwd=folder)
    assert (run.returncode, run.stderr) == (2, "bnaudit: error: -o results.json would overwrite the input results.json; inputs are never modified (give another path)\n")
    assert digests(folder) == before


def test_a_report_inside_a_savedmodel_directory_is_refused_but_one_beside_it_is_written(tmp_path):
    shutil.copytree(SAMPLES / "savedmodel" / "clean_conv_bn_relu", tmp_path / "sm")
    before = digests(tmp_path)
    run = invoke("check", "sm", "--format", "json", "-o", "sm/report.json", cwd=tmp_path)
    assert (run.returncode, run.stderr) == (2, "bnaudit: error: -o sm/report.json would overwrite the input sm; inputs are never modified (give another path)\n")
    assert digests(tmp_path) == before
    run = invoke("check", "sm", "--format", "json", "-o", "report.json", "--exit-zero", cwd=tmp_path)
    assert run.returncode == 0 and (tmp_path / "report.json").is_file()


def test_a_report_in_a_searched_directory_is_written(folder):
    run = invoke("check", ".", "--format", "json", "-o", "report.json", "--exit-zero", cwd=folder)
    assert run.returncode == 0, run.stderr
    assert (folder / "report.json").is_file()
