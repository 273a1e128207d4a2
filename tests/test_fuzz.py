"""A bounded, seeded slice of the fuzzer (tests/fuzz/): mutated sample models at the zip,
JSON and HDF5 levels plus the hand-made attacks. For each file: exit 0/1 with a result or
exit 2 with one line per error, no traceback, no reader crash, no Python exception as
the message, input unchanged, no credentials byte in the output, peak RSS under the
bound. ``python tests/fuzz/run.py`` runs the same check for as long as asked."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent / "fuzz"))
from mutate import check_batch, make_case  # noqa: E402

SEED = 20261130
FILES_PER_BATCH = 40


@pytest.mark.parametrize("batch", [0, 1])
def test_seeded_mutations_get_a_result_or_one_clean_line(tmp_path, batch):
    start = batch * FILES_PER_BATCH
    paths = [make_case(SEED, index, tmp_path) for index in range(start, start + FILES_PER_BATCH)]
    report = check_batch(paths)
    assert report.faults == []
    assert report.clean_results + report.refused == FILES_PER_BATCH
    assert report.clean_results and report.refused  # the mix exercises both outcomes


def test_the_same_seed_makes_the_same_files(tmp_path):
    first = make_case(SEED, 7, tmp_path / "a")
    second = make_case(SEED, 7, tmp_path / "b")
    assert first.name == second.name and first.read_bytes() == second.read_bytes()


@pytest.mark.parametrize("seed, index", [(12, 13418), (12, 42144)])
def test_a_corrupt_heap_object_is_one_clean_line_within_the_memory_bound(tmp_path, seed, index):
    """Two files of the 100,000-file run (docs/security.md): a ``weight_names`` string
    whose global heap object declares hundreds of MiB. libhdf5 allocated 551 and 824 MiB
    before failing; under the reading ceiling the allocation fails, the BN vectors are
    one error, the placement rules still run, and the run stays under the bound."""
    report = check_batch([make_case(seed, index, tmp_path)])
    assert report.faults == []
    assert (report.clean_results, report.refused) == (0, 1)


def test_a_weights_member_pointing_past_any_offset_is_one_clean_line(tmp_path):
    """File 93109 of the seed-13 run (docs/security.md): the HDF5 superblock inside the
    ``.keras`` zip names an address h5py's file-object driver cannot represent; h5py
    raised ValueError, shown as "could not read the model (ValueError: ...)"."""
    report = check_batch([make_case(13, 93109, tmp_path)])
    assert report.faults == []
    assert (report.clean_results, report.refused) == (0, 1)
