"""Index bundles: layout and manifests, in-memory build and write/open round trip, ANN recall against
flat, device handling. Mock-encoder and synthetic-vector tests are fast; the licence bundle is slow."""

from __future__ import annotations

import json
import re

import faiss
import numpy as np
import pytest
from test_index_helpers import licence_beir, licence_bundle  # noqa: F401  (fixtures)

from rag_diag.corpora.io import Corpus
from rag_diag.devices import resolve_faiss_device
from rag_diag.errors import RagDiagError
from rag_diag.mapped import _mapped_codes
from rag_diag.models.mock import MockEncoder
from rag_diag.pooling import DEFAULT_STRATEGIES, REGISTRY
from rag_diag.retrieval.bundle import IndexBundle, build_indexes, check_encoder
from rag_diag.retrieval.index import build_faiss, search

EPS32 = float(np.finfo(np.float32).eps)  # 1.2e-7


def l2_atol(queries: np.ndarray, vectors: np.ndarray) -> np.ndarray:
    """FAISS squared L2 in float32 (‖q‖² + ‖v‖² − 2q·v or Σ(q − v)²): each a ≤ d-term float32 sum of
    terms bounded by (|q| + |v|)², so off by ≤ (d + 4)·eps32·(‖q‖ + ‖v‖)² against float64."""
    d = queries.shape[1]
    q = np.linalg.norm(queries.astype(np.float64), axis=1)[:, None]
    v = np.linalg.norm(vectors.astype(np.float64), axis=1)[None, :]
    return (d + 4) * EPS32 * (q + v) ** 2


@pytest.fixture
def mock_bundle(tiny_texts, tmp_path, monkeypatch):
    monkeypatch.setenv("RAG_DIAG_CACHE", str(tmp_path / "cache"))
    corpus = Corpus(ids=[f"d{i}" for i in range(len(tiny_texts))], texts=list(tiny_texts))
    return build_indexes(corpus, model=MockEncoder(), strategies="all", index_type="flat", device="cpu",
                         command="rag-diag index --model mock")


# ---------------------------------------------------------------------------------------------- fast


def test_in_memory_bundle_round_trips_through_write(mock_bundle, tmp_path):
    assert mock_bundle.path is None and mock_bundle.strategies == list(DEFAULT_STRATEGIES)
    written = mock_bundle.write(tmp_path / "idx")
    assert written.path == tmp_path / "idx" and written.doc_ids == mock_bundle.doc_ids
    top = json.loads((written.path / "manifest.json").read_text())
    assert top["strategies"] == list(DEFAULT_STRATEGIES) and top["command"] == "rag-diag index --model mock"
    assert (written.path / top["token_store"] / "manifest.json").is_file()
    np.testing.assert_array_equal(np.asarray(written.token_store().embeddings),
                                  np.asarray(mock_bundle.token_store().embeddings))
    for name in DEFAULT_STRATEGIES:
        meta = written.strategy_manifest(name)
        assert meta["dim"] == REGISTRY[name].dim(16) and meta["metric"] == REGISTRY[name].metric
        assert meta["model"]["name"] == "mock" and meta["corpus_sha256"] and meta["versions"]["faiss"]
        original, reopened = mock_bundle.index(name), written.index(name)
        assert reopened.ntotal == len(mock_bundle.doc_ids) and reopened.d == meta["dim"]
        # the index file stores the float32 vectors verbatim
        np.testing.assert_array_equal(reopened.reconstruct_n(0, reopened.ntotal),
                                      original.reconstruct_n(0, original.ntotal))
        # read back, a flat index's vectors are a view of its file, not a heap copy like the built one's
        assert _mapped_codes(reopened) is not None and _mapped_codes(original) is None
    assert (written.path / "sif" / "stats.npz").is_file()
    assert set(written.stats("sif")) == {"sif_frequency", "sif_component"} and written.stats("mean") == {}
    with pytest.raises(RagDiagError, match="no index for strategy"):
        written.index("median")


@pytest.mark.parametrize("name", ["index.faiss", "stats.npz"])
def test_a_damaged_index_file_of_the_same_size_is_refused(mock_bundle, tmp_path, name):
    """Bit flips keep a file's size: the strategy manifest's CRC-32 catches them before the index is searched."""
    written = mock_bundle.write(tmp_path / "idx")
    path = written.path / "sif" / name
    data = bytearray(path.read_bytes())
    for position in range(200, len(data) - 4, 16):
        data[position] ^= 0x40
    path.write_bytes(bytes(data))
    reopened = IndexBundle.open(tmp_path / "idx")
    read = reopened.index if name == "index.faiss" else reopened.stats
    with pytest.raises(RagDiagError, match=rf"idx/sif: corrupt index folder \({re.escape(name)} checksum mismatch\)"):
        read("sif")
    assert reopened.index("mean").ntotal == len(mock_bundle.doc_ids)  # the undamaged strategies still read


def test_check_encoder_refuses_another_dimension(mock_bundle):
    check_encoder(mock_bundle, MockEncoder())
    with pytest.raises(RagDiagError, match="dimension"):
        check_encoder(mock_bundle, MockEncoder(dim=8))


def test_from_index_is_an_in_memory_mean_bundle(mock_bundle):
    index = mock_bundle.index("mean")
    bundle = IndexBundle.from_index(index, mock_bundle.doc_ids, model={"name": "mock"}, corpus_sha256="abc",
                                    source="store.faiss")
    assert bundle.strategies == ["mean"] and bundle.path is None and bundle.index("mean") is index
    assert bundle.strategy_manifest("mean")["metric"] == "cosine" and bundle.where == "store.faiss"
    with pytest.raises(RagDiagError, match="no token store"):
        bundle.token_store()


def test_bad_build_options_are_refused(tiny_texts):
    corpus = Corpus(ids=["a"], texts=[tiny_texts[0]])
    with pytest.raises(RagDiagError, match="unknown index type"):
        build_indexes(corpus, model=MockEncoder(), index_type="annoy")
    with pytest.raises(RagDiagError, match="unknown pooling"):
        build_indexes(corpus, model=MockEncoder(), strategies="median")


def test_l2_scores_are_negated_distances():
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(60, 32)).astype(np.float32)
    index, _ = build_faiss(vectors, "l2", "flat")
    scores, rows = search(index, vectors[:3], 2, "l2")
    exact = -np.sum((vectors[:3, None, :].astype(np.float64) - vectors[rows].astype(np.float64)) ** 2, axis=2)
    bound = np.take_along_axis(l2_atol(vectors[:3], vectors), rows, axis=1)
    assert np.all(np.abs(scores - exact) <= bound)
    np.testing.assert_array_equal(rows[:, 0], np.arange(3))  # each vector is its own nearest neighbour


def test_ivfpq_builds_and_searches_synthetic_vectors():
    rng = np.random.default_rng(1)
    vectors = rng.normal(size=(400, 32)).astype(np.float32)
    index, params = build_faiss(vectors, "l2", "ivfpq")
    assert vectors.shape[1] % params["m"] == 0 and 2 ** params["nbits"] <= len(vectors)
    assert faiss.extract_index_ivf(index).nprobe == params["nprobe"]
    scores, rows = search(index, vectors[:10], 5, "l2")
    assert rows.shape == (10, 5) and (rows >= 0).all() and np.all(np.diff(scores, axis=1) <= 0)


def test_cuda_without_gpu_is_refused():
    if faiss.get_num_gpus() > 0:
        pytest.skip("a GPU is present")
    with pytest.raises(RagDiagError, match="no GPU"):
        resolve_faiss_device("cuda")
    assert resolve_faiss_device("auto") == "cpu"


def test_missing_bundle_is_a_user_error(tmp_path):
    with pytest.raises(RagDiagError, match="not an index folder"):
        IndexBundle.open(tmp_path)


# ---------------------------------------------------------------------------------------------- real model (slow)


@pytest.mark.slow
def test_bundle_layout_and_manifests(licence_bundle):  # noqa: F811
    top = json.loads((licence_bundle.path / "manifest.json").read_text())
    assert top["strategies"] == list(DEFAULT_STRATEGIES)
    assert (licence_bundle.path / top["token_store"] / "manifest.json").is_file()
    for name in DEFAULT_STRATEGIES:
        meta = licence_bundle.strategy_manifest(name)
        assert meta["dim"] == REGISTRY[name].dim(384) and meta["metric"] == REGISTRY[name].metric
        assert meta["model"]["weights_sha256"] and meta["corpus_sha256"] and meta["versions"]["faiss"]
        assert {"torch", "transformers"} <= set(meta["versions"])
        index = licence_bundle.index(name)
        assert index.ntotal == 60 and index.d == meta["dim"]
    assert (licence_bundle.path / "sif" / "stats.npz").is_file()


@pytest.mark.slow
def test_hnsw_recall_against_flat(licence_bundle):  # noqa: F811
    flat = licence_bundle.index("mean")
    vectors = flat.reconstruct_n(0, flat.ntotal)
    hnsw, params = build_faiss(vectors, "cosine", "hnsw")
    assert params["efSearch"] == 128
    _, exact = search(flat, vectors, 10, "cosine")
    _, approx = search(hnsw, vectors, 10, "cosine")
    recall = np.mean([len(set(a) & set(e)) / 10 for a, e in zip(approx, exact, strict=True)])
    print(f"HNSW recall@10 against flat on {flat.ntotal} licence notices: {recall:.3f}")
    assert recall >= 0.9


@pytest.mark.slow
def test_ivfpq_builds_and_searches(licence_bundle):  # noqa: F811
    flat = licence_bundle.index("mean+std")
    vectors = flat.reconstruct_n(0, flat.ntotal)
    index, params = build_faiss(vectors, "l2", "ivfpq")
    assert vectors.shape[1] % params["m"] == 0 and 2 ** params["nbits"] <= len(vectors)
    scores, rows = search(index, vectors, 5, "l2")
    # PQ scores are −(distance to the quantised codes) ≤ 0, up to the float32 rounding of FAISS's
    # ‖x − c‖² = ‖x‖² + ‖c‖² − 2x·c table decomposition: ≤ (d + 4)·eps32·(‖x‖ + ‖c‖)², ‖c‖ ≲ max‖x‖
    largest = float(np.linalg.norm(vectors, axis=1).max())
    assert rows.shape == (60, 5) and (rows >= 0).all()
    assert (scores <= (vectors.shape[1] + 4) * EPS32 * (2 * largest) ** 2).all()
    assert np.all(np.diff(scores, axis=1) <= 0)


@pytest.mark.slow
def test_l2_scores_are_negated_distances_on_real_vectors(licence_bundle):  # noqa: F811
    index = licence_bundle.index("mean+std")
    vectors = index.reconstruct_n(0, 3)
    everything = index.reconstruct_n(0, 60)
    scores, rows = search(index, vectors, 2, "l2")
    exact = -np.sum((vectors[:, None, :].astype(np.float64) - everything[rows].astype(np.float64)) ** 2, axis=2)
    bound = np.take_along_axis(l2_atol(vectors, everything), rows, axis=1)
    assert np.all(np.abs(scores - exact) <= bound)
