"""BN vectors are read as stored: byte order, element type and layout as HDF5 allows
Keras-like writers to store them, through a plain ``.h5`` and a ``.keras`` zip member.

Contiguous vectors are read directly at the offset libhdf5 reports
(:func:`bnaudit.loaders.h5guard.read_dataset`), compact ones by libhdf5: each must give
what h5py's own ``dataset[()]`` gives.
"""

from __future__ import annotations

import h5py
import numpy as np
import pytest

import hostile as H
from bnaudit.engine import Auditor

#: (stored dtype, layout) per gamma of the sample (bn1, bn2).
STORED = ((">f8", h5py.h5d.CONTIGUOUS), ("<f4", h5py.h5d.COMPACT))


def _restore(f: h5py.File, gammas: tuple[str, ...]) -> dict[str, np.ndarray]:
    written = {}
    for path, (dtype, layout) in zip(gammas, STORED):
        values = (np.arange(f[path].shape[0]) + 0.5).astype(dtype)
        parent, _, leaf = path.rpartition("/")
        del f[path]
        dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
        dcpl.set_layout(layout)
        f[parent].create_dataset(leaf, data=values, dcpl=dcpl)
        assert f[path].id.get_create_plist().get_layout() == layout
        written[path] = values
    return written


@pytest.mark.parametrize("suffix", [".h5", ".keras"])
def test_big_endian_and_compact_vectors_read_as_stored(tmp_path, suffix):
    written = {}
    path = H.edit_h5(tmp_path, "stored", lambda f, gammas: written.update(_restore(f, gammas)), suffix)
    graph = Auditor().load(path)
    try:
        gammas = {bn.name: graph.weights.bn_arrays(bn).gamma for bn in graph.batchnorms()}
    finally:
        graph.weights.close()
    expected = list(written.values())
    assert set(gammas) == {"bn1", "bn2"}
    for got, want in zip((gammas["bn1"], gammas["bn2"]), expected):
        assert got.dtype == np.float64
        np.testing.assert_array_equal(got, want.astype(np.float64))
