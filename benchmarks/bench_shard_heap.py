"""A summaries-mode pass's shards with the heap handed back every 64 MiB of token rows written (before) or 16 MiB.

In the 100,000-document audit, RSS swung between about 1.1 and 1.7 GiB while the shards were encoded
(``results/bench_scale_rss_100000.tsv``). A shard's encode writes its token matrices and, every
``rag_diag.tokens.extract.RELEASE_BYTES`` of them, drops the written pages and returns the freed heap
(``malloc_trim``); between two such points the forward passes' freed activations stay in the heap. This benchmark
encodes the first N texts of the real 10,000-document ``kb-scale`` knowledge base in the audit's shards and reduces
them to rank-32 summaries (:func:`rag_diag.collapse.summaries.stream_summaries`, shards sized by the audit's plan),
alternately with 64 and 16 MiB, twice each, in one process, and prints each run's wall time and peak RSS above its
start (``VmRSS`` every 20 ms), and the largest difference of the summaries' traces between the two settings.

    python benchmarks/bench_shard_heap.py [N]      # default 4132 (two shards)
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_knn_heap import alternate  # noqa: E402
from bench_scale import build_corpus  # noqa: E402

import rag_diag.tokens.extract as extract  # noqa: E402
from rag_diag.collapse.summaries import plan_memory, stream_summaries  # noqa: E402
from rag_diag.corpora.io import load_corpus  # noqa: E402
from rag_diag.models.loading import load_encoder  # noqa: E402
from rag_diag.tokens.estimate import estimate_encode  # noqa: E402


def main(n_docs: int) -> None:
    with tempfile.TemporaryDirectory(prefix="rag-diag-bench-") as tmp:
        docs = load_corpus(build_corpus(max(n_docs, 10_000), Path(tmp)))
    texts, ids = docs.texts[:n_docs], docs.ids[:n_docs]
    encoder = load_encoder("minilm")
    estimate = estimate_encode(texts, encoder)
    plan = plan_memory(n_docs, estimate.n_tokens, estimate.store_bytes, encoder.dim, summaries=True)
    assert plan.rank is not None and plan.shard_docs is not None
    print(f"rank-{plan.rank} summaries of the first {n_docs:,} kb-scale documents, encoded in shards of "
          f"{plan.shard_docs:,} ({estimate.n_tokens:,} tokens)")
    print("| run | heap returned every | wall (s) | peak RSS above the start (GiB) | RSS at the start (GiB) |")
    print("|---:|---:|---:|---:|---:|")
    shipped = extract.RELEASE_BYTES

    def summarise(mebibytes: int) -> np.ndarray:
        extract.RELEASE_BYTES = mebibytes << 20
        return stream_summaries(texts, ids, encoder, plan.rank, shard_docs=plan.shard_docs).summary.traces

    traces = alternate((64, 16), lambda mebibytes: f"{mebibytes} MiB", summarise)
    extract.RELEASE_BYTES = shipped
    print(f"\nlargest difference of the summaries' traces, 64 vs 16 MiB: {np.abs(traces[64] - traces[16]).max():.1e}")
    print(f"command: python benchmarks/bench_shard_heap.py {n_docs}")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 4132)
