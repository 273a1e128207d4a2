"""``bnaudit fix`` and the files it may not touch: an existing ``-o`` (replaced only with
``--force``), the input under another name, and a run that finds nothing to fix (no copy
written, no proof run), through the command (a real subprocess) and the Python API."""

from __future__ import annotations

import json
import os

import pytest

from bnaudit import audit, fix
from bnaudit.fixes import FixError
from conftest import ROOT, frameworks_imported, run_bnaudit

KEEP = b"the user's own file\n"


@pytest.fixture
def source(tmp_path, samples):
    """bias_before_bn.keras (BN102 on bn1 and bn_fc) copied into its own directory."""
    path = tmp_path / "m.keras"
    path.write_bytes((samples / "bias_before_bn.keras").read_bytes())
    return path


def test_an_existing_output_is_refused_unless_forced(tmp_path, source):
    out = tmp_path / "out.keras"
    out.write_bytes(KEEP)
    run = run_bnaudit("fix", source, "-o", out, "--absorb-bias", "--no-verify")
    assert run.returncode == 2 and run.stdout == ""
    assert run.stderr == f"bnaudit: error: {source}: -o {out} exists and would be replaced (give --force to replace it, or another output path)\n"
    assert out.read_bytes() == KEEP and sorted(p.name for p in tmp_path.iterdir()) == ["m.keras", "out.keras"]
    run = run_bnaudit("fix", source, "-o", out, "--absorb-bias", "--no-verify", "--force")
    assert run.returncode == 0, run.stderr
    assert out.read_bytes() != KEEP
    assert {(f.code, f.layer) for f in audit(out, select=["BN102"]).findings} == set()
    assert "--force" in run_bnaudit("fix", "--help").stdout


def test_a_dangling_link_as_output_is_refused_too(tmp_path, source):
    out = tmp_path / "out.keras"
    out.symlink_to(tmp_path / "nowhere.keras")
    run = run_bnaudit("fix", source, "-o", out, "--absorb-bias", "--no-verify")
    assert run.returncode == 2 and "exists and would be replaced" in run.stderr
    assert out.is_symlink() and not (tmp_path / "nowhere.keras").exists()


@pytest.mark.parametrize("spelling", ["symlink", "hardlink", "dotdot"])
def test_the_input_under_another_name_is_refused_even_with_force(tmp_path, source, spelling):
    if spelling == "symlink":
        out = tmp_path / "link.keras"
        out.symlink_to(source)
    elif spelling == "hardlink":
        out = tmp_path / "link.keras"
        os.link(source, out)
    else:
        (tmp_path / "sub").mkdir()
        out = tmp_path / "sub" / ".." / "m.keras"
    original = source.read_bytes()
    for force in ([], ["--force"]):
        run = run_bnaudit("fix", source, "-o", out, "--absorb-bias", "--no-verify", *force)
        assert run.returncode == 2
        assert run.stderr == f"bnaudit: error: {source}: -o {out} is the input; the input is never modified (give another output path)\n"
        assert source.read_bytes() == original


def test_the_api_refuses_an_existing_output_with_the_same_error(tmp_path, source):
    out = tmp_path / "out.keras"
    out.write_bytes(KEEP)
    with pytest.raises(FixError) as raised:
        fix(source, out, absorb_bias=True, verify=False)
    assert (raised.value.message, raised.value.hint) == (f"-o {out} exists and would be replaced", "give --force to replace it, or another output path")
    assert out.read_bytes() == KEEP
    report = fix(source, out, absorb_bias=True, verify=False, force=True)
    assert report.written and [c.layer for c in report.changes] == ["bn1", "conv1", "bn_fc", "fc"]
    with pytest.raises(FixError, match="is the input"):
        fix(source, source, absorb_bias=True, verify=False, force=True)


def test_all_on_a_clean_model_writes_nothing_and_runs_no_proof(tmp_path, samples):
    """No TensorFlow is imported: the proof, which would load it, did not run."""
    out, written = tmp_path / "out.keras", tmp_path / "fix.json"
    code = (
        "import bnaudit, pathlib\n"
        "from bnaudit.fixes.report import render\n"
        f"r = bnaudit.fix({str(samples / 'clean_conv_bn_relu.keras')!r}, {str(out)!r}, all_fixes=True)\n"
        f"pathlib.Path({str(written)!r}).write_text(render(r, 'json'))\n"
    )
    assert frameworks_imported(code) == []
    document = json.loads(written.read_text())
    assert document["written"] is False and document["changes"] == [] and document["refused"] == []
    assert document["fixes"] == ["unbake", "absorb-bias"]
    assert document["proof"] == {**document["proof"], "status": "not run", "detail": "no copy written: nothing to fix", "checked_codes": [], "samples": 0}
    assert not out.exists()


@pytest.mark.parametrize("flags,fixes", [(["--all"], "unbake, absorb-bias"), (["--absorb-bias"], "absorb-bias"), (["--unbake"], "unbake")])
def test_nothing_to_fix_is_one_line_exit_0(tmp_path, samples, flags, fixes):
    source = samples / "clean_conv_bn_relu.keras"
    out = tmp_path / "out.keras"
    run = run_bnaudit("fix", source, "-o", out, *flags)
    assert run.returncode == 0 and run.stderr == ""
    assert run.stdout.splitlines() == [
        f"bnaudit fix: {source} -> {out} (keras); fixes: {fixes}",
        f"nothing to fix: no layer that {fixes} would change; no copy was written",
    ]
    assert list(tmp_path.iterdir()) == []


def test_nothing_to_fix_leaves_an_existing_output_alone_even_with_force(tmp_path, samples):
    out = tmp_path / "out.keras"
    out.write_bytes(KEEP)
    run = run_bnaudit("fix", samples / "clean_conv_bn_relu.keras", "-o", out, "--all", "--force", "--format", "html")
    assert run.returncode == 0, run.stderr
    assert "<strong>nothing to fix: no layer that unbake, absorb-bias would change; no copy was written</strong>" in run.stdout
    assert out.read_bytes() == KEEP


def test_all_lists_what_it_could_not_fix_where_a_named_fix_is_an_error(tmp_path):
    """BN102 inside TimeDistributed: --absorb-bias by name is refused (exit 2, see
    test_fix.py); --all does what it can, here nothing, and lists why."""
    import keras

    inputs = keras.Input((8, 12))
    dense = keras.layers.TimeDistributed(keras.layers.Dense(16, name="dense"), name="td_dense")(inputs)
    outputs = keras.layers.TimeDistributed(keras.layers.BatchNormalization(name="batch_normalization"), name="td_bn")(dense)
    keras.Model(inputs, outputs).save(tmp_path / "td.keras")
    run = run_bnaudit("fix", tmp_path / "td.keras", "-o", tmp_path / "x.keras", "--all")
    assert run.returncode == 0, run.stderr
    assert run.stdout.splitlines()[1:] == [
        "nothing to fix: no layer that unbake, absorb-bias would change; no copy was written",
        "  absorb-bias  td_bn/batch_normalization  not changed: 'td_dense/dense' sits inside TimeDistributed 'td_dense'; wrapped layers are not rewritten",
        "not recalibrated: BN202 td_bn/batch_normalization is fixed by --recalibrate, which needs --data DATA or --stats FILE",
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["td.keras"]


@pytest.mark.parametrize("command", ["bnaudit fix clean.keras -o fixed.keras --all", "bnaudit fix clean_conv_bn_relu.keras -o folded.keras --fold --no-verify"])
def test_the_docs_fix_examples_run_as_written(tmp_path, samples, command):
    """docs/fix.md's console blocks: the command, run in a directory holding what it names,
    prints the lines shown (up to a closing ``...``)."""
    import re

    text = (ROOT / "docs" / "fix.md").read_text(encoding="utf-8")
    block = re.search(r"```console\n\$ " + re.escape(command) + r"\n(.*?)```", text, re.S)
    assert block, command
    shown = block.group(1).splitlines()
    shown = shown[: shown.index("...")] if "..." in shown else shown
    model = command.split()[2]
    (tmp_path / model).write_bytes((samples / "clean_conv_bn_relu.keras").read_bytes())
    run = run_bnaudit(*command.split()[1:], cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert run.stdout.splitlines()[: len(shown)] == shown
