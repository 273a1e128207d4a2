"""The container of a ``bnaudit fix`` copy: the ``.keras`` zip built in place, the guards on
its weights, and the one table of fixes the API, the command and ``--all`` derive from.

The outputs are checked with zipfile's own CRC check (``testzip`` reads every byte) and
h5py, and the fixes' effect by re-auditing; loading the copies in Keras is
tests/test_fix.py's part.
"""

from __future__ import annotations

import shutil
import zipfile

import h5py
import numpy as np
import pytest

from bnaudit import fix
from bnaudit.engine import Auditor
from bnaudit.fixes import FIXES, absorb, fold
from bnaudit.fixes.copy import ModelCopy
from conftest import run_bnaudit

WEIGHTS = "model.weights.h5"


def members(path) -> dict[str, zipfile.ZipInfo]:
    with zipfile.ZipFile(path) as archive:
        assert archive.testzip() is None  # every member's CRC-32 checked against its bytes
        return {info.filename: info for info in archive.infolist()}


def member_bytes(path, name) -> bytes:
    with zipfile.ZipFile(path) as archive:
        return archive.read(name)


def arrays(path) -> dict[str, np.ndarray]:
    """Every dataset of the zip's weights member, by HDF5 path."""
    found = {}
    with zipfile.ZipFile(path) as archive, archive.open(WEIGHTS) as member, h5py.File(member, "r") as h5:
        h5.visititems(lambda name, obj: found.__setitem__(name, obj[()]) if isinstance(obj, h5py.Dataset) else None)
    return found


def rezip(source, target, compression) -> None:
    with zipfile.ZipFile(source) as original, zipfile.ZipFile(target, "w", compression) as copy:
        for info in original.infolist():
            copy.writestr(info.filename, original.read(info))


def test_config_only_fix_copies_the_weights_byte_for_byte_with_their_crc(tmp_path, samples):
    source, out = samples / "bn_training_baked.keras", tmp_path / "unbaked.keras"
    report = fix(source, out, unbake=True, verify=False)
    assert [c.fix for c in report.changes] == ["unbake"]
    before, after = members(source), members(out)
    assert set(after) == set(before) and all(info.compress_type == zipfile.ZIP_STORED for info in after.values())
    assert after[WEIGHTS].CRC == before[WEIGHTS].CRC and member_bytes(out, WEIGHTS) == member_bytes(source, WEIGHTS)
    assert member_bytes(out, "metadata.json") == member_bytes(source, "metadata.json")
    assert member_bytes(out, "config.json") != member_bytes(source, "config.json")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["unbaked.keras"]  # no working file left


def test_edited_weights_are_a_valid_stored_member_without_the_folded_bns(tmp_path, samples):
    source, out = samples / "bias_before_bn.keras", tmp_path / "folded.keras"
    report = fix(source, out, fold=True, verify=False)
    folded = [c.layer for c in report.changes if c.what.startswith("removed")]
    assert folded and members(out).keys() == members(source).keys()
    assert all(info.compress_type == zipfile.ZIP_STORED for info in members(out).values())
    assert not [bn.path for bn in Auditor().load(out).batchnorms()]
    assert [(c.code, c.layer) for c in report.refused] == []
    assert not any("batch_normalization" in name for name in arrays(out))


def test_a_compressed_input_is_read_and_written_stored_with_the_same_arrays(tmp_path, samples):
    source = tmp_path / "deflated.keras"
    rezip(samples / "bias_before_bn.keras", source, zipfile.ZIP_DEFLATED)
    assert members(source)[WEIGHTS].compress_type == zipfile.ZIP_DEFLATED
    fix(source, tmp_path / "from_deflated.keras", absorb_bias=True, fold=True, verify=False)
    fix(samples / "bias_before_bn.keras", tmp_path / "from_stored.keras", absorb_bias=True, fold=True, verify=False)
    assert all(info.compress_type == zipfile.ZIP_STORED for info in members(tmp_path / "from_deflated.keras").values())
    expected, got = arrays(tmp_path / "from_stored.keras"), arrays(tmp_path / "from_deflated.keras")
    assert got.keys() == expected.keys() and all(np.array_equal(got[k], expected[k]) for k in expected)


@pytest.mark.parametrize("link,says", [(lambda: h5py.SoftLink("/layers"), "is a soft link"), (lambda: h5py.ExternalLink("/etc/hostname", "/"), "is an external link")], ids=["soft", "external"])
def test_a_link_anywhere_in_the_weights_is_refused_with_nothing_written(tmp_path, samples, link, says):
    """``check`` reads only the BN paths; a fix rewrites the whole file, so every link in it
    must be a hard link (a soft or external one, even where no rule reads, is refused)."""
    spill = tmp_path / "weights.h5"
    spill.write_bytes(member_bytes(samples / "bias_before_bn.keras", WEIGHTS))
    with h5py.File(spill, "r+") as h5:
        h5["elsewhere"] = link()
    source = tmp_path / "linked.keras"
    with zipfile.ZipFile(samples / "bias_before_bn.keras") as original, zipfile.ZipFile(source, "w") as copy:
        for info in original.infolist():
            copy.writestr(info, spill.read_bytes() if info.filename == WEIGHTS else original.read(info))
    spill.unlink()
    run = run_bnaudit("fix", source, "-o", tmp_path / "x.keras", "--fold", "--no-verify")
    assert run.returncode == 2 and run.stderr.count("\n") == 1, run.stderr
    assert f"the weights file: 'elsewhere' {says}, which Keras never writes" in run.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["linked.keras"]


def test_a_copy_saved_midway_keeps_its_weights_editable(tmp_path, samples):
    """What recalibration after another fix does: save a stage, then edit on."""
    source = samples / "bias_before_bn.keras"
    graph = Auditor().load(source)
    graph.weights.close()
    workdir = tmp_path / "work"
    workdir.mkdir()
    copy = ModelCopy(source, graph, workdir)
    try:
        absorbed, _ = absorb.apply(copy)
        copy.save(tmp_path / "stage.keras")
        folded, _ = fold.apply(copy)
        copy.save(tmp_path / "final.keras", last=True)
    finally:
        copy.close()
    assert absorbed and folded
    stage, final = Auditor().load(tmp_path / "stage.keras"), Auditor().load(tmp_path / "final.keras")
    for graph in (stage, final):
        graph.weights.close()
    assert [bn.path for bn in stage.batchnorms()] == [bn.path for bn in Auditor().load(source).batchnorms()]
    assert final.batchnorms() == []
    assert members(tmp_path / "stage.keras").keys() == members(tmp_path / "final.keras").keys() == members(source).keys()


def test_the_command_api_and_all_follow_the_table_of_fixes(tmp_path, samples):
    help_text = run_bnaudit("fix", "--help").stdout
    flags = [one.flag for one in FIXES]
    assert [help_text.index(flag + " ") for flag in flags] == sorted(help_text.index(flag + " ") for flag in flags)
    assert [one.name for one in FIXES] == ["unbake", "recalibrate", "absorb-bias", "fold"]
    with pytest.raises(TypeError, match="unexpected keyword argument 'absorb'"):
        fix(samples / "bias_before_bn.keras", tmp_path / "x.keras", absorb=True)
    source = tmp_path / "both.keras"
    shutil.copyfile(samples / "bias_before_bn.keras", source)
    report = fix(source, tmp_path / "all.keras", all_fixes=True, verify=False)
    assert report.fixes == ["unbake", "absorb-bias"]  # recalibrate needs data, fold is never part of --all
    assert {c.fix for c in report.changes} == {"absorb-bias"}
