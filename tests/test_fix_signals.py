"""``bnaudit fix`` stopped from outside, in a real subprocess: whatever stops the command
(SIGKILL or SIGTERM to it alone, SIGTERM or SIGINT to its process group as ``timeout``
and Ctrl-C send them), its worker process ends too, removes its temporary directory
and writes no ``-o OUT``; and a worker whose command is gone writes nothing."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from bnaudit import parallel
from bnaudit.fixes import fix
from conftest import ROOT


ENDLESS = """
import pathlib

import numpy as np


def batches():
    pathlib.Path("started").touch()
    while True:
        yield np.zeros((8, 8, 8, 3), "float32")
"""


def _children(pid: int) -> list[int]:
    with open(f"/proc/{pid}/task/{pid}/children") as listed:
        return [int(child) for child in listed.read().split()]


def _ended(pid: int) -> bool:
    """Gone, or a zombie nobody reaped yet (it runs no code any more)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rpartition(")")[2].split()[0] == "Z"
    except FileNotFoundError:
        return True


def _wait(condition, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


@pytest.mark.skipif(not os.path.exists("/proc/self/task"), reason="reads the process tree from Linux /proc")
@pytest.mark.parametrize(
    "how,signum",
    [("command", signal.SIGKILL), ("command", signal.SIGTERM), ("group", signal.SIGTERM), ("group", signal.SIGINT)],
    ids=["kill-9-command", "sigterm-command", "timeout-sigterm-group", "ctrl-c-group"],
)
def test_stopping_the_command_stops_its_worker_and_leaves_nothing(tmp_path, samples, how, signum):
    """The data never ends (a factory of endless batches): only a stop ends the run, so
    a worker that outlived its command would still be running when the test looks."""
    (tmp_path / "endless.py").write_text(ENDLESS)
    out = tmp_path / "out.keras"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH", "")]))}
    command = subprocess.Popen(
        [sys.executable, "-m", "bnaudit", "fix", samples / "clean_conv_bn_relu.keras", "-o", out,
         "--recalibrate", "--data", "endless:batches", "--recalibrate-method", "per-level"],
        cwd=tmp_path, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    try:
        _wait(lambda: any(p.name.startswith(".bnaudit-fix-") for p in tmp_path.iterdir()), 60, "the worker never began the copy")
        worker = _children(command.pid)
        assert len(worker) == 1
        _wait(lambda: (tmp_path / "started").exists(), 60, "the statistics pass never began")  # TensorFlow runs in the worker
        assert command.poll() is None and not out.exists()
        if how == "command":
            os.kill(command.pid, signum)
        else:
            os.killpg(command.pid, signum)
        assert command.wait(60) == -signum  # the command ends by the signal, as the shell expects
        _wait(lambda: _ended(worker[0]), 20, "the worker outlived the command")
    finally:  # whatever is left of the session, the worker included, when an assertion failed
        try:
            os.killpg(command.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        command.wait()
    assert sorted(p.name for p in tmp_path.iterdir() if p.suffix != ".pyc" and p.name != "__pycache__") == ["endless.py", "started"]  # no OUT, no .bnaudit-fix-XXXX/


def test_a_worker_whose_command_is_gone_writes_nothing(tmp_path, samples, monkeypatch):
    """Where the kernel's SIGTERM is missing or still on its way: the last step before
    the move into place finds the parent gone, and the copy is not written."""
    monkeypatch.setattr(parallel, "_parent", -1)  # no process has this pid: the parent is gone
    with pytest.raises(parallel.Stopped):
        fix(samples / "bias_before_bn.keras", tmp_path / "x.keras", absorb_bias=True, verify=False)
    assert list(tmp_path.iterdir()) == []
