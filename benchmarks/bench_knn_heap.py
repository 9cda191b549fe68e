"""kNN collapse on rank-32 summaries after a sharded pass, with and without handing the C heap back each chunk.

In the 100,000-document audit the pass's kNN collapse raised peak RSS from 1.72 to 2.03 GiB, and the release of the
heap after the pass gave 0.7 GiB back (an RSS sampler beside ``bench_scale.py 10000 100000``): the chunks' freed
buffers stayed in the heap, which the shards' forward passes had left fragmented. So this benchmark first does
what the audit does, in one process: N texts of the real ``kb-scale`` knowledge base encoded by all-MiniLM-L6-v2
in shards sized as the audit's plan sizes them (:func:`rag_diag.collapse.summaries.stream_summaries`). Then it
runs :func:`rag_diag.collapse.knn.knn_collapse` (k = 10) on those summaries, alternately as shipped (``malloc_trim``
after each chunk) and with the trim made a no-op, twice each, and prints each run's wall time and its peak RSS
above the RSS at its start (``VmRSS`` sampled every 20 ms), and that the two give the same collapse rates.

    python benchmarks/bench_knn_heap.py [N]      # default 10000
"""

from __future__ import annotations

import os
import re
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_scale import build_corpus  # noqa: E402

import rag_diag.collapse.knn as knn  # noqa: E402
from rag_diag.collapse.summaries import plan_memory, stream_summaries  # noqa: E402
from rag_diag.corpora.io import load_corpus  # noqa: E402
from rag_diag.models.loading import load_encoder  # noqa: E402
from rag_diag.progress import release_heap  # noqa: E402
from rag_diag.tokens.estimate import estimate_encode  # noqa: E402

K = 10
Arm = TypeVar("Arm")


class PeakSampler:
    """The largest ``VmRSS`` (GiB) seen since :meth:`reset`, sampled every 20 ms on a thread."""

    def __init__(self) -> None:
        self.peak = 0.0
        threading.Thread(target=self._run, daemon=True).start()

    @staticmethod
    def now() -> float:
        status = Path("/proc/self/status").read_text()
        return int(re.search(r"VmRSS:\s+(\d+)", status).group(1)) / 2**20  # type: ignore[union-attr]

    def reset(self) -> float:
        self.peak = start = self.now()
        return start

    def _run(self) -> None:
        while True:
            self.peak = max(self.peak, self.now())
            time.sleep(0.02)


def alternate(
    arms: Sequence[Arm], label: Callable[[Arm], str], work: Callable[[Arm], np.ndarray],
) -> dict[Arm, np.ndarray]:
    """``work(arm)`` for each arm in turn, twice over, in this process; one table row per run: its label, wall time,
    peak RSS above the start and RSS at the start. Returns each arm's last result."""
    sampler = PeakSampler()
    results: dict[Arm, np.ndarray] = {}
    for run, arm in enumerate(list(arms) * 2, start=1):
        start = sampler.reset()
        began = time.perf_counter()
        results[arm] = work(arm)
        seconds = time.perf_counter() - began
        print(f"| {run} | {label(arm)} | {seconds:.1f} | {sampler.peak - start:.3f} | {start:.3f} |", flush=True)
        release_heap()
    return results


def main(n_docs: int) -> None:
    with tempfile.TemporaryDirectory(prefix="rag-diag-bench-") as tmp:
        docs = load_corpus(build_corpus(n_docs, Path(tmp)))
    encoder = load_encoder("minilm")
    estimate = estimate_encode(docs.texts, encoder)
    plan = plan_memory(n_docs, estimate.n_tokens, estimate.store_bytes, encoder.dim, summaries=True)
    assert plan.rank is not None and plan.shard_docs is not None
    started = time.perf_counter()
    streamed = stream_summaries(docs.texts, docs.ids, encoder, plan.rank, shard_docs=plan.shard_docs)
    print(f"kNN collapse (k = {K}) on the rank-{plan.rank} summaries of {n_docs:,} kb-scale documents, after "
          f"encoding them in {streamed.n_shards} shards of {plan.shard_docs:,} "
          f"({time.perf_counter() - started:.0f} s); "
          f"{plan.token_rows:,} token rows per chunk")
    print("| run | heap trimmed each chunk | wall (s) | peak RSS above the start (GiB) | RSS at the start (GiB) |")
    print("|---:|---|---:|---:|---:|")
    shipped = knn.release_heap

    def collapse(trimmed: bool) -> np.ndarray:
        knn.release_heap = shipped if trimmed else (lambda: False)
        return knn.knn_collapse(None, K, summary=streamed.summary, token_budget=plan.token_rows).collapse_mean

    rates = alternate((False, True), lambda trimmed: "yes" if trimmed else "no", collapse)
    knn.release_heap = shipped
    print(f"\nlargest difference of the collapse rates, trimmed vs not: {np.abs(rates[True] - rates[False]).max():.1e}")
    print(f"command: python benchmarks/bench_knn_heap.py {n_docs}")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 10_000)
