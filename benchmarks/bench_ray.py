"""The Ray engine against the local engine: the audit's summaries pass on the same documents and cores.

Both build the rank-r summaries of the same N texts of the real mixed knowledge base (kb-scale) with
all-MiniLM-L6-v2 — locally in shards (:func:`rag_diag.collapse.summaries.stream_summaries`), and on a local
Ray instance with as many CPUs as this machine (:func:`rag_diag.collapse.ray_engine.ray_summaries`) — then
run the same kNN collapse on each, and compare the collapse rates.

Goal (issue 12): Ray ≤ 1.3 × local on the same cores, identical results (1e-6).
Run: ``make bench`` or ``.venv/bin/python benchmarks/bench_ray.py [N] [RANK]`` (default 10000 8).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def main(n_docs: int, rank: int) -> None:
    import numpy as np
    import ray

    from rag_diag.collapse.knn import knn_collapse
    from rag_diag.collapse.ray_engine import ray_summaries
    from rag_diag.collapse.summaries import stream_summaries
    from rag_diag.corpora.io import load_corpus
    from rag_diag.models.loading import load_encoder

    cpus = os.cpu_count() or 1
    with tempfile.TemporaryDirectory(prefix="rag-diag-bench-ray-") as tmp:
        folder = Path(tmp) / "kb"
        subprocess.run([str(Path(sys.executable).parent / "rag-diag"), "corpora", "build", "kb-scale", "--size",
                        str(n_docs), "--out", str(folder)], check=True, capture_output=True)
        docs = load_corpus(folder)
    encoder = load_encoder("minilm")
    print(f"{len(docs):,} kb-scale documents, all-MiniLM-L6-v2, rank {rank}, {cpus} CPUs")
    start = time.perf_counter()
    local = stream_summaries(docs.texts, docs.ids, encoder, rank, shard_docs=2000).summary
    local_seconds = time.perf_counter() - start
    start = time.perf_counter()
    ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False)
    init_seconds = time.perf_counter() - start
    try:
        start = time.perf_counter()
        remote = ray_summaries(docs.texts, docs.ids, model="minilm", rank=rank)
        ray_seconds = time.perf_counter() - start
    finally:
        ray.shutdown()
    a, b = knn_collapse(None, 10, summary=local), knn_collapse(None, 10, summary=remote)
    texts = np.asarray(docs.texts, dtype=object)  # the corpus has exact-duplicate neighbours: compare texts
    same = float(np.mean(texts[a.doc_b] == texts[b.doc_b]))
    print(f"local engine (shards of 2,000): {local_seconds:.1f} s")
    print(f"ray engine: {ray_seconds:.1f} s (+ {init_seconds:.1f} s ray.init) → {ray_seconds / local_seconds:.2f}× "
          f"local ({(ray_seconds + init_seconds) / local_seconds:.2f}× with start-up)")
    print(f"same neighbours (by text): {same:.4%}; max |Δ collapse_mean| "
          f"{float(np.abs(a.collapse_mean - b.collapse_mean).max()):.2e}; max |Δ mean| "
          f"{float(np.abs(local.means - remote.means).max()):.2e}")
    print(f"\ncommand: .venv/bin/python benchmarks/bench_ray.py {n_docs} {rank}")


if __name__ == "__main__":
    arguments = [int(arg) for arg in sys.argv[1:]]
    main(arguments[0] if arguments else 10_000, arguments[1] if len(arguments) > 1 else 8)
