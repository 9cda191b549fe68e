"""The index bundle artefact: one FAISS index per pooling strategy over one corpus, and its owner.

On disk a bundle is a folder::

    manifest.json            strategies, token store, corpus path and hash, model identity, versions
    tokens/                  the corpus token store (a verified copy of the cache entry)
    <strategy>/index.faiss   a CPU FAISS index (GPU-built indexes are copied back before saving)
    <strategy>/doc_ids.json  row i of the index is document doc_ids[i]
    <strategy>/manifest.json model + weights hash, strategy, dim, metric, index type, corpus hash, …, and the size
                             and CRC-32 of the folder's other files (checked before they are read)
    <strategy>/stats.npz     corpus statistics the strategy needs for queries (SIF only)

A bundle can also live in memory only (:meth:`IndexBundle.from_index`: an audited store's own index),
so a job never writes a folder just to read it back.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from rag_diag import atomic
from rag_diag.corpora.io import Corpus, load_corpus
from rag_diag.errors import RagDiagError
from rag_diag.mapped import read_index
from rag_diag.models.protocol import Encoder
from rag_diag.pooling import fit_stats, get_strategy, index_vectors, parse_strategies, pool_store
from rag_diag.readers import read_json_object
from rag_diag.retrieval.index import INDEX_TYPES, apply_search_params, build_faiss, library_versions
from rag_diag.tokens.store import TokenStore

KIND = "index-bundle"
BUNDLE_FORMAT = 1


@dataclass
class IndexBundle:
    """Per-strategy FAISS indexes over one corpus (rows in ``doc_ids`` order), with their manifests."""

    manifest: dict[str, Any]
    strategy_meta: dict[str, dict[str, Any]]
    doc_ids: list[str]
    path: Path | None = None
    indexes: dict[str, faiss.Index] = field(default_factory=dict, repr=False)
    corpus_stats: dict[str, dict[str, np.ndarray]] = field(default_factory=dict, repr=False)
    tokens: TokenStore | None = field(default=None, repr=False)

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
    def where(self) -> str:
        """How to name this bundle in a message: its folder, or where the in-memory index came from."""
        return str(self.path) if self.path is not None else str(self.manifest.get("source", "in-memory index"))

    def strategy_manifest(self, strategy: str) -> dict[str, Any]:
        if strategy not in self.strategy_meta:
            raise RagDiagError(f"{self.where}: no index for strategy '{strategy}' (has {', '.join(self.strategies)})")
        return self.strategy_meta[strategy]

    def index(self, strategy: str) -> faiss.Index:
        """The strategy's FAISS index (read once from disk, a flat index's vectors mapped from the file rather than
        copied into the heap: :func:`rag_diag.mapped.read_index`), checked against its manifest."""
        meta = self.strategy_manifest(strategy)
        if strategy not in self.indexes:
            assert self.path is not None
            self._verify(strategy, "index.faiss")
            try:
                index = read_index(self.path / strategy / "index.faiss")
            except RuntimeError:
                raise RagDiagError(f"{self.path / strategy}: missing or corrupt index.faiss") from None
            if index.d != meta["dim"] or index.ntotal != meta["n_docs"]:
                raise RagDiagError(f"{self.path / strategy}: index.faiss disagrees with its manifest")
            self.indexes[strategy] = apply_search_params(index, meta["index_type"], meta["index_params"])
        return self.indexes[strategy]

    def stats(self, strategy: str) -> dict[str, np.ndarray]:
        """Corpus statistics stored for ``strategy`` (empty when it needs none)."""
        if strategy not in self.corpus_stats:
            path = None if self.path is None else self.path / strategy / "stats.npz"
            if path is None or not path.is_file():
                return {}
            self._verify(strategy, "stats.npz")
            with np.load(path) as data:
                self.corpus_stats[strategy] = {key: data[key] for key in data.files}
        return self.corpus_stats[strategy]

    def _verify(self, strategy: str, name: str) -> None:
        """Refuse a strategy file whose size or CRC-32 differs from its manifest's record (bundles written before
        the records were kept have none, and are read as they are)."""
        record = self.strategy_manifest(strategy).get("files", {}).get(name)
        if record is not None and self.path is not None:
            problem = atomic.file_problem(self.path / strategy / name, record)
            if problem is not None:
                raise RagDiagError(f"{self.path / strategy}: corrupt index folder ({problem})")

    @property
    def token_store_path(self) -> Path | None:
        """Where the corpus token store lies (None for a bundle without one)."""
        if self.tokens is not None:
            return self.tokens.path
        relative = self.manifest.get("token_store")
        return None if relative is None or self.path is None else self.path / relative

    def token_store(self) -> TokenStore:
        """The corpus token store the indexes were pooled from, verified (re-ranking needs it)."""
        if self.tokens is None:
            relative = self.manifest.get("token_store")
            if relative is None or self.path is None:
                raise RagDiagError(f"{self.where}: this index has no token store (re-ranking needs one)")
            self.tokens = TokenStore.open(self.path / relative, verify=True)
        return self.tokens

    def write(self, out: str | Path, *, force: bool = False, langchain: Corpus | None = None) -> IndexBundle:
        """Write the bundle folder atomically (indexes, statistics, doc ids, token store, manifests).

        With ``langchain`` (the bundle's corpus) the mean index is also exported as a LangChain FAISS
        store in ``out/langchain``.
        """
        with atomic.atomic_dir(out, kind=KIND, force=force) as tmp:
            if langchain is not None:
                self.export_langchain(langchain, tmp / "langchain")
            manifest = dict(self.manifest)
            if self.tokens is not None:
                store = self.token_store()
                (tmp / "tokens").mkdir()
                for name in (*TokenStore.FILES, "manifest.json"):
                    shutil.copyfile(store.path / name, tmp / "tokens" / name)
                manifest["token_store"] = "tokens"
            for strategy in self.strategies:
                folder = tmp / strategy
                folder.mkdir()
                faiss.write_index(self.index(strategy), str(folder / "index.faiss"))
                if self.stats(strategy):
                    np.savez(folder / "stats.npz", **self.stats(strategy))  # type: ignore[arg-type]
                atomic.write_json(folder / "doc_ids.json", self.doc_ids)
                files = {path.name: atomic.file_record(path) for path in sorted(folder.iterdir())}
                atomic.write_json(folder / "manifest.json", {**self.strategy_manifest(strategy), "files": files})
            atomic.write_json(tmp / "manifest.json", manifest)
        return IndexBundle.open(out)

    def export_langchain(self, corpus: Corpus, folder: str | Path) -> Path:
        """The mean index as a LangChain FAISS store (L2-normalised means: inner product = cosine)."""
        from rag_diag.stores.langchain import save_langchain_store

        if "mean" not in self.strategies:
            raise RagDiagError(f"{self.where}: no 'mean' index to export (build it with --pooling mean)")
        if corpus.content_hash() != self.manifest.get("corpus_sha256") or corpus.ids != self.doc_ids:
            raise RagDiagError(f"{self.where}: the corpus differs from the one the index was built from")
        return save_langchain_store(self.index("mean"), corpus, folder)

    @classmethod
    def open(cls, path: str | Path) -> IndexBundle:
        """Open a bundle folder written by :meth:`write`; a missing or foreign folder is a one-line error."""
        path = Path(path)
        if not (path / "manifest.json").is_file():
            raise RagDiagError(f"{path}: not an index folder (no manifest.json; see `rag-diag index`)")
        manifest = read_json_object(path / "manifest.json")
        if manifest.get("format") != BUNDLE_FORMAT or not isinstance(manifest.get("strategies"), list):
            raise RagDiagError(f"{path}: unsupported index bundle (format {manifest.get('format')})")
        meta, doc_ids = {}, None
        for strategy in manifest["strategies"]:
            folder = path / strategy
            if not (folder / "manifest.json").is_file() or not (folder / "doc_ids.json").is_file():
                raise RagDiagError(f"{folder}: incomplete strategy folder (manifest.json, doc_ids.json)")
            meta[strategy] = read_json_object(folder / "manifest.json")
            ids = json.loads((folder / "doc_ids.json").read_text(encoding="utf-8"))
            if doc_ids is not None and ids != doc_ids:
                raise RagDiagError(f"{folder}: document order differs from the other strategies")
            doc_ids = ids
        return cls(manifest=manifest, strategy_meta=meta, doc_ids=list(doc_ids or []), path=path)

    @classmethod
    def from_index(cls, index: faiss.Index, doc_ids: list[str], *, model: dict[str, Any], corpus_sha256: str,
                   source: str, strategy: str = "mean", others: dict[str, faiss.Index] | None = None) -> IndexBundle:
        """An in-memory bundle over an existing FAISS index (an audited store) built with pooling ``strategy``,
        beside ``others``: more indexes over the same rows (e.g. an exact ``mean`` index as a counterfactual)."""
        indexes = {strategy: index, **(others or {})}
        common = {"format": BUNDLE_FORMAT, "model": model, "corpus": "", "corpus_sha256": corpus_sha256,
                  "versions": library_versions(), "command": "", "source": source}
        meta = {
            name: {**common, "strategy": name, "dim": each.d, "n_docs": each.ntotal,
                   "metric": "cosine" if each.metric_type == faiss.METRIC_INNER_PRODUCT else "l2",
                   "index_type": type(each).__name__, "index_params": {}}
            for name, each in indexes.items()
        }
        manifest = {**common, "strategies": list(indexes), "token_store": None, "dim": index.d,
                    "index_type": "imported", "n_docs": index.ntotal}
        return cls(manifest=manifest, strategy_meta=meta, doc_ids=list(doc_ids), indexes=indexes)


def check_encoder(bundle: IndexBundle, encoder: Encoder) -> None:
    """Refuse an encoder other than the one the bundle was built with (weights hash, dimension)."""
    built = bundle.model
    if encoder.dim != bundle.dim:
        raise RagDiagError(
            f"index {bundle.where} was built with dimension {bundle.dim} ({built.get('name')}), "
            f"model '{encoder.name}' has dimension {encoder.dim}: rebuild the index or pass its model"
        )
    def key(identity: dict[str, Any]) -> Any:  # the weights hash; encoders without one compare whole identities
        return identity.get("weights_sha256") or {k: v for k, v in identity.items() if k != "max_seq_length"}

    if key(built) != key(encoder.identity):
        raise RagDiagError(
            f"index {bundle.where} was built with model '{built.get('name')}' (weights "
            f"{str(built.get('weights_sha256'))[:12]}), not '{encoder.name}' (weights "
            f"{str(encoder.identity.get('weights_sha256'))[:12]}): rebuild the index or pass its model"
        )


def build_indexes(
    corpus: Corpus | str | Path,
    *,
    model: str | Encoder = "minilm",
    strategies: str | list[str] = "mean",
    index_type: str = "flat",
    device: str = "cpu",
    command: str = "",
    encode_options: dict[str, Any] | None = None,
) -> IndexBundle:
    """Encode the corpus once and build one FAISS index per pooling strategy, in memory.

    Args:
        corpus: a :class:`Corpus` or a path :func:`load_corpus` accepts.
        model: a registry name, a local model folder or a loaded encoder.
        strategies: names (or comma-separated, or ``all``) from the pooling registry.
        index_type: flat | hnsw | ivfpq.
        device: cpu | cuda | auto, for the encoder and for FAISS.
        command: the command line recorded in the manifests.
        encode_options: ``memory_budget``, ``max_store`` and ``ray`` of the encoder pass
            (:func:`rag_diag.tokens.extract.encode_texts`); pooling then reads the store in bounded chunks.
    """
    from rag_diag.devices import resolve_faiss_device
    from rag_diag.tokens.extract import encode_corpus

    if index_type not in INDEX_TYPES:
        raise RagDiagError(f"unknown index type '{index_type}' (use {', '.join(INDEX_TYPES)})")
    names = parse_strategies(strategies)
    resolve_faiss_device(device)
    docs = corpus if isinstance(corpus, Corpus) else load_corpus(corpus)
    store = encode_corpus(docs, model=model, device=device, show_progress=True, **(encode_options or {}))
    common = {
        "format": BUNDLE_FORMAT, "model": store.manifest["model"],
        "corpus": str(Path(docs.source).resolve()) if docs.source else "", "corpus_sha256": docs.content_hash(),
        "versions": library_versions(), "command": command,
    }
    bundle = IndexBundle(
        manifest={**common, "strategies": names, "token_store": "tokens", "token_store_key": store.manifest.get("key"),
                  "dim": store.dim, "index_type": index_type, "n_docs": len(store)},
        strategy_meta={}, doc_ids=list(store.doc_ids), tokens=store,
    )
    for name in names:
        strategy = get_strategy(name)
        stats = fit_stats(name, store)
        vectors = index_vectors(pool_store(name, store, stats), strategy.metric)
        bundle.indexes[name], params = build_faiss(vectors, strategy.metric, index_type, device)
        bundle.corpus_stats[name] = stats
        bundle.strategy_meta[name] = {**common, "strategy": name, "dim": int(vectors.shape[1]),
                                      "metric": strategy.metric, "index_type": index_type,
                                      "index_params": params, "n_docs": len(store)}
    return bundle
