"""The statistics pass on a MultiWorkerMirroredStrategy cluster described by TF_CONFIG.

Two real ``bnaudit stats`` processes on this machine, each with its own TF_CONFIG
(localhost ports picked free at test time), measure their shares of a small .npy; the
chief's statistics must equal a single-process pass and the merge of ``--shard`` parts.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import ROOT, assert_same_statistics, run_bnaudit

from bnaudit.runtime.cluster import ClusterError, from_environment


def tf_config(addresses: list[str], index: int, task_type: str = "worker") -> str:
    return json.dumps({"cluster": {"worker": addresses}, "task": {"type": task_type, "index": index}})


def free_ports(count: int) -> list[int]:
    """Ports free on localhost now (bound to port 0, then released)."""
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind(("localhost", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    except OSError as exc:
        pytest.skip(f"cannot open localhost sockets here: {exc}")
    finally:
        for s in sockets:
            s.close()


# -- TF_CONFIG, read without TensorFlow ------------------------------------------------


def test_tf_config_names_the_task_its_shard_and_the_chief():
    workers = ["localhost:1001", "localhost:1002", "localhost:1003"]
    assert from_environment({}) is None
    assert from_environment({"TF_CONFIG": tf_config(workers[:1], 0)}) is None  # one task: a plain pass
    second = from_environment({"TF_CONFIG": tf_config(workers, 1)})
    assert (second.workers, second.index, second.shard, second.chief) == (3, 1, (2, 3), False)
    assert from_environment({"TF_CONFIG": tf_config(workers, 0)}).chief
    with_chief = {"cluster": {"chief": ["h:1"], "worker": ["h:2", "h:3"]}, "task": {"type": "worker", "index": 0}}
    worker = from_environment({"TF_CONFIG": json.dumps(with_chief)})
    assert (worker.index, worker.shard, worker.chief) == (1, (2, 3), False)  # TensorFlow's id_in_cluster
    with_chief["task"] = {"type": "chief", "index": 0}
    assert from_environment({"TF_CONFIG": json.dumps(with_chief)}).chief
    assert from_environment({"TF_CONFIG": tf_config(workers, 0), "BNAUDIT_CLUSTER_TIMEOUT": "7.5"}).timeout == 7.5


@pytest.mark.parametrize(
    "environ, message",
    [
        ({"TF_CONFIG": "{not json"}, "TF_CONFIG is not JSON"),
        ({"TF_CONFIG": '{"task": {"type": "worker", "index": 0}}'}, "TF_CONFIG names no cluster"),
        ({"TF_CONFIG": tf_config(["h:1", "h"], 0)}, "is not a list of host:port addresses"),
        ({"TF_CONFIG": tf_config(["h:1", "h:2"], 2)}, "is not a chief or worker task of its cluster"),
        ({"TF_CONFIG": tf_config(["h:1", "h:2"], 0, "ps")}, "is not a chief or worker task of its cluster"),
        ({"TF_CONFIG": tf_config(["h:1", "h:2"], 0), "BNAUDIT_CLUSTER_TIMEOUT": "-1"}, "is not a positive number"),
    ],
)
def test_bad_tf_config_is_refused(environ, message):
    with pytest.raises(ClusterError, match=message):
        from_environment(environ)


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    """A small Keras MLP with BN whose moving statistics are not 0/1, and 200 samples of data."""
    from bnaudit.runtime import import_tensorflow

    import_tensorflow()
    import keras

    keras.utils.set_random_seed(5)
    inp = keras.Input((8,), name="features")
    h = keras.layers.BatchNormalization(name="bn_in")(inp)
    h = keras.layers.Dense(12, name="fc")(h)
    h = keras.layers.BatchNormalization(name="bn1")(h)
    model = keras.Model(inp, keras.layers.Dense(3, name="head")(keras.layers.Activation("relu")(h)))
    rng = np.random.default_rng(5)
    for bn, n in (("bn_in", 8), ("bn1", 12)):
        model.get_layer(bn).moving_mean.assign(rng.normal(size=n).astype("float32"))
        model.get_layer(bn).moving_variance.assign(rng.uniform(0.5, 2.0, n).astype("float32"))
    folder = tmp_path_factory.mktemp("cluster")
    model.save(folder / "mlp.keras")
    np.save(folder / "data.npy", (rng.normal(size=(200, 8)) * 3 + 1).astype("float32"))
    return folder


def test_bad_tf_config_is_one_line_exit_2(sample):
    run = run_bnaudit("stats", "mlp.keras", "--data", "data.npy", cwd=sample, env={"TF_CONFIG": "{not json"})
    assert run.returncode == 2 and run.stdout == ""
    assert run.stderr.startswith("bnaudit: error: TF_CONFIG is not JSON (") and len(run.stderr.splitlines()) == 1


def test_an_unreachable_worker_times_out_in_one_line(sample):
    ports = free_ports(2)
    env = {"TF_CONFIG": tf_config([f"localhost:{p}" for p in ports], 0), "BNAUDIT_CLUSTER_TIMEOUT": "3"}
    started = time.monotonic()
    run = run_bnaudit("stats", "mlp.keras", "--data", "data.npy", "-o", "never.npz", cwd=sample, env=env, timeout=120)
    assert run.returncode == 2, run.stderr
    assert run.stderr == (
        f"bnaudit: error: mlp.keras: cluster task at localhost:{ports[1]} unreachable after 3 s (task worker:0 (1 of 2) "
        "waited for it) (start every task named in TF_CONFIG, or raise BNAUDIT_CLUSTER_TIMEOUT)\n"
    )
    assert not (sample / "never.npz").exists() and time.monotonic() - started < 60


def test_check_and_fix_on_a_cluster_say_what_is_wrong_in_one_line(sample):
    bad = run_bnaudit("check", "mlp.keras", "--data", "data.npy", cwd=sample, env={"TF_CONFIG": tf_config(["h:1", "h:2"], 5)})
    assert bad.returncode == 2 and bad.stdout == ""
    assert bad.stderr.startswith('bnaudit: error: TF_CONFIG task {"type": "worker", "index": 5} is not a chief or worker task of its cluster (')
    cluster = {"TF_CONFIG": tf_config(["localhost:1", "localhost:2"], 0)}
    fixed = run_bnaudit("fix", "mlp.keras", "-o", "fixed.keras", "--recalibrate", "--data", "data.npy", cwd=sample, env=cluster)
    assert fixed.returncode == 2 and not (sample / "fixed.keras").exists()
    assert fixed.stderr == (
        "bnaudit: error: mlp.keras: bnaudit fix runs on one machine, and TF_CONFIG names a cluster (measure on the cluster with "
        "`bnaudit stats --upstream training -o STATS.npz`, then run fix --recalibrate --stats STATS.npz without TF_CONFIG)\n"
    )


def on_two_workers(folder: Path, *args: str) -> tuple[list[tuple[int, str, str]], float]:
    """``bnaudit ARGS`` as two real worker processes of one TF_CONFIG cluster on localhost,
    ``{task}`` in ARGS replaced by each one's index: (exit code, stdout, stderr) of each, and the wall time."""
    # One device per process, so that every run computes each batch alike (float32).
    env = {**os.environ, "PYTHONPATH": str(ROOT), "BNAUDIT_CLUSTER_TIMEOUT": "120", "BNAUDIT_LOGICAL_CPUS": "1"}
    addresses = [f"localhost:{p}" for p in free_ports(2)]
    started = time.monotonic()
    workers = [
        subprocess.Popen(
            [sys.executable, "-m", "bnaudit", *(a.format(task=i) for a in args)], cwd=folder, env={**env, "TF_CONFIG": tf_config(addresses, i)},
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        for i in (0, 1)
    ]
    try:
        outputs = [w.communicate(timeout=300) for w in workers]
    finally:
        for w in workers:
            if w.poll() is None:
                w.kill()
    return [(w.returncode, *out) for w, out in zip(workers, outputs)], time.monotonic() - started


@pytest.mark.slow
def test_two_workers_measure_what_one_process_measures(sample):
    from bnaudit.analysis import statistics_file

    how = ["--data", "data.npy", "--batch-size", "16", "--upstream", "training"]  # 13 batches: 7 for the chief, 6 for the other
    runs, seconds = on_two_workers(sample, "stats", "mlp.keras", *how, "-o", "task{task}.npz")
    assert [code for code, _, _ in runs] == [0, 0], runs
    outputs = [out for _, *out in runs]
    (chief_table, chief_err), (worker_table, worker_err) = outputs
    assert worker_table == "" and worker_err == "" and not (sample / "task1.npz").exists()  # only the chief speaks and writes
    started = time.monotonic()
    single = run_bnaudit("stats", "mlp.keras", *how, "-o", "single.npz", cwd=sample, env={"BNAUDIT_LOGICAL_CPUS": "1"})
    print(f"two workers: {seconds:.1f} s; one process: {time.monotonic() - started:.1f} s")
    assert single.returncode == 0, single.stderr
    for k in (1, 2):
        part = run_bnaudit("stats", "mlp.keras", *how, "--shard", f"{k}/2", "-o", f"part{k}.npz", cwd=sample, env={"BNAUDIT_LOGICAL_CPUS": "1"})
        assert part.returncode == 0, part.stderr
    assert run_bnaudit("merge", "part1.npz", "part2.npz", "-o", "merged.npz", cwd=sample).returncode == 0

    chief, one, merged = (statistics_file.load(sample / name) for name in ("task0.npz", "single.npz", "merged.npz"))
    assert chief.complete and (chief.samples, chief.batches, chief.replicas) == (200, 13, 2)
    assert sorted(chief.layers) == sorted(one.layers) == ["bn1", "bn_in"]
    assert_same_statistics(chief, one, rtol=1e-12)
    assert_same_statistics(chief, merged, rtol=1e-12)
    # The printed table is the single pass's, but for the replicas line.
    assert chief_table.splitlines()[:3] == single.stdout.splitlines()[:3]
    assert "200 samples in 13 batches of 16; upstream BN in training mode; 2 replicas" in chief_table
    # What the cluster measured recalibrates a copy on one machine.
    fixed = run_bnaudit("fix", "mlp.keras", "-o", "fixed.keras", "--recalibrate", "--stats", "task0.npz", "--no-verify", "--format", "json", cwd=sample)
    assert fixed.returncode == 0, fixed.stderr
    assert sorted(c["layer"] for c in json.loads(fixed.stdout)["changes"]) == ["bn1", "bn_in"]


@pytest.mark.slow
def test_check_on_two_workers_reports_from_the_chief(sample):
    runs, _ = on_two_workers(sample, "check", "mlp.keras", "--data", "data.npy", "--select", "BN301", "--format", "json", "--exit-zero")
    (chief_code, chief_out, _), (worker_code, worker_out, worker_err) = runs
    assert (chief_code, worker_code, worker_out, worker_err) == (0, 0, "", ""), runs
    [model] = json.loads(chief_out)["models"]
    measured = model["measurements"]["statistics"]
    assert (measured["samples"], measured["replicas"]) == (200, 2)
    assert sorted(measured["layers"]) == ["bn1", "bn_in"]
