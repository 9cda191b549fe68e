"""Disk-backed arrays: what a corpus's summaries need when they outgrow the memory budget.

:func:`spilled` maps a new temporary file and unlinks it at once: the array takes disk only while it lives,
and nothing is left behind whatever ends the process. Pages it touches count in the process's RSS until
:func:`release` drops them (``MADV_DONTNEED`` on a shared file mapping: the data stays in the file and is read
back when next touched), so a pass that writes or reads it chunk by chunk holds one chunk, whatever its size.
"""

from __future__ import annotations

import mmap
import os
import tempfile
from pathlib import Path

import numpy as np

from rag_diag.atomic import cache_root

SPILL_BYTES = 64 * 2**20
"""Arrays of factors larger than this go to disk (a shard's or a small corpus's stay in memory)."""


def spill_folder() -> Path:
    """``spill/`` in rag-diag's cache folder: on disk where the cache is, never a RAM-backed ``/tmp``."""
    folder = cache_root() / "spill"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def spilled(shape: tuple[int, ...], dtype: type = np.float32, folder: str | Path | None = None) -> np.ndarray:
    """A zero-filled array of ``shape`` on a temporary file in ``folder`` (:func:`spill_folder` by default),
    already unlinked."""
    if int(np.prod(shape)) == 0:
        return np.zeros(shape, dtype=dtype)
    handle, path = tempfile.mkstemp(prefix="rag-diag-spill-", suffix=".bin", dir=folder or spill_folder())
    os.close(handle)
    try:
        array = np.memmap(path, dtype=dtype, mode="w+", shape=shape)  # a sparse file: it reads as zeros
        _read_at_random(array)
        return array
    finally:
        os.unlink(path)


def zeros(shape: tuple[int, ...], dtype: type = np.float32) -> np.ndarray:
    """A zero-filled array of ``shape``: :func:`spilled` over ``SPILL_BYTES``, else in memory."""
    if int(np.prod(shape)) * np.dtype(dtype).itemsize > SPILL_BYTES:
        return spilled(shape, dtype)
    return np.zeros(shape, dtype=dtype)


def _read_at_random(array: np.ndarray) -> None:
    """No read-ahead on the mapping: rows are gathered a few at a time from all over the file, and read-ahead
    around each would make much of the file resident (measured: 2,178 scattered 48 KiB rows of a 1 GB file
    made RSS grow by 0.99 GB)."""
    mapped = getattr(array, "_mmap", None)
    if isinstance(mapped, mmap.mmap) and hasattr(mmap, "MADV_RANDOM"):
        mapped.madvise(mmap.MADV_RANDOM)


def release(array: np.ndarray) -> None:
    """Drop the resident pages of a :func:`spilled` array (no-op for an array in memory)."""
    mapped = getattr(array, "_mmap", None)
    if isinstance(mapped, mmap.mmap) and hasattr(mapped, "madvise"):
        mapped.madvise(mmap.MADV_DONTNEED)
