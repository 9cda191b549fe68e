"""The audit at 10k, 30k and 100k documents against sentence-transformers ``encode`` of the same texts.

Before any timing, two audits of 1,000 documents (token store, then summaries) fill the on-disk caches a user's
second audit has (:func:`warm_up`). Then for each size N of the real mixed knowledge base (``rag-diag corpora build
kb-scale --size N``):

1. the peer: sentence-transformers ``encode(normalize_embeddings=True)`` of the N texts (batch 32), timed;
   its vectors become the store under audit, a bare FAISS store (``index.faiss`` + ``corpus.jsonl``), as a
   user who embeds with sentence-transformers and indexes with FAISS would build it;
2. ``rag-diag audit --store STORE`` without queries (probe queries), in a fresh process with an empty token
   cache: wall time, peak RSS (the process's ru_maxrss), and the disk it wrote (cache + output + the summaries'
   temporary factor file, ``memory.summary_bytes``);
3. the peer timed again, right after the audit: one timing of it varied more between runs than the audit did
   (100,000 texts on two AMD EPYC runs: 1,053 and 1,332 s, the audit 1,691 and 1,812 s), so the audit is set
   against both timings, whose difference shows how far the machine's speed drifted during the run;
4. the ratio audit / encode (the mean of the two timings, and each), and RSS(N) / RSS(10k).

5. where the audit's time went (its ``timings``: encoder pass — over summaries, split into encoding the shards
   and reducing them —, kNN collapse, the windowed candidate's re-encoding of the texts the window cuts (over
   summaries: of the held documents it cuts, for ``rerank-windowed``), the whole evaluation);
6. the coverage of ``audit --estimate``'s 95 % interval for the mean collapse rate: the interval of
   :func:`rag_diag.jobs.sampled.interval` over ``SAMPLE`` seeded documents (the rates ``--estimate`` computes
   for them equal the full audit's, ``tests/test_sampled.py``), for ``SEEDS`` seeds, against the full run's mean;
7. at the largest size, a real ``audit --estimate --sample SAMPLE`` run beside the full one: every estimated
   figure's interval and the full run's value.

Goals (issue 12): peak RSS ≤ 3 GiB at 100k and ≤ 1.25 × RSS at 10k; audit ≤ 1.5 × the encode alone.
Run: ``make bench`` or ``.venv/bin/python benchmarks/bench_scale.py [N ...] [-- AUDIT_OPTION ...]`` (default
10000 30000 100000). Options after ``--`` go to each timed audit (not to the warm-up or ``--estimate``), e.g.
``-- --max-store 0.5``: the summaries route at 10,000, where the token store would fit.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

ROOT = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
RAG_DIAG = str(Path(PYTHON).parent / "rag-diag")
MEASURE = (
    "import resource, subprocess, sys, time; start = time.perf_counter(); "
    "code = subprocess.run(sys.argv[1:]).returncode; "
    "print('MEASURED', code, time.perf_counter() - start, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"
)
"""A wrapper process: the command's exit code, wall seconds and peak RSS (KiB, the largest child: the command)."""


def measure(command: list[str], env: dict[str, str]) -> tuple[float, int]:
    """(wall seconds, peak RSS bytes) of ``command`` run in a fresh process; fails loudly on a non-zero exit."""
    done = subprocess.run([PYTHON, "-c", MEASURE, *command], env=env, capture_output=True, text=True, check=False)
    line = next((ln for ln in done.stdout.splitlines() if ln.startswith("MEASURED")), None)
    if line is None or line.split()[1] != "0":
        sys.stderr.write(done.stdout[-3000:] + done.stderr[-3000:])
        raise SystemExit(f"failed: {' '.join(command)}")
    _, _, seconds, rss_kib = line.split()
    return float(seconds), int(rss_kib) * 1024


def disk(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.exists() else 0


def build_corpus(n_docs: int, folder: Path) -> Path:
    out = folder / f"kb-{n_docs}"
    subprocess.run([RAG_DIAG, "corpora", "build", "kb-scale", "--size", str(n_docs),
                    "--out", str(out)], check=True, capture_output=True)
    return out


def st_encode(texts: list[str]) -> tuple[float, np.ndarray]:
    """Seconds of sentence-transformers ``encode`` of ``texts`` (after a warm-up batch), and its vectors."""
    from sentence_transformers import SentenceTransformer

    from rag_diag.models.registry import minilm_path

    model = SentenceTransformer(str(minilm_path()), device="cpu")
    model.encode(texts[:64], batch_size=32)  # warm-up
    start = time.perf_counter()
    vectors = model.encode(texts, batch_size=32, normalize_embeddings=True)
    return time.perf_counter() - start, vectors


def encode_and_store(corpus: Path, store: Path) -> tuple[float, list[str]]:
    """Time sentence-transformers encode of the corpus; write its vectors as a bare FAISS store.

    Returns the seconds and the texts, which are timed again after the audit."""
    import faiss

    from rag_diag.corpora.io import load_corpus
    from rag_diag.corpora.writers import write_corpus_jsonl

    docs = load_corpus(corpus)
    seconds, vectors = st_encode(docs.texts)
    store.mkdir(parents=True)
    index = faiss.IndexFlatIP(vectors.shape[1])
    index.add(np.ascontiguousarray(vectors, dtype=np.float32))
    faiss.write_index(index, str(store / "index.faiss"))
    write_corpus_jsonl(store / "corpus.jsonl", docs)
    return seconds, docs.texts


WARM_DOCS = 1000
WARM_BUDGET_GIB = 0.002
"""The warm-up audits: this many ``kb-scale`` documents, once with the default budget (token store) and once with
this one (summaries: a 1,000-document store is ≈ 0.1 GiB)."""


def warm_up(base: Path) -> None:
    """Run the audit twice on a small store before any timing, once in each mode, so every size is timed with the
    caches a user's second audit has.

    ranx's metrics are numba functions compiled on their first call with each argument type and cached on disk
    (``cache=True``). In a fresh environment the first audit compiles them during its evaluation: at 10,000 on
    b44d3ea that cost 66 s and 0.22 GiB of peak RSS. The warm-up used until b144fde, one ``ranx_per_query`` call on
    a toy run, did not cover the audit's types: on 9bbe7a2 the 10,000 audit after it still compiled 24
    specialisations (peak 1.40 GiB, against 1.13 on 035b0fb, which compiled nothing), because ranx specialised on
    the length of the longest document id until 035b0fb handed it fixed-width codes. A real audit in each mode calls
    ranx with the audit's own types.
    """
    corpus = build_corpus(WARM_DOCS, base)
    store = base / "store-warm"
    encode_and_store(corpus, store)
    env = {**os.environ, "RAG_DIAG_CACHE": str(base / "cache-warm")}
    for mode, options in (("token-store", []), ("summaries", ["--memory-budget", str(WARM_BUDGET_GIB)])):
        out = base / f"warm-{mode}"
        measure([RAG_DIAG, "audit", "--store", str(store), "--out", str(out), *options], env)
        found = json.loads((out / "audit.json").read_text())["memory"]["mode"]
        if found != mode:
            raise SystemExit(f"warm-up audit ran in {found} mode, not {mode}")
    for path in (store, base / "cache-warm", base / "warm-token-store", base / "warm-summaries", corpus):
        shutil.rmtree(path, ignore_errors=True)


SAMPLE = 500
SEEDS = 1000


def coverage(rates: np.ndarray) -> float:
    """Share of ``SEEDS`` seeded samples whose 95 % interval of the mean holds the full-run mean."""
    from rag_diag.jobs.sampled import interval
    from rag_diag.sampling import seeded_sample

    truth = float(rates.mean())
    hits = 0
    for seed in range(SEEDS):
        found = interval(rates[seeded_sample(len(rates), SAMPLE, seed)], len(rates))
        hits += found["ci_low"] <= truth <= found["ci_high"]
    return hits / SEEDS


def full_values(summary: dict) -> dict[str, float]:
    """The full audit's value of each figure ``--estimate`` estimates."""
    return {
        "mean_collapse_rate": summary["collapse"]["mean_collapse_rate"],
        "near_duplicate_share": summary["near_duplicates"]["share_documents_in_clusters"],
        "hubness_skew": summary["hubness"]["skewness"],
        "truncated_share": summary["estimate"]["n_truncated"] / summary["n_documents"],
        "ann_recall": summary["ann"]["recall_at_k"],
    }


GRAPH_FIGURES = ("near_duplicate_share", "hubness_skew")
"""Figures the estimate reads off the stored vectors' kNN graph exactly (a one-point interval)."""


def estimate_beside(store: Path, env: dict[str, str], out: Path, full: dict) -> None:
    """Run ``audit --estimate --sample SAMPLE`` and print each interval beside the full run's value."""
    try:
        seconds, rss = measure([RAG_DIAG, "audit", "--store", str(store), "--out", str(out), "--estimate",
                                "--sample", str(SAMPLE)], env)
    except SystemExit as failed:  # keep the rows measured so far
        print(f"\naudit --estimate --sample {SAMPLE}: {failed}")
        return
    summary = json.loads((out / "audit.json").read_text())
    estimates, timings = summary["estimates"], summary["timings"]
    print(f"\naudit --estimate --sample {SAMPLE}: {seconds:.0f} s, peak RSS {rss / 2**30:.2f} GiB (before the pass "
          f"{timings['peak_rss_gib_before_pass']:.2f}, after it {timings['peak_rss_gib_after_pass']:.2f}, after the "
          f"evaluation {timings['peak_rss_gib_after_evaluation']:.2f}); documents encoded: "
          f"{timings['documents_encoded_for_collapse']:,} for collapse, {timings['evaluation_documents_encoded']:,} "
          f"for the evaluation")
    print("| figure | estimate | 95 % interval | full run | covered | method |")
    print("|---|---:|---|---:|---|---|")
    for name, value in full_values(full).items():
        found = estimates[name]
        covered = "yes" if found["ci_low"] <= value <= found["ci_high"] else "no"
        if covered == "no" and name in GRAPH_FIGURES:
            covered = (f"no, {abs(value - found['value']):.1e} apart: the full run's kNN graph is of the vectors it "
                       "recomputed, the estimate's of the stored ones")
        print(f"| {name} | {found['value']:.4f} | [{found['ci_low']:.4f}, {found['ci_high']:.4f}] | {value:.4f} | "
              f"{covered} | {found['method']} |")
    bound = full["collapse"].get("error_bound")
    if bound:
        print(f"(the full run's collapse rates come from rank-{bound['rank']} summaries: mean SOCM error bound "
              f"{bound['mean_socm_error_bound']:.3g}, the exact mean rate bounded to "
              f"{bound.get('mean_collapse_rate_interval')}; the estimate's from exact SOCM)")


def main(sizes: list[int], options: list[str]) -> None:
    import torch

    print(f"rag-diag audit vs sentence-transformers encode; all-MiniLM-L6-v2; {os.cpu_count()} CPUs, "
          f"{torch.get_num_threads()} torch threads; store: bare FAISS IndexFlatIP of normalised ST vectors")
    print("| documents | ST encode before / after the audit | audit | audit / encode (mean; before, after) | peak RSS "
          "| RSS / RSS(first) | disk (cache + out + factors) | mode |")
    print("|---:|---:|---:|---:|---:|---:|---:|---|")
    rows = []
    details: list[tuple[int, dict, float]] = []
    with tempfile.TemporaryDirectory(prefix="rag-diag-bench-") as tmp:
        base = Path(tmp)
        warm_up(base)
        for n_docs in sizes:
            corpus = build_corpus(n_docs, base)
            store = base / f"store-{n_docs}"
            encode_seconds, texts = encode_and_store(corpus, store)
            cache, out = base / f"cache-{n_docs}", base / f"audit-{n_docs}"
            env = {**os.environ, "RAG_DIAG_CACHE": str(cache)}
            seconds, rss = measure([RAG_DIAG, "audit", "--store", str(store), "--out", str(out), *options], env)
            summary = json.loads((out / "audit.json").read_text())
            memory = summary["memory"]
            written = disk(cache) + disk(out) + memory["summary_bytes"]
            mode = memory["mode"] + (f", rank {memory['rank']}" if memory["rank"] else "")
            after_seconds, _ = st_encode(texts)
            rows.append((n_docs, encode_seconds, seconds, rss, written, mode))
            first_rss = rows[0][3]
            mean = (encode_seconds + after_seconds) / 2
            print(f"| {n_docs:,} | {encode_seconds:.0f} / {after_seconds:.0f} s | {seconds:.0f} s | "
                  f"{seconds / mean:.2f}× ({seconds / encode_seconds:.2f}×, {seconds / after_seconds:.2f}×) | "
                  f"{rss / 2**30:.2f} GiB | {rss / first_rss:.2f} | {written / 2**20:,.0f} MiB | {mode} |", flush=True)
            timings = summary["timings"]
            rates = pl.read_parquet(out / "documents.parquet")["collapse_mean"].to_numpy()
            details.append((n_docs, timings, coverage(rates)))
            if n_docs == max(sizes):
                estimate_beside(store, env, base / f"estimate-{n_docs}", summary)
            shutil.rmtree(cache, ignore_errors=True)
            shutil.rmtree(store, ignore_errors=True)
    print(f"\nwhere the audit's time went (s), and the coverage of the 95 % interval of the mean collapse rate from "
          f"{SAMPLE} seeded documents over {SEEDS} seeds")
    print("| documents | encoder pass (over summaries: encoding the shards + reducing them) | kNN collapse "
          "| windowed re-encoding (whole corpus, or rerank-windowed) "
          "| evaluation (all candidates) "
          "| peak RSS (GiB) before the pass / after its encoding / after it / after the evaluation | coverage |")
    print("|---:|---:|---:|---:|---:|---|---:|")
    for n_docs, timings, covered in details:
        parts = (f" ({timings['pass_encode_seconds']:.0f} + {timings['pass_summaries_seconds']:.0f})"
                 if "pass_encode_seconds" in timings else "")
        print(f"| {n_docs:,} | {timings['encode_seconds']:.0f}{parts} | {timings['knn_collapse_seconds']:.0f} | "
              f"{timings.get('windowed_build_seconds', timings.get('rerank-windowed_build_seconds', 0.0)):.0f} | "
              f"{timings['evaluation_seconds']:.0f} | "
              f"{timings['peak_rss_gib_before_pass']:.2f} / {timings['peak_rss_gib_after_encode']:.2f} / "
              f"{timings['peak_rss_gib_after_pass']:.2f} / "
              f"{timings['peak_rss_gib_after_evaluation']:.2f} | {covered:.3f} |")
    print("\ncommand: .venv/bin/python benchmarks/bench_scale.py " + " ".join(str(n) for n in sizes)
          + (" -- " + " ".join(options) if options else ""))


if __name__ == "__main__":
    args = sys.argv[1:]
    cut = args.index("--") if "--" in args else len(args)
    main([int(arg) for arg in args[:cut]] or [10_000, 30_000, 100_000], args[cut + 1:])
