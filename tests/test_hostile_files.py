"""Hostile model files (tests/hostile.py builds them from the Keras-saved samples): bnaudit
reads nothing Keras never writes, stays within bounded memory, never crashes, and never
lets a name forge a log line."""

from __future__ import annotations

import hashlib
import json
import os
import stat
import sys
import threading
from pathlib import Path

import pytest

import hostile as H
from conftest import ROOT, SAMPLES, run_bnaudit

DIED = "the process auditing this model died"


def _digests(paths):
    return {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in paths}


def _measured(*args: str) -> tuple[int, str, str, float]:
    """Run bnaudit in a child of a fresh interpreter; its peak RSS (MiB) over every process."""
    code = (
        "import resource, subprocess, sys\n"
        "r = subprocess.run(sys.argv[1:], capture_output=True, text=True, stdin=subprocess.DEVNULL)\n"
        "sys.stdout.write(r.stdout); sys.stderr.write(r.stderr)\n"
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, file=sys.stderr)\n"
        "sys.exit(r.returncode)\n"
    )
    import subprocess

    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-c", code, sys.executable, "-m", "bnaudit", *args], capture_output=True, text=True, env=env, timeout=300)
    *lines, peak = proc.stderr.splitlines()
    return proc.returncode, proc.stdout, "\n".join(lines), float(peak)


FILE_ATTACKS = [
    H.external_storage, H.external_link, H.soft_link, H.virtual_dataset, H.compressed_dataset,  # kind 1
    H.self_referencing_virtual,  # kind 2
    H.unstored_vectors, H.unwritten_vectors,  # kind 3 (a)
]


def test_files_that_point_elsewhere_or_lie_about_sizes_are_refused_before_a_byte_is_read(tmp_path):
    """Kinds 1, 2, 3, 5 and 10: each file one error line naming what is wrong, exit 2, no byte
    of the credentials file anywhere, a good model in the same run still audited, inputs
    unchanged, and the whole run under 400 MiB (the unstored vectors alone claimed 2.7 GB)."""
    cases = {}
    for attack in FILE_ATTACKS:
        for suffix in (".h5", ".keras"):
            directory = tmp_path / f"{attack.__name__}{suffix}"
            directory.mkdir()
            path, expected = attack(directory, suffix)
            cases[path] = expected
    for attack in (H.config_bomb, H.flipped_attribute_length, H.deeply_nested_config, H.hdf5_with_zip_appended):
        directory = tmp_path / attack.__name__
        directory.mkdir()
        path, expected = attack(directory)
        cases[path] = expected
    polyglot_h5, expected = H.hdf5_with_zip_appended(tmp_path / "hdf5_with_zip_appended", ".h5")
    cases[polyglot_h5] = expected
    good = SAMPLES / f"{H.BASE}.keras"
    before = _digests([*cases, good])
    code, stdout, stderr, peak = _measured("check", "--format", "json", good, *cases)
    assert code == 2
    assert "Traceback" not in stderr and "TOPSECRET" not in stdout + stderr
    lines = stderr.splitlines()
    assert len(lines) == len(cases), stderr  # one line per file: not one per weights rule
    for path, expected in cases.items():
        [line] = [line for line in lines if line.startswith(f"bnaudit: error: {path}")]
        assert expected in line, line
        assert "rule crashed" not in line and "Error:" not in line, line  # what is wrong, not a Python exception
    models = {m["path"]: m for m in json.loads(stdout)["models"]}
    assert {(f["code"], f["layer"]) for f in models[str(good)]["findings"]} == {("BN204", "bn1")}
    assert all(not models[str(p)]["findings"] or p.suffix == ".keras" for p in cases)
    assert _digests([*cases, good]) == before
    assert peak < 400, f"peak RSS {peak:.0f} MiB"


@pytest.mark.parametrize("make", [H.external_storage, H.external_link], ids=["external_storage", "external_link"])
@pytest.mark.parametrize("suffix", [".h5", ".keras"])
@pytest.mark.parametrize("fix", ["--fold", "--absorb-bias"])
def test_fix_refuses_what_check_refuses_and_writes_nothing(tmp_path, make, suffix, fix):
    """`bnaudit fix` reads a model through the same guards as `check`: a BN vector kept in
    another file is refused before anything is read from it or written, whatever the fix
    (absorb-bias never touches gamma, the vector the attack puts elsewhere)."""
    path, _ = make(tmp_path, suffix)
    before = hashlib.sha256(path.read_bytes()).hexdigest()
    out = tmp_path / f"out{suffix}"
    run = run_bnaudit("fix", path, "-o", out, fix, "--no-verify")
    assert run.returncode == 2 and run.stdout == ""
    assert len(run.stderr.splitlines()) == 1 and "layer 'bn1'" in run.stderr and "external" in run.stderr, run.stderr
    assert not out.exists() and hashlib.sha256(path.read_bytes()).hexdigest() == before


def test_code_carrying_objects_anywhere_in_the_config_are_flagged_and_refused(tmp_path):
    """Kind 4: BN501 flags each, exactly once, on the right layer; the runtime refuses to load it."""
    from bnaudit.loaders import LoadError, keras_zip
    from bnaudit.runtime import load_keras_model
    from bnaudit.options import RuntimeOptions

    paths = {name: H.edit_config(tmp_path, name, edit) for name, (edit, _, _) in H.CODE_CONFIGS.items()}
    run = run_bnaudit("check", "--select", "BN501", "--format", "json", *paths.values())
    assert run.returncode == 0, run.stderr
    models = {m["path"]: m for m in json.loads(run.stdout)["models"]}
    for name, (_, where, says) in H.CODE_CONFIGS.items():
        findings = models[str(paths[name])]["findings"]
        assert [(f["code"], f["layer"]) for f in findings] == [("BN501", where)], name
        assert says in findings[0]["message"], name
        graph = keras_zip.bnaudit_load_model(path=paths[name])
        graph.weights.close()
        with pytest.raises(LoadError, match="refusing to load a model that can execute code"):
            load_keras_model(paths[name], graph, RuntimeOptions())


def test_a_keras_tensors_config_is_data_and_not_walked():
    """Keras builds a KerasTensor from a ``__keras_tensor__``'s shape, dtype and history
    and deserializes nothing in it; the call's other arguments it does deserialize."""
    from bnaudit.code_objects import unsafe_objects

    hidden = {"class_name": "function", "module": "os", "config": "system"}
    tensor = {"class_name": "__keras_tensor__", "config": {"shape": [None, 4], "dtype": "float32", "keras_history": ["c1", 0, 0], "extra": hidden}}
    config = {"class_name": "Functional", "config": {"layers": [{"class_name": "ReLU", "name": "relu", "config": {"name": "relu"}, "inbound_nodes": [{"args": [tensor], "kwargs": {}}]}]}}
    assert unsafe_objects(config) == []
    config["config"]["layers"][0]["inbound_nodes"][0]["kwargs"]["mask"] = hidden
    assert [(where, why) for where, _, why in unsafe_objects(config)] == [("relu/inbound_nodes.kwargs.mask", "it calls function 'system' of module 'os', not a Keras activation, loss, metric or op")]


def test_a_nested_model_naming_module_os_is_flagged(tmp_path):
    path, says = H.nested_model_module_os(tmp_path)
    run = run_bnaudit("check", "--select", "BN501", "--format", "json", path)
    [model] = json.loads(run.stdout)["models"]
    assert [(f["code"], f["layer"]) for f in model["findings"]] == [("BN501", "base")]
    assert says in model["findings"][0]["message"]


def test_the_runtime_loads_with_a_keras_that_has_the_cve_fixes_only():
    from bnaudit.loaders import LoadError
    from bnaudit.runtime import check_keras_version

    for version in ("3.13.2", "3.15.0", "4.0.0.dev0"):
        check_keras_version(version)
    for version in ("3.13.1", "3.9.0", "2.15.0"):
        with pytest.raises(LoadError, match=f"Keras {version} has known model-loading vulnerabilities"):
            check_keras_version(version)


FORMATS = ("text", "json", "sarif", "junit", "github", "html")


def test_every_writer_survives_a_lone_surrogate_in_a_layer_name(tmp_path):
    """Kind 6: a layer named "bn\\ud800" (valid JSON) used to crash every format but JSON."""
    path = H.renamed_layer(tmp_path, "bn\ud800", "surrogate")
    for fmt in FORMATS:
        out = tmp_path / f"report.{fmt}"
        run = run_bnaudit("check", "--format", fmt, "-o", out, path)
        assert run.returncode == 0, (fmt, run.stderr)
        assert "Traceback" not in run.stderr and out.stat().st_size > 0
        assert "bn\\ud800" in out.read_text(encoding="utf-8") or fmt == "html" and "bn\\ud800" in out.read_text(encoding="utf-8").replace("&#92;", "\\")
    [model] = json.loads((tmp_path / "report.json").read_text())["models"]
    assert [(f["code"], f["layer"]) for f in model["findings"]] == [("BN204", "bn\ud800")]
    run = run_bnaudit("check", path)  # to stdout, text
    assert run.returncode == 0 and "BN204 warning bn\\ud800:" in run.stdout


def test_a_non_utf8_file_name_reaches_sarif_as_its_bytes_percent_encoded(tmp_path):
    name = os.fsdecode(b"m\xff.keras")
    (tmp_path / name).write_bytes((SAMPLES / f"{H.BASE}.keras").read_bytes())
    run = run_bnaudit("check", "--format", "sarif", name, cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    [result] = json.loads(run.stdout)["runs"][0]["results"]
    assert result["locations"][0]["physicalLocation"]["artifactLocation"]["uri"] == "m%FF.keras"


def test_an_internal_error_is_exit_2_with_one_line(tmp_path):
    """A crash inside bnaudit (here a reporter plugin's) is never read as "findings" (exit 1)."""
    (tmp_path / "broken_reporter.py").write_text(
        "import bnaudit\nfrom bnaudit.reporters import Reporter\n\n"
        "def render(report):\n    raise RuntimeError('renderer bug')\n\n"
        "@bnaudit.hookimpl\ndef bnaudit_register_reporters():\n    return [Reporter('broken', 'always fails', render, '.txt')]\n"
    )
    run = run_bnaudit("check", "-p", "broken_reporter", "--format", "broken", SAMPLES / f"{H.BASE}.keras", env={"PYTHONPATH": str(tmp_path)})
    assert run.returncode == 2
    assert run.stderr.splitlines() == ["bnaudit: error: internal error: RuntimeError: renderer bug (run with --debug for the traceback, and please report it)"]


def test_names_cannot_forge_log_lines_or_drive_the_terminal(tmp_path):
    """Kind 9: a file name holding a newline and a workflow command, a layer name holding ESC."""
    forged = tmp_path / "x\n::error file=README.md,line=1::forged.keras"
    forged.write_text("not a model")
    escaped = H.renamed_layer(tmp_path, "bn\x1b[2J\x1b]0;title\x07", "escape")
    run = run_bnaudit("check", "--format", "text", forged, escaped)
    assert run.returncode == 2
    assert len(run.stderr.splitlines()) == 1 and "x\\x0a::error file=README.md" in run.stderr
    assert not any(line.startswith("::") for line in run.stderr.splitlines())
    assert "\x1b" not in run.stdout + run.stderr and "bn\\x1b[2J\\x1b]0;title\\x07" in run.stdout
    github = run_bnaudit("check", "--format", "github", forged, escaped, cwd=tmp_path)
    commands = [line for line in github.stdout.splitlines() if line.startswith("::")]
    assert len(commands) == 2 and "\x1b" not in github.stdout
    assert not any(line.startswith("::error file=README.md") for line in (github.stdout + github.stderr).splitlines())


def test_output_to_a_device_a_fifo_and_a_directory(tmp_path):
    """Kind 8: /dev/null stays a device, a FIFO receives the report, a directory is refused."""
    model = SAMPLES / f"{H.BASE}.keras"
    run = run_bnaudit("check", "--format", "json", "-o", "/dev/null", model)
    assert run.returncode == 0, run.stderr
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode)
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    received: list[bytes] = []
    reader = threading.Thread(target=lambda: received.append(fifo.read_bytes()))
    reader.start()
    run = run_bnaudit("check", "--format", "json", "-o", fifo, model)
    reader.join(60)
    assert run.returncode == 0 and stat.S_ISFIFO(os.stat(fifo).st_mode)
    assert json.loads(received[0])["models"][0]["findings"][0]["code"] == "BN204"
    run = run_bnaudit("check", "--format", "json", "-o", tmp_path, model)
    assert (run.returncode, run.stderr) == (2, f"bnaudit: error: -o {tmp_path}: is a directory (give a file name)\n")
    baseline = run_bnaudit("check", "--write-baseline", tmp_path, model)
    assert (baseline.returncode, baseline.stderr) == (2, f"bnaudit: error: --write-baseline {tmp_path}: is a directory (give a file name)\n")
    assert tmp_path.is_dir()


def test_graph_walks_are_linear_on_a_fan_in():
    """Kind 7: thousands of BNs feeding one shared chain; BN104's output check walked the
    chain once per BN (N=4000: 26 s), it now walks the graph once."""
    import time

    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        from fan_in_walks import fan_in
    finally:
        sys.path.pop(0)
    from bnaudit.graph import build_graph, is_value_preserving

    graph = build_graph(fan_in(8000))
    started = time.perf_counter()
    reach = [graph.reaches_output(bn, is_value_preserving) for bn in graph.batchnorms()]
    assert time.perf_counter() - started < 5
    assert reach == [False] * 4000  # the Add is no pass-through layer
    chain_end = graph[graph.outputs[0]]
    assert graph.reaches_output(graph[chain_end.producers[0]], is_value_preserving)
    assert list(graph._memo) == [("reaches_output", is_value_preserving)]


def test_an_endless_loop_in_libhdf5_costs_its_model_only(tmp_path):
    """Kind 2, a hang rather than a crash: the fuzzer's file seed 10 #612 (a mutated
    ``model_config`` attribute) makes libhdf5 loop forever inside one read. The worker
    is stopped after ``BNAUDIT_STATIC_SECONDS``; the model gets one line, the others a result."""
    looping = _endless_loop_file(tmp_path)
    good = SAMPLES / "consecutive_bn.keras"
    run = run_bnaudit("check", "--format", "json", looping, good, env={"BNAUDIT_STATIC_SECONDS": "3"})
    assert run.returncode == 2
    assert run.stderr.splitlines() == [
        f"bnaudit: error: {looping}: reading this model did not finish in 3 s (an endless loop in a native library); the process was stopped (run with -j 1 --debug to see why)"
    ]
    models = {m["path"]: m for m in json.loads(run.stdout)["models"]}
    assert [(f["code"], f["layer"]) for f in models[str(good)]["findings"]] == [("BN105", "bn2")]


def _endless_loop_file(directory: Path) -> Path:
    """The fuzzer's file seed 10 #612: libhdf5 loops forever reading its ``model_config``."""
    sys.path.insert(0, str(ROOT / "tests" / "fuzz"))
    try:
        from mutate import make_case
    finally:
        sys.path.pop(0)
    return make_case(10, 612, directory)


HUNG = "reading this model did not finish in 3 s (an endless loop in a native library); the process was stopped"


def test_fix_reads_a_model_in_a_child_process(tmp_path):
    """Kind 2 for `bnaudit fix`: a file that hangs libhdf5 stops the child reading it after
    the time limit, and the command says so in one line (it used to hang for ever); a file
    the guards refuse is refused as by `check`. Nothing is written."""
    looping = _endless_loop_file(tmp_path)
    vds, _ = H.self_referencing_virtual(tmp_path, ".keras")
    expected = {
        looping: f"{HUNG} (run with --debug to see why)",
        vds: "layer 'bn1' gamma is a virtual dataset, which Keras never writes (the file was not written by Keras as saved; do not trust it)",
    }
    for model, message in expected.items():
        before = hashlib.sha256(model.read_bytes()).hexdigest()
        run = run_bnaudit("fix", model, "--absorb-bias", "--no-verify", "-o", tmp_path / f"fixed{model.suffix}", env={"BNAUDIT_STATIC_SECONDS": "3"})
        assert (run.returncode, run.stdout, run.stderr) == (2, "", f"bnaudit: error: {model}: {message}\n")
        assert not (tmp_path / f"fixed{model.suffix}").exists() and hashlib.sha256(model.read_bytes()).hexdigest() == before


@pytest.mark.slow
def test_stats_reads_a_model_in_a_child_process(tmp_path):
    """Kind 2 for `bnaudit stats` (which runs the model with TensorFlow): its first read of
    the file runs under the time limit in a child, so a file that hangs libhdf5 is one line."""
    import numpy as np

    looping = _endless_loop_file(tmp_path)
    np.save(tmp_path / "data.npy", np.zeros((4, 8, 8, 3), "float32"))
    run = run_bnaudit("stats", looping, "--data", tmp_path / "data.npy", env={"BNAUDIT_STATIC_SECONDS": "3"})
    assert (run.returncode, run.stdout, run.stderr) == (2, "", f"bnaudit: error: {looping}: {HUNG} (run with -j 1 --debug to see why)\n")


def test_a_corrupt_variable_length_string_cannot_make_libhdf5_allocate_gigabytes(tmp_path):
    """Kind 3 (c): the fuzzer's file seed 11 #5745, a ``model_config`` whose global-heap
    object size is corrupt; libhdf5 allocated 2 GB before failing. Under the worker's
    address-space ceiling the allocation fails and the read is one clean error."""
    sys.path.insert(0, str(ROOT / "tests" / "fuzz"))
    try:
        from mutate import make_case
    finally:
        sys.path.pop(0)
    corrupt = make_case(11, 5745, tmp_path)
    code, _stdout, stderr, peak = _measured("check", "--format", "json", corrupt)
    assert code == 2
    [line] = stderr.splitlines()
    assert line.startswith(f"bnaudit: error: {corrupt}: the 'model_config' attribute is corrupt (Can't synchronously read data (memory allocation failed")
    assert peak < 400, f"peak RSS {peak:.0f} MiB"


@pytest.mark.parametrize(
    "entry, flagged",
    [
        ({"class_name": "TFOpLambda", "config": {"name": "tf.__operators__.add", "function": "__operators__.add"}}, False),
        ({"class_name": "TFOpLambda", "config": {"name": "tf.math.multiply", "function": "math.multiply"}}, False),
        ({"class_name": "SlicingOpLambda", "config": {"name": "tf.__operators__.getitem", "function": "__operators__.getitem"}}, False),
        ({"class_name": "TFOpLambda", "config": {"name": "tf.io.write_file", "function": "io.write_file"}}, True),
        ({"class_name": "TFOpLambda", "config": {"name": "tf.py_function", "function": "py_function"}}, True),
        ({"class_name": "TFOpLambda", "config": {"name": "op"}}, True),
    ],
)
def test_tf_op_layers_are_code_unless_they_name_tensor_arithmetic(entry, flagged):
    """tf-keras looks a TFOpLambda's function up among all of TensorFlow's API names: the
    arithmetic keras.applications is saved with is fine, file or Python ops are not."""
    from bnaudit.code_objects import unsafe_objects

    config = {"class_name": "Functional", "config": {"layers": [{**entry, "config": {**entry["config"], "trainable": True}}]}}
    assert [where for where, _, _ in unsafe_objects(config)] == ([entry["config"]["name"]] if flagged else [])


def test_tf_keras_modules_and_its_tensorflow_initializers_are_keras():
    """tf-keras names its own modules (``tf_keras.src.applications.convnext``) and
    TensorFlow's initializers (``tensorflow.python.ops.init_ops_v2``) in saved configs."""
    from bnaudit.code_objects import unsafe_objects

    dense = {"class_name": "Dense", "config": {"name": "predictions", "bias_initializer": {"module": "tensorflow.python.ops.init_ops_v2", "class_name": "Constant", "config": {"value": 0}, "registered_name": "Constant"}}}
    scale = {"class_name": "LayerScale", "module": "tf_keras.src.applications.convnext", "config": {"name": "layer_scale"}}
    evil = {"class_name": "Dense", "config": {"name": "fc", "bias_initializer": {"module": "tensorflow.python.ops.gen_io_ops", "class_name": "WriteFile", "config": {}}}}
    config = {"class_name": "Functional", "config": {"layers": [dense, scale, evil]}}
    assert [where for where, _, _ in unsafe_objects(config)] == ["fc/bias_initializer"]
