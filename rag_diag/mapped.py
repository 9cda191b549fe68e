"""FAISS indexes read with their vectors left in the file, and their pages dropped while nothing searches them.

:func:`read_index` reads with ``IO_FLAG_MMAP_IFC``: the codes of a flat index (``IndexFlat*``, a scalar quantiser,
an HNSW index's flat storage) become a read-only shared mapping of the index file instead of a heap copy — the
N·d·4 bytes of the vectors, 147 MiB at 100,000 × 384. Pages a search touches count in the process's RSS until
:func:`release_mapped` drops them (``MADV_DONTNEED`` on a clean shared file mapping: the kernel reads them back,
usually from the page cache, when they are next touched). An audit's pass never searches the store, so between
the searches before it and after it the store's vectors need not be resident. Other index types (IVF, PQ) are
read as faiss reads them, into the heap.

The file must not be truncated or rewritten in place while the index lives (replacing it by a rename, as
:mod:`rag_diag.atomic` does, is safe: the mapping keeps the old file).
"""

from __future__ import annotations

import mmap
import weakref
from pathlib import Path
from typing import Any

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
