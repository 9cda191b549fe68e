"""FAISS toolbox: build a flat / HNSW / IVF-PQ index over pooled vectors (on CPU or GPU) and search it.

Scores returned by :func:`search` are "higher is better": inner products for ``cosine``/``ip``
strategies and −‖q − v‖² for ``l2`` ones.
"""

from __future__ import annotations

import importlib.metadata
import math

import faiss
import numpy as np

from rag_diag.devices import resolve_faiss_device
from rag_diag.errors import RagDiagError

INDEX_TYPES = ("flat", "hnsw", "ivfpq")
HNSW_M = 32
HNSW_EF_CONSTRUCTION = 200
HNSW_EF_SEARCH = 128
IVF_NPROBE = 16


def library_versions() -> dict[str, str]:
    """Versions of the libraries that change the numbers in an index."""
    names = ("faiss-cpu", "faiss-gpu", "torch", "transformers", "sentence-transformers", "numpy", "rag-diag")
    versions = {}
    for name in names:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    versions["faiss"] = faiss.__version__
    return versions


def _faiss_metric(metric: str) -> int:
    return faiss.METRIC_L2 if metric == "l2" else faiss.METRIC_INNER_PRODUCT


def _ivfpq_params(n: int, dim: int) -> dict[str, int]:
    """nlist ≈ 4√N (≥ 39 training points per list), m | dim with ≥ 4 dims per sub-quantiser, 2^nbits ≤ N."""
    nlist = max(1, min(int(4 * math.sqrt(n)), n // 39))
    m = max(divisor for divisor in range(1, min(64, dim // 4) + 1) if dim % divisor == 0)
    nbits = max(1, min(8, int(math.log2(max(n, 2)))))
    return {"nlist": nlist, "m": m, "nbits": nbits, "nprobe": min(nlist, IVF_NPROBE)}


def _empty_index(index_type: str, dim: int, metric: str, n: int) -> tuple[faiss.Index, dict[str, int]]:
    faiss_metric = _faiss_metric(metric)
    if index_type == "flat":
        return faiss.IndexFlat(dim, faiss_metric), {}
    if index_type == "hnsw":
        index = faiss.IndexHNSWFlat(dim, HNSW_M, faiss_metric)
        index.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
        return index, {"M": HNSW_M, "efConstruction": HNSW_EF_CONSTRUCTION, "efSearch": HNSW_EF_SEARCH}
    if index_type == "ivfpq":
        params = _ivfpq_params(n, dim)
        quantizer = faiss.IndexFlat(dim, faiss_metric)
        ivfpq = faiss.IndexIVFPQ(quantizer, dim, params["nlist"], params["m"], params["nbits"], faiss_metric)
        return ivfpq, params
    raise RagDiagError(f"unknown index type '{index_type}' (use {', '.join(INDEX_TYPES)})")


def apply_search_params(index: faiss.Index, index_type: str, params: dict[str, int]) -> faiss.Index:
    """Set the search-time knobs (HNSW efSearch, IVF nprobe) recorded in the manifest."""
    if index_type == "hnsw":
        faiss.downcast_index(index).hnsw.efSearch = int(params["efSearch"])  # type: ignore[attr-defined]
    elif index_type == "ivfpq":
        faiss.extract_index_ivf(index).nprobe = int(params["nprobe"])
    return index


def build_faiss(
    vectors: np.ndarray, metric: str, index_type: str = "flat", device: str = "cpu", seed: int = 0
) -> tuple[faiss.Index, dict[str, int]]:
    """A trained, filled CPU index over ``vectors`` (float32, as :func:`index_vectors` prepares them).

    On ``cuda`` flat and IVF-PQ indexes are trained and filled on GPU 0 and copied back to the CPU
    (HNSW has no GPU implementation in FAISS and is always built on the CPU).
    """
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    index, params = _empty_index(index_type, vectors.shape[1], metric, len(vectors))
    if index_type == "ivfpq":
        faiss.extract_index_ivf(index).cp.seed = seed
        index.pq.cp.seed = seed  # type: ignore[attr-defined]
    use_gpu = resolve_faiss_device(device) == "cuda" and index_type != "hnsw"
    if use_gpu:
        resources = faiss.StandardGpuResources()
        gpu_index = faiss.index_cpu_to_gpu(resources, 0, index)
        gpu_index.train(vectors)
        gpu_index.add(vectors)
        index = faiss.index_gpu_to_cpu(gpu_index)
    else:
        index.train(vectors)
        index.add(vectors)
    return apply_search_params(index, index_type, params), params


def search(
    index: faiss.Index, vectors: np.ndarray, k: int, metric: str, device: str = "cpu"
) -> tuple[np.ndarray, np.ndarray]:
    """(scores, rows), each (Q, k'), k' = min(k, ntotal); scores higher-is-better (−distance for l2)."""
    k = min(k, index.ntotal)
    queries = np.ascontiguousarray(vectors, dtype=np.float32)
    on_gpu = resolve_faiss_device(device) == "cuda"
    if on_gpu and not isinstance(faiss.downcast_index(index), faiss.IndexHNSW):
        resources = faiss.StandardGpuResources()
        scores, rows = faiss.index_cpu_to_gpu(resources, 0, index).search(queries, k)
    else:
        scores, rows = index.search(queries, k)
    return (-scores if metric == "l2" else scores), rows
