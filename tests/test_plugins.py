"""Third-party plugins, installed for real with pip: discovered through the entry-point
group ``bnaudit``, listed, selectable by their codes, and gone when removed.

The packages are installed into a directory of their own (``pip install --target``) put
on ``PYTHONPATH`` for the commands that should see them, so the environment running
the tests is left as it was, and "uninstalled" is simply running without it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bnaudit.plugins import make_plugin_manager
from conftest import ROOT, run_bnaudit

PLUGINS = ROOT / "plugins"
PACKAGES = ("bnaudit-layernorm", "bnaudit-markdown")
GUIDE = ROOT / "docs" / "plugins.md"


def guide_files() -> dict[str, str]:
    """The files of the minimal plugin in docs/plugins.md, exactly as written there."""
    return dict(re.findall(r"^File `([^`]+)`:\n\n```\w+\n(.*?)^```$", GUIDE.read_text(encoding="utf-8"), re.M | re.S))


@pytest.fixture(scope="session")
def site(tmp_path_factory) -> Path:
    """The two plugin packages and the guide's plugin, pip-installed into one directory."""
    work = tmp_path_factory.mktemp("plugin_packages")
    sources = []
    for package in PACKAGES:  # built from copies: pip builds in the source tree
        sources.append(shutil.copytree(PLUGINS / package, work / package, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__")))
    for name, text in guide_files().items():
        (work / name).parent.mkdir(parents=True, exist_ok=True)
        (work / name).write_text(text, encoding="utf-8")
    sources.append(work / "bnaudit-acme")
    target = work / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation", "--disable-pip-version-check", "--target", str(target), *map(str, sources)],
        check=True, capture_output=True, timeout=300,
    )
    return target


@pytest.fixture(scope="session")
def mixed_model(tmp_path_factory) -> dict:
    """A model with one problem for each plugin, and one for bnaudit itself; .keras and .h5."""
    import keras
    from keras import layers

    inp = keras.Input((3, 8, 8))
    x = layers.Conv2D(4, 3, padding="same", data_format="channels_first", name="conv_cf")(inp)
    x = layers.GroupNormalization(groups=2, name="gn_width")(x)  # LN101: normalizes the width
    x = layers.Flatten(name="flat")(x)
    x = layers.Dense(6, name="fc")(x)  # BN102: its bias feeds a BN
    bn = layers.BatchNormalization()  # ACME101: the generated name
    x = layers.LayerNormalization(name="ln")(bn(x))
    model = keras.Model(inp, layers.Dense(2, name="out")(x))
    gamma, beta, _, _ = bn.get_weights()
    bn.set_weights([gamma, beta, gamma * 0.1, gamma * 2.0])
    ln_gamma, ln_beta = model.get_layer("ln").get_weights()
    model.get_layer("ln").set_weights([ln_gamma * np.linspace(0.5, 1.5, 6), ln_beta + 0.25])
    root = tmp_path_factory.mktemp("mixed")
    paths = {suffix: root / f"mixed{suffix}" for suffix in (".keras", ".h5")}
    for path in paths.values():
        model.save(path)
    arrays = {name: model.get_layer(name).get_weights() for name in ("ln", "fc", "gn_width")}
    return {"paths": paths, "bn": bn.name, "arrays": arrays}


def installed(site: Path, **env: str) -> dict[str, str]:
    return {"PYTHONPATH": str(site), **env}


def findings(proc) -> set[tuple[str, str]]:
    return {(f["code"], f["layer"]) for m in json.loads(proc.stdout)["models"] for f in m["findings"]}


def test_installed_plugins_are_listed_with_their_versions_and_what_they_add(site):
    proc = run_bnaudit("plugins", env=installed(site))
    assert proc.returncode == 0, proc.stderr
    listed = {line.split()[0]: line.split(None, 2)[1:] for line in proc.stdout.splitlines()}
    assert listed["layernorm"] == ["0.1.0", "LN101, LN201, LN202"]
    assert listed["markdown"] == ["0.1.0", "format:markdown"]
    assert listed["acme"] == ["0.1.0", "ACME101"]


def test_plugin_rules_run_and_are_selected_by_their_codes(site, mixed_model):
    paths = mixed_model["paths"].values()
    bn = mixed_model["bn"]
    everything = run_bnaudit("check", *paths, "--isolated", "--format", "json", env=installed(site))
    assert {("LN101", "gn_width"), ("ACME101", bn), ("BN102", bn)} <= findings(everything)
    only_plugins = run_bnaudit("check", *paths, "--isolated", "--format", "json", "--select", "LN,ACME1", env=installed(site))
    per_model = [{(f["code"], f["layer"]) for f in m["findings"]} for m in json.loads(only_plugins.stdout)["models"]]
    assert per_model == [{("LN101", "gn_width"), ("ACME101", bn)}] * 2  # .keras and .h5 alike
    without_one = run_bnaudit("check", *paths, "--isolated", "--format", "json", "--ignore", "LN101", env=installed(site))
    assert ("ACME101", bn) in findings(without_one) and not any(code.startswith("LN") for code, _ in findings(without_one))


def test_the_markdown_plugin_adds_a_format(site, mixed_model):
    proc = run_bnaudit("check", mixed_model["paths"][".keras"], "--isolated", "--format", "markdown", env=installed(site))
    assert proc.returncode == 0, proc.stderr
    assert "| warning | LN101 normalization-axis-not-channels |" in proc.stdout
    assert "markdown" in run_bnaudit("formats", env=installed(site)).stdout.split()


@pytest.mark.parametrize(
    "how",
    ["uninstalled", "BNAUDIT_DISABLE_PLUGIN_AUTOLOAD=1", "-p no:layernorm"],
)
def test_removing_a_plugin_removes_its_rules(site, mixed_model, how):
    env, args = {
        "uninstalled": ({}, ()),
        "BNAUDIT_DISABLE_PLUGIN_AUTOLOAD=1": (installed(site, BNAUDIT_DISABLE_PLUGIN_AUTOLOAD="1"), ()),
        "-p no:layernorm": (installed(site), ("-p", "no:layernorm")),
    }[how]
    rules = run_bnaudit("rules", *args, env=env)
    assert rules.returncode == 0 and "BN101" in rules.stdout and "LN101" not in rules.stdout
    if how == "-p no:layernorm":  # only the one named is off, and check honours it too
        assert "ACME101" in rules.stdout
        check = run_bnaudit("check", mixed_model["paths"][".keras"], "--isolated", "--select", "LN101", *args, env=env)
        assert check.returncode == 2
        assert check.stderr == "bnaudit: error: --select LN101 matches no rule; `bnaudit rules` lists the codes\n"


def test_with_autoload_off_p_loads_just_the_plugins_named(site, mixed_model):
    env = installed(site, BNAUDIT_DISABLE_PLUGIN_AUTOLOAD="1")
    proc = run_bnaudit("check", mixed_model["paths"][".keras"], "--isolated", "--format", "json", "-p", "bnaudit_acme", env=env)
    codes = {code for code, _ in findings(proc)}
    assert "ACME101" in codes and not any(code.startswith("LN") for code in codes)


CONFLICTING = '''
import bnaudit
from bnaudit import Severity, rule

@rule("{code}", "{name}", Severity.INFO)
def check(ctx):
    """A rule that finds nothing."""
    return []

@bnaudit.hookimpl
def bnaudit_register_rules():
    return [check]
'''


@pytest.mark.parametrize(
    "codes, message",
    [
        (("XY101", "XY102"), r"rule prefix 'XY' is claimed by both '(plugin_a|plugin_b)' and '(?!\1)(plugin_a|plugin_b)'; uninstall one or switch it off with -p no:NAME"),
        (("BN901", "ZZ101"), r"plugin 'plugin_a' uses the prefix 'BN', reserved for bnaudit's own rules"),
    ],
)
def test_a_code_prefix_claimed_twice_stops_bnaudit_at_start_up(tmp_path, mixed_model, codes, message):
    for module, code in zip(("plugin_a", "plugin_b"), codes):
        (tmp_path / f"{module}.py").write_text(CONFLICTING.format(code=code, name=f"rule-of-{module.replace('_', '-')}"))
    proc = run_bnaudit("check", mixed_model["paths"][".keras"], "--isolated", "-p", "plugin_a", "-p", "plugin_b", env={"PYTHONPATH": str(tmp_path)})
    assert proc.returncode == 2
    assert re.fullmatch(f"bnaudit: error: {message}\n", proc.stderr), proc.stderr
    assert proc.stdout == ""


@pytest.mark.parametrize("suffix", [".keras", ".h5"])
def test_layer_arrays_reads_any_layer_as_keras_saved_it(mixed_model, suffix):
    graph = make_plugin_manager(autoload=False).hook.bnaudit_load_model(path=mixed_model["paths"][suffix])
    try:
        for layer, names in (("ln", ["gamma", "beta"]), ("fc", ["kernel", "bias"]), ("gn_width", ["gamma", "beta"])):
            read = graph.weights.layer_arrays(graph[layer], names)
            assert list(read) == names
            for name, expected in zip(names, mixed_model["arrays"][layer]):
                np.testing.assert_array_equal(read[name], expected)
    finally:
        graph.weights.close()


@pytest.mark.slow
def test_the_plugins_own_test_suites_pass_against_the_installed_packages(site):
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *(str(PLUGINS / p / "tests") for p in PACKAGES)],
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(site)}, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]


def _distribution(directory: Path, name: str, entry_points: str) -> None:
    info = directory / f"{name}-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n", encoding="utf-8")
    (info / "entry_points.txt").write_text(entry_points, encoding="utf-8")


def test_the_entry_point_scan_is_skipped_only_when_no_distribution_declares_the_group(tmp_path, monkeypatch):
    from bnaudit.plugins import group_may_be_declared

    _distribution(tmp_path / "other", "other", "[console_scripts]\nother = other:main\n# [bnaudit] in a comment\n")
    monkeypatch.setattr(sys, "path", [str(tmp_path / "missing"), str(tmp_path / "other")])
    assert not group_may_be_declared("bnaudit")
    assert group_may_be_declared("console_scripts")
    _distribution(tmp_path / "plugin", "plugin", "[bnaudit]\nplugin = plugin_module\n")
    monkeypatch.setattr(sys, "path", [str(tmp_path / "other"), str(tmp_path / "plugin")])
    assert group_may_be_declared("bnaudit")
    (tmp_path / "app.zip").write_bytes(b"PK\x05\x06" + bytes(18))  # a zip on the path: importlib.metadata reads it
    monkeypatch.setattr(sys, "path", [str(tmp_path / "other"), str(tmp_path / "app.zip")])
    assert group_may_be_declared("bnaudit")


def test_the_entry_point_scan_runs_for_every_group_importlib_metadata_finds():
    """Never a plugin missed: each group some installed distribution declares is seen."""
    from importlib.metadata import distributions

    from bnaudit.plugins import group_may_be_declared

    groups = {entry_point.group for dist in distributions() for entry_point in dist.entry_points}
    assert groups and sorted(g for g in groups if not group_may_be_declared(g)) == []
