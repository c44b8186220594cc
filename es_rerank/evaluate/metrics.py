"""Ranking metrics over BEIR-style runs, computed with ranx (or, without it, :mod:`.plain_metrics`).

A run is ``dict[query_id, dict[doc_id, score]]``; metrics never mutate it. When
documents are chunked, a document takes the rank of its best chunk.
"""

from __future__ import annotations

import warnings
from typing import Iterable, Mapping, Sequence

import numpy as np

from ..errors import ValidationError
from ..ranking import collapse
from ..types import Hit


def doc_scores(ranked: Iterable[Hit | str]) -> dict[str, float]:
    """A run entry for one query: strictly decreasing scores of its documents, best first.

    ``ranked`` holds hits in their final order (or the doc ids of those hits, for callers
    that only kept ids). Documents come from :func:`es_rerank.ranking.collapse`, the same
    chunk-to-document step a search uses, so a document takes the rank of its first (best)
    chunk. Scores are ``n - rank`` so the order survives any metric library's sort, with no
    ties. An already collapsed list gives the same result.

    Example:
        >>> doc_scores(["d2", "d1", "d2", "d3"])
        {'d2': 3.0, 'd1': 2.0, 'd3': 1.0}
    """
    hits = [_id_hit(item, rank) if isinstance(item, str) else item
            for rank, item in enumerate(ranked, start=1)]
    docs = collapse(hits)
    n = len(docs)
    return {h.doc_id: float(n - i) for i, h in enumerate(docs)}


def _id_hit(doc_id: str, rank: int) -> Hit:
    """A bare hit standing for a doc id, so that ids take the same collapse path as hits."""
    return Hit(chunk_id=f"{doc_id}@{rank}", doc_id=doc_id, chunk=0, title="", text="", metadata={},
               retrieval_score=0.0, retrieval_rank=rank)


def metric_names(ks: Sequence[int], *, final_k: int, depth: int | None = None) -> list[str]:
    """ranx metric names: recall at each k, hit rate at final_k and at the depth, nDCG@10, MRR@10."""
    names = [f"recall@{k}" for k in ks]
    names += [f"hit_rate@{k}" for k in sorted({final_k, max(ks) if depth is None else depth})]
    return names + ["ndcg@10", "mrr@10"]


def have_ranx() -> bool:
    """Whether ranx (the ``eval`` extra) is installed; without it :mod:`.plain_metrics` computes."""
    try:
        import ranx  # noqa: F401
    except ImportError:
        return False
    return True


def _check(qrels: Mapping[str, Mapping[str, int]], run: Mapping[str, Mapping[str, float]]) -> None:
    if not qrels:
        raise ValidationError("qrels is empty: nothing to evaluate")
    for q, docs in run.items():
        if not isinstance(docs, Mapping):
            raise ValidationError(f"run[{q!r}] must map doc ids to scores, got {type(docs).__name__}")


def _ranx_inputs(qrels: Mapping[str, Mapping[str, int]], run: Mapping[str, Mapping[str, float]]):
    """Validated copies of ``qrels`` and ``run`` as ranx wants them (every judged query present)."""
    _check(qrels, run)
    from ranx import Qrels, Run

    # ranx wants every query present; copy, never mutate the caller's structures
    qrels_copy = {q: {d: int(g) for d, g in docs.items()} for q, docs in qrels.items()}
    run_copy = {q: {d: float(s) for d, s in run.get(q, {}).items()} for q in qrels_copy}
    # ranx refuses empty rankings: give such queries a placeholder that matches nothing
    for q, docs in run_copy.items():
        if not docs:
            docs["__no_result__"] = 0.0
    return Qrels(qrels_copy), Run(run_copy)


def _ranx_evaluate(qrels_obj, run_obj, metrics: Sequence[str]):
    from ranx import evaluate

    with warnings.catch_warnings():
        # ranx's numba kernels warn about an int cast that cannot overflow at these sizes
        warnings.simplefilter("ignore")
        return evaluate(qrels_obj, run_obj, list(metrics), make_comparable=True)


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
    if not have_ranx():
        from . import plain_metrics

        _check(qrels, run)
        return {m: float(np.mean(list(plain_metrics.per_query(qrels, run, m).values()))) for m in metrics}
    qrels_obj, run_obj = _ranx_inputs(qrels, run)
    scores = _ranx_evaluate(qrels_obj, run_obj, metrics)
    if isinstance(scores, float):
        scores = {metrics[0]: scores}
    return {m: float(v) for m, v in scores.items()}


def per_query(
    qrels: Mapping[str, Mapping[str, int]],
    run: Mapping[str, Mapping[str, float]],
    metric: str,
) -> dict[str, float]:
    """One metric of ``run`` for each judged query (the values :func:`evaluate_run` averages).

    Every query of ``qrels`` gets a value, in ``qrels`` order; a query absent from ``run``
    or with an empty ranking scores 0. Run entries for unjudged queries are ignored.

    Args:
        qrels: ``query_id -> doc_id -> gain``.
        run: ``query_id -> doc_id -> score`` (see :func:`doc_scores`).
        metric: A ranx metric name such as ``ndcg@10`` or ``recall@20``.

    Returns:
        ``query_id -> value``, plain floats.

    Raises:
        ValidationError: ``qrels`` is empty, a run value is not a mapping, or ``metric``
            is not a single metric name.

    Example:
        >>> per_query({"q1": {"d1": 1}, "q2": {"d2": 1}}, {"q1": {"d1": 1.0}}, "recall@1")
        {'q1': 1.0, 'q2': 0.0}
    """
    if not isinstance(metric, str) or not metric:
        raise ValidationError(f"metric must be one metric name such as 'ndcg@10', got {metric!r}")
    if not have_ranx():
        from . import plain_metrics

        _check(qrels, run)
        return plain_metrics.per_query(qrels, run, metric)
    qrels_obj, run_obj = _ranx_inputs(qrels, run)
    _ranx_evaluate(qrels_obj, run_obj, [metric])
    # ranx keeps each query's value in the run it evaluated, keyed by query id
    values = run_obj.scores[metric]
    return {q: float(values[q]) for q in qrels}


def percentiles(values_ms: Sequence[float]) -> dict[str, float]:
    """p50 and p95 of latencies in milliseconds (0 for an empty list)."""
    if not values_ms:
        return {"p50": 0.0, "p95": 0.0, "mean": 0.0}
    arr = np.asarray(values_ms, dtype=float)
    return {"p50": float(np.percentile(arr, 50)), "p95": float(np.percentile(arr, 95)), "mean": float(arr.mean())}
