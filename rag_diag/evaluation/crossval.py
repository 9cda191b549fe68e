"""Grouped k-fold cross-validation over queries for choosing a candidate and tuning its parameters in-fold.

Picking the configuration with the best mean score on the same queries it is reported on overstates
that score (the winner's curse: with many configurations, the best one is partly the luckiest). Here
each query q is scored only by a configuration chosen without q:

    folds F_1 … F_k partition the queries; for fold i,  c_i = argmax_c mean_{q ∉ F_i} m_c(q)
    out-of-fold score of q ∈ F_i:  oof(q) = m_{c_i}(q);   OOF mean = (1/Q) Σ_q oof(q)
    in-sample best:  c* = argmax_c mean_q m_c(q);   optimism = mean_q m_{c*}(q) − OOF mean

where m is the primary metric (other metrics are carried along for the chosen configurations).
Ties go to the configuration listed first (list the baseline first to prefer it).

Queries that share a relevant document are never split across folds: groups are the connected
components of the bipartite graph query — relevant document (so q1 ~ q2 via d1 and q2 ~ q3 via d2 put
q1, q2, q3 in one group); a query with no relevant document is a group of its own. Folds come from
:class:`sklearn.model_selection.GroupKFold` with ``shuffle=True`` and a seed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import sparse
from scipy.sparse import csgraph

from rag_diag.corpora.io import Qrels
from rag_diag.errors import RagDiagError

ParameterValue = float | int | str


@dataclass(frozen=True)
class Configuration:
    """A candidate system and its parameter setting, e.g. ``Configuration("fusion-wsum", (("weight", 0.3),))``."""

    candidate: str
    parameters: tuple[tuple[str, ParameterValue], ...] = ()

    @property
    def label(self) -> str:
        """``candidate`` or ``candidate[name=value,...]``."""
        if not self.parameters:
            return self.candidate
        return f"{self.candidate}[{','.join(f'{name}={value}' for name, value in self.parameters)}]"


@dataclass(frozen=True)
class FoldChoice:
    """The configuration chosen on the training part of one fold and its scores (primary metric)."""

    fold: int
    chosen: Configuration
    train_mean: float
    test_mean: float
    n_train: int
    n_test: int


@dataclass(frozen=True)
class CrossValResult:
    """Out-of-fold scores of every query, the per-fold choices and the in-sample best for comparison."""

    query_ids: tuple[str, ...]
    primary: str
    fold_of: np.ndarray
    chosen_for: tuple[Configuration, ...]
    out_of_fold: dict[str, np.ndarray]
    folds: tuple[FoldChoice, ...]
    in_sample_best: Configuration
    in_sample: dict[str, float]

    @property
    def out_of_fold_mean(self) -> float:
        """(1/Q) Σ_q oof(q) of the primary metric."""
        return float(self.out_of_fold[self.primary].mean())

    @property
    def optimism(self) -> float:
        """In-sample best mean − out-of-fold mean (primary metric): how much the in-sample pick overstates."""
        return self.in_sample[self.primary] - self.out_of_fold_mean


def query_groups(query_ids: Sequence[str], qrels: Qrels) -> np.ndarray:
    """Group label per query: connected components of the query — relevant-document graph.

    Args:
        query_ids: the queries, in the order of the per-query arrays.
        qrels: relevance judgements; a document with score > 0 links the queries judging it relevant.

    Returns:
        Integer labels, equal for queries that must stay in one fold.
    """
    documents: dict[str, int] = {}
    rows: list[int] = []
    columns: list[int] = []
    for row, query_id in enumerate(query_ids):
        for doc_id in sorted(qrels.relevant(query_id)):
            rows.append(row)
            columns.append(len(query_ids) + documents.setdefault(doc_id, len(documents)))
    size = len(query_ids) + len(documents)
    graph = sparse.coo_array((np.ones(len(rows)), (rows, columns)), shape=(size, size))
    _, labels = csgraph.connected_components(graph, directed=False)
    return labels[: len(query_ids)]


def assign_folds(groups: np.ndarray, k: int = 5, seed: int = 0) -> np.ndarray:
    """Fold index (0 … k−1) per query; every group lies in one fold (seeded ``GroupKFold``)."""
    from sklearn.model_selection import GroupKFold

    groups = np.asarray(groups)
    distinct = len(np.unique(groups))
    if k < 2 or distinct < k:
        raise RagDiagError(f"{k}-fold cross-validation needs k ≥ 2 and at least k query groups, got {distinct}")
    folds = np.empty(len(groups), dtype=np.int64)
    splitter = GroupKFold(n_splits=k, shuffle=True, random_state=seed)
    for fold, (_, test) in enumerate(splitter.split(np.zeros((len(groups), 1)), groups=groups)):
        folds[test] = fold
    return folds


def best_configuration(scores: Mapping[Configuration, np.ndarray], rows: np.ndarray) -> Configuration:
    """argmax_c mean(scores[c][rows]); ties go to the first configuration listed."""
    configurations = list(scores)
    means = [float(np.asarray(scores[c])[rows].mean()) for c in configurations]
    return configurations[int(np.argmax(means))]


def _check(per_query: Mapping[Configuration, Mapping[str, np.ndarray]], n_queries: int, primary: str) -> list[str]:
    """The metrics every configuration has (primary first); arrays must have one finite value per query (a NaN
    mean would win every argmax)."""
    if not per_query:
        raise RagDiagError("cross-validation needs at least one configuration")
    metrics = set.intersection(*(set(values) for values in per_query.values()))
    if primary not in metrics:
        raise RagDiagError(f"primary metric '{primary}' is missing for some configuration")
    for configuration, values in per_query.items():
        for metric in metrics:
            if len(values[metric]) != n_queries:
                raise RagDiagError(
                    f"{configuration.label}: {len(values[metric])} values of {metric} for {n_queries} queries"
                )
            missing = int(np.sum(~np.isfinite(np.asarray(values[metric], dtype=np.float64))))
            if missing:
                raise RagDiagError(f"{configuration.label}: {missing} values of {metric} are NaN or infinite")
    return [primary, *sorted(metrics - {primary})]


def _fold(
    per_query: Mapping[Configuration, Mapping[str, np.ndarray]], primary: str, folds: np.ndarray, fold: int
) -> FoldChoice:
    primary_scores = {c: np.asarray(values[primary], dtype=np.float64) for c, values in per_query.items()}
    train, test = np.flatnonzero(folds != fold), np.flatnonzero(folds == fold)
    chosen = best_configuration(primary_scores, train)
    return FoldChoice(
        fold=fold,
        chosen=chosen,
        train_mean=float(primary_scores[chosen][train].mean()),
        test_mean=float(primary_scores[chosen][test].mean()),
        n_train=len(train),
        n_test=len(test),
    )


def cross_validate(
    per_query: Mapping[Configuration, Mapping[str, np.ndarray]],
    query_ids: Sequence[str],
    groups: np.ndarray,
    primary: str,
    k: int = 5,
    seed: int = 0,
) -> CrossValResult:
    """Choose a configuration on k − 1 folds by the mean primary metric, score it on the held-out fold.

    Args:
        per_query: {configuration: {metric: per-query values}}, every array in the order of ``query_ids``;
            the iteration order breaks ties (first wins).
        query_ids: the queries.
        groups: group label per query (:func:`query_groups`); a group never spans two folds.
        primary: the metric the choice maximises.
        k: number of folds.
        seed: seed of the fold assignment.

    Returns:
        Per-query out-of-fold values of every metric, the choice per fold, the in-sample best.
    """
    metrics = _check(per_query, len(query_ids), primary)
    folds = assign_folds(groups, k, seed)
    choices = tuple(_fold(per_query, primary, folds, fold) for fold in range(k))
    chosen_for = tuple(choices[fold].chosen for fold in folds)
    out_of_fold = {
        metric: np.array([per_query[c][metric][q] for q, c in enumerate(chosen_for)], dtype=np.float64)
        for metric in metrics
    }
    everything = np.arange(len(query_ids))
    best = best_configuration({c: np.asarray(v[primary], dtype=np.float64) for c, v in per_query.items()}, everything)
    return CrossValResult(
        query_ids=tuple(query_ids),
        primary=primary,
        fold_of=folds,
        chosen_for=chosen_for,
        out_of_fold=out_of_fold,
        folds=choices,
        in_sample_best=best,
        in_sample={metric: float(np.mean(per_query[best][metric])) for metric in metrics},
    )

