"""rag-diag token extraction vs sentence-transformers ``encode()`` (mean pooling), same texts, same run.

Goal (issue 2): rag-diag ≤ 1.10× the time of sentence-transformers while keeping every token embedding.
Run: ``make bench`` or ``.venv/bin/python benchmarks/bench_encode.py [N]``.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from _data import licence_rule_texts  # noqa: E402

from rag_diag.models.loading import load_encoder  # noqa: E402
from rag_diag.models.registry import minilm_path
from rag_diag.tokens.extract import encode_texts  # noqa: E402


def main(n_texts: int = 2000, repeats: int = 2) -> None:
    from sentence_transformers import SentenceTransformer

    texts = licence_rule_texts(limit=n_texts)
    encoder = load_encoder("minilm")
    full = SentenceTransformer(str(minilm_path()), device="cpu")
    peer = SentenceTransformer(modules=[full[0], full[1]], device="cpu")  # mean pooling, no Normalize
    print(f"{len(texts)} licence texts, all-MiniLM-L6-v2, {torch.get_num_threads()} torch threads, batch 32")

    peer.encode(texts[:64], batch_size=32)  # warm-up both paths
    with tempfile.TemporaryDirectory() as tmp:
        encode_texts(texts[:64], model=encoder, out=Path(tmp) / "w", cache=False)
    peer_times, ours_times = [], []
    for repeat in range(repeats):
        start = time.perf_counter()
        reference = peer.encode(texts, batch_size=32, normalize_embeddings=False)
        peer_times.append(time.perf_counter() - start)
        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            store = encode_texts(texts, model=encoder, out=Path(tmp) / f"s{repeat}", cache=False, batch_size=32)
            ours_times.append(time.perf_counter() - start)
            error = float(np.abs(store.means() - reference).max())
            n_tokens = int(store.offsets[-1])
    peer_best, ours_best = min(peer_times), min(ours_times)
    print(f"sentence-transformers encode (mean vectors only): {peer_best:.2f} s (best of {repeats})")
    print(f"rag-diag encode ({n_tokens} token embeddings kept):  {ours_best:.2f} s (best of {repeats})")
    print(f"ratio rag-diag / sentence-transformers: {ours_best / peer_best:.3f} (goal ≤ 1.10)")
    print(f"max |mean(tokens) - st.encode| = {error:.2e}")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 2000)
