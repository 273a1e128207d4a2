"""Every command the docs show is run by a test, or says here why it cannot run offline.

The commands are read from the fenced ``sh``/``console`` blocks of the README, docs/,
the plugins' READMEs and sample_models/README.md (``$``-prompted lines where a block has
prompts). Each is either run below, in a scratch directory holding what it names
(``models/``, ``model.keras``, data), or listed in :data:`ELSEWHERE` with where it is
run or why it cannot be. A command added to the docs and to neither fails
:func:`test_every_doc_command_is_run_or_explained`.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import ROOT, SAMPLES, run_bnaudit
from test_plugins import installed, site  # noqa: F401  (the installed plugin packages)

DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), *sorted(ROOT.glob("plugins/*/README.md")), ROOT / "sample_models" / "README.md"]
FENCE = re.compile(r"^([ \t]*)```(\w*)\n(.*?)^\1```", re.M | re.S)
PLACEHOLDER_URL, PLACEHOLDER_COMMIT = "<repository URL>", "<commit>"


def doc_commands() -> dict[str, str]:
    """command -> the doc that shows it (first one), comments and prompts stripped."""
    found: dict[str, str] = {}
    for doc in DOCS:
        for match in FENCE.finditer(doc.read_text(encoding="utf-8")):
            if match.group(2) not in ("sh", "console", ""):
                continue
            lines = [line.strip() for line in re.sub(r"\\\n\s*", "", match.group(3)).splitlines()]
            prompted = any(line.startswith("$ ") for line in lines)
            for line in lines:
                if prompted and not line.startswith("$ "):
                    continue
                line = re.sub(r"\s+#.*$", "", line.removeprefix("$ ")).strip()
                if re.match(r"(pip|python|bnaudit) ", line):
                    found.setdefault(line, str(doc.relative_to(ROOT)))
    return found


#: Static commands, run as written in a scratch directory (plugin ones with the plugins installed).
STATIC = {
    "bnaudit check sample_models/dropout_before_bn.keras sample_models/bn_training_baked.keras sample_models/clean_conv_bn_relu.keras": 1,
    "bnaudit check models/": 1,
    "bnaudit check models/ --write-baseline .bnaudit-baseline.json": 0,
    "bnaudit check models/ --baseline .bnaudit-baseline.json": 0,
    "bnaudit check models/ --format json -o results.json --format html -o report.html --format sarif -o bnaudit.sarif --format junit -o junit.xml --format github": 1,
    "bnaudit plugins": 0,
    "bnaudit formats": 0,
    "bnaudit check models/ --select LN": 0,
    "bnaudit check models/ -p no:layernorm": 1,
    "bnaudit check models/ --format markdown -o bnaudit.md": 1,
    "bnaudit check model.keras --select ACME": 0,
}
#: Commands that start TensorFlow (the statistics guide), run in order: slow.
STATISTICS = [
    "bnaudit check model.keras --data shifted.npy",
    "bnaudit stats model.keras --data shifted.npy",
    "bnaudit stats model.keras --data data.npy --shard 3/8 -o parts/3.npz",
    "bnaudit merge parts/*.npz -o stats.npz",
    "bnaudit check model.keras --stats stats.npz",
    "bnaudit stats model.keras --stats stats.npz",
]
#: Install routes, each built for real from this repository (slow).
INSTALLS = [
    "pip install . && bnaudit check sample_models/dropout_before_bn.keras",
    'pip install ".[tensorflow]"',
    'pip install "bnaudit[tensorflow] @ git+<repository URL>@<commit>"',
    'pip install "bnaudit @ git+<repository URL>@<commit>"',
]
#: Where the rest is run, or why it cannot run offline.
ELSEWHERE = {
    "bnaudit stats model.keras --data data.npy --upstream training -o stats.npz": "runs on every task of a TF_CONFIG cluster: tests/test_cluster.py runs it as two real worker processes",
    'pip install -e ".[test]" && python -m pytest': "the README's test command: .ci/run runs it, and it is this suite",
    "pip install ./bnaudit-acme": "tests/test_plugins.py installs the guide's plugin from the guide's own files",
    "bnaudit plugins | grep acme": "tests/test_plugins.py checks `bnaudit plugins` lists acme 0.1.0 with ACME101",
    "pip install ./plugins/bnaudit-layernorm": "tests/test_plugins.py installs it (the `site` fixture used here)",
    "pip install ./plugins/bnaudit-markdown": "tests/test_plugins.py installs it (the `site` fixture used here)",
    "pip install ./plugins/bnaudit-layernorm && python -m pytest plugins/bnaudit-layernorm/tests": "tests/test_plugins.py runs the plugins' tests against the installed packages",
    "pip install ./plugins/bnaudit-markdown && python -m pytest plugins/bnaudit-markdown/tests": "tests/test_plugins.py runs the plugins' tests against the installed packages",
    'pip install "tensorflow==2.21.*" tf-keras h5py': "downloads TensorFlow from PyPI: not offline (the test dependencies hold the same packages)",
    "python sample_models/build.py": "rewrites the committed sample models; tests/test_sample_models.py checks what they hold",
    "python sample_models/build.py /tmp/out --verify": "builds and reloads every sample model (minutes); tests/test_sample_models.py checks the committed ones",
    "python sample_models/build.py --only frozen_bn": "rewrites a committed sample model",
    "bnaudit check model.keras model.h5 model.onnx saved_model_dir/": "names the formats, not files here; tests/test_onnx.py checks .onnx and SavedModel samples together in one run, every report format included",
    "bnaudit diff base.keras tuned.keras": "tests/test_diff.py runs docs/checkpoints.md's script and both its commands, output line for line",
    "bnaudit check tuned.keras": "tests/test_diff.py runs docs/checkpoints.md's script and both its commands, output line for line",
    "bnaudit fix MODEL -o OUT [--unbake] [--absorb-bias] [--fold] [--recalibrate --data DATA | --stats FILE] [--all]": "the command's synopsis, not a runnable line; tests/test_fix.py runs each fix",
    "bnaudit fix model.keras -o fixed.keras --recalibrate --data train.npy --verify-data heldout.npy": "tests/test_fix_recalibrate.py runs it as written on the sample model and compares its output with the doc's",
    "bnaudit fix clean.keras -o fixed.keras --all": "tests/test_fix_requests.py runs it as written on the clean sample model and compares its output with the doc's",
    "bnaudit fix clean_conv_bn_relu.keras -o folded.keras --fold --no-verify": "tests/test_fix_requests.py runs it as written and compares its output with the doc's",
    "bnaudit check model.onnx --data shifted.npy": "tests/test_onnx_statistics.py runs it on a tf2onnx conversion next to its Keras original, with drifted and matching data",
    "bnaudit stats model.keras --data data.npy --shard ${SLURM_ARRAY_TASK_ID}/8 -o parts/${SLURM_ARRAY_TASK_ID}.npz": "runs inside a Slurm job array; the same command is run here as shard 3/8",
}


def example_installs() -> list[str]:
    """The pip lines of the CI examples (examples/*.yml), which pin bnaudit like the docs."""
    lines = [line.strip().removeprefix("- ").removeprefix("run: ") for path in sorted((ROOT / "examples").glob("*.yml")) for line in path.read_text().splitlines()]
    return [line for line in lines if line.startswith("pip install")]


def test_every_doc_command_is_run_or_explained():
    shown = doc_commands()
    assert len(example_installs()) == 2 and set(example_installs()) <= set(INSTALLS)
    known = set(STATIC) | set(STATISTICS) | set(INSTALLS) | set(ELSEWHERE)
    assert {c: doc for c, doc in shown.items() if c not in known} == {}, "a doc command no test runs"
    assert sorted(known - set(shown)) == [], "listed here but no longer in the docs"


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    """What the docs' commands name: sample_models/, models/, model.keras. Shared, as the
    docs' sequences are (--write-baseline, then --baseline)."""
    tmp_path = tmp_path_factory.mktemp("docs")
    shutil.copytree(SAMPLES, tmp_path / "sample_models", ignore=shutil.ignore_patterns("*.py", "*.md", "*.json"))
    (tmp_path / "models").mkdir()
    for name in ("dropout_before_bn.keras", "bn_training_baked.h5", "clean_conv_bn_relu.keras"):
        shutil.copy(SAMPLES / name, tmp_path / "models" / name)
    shutil.copy(SAMPLES / "clean_conv_bn_relu.keras", tmp_path / "model.keras")
    return tmp_path


def run_doc_command(command: str, cwd: Path, env: dict[str, str] | None = None):
    """A doc command through ``python -m bnaudit`` (this checkout), globs expanded as a shell would."""
    words = shlex.split(command)
    assert words[0] == "bnaudit"
    args = [expanded for word in words[1:] for expanded in (sorted(str(p.relative_to(cwd)) for p in cwd.glob(word)) if "*" in word else [word])]
    return run_bnaudit(*args, cwd=cwd, env=env)


@pytest.mark.parametrize("command", STATIC)
def test_static_doc_commands_run_as_written(command, workspace, site):  # noqa: F811
    run = run_doc_command(command, workspace, env=installed(site))
    assert (run.returncode, "Traceback" in run.stderr) == (STATIC[command], False), run.stderr
    assert run.stdout or "-o" in command
    for output in re.findall(r"-o (\S+)", command):
        assert (workspace / output).stat().st_size > 0, output


@pytest.mark.slow
def test_the_statistics_guide_runs_as_written(workspace):
    import keras

    shape = keras.saving.load_model(workspace / "model.keras", compile=False).inputs[0].shape[1:]
    rng = np.random.default_rng(0)
    np.save(workspace / "data.npy", rng.normal(size=(256, *shape)).astype(np.float32))  # 8 batches: one per shard
    np.save(workspace / "shifted.npy", (rng.normal(size=(64, *shape)) * 3 + 5).astype(np.float32))
    (workspace / "parts").mkdir()
    for command in STATISTICS:
        if "--shard 3/8" in command:  # one worker of eight; the others are the same command
            for k in (1, 2, 4, 5, 6, 7, 8):
                run = run_doc_command(command.replace("3/8", f"{k}/8").replace("parts/3", f"parts/{k}"), workspace)
                assert run.returncode == 0, run.stderr
        run = run_doc_command(command, workspace)
        assert "Traceback" not in run.stderr and "bnaudit: error" not in run.stderr, (command, run.stderr)
        assert run.returncode in (0, 1) and (run.stdout or " -o " in command), (command, run.stderr)
    assert (workspace / "stats.npz").stat().st_size > 0


def _repository() -> Path:
    """The git repository these tests run from (a clone or a worktree)."""
    top = subprocess.run(["git", "rev-parse", "--show-toplevel"], cwd=ROOT, capture_output=True, text=True)
    if top.returncode != 0:
        pytest.skip("not a git checkout: the git+ install route needs one")
    return Path(top.stdout.strip())


@pytest.mark.slow
@pytest.mark.parametrize("command", INSTALLS)
def test_install_routes_build_from_this_repository(command, tmp_path):
    """Each route is built for real by pip, as a user's pip builds it (in an isolated build
    environment with the setuptools pyproject.toml asks for), into a target directory
    without dependencies (they are installed here); then the installed command is run."""
    install, _, then = command.partition(" && ")
    spec = shlex.split(install)[2]
    if "git+" in spec:
        repository = _repository()
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repository, capture_output=True, text=True, check=True).stdout.strip()
        # pip's requirement parser wants a host in a git+file URL: file://localhost/...
        spec = spec.replace(PLACEHOLDER_URL, f"file://localhost{repository.as_posix()}").replace(PLACEHOLDER_COMMIT, commit)
    else:  # pip builds in the source tree: build a copy of what the package is made of
        source = tmp_path / "src"
        source.mkdir()
        for name in ("pyproject.toml", "README.md"):
            shutil.copy(ROOT / name, source / name)
        for name in ("bnaudit", "templates"):
            shutil.copytree(ROOT / name, source / name, symlinks=True, ignore=shutil.ignore_patterns("__pycache__"))
        spec = str(source) + spec[1:]  # "." or ".[tensorflow]"
    target = tmp_path / "site"
    pip = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--disable-pip-version-check", "--target", str(target), spec],
        capture_output=True, text=True, timeout=600,
    )
    assert pip.returncode == 0, pip.stdout[-2000:] + pip.stderr[-2000:]
    assert "does not provide the extra" not in pip.stdout + pip.stderr
    assert (target / "bnaudit" / "templates" / "report.html.j2").is_file()  # the templates ship in the wheel
    check = subprocess.run(
        [sys.executable, "-c", "import sys; from bnaudit.cli import main; sys.argv[0] = 'bnaudit'; main()", "check", str(SAMPLES / "dropout_before_bn.keras"), "--isolated"],
        cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(target)}, capture_output=True, text=True, timeout=120,
    )
    assert check.returncode == 0 and "BN101 warning bn2" in check.stdout, check.stderr
    assert then in ("", "bnaudit check sample_models/dropout_before_bn.keras")


def test_the_config_example_in_the_ci_guide_works_as_written(tmp_path):
    """docs/ci.md's [tool.bnaudit] example, as a pyproject.toml, with what it names present."""
    guide = (ROOT / "docs" / "ci.md").read_text(encoding="utf-8")
    (example,) = [m.group(3) for m in FENCE.finditer(guide) if m.group(2) == "toml" and "[tool.bnaudit]" in m.group(3)]
    (tmp_path / "pyproject.toml").write_text(example)
    (tmp_path / "data").mkdir()
    np.savez(tmp_path / "data" / "vision_sample.npz", x=np.zeros((2, 8, 8, 3), np.float32))
    (tmp_path / "models" / "legacy").mkdir(parents=True)
    shutil.copy(SAMPLES / "bias_before_bn.h5", tmp_path / "models" / "legacy" / "old.h5")
    shutil.copy(SAMPLES / "dropout_before_bn.keras", tmp_path / "models" / "current.keras")
    run = run_bnaudit("check", "models/", "--format", "json", "-v", cwd=tmp_path)
    assert run.returncode == 1, run.stderr  # fail-on = "warning": BN101 fails the gate
    assert run.stderr.splitlines()[0] == f"config: {tmp_path / 'pyproject.toml'}"
    models = {Path(m["path"]).name: [f["code"] for f in m["findings"]] for m in json.loads(run.stdout)["models"]}
    assert models == {"current.keras": ["BN101"], "old.h5": []}  # BN102 ignored for models/legacy/*.h5
