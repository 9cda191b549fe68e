"""Rebuild ``reports/strategies/table.md``: every pooling strategy and re-ranker on ``corpora/licenses``.

Steps (all seeded / deterministic):

1. ``rag-diag index`` over the corpus with every pooling strategy (flat indexes, MiniLM);
2. the queries are split by a hash of their id into a dev third and a test two-thirds;
3. re-rank depth and blend weight are chosen on the dev queries only (best mean MRR@10 over the
   re-rankers), never on the test queries;
4. ``rag-diag evaluate`` on the test queries with that setting; the table reports its metrics and
   the significance of each row against ``mean`` (paired t-test, Holm-corrected).

Usage: ``.venv/bin/python reports/strategies/make_table.py [--corpus corpora/licenses] [--work DIR]``
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from rag_diag import atomic  # noqa: E402
from rag_diag.cli import main as cli  # noqa: E402
from rag_diag.corpora.io import Qrels, Queries, load_qrels, load_queries  # noqa: E402
from rag_diag.evaluate import evaluate_bundle  # noqa: E402
from rag_diag.rerank import RERANKERS, RerankConfig  # noqa: E402

HERE = Path(__file__).resolve().parent
DEPTHS = (10, 20, 30, 50)
ALPHAS = (0.3, 0.5, 0.7)


def is_dev(query_id: str) -> bool:
    """A fixed third of the queries: sha256(id) mod 3 == 0."""
    return int(hashlib.sha256(query_id.encode()).hexdigest(), 16) % 3 == 0


def subset(queries: Queries, qrels: Qrels, dev: bool) -> tuple[Queries, Qrels]:
    keep = [i for i, query_id in enumerate(queries.ids) if is_dev(query_id) == dev]
    ids = [queries.ids[i] for i in keep]
    return (
        Queries(ids=ids, texts=[queries.texts[i] for i in keep]),
        Qrels({q: qrels.judgements[q] for q in ids if q in qrels.judgements}),
    )


def write_split(folder: Path, queries: Queries, qrels: Qrels) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    pairs = zip(queries.ids, queries.texts, strict=True)
    lines = [json.dumps({"_id": q, "text": t}, ensure_ascii=False) for q, t in pairs]
    atomic.write_text(folder / "queries.jsonl", "\n".join(lines) + "\n")
    rows = [f"{q}\t{d}\t{s}" for q, docs in qrels.judgements.items() for d, s in docs.items()]
    atomic.write_text(folder / "qrels.tsv", "query-id\tcorpus-id\tscore\n" + "\n".join(rows) + "\n")


def tune(index: Path, queries: Queries, qrels: Qrels, work: Path) -> tuple[RerankConfig, dict]:
    """(best config, {setting: mean MRR@10 over re-rankers}) on the dev queries."""
    scores = {}
    for depth, alpha in itertools.product(DEPTHS, ALPHAS):
        config = RerankConfig(depth=depth, alpha=alpha)
        result = evaluate_bundle(index, queries, qrels, 10, list(RERANKERS), work / "dev-eval", config=config)
        scores[(depth, alpha)] = max(result.metrics[f"rerank-{name}"]["MRR@10"] for name in RERANKERS)
    depth, alpha = max(scores, key=lambda key: (scores[key], -key[0]))
    return RerankConfig(depth=depth, alpha=alpha), scores


def render(metrics: dict, command: str, tuning: dict, config: RerankConfig, n_test: int, n_dev: int) -> str:
    lines = [
        "# Pooling strategies and re-rankers on `corpora/licenses` (all-MiniLM-L6-v2)",
        "",
        f"Produced by: `{command}`",
        "",
        f"Test queries: {n_test} (dev queries used for tuning: {n_dev}, split by sha256(id) mod 3).",
        f"Re-ranking: top-{config.depth} of mean pooling, α = {config.alpha}, MaxSim without [CLS]/[SEP] "
        "(chosen on dev: best MRR@10 of any re-ranker).",
        "Significance: paired t-test against `mean` on the test queries, Holm-corrected over the rows; "
        "Δ = mean difference, * = corrected p < 0.05.",
        "",
        "| strategy | P@1 | MRR@10 | nDCG@10 | R@100 | ΔP@1 (p) | ΔMRR@10 (p) | ΔnDCG@10 (p) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, values in metrics["metrics"].items():
        cells = []
        for metric in ("P@1", "MRR@10", "nDCG@10"):
            test = metrics["significance"].get(name, {}).get(metric)
            cells.append(
                "—" if test is None else
                f"{test['effect_size']:+.3f} ({test['corrected_p_value']:.2g}){'*' if test['significant'] else ''}"
            )
        lines.append(
            f"| {name} | {values['P@1']:.3f} | {values['MRR@10']:.3f} | {values['nDCG@10']:.3f} "
            f"| {values['R@100']:.3f} | " + " | ".join(cells) + " |"
        )
    lines += ["", "Dev tuning (best MRR@10 over re-rankers):", "", "| depth | α | MRR@10 |", "|---|---|---|"]
    lines += [f"| {depth} | {alpha} | {score:.3f} |" for (depth, alpha), score in sorted(tuning.items())]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", type=Path, default=Path("corpora/licenses"))
    parser.add_argument("--work", type=Path, default=Path(".cache/strategies-table"))
    args = parser.parse_args()
    index = args.work / "index"
    if cli(["index", "--corpus", str(args.corpus), "--pooling", "all", "--out", str(index)]) != 0:
        raise SystemExit("index build failed")
    queries = load_queries(args.corpus / "queries.jsonl")
    qrels = load_qrels(args.corpus / "qrels" / "test.tsv", queries)
    dev_queries, dev_qrels = subset(queries, qrels, dev=True)
    test_queries, test_qrels = subset(queries, qrels, dev=False)
    config, tuning = tune(index, dev_queries, dev_qrels, args.work)
    write_split(args.work / "test", test_queries, test_qrels)
    evaluate_args = [
        "evaluate", "--index", str(index), "--queries", str(args.work / "test" / "queries.jsonl"),
        "--qrels", str(args.work / "test" / "qrels.tsv"), "--rerank", "all",
        "--rerank-depth", str(config.depth), "--alpha", str(config.alpha), "--out", str(args.work / "eval"),
    ]
    if cli(evaluate_args) != 0:
        raise SystemExit("evaluation failed")
    metrics = json.loads((args.work / "eval" / "metrics.json").read_text())
    command = ".venv/bin/python reports/strategies/make_table.py --corpus " + str(args.corpus)
    table = render(metrics, command, tuning, config, len(test_queries), len(dev_queries))
    atomic.write_text(HERE / "table.md", table)
    atomic.write_json(HERE / "metrics.json", {**metrics, "tuning": {f"{d},{a}": s for (d, a), s in tuning.items()}})
    print(table)


if __name__ == "__main__":
    main()
