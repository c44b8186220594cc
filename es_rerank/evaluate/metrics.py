"""Ranking metrics over BEIR-style runs, computed with ranx.

A run is ``dict[query_id, dict[doc_id, score]]``; metrics never mutate it. When
documents are chunked, a document takes the rank of its best chunk.
"""

from __future__ import annotations

import warnings
from typing import Iterable, Mapping, Sequence

import numpy as np

from ..errors import ValidationError


def doc_scores(doc_ids_in_rank_order: Iterable[str]) -> dict[str, float]:
    """Turn a ranked list of chunk-level doc ids into strictly decreasing doc scores.

    A document's rank is that of its first (best) chunk; scores are ``n - rank`` so the
    order survives any metric library's sort, with no ties.

    Example:
        >>> doc_scores(["d2", "d1", "d2", "d3"])
        {'d2': 3.0, 'd1': 2.0, 'd3': 1.0}
    """
    order: list[str] = []
    seen: set[str] = set()
    for d in doc_ids_in_rank_order:
        if d not in seen:
            seen.add(d)
            order.append(d)
    n = len(order)
    return {d: float(n - i) for i, d in enumerate(order)}


def metric_names(ks: Sequence[int], *, final_k: int, depth: int | None = None) -> list[str]:
    """ranx metric names: recall at each k, hit rate at final_k and at the depth, nDCG@10, MRR@10."""
    names = [f"recall@{k}" for k in ks]
    names += [f"hit_rate@{k}" for k in sorted({final_k, max(ks) if depth is None else depth})]
    return names + ["ndcg@10", "mrr@10"]


def evaluate_run(
    qrels: Mapping[str, Mapping[str, int]],
    run: Mapping[str, Mapping[str, float]],
    metrics: Sequence[str],
) -> dict[str, float]:
    """Mean metrics of ``run`` against ``qrels`` (ranx names: ``recall@5``, ``ndcg@10`` ...).

    Queries of ``qrels`` absent from ``run`` count as zero; an empty ranking is allowed.

    Raises:
        ValidationError: ``qrels`` is empty or a run value is not a mapping.
    """
    if not qrels:
        raise ValidationError("qrels is empty: nothing to evaluate")
    for q, docs in run.items():
        if not isinstance(docs, Mapping):
            raise ValidationError(f"run[{q!r}] must map doc ids to scores, got {type(docs).__name__}")
    from ranx import Qrels, Run, evaluate

    # ranx wants every query present; copy, never mutate the caller's structures
    qrels_copy = {q: {d: int(g) for d, g in docs.items()} for q, docs in qrels.items()}
    run_copy = {q: {d: float(s) for d, s in run.get(q, {}).items()} for q in qrels_copy}
    # ranx refuses empty rankings: give such queries a placeholder that matches nothing
    for q, docs in run_copy.items():
        if not docs:
            docs["__no_result__"] = 0.0
    with warnings.catch_warnings():
        # ranx's numba kernels warn about an int cast that cannot overflow at these sizes
        warnings.simplefilter("ignore")
        scores = evaluate(Qrels(qrels_copy), Run(run_copy), list(metrics), make_comparable=True)
    if isinstance(scores, float):
        scores = {metrics[0]: scores}
    return {m: float(v) for m, v in scores.items()}


def percentiles(values_ms: Sequence[float]) -> dict[str, float]:
    """p50 and p95 of latencies in milliseconds (0 for an empty list)."""
    if not values_ms:
        return {"p50": 0.0, "p95": 0.0, "mean": 0.0}
    arr = np.asarray(values_ms, dtype=float)
    return {"p50": float(np.percentile(arr, 50)), "p95": float(np.percentile(arr, 95)), "mean": float(arr.mean())}
