"""Index bundles: layout and manifests, ANN recall against flat, device handling."""

from __future__ import annotations

import json

import faiss
import numpy as np
import pytest
from test_index_helpers import licence_beir, licence_bundle  # noqa: F401  (fixtures)

from rag_diag.errors import RagDiagError
from rag_diag.index import IndexBundle, build_faiss, resolve_faiss_device, search
from rag_diag.pooling import DEFAULT_STRATEGIES, REGISTRY

pytestmark = pytest.mark.slow


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


def test_ivfpq_builds_and_searches(licence_bundle):  # noqa: F811
    flat = licence_bundle.index("mean+std")
    vectors = flat.reconstruct_n(0, flat.ntotal)
    index, params = build_faiss(vectors, "l2", "ivfpq")
    assert vectors.shape[1] % params["m"] == 0 and 2 ** params["nbits"] <= len(vectors)
    scores, rows = search(index, vectors, 5, "l2")
    assert rows.shape == (60, 5) and (rows >= 0).all() and (scores <= 1e-3).all()


def test_l2_scores_are_negated_distances(licence_bundle):  # noqa: F811
    index = licence_bundle.index("mean+std")
    vectors = index.reconstruct_n(0, 3)
    scores, rows = search(index, vectors, 2, "l2")
    expected = -np.sum((vectors[:, None, :] - index.reconstruct_n(0, 60)[rows]) ** 2, axis=2)
    np.testing.assert_allclose(scores, expected, atol=1e-4)


def test_cuda_without_gpu_is_refused():
    if faiss.get_num_gpus() > 0:
        pytest.skip("a GPU is present")
    with pytest.raises(RagDiagError, match="no GPU"):
        resolve_faiss_device("cuda")
    assert resolve_faiss_device("auto") == "cpu"


def test_missing_bundle_is_a_user_error(tmp_path):
    with pytest.raises(RagDiagError, match="not an index folder"):
        IndexBundle.open(tmp_path)
