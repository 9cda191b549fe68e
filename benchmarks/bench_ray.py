"""The Ray engine against the local engine: the audit's summaries pass on the same documents and cores.

Both build the rank-r summaries of the same N texts of the real mixed knowledge base (kb-scale) with
all-MiniLM-L6-v2 — locally in shards (:func:`rag_diag.collapse.summaries.stream_summaries`), and on a local
Ray instance with as many CPUs as this machine (:func:`rag_diag.collapse.ray_engine.ray_summaries`, with Ray's
default actor pool and with a fixed pool of one actor per CPU) — then run the same kNN collapse on each, and
compare the collapse rates. Then ``encode``'s pass (:func:`rag_diag.tokens.extract.encode_texts`): the token
store written locally and by Ray actors, and the largest difference of their unit means.

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


def summaries_rows(docs, encoder, rank: int, cpus: int) -> None:
    """The audit's summaries pass: local shards against Ray's default actor pool and a fixed pool of one actor per
    CPU; the same kNN collapse on each."""
    import numpy as np
    import ray

    from rag_diag.collapse.knn import knn_collapse
    from rag_diag.collapse.ray_engine import ray_summaries
    from rag_diag.collapse.summaries import stream_summaries

    start = time.perf_counter()
    local = stream_summaries(docs.texts, docs.ids, encoder, rank, shard_docs=2000).summary
    local_seconds = time.perf_counter() - start
    print(f"summaries, local engine (shards of 2,000): {local_seconds:.1f} s")
    a = knn_collapse(None, 10, summary=local)
    texts = np.asarray(docs.texts, dtype=object)  # the corpus has exact-duplicate neighbours: compare texts
    for label, actors in (("Ray's default actor pool", None), (f"a fixed pool of {cpus} actors × 1 CPU", cpus)):
        start = time.perf_counter()
        ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False)
        init_seconds = time.perf_counter() - start
        try:
            start = time.perf_counter()
            remote = ray_summaries(docs.texts, docs.ids, model="minilm", rank=rank, actors=actors)
            ray_seconds = time.perf_counter() - start
        finally:
            ray.shutdown()
        b = knn_collapse(None, 10, summary=remote)
        same = float(np.mean(texts[a.doc_b] == texts[b.doc_b]))
        print(f"summaries, Ray engine, {label}: {ray_seconds:.1f} s (+ {init_seconds:.1f} s ray.init) → "
              f"{ray_seconds / local_seconds:.2f}× local ({(ray_seconds + init_seconds) / local_seconds:.2f}× with "
              f"start-up); same neighbours (by text) {same:.4%}; max |Δ collapse_mean| "
              f"{float(np.abs(a.collapse_mean - b.collapse_mean).max()):.2e}; max |Δ mean| "
              f"{float(np.abs(local.means - remote.means).max()):.2e}", flush=True)


def encode_rows(docs, encoder, cpus: int, folder: Path) -> None:
    """``encode`` / ``index``'s pass: the token store written locally and by a fixed pool of Ray actors."""
    import numpy as np
    import ray

    from rag_diag.tokens.extract import encode_texts
    from rag_diag.tokens.ray_pass import RayOptions

    start = time.perf_counter()
    local = encode_texts(docs.texts, model=encoder, ids=docs.ids, cache=False, out=folder / "local")
    local_seconds = time.perf_counter() - start
    ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False)
    try:
        start = time.perf_counter()
        remote = encode_texts(docs.texts, model="minilm", ids=docs.ids, cache=False, out=folder / "ray",
                              ray=RayOptions(actors=cpus))
        ray_seconds = time.perf_counter() - start
    finally:
        ray.shutdown()
    unit = [m / np.linalg.norm(m, axis=1, keepdims=True) for m in (local.means(), remote.means())]
    print(f"token store, local engine: {local_seconds:.1f} s; Ray engine ({cpus} actors × 1 CPU): "
          f"{ray_seconds:.1f} s → {ray_seconds / local_seconds:.2f}× local; max |Δ unit mean| "
          f"{float(np.abs(unit[0] - unit[1]).max()):.2e}", flush=True)


def main(n_docs: int, rank: int) -> None:
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
        summaries_rows(docs, encoder, rank, cpus)
        encode_rows(docs, encoder, cpus, Path(tmp))
    print(f"\ncommand: .venv/bin/python benchmarks/bench_ray.py {n_docs} {rank}")


if __name__ == "__main__":
    arguments = [int(arg) for arg in sys.argv[1:]]
    main(arguments[0] if arguments else 10_000, arguments[1] if len(arguments) > 1 else 8)
