"""Nothing unverified is trusted: a token store damaged after publishing stops re-ranking with one line."""

from __future__ import annotations

import pytest

from rag_diag.corpora.io import Corpus, Qrels, Queries
from rag_diag.errors import RagDiagError

TEXTS = ["gpl version two or later", "gpl version three or later", "apache licence two", "mit licence text",
         "public domain dedication", "bsd three clause licence"]


def _flip_last_byte(path):
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))


def test_damaged_published_store_refuses_rerank(tmp_path, mock_encoder):
    from rag_diag.evaluation.evaluate import evaluate_bundle
    from rag_diag.retrieval.bundle import IndexBundle, build_indexes

    corpus = Corpus(ids=[f"d{i}" for i in range(len(TEXTS))], texts=TEXTS)
    build_indexes(corpus, model=mock_encoder).write(tmp_path / "idx")
    queries = Queries(ids=["q0", "q1"], texts=["gpl version three", "mit licence"])
    qrels = Qrels({"q0": {"d1": 1}, "q1": {"d3": 1}})
    healthy = evaluate_bundle(IndexBundle.open(tmp_path / "idx"), queries, qrels, rerankers="maxsim",
                              model=mock_encoder)
    assert "rerank-maxsim" in healthy.runs
    _flip_last_byte(tmp_path / "idx" / "tokens" / "embeddings.npy")
    with pytest.raises(RagDiagError, match="corrupt token store"):
        evaluate_bundle(IndexBundle.open(tmp_path / "idx"), queries, qrels, rerankers="maxsim", model=mock_encoder)


@pytest.mark.slow
def test_cli_evaluate_rerank_on_a_damaged_bundle_is_one_line(tmp_path, capsys):
    from rag_diag.cli import main
    from rag_diag.corpora.writers import write_beir

    corpus = Corpus(ids=[f"d{i}" for i in range(len(TEXTS))], texts=TEXTS)
    write_beir(tmp_path / "kb", corpus, Queries(ids=["q0"], texts=["gpl version three"]), Qrels({"q0": {"d1": 1}}))
    assert main(["index", "--corpus", str(tmp_path / "kb"), "--out", str(tmp_path / "idx")]) == 0
    _flip_last_byte(tmp_path / "idx" / "tokens" / "embeddings.npy")
    capsys.readouterr()
    status = main(["evaluate", "--index", str(tmp_path / "idx"), "--queries", str(tmp_path / "kb"),
                   "--qrels", str(tmp_path / "kb"), "--rerank", "maxsim", "--out", str(tmp_path / "eval")])
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 2 and len(err) == 1 and err[0].startswith("error:") and "corrupt token store" in err[0]
    assert not (tmp_path / "eval").exists()
