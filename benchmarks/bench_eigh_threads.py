"""The batched eigen-solves of collapse on 2 cores: one LAPACK call (what rag-diag does), the thread pool it used
before, and a thread pool whose threads each run a single OpenMP thread (tried, not kept).

On N documents of the real ``kb-scale`` knowledge base (all-MiniLM-L6-v2 token store, built once):

1. exact kNN collapse, k = 10 (:func:`rag_diag.collapse.knn.knn_collapse`): the eigenvalues of every pair's
   Gram matrix (``eigen.eigvalsh``);
2. the rank-32 summaries (:func:`rag_diag.collapse.knn.covariance_summary`): eigenvectors of every document's
   Gram matrix (``torch.linalg.eigh``), with documents chunked in store order, every chunk padded to the corpus'
   longest text (before), or in order of length (:func:`rag_diag.collapse.knn._length_chunks`, now).

Each route is swapped in for the solver; the step's wall time and the time inside the solves are printed, with
the ratio to the first route's and the largest difference of the results from its.

    python benchmarks/bench_eigh_threads.py [N]      # default 10000
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from threadpoolctl import threadpool_limits  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_scale import build_corpus  # noqa: E402

import rag_diag.collapse.knn as knn  # noqa: E402
import rag_diag.collapse.socm as socm  # noqa: E402

K, RANK = 10, 32
EIGVALSH, EIGH, LENGTH_ORDER = socm.eigvalsh, torch.linalg.eigh, knn._length_chunks


def pool(solve: Callable, batch: torch.Tensor, one_omp_thread: bool) -> list:
    """``solve`` on ``batch`` cut into one part per torch thread, each in a pool thread; with ``one_omp_thread``
    that thread's OpenMP team is one thread (else MKL starts a team of torch's thread count in each)."""
    threads = torch.get_num_threads()
    if threads < 2 or len(batch) < 4 * threads:
        return [solve(batch)]

    def part(piece: torch.Tensor):
        if not one_omp_thread:
            return solve(piece)
        with threadpool_limits(1, user_api="openmp"):
            return solve(piece)

    with ThreadPoolExecutor(threads) as executor:
        return list(executor.map(part, batch.chunk(threads)))


def pooled_eigvalsh(one_omp_thread: bool) -> Callable:
    return lambda gram: torch.cat(pool(EIGVALSH, gram, one_omp_thread))


def pooled_eigh(one_omp_thread: bool) -> Callable:
    def solve(gram: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        parts = pool(EIGH, gram, one_omp_thread)
        return torch.cat([values for values, _ in parts]), torch.cat([vectors for _, vectors in parts])
    return solve


def store_order_chunks(lengths: np.ndarray, dim: int, chunk_docs: int, chunk_bytes: int) -> list[np.ndarray]:
    """The summaries' chunks before: documents in store order, every chunk sized for the corpus' longest text."""
    longest = max(int(lengths.max()), 1)
    size = max(1, min(chunk_docs, chunk_bytes // (8 * longest * (dim + 2 * longest))))
    return [np.arange(start, min(start + size, len(lengths))) for start in range(0, len(lengths), size)]


VARIANTS = {  # (route, eigvalsh, eigh, chunks)
    "kNN collapse": [("one LAPACK call (now)", EIGVALSH, EIGH, LENGTH_ORDER),
                     ("thread pool, OpenMP teams unchanged (before)", pooled_eigvalsh(False), EIGH, LENGTH_ORDER),
                     ("thread pool, one OpenMP thread each (tried)", pooled_eigvalsh(True), EIGH, LENGTH_ORDER)],
    "rank-32 summaries": [
        ("length order, one LAPACK call (now)", EIGVALSH, EIGH, LENGTH_ORDER),
        ("store order, thread pool, OpenMP teams unchanged (before)", EIGVALSH, pooled_eigh(False), store_order_chunks),
        ("store order, one LAPACK call", EIGVALSH, EIGH, store_order_chunks),
        ("length order, thread pool, one OpenMP thread each (tried)", EIGVALSH, pooled_eigh(True), LENGTH_ORDER)],
}
REPEATS = 2
"""Each variant runs this many times, the variants taking turns; the fastest run of each is printed (the machine
is shared: one run alone can be 15 % off)."""


def timed(solver: Callable, spent: list[float]) -> Callable:
    def run(gram: torch.Tensor):
        start = time.perf_counter()
        out = solver(gram)
        spent[0] += time.perf_counter() - start
        return out
    return run


def main(n_docs: int) -> None:
    from rag_diag.corpora.io import load_corpus
    from rag_diag.tokens.extract import encode_texts

    print(f"kb-scale, {n_docs:,} documents, all-MiniLM-L6-v2; {os.cpu_count()} CPUs, {torch.get_num_threads()} "
          f"torch threads; kNN collapse k = {K}, summaries rank {RANK}; fastest of {REPEATS} runs each")
    with tempfile.TemporaryDirectory(prefix="rag-diag-eigh-") as tmp:
        corpus = load_corpus(build_corpus(n_docs, Path(tmp)))
        store = encode_texts(corpus.texts, model="minilm", ids=corpus.ids)
        print(f"token store: {int(store.lengths.sum()):,} tokens, longest {int(store.lengths.max())}")
        print("| step | route | wall | in the solves | solves / first's | largest difference from the first |")
        print("|---|---|---:|---:|---:|---:|")
        steps = {"kNN collapse": lambda: knn.knn_collapse(store, K).pairs.socm,
                 "rank-32 summaries": lambda: knn.covariance_summary(store, RANK).traces}
        for step, compute in steps.items():
            best: dict[str, tuple[float, float, np.ndarray]] = {}
            for _ in range(REPEATS):
                for name, values_of, pairs_of, chunks in VARIANTS[step]:
                    spent = [0.0]
                    socm.eigvalsh, torch.linalg.eigh = timed(values_of, spent), timed(pairs_of, spent)
                    knn._length_chunks = chunks
                    start = time.perf_counter()
                    values = np.asarray(compute())
                    wall = time.perf_counter() - start
                    socm.eigvalsh, torch.linalg.eigh, knn._length_chunks = EIGVALSH, EIGH, LENGTH_ORDER
                    if name not in best or wall < best[name][0]:
                        best[name] = (wall, spent[0], values)
            _, first_solves, reference = next(iter(best.values()))
            for name, (wall, solves, values) in best.items():
                print(f"| {step} | {name} | {wall:.1f} s | {solves:.1f} s | {solves / first_solves:.2f} | "
                      f"{np.abs(values - reference).max():.1e} |", flush=True)


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 10_000)
