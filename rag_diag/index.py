"""FAISS indexes, one per pooling strategy, from one encoder pass; bundles on disk with manifests.

A bundle is a folder::

    manifest.json            strategies, token store, corpus, model identity, index type, versions
    tokens/                  the corpus token store (hard links to the cache entry when possible)
    <strategy>/index.faiss   a CPU FAISS index (GPU-built indexes are copied back before saving)
    <strategy>/doc_ids.json  row i of the index is document doc_ids[i]
    <strategy>/manifest.json model + weights hash, strategy, dim, metric, index type, corpus hash, …
    <strategy>/stats.npz     corpus statistics the strategy needs for queries (SIF only)

Scores returned by :func:`search` are "higher is better": inner products for ``cosine``/``ip``
strategies and −‖q − v‖² for ``l2`` ones.
"""

from __future__ import annotations

import importlib.metadata
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from rag_diag import atomic
from rag_diag.corpora.io import Corpus, load_corpus
from rag_diag.encode import TokenStore, encode_corpus
from rag_diag.errors import RagDiagError
from rag_diag.models import Encoder, load_encoder
from rag_diag.pooling import fit_stats, get_strategy, index_vectors, list_strategies, parse_strategies, pool_store

__all__ = ["IndexBundle", "build_indexes", "build_faiss", "check_encoder", "list_strategies", "search"]

INDEX_TYPES = ("flat", "hnsw", "ivfpq")
BUNDLE_FORMAT = 1
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


def resolve_faiss_device(device: str) -> str:
    """``cpu``, ``cuda`` (a GPU FAISS must see a GPU) or ``auto`` (GPU when present) → cpu | cuda."""
    gpus = faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0
    if device == "auto":
        return "cuda" if gpus > 0 else "cpu"
    if device.startswith("cuda"):
        if gpus == 0:
            raise RagDiagError("--device cuda was asked for but FAISS sees no GPU (needs faiss-gpu)")
        return "cuda"
    if device != "cpu":
        raise RagDiagError(f"unknown device '{device}' (use cpu, cuda or auto)")
    return "cpu"


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


@dataclass
class IndexBundle:
    """A folder of per-strategy FAISS indexes built from one token store."""

    path: Path
    manifest: dict[str, Any]
    _indexes: dict[str, faiss.Index] = field(default_factory=dict, repr=False)

    @property
    def strategies(self) -> list[str]:
        return list(self.manifest["strategies"])

    @property
    def model(self) -> dict[str, Any]:
        return dict(self.manifest["model"])

    @property
    def dim(self) -> int:
        return int(self.manifest["dim"])

    @property
    def doc_ids(self) -> list[str]:
        return json.loads((self.path / self.strategies[0] / "doc_ids.json").read_text())

    @property
    def token_store_path(self) -> Path | None:
        relative = self.manifest.get("token_store")
        return None if relative is None else self.path / relative

    def token_store(self) -> TokenStore:
        """The corpus token store the indexes were pooled from (re-ranking needs it)."""
        if self.token_store_path is None:
            raise RagDiagError(f"{self.path}: this index has no token store (re-ranking needs one)")
        return TokenStore.open(self.token_store_path, verify=False)

    def strategy_manifest(self, strategy: str) -> dict[str, Any]:
        self._require(strategy)
        return json.loads((self.path / strategy / "manifest.json").read_text())

    def index(self, strategy: str) -> faiss.Index:
        """The strategy's FAISS index, read once, checked against its manifest."""
        if strategy not in self._indexes:
            meta = self.strategy_manifest(strategy)
            try:
                index = faiss.read_index(str(self.path / strategy / "index.faiss"))
            except RuntimeError:
                raise RagDiagError(f"{self.path / strategy}: missing or corrupt index.faiss") from None
            if index.d != meta["dim"] or index.ntotal != meta["n_docs"]:
                raise RagDiagError(f"{self.path / strategy}: index.faiss disagrees with its manifest")
            self._indexes[strategy] = apply_search_params(index, meta["index_type"], meta["index_params"])
        return self._indexes[strategy]

    def stats(self, strategy: str) -> dict[str, np.ndarray]:
        """Corpus statistics stored for ``strategy`` (empty when it needs none)."""
        path = self.path / strategy / "stats.npz"
        if not path.is_file():
            return {}
        with np.load(path) as data:
            return {key: data[key] for key in data.files}

    def _require(self, strategy: str) -> None:
        if strategy not in self.strategies:
            have = ", ".join(self.strategies)
            raise RagDiagError(f"{self.path}: no index for strategy '{strategy}' (has {have})")

    @classmethod
    def open(cls, path: str | Path) -> IndexBundle:
        """Open a bundle folder written by :func:`build_indexes` (or an imported LangChain store)."""
        path = Path(path)
        manifest_path = path / "manifest.json"
        if not manifest_path.is_file():
            raise RagDiagError(f"{path}: not an index folder (no manifest.json; see `rag-diag index`)")
        try:
            manifest = json.loads(manifest_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise RagDiagError(f"{manifest_path}: corrupt manifest") from None
        if manifest.get("format") != BUNDLE_FORMAT or "strategies" not in manifest:
            raise RagDiagError(f"{path}: unsupported index bundle (format {manifest.get('format')})")
        return cls(path=path, manifest=manifest)


def check_encoder(bundle: IndexBundle, encoder: Encoder) -> None:
    """Refuse an encoder other than the one the bundle was built with (weights hash, dimension)."""
    built = bundle.model
    if encoder.dim != bundle.dim:
        raise RagDiagError(
            f"index {bundle.path} was built with dimension {bundle.dim} ({built.get('name')}), "
            f"model '{encoder.name}' has dimension {encoder.dim}: rebuild the index or pass its model"
        )
    if built.get("weights_sha256") != encoder.identity.get("weights_sha256"):
        raise RagDiagError(
            f"index {bundle.path} was built with model '{built.get('name')}' (weights "
            f"{str(built.get('weights_sha256'))[:12]}), not '{encoder.name}' (weights "
            f"{str(encoder.identity.get('weights_sha256'))[:12]}): rebuild the index or pass its model"
        )


def _write_strategy(
    folder: Path, name: str, store: TokenStore, index_type: str, device: str, common: dict[str, Any]
) -> None:
    strategy = get_strategy(name)
    stats = fit_stats(name, store)
    vectors = index_vectors(pool_store(name, store, stats), strategy.metric)
    index, params = build_faiss(vectors, strategy.metric, index_type, device)
    folder.mkdir()
    faiss.write_index(index, str(folder / "index.faiss"))
    if stats:
        np.savez(folder / "stats.npz", **stats)  # type: ignore[arg-type]
    atomic.write_json(folder / "doc_ids.json", store.doc_ids)
    atomic.write_json(
        folder / "manifest.json",
        {
            **common,
            "strategy": name,
            "dim": int(vectors.shape[1]),
            "metric": strategy.metric,
            "index_type": index_type,
            "index_params": params,
            "n_docs": len(store),
        },
    )


def build_indexes(
    corpus: Corpus | str | Path,
    model: str | Encoder = "minilm",
    strategies: str | list[str] = "mean",
    index_type: str = "flat",
    device: str = "cpu",
    out: str | Path = "index",
    command: str = "",
) -> IndexBundle:
    """Encode the corpus once and write one FAISS index per pooling strategy under ``out``.

    Args:
        corpus: a :class:`Corpus` or a path :func:`load_corpus` accepts.
        model: a registry name, a local model folder or a loaded :class:`Encoder`.
        strategies: names (or comma-separated, or ``all``) from the pooling registry.
        index_type: flat | hnsw | ivfpq.
        device: cpu | cuda | auto, for the encoder and for FAISS.
        out: the bundle folder (replaced atomically).
        command: the command line recorded in the manifests.
    """
    if index_type not in INDEX_TYPES:
        raise RagDiagError(f"unknown index type '{index_type}' (use {', '.join(INDEX_TYPES)})")
    names = parse_strategies(strategies)
    resolve_faiss_device(device)
    docs = corpus if isinstance(corpus, Corpus) else load_corpus(corpus)
    encoder = model if isinstance(model, Encoder) else load_encoder(model, device)
    out = Path(out)
    common = {
        "format": BUNDLE_FORMAT,
        "model": encoder.identity,
        "corpus": str(Path(docs.source).resolve()) if docs.source else "",
        "corpus_sha256": docs.content_hash(),
        "versions": library_versions(),
        "command": command,
    }
    with atomic.atomic_dir(out) as tmp:
        store = encode_corpus(docs, encoder, out=tmp / "tokens", show_progress=True)
        for name in names:
            _write_strategy(tmp / name, name, store, index_type, device, common)
        atomic.write_json(
            tmp / "manifest.json",
            {
                **common,
                "strategies": names,
                "token_store": "tokens",
                "token_store_key": store.manifest.get("key"),
                "dim": store.dim,
                "index_type": index_type,
                "n_docs": len(store),
            },
        )
    return IndexBundle.open(out)
