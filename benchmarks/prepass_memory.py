"""What an audit holds before its encoder pass, and what its collapse table costs, at each corpus size.

For each size N of ``kb-scale``: a fresh process opens a bare FAISS store of the N texts and runs the steps
:func:`rag_diag.jobs.audit.run_audit` takes before its pass, in its order, printing RSS (anonymous and
file-backed) and the peak after each: open the store, tokenise every text for the estimate, the probe queries,
the store as an evaluation bundle, the rows the evaluation keeps (a search of the whole stored index). The
model check is left out (200 documents whatever N), and the store's vectors are random unit vectors: no step
measured here depends on their values. Then the N·k-row pairs frame of the collapse table
(:func:`rag_diag.collapse.table.pairs_frame`, k = 10) and its parquet write.

    python benchmarks/prepass_memory.py 10000 100000
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from bench_scale import build_corpus
from rss_watch import status_gib

K = 10
PROBES = 200


def show(step: str, before: dict[str, float]) -> dict[str, float]:
    now = status_gib()
    anon, file = now["RssAnon"] - before["RssAnon"], now["RssFile"] - before["RssFile"]
    print(f"  {step:<38} RSS {now['VmRSS']:.3f}  anon {now['RssAnon']:.3f} ({anon:+.3f})  "
          f"file {now['RssFile']:.3f} ({file:+.3f})  peak {now['VmHWM']:.3f}", flush=True)
    return now


def write_store(n_docs: int, folder: Path) -> Path:
    """``kb-scale`` at N documents as a bare FAISS store of random unit vectors."""
    import faiss

    from rag_diag.corpora.io import load_corpus
    from rag_diag.corpora.writers import write_corpus_jsonl

    docs = load_corpus(build_corpus(n_docs, folder))
    vectors = np.random.default_rng(0).standard_normal((len(docs.ids), 384)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    store = folder / f"store-{n_docs}"
    store.mkdir()
    index = faiss.IndexFlatIP(vectors.shape[1])
    index.add(vectors)
    faiss.write_index(index, str(store / "index.faiss"))
    write_corpus_jsonl(store / "corpus.jsonl", docs)
    return store


def measure(store: str) -> None:
    """The pre-pass steps of an audit of ``store``, then the pairs frame and its write (run in a fresh process)."""
    from rag_diag.collapse.socm import PairStats
    from rag_diag.collapse.summaries import DEFAULT_MEMORY_BUDGET, plan_memory
    from rag_diag.collapse.table import pairs_frame
    from rag_diag.corpora.probes import copy_probes
    from rag_diag.jobs.audit import _store_bundle
    from rag_diag.jobs.corpus_pass import evaluation_rows
    from rag_diag.models.loading import load_encoder
    from rag_diag.progress import release_heap
    from rag_diag.stores.stored import open_store
    from rag_diag.tokens.estimate import estimate_encode

    now = show("imports", status_gib())
    encoder = load_encoder("minilm")
    now = show("model loaded", now)
    stored = open_store(store)
    now = show("store opened (texts, ids, metadata)", now)
    estimate = estimate_encode(stored.texts, encoder)
    now = show("every text tokenised (estimate)", now)
    plan = plan_memory(len(stored.doc_ids), estimate.n_tokens, estimate.store_bytes, encoder.dim,
                       DEFAULT_MEMORY_BUDGET, None)
    queries, qrels = copy_probes(stored.corpus(), PROBES, 0)
    now = show("probe queries", now)
    bundle = _store_bundle(stored, encoder, "mean", {}, stored.corpus().content_hash())
    now = show("store as an evaluation bundle", now)
    evaluation_rows(bundle, stored, queries, qrels, encoder)
    now = show(f"evaluation rows ({plan.mode} plan)", now)
    release_heap()
    now = show("heap and mapped pages released", now)
    n_docs = len(stored.doc_ids)
    rng = np.random.default_rng(0)
    doc_a, doc_b = np.repeat(np.arange(n_docs), K), rng.integers(0, n_docs, n_docs * K)
    pairs = pairs_frame(stored.doc_ids, doc_a, doc_b, PairStats(*(rng.random(n_docs * K) for _ in range(4))))
    now = show(f"pairs frame ({n_docs * K:,} rows)", now)
    with tempfile.TemporaryDirectory() as tmp:
        pairs.write_parquet(Path(tmp) / "pairs.parquet")
    show("pairs frame written to parquet", now)


def main(sizes: list[int]) -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    with tempfile.TemporaryDirectory(prefix="rag-diag-prepass-") as tmp:
        env["RAG_DIAG_CACHE"] = str(Path(tmp) / "cache")
        for n_docs in sizes:
            store = write_store(n_docs, Path(tmp))
            print(f"{n_docs:,} kb-scale documents (GiB):", flush=True)
            subprocess.run([sys.executable, __file__, "--measure", str(store)], check=True, env=env)
    print(f"\ncommand: python benchmarks/prepass_memory.py {' '.join(map(str, sizes))}")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--measure"]:
        measure(sys.argv[2])
    else:
        main([int(arg) for arg in sys.argv[1:]] or [10000, 100000])
