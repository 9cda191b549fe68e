"""Peak memory of two audit steps on the real ``kb-scale`` knowledge base, rag-diag against the route a user
would otherwise take, each step in a fresh process.

1. **BM25 index** of N documents: bm25s given one list of token strings per document (its documented input;
   rag-diag's tokeniser, so both index the same tokens) against
   :class:`rag_diag.retrieval.lexical.BM25Index` (token ids of one vocabulary, the sparse score matrix built by
   scipy), and that index again with bm25s's default numpy builder of the matrix. All rank the first 200
   documents' texts as queries; the largest score differences are printed.
2. **Mean pooling of a token store** (all-MiniLM-L6-v2, the ``LONGEST`` longest texts): reading the whole
   token matrix as float64 and summing each text's rows with ``np.add.reduceat``, against
   :meth:`rag_diag.tokens.store.TokenStore.means` (streamed). The largest difference is printed.

The step's peak is VmHWM after the step minus RSS before it, with VmHWM reset just before the step
(``/proc/self/clear_refs``), so what loading the inputs and importing bm25s cost is not counted.

    python benchmarks/bench_step_memory.py [N]      # default 100000
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_scale import build_corpus  # noqa: E402

LONGEST = 2000
QUERIES = 200

PRELUDE = """
import json, sys
def status(key):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(key))
def start():
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    return status("VmRSS:")
def report(before, **extra):
    print("STEP", json.dumps({"peak_bytes": status("VmHWM:") - before, **extra}))
"""

BM25_PEER = PRELUDE + """
import bm25s, numpy as np
from rag_diag.corpora.io import load_corpus
from rag_diag.retrieval.lexical import tokenize, K1, B
corpus = load_corpus(sys.argv[1])
before = start()
retriever = bm25s.BM25(k1=K1, b=B, method="lucene")
retriever.index([tokenize(text) for text in corpus.texts], show_progress=False)
report(before)
docs, scores = retriever.retrieve([tokenize(t) for t in corpus.texts[:int(sys.argv[2])]], k=10, show_progress=False)
np.save(sys.argv[3], scores)
"""

BM25_OURS = PRELUDE + """
import bm25s, numpy as np  # imported before the step, as in the peer's
from rag_diag.corpora.io import load_corpus
from rag_diag.retrieval.lexical import BM25Index, tokenize
if sys.argv[4] != "scipy":  # bm25s's own default sparse-matrix builder instead of the one rag-diag asks for
    init = bm25s.BM25.__init__
    bm25s.BM25.__init__ = lambda self, **kw: init(self, **{**kw, "csc_backend": sys.argv[4]})
corpus = load_corpus(sys.argv[1])
before = start()
index = BM25Index.from_corpus(corpus)
report(before)
docs, scores = index.retriever.retrieve([tokenize(t) for t in corpus.texts[:int(sys.argv[2])]], k=10,
                                        show_progress=False)
np.save(sys.argv[3], scores)
"""

MEANS = PRELUDE + """
import numpy as np
from rag_diag.tokens.store import TokenStore
store = TokenStore.open(sys.argv[1])
before = start()
if sys.argv[2] == "peer":
    means = np.add.reduceat(np.asarray(store.embeddings[0], dtype=np.float64), store.offsets[:-1], axis=0)
    means /= store.lengths[:, None]
else:
    means = store.means()
report(before)
np.save(sys.argv[3], means)
"""


def step(code: str, *args: str) -> int:
    """Run ``code`` in a fresh interpreter; the step's peak bytes it reports."""
    done = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, check=False)
    line = next((ln for ln in done.stdout.splitlines() if ln.startswith("STEP ")), None)
    if done.returncode != 0 or line is None:
        sys.stderr.write(done.stdout[-2000:] + done.stderr[-2000:])
        raise SystemExit(f"step failed: {args}")
    return int(json.loads(line[5:])["peak_bytes"])


def gib(n_bytes: int) -> str:
    return f"{n_bytes / 2**30:.2f} GiB"


def main(n_docs: int) -> None:
    import numpy as np

    from rag_diag.corpora.io import load_corpus
    from rag_diag.tokens.extract import encode_texts

    with tempfile.TemporaryDirectory(prefix="rag-diag-step-") as tmp:
        base = Path(tmp)
        corpus_dir = build_corpus(n_docs, base)
        peer = step(BM25_PEER, str(corpus_dir), str(QUERIES), str(base / "peer.npy"))
        ours = step(BM25_OURS, str(corpus_dir), str(QUERIES), str(base / "ours.npy"), "scipy")
        numpy_csc = step(BM25_OURS, str(corpus_dir), str(QUERIES), str(base / "numpy_csc.npy"), "numpy")
        gap = float(np.abs(np.load(base / "peer.npy") - np.load(base / "ours.npy")).max())
        csc_gap = float(np.abs(np.load(base / "numpy_csc.npy") - np.load(base / "ours.npy")).max())
        print(f"BM25 index of {n_docs:,} kb-scale documents: bm25s from token strings {gib(peer)}, rag-diag from "
              f"token ids {gib(ours)} ({ours / peer:.2f}x); top-10 scores of {QUERIES} queries differ by {gap:.1e}")
        print(f"  the same token ids with bm25s's default numpy sparse-matrix builder: {gib(numpy_csc)} (rag-diag's "
              f"scipy builder {ours / numpy_csc:.2f}x of it); top-10 scores differ by {csc_gap:.1e}")

        corpus = load_corpus(corpus_dir)
        longest = sorted(range(len(corpus.texts)), key=lambda i: -len(corpus.texts[i]))[:LONGEST]
        store = encode_texts([corpus.texts[i] for i in longest], ids=[corpus.ids[i] for i in longest],
                             cache=False, out=base / "store")
        size = store.embeddings.nbytes
        peer = step(MEANS, str(store.path), "peer", str(base / "peer_means.npy"))
        ours = step(MEANS, str(store.path), "ours", str(base / "our_means.npy"))
        gap = float(np.abs(np.load(base / "peer_means.npy") - np.load(base / "our_means.npy")).max())
        print(f"mean pooling of a {size / 2**20:,.0f} MiB token store ({LONGEST:,} longest texts, "
              f"{int(store.offsets[-1]):,} token rows): whole matrix as float64 {gib(peer)}, TokenStore.means "
              f"{gib(ours)} ({ours / peer:.2f}x); means differ by {gap:.1e}")
    print(f"\ncommand: python benchmarks/bench_step_memory.py {n_docs}")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 100_000)
