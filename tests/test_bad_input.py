"""Bad input: one clear line on stderr, exit 2, no traceback, other models still audited,
and no input file is ever modified."""

from __future__ import annotations

import hashlib
import json
import shutil
import zipfile

import pytest

from conftest import SAMPLES, run_bnaudit


@pytest.fixture(scope="module")
def good_model(tmp_path_factory):
    """A small, clean, trained-looking Keras 3 model."""
    import keras
    from keras import layers

    from model_builders import set_trained_statistics

    model = keras.Sequential(
        [keras.Input((4,), name="x"), layers.Dense(3, use_bias=False, name="fc"), layers.BatchNormalization(name="bn"), layers.Activation("relu", name="act"), layers.Dense(2, name="out")]
    )
    set_trained_statistics(model)
    path = tmp_path_factory.mktemp("good") / "good.keras"
    model.save(path)
    return path


def _digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _bad_files(tmp_path, good_model):
    text = tmp_path / "notes.keras"
    text.write_text("hello, not a model\n")
    truncated_zip = tmp_path / "truncated.keras"
    truncated_zip.write_bytes(good_model.read_bytes()[:500])
    h5 = tmp_path / "weights_only.h5"
    import h5py

    with h5py.File(h5, "w") as f:
        f.create_dataset("x", data=[1.0, 2.0])
    truncated_h5 = tmp_path / "truncated.h5"
    truncated_h5.write_bytes(h5.read_bytes()[:100])
    no_config = tmp_path / "no_config.keras"
    with zipfile.ZipFile(good_model) as src, zipfile.ZipFile(no_config, "w") as dst:
        for info in src.infolist():
            if info.filename != "config.json":
                dst.writestr(info, src.read(info))
    lfs = tmp_path / "lfs.keras"
    lfs.write_text("version https://git-lfs.github.com/spec/v1\noid sha256:abc\nsize 123\n")
    not_a_model_cfg = tmp_path / "layer_only.keras"
    with zipfile.ZipFile(not_a_model_cfg, "w") as dst:
        dst.writestr("config.json", json.dumps({"class_name": "Dense", "config": {}}))
    return {
        text: "not a readable .keras file",
        truncated_zip: "not a readable .keras file",
        h5: "weights only",
        truncated_h5: "not a readable HDF5 file",
        no_config: "no config.json",
        lfs: "Git LFS pointer",
        not_a_model_cfg: "not a Sequential or Functional model",
    }


def test_each_bad_file_gets_one_line_and_exit_2_and_the_good_model_is_still_audited(tmp_path, good_model):
    bad = _bad_files(tmp_path, good_model)
    before = {p: _digest(p) for p in [*bad, good_model]}
    run = run_bnaudit("check", "--format", "json", good_model, *bad)
    assert run.returncode == 2
    assert "Traceback" not in run.stderr
    lines = run.stderr.strip().splitlines()
    assert len(lines) == len(bad), run.stderr
    for path, message in bad.items():
        [line] = [l for l in lines if f"{path}:" in l]
        assert line.startswith("bnaudit: error: ") and message in line, line
        assert "(" in line, "every error line says what to do"
    document = json.loads(run.stdout)
    good = next(m for m in document["models"] if m["path"] == str(good_model))
    assert good["errors"] == [] and good["findings"] == []
    assert document["summary"]["unreadable"] == len(bad)
    assert before == {p: _digest(p) for p in before}


def test_missing_path_and_empty_directory(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    run = run_bnaudit("check", empty, tmp_path / "missing.keras")
    assert run.returncode == 2
    assert "no .keras, .h5, .hdf5 or .onnx files or SavedModel directories in this directory" in run.stderr
    assert "no such file or directory" in run.stderr
    assert "Traceback" not in run.stderr


def test_unknown_layer_class_is_audited_with_a_note_not_a_failure(tmp_path):
    import keras
    from keras import layers

    from model_builders import set_trained_statistics

    @keras.saving.register_keras_serializable(package="acme")
    class Scale(layers.Layer):
        def call(self, x):
            return x * 2.0

    inp = keras.Input((4,), name="x")
    x = layers.Dense(3, name="fc")(inp)  # bias before BN: BN102 must still be found
    x = layers.BatchNormalization(name="bn")(x)
    out = Scale(name="scale")(x)
    model = keras.Model(inp, out)
    set_trained_statistics(model)
    path = tmp_path / "custom.keras"
    model.save(path)
    run = run_bnaudit("check", "--format", "json", path)
    assert run.returncode == 0, run.stderr
    [result] = json.loads(run.stdout)["models"]
    assert {(f["code"], f["layer"]) for f in result["findings"]} == {("BN102", "bn"), ("BN501", "scale")}
    assert any("unknown layer class 'Scale'" in note for note in result["notes"])


def test_directory_is_searched_recursively_and_sample_copy_is_untouched(tmp_path):
    nested = tmp_path / "a" / "b"
    nested.mkdir(parents=True)
    sample = next(SAMPLES.glob("*.keras"), None)
    if sample is None:
        pytest.skip("sample models not built")
    copy = nested / sample.name
    shutil.copy(sample, copy)
    digest = _digest(copy)
    run = run_bnaudit("check", "--format", "json", "--exit-zero", tmp_path)
    assert run.returncode == 0, run.stderr
    assert [m["path"] for m in json.loads(run.stdout)["models"]] == [str(copy)]
    assert _digest(copy) == digest


def test_nan_in_the_config_reaches_json_and_sarif_as_strict_json(tmp_path, good_model):
    """json.loads accepts NaN in config.json; bnaudit's own outputs must stay valid JSON."""
    broken = tmp_path / "nan_momentum.keras"
    with zipfile.ZipFile(good_model) as src, zipfile.ZipFile(broken, "w") as dst:
        for info in src.infolist():
            data = src.read(info)
            if info.filename == "config.json":
                data = data.replace(b'"momentum": 0.99', b'"momentum": NaN')
            dst.writestr(info, data)
    for fmt in ("json", "sarif"):
        run = run_bnaudit("check", "--format", fmt, broken)
        assert "Traceback" not in run.stderr
        document = json.loads(run.stdout, parse_constant=lambda c: pytest.fail(f"{fmt} output holds {c}"))
        assert document
    run = run_bnaudit("check", "--format", "json", broken)
    [finding] = json.loads(run.stdout)["models"][0]["findings"]
    assert (finding["code"], finding["layer"], finding["details"]["momentum"]) == ("BN109", "bn", "nan")


def test_a_model_under_the_other_kinds_suffix_is_told_how_to_rename_it(tmp_path):
    """Keras and bnaudit pick the reader by suffix: a .keras zip named .h5 loads nowhere."""
    shutil.copy(SAMPLES / "dropout_before_bn.keras", tmp_path / "zip.h5")
    shutil.copy(SAMPLES / "dropout_before_bn.h5", tmp_path / "hdf5.keras")
    run = run_bnaudit("check", tmp_path / "zip.h5", tmp_path / "hdf5.keras")
    assert run.returncode == 2
    first, second = run.stderr.splitlines()
    # the middle is libhdf5's and zipfile's own words, which their versions may change
    assert first.startswith(f"bnaudit: error: {tmp_path / 'zip.h5'}: not a readable HDF5 file (")
    assert first.endswith("(it is a zip archive, as a .keras file is: rename it to zip.keras)")
    assert second.startswith(f"bnaudit: error: {tmp_path / 'hdf5.keras'}: not a readable .keras file (")
    assert second.endswith("(it is an HDF5 file, as a .h5 model is: rename it to hdf5.h5)")
