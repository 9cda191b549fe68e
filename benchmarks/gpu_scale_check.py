"""The 100k audit's GPU paths: encode and kNN collapse on CUDA, the kNN index with faiss-gpu.

Prepare here (CPU): ``python benchmarks/gpu_scale_check.py prepare .gpu-scale [N]`` writes the model with
float16-stored weights (``gpu_check.prepare``'s copy), ``texts.jsonl.gz`` (N kb-scale texts, default 100,000)
and ``reference.npz``: CPU means, exact kNN neighbours and SOCM of a seeded 1,000-document sample.
Run there (carry ``.gpu-scale``; faiss-gpu installed in parts): ``python benchmarks/gpu_scale_check.py check
.gpu-scale`` prints, for the whole corpus, encode time on CUDA, kNN collapse time on CUDA (exact token
matrices, float32 products), the faiss-gpu flat index build and search time, and the agreement of each with
the CPU reference on the sample.
"""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

SAMPLE, K = 1000, 10


def prepare(folder: Path, n_docs: int = 100_000) -> None:
    """Model copy, texts and CPU references (means, neighbours and SOCM of a seeded sample)."""
    import gpu_check

    from rag_diag.collapse.knn import knn_neighbours
    from rag_diag.collapse.socm import pair_socm
    from rag_diag.corpora.io import load_corpus
    from rag_diag.sampling import seeded_sample
    from rag_diag.tokens.extract import encode_texts

    gpu_check.prepare(folder)  # the float16-weight model (and its small check texts)
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([str(Path(sys.executable).parent / "rag-diag"), "corpora", "build", "kb-scale", "--size",
                        str(n_docs), "--out", f"{tmp}/kb"], check=True, capture_output=True)
        docs = load_corpus(f"{tmp}/kb")
        with gzip.open(folder / "texts.jsonl.gz", "wt", encoding="utf-8") as handle:
            for doc_id, text in zip(docs.ids, docs.texts, strict=True):
                handle.write(json.dumps({"id": doc_id, "text": text}) + "\n")
        encoder = gpu_check._encoder(folder, "cpu")
        store = encode_texts(docs.texts, model=encoder, ids=docs.ids, out=Path(tmp) / "s", cache=False,
                             show_progress=True)
        means = store.means()
        sample = seeded_sample(len(docs), SAMPLE, 0)
        neighbours = knn_neighbours(means, K)
        a, b = np.repeat(sample, K), neighbours[sample].reshape(-1)
        stats = pair_socm(store, a, b)
        np.savez(folder / "reference.npz", sample=sample, means=means[sample], neighbours=neighbours[sample],
                 socm=stats.socm)
    print(f"prepared {folder}: {len(docs):,} texts")


def check(folder: Path) -> None:
    """The whole corpus on CUDA; agreement with the CPU reference on the sample."""
    import faiss
    import gpu_check
    import torch

    from rag_diag.collapse.knn import knn_collapse
    from rag_diag.retrieval.index import build_faiss
    from rag_diag.tokens.extract import encode_texts

    assert torch.cuda.is_available(), "no CUDA device"
    print(f"device: {torch.cuda.get_device_name(0)}, torch {torch.__version__}, faiss {faiss.__version__} "
          f"(GPUs seen by faiss: {faiss.get_num_gpus()}), {os.cpu_count()} CPU cores")
    with gzip.open(folder / "texts.jsonl.gz", "rt", encoding="utf-8") as handle:
        records = [json.loads(line) for line in handle]
    texts, ids = [r["text"] for r in records], [r["id"] for r in records]
    reference = np.load(folder / "reference.npz")
    sample = reference["sample"]
    encoder = gpu_check._encoder(folder, "cuda")
    with tempfile.TemporaryDirectory() as tmp:
        encode_texts(texts[:256], model=encoder, out=Path(tmp) / "w", cache=False)  # warm-up
        torch.cuda.synchronize()
        start = time.perf_counter()
        store = encode_texts(texts, model=encoder, ids=ids, out=Path(tmp) / "s", cache=False, batch_size=256)
        seconds = time.perf_counter() - start
        means = store.means()
        print(f"encode on CUDA: {len(texts):,} texts in {seconds:.1f} s; max |mean − CPU mean| on the sample "
              f"{np.abs(means[sample] - reference['means']).max():.2e}")
        unit = means / np.linalg.norm(means, axis=1, keepdims=True)
        start = time.perf_counter()
        index, _ = build_faiss(unit.astype(np.float32), "cosine", "flat", device="cuda")
        built = time.perf_counter() - start
        start = time.perf_counter()
        _, hits = index.search(unit[sample].astype(np.float32), K + 1)
        searched = time.perf_counter() - start
        agree = np.mean([set(h[h != s][:K]) == set(r)
                         for h, s, r in zip(hits, sample, reference["neighbours"], strict=True)])
        print(f"faiss-gpu flat index: built in {built:.2f} s, {SAMPLE} searches in {searched:.2f} s; "
              f"same neighbours as the CPU reference: {agree:.2%}")
        torch.cuda.synchronize()
        start = time.perf_counter()
        result = knn_collapse(store, K, device="cuda", dtype=torch.float32, show_progress=True)
        torch.cuda.synchronize()
        seconds = time.perf_counter() - start
        rows = (sample[:, None] * K + np.arange(K)).reshape(-1)
        same = result.doc_b[rows] == reference["neighbours"].reshape(-1)
        error = np.abs(result.pairs.socm[rows][same] - reference["socm"][same]).max()
        print(f"kNN collapse on CUDA (float32): {len(texts):,} documents × {K} in {seconds:.1f} s; sample pairs "
              f"with the same neighbour {same.mean():.2%}, max |ΔSOCM| {error:.2e} (float32 vs CPU float64)")


if __name__ == "__main__":
    command, target = sys.argv[1], Path(sys.argv[2])
    if command == "prepare":
        prepare(target, int(sys.argv[3]) if len(sys.argv) > 3 else 100_000)
    else:
        check(target)
