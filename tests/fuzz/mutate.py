"""Seeded mutations of the sample models at the zip, JSON and HDF5 levels, plus the
hand-made attacks of ``tests/hostile.py``; and the check every result must pass.

``make_case(seed, index, directory)`` writes one file, the same for the same arguments.
``check_batch`` runs ``bnaudit check --format json`` over a batch of such files in one
process and returns the faults: a traceback, an exit code that disagrees with the
result, a model with neither a result nor a one-line error, a crashed reader, a
Python exception shown as the error, an input file changed, a credentials byte in the
output, or a peak RSS over the bound.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
sys.path.insert(0, str(HERE.parent))
import hostile  # noqa: E402

SAMPLES = sorted(p for p in (ROOT / "sample_models").iterdir() if p.suffix in (".keras", ".h5"))
#: Peak resident memory of one batch run, all its processes (bnaudit alone is ~100 MiB).
MAX_PEAK_MIB = 500
SECRET_MARK = "TOPSECRET"
#: Error texts that mean bnaudit failed, not the file: an exception shown raw.
UNCLEAN = ("rule crashed", "internal error", "could not read the model (", "Traceback")
#: Native crashes and endless loops that cost their model only: counted, not faults.
CONTAINED = ("the process auditing this model died", "did not finish in")
#: Seconds a worker may read one model before it is stopped (``BNAUDIT_STATIC_SECONDS``).
STATIC_SECONDS = "20"

WEIRD_STRINGS = ["", "\ud800", "bn\n::error::x", "\x1b[2J", "../../etc/passwd", "é" * 3, "a" * 5000, "\u202e", "%s%n", "\x00"]
WEIRD_VALUES = [None, True, -1, 0, 2**63, -(2**70), 1e308, float("nan"), "NaN", [], {}, [[[[]]]], {"class_name": "Lambda"}, {"class_name": "__lambda__", "config": {"value": ["AA==", None, None]}}, {"module": "os", "class_name": "function", "config": "system", "registered_name": "system"}]


# -- JSON level ----------------------------------------------------------------------

def _nodes(value, out):
    out.append(value)
    if isinstance(value, dict):
        for item in value.values():
            _nodes(item, out)
    elif isinstance(value, list):
        for item in value:
            _nodes(item, out)
    return out


def mutate_json(config: dict, rng: random.Random) -> dict:
    """A few random edits: a value replaced, a key dropped or renamed, a list shuffled or grown."""
    for _ in range(rng.randint(1, 4)):
        containers = [n for n in _nodes(config, []) if isinstance(n, (dict, list)) and n]
        if not containers:
            break
        target = rng.choice(containers)
        key = rng.choice(list(target.keys()) if isinstance(target, dict) else range(len(target)))
        action = rng.random()
        if action < 0.45:  # a copy: the shared examples must stay as they are for the next file
            target[key] = copy.deepcopy(rng.choice(WEIRD_VALUES + WEIRD_STRINGS))
        elif action < 0.6 and isinstance(target, dict):
            del target[key]
        elif action < 0.7 and isinstance(target, dict):
            target[rng.choice(WEIRD_STRINGS) or "x"] = target.pop(key)
        elif action < 0.8 and isinstance(target, list):
            rng.shuffle(target)
        elif action < 0.9 and isinstance(target, list):
            target.extend(copy.deepcopy(target[: rng.randint(1, 3)]))
        elif isinstance(target[key], str):
            target[key] = target[key] + rng.choice(WEIRD_STRINGS)
        else:
            target[key] = json.loads(json.dumps(target[key]))  # unchanged: a no-op keeps some files valid
    return config


def _json_text(config: dict, rng: random.Random) -> bytes:
    text = json.dumps(config, allow_nan=True)
    if rng.random() < 0.1:  # broken JSON
        cut = rng.randrange(len(text))
        text = text[:cut] + rng.choice(["", "}", "]]]", "\\u", '"'])
    return text.encode("utf-8", "surrogatepass")


# -- zip level -----------------------------------------------------------------------

def mutate_zip(source: Path, rng: random.Random, destination: Path) -> None:
    with zipfile.ZipFile(source) as src:
        members = {info.filename: src.read(info) for info in src.infolist()}
    action = rng.random()
    if action < 0.4 and "config.json" in members:
        members["config.json"] = _json_text(mutate_json(json.loads(members["config.json"]), rng), rng)
    elif action < 0.55 and "model.weights.h5" in members:
        with tempfile.TemporaryDirectory() as scratch:
            weights = Path(scratch, "w.h5")
            weights.write_bytes(members["model.weights.h5"])
            mutate_h5_structure(weights, rng)
            members["model.weights.h5"] = weights.read_bytes()
    elif action < 0.65 and "model.weights.h5" in members:
        members["model.weights.h5"] = flip_bytes(members["model.weights.h5"], rng)
    elif action < 0.72:
        members.pop(rng.choice(list(members)))
    elif action < 0.8 and "metadata.json" in members:
        members["metadata.json"] = _json_text(mutate_json({"keras_version": "3.15.0", "x": json.loads(members["metadata.json"])}, rng), rng)
    compress = zipfile.ZIP_DEFLATED if rng.random() < 0.2 else zipfile.ZIP_STORED
    hostile.write_zip(destination, members, compress)
    if action >= 0.8:
        destination.write_bytes(flip_bytes(destination.read_bytes(), rng))


# -- HDF5 level ----------------------------------------------------------------------

def flip_bytes(data: bytes, rng: random.Random) -> bytes:
    data = bytearray(data)
    action = rng.random()
    if action < 0.15 and len(data) > 16:
        return bytes(data[: rng.randrange(8, len(data))])  # truncated
    for _ in range(rng.choice([1, 1, 2, 4, 16])):
        at = rng.randrange(len(data))
        data[at] = rng.choice([data[at] ^ (1 << rng.randrange(8)), 0, 0xFF, 0x7F, rng.randrange(256)])
    return bytes(data)


def mutate_h5_structure(path: Path, rng: random.Random) -> None:
    """Replace one dataset or attribute with something Keras never writes (or drop it)."""
    secret = path.parent / "credentials"
    secret.write_text(f"{SECRET_MARK}=" + "x" * 4000)
    with h5py.File(path, "r+") as f:
        datasets: list[str] = []
        f.visititems(lambda name, obj: datasets.append(name) if isinstance(obj, h5py.Dataset) else None)
        if not datasets:
            return
        name = rng.choice(datasets)
        values = f[name][()]
        parent, _, leaf = name.rpartition("/")
        group = f[parent] if parent else f
        action = rng.randrange(9)
        del group[leaf]
        shape = values.shape or (1,)
        if action == 0:
            group.create_dataset(leaf, shape=shape, dtype="f4", external=[(str(secret), rng.randrange(64), int(np.prod(shape)) * 4)])
        elif action == 1:
            group[leaf] = h5py.SoftLink("/" + rng.choice(datasets))
        elif action == 2:
            group[leaf] = h5py.ExternalLink(str(secret), "/x")
        elif action == 3:
            layout = h5py.VirtualLayout(shape=shape, dtype="f4")
            layout[:] = h5py.VirtualSource(".", "/" + name, shape=shape)
            group.create_virtual_dataset(leaf, layout)
        elif action == 4:
            group.create_dataset(leaf, data=np.resize(values, shape), compression="gzip", chunks=True)
        elif action == 5:
            group.create_dataset(leaf, shape=(rng.choice([0, 1 << 20, 1 << 24]),), dtype="f8")
        elif action == 6:
            with np.errstate(all="ignore"):
                filled = np.full(shape, rng.choice([np.nan, np.inf, -1.0, 0.0, 1e30]), dtype=rng.choice(["f2", "f4", "f8", "i8"]))
            group.create_dataset(leaf, data=filled)
        elif action == 7:
            group.create_dataset(leaf, data=np.array([b"abc"] * 3))
        elif action == 8:
            pass  # dropped
        if "model_config" in f.attrs and rng.random() < 0.3:
            config = json.loads(f.attrs["model_config"])
            f.attrs["model_config"] = _json_text(mutate_json(config, rng), rng)


def mutate_h5(source: Path, rng: random.Random, destination: Path) -> None:
    shutil.copy(source, destination)
    action = rng.random()
    if action < 0.4:
        mutate_h5_structure(destination, rng)
    elif action < 0.55:
        with h5py.File(destination, "r+") as f:
            f.attrs["model_config"] = _json_text(mutate_json(json.loads(f.attrs["model_config"]), rng), rng)
    else:
        destination.write_bytes(flip_bytes(destination.read_bytes(), rng))


# -- cases ---------------------------------------------------------------------------

HAND_MADE = [
    lambda d, rng: hostile.external_storage(d, rng.choice([".h5", ".keras"]))[0],
    lambda d, rng: hostile.external_link(d, rng.choice([".h5", ".keras"]))[0],
    lambda d, rng: hostile.soft_link(d, rng.choice([".h5", ".keras"]))[0],
    lambda d, rng: hostile.virtual_dataset(d, rng.choice([".h5", ".keras"]))[0],
    lambda d, rng: hostile.self_referencing_virtual(d, rng.choice([".h5", ".keras"]))[0],
    lambda d, rng: hostile.unstored_vectors(d, rng.choice([".h5", ".keras"]))[0],
    lambda d, rng: hostile.unwritten_vectors(d, rng.choice([".h5", ".keras"]))[0],
    lambda d, rng: hostile.flipped_attribute_length(d)[0],
    lambda d, rng: hostile.deeply_nested_config(d)[0],
    lambda d, rng: hostile.hdf5_with_zip_appended(d, rng.choice([".h5", ".keras"]))[0],
    lambda d, rng: hostile.edit_config(d, "code", rng.choice(list(hostile.CODE_CONFIGS.values()))[0]),
    lambda d, rng: hostile.renamed_layer(d, rng.choice(WEIRD_STRINGS[1:]) + "bn", "weird_name"),
]


def make_case(seed: int, index: int, directory: Path) -> Path:
    """The ``index``-th file of the run seeded ``seed``, in its own directory under ``directory``."""
    rng = random.Random(seed * 1_000_003 + index)
    case = directory / f"case_{index:07d}"
    case.mkdir(parents=True)
    if rng.random() < 0.04:
        made = rng.choice(HAND_MADE)(case, rng)
        return made
    source = rng.choice(SAMPLES)
    destination = case / f"m{index}{source.suffix}"
    (mutate_zip if source.suffix == ".keras" else mutate_h5)(source, rng, destination)
    return destination


@dataclass
class BatchReport:
    files: int = 0
    clean_results: int = 0
    refused: int = 0
    contained: int = 0
    peak_mib: float = 0.0
    faults: list[str] = field(default_factory=list)


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def check_batch(paths: list[Path], timeout: float = 600) -> BatchReport:
    """Audit ``paths`` in one ``bnaudit check`` run and check every model's outcome."""
    before = {p: _digest(p) for p in paths}
    code = (
        "import resource, subprocess, sys\n"
        "r = subprocess.run(sys.argv[1:], capture_output=True, stdin=subprocess.DEVNULL)\n"
        "sys.stdout.buffer.write(r.stdout); sys.stderr.buffer.write(r.stderr)\n"
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, file=sys.stderr)\n"
        "sys.exit(r.returncode)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT), "BNAUDIT_STATIC_SECONDS": STATIC_SECONDS}
    proc = subprocess.run(
        [sys.executable, "-c", code, sys.executable, "-m", "bnaudit", "check", "--isolated", "--format", "json", "--fail-on", "error", *map(str, paths)],
        capture_output=True, env=env, timeout=timeout,
    )
    stdout, stderr = proc.stdout.decode("utf-8", "replace"), proc.stderr.decode("utf-8", "replace")
    *lines, peak = stderr.splitlines() or ["nan"]
    report = BatchReport(files=len(paths), peak_mib=float(peak))
    fault = report.faults.append
    if proc.returncode not in (0, 1, 2):
        fault(f"exit {proc.returncode}")
    if report.peak_mib > MAX_PEAK_MIB:
        fault(f"peak RSS {report.peak_mib:.0f} MiB > {MAX_PEAK_MIB}")
    if SECRET_MARK in stdout or SECRET_MARK in stderr:
        fault("credentials bytes in the output")
    for line in lines:
        if any(marker in line for marker in UNCLEAN):
            fault(f"unclean: {line[:300]}")
        report.contained += any(marker in line for marker in CONTAINED)
    try:
        models = {m["path"]: m for m in json.loads(stdout)["models"]}
    except (ValueError, KeyError) as exc:
        fault(f"no JSON result ({exc}): {stderr[-500:]}")
        return report
    any_errors = False
    for path in paths:
        model = models.get(str(path))
        if model is None:
            fault(f"{path}: no result")
            continue
        mine = [line for line in lines if line.startswith(f"bnaudit: error: {path}")]
        if model["errors"]:
            any_errors = True
            report.refused += 1
            if len(mine) != len(model["errors"]):
                fault(f"{path}: {len(model['errors'])} errors, {len(mine)} lines")
        else:
            report.clean_results += 1
            if mine:
                fault(f"{path}: error lines without errors")
        if _digest(path) != before[path]:
            fault(f"{path}: input changed")
    expected = 2 if any_errors else proc.returncode if proc.returncode in (0, 1) else -1
    if proc.returncode != expected:
        fault(f"exit {proc.returncode}, expected {expected}")
    return report
