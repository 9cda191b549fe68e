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


def test_default_folder_is_in_the_cache_not_a_ram_backed_tmp(tmp_path, monkeypatch):
    monkeypatch.setenv("RAG_DIAG_CACHE", str(tmp_path / "cache"))
    array = spilled((4, 4))
    array[:] = 2.0
    assert (tmp_path / "cache" / "spill").is_dir() and list((tmp_path / "cache" / "spill").iterdir()) == []
    assert float(array.sum()) == 32.0


def test_release_of_an_array_in_memory_is_a_no_op():
    array = np.arange(12.0)
    release(array)
    np.testing.assert_array_equal(array, np.arange(12.0))


def test_empty_shape_gives_an_empty_array(tmp_path):
    assert spilled((0, 4, 8), folder=str(tmp_path)).shape == (0, 4, 8)
    assert list(tmp_path.iterdir()) == []


def test_scattered_reads_map_little_more_than_the_rows_read(tmp_path):
    """Read-ahead is off on a spilled array: gathering 1,000 scattered 48 KiB rows of a 384 MiB file maps about
    the rows themselves. Each row spans 13 pages at most, and fault-around may map up to 64 KiB (16 pages, the
    kernel default) beside each fault: ≤ 13 + 2·16 pages per row, 180 MiB here, where read-ahead around each
    fault mapped 450 KiB per row (measured on this kernel: 0.99 GB for 2,178 rows)."""
    array = spilled((8192, 32, 384), folder=str(tmp_path))
    for start in range(0, len(array), 1024):
        array[start : start + 1024] = 1.0
        release(array)
    rows = np.sort(np.random.default_rng(0).choice(len(array), 1000, replace=False))
    before = resident_mib()
    gathered = array[rows]
    grown = resident_mib() - before - gathered.nbytes / 2**20  # the copy itself is resident too
    assert float(gathered.sum()) == gathered.size
    assert grown <= 1000 * (13 + 2 * 16) * 4096 / 2**20, f"{grown:.0f} MiB mapped for {gathered.nbytes / 2**20:.0f}"
