"""FAISS indexes read mapped (rag_diag.mapped): same answers as a heap read, their pages dropped and read back."""

from __future__ import annotations

from pathlib import Path

import faiss
import numpy as np
import pytest

from rag_diag.mapped import _mapped_codes, mapped_flat, read_index, release_mapped, write_flat


def _rss_kib() -> int:
    """This process's resident set (VmRSS, KiB): the mapped pages count as RssFile, or RssShmem on a tmpfs."""
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))


def _written(tmp_path, index: faiss.Index, name: str) -> str:
    path = str(tmp_path / name)
    faiss.write_index(index, path)
    return path


@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivf"])
def test_a_mapped_index_answers_as_the_heap_copy_before_and_after_its_pages_are_dropped(tmp_path, kind):
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((2000, 16)).astype(np.float32)
    if kind == "flat":
        index = faiss.IndexFlatIP(16)
    elif kind == "hnsw":
        index = faiss.IndexHNSWFlat(16, 8)
    else:
        index = faiss.IndexIVFFlat(faiss.IndexFlatL2(16), 16, 8)
        index.train(vectors)
    index.add(vectors)
    want = index.search(vectors[:20], 5)
    mapped = read_index(_written(tmp_path, index, f"{kind}.faiss"))
    for _ in range(2):
        got = mapped.search(vectors[:20], 5)
        np.testing.assert_array_equal(got[1], want[1])
        np.testing.assert_array_equal(got[0], want[0])
        release_mapped()
    assert mapped.ntotal == index.ntotal


@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="reads RSS from /proc (Linux)")
def test_dropping_the_pages_of_a_searched_flat_index_gives_its_vectors_bytes_back(tmp_path):
    """A search touches all 48 MiB of a flat index's vectors (file-backed pages); release_mapped advises at least
    the codes and RSS falls by nearly all of them (the kernel counts RSS per thread in batches of 64 pages:
    slack of a few MiB)."""
    n, d = 32768, 384
    index = faiss.IndexFlatIP(d)
    index.add(np.random.default_rng(1).standard_normal((n, d)).astype(np.float32))
    mapped = read_index(_written(tmp_path, index, "flat.faiss"))
    del index
    size = n * d * 4
    mapped.search(np.ones((1, d), dtype=np.float32), 1)
    touched = _rss_kib()
    assert release_mapped() >= size
    dropped = (touched - _rss_kib()) * 1024
    assert dropped >= size - 8 * 2**20


@pytest.mark.parametrize("metric", [faiss.METRIC_INNER_PRODUCT, faiss.METRIC_L2])
@pytest.mark.parametrize("sizes", [[], [1], [5, 0, 12, 3]])
def test_a_streamed_flat_file_is_byte_for_byte_what_faiss_writes(tmp_path, metric, sizes):
    rng = np.random.default_rng(2)
    chunks = [rng.standard_normal((n, 24)).astype(np.float32) for n in sizes]
    index = faiss.IndexFlat(24, metric)
    for chunk in chunks:
        index.add(chunk)
    path = tmp_path / "streamed.faiss"
    assert write_flat(path, iter(chunks), 24, metric) == sum(sizes)
    assert path.read_bytes() == faiss.serialize_index(index).tobytes()


def test_a_flat_index_built_from_streamed_rows_is_mapped_answers_as_faiss_and_leaves_no_file(tmp_path):
    rng = np.random.default_rng(3)
    rows = rng.standard_normal((3000, 32)).astype(np.float32)
    heap = faiss.IndexFlatL2(32)
    heap.add(rows)
    mapped = mapped_flat((rows[i : i + 1000] for i in range(0, 3000, 1000)), 32, faiss.METRIC_L2, tmp_path)
    assert _mapped_codes(mapped) is not None and list(tmp_path.iterdir()) == []
    for _ in range(2):
        got, want = mapped.search(rows[:25], 7), heap.search(rows[:25], 7)
        np.testing.assert_array_equal(got[1], want[1])
        np.testing.assert_array_equal(got[0], want[0])
        release_mapped()
