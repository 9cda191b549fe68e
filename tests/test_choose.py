"""choose-pooling: the decision rule on hand-made tables, and end to end on real licence notices
(ScanCode LicenseDB, nexB, CC-BY-4.0) with the real default model."""

from __future__ import annotations

import json

import pytest
from test_index_helpers import write_licence_beir

from rag_diag.choose import BASELINE, Candidate, choose_pooling, decide


def row(name: str, mrr: float, p_mean: float | None, p_best: float | None, bytes_per_doc: float) -> Candidate:
    return Candidate(name=name, metrics={"P@1": mrr, "MRR@10": mrr, "nDCG@10": mrr}, p_vs_mean=p_mean,
                     p_vs_best=p_best, bytes_per_doc=bytes_per_doc, dim=384, latency_ms=1.0, index_bytes=0)


MEAN = row("mean", 0.60, None, 0.001, 1536)


def test_mean_when_nothing_beats_it_significantly():
    table = [MEAN, row("cls", 0.70, 0.20, None, 1536), row("rerank-w2", 0.65, 0.06, 0.5, 90_000)]
    assert decide(table)[0] == BASELINE


def test_significantly_worse_candidate_never_beats_mean():
    assert decide([row("mean", 0.6, None, None, 1536), row("max", 0.4, 0.001, 0.001, 1536)])[0] == BASELINE


def test_cheapest_winner_not_worse_than_best():
    table = [MEAN, row("mean+std", 0.70, 0.01, 0.40, 3072), row("rerank-w2", 0.72, 0.001, None, 90_000)]
    name, reason = decide(table)
    assert name == "mean+std" and "cheapest" in reason


def test_best_when_the_cheaper_winner_is_significantly_worse():
    table = [MEAN, row("mean+std", 0.66, 0.01, 0.01, 3072), row("rerank-w2", 0.80, 0.001, None, 90_000)]
    assert decide(table)[0] == "rerank-w2"


def test_equal_cost_ties_go_to_the_higher_score():
    table = [MEAN, row("max", 0.70, 0.01, 0.5, 1536), row("cls", 0.71, 0.01, None, 1536)]
    assert decide(table)[0] == "cls"


def test_mean_is_required():
    from rag_diag.errors import RagDiagError

    with pytest.raises(RagDiagError, match="mean"):
        decide([row("cls", 0.7, None, None, 1536)])


@pytest.mark.slow
def test_choose_pooling_end_to_end(tmp_path):
    beir = write_licence_beir(tmp_path / "beir", docs=5, queries=2)
    out = tmp_path / "choose"
    result = choose_pooling(beir, beir / "queries.jsonl", beir / "qrels" / "test.tsv", "minilm", out,
                            strategies="mean+std", rerankers="w2")
    written = json.loads((out / "recommendation.json").read_text())
    metrics = json.loads((out / "eval" / "metrics.json").read_text())
    assert written["recommended"] == result.recommended == decide(result.candidates)[0]
    assert {r["name"] for r in written["table"]} == {"mean", "mean+std", "rerank-w2"} == set(metrics["metrics"])
    for entry in written["table"]:
        for metric, value in entry["metrics"].items():
            assert value == metrics["metrics"][entry["name"]][metric]
        if entry["name"] != "mean":
            assert entry["p_vs_mean"] == metrics["significance"][entry["name"]]["MRR@10"]["corrected_p_value"]
        assert entry["bytes_per_doc"] > 0 and entry["latency_ms"] > 0
    by_name = {r["name"]: r for r in written["table"]}
    sizes = [by_name[name]["bytes_per_doc"] for name in ("rerank-w2", "mean+std", "mean")]
    assert sizes[0] > sizes[1] > sizes[2]
    assert written["rule"] and written["reason"]
    html = (out / "report.html").read_text()
    assert "mean+std" in html and "rerank-w2" in html and (out / "summary.md").is_file()


def test_cli_bad_input_is_one_line(tmp_path, capsys):
    import rag_diag.cli.audit  # noqa: F401  (registers the commands)
    from rag_diag.cli import main

    status = main(["choose-pooling", "--corpus", str(tmp_path / "nope"), "--out", str(tmp_path / "out"),
                   "--strategies", "mean"])
    err = capsys.readouterr().err.strip()
    assert status == 2 and err.startswith("error: ") and len(err.splitlines()) == 1


def test_cli_unknown_strategy(tmp_path, capsys):
    import rag_diag.cli.audit  # noqa: F401
    from rag_diag.cli import main

    assert main(["choose-pooling", "--corpus", str(tmp_path), "--out", str(tmp_path / "o"), "--strategies", "x"]) == 2
    assert "unknown pooling strategy 'x'" in capsys.readouterr().err
