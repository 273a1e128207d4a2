"""``bnaudit_register_commands``: a plugin's command runs, and the built-in commands never load it.

The plugin is a real installed distribution as importlib.metadata sees one (a
``.dist-info`` with an ``entry_points.txt`` on the path), found through the entry-point
group ``bnaudit``; each run is a fresh process, since entry points are per process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from conftest import ROOT, SAMPLES, run_bnaudit

PLUGIN = '''
import click

import bnaudit


@click.command()
def hello():
    """Say hello from a plugin."""
    click.echo("hello from a plugin command")


@bnaudit.hookimpl
def bnaudit_register_commands(cli):
    cli.add_command(hello)
'''


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """A directory holding the module ``hello_plugin`` and its distribution's metadata."""
    site = tmp_path_factory.mktemp("site")
    (site / "hello_plugin.py").write_text(PLUGIN, encoding="utf-8")
    info = site / "hello_plugin-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: hello-plugin\nVersion: 0.1\n", encoding="utf-8")
    (info / "entry_points.txt").write_text("[bnaudit]\nhello = hello_plugin\n", encoding="utf-8")
    return site


def bnaudit(site, *args: str) -> tuple[subprocess.CompletedProcess, bool]:
    """Run the console script's body with ``site`` on the path; also say whether the plugin was imported."""
    code = (
        "import sys\n"
        "from bnaudit.cli import cli\n"
        "try:\n"
        f"    cli({list(args)!r}, prog_name='bnaudit')\n"
        "finally:\n"
        "    print('plugin imported:', 'hello_plugin' in sys.modules, file=sys.stderr)\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(ROOT)])}
    env.pop("BNAUDIT_DISABLE_PLUGIN_AUTOLOAD", None)
    run = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    return run, run.stderr.strip().splitlines()[-1] == "plugin imported: True"


def test_a_plugin_command_runs_and_is_listed(site):
    run, imported = bnaudit(site, "hello")
    assert run.returncode == 0 and run.stdout == "hello from a plugin command\n" and imported
    run, _ = bnaudit(site, "--help")
    assert run.returncode == 0
    assert "hello    Say hello from a plugin." in run.stdout and "check    Audit model files" in run.stdout
    assert run_bnaudit("hello").returncode == 2  # without the plugin there is no such command


def test_built_in_commands_start_without_loading_plugins_for_commands(site):
    run, imported = bnaudit(site, "formats")  # lists formats: plugins are loaded for those, not for commands
    assert run.returncode == 0 and "json" in run.stdout and imported
    model = str(SAMPLES / "dropout_before_bn.keras")
    run, imported = bnaudit(site, "check", "--format", "json", model)
    assert run.returncode == 0 and [f["code"] for f in json.loads(run.stdout)["models"][0]["findings"]] == ["BN101"]
    run, imported = bnaudit(site, "merge", "--help")
    assert run.returncode == 0 and not imported  # nothing of merge needs a plugin
    run, _ = bnaudit(site, "nosuch")
    assert run.returncode == 2 and "No such command 'nosuch'" in run.stderr
