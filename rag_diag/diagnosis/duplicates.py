"""Near-duplicate clusters of a kNN graph, and the per-document / per-cluster audit tables.

Near-duplicate clusters are the connected components (scipy) of the undirected graph whose edges are
the kNN pairs (x, y) with mean-pooled cosine ≥ NEAR_DUPLICATE_COS. Only kNN pairs are edges, so a
document with more than k near-duplicates still joins their cluster through the ones it does list.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import polars as pl
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from rag_diag.collapse.knn import KnnResult
from rag_diag.collapse.table import id_column
from rag_diag.diagnosis.hubness import Hubness

NEAR_DUPLICATE_COS = 0.95
"""kNN pairs with mean-pooled cosine at or above this are near-duplicate edges: on the licence notices
this separates one-word variants ("version 2" / "version 3") from merely related notices."""


def near_duplicate_clusters(
    n_docs: int, doc_a: np.ndarray, doc_b: np.ndarray, cos: np.ndarray, threshold: float = NEAR_DUPLICATE_COS
) -> np.ndarray:
    """Cluster id per document (−1 for a document with no near-duplicate), from kNN pairs with cos ≥ threshold.

    Clusters of two or more documents are numbered 0, 1, … by decreasing size, then by smallest row.
    """
    keep = np.asarray(cos) >= threshold
    a, b = np.asarray(doc_a)[keep], np.asarray(doc_b)[keep]
    graph = coo_matrix((np.ones(len(a)), (a, b)), shape=(n_docs, n_docs))
    _, labels = connected_components(graph, directed=False)
    sizes = np.bincount(labels)
    first_row = np.full(len(sizes), n_docs)
    np.minimum.at(first_row, labels, np.arange(n_docs))
    multi = np.flatnonzero(sizes >= 2)
    ordered = multi[np.lexsort((first_row[multi], -sizes[multi]))]
    renumber = np.full(len(sizes), -1, dtype=np.int64)
    renumber[ordered] = np.arange(len(ordered))
    return renumber[labels]


def documents_frame(
    doc_ids: list[str], labels: list[Any], knn: KnnResult, hubs: Hubness, cluster_ids: np.ndarray
) -> pl.DataFrame:
    """One row per document: collapse rates, top confuser, k-occurrence, cluster, concentration, label."""
    ids = pl.Series(doc_ids, dtype=pl.String)
    nearest_cos = knn.pairs.cos.reshape(len(ids), -1).max(axis=1)
    clusters = pl.Series(np.asarray(cluster_ids, dtype=np.int64))
    return pl.DataFrame({
        "doc_id": ids,
        "collapse_mean": knn.collapse_mean.astype(np.float64),
        "collapse_max": knn.collapse_max.astype(np.float64),
        "top_confuser": id_column(ids, knn.top_confuser),
        "k_occurrence": hubs.k_occurrence,
        "cluster_id": clusters.set(clusters < 0, None),
        "concentration": knn.text_stats.concentration.astype(np.float64),
        "n_tokens": knn.text_stats.n_tokens.astype(np.int64),
        "nearest_cos": nearest_cos.astype(np.float64),
        "label": pl.Series([None if v is None else str(v) for v in labels], dtype=pl.String),
    })


def clusters_frame(documents: pl.DataFrame, knn: KnnResult, cluster_ids: np.ndarray) -> pl.DataFrame:
    """One row per near-duplicate cluster: size, members, weakest / strongest edge, distinct labels."""
    in_cluster = (cluster_ids[knn.doc_a] >= 0) & (cluster_ids[knn.doc_a] == cluster_ids[knn.doc_b])
    in_cluster &= knn.pairs.cos >= NEAR_DUPLICATE_COS
    edges = pl.DataFrame({"cluster_id": cluster_ids[knn.doc_a][in_cluster], "cos": knn.pairs.cos[in_cluster]})
    edge_stats = edges.group_by("cluster_id").agg(pl.col("cos").min().alias("min_edge_cos"),
                                                  pl.col("cos").max().alias("max_edge_cos"))
    members = (
        documents.filter(pl.col("cluster_id").is_not_null())
        .group_by("cluster_id")
        .agg(pl.len().alias("size"), pl.col("doc_id").alias("doc_ids"),
             pl.col("label").drop_nulls().unique().sort().alias("labels"),
             pl.col("collapse_mean").mean().alias("mean_collapse"))
    )
    schema: dict[str, Any] = {
        "cluster_id": pl.Int64, "size": pl.UInt32, "doc_ids": pl.List(pl.String), "labels": pl.List(pl.String),
        "mean_collapse": pl.Float64, "min_edge_cos": pl.Float64, "max_edge_cos": pl.Float64}
    if members.is_empty():
        return pl.DataFrame(schema=schema)
    table = members.join(edge_stats.with_columns(pl.col("cluster_id").cast(pl.Int64)), on="cluster_id", how="left")
    return table.select(list(schema)).sort("cluster_id").cast(pl.Schema(schema))
