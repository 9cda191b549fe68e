"""Declarative pipelines: a TOML file of steps, run in order by ``rag-diag run FILE.toml``.

A pipeline file has a ``[pipeline]`` table (``name``, ``out``, optional ``description``) and a list of
``[[steps]]``; each step names its ``kind`` (a key of :data:`STEPS`) and the parameters of the API
call it stands for. In string parameters ``${out}`` is the pipeline's output folder. A file whose
``[pipeline]`` table has a ``kind`` and no steps is a whole-pipeline job (e.g. ``reproduce_paper``).

Every step writes its own artefact folder atomically, so an interrupted pipeline can simply be rerun:
finished steps are recomputed from caches (token stores, built corpora) rather than trusted blindly.
"""

from __future__ import annotations

import shlex
import time
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console

from rag_diag.errors import RagDiagError

console = Console(stderr=True)


@dataclass(frozen=True)
class Step:
    """One pipeline step: its kind, parameters (``${out}`` already substituted) and position."""

    kind: str
    params: dict[str, Any]
    number: int


def _substitute(value: Any, variables: dict[str, str]) -> Any:
    if isinstance(value, str):
        for name, replacement in variables.items():
            value = value.replace("${" + name + "}", replacement)
        return value
    if isinstance(value, list):
        return [_substitute(item, variables) for item in value]
    if isinstance(value, dict):
        return {key: _substitute(item, variables) for key, item in value.items()}
    return value


def load_pipeline(path: str | Path) -> tuple[dict[str, Any], list[Step]]:
    """Parse and validate a pipeline file; unknown step kinds are refused before anything runs."""
    path = Path(path)
    if not path.is_file():
        raise RagDiagError(f"{path}: pipeline file not found")
    try:
        config = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise RagDiagError(f"{path}: not valid TOML ({exc})") from None
    header = config.get("pipeline")
    if not isinstance(header, dict):
        raise RagDiagError(f"{path}: missing [pipeline] table")
    variables = {"out": str(header.get("out", f"reports/{path.stem}"))}
    steps = []
    for number, raw in enumerate(config.get("steps", []), start=1):
        kind = raw.get("kind")
        if kind not in STEPS:
            raise RagDiagError(f"{path}: step {number} has unknown kind '{kind}' (known: {', '.join(STEPS)})")
        params = _substitute({key: value for key, value in raw.items() if key != "kind"}, variables)
        steps.append(Step(kind, params, number))
    if not steps and header.get("kind") not in JOBS:
        raise RagDiagError(f"{path}: no [[steps]] and no known [pipeline] kind (known: {', '.join(JOBS)})")
    return config, steps


def run_pipeline(path: str | Path) -> list[dict[str, Any]]:
    """Run every step of the pipeline at ``path`` in order; returns one record (kind, params, seconds) per step.

    Each step receives the in-memory results of the steps before it, keyed by step kind.
    """
    path = Path(path)
    config, steps = load_pipeline(path)
    header = config["pipeline"]
    if not steps:
        out = Path(header.get("out", f"reports/{path.stem}"))
        JOBS[header["kind"]](config, out)
        return [{"kind": header["kind"], "out": str(out)}]
    records = []
    results: dict[str, Any] = {}
    for step in steps:
        console.rule(f"[bold]step {step.number}/{len(steps)}: {step.kind}")
        started = time.perf_counter()
        results[step.kind] = STEPS[step.kind](step.params, results)
        seconds = time.perf_counter() - started
        console.print(f"step {step.number} ({step.kind}) done in {seconds:.1f} s → {step.params.get('out', '')}")
        records.append({"kind": step.kind, "params": step.params, "seconds": round(seconds, 1)})
    return records


def _require(params: dict[str, Any], *names: str) -> None:
    missing = [name for name in names if name not in params]
    if missing:
        raise RagDiagError(f"pipeline step is missing {', '.join(missing)}")


def step_build_corpus(params: dict[str, Any], results: dict[str, Any]) -> Any:
    """Build a bundled corpus (``name``, ``out``, ``size``, ``seed``)."""
    from rag_diag.corpora.registry import build_corpus

    _require(params, "name")
    return build_corpus(params["name"], params.get("out"), params.get("size", "small"), params.get("seed", 0))


def step_langchain_store(params: dict[str, Any], results: dict[str, Any]) -> Any:
    """Build a LangChain FAISS store the way a LangChain user would (``corpus``, ``model``, ``out``)."""
    from rag_diag.langchain_io import build_langchain_store

    _require(params, "corpus", "out")
    return build_langchain_store(params["corpus"], params.get("model", "minilm"), params["out"])


def step_collapse(params: dict[str, Any], results: dict[str, Any]) -> Any:
    """kNN (``knn``) or all-pairs (``sample``) collapse of a corpus into ``out``."""
    from rag_diag.collapse_io import collapse_corpus

    _require(params, "corpus", "out")
    return collapse_corpus(
        params["corpus"], params["out"], model=params.get("model", "minilm"), knn=params.get("knn"),
        sample=params.get("sample"), seed=params.get("seed", 0), device=params.get("device", "cpu"),
    )


def step_index(params: dict[str, Any], results: dict[str, Any]) -> Any:
    """Index a corpus with several pooling strategies (``corpus``, ``model``, ``pooling``, ``index_type``)."""
    from rag_diag.index import build_indexes

    _require(params, "corpus", "out")
    return build_indexes(
        params["corpus"], params.get("model", "minilm"), params.get("pooling", "mean"),
        params.get("index_type", "flat"), params.get("device", "cpu"), params["out"],
        command=_command("index", params),
    )


def step_evaluate(params: dict[str, Any], results: dict[str, Any]) -> Any:
    """Evaluate an index bundle (``index``, ``queries``, ``qrels``, ``k``, ``rerank``)."""
    from rag_diag.corpora.io import load_qrels, load_queries
    from rag_diag.evaluate import evaluate_bundle

    _require(params, "index", "queries", "qrels", "out")
    queries = load_queries(params["queries"])
    qrels = load_qrels(params["qrels"], queries)
    return evaluate_bundle(
        params["index"], queries, qrels, k=params.get("k", 10), rerankers=params.get("rerank"),
        out=params["out"], command=_command("evaluate", params),
    )


def step_diagnose(params: dict[str, Any], results: dict[str, Any]) -> Any:
    """Link failures to collapse (``eval``, ``collapse``, ``out``)."""
    from rag_diag.diagnose import diagnose

    _require(params, "eval", "collapse", "out")
    return diagnose(params["eval"], params["collapse"], params["out"], params.get("strategy", "mean"),
                    report=params.get("report", True))


def step_audit(params: dict[str, Any], results: dict[str, Any]) -> Any:
    """Audit an existing vector store (``store``, ``model``, optional ``queries`` / ``qrels``)."""
    from rag_diag.audit import audit_store

    _require(params, "store", "out")
    return audit_store(
        params["store"], model=params.get("model", "minilm"), queries=params.get("queries"),
        qrels=params.get("qrels"), documents=params.get("documents"), out=params["out"], k=params.get("k", 10),
    )


def step_choose_pooling(params: dict[str, Any], results: dict[str, Any]) -> Any:
    """Compare every pooling strategy and re-ranker and recommend one (``corpus``, ``queries``, ``qrels``)."""
    from rag_diag.choose import choose_pooling

    _require(params, "corpus", "out")
    return choose_pooling(
        params["corpus"], params.get("queries"), params.get("qrels"), params.get("model", "minilm"), params["out"],
        strategies=params.get("strategies"), rerankers=params.get("rerank"),
    )


def step_demo_report(params: dict[str, Any], results: dict[str, Any]) -> Any:
    """One report from the audit and choose-pooling steps before it (see :mod:`rag_diag.demo_report`)."""
    from rag_diag.demo_report import write_demo_report

    _require(params, "out")
    if "audit" not in results or "choose-pooling" not in results:
        raise RagDiagError("a demo-report step needs an audit step and a choose-pooling step before it")
    return write_demo_report(
        results["audit"], results["choose-pooling"], params["out"], title=params.get("title"),
        commands=params.get("commands", []),
    )


def _command(name: str, params: dict[str, Any]) -> str:
    parts = ["rag-diag", name]
    for key, value in params.items():
        parts += [f"--{key.replace('_', '-')}", ",".join(value) if isinstance(value, list) else str(value)]
    return shlex.join(parts)


def job_reproduce_paper(config: dict[str, Any], out: Path) -> None:
    """The paper's average-SOCM protocol over several models (see :mod:`rag_diag.reproduce`)."""
    from rag_diag.reproduce import reproduce_paper

    reproduce_paper(config, out)


STEPS: dict[str, Callable[[dict[str, Any], dict[str, Any]], Any]] = {
    "build-corpus": step_build_corpus,
    "langchain-store": step_langchain_store,
    "index": step_index,
    "evaluate": step_evaluate,
    "collapse": step_collapse,
    "diagnose": step_diagnose,
    "audit": step_audit,
    "choose-pooling": step_choose_pooling,
    "demo-report": step_demo_report,
}

JOBS: dict[str, Callable[[dict[str, Any], Path], None]] = {"reproduce_paper": job_reproduce_paper}
