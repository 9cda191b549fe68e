"""The Ray engine against the local engine, on one local Ray instance (2 CPUs) started once per module.

The oracle is the local engine itself: ``covariance_summary(encode_texts(...), r)`` and
``knn_collapse(store, k, rank=r)``. Ray costs ~7–10 s to start and ~6–15 s per pipeline on 2 CPUs
(each actor process imports torch), so the fast tests share two Ray runs (module fixtures): one with
2 actors, batches of 4 and parquet shards, one in memory with Ray's default actor pool.
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import faiss
import numpy as np
import pytest

ray = pytest.importorskip("ray")
pytest.importorskip("ray.data")
pytestmark = pytest.mark.optional  # the 'ray' extra

from summary_bounds import SummaryTolerances, collapse_tolerances, measured_beta, summary_tolerances  # noqa: E402
from test_encode import forward_atol  # noqa: E402

from rag_diag.collapse import spill  # noqa: E402
from rag_diag.collapse.knn import CovarianceSummary, covariance_summary, knn_collapse  # noqa: E402
from rag_diag.collapse.ray_engine import COLUMNS, _assemble, ray_summaries  # noqa: E402
from rag_diag.errors import RagDiagError  # noqa: E402
from rag_diag.models.mock import MockEncoder  # noqa: E402
from rag_diag.tokens.extract import encode_texts  # noqa: E402
from rag_diag.tokens.ray_pass import MISSING_RAY, RayOptions, actor_env, ray_failure  # noqa: E402

RANK, K = 3, 4
ROOT = Path(__file__).resolve().parents[1]
STARTUP: dict[str, float] = {}

# Mock encoder (fast tests): a token's state depends only on its id and position, never on the other
# texts of the batch, so both engines see bit-identical token matrices. Means, S(X) and the
# concentration come from prepare_text on one text (identical bits); the factor comes from an eigh of
# the zero-padded Gram matrix, whose padding width (the longest text of the chunk) differs between the
# engines: zero rows/columns add zero eigenvalues only, so the top-r eigenpairs move by float64
# rounding, ≲ 1e-15·tr Σ ≈ 1e-13 here (tr Σ ≲ 40), and the float32 factors round to the same value
# except in the ~1e-8-probable case of a value on a rounding boundary. Measured: 0 for means and FᵀF,
# 2e-15 for kept/tail. 1e-6 absolute is that bound with a wide margin, and is far below any wrong
# row mapping, which moves entries by O(0.1–10).
MOCK_ATOL = 1e-6


@pytest.fixture(scope="module")
def ray_local():
    """One local Ray instance for the module; shut down at teardown so no Ray process is left."""
    if ray.is_initialized():
        pytest.skip("Ray is already initialised in this process")
    started = time.perf_counter()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    STARTUP["ray.init"] = time.perf_counter() - started
    ray.data.DataContext.get_current().enable_progress_bars = False
    yield
    ray.shutdown()
    assert not ray.is_initialized()


@pytest.fixture(scope="module")
def corpus(tiny_texts) -> tuple[list[str], list[str]]:
    """30 texts: the 8 tiny licence sentences, each with up to four clause variants (lengths 4…25 tokens)."""
    words = ["alpha", "beta", "gamma", "delta"]
    texts = [text if i == 0 else f"{text} Clause {i} {' '.join(words[:i])}." for i in range(4) for text in tiny_texts]
    texts = texts[:30]
    return [f"doc-{i}" for i in range(len(texts))], texts


@pytest.fixture(scope="module")
def local_store(corpus, tmp_path_factory):
    ids, texts = corpus
    return encode_texts(texts, model=MockEncoder(), ids=ids, cache=False, out=tmp_path_factory.mktemp("local") / "s")


@pytest.fixture(scope="module")
def sharded(ray_local, corpus, tmp_path_factory) -> tuple[CovarianceSummary, Path]:
    """2 actors, batches of 4 (8 blocks, finishing out of order); shards written and read back.

    Half a CPU per actor leaves the other CPU to Ray Data's write tasks (3 actors cost ~7 s more here).
    """
    ids, texts = corpus
    shard_dir = tmp_path_factory.mktemp("ray") / "shards"
    started = time.perf_counter()
    summary = ray_summaries(texts, ids, model=MockEncoder(), rank=RANK, batch_size=4, actors=2, cpus_per_actor=0.5,
                            shard_dir=shard_dir)
    STARTUP["sharded run"] = time.perf_counter() - started
    return summary, shard_dir


@pytest.fixture(scope="module")
def in_memory(ray_local, corpus, tmp_path_factory) -> tuple[CovarianceSummary, Path]:
    """Ray's default actor pool, batches of 8, no shards; RAG_DIAG_CACHE points at an empty folder."""
    ids, texts = corpus
    cache = tmp_path_factory.mktemp("cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("RAG_DIAG_CACHE", str(cache))
        started = time.perf_counter()
        summary = ray_summaries(texts, ids, model=MockEncoder(), rank=RANK, batch_size=8)
        STARTUP["in-memory run"] = time.perf_counter() - started
    return summary, cache


def gram(factors: np.ndarray) -> np.ndarray:
    """FᵀF per document (N, d, d) in float64: the rank-r covariance Σ_r.

    F itself is defined only up to the sign of each row (and a rotation within a repeated eigenvalue),
    which an eigensolver on a different padding width may choose differently; FᵀF is not.
    """
    f = factors.astype(np.float64)
    return np.einsum("nri,nrj->nij", f, f)


def state_atol(states: list[np.ndarray]) -> float:
    """η: two float32 MiniLM forward passes batched differently (test_encode.forward_atol over every text)."""
    return forward_atol(np.concatenate([np.asarray(s).reshape(-1) for s in states]))


def assert_summaries_within(got: CovarianceSummary, want: CovarianceSummary, tol: SummaryTolerances) -> None:
    """Every field of two passes' summaries within its per-text bound (summary_bounds)."""
    np.testing.assert_array_equal(got.text_stats.n_tokens, want.text_stats.n_tokens)
    assert (np.linalg.norm(got.means.astype(np.float64) - want.means, axis=1) <= tol.unit_mean).all()
    dk = np.isfinite(tol.sigma_r)  # texts whose λ_r − λ_{r+1} gap exceeds the perturbation: Σ_r is well defined
    assert dk.sum() >= len(dk) // 2, "too few texts with a Davis–Kahan bound for Σ_r to be checked"
    assert (np.abs(gram(got.factors) - gram(want.factors)).max(axis=(1, 2))[dk] <= tol.sigma_r[dk]).all()
    assert (np.abs(got.traces - want.traces) <= tol.kept).all()
    assert (np.abs(got.tail - want.tail) <= tol.tail).all()
    assert (np.abs(got.text_stats.trace - want.text_stats.trace) <= tol.spread).all()
    assert (np.abs(got.text_stats.concentration - want.text_stats.concentration) <= tol.concentration).all()


def assert_summaries_agree(got: CovarianceSummary, want: CovarianceSummary, atol: float, rtol: float = 0.0) -> None:
    assert got.means.shape == want.means.shape and got.factors.shape == want.factors.shape
    np.testing.assert_allclose(got.means, want.means, atol=atol, rtol=rtol)
    np.testing.assert_allclose(gram(got.factors), gram(want.factors), atol=atol, rtol=rtol)
    np.testing.assert_allclose(got.traces, want.traces, atol=atol, rtol=rtol)
    np.testing.assert_allclose(got.tail, want.tail, atol=atol, rtol=rtol)
    np.testing.assert_array_equal(got.text_stats.n_tokens, want.text_stats.n_tokens)
    np.testing.assert_allclose(got.text_stats.trace, want.text_stats.trace, atol=atol, rtol=rtol)
    np.testing.assert_allclose(got.text_stats.concentration, want.text_stats.concentration, atol=atol, rtol=rtol)


# Runs first (file order), before this module's Ray instance starts: 2 CPUs are not shared by two instances.
def test_ray_lifecycle_in_a_fresh_process():
    """An unreachable address fails fast in one line; a local instance is started and shut down again.

    Runs in a subprocess: this module's Ray is already initialised here and would be used as it is.
    """
    script = textwrap.dedent("""
        import time
        import ray
        from rag_diag.collapse.ray_engine import ray_summaries
        from rag_diag.errors import RagDiagError
        from rag_diag.models.mock import MockEncoder
        started = time.perf_counter()
        try:
            ray_summaries(["a text"], ["a"], model="minilm", rank=2, address="127.0.0.1:1")
        except RagDiagError as exc:
            print("ERROR", exc)
        print("SECONDS", time.perf_counter() - started, ray.is_initialized())
        summary = ray_summaries(["one short text", "another text here"], ["a", "b"], model=MockEncoder(), rank=2,
                                num_cpus=1)
        print("SHAPE", summary.factors.shape, ray.is_initialized())
    """)
    try:
        done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=240, cwd=ROOT)
    except subprocess.TimeoutExpired:
        pytest.skip("Ray hung in a fresh process")
    lines = {line.split()[0]: line for line in done.stdout.splitlines() if line.split()}
    assert {"ERROR", "SECONDS", "SHAPE"} <= set(lines), done.stdout + done.stderr[-3000:]
    assert lines["ERROR"].startswith("ERROR cannot connect to the Ray cluster at 127.0.0.1:1: ")
    seconds, initialised = lines["SECONDS"].split()[1:]
    assert float(seconds) < 30 and initialised == "False"  # no retry loop, nothing left connected
    assert lines["SHAPE"] == "SHAPE (2, 2, 16) False"  # the instance it started is shut down again


def test_sharded_ray_summaries_equal_the_local_engine(sharded, local_store):
    summary, _ = sharded
    want = covariance_summary(local_store, RANK)
    assert len(np.unique(local_store.lengths)) > 10  # texts of many lengths: padding differs per batch
    assert (want.tail > 0.1).any()  # rank 3 truncates: the factors carry real information
    assert_summaries_agree(summary, want, MOCK_ATOL)


def test_shards_are_parquet_files_holding_every_document_once(sharded, corpus):
    import pyarrow.parquet as pq

    _, shard_dir = sharded
    ids, _ = corpus
    files = sorted(shard_dir.glob("*.parquet"))
    assert len(files) >= 2
    tables = [pq.read_table(f) for f in files]
    assert all(set(COLUMNS) <= set(t.column_names) for t in tables)
    rows = np.concatenate([t.column("row").to_numpy() for t in tables])
    assert sum(t.num_rows for t in tables) == len(ids)
    np.testing.assert_array_equal(np.sort(rows), np.arange(len(ids)))
    shard_ids = [i for t in tables for i in t.column("id").to_pylist()]
    assert [ids[r] for r in rows] == shard_ids  # each shard row carries its own document's id


@pytest.mark.parametrize("spill_bytes", [0, 1 << 40], ids=["factors-on-disk", "factors-in-memory"])
def test_assemble_restores_row_order_whatever_the_block_order(local_store, corpus, monkeypatch, spill_bytes):
    monkeypatch.setattr(spill, "SPILL_BYTES", spill_bytes)
    ids, _ = corpus
    want = covariance_summary(local_store, RANK)
    n = len(ids)
    columns = {"row": np.arange(n), "id": np.array(ids, dtype=object), "mean": want.means,
               "factor": want.factors.reshape(n, -1), "kept": want.traces, "tail": want.tail,
               "n_tokens": want.text_stats.n_tokens, "trace": want.text_stats.trace,
               "concentration": want.text_stats.concentration}
    shuffled = np.random.default_rng(0).permutation(n)
    parts = [{name: value[chunk] for name, value in columns.items()} for chunk in np.array_split(shuffled, 3)][::-1]
    got = _assemble(iter(parts), ids, RANK)  # batches as a stream, as Ray yields them
    assert isinstance(got.factors, np.memmap) == (spill_bytes == 0)
    np.testing.assert_array_equal(got.means, want.means)
    np.testing.assert_array_equal(got.factors, want.factors)
    np.testing.assert_array_equal(got.text_stats.concentration, want.text_stats.concentration)
    with pytest.raises(RagDiagError, match="row index outside"):
        _assemble([dict(columns, row=columns["row"] + 1)], ids, RANK)
    with pytest.raises(RagDiagError, match="no rows"):
        _assemble(iter([]), ids, RANK)
    with pytest.raises(RagDiagError, match="29 rows for 30 texts"):
        _assemble([{name: value[1:] for name, value in columns.items()}], ids, RANK)
    swapped = dict(columns, id=np.array(ids[::-1], dtype=object))
    with pytest.raises(RagDiagError, match="ids do not match"):
        _assemble([swapped], ids, RANK)


def test_in_memory_run_agrees_and_never_writes_the_token_cache(in_memory, local_store):
    summary, cache = in_memory
    assert_summaries_agree(summary, covariance_summary(local_store, RANK), MOCK_ATOL)
    assert not (cache / "tokens").exists()  # actors encode with cache=False into private temporary folders
    assert ray.is_initialized()  # the caller's Ray instance is used, and left running


def test_knn_collapse_from_ray_summaries_equals_the_local_knn_collapse(in_memory, local_store):
    summary, _ = in_memory
    want = knn_collapse(local_store, K, rank=RANK)
    got = knn_collapse(None, K, summary=summary)
    # Same neighbours (bit-identical means), then the same fast_pairs code on factors equal up to sign:
    # SOCM differs by float64 rounding only (measured 1e-15).
    np.testing.assert_array_equal(got.doc_b, want.doc_b)
    np.testing.assert_allclose(got.pairs.socm, want.pairs.socm, atol=MOCK_ATOL, rtol=0)
    np.testing.assert_allclose(got.collapse_mean, want.collapse_mean, atol=MOCK_ATOL, rtol=0)
    np.testing.assert_allclose(got.collapse_max, want.collapse_max, atol=MOCK_ATOL, rtol=0)
    np.testing.assert_array_equal(got.top_confuser, want.top_confuser)
    assert want.collapse_max.max() > 0.01  # non-trivial values: equality is not 0 == 0


def test_a_failing_actor_is_a_one_line_error(ray_local, corpus):
    ids, texts = corpus
    with pytest.raises(RagDiagError, match="unknown model 'no-such-model'") as caught:
        ray_summaries(texts, ids, model="no-such-model", rank=RANK, batch_size=8)
    assert "\n" not in str(caught.value) and "Traceback" not in str(caught.value)


def test_ray_failures_quote_the_actor_side_error_in_one_line():
    # Ray hands actor-side exceptions to the driver as traceback text (the objects do not survive).
    wrapped = Exception(
        "\x1b[36mray::MapWorker(MapBatches(_SummaryActor)).submit()\x1b[39m (pid=1, ip=10.0.0.1)\n"
        '  File "/x/mock.py", line 3, in hidden_states\n    raise ValueError("broken encoder")\n'
        "ValueError: broken encoder\nsecond line\n\nThe above exception was the direct cause of the following:\n"
        "ray.exceptions.UserCodeException: UDF failed to process a data block."
    )
    assert str(ray_failure(wrapped)) == "the Ray engine failed: ValueError: broken encoder"
    died = ray.exceptions.ActorDiedError()
    assert str(ray_failure(died)) == "the Ray engine failed: The actor died unexpectedly before finishing this task."
    ours = Exception("ray::MapWorker.__init__()\n    raise RagDiagError(\nrag_diag.errors.RagDiagError: no such model")
    assert str(ray_failure(ours)) == "no such model"


def test_bad_input_fails_before_ray_starts(corpus, tmp_path):
    ids, texts = corpus
    mock = MockEncoder()
    with pytest.raises(RagDiagError, match="--rank must be at least 1"):
        ray_summaries(texts, ids, model=mock, rank=0)
    with pytest.raises(RagDiagError, match="is empty"):
        ray_summaries([*texts[:-1], "  "], ids, model=mock, rank=RANK)
    with pytest.raises(RagDiagError, match="duplicate id"):
        ray_summaries(texts, [*ids[:-1], ids[0]], model=mock, rank=RANK)
    (tmp_path / "old.parquet").write_bytes(b"stale")
    with pytest.raises(RagDiagError, match="must be new or empty"):
        ray_summaries(texts, ids, model=mock, rank=RANK, shard_dir=tmp_path)


def test_missing_ray_is_a_one_line_error(corpus, monkeypatch):
    ids, texts = corpus
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now raises ImportError
    with pytest.raises(RagDiagError) as caught:
        ray_summaries(texts, ids, model=MockEncoder(), rank=RANK)
    assert str(caught.value) == MISSING_RAY


def test_actor_environment_is_offline_with_this_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("RAG_DIAG_CACHE", str(tmp_path))
    monkeypatch.delenv("RAG_DIAG_ONLINE", raising=False)
    assert actor_env() == {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "RAG_DIAG_CACHE": str(tmp_path)}


def test_ray_encoder_pass_writes_the_local_token_store(ray_local, corpus, local_store, tmp_path):
    """``encode --engine ray``: 2 actors, batches of 4, blocks back in any order; every text's states land at
    its offset, so the store equals the local one (mock states depend on token id and position only: bit-equal)."""
    ids, texts = corpus
    got = encode_texts(texts, model=MockEncoder(), ids=ids, out=tmp_path / "ray", cache=False, batch_size=4,
                       ray=RayOptions(actors=2, cpus_per_actor=0.5))
    assert got.report is not None and got.report.forward_passes >= 1  # blocks received (Ray may merge batches)
    assert got.doc_ids == local_store.doc_ids
    np.testing.assert_array_equal(got.offsets, local_store.offsets)
    np.testing.assert_array_equal(np.asarray(got.token_ids), np.asarray(local_store.token_ids))
    np.testing.assert_allclose(np.asarray(got.embeddings), np.asarray(local_store.embeddings), atol=MOCK_ATOL, rtol=0)
    assert np.abs(np.asarray(got.embeddings)).max() > 0.1  # non-trivial states: equality is not 0 == 0


def test_index_on_ray_equals_the_local_index(ray_local, corpus, tmp_path):
    """``index --engine ray``: the same pooled vectors (mean and max) in the FAISS indexes."""
    from rag_diag.corpora.io import Corpus
    from rag_diag.retrieval.bundle import build_indexes

    ids, texts = corpus
    docs = Corpus(ids=list(ids), texts=list(texts))
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("RAG_DIAG_CACHE", str(tmp_path / "local-cache"))
        local = build_indexes(docs, model=MockEncoder(), strategies="mean,max")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("RAG_DIAG_CACHE", str(tmp_path / "ray-cache"))  # a cold cache: the pass must run on Ray
        remote = build_indexes(docs, model=MockEncoder(), strategies="mean,max",
                               encode_options={"ray": RayOptions(actors=1), "memory_budget": 1 << 20})
    assert remote.tokens is not None and remote.tokens.report is not None
    assert remote.tokens.report.forward_passes > 0
    for name in ("mean", "max"):
        want = local.indexes[name].reconstruct_n(0, len(ids))
        np.testing.assert_allclose(remote.indexes[name].reconstruct_n(0, len(ids)), want, atol=MOCK_ATOL, rtol=0)


def test_token_actor_runs_the_local_passes_within_a_ray_batch(tmp_path):
    """A Ray batch of 32 texts of 200–231 tokens is 7,000+ padded tokens: the actor splits it as the local pass does
    (⌊4096 / n_first⌋ texts a pass, longest first), so each pass's memory is bounded and the states are the local
    pass's (the mock's states do not depend on the batch: equal bits); the passes it reports are those it ran."""
    from rag_diag.tokens.estimate import batch_slices
    from rag_diag.tokens.ray_pass import _TokenActor

    encoder = MockEncoder(max_seq_length=512)
    texts = [" ".join(f"w{i}x{j}" for j in range(198 + i)) for i in range(32)]  # 200 + i tokens with CLS and SEP
    actor = _TokenActor(encoder, [encoder.num_layers], None, "cpu")
    out = actor({"row": np.arange(32), "text": np.asarray(texts, dtype=object)})
    lengths = sorted((len(ids) for ids in encoder.tokenize(texts).input_ids), reverse=True)
    expected = len(batch_slices(lengths, 32))
    assert expected == 2 and int(out["passes"].sum()) == expected  # 4096 // 231 = 17 texts, then 15
    store = encode_texts(texts, model=encoder, cache=False, out=tmp_path / "local", batch_size=32)
    for row, states in zip(out["row"], out["states"], strict=True):
        np.testing.assert_array_equal(states.reshape(-1, encoder.dim), np.asarray(store.tokens(int(row))))


def test_an_authentication_refusal_says_how_to_authenticate():
    """Ray's first line says only 'Failed to connect'; the authentication error is chained below it."""
    from rag_diag.tokens.ray_pass import auth_hint

    try:
        try:
            raise PermissionError("AuthenticationError: InvalidAuthToken; RAY_AUTH_MODE is currently 'disabled'")
        except PermissionError as inner:
            raise ConnectionError("Failed to connect to Ray cluster at 10.0.0.1:6379") from inner
    except ConnectionError as exc:
        assert "RAY_AUTH_MODE=token" in auth_hint(exc)
    assert auth_hint(ConnectionError("Failed to connect to Ray cluster at 10.0.0.1:6379")) == ""


# ---------------------------------------------------------------- real model (slow)


def real_sentences(tiny_texts, licences) -> tuple[list[str], list[str]]:
    """~40 real texts: the tiny sentences, the licence notices (with a planted exact copy), and first sentences."""
    lic_ids, lic_texts, _ = licences
    firsts = []
    for text in lic_texts:
        first = text.split(". ")[0].strip()
        if first and first not in firsts and first not in lic_texts and len(first.split()) > 3:
            firsts.append(first)
    texts = [*tiny_texts, *lic_texts, *firsts][:40]
    ids = [*(f"tiny-{i}" for i in range(len(tiny_texts))), *lic_ids, *(f"first-{i}" for i in range(len(firsts)))]
    return ids[: len(texts)], texts


@pytest.mark.slow
def test_real_minilm_by_registry_name_agrees_with_the_local_engine(ray_local, minilm, tiny_texts, licences, tmp_path):
    ids, texts = real_sentences(tiny_texts, licences)
    assert len(texts) >= 35
    rank = 4
    store = encode_texts(texts, model=minilm, ids=ids, cache=False, out=tmp_path / "store")
    want = covariance_summary(store, rank)
    got = ray_summaries(texts, ids, model="minilm", rank=rank, batch_size=8)
    # A transformer's token states depend on the batch through float32 rounding only (padding is masked out of
    # attention, but other GEMM shapes round differently): within η per entry, the suite's round-off estimate;
    # every summary field then moves by at most the bounds of summary_bounds (measured: ≈ 1e-7 on the unit means)
    states = [np.asarray(store.tokens(i)) for i in range(len(texts))]
    tol = summary_tolerances(states, rank, state_atol(states))
    assert_summaries_within(got, want, tol)
    local = knn_collapse(store, K, rank=rank)
    remote = knn_collapse(None, K, summary=got)
    # Exact duplicates (the planted copy) tie in the mean index and may swap places: compare by text.
    canonical = np.array([texts.index(t) for t in texts])
    np.testing.assert_array_equal(np.sort(canonical[remote.doc_b].reshape(-1, K), axis=1),
                                  np.sort(canonical[local.doc_b].reshape(-1, K), axis=1))
    delta_u = np.linalg.norm(got.means.astype(np.float64) - want.means, axis=1)
    beta = measured_beta(gram(got.factors), gram(want.factors), rank)
    rates = collapse_tolerances(delta_u, beta, tol.kept_value, local.doc_a, local.doc_b, local.pairs.d_sigma, rank,
                                minilm.dim)
    assert (np.abs(remote.collapse_mean - local.collapse_mean) <= rates).all()
    assert (np.abs(remote.collapse_max - local.collapse_max) <= rates).all()
    np.testing.assert_array_equal(canonical[remote.top_confuser], canonical[local.top_confuser])



@pytest.mark.slow  # two audit passes of the real model, one of them through Ray actors
def test_audit_pass_on_ray_equals_the_local_pass(ray_local, minilm, licences, tmp_path):
    """``audit --engine ray``: the same plan (rank-r summaries) through Ray actors and through local shards gives
    the same neighbours and unit means within the bound of summary_bounds (float32 forward passes batched
    differently: states within the suite's round-off estimate η)."""
    from rag_diag.collapse.summaries import plan_memory
    from rag_diag.jobs.corpus_pass import Engine, run_pass
    from rag_diag.stores.stored import StoredIndex
    from rag_diag.tokens.estimate import estimate_encode

    doc_ids, texts, _ = licences
    index = faiss.IndexFlatIP(minilm.dim)
    stored = StoredIndex(Path("licences"), "faiss", index, list(doc_ids), list(texts), [{} for _ in doc_ids])
    estimate = estimate_encode(texts, minilm)
    plan = plan_memory(len(texts), estimate.n_tokens, estimate.store_bytes, minilm.dim, summaries=True)
    assert plan.mode == "summaries" and plan.reason == "the Ray engine builds summaries"
    plan = dataclasses.replace(plan, shard_docs=7)
    lengths = np.asarray(estimate.full_lengths)
    local = run_pass(stored, minilm, plan, 3, Engine("local"), lengths)
    remote = run_pass(stored, minilm, plan, 3, Engine("ray", model="minilm"), lengths)
    assert remote.timings["engine"] == "ray" and local.timings["n_shards"] == 3
    texts_of = np.asarray(texts, dtype=object)  # the planted copy ties with its original: compare texts
    assert (texts_of[local.knn.doc_b] == texts_of[remote.knn.doc_b]).all()
    # the unit means each engine's summaries hold, within the derived bound (summary_bounds); the rates built on
    # them are checked against measured summary differences in test_real_minilm_by_registry_name_…
    store = encode_texts(list(texts), model=minilm, cache=False, out=tmp_path / "states")  # the states the bound needs
    states = [np.asarray(store.tokens(i)) for i in range(len(texts))]
    bound = summary_tolerances(states, plan.rank, state_atol(states)).unit_mean
    assert (np.linalg.norm(remote.unit_means() - local.unit_means(), axis=1) <= bound).all()
    np.testing.assert_array_equal(remote.full_lengths, local.full_lengths)


@pytest.mark.slow
def test_real_minilm_encoder_pass_on_ray_equals_the_local_store(ray_local, minilm, tiny_texts, licences, tmp_path):
    ids, texts = real_sentences(tiny_texts, licences)
    want = encode_texts(texts, model=minilm, ids=ids, cache=False, out=tmp_path / "local", batch_size=8)
    got = encode_texts(texts, model="minilm", ids=ids, cache=False, out=tmp_path / "ray", batch_size=8,
                       ray=RayOptions())  # by registry name: each actor loads it (a loaded model is not sent)
    np.testing.assert_array_equal(got.offsets, want.offsets)
    # Ray may batch the texts otherwise: float32 forward passes then differ by GEMM rounding only, estimated
    # as in test_encode.forward_atol (6 layers · √1536 terms · eps32 · max|h|); the unit means an index holds
    # then move by ≤ 2√d·η/‖μ‖ each (summary_bounds; measured 1.6e-7)
    states, reference = np.asarray(got.embeddings), np.asarray(want.embeddings)
    np.testing.assert_allclose(states, reference, atol=state_atol([reference]), rtol=0)
    unit = [m / np.linalg.norm(m, axis=1, keepdims=True) for m in (got.means(), want.means())]
    local_states = [np.asarray(want.tokens(i)) for i in range(len(texts))]
    bound = summary_tolerances(local_states, 1, state_atol(local_states)).unit_mean
    assert (np.linalg.norm(unit[0] - unit[1], axis=1) <= bound).all()
