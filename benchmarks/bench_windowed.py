"""The windowed candidate on the real ``kb-scale`` knowledge base: what it encodes, and how fast, against
sentence-transformers ``encode`` of the same chunks.

On N documents (``rag-diag corpora build kb-scale --size N``, all-MiniLM-L6-v2, window 256):

1. the texts the window cuts: how many, their tokens, and the tokens beyond the window (which a truncating
   encoder, sentence-transformers included, never sees);
2. their word chunks (``chunk_words``: W/2 words, a quarter of overlap) before and after
   :func:`rag_diag.retrieval.windowed.fit_to_window`: how many chunks, their tokens, and how many still
   overflow the window (the encoder would cut them: their words beyond the window are lost);
3. :meth:`WindowedIndex.build` from the corpus' own token store (built first, not timed), the chunk means
   cached in a fresh, empty cache (so nothing is reused), timed, against sentence-transformers
   ``encode(normalize_embeddings=True)`` (batch 32) of the same chunks in the same run; the ratio, and the
   largest difference between the two sets of unit chunk vectors;
4. the chunk encoding alone, both ways, each timed with its peak RSS above its start (VmRSS sampled every 20 ms,
   the heap handed back before it) and the bytes it wrote: :func:`rag_diag.tokens.means.encode_means` (into a
   fresh, empty cache), and the route it replaced, a token store of the chunks (``encode_texts``, written to a
   fresh folder) and its ``means()``; both ``CHUNK_BATCH_TOKENS // W`` chunks a pass.

    python benchmarks/bench_windowed.py [N]      # default 10000
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from collections.abc import Callable  # noqa: E402
from typing import TypeVar  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_knn_heap import PeakSampler  # noqa: E402
from bench_scale import build_corpus, disk  # noqa: E402

import rag_diag.retrieval.windowed as windowed  # noqa: E402
from rag_diag.corpora.io import load_corpus  # noqa: E402
from rag_diag.models.loading import load_encoder  # noqa: E402
from rag_diag.models.registry import minilm_path  # noqa: E402
from rag_diag.progress import release_heap  # noqa: E402
from rag_diag.tokens.extract import encode_texts  # noqa: E402
from rag_diag.tokens.means import encode_means  # noqa: E402


def chunk_counts(chunks: list[str], encoder: windowed.Encoder) -> str:
    lengths = np.asarray(encoder.tokenize(chunks).full_lengths)
    over = lengths > encoder.max_seq_length
    return (f"{len(chunks):,} chunks, {int(lengths.sum()):,} tokens, {int(over.sum())} over the window "
            f"({int((lengths[over] - encoder.max_seq_length).sum()):,} tokens the encoder would cut)")


T = TypeVar("T")


def timed_peak(sampler: PeakSampler, build: Callable[[], T]) -> tuple[T, float, float]:
    """(result, seconds, peak VmRSS above the start in GiB) of ``build()``, the heap handed back before it."""
    release_heap()
    start_rss = sampler.reset()
    started = time.perf_counter()
    result = build()
    seconds = time.perf_counter() - started
    return result, seconds, max(sampler.peak, sampler.now()) - start_rss


def main(n_docs: int) -> None:
    from sentence_transformers import SentenceTransformer

    encoder = load_encoder("minilm")
    window = encoder.max_seq_length
    print(f"kb-scale, {n_docs:,} documents, {encoder.name}, window {window}; {os.cpu_count()} CPUs, "
          f"{torch.get_num_threads()} torch threads")
    with tempfile.TemporaryDirectory(prefix="rag-diag-windowed-") as tmp:
        corpus = load_corpus(build_corpus(n_docs, Path(tmp)))
        whole = encode_texts(corpus.texts, model=encoder, ids=corpus.ids)
        full = np.asarray(encoder.tokenize(corpus.texts).full_lengths)
        cut = np.flatnonzero(full > window)
        print(f"texts the window cuts: {len(cut):,} of {len(corpus):,}, holding {int(full[cut].sum()):,} tokens, "
              f"{int((full[cut] - window).sum()):,} of them beyond the window")
        size = max(window // 2, 8)
        overlap = int(size * windowed.OVERLAP_SHARE)
        words = [chunk for i in cut for chunk in windowed.chunk_words(corpus.texts[i], size, overlap)]
        fitted = [piece for parts in windowed.fit_to_window(words, encoder) for piece in parts]
        print(f"word chunks of {size} words: {chunk_counts(words, encoder)}")
        print(f"after fit_to_window: {chunk_counts(fitted, encoder)}")

        batch = max(1, windowed.CHUNK_BATCH_TOKENS // window)
        sampler = PeakSampler()
        os.environ["RAG_DIAG_CACHE"] = str(Path(tmp) / "build-cache")
        index, ours, _ = timed_peak(sampler, lambda: windowed.WindowedIndex.build(corpus, encoder, whole))
        os.environ["RAG_DIAG_CACHE"] = str(Path(tmp) / "means-cache")
        (means, _), means_seconds, means_peak = timed_peak(sampler, lambda: encode_means(fitted, encoder, batch))
        store_folder = Path(tmp) / "chunk-store"
        store_means, store_seconds, store_peak = timed_peak(sampler, lambda: encode_texts(
            fitted, model=encoder, batch_size=batch, cache=False, out=store_folder).means())
        n_fit = len(corpus) - len(cut)
        mine = index.index.reconstruct_n(n_fit, index.index.ntotal - n_fit)

        model = SentenceTransformer(str(minilm_path()), device="cpu")
        model.encode(fitted[:64], batch_size=32)  # warm-up
        start = time.perf_counter()
        peer = model.encode(fitted, batch_size=32, normalize_embeddings=True)
        theirs = time.perf_counter() - start
        print(f"WindowedIndex.build (the {len(fitted):,} chunks encoded, means, index): {ours:.1f} s; "
              f"sentence-transformers encode of the same chunks: {theirs:.1f} s; ratio {ours / theirs:.2f}; "
              f"largest difference of the unit chunk vectors {np.abs(mine - peer).max():.1e}; "
              f"chunks over the window left: {index.n_chunks_truncated}")
        print(f"the {len(fitted):,} chunks' means, {batch} chunks a pass: encode_means {means_seconds:.1f} s, peak RSS "
              f"{means_peak:.3f} GiB above its start, {disk(Path(tmp) / 'means-cache') / 2**20:,.1f} MiB "
              f"written; a token store of the chunks and its means() (the route it replaced, run second) "
              f"{store_seconds:.1f} s, {store_peak:.3f} GiB, {disk(store_folder) / 2**20:,.1f} MiB written; "
              f"largest difference of the two sets of means {np.abs(means - store_means).max():.1e}")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 10_000)
