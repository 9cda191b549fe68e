"""The 100k audit's GPU paths: encode and kNN collapse on CUDA, the kNN graph with faiss-gpu.

Prepare here (CPU): ``python benchmarks/gpu_scale_check.py prepare .gpu-scale [N]`` writes the model with
float16-stored weights (``gpu_check.copy_half_model``), ``texts.jsonl.gz`` (N kb-scale texts, default 100,000)
and ``reference.npz``: for a seeded sample of 1,000 texts, their CPU means and the CPU SOCM of each with the
next sampled text (float64).
Run there (carry ``.gpu-scale``; faiss-gpu and its CUDA 12 libraries installed, see ``gpu_scale_check.sh``):
``python benchmarks/gpu_scale_check.py check .gpu-scale`` prints, for the whole corpus:

- encode on CUDA: time, store size, and agreement with the CPU means and SOCM of the sample (end to end);
- the kNN graph (every document's k+1 nearest means, exact inner product) with faiss-gpu and with faiss on
  the machine's CPU cores: time of each and how many neighbour lists agree;
- a flat index built by ``build_faiss(..., device="cuda")`` (what ``rag-diag index --device cuda`` runs);
- kNN collapse on CUDA (exact token matrices, float32 products): time, and its SOCM against float64 on the
  CPU for the sample's pairs on the same tokens. It runs last, being the slowest step, so that a call stopped at
  its time limit has printed the rest;
- peak GPU memory.

``check DIR cpu`` runs the same on the CPU (a smoke test of this script at small N); ``check DIR DEVICE N`` runs
on the first N texts only (their part of the sample).
"""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

SAMPLE, K = 1000, 10


def prepare(folder: Path, n_docs: int = 100_000) -> None:
    """Model copy, texts and CPU references for a seeded sample (means; SOCM of each with the next)."""
    import gpu_check

    from rag_diag.collapse.socm import pair_socm
    from rag_diag.corpora.io import load_corpus
    from rag_diag.sampling import seeded_sample
    from rag_diag.tokens.extract import encode_texts

    gpu_check.copy_half_model(folder)
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([str(Path(sys.executable).parent / "rag-diag"), "corpora", "build", "kb-scale", "--size",
                        str(n_docs), "--out", f"{tmp}/kb"], check=True, capture_output=True)
        docs = load_corpus(f"{tmp}/kb")
        with gzip.open(folder / "texts.jsonl.gz", "wt", encoding="utf-8") as handle:
            for doc_id, text in zip(docs.ids, docs.texts, strict=True):
                handle.write(json.dumps({"id": doc_id, "text": text}) + "\n")
        sample = seeded_sample(len(docs), SAMPLE, 0)
        store = encode_texts([docs.texts[i] for i in sample], model=gpu_check._encoder(folder, "cpu"),
                             out=Path(tmp) / "s", cache=False)
        rows = np.arange(len(sample))
        stats = pair_socm(store, rows, np.roll(rows, -1))
        np.savez(folder / "reference.npz", sample=sample, means=store.means(), socm=stats.socm)
    print(f"prepared {folder}: {len(docs):,} texts")


def _synchronize(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def _graph(unit: np.ndarray, device: str) -> tuple[np.ndarray, np.ndarray, float]:
    """Every row's K+1 nearest rows by inner product (exact, faiss flat), their scores, and the seconds it took."""
    import faiss

    start = time.perf_counter()
    if device == "cuda":
        resources = faiss.StandardGpuResources()  # must outlive the index
        index = faiss.GpuIndexFlatIP(resources, unit.shape[1])
        index.add(unit)
        scores, hits = index.search(unit, K + 1)
    else:
        scores, hits = faiss.knn(unit, unit, K + 1, faiss.METRIC_INNER_PRODUCT)
    return hits, scores, time.perf_counter() - start


@contextmanager
def _timed_solves() -> Iterator[list[float]]:
    """Seconds spent in the Gram route's eigen-solves (``socm.eigvalsh``) while the block runs."""
    from rag_diag.collapse import socm

    spent, solve = [0.0], socm.eigvalsh

    def timed(gram):  # noqa: ANN001, ANN202
        start = time.perf_counter()
        values = solve(gram)
        _synchronize(gram.device.type)
        spent[0] += time.perf_counter() - start
        return values

    socm.eigvalsh = timed
    try:
        yield spent
    finally:
        socm.eigvalsh = solve


def check(folder: Path, device: str = "cuda", n_docs: int | None = None) -> None:
    """The corpus (its first ``n_docs`` texts if given) on ``device``; agreement with the CPU references."""
    import faiss
    import gpu_check
    import torch

    from rag_diag.collapse.knn import knn_collapse
    from rag_diag.collapse.socm import pair_socm
    from rag_diag.retrieval.index import build_faiss
    from rag_diag.tokens.extract import encode_texts

    on_gpu = device == "cuda"
    if on_gpu:
        assert torch.cuda.is_available(), "no CUDA device"
        print(f"device: {torch.cuda.get_device_name(0)}, torch {torch.__version__}, faiss {faiss.__version__} "
              f"(GPUs seen by faiss: {faiss.get_num_gpus()}), {os.cpu_count()} CPU cores")
    with gzip.open(folder / "texts.jsonl.gz", "rt", encoding="utf-8") as handle:
        records = [json.loads(line) for line in handle]
    records = records[:n_docs]
    texts, ids = [r["text"] for r in records], [r["id"] for r in records]
    reference = np.load(folder / "reference.npz")
    kept = reference["sample"] < len(texts)
    sample = reference["sample"][kept]
    following = np.roll(np.arange(len(kept)), -1)
    pairs = np.flatnonzero(kept & kept[following])  # reference pairs (sample[i], sample[i + 1]) inside the texts
    encoder = gpu_check._encoder(folder, device)
    with tempfile.TemporaryDirectory() as tmp:
        encode_texts(texts[:256], model=encoder, out=Path(tmp) / "w", cache=False)  # warm-up
        _synchronize(device)
        start = time.perf_counter()
        store = encode_texts(texts, model=encoder, ids=ids, out=Path(tmp) / "s", cache=False, batch_size=256)
        seconds = time.perf_counter() - start
        size = sum(f.stat().st_size for f in (Path(tmp) / "s").rglob("*") if f.is_file())
        means = store.means()
        socm = pair_socm(store, reference["sample"][pairs], reference["sample"][following[pairs]], device=device).socm
        print(f"encode on {device}: {len(texts):,} texts ({int(store.lengths.sum()):,} tokens) in {seconds:.1f} s, "
              f"store {size / 2**30:.2f} GiB; sample vs CPU: max |Δmean| "
              f"{np.abs(means[sample] - reference['means'][kept]).max():.2e}, max |ΔSOCM| "
              f"{np.abs(socm - reference['socm'][pairs]).max():.2e} ({len(pairs)} pairs, float64)")

        unit = np.ascontiguousarray(means / np.linalg.norm(means, axis=1, keepdims=True), dtype=np.float32)
        if on_gpu:
            cpu_hits, cpu_scores, cpu_seconds = _graph(unit, "cpu")
            gpu_hits, gpu_scores, gpu_seconds = _graph(unit, "cuda")
            same = np.array([set(g[1:]) == set(c[1:]) for g, c in zip(gpu_hits, cpu_hits, strict=True)])
            gap = np.abs(gpu_scores[~same] - cpu_scores[~same]).max() if (~same).any() else 0.0
            print(f"kNN graph, {len(unit):,} × {K + 1} exact: faiss-gpu {gpu_seconds:.2f} s, faiss on "
                  f"{os.cpu_count()} CPU cores {cpu_seconds:.2f} s ({cpu_seconds / gpu_seconds:.0f}×); identical "
                  f"neighbour sets {same.mean():.2%}; where they differ, rank by rank the scores differ by at most "
                  f"{gap:.1e}")
            start = time.perf_counter()
            index, _ = build_faiss(unit, "cosine", "flat", device="cuda")
            print(f"build_faiss flat on cuda: {time.perf_counter() - start:.2f} s, {index.ntotal:,} vectors")

        _synchronize(device)
        start = time.perf_counter()
        with _timed_solves() as solves:
            result = knn_collapse(store, K, device=device, dtype=torch.float32)
        _synchronize(device)
        seconds = time.perf_counter() - start
        rows = (sample[:, None] * K + np.arange(K)).reshape(-1)
        exact = pair_socm(store, result.doc_a[rows], result.doc_b[rows]).socm
        error = np.abs(result.pairs.socm[rows] - exact).max()
        print(f"kNN collapse on {device} (float32): {len(texts):,} documents × {K} in {seconds:.1f} s "
              f"(of which {solves[0]:.1f} s in the eigen-solves, {torch.get_num_threads()} torch threads; graph: "
              f"{result.graph['index_type']}, recall@{K} {result.graph['recall_at_k']:.4f}); "
              f"{len(rows):,} sample pairs vs CPU float64 on the same tokens: max |ΔSOCM| {error:.2e}")

    if on_gpu:
        print(f"peak GPU memory (torch): {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB")


if __name__ == "__main__":
    command, target = sys.argv[1], Path(sys.argv[2])
    if command == "prepare":
        prepare(target, int(sys.argv[3]) if len(sys.argv) > 3 else 100_000)
    else:
        check(target, sys.argv[3] if len(sys.argv) > 3 else "cuda", int(sys.argv[4]) if len(sys.argv) > 4 else None)
