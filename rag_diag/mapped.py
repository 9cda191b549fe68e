"""FAISS indexes read with their vectors left in the file, and their pages dropped while nothing searches them.

:func:`read_index` reads with ``IO_FLAG_MMAP_IFC``: the codes of a flat index (``IndexFlat*``, a scalar quantiser,
an HNSW index's flat storage) become a read-only shared mapping of the index file instead of a heap copy — the
N·d·4 bytes of the vectors, 147 MiB at 100,000 × 384. Pages a search touches count in the process's RSS until
:func:`release_mapped` drops them (``MADV_DONTNEED`` on a clean shared file mapping: the kernel reads them back,
usually from the page cache, when they are next touched). An audit's pass never searches the store, so between
the searches before it and after it the store's vectors need not be resident. Other index types (IVF, PQ) are
read as faiss reads them, into the heap.

:func:`mapped_flat` builds such an index from rows streamed in (a store read through its client), so the vectors
of a Chroma, Qdrant, pgvector or LlamaIndex store are held the way a FAISS store's are.

The file must not be truncated or rewritten in place while the index lives (replacing it by a rename, as
:mod:`rag_diag.atomic` does, is safe: the mapping keeps the old file).
"""

from __future__ import annotations

import mmap
import os
import struct
import tempfile
import weakref
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

_MAPPED: list[weakref.ref[Any]] = []


def read_index(path: str | Path) -> Any:
    """The FAISS index at ``path``, its flat codes mapped from the file when its type allows (module docstring)."""
    import faiss

    index = faiss.read_index(str(path), faiss.IO_FLAG_MMAP_IFC)
    if _mapped_codes(index) is not None:
        _MAPPED.append(weakref.ref(index))
    return index


def _mapped_codes(index: Any) -> Any | None:
    """The codes of ``index`` (or of its HNSW storage) when they are a view of a mapped file, else None."""
    import faiss

    index = faiss.downcast_index(index)
    storage = getattr(index, "storage", None)
    if storage is not None and not isinstance(index, faiss.IndexFlatCodes):
        index = faiss.downcast_index(storage)
    if not isinstance(index, faiss.IndexFlatCodes):
        return None
    codes = index.codes
    return None if codes.is_owned or codes.size() == 0 else codes


def release_mapped() -> int:
    """Drop the resident pages of every live index :func:`read_index` mapped; returns the bytes advised.

    MADV_DONTNEED from the page below the codes' first byte to their last: the range lies in the file mapping
    (the header before the codes is in it too), whose clean pages are read back from the file on the next touch.
    """
    advised = 0
    for ref in list(_MAPPED):
        index = ref()
        if index is None:
            _MAPPED.remove(ref)
            continue
        codes = _mapped_codes(index)
        if codes is not None:
            advised += _dont_need(int(codes.data()), int(codes.size()))
    return advised


def _dont_need(address: int, size: int) -> int:
    """``madvise(MADV_DONTNEED)`` over [address, address + size) widened to whole pages; 0 where unsupported."""
    import ctypes

    advice = getattr(mmap, "MADV_DONTNEED", None)
    madvise = None if advice is None else getattr(ctypes.CDLL(None), "madvise", None)
    if advice is None or madvise is None:
        return 0
    madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    start = address - address % mmap.PAGESIZE
    length = address + size - start
    return length if madvise(start, length, advice) == 0 else 0


def mapped_flat(chunks: Iterable[np.ndarray], dim: int, metric: int, folder: str | Path) -> Any:
    """An ``IndexFlat`` over the float32 rows of ``chunks`` whose vectors are a mapping of a file, never all in the
    heap: :func:`write_flat` to a temporary file in ``folder``, then :func:`read_index`. The file is unlinked as
    soon as it is created where ``/proc/self/fd`` reopens it (Linux), else once it is read; the mapping keeps it
    until the index is freed, so a killed run leaves nothing behind."""
    handle, path = tempfile.mkstemp(prefix="rag-diag-flat-", suffix=".faiss", dir=folder)
    by_fd = Path(f"/proc/self/fd/{handle}")
    try:
        if by_fd.exists():
            os.unlink(path)
            path = str(by_fd)
        write_flat(path, chunks, dim, metric)
        return read_index(path)
    finally:
        os.close(handle)
        if not path.startswith("/proc/"):
            os.unlink(path)


def write_flat(path: str | Path, chunks: Iterable[np.ndarray], dim: int, metric: int) -> int:
    """Write the file ``faiss.write_index`` would write for an ``IndexFlat(dim, metric)`` holding the rows of
    ``chunks``, one chunk at a time; returns the rows written.

    The header is faiss's own, of the empty index, with its two counts patched: ``ntotal`` (int64 after the
    four-byte type and the int32 dimension) and the code vector's length in floats (the header's last 8 bytes,
    ntotal·d), followed by the rows. :func:`_patched_header` checks that layout against faiss's header of a
    one-row index before anything is written.
    """
    empty = _patched_header(dim, metric, 0)
    rows = 0
    with open(path, "wb") as out:
        out.write(empty)
        for chunk in chunks:
            block = np.ascontiguousarray(chunk, dtype=np.float32)
            if block.ndim != 2 or block.shape[1] != dim:
                raise ValueError(f"rows of shape {block.shape[1:]} for an index of dimension {dim}")
            out.write(block.data)
            rows += len(block)
        out.seek(0)
        out.write(_patched_header(dim, metric, rows))
    return rows


def flat_layout_known(dim: int, metric: int) -> bool:
    """Whether this faiss writes ``IndexFlat(dim, metric)`` files as :func:`write_flat` does."""
    try:
        _patched_header(dim, metric, 0)
    except ValueError:
        return False
    return True


def _patched_header(dim: int, metric: int, rows: int) -> bytes:
    """Header of an ``IndexFlat(dim, metric)`` file holding ``rows`` rows (see :func:`write_flat`); ValueError
    when faiss's header of a one-row index is not the empty one patched this way (a changed file format)."""
    import faiss

    def patched(count: int) -> bytes:
        header = bytearray(faiss.serialize_index(faiss.IndexFlat(dim, metric)).tobytes())
        struct.pack_into("<q", header, _NTOTAL_AT, count)
        struct.pack_into("<Q", header, len(header) - 8, count * dim)
        return bytes(header)

    one = faiss.IndexFlat(dim, metric)
    one.add(np.zeros((1, dim), dtype=np.float32))
    expected = faiss.serialize_index(one).tobytes()
    if expected != patched(1) + bytes(4 * dim):
        raise ValueError("this faiss writes IndexFlat files in a layout rag_diag does not know")
    return patched(rows)


_NTOTAL_AT = 8
"""Byte offset of ``ntotal`` in a FAISS index header: after the four-byte type code and the int32 dimension."""
