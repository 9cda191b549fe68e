"""Disk-backed arrays (rag_diag.collapse.spill): zero-filled, unlinked at once, data kept across page release."""

from __future__ import annotations

import numpy as np

from rag_diag.collapse.spill import release, spilled


def resident_mib() -> float:
    """This process's resident set (MiB) from /proc/self/statm (pages of 4 KiB)."""
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * 4096 / 2**20


def test_spilled_is_zero_filled_and_leaves_no_file(tmp_path):
    array = spilled((100, 3, 8), folder=str(tmp_path))
    assert array.shape == (100, 3, 8) and array.dtype == np.float32
    assert not array.any()
    assert list(tmp_path.iterdir()) == []  # unlinked as soon as it was mapped


def test_release_drops_pages_and_keeps_the_data(tmp_path):
    rng = np.random.default_rng(0)
    array = spilled((64, 32, 1024), folder=str(tmp_path))  # 8 MiB
    want = rng.standard_normal((64, 32, 1024)).astype(np.float32)
    array[:] = want
    before = resident_mib()
    release(array)
    after = resident_mib()
    # the 8 MiB written were resident; a shared file mapping's pages leave the process (≥ 6 of 8 MiB: other
    # allocations of the interpreter may move RSS by a little in between)
    assert before - after >= 6.0
    np.testing.assert_array_equal(array, want)  # read back from the file, bit for bit
    part = array[[5, 0, 63]]
    release(array)
    np.testing.assert_array_equal(part, want[[5, 0, 63]])  # a gathered copy is the caller's, not the mapping's


def test_release_of_an_array_in_memory_is_a_no_op():
    array = np.arange(12.0)
    release(array)
    np.testing.assert_array_equal(array, np.arange(12.0))


def test_empty_shape_gives_an_empty_array(tmp_path):
    assert spilled((0, 4, 8), folder=str(tmp_path)).shape == (0, 4, 8)
    assert list(tmp_path.iterdir()) == []
