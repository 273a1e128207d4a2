"""The statistics file: a :class:`~bnaudit.analysis.statistics.DataStatistics` as ``.npz``.

Written by ``bnaudit stats -o`` and ``bnaudit merge``, read by ``merge``, ``check --stats``
and ``stats --stats`` without TensorFlow. Plain arrays plus a JSON header (format name
and version, layer paths, settings); nothing pickled, so reading a file never runs code.
Per layer ``l{index}.`` prefixes three sets of count/mean/m2 vectors: the moments of the
layer's input, and the spread across full batches of each batch's mean and variance.
"""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import numpy as np

from ..loaders import LoadError
from ..output import write_atomic
from .moments import Moments
from .statistics import DataStatistics, LayerStatistics

FORMAT = "bnaudit-statistics"
FORMAT_VERSION = 1


def save(statistics: DataStatistics, path: str | Path) -> None:
    """Write ``statistics`` to ``path`` as ``.npz``, atomically (a reader never sees half a file)."""
    arrays: dict[str, np.ndarray] = {}
    for index, layer in enumerate(statistics.layers.values()):
        arrays.update(layer.moments.to_arrays(f"l{index}."))
        arrays.update(layer.batch_means.to_arrays(f"l{index}.batch_means."))
        arrays.update(layer.batch_variances.to_arrays(f"l{index}.batch_variances."))
    header = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "layers": list(statistics.layers),
        "batch_size": statistics.batch_size,
        "upstream": statistics.upstream,
        "fingerprint": statistics.fingerprint,
        "samples": statistics.samples,
        "batches": statistics.batches,
        "replicas": statistics.replicas,
        "shards": statistics.shards,
        "shard_count": statistics.shard_count,
        "seconds": statistics.seconds,
    }
    arrays["header"] = np.array(json.dumps(header))
    write_atomic(path, _npz_bytes(arrays))


def load(path: str | Path) -> DataStatistics:
    """Read a file written by :func:`save`.

    Raises :class:`~bnaudit.loaders.LoadError` naming what is wrong: no such file, not an
    ``.npz``, another format or version, missing or mistyped fields.
    """
    hint = "write it with `bnaudit stats -o` or `bnaudit merge`"
    if not Path(path).is_file():
        raise LoadError(f"{path}: no such statistics file", hint)
    if not zipfile.is_zipfile(path):
        raise LoadError(f"{path} is not a bnaudit statistics file (not an .npz)", hint)
    try:
        with np.load(path, allow_pickle=False) as arrays:
            header = json.loads(str(arrays["header"]))
            if header.get("format") != FORMAT or header.get("version") != FORMAT_VERSION:
                raise LoadError(f"{path} is not a bnaudit statistics file (version {FORMAT_VERSION})", hint)
            layers = {
                name: LayerStatistics(
                    name,
                    Moments.from_arrays(arrays, f"l{index}."),
                    Moments.from_arrays(arrays, f"l{index}.batch_means."),
                    Moments.from_arrays(arrays, f"l{index}.batch_variances."),
                )
                for index, name in enumerate(header["layers"])
            }
        return DataStatistics(
            layers=layers,
            batch_size=int(header["batch_size"]),
            upstream=str(header["upstream"]),
            fingerprint=str(header["fingerprint"]),
            samples=int(header["samples"]),
            batches=int(header["batches"]),
            replicas=int(header["replicas"]),
            shards=[int(k) for k in header["shards"]],
            shard_count=int(header["shard_count"]),
            seconds=float(header.get("seconds", 0.0)),
        )
    except LoadError:
        raise
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise LoadError(f"cannot read the statistics file {path} ({type(exc).__name__}: {exc})", hint) from None

def _npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()
