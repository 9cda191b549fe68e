"""Where a summaries pass's time goes, against sentence-transformers ``encode`` of the same texts in the same run.

Not run by ``make bench`` (it needs a built corpus, and took 23 minutes with STRIDE 2 on 2 CPUs): the parts of
:func:`rag_diag.collapse.summaries.stream_summaries` — the encoder's forward passes, its tokenisation, the shards'
token stores being written (``encode_texts``), their reduction to rank-32 summaries (``covariance_summary``), the
copies into the corpus's summaries (``_fill``) and the heap and page releases — are timed by wrapping each (nested:
``encode_texts`` holds the forward passes, the tokenisation and the releases while writing), over
every ``STRIDE``-th text of a ``kb-scale`` corpus in shards of ``SHARD`` texts (2,067 is the 100,000 audit's shard
under the default budget), then sentence-transformers ``encode`` (batch 32) of the same texts is timed.

    rag-diag corpora build kb-scale --size 100000 --out KB
    python benchmarks/pass_parts.py KB STRIDE SHARD
"""

from __future__ import annotations

import collections
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def timed(seconds: collections.Counter[str], name: str, function: Callable[..., Any]) -> Callable[..., Any]:
    """``function``, adding the seconds each call takes to ``seconds[name]``."""
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return function(*args, **kwargs)
        finally:
            seconds[name] += time.perf_counter() - started
    return wrapper


def main(corpus: Path, stride: int, shard: int) -> None:
    from sentence_transformers import SentenceTransformer

    import rag_diag.collapse.summaries as summaries
    import rag_diag.tokens.extract as extract
    from rag_diag.corpora.io import load_corpus
    from rag_diag.models.loading import load_encoder
    from rag_diag.models.registry import minilm_path

    docs = load_corpus(corpus)
    texts, ids = list(docs.texts[::stride]), list(docs.ids[::stride])
    encoder = load_encoder("minilm", "cpu", None)
    encoder.hidden_states(encoder.tokenize(texts[:8]).input_ids, [encoder.num_layers])  # warm-up
    n_tokens = sum(len(row) for row in encoder.tokenize(texts).input_ids)
    print(f"{len(texts):,} texts (every {stride}th of {corpus}), {n_tokens:,} tokens, shards of {shard:,}")
    seconds: collections.Counter[str] = collections.Counter()
    encoder.hidden_states = timed(seconds, "forward passes", encoder.hidden_states)  # type: ignore[method-assign]
    encoder.tokenize = timed(seconds, "tokenisation", encoder.tokenize)  # type: ignore[method-assign]
    for module, name in ((summaries, "encode_texts"), (summaries, "covariance_summary"), (summaries, "_fill"),
                         (summaries, "_remove"), (extract, "release_written")):
        setattr(module, name, timed(seconds, name, getattr(module, name)))
    summaries.release_heap = timed(seconds, "release_heap (between shards)", summaries.release_heap)
    extract.release_heap = timed(seconds, "release_heap (while writing)", extract.release_heap)
    started = time.perf_counter()
    streamed = summaries.stream_summaries(texts, ids, encoder, 32, shard_docs=shard)
    total = time.perf_counter() - started
    print(f"summaries pass: {total:.1f} s over {streamed.n_shards} shards, of which")
    for name, value in seconds.most_common():
        print(f"  {name}: {value:.1f} s")
    model = SentenceTransformer(str(minilm_path()), device="cpu")
    model.encode(texts[:64], batch_size=32)  # warm-up
    started = time.perf_counter()
    model.encode(texts, batch_size=32, normalize_embeddings=True)
    peer = time.perf_counter() - started
    print(f"sentence-transformers encode, after the pass: {peer:.1f} s; pass / encode {total / peer:.2f}")


if __name__ == "__main__":
    main(Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]))
