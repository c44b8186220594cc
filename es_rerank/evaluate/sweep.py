"""``es-rerank sweep``: rerank at several depths to find where reranking pays (recall and quality
per depth, the plateau, and advice on the depth to use).
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

from ..client import Searcher
from ..errors import ValidationError
from ..rerankers import Reranker
from ..types import Hit
from .data import BeirData, own_document_rule
from .metrics import doc_scores, evaluate_run, per_query, percentiles
from .records import IN_MEMORY, Record
from .runner import (FEW_QUERIES, PRIMARY_METRIC, SMALLEST_GAIN, QueryDetails, compare_runs, environment, query_ids,
                     retrieve_candidates, view_hits, warm_up)
from .stats import DEFAULT_SEED, PairedComparison, paired_comparison, paired_phrase

logger = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class SweepPoint(Record):
    """One depth: hybrid and reranked metrics, latencies, and reranked vs hybrid paired.

    Attributes:
        depth: Candidates retrieved and reranked.
        retrieval: Metrics of hybrid at this depth (no reranking).
        reranked: Metrics of hybrid + the reranker at this depth.
        retrieval_ms: Retrieval latency percentiles.
        rerank_ms: Latency reranking adds.
        comparison: Reranked against hybrid on nDCG@10.
        recall_comparison: Reranked against hybrid on recall@final_k.
    """

    depth: int
    retrieval: Mapping[str, float]
    reranked: Mapping[str, float]
    retrieval_ms: Mapping[str, float]
    rerank_ms: Mapping[str, float]
    comparison: PairedComparison
    recall_comparison: PairedComparison


@dataclass(frozen=True, kw_only=True)
class SweepAdvice(Record):
    """What the sweep recommends.

    Attributes:
        depth: The recommended depth, or None when no depth beats not reranking.
        helps: Reranking beats hybrid (nDCG@10 interval above 0) at some depth.
        worse_depths: Depths where reranking is worse than none, beyond noise.
        too_few_queries: No depth is decided either way and a gain of
            :data:`SMALLEST_GAIN` cannot be ruled out: the queries are too few to tell.
        sentence: The advice in words.
    """

    depth: int | None
    helps: bool
    worse_depths: tuple[int, ...]
    too_few_queries: bool
    sentence: str


@dataclass(frozen=True, kw_only=True)
class SweepReport(Record):
    """Hybrid and hybrid + one reranker at several depths.

    Attributes:
        data: The collection folder.
        split: The qrels split.
        queries: Queries evaluated.
        final_k: The k of recall@k.
        reranker: The reranker's kind (``cross-encoder`` ...).
        model: The reranker's model.
        blend: How the reranker's order was blended with retrieval's.
        blend_weight: The reranker's weight in a ``linear`` blend.
        tolerance: Recall@k tolerance of the recommended depth.
        points: One per depth, ascending.
        recommended_depth: ``advice.depth`` (set from it).
        advice: The recommendation.
        own_document: The own-document rule applied.
        environment: Where and with what the numbers were produced.
        wall_seconds: Wall time.
        details: Per-query material of every depth for the HTML report (not in :meth:`to_dict`):
            setups ``hybrid@<depth>`` and ``reranked@<depth>``.
    """

    data: str
    split: str
    queries: int
    final_k: int
    reranker: str
    model: str
    blend: str
    blend_weight: float
    tolerance: float
    points: tuple[SweepPoint, ...]
    recommended_depth: int | None = field(init=False)
    advice: SweepAdvice
    own_document: Mapping[str, Any]
    environment: Mapping[str, Any]
    wall_seconds: float = 0.0
    details: QueryDetails | None = field(default=None, repr=False, compare=False, metadata=IN_MEMORY)

    def __post_init__(self) -> None:
        object.__setattr__(self, "recommended_depth", self.advice.depth)


def plateau_depth(depths: Sequence[int], recalls: Sequence[float], tolerance: float) -> int:
    """The smallest depth whose recall is within ``tolerance`` of the best.

    Example:
        >>> plateau_depth([20, 50, 100], [0.70, 0.745, 0.75], 0.01)
        50
    """
    if not depths or len(depths) != len(recalls):
        raise ValidationError("depths and recalls must be non-empty and of equal length")
    best = max(recalls)
    return min(d for d, r in zip(depths, recalls) if r >= best - tolerance)


def _depth_list(depths: Sequence[int]) -> str:
    return ", ".join(str(d) for d in depths)


def sweep_advice(points: Sequence[SweepPoint], *, final_k: int, tolerance: float) -> SweepAdvice:
    """Recommend a depth only where reranking beats not reranking; otherwise say why not.

    A depth qualifies when reranked nDCG@10 beats hybrid at that depth with a paired
    bootstrap interval above 0. Among qualifying depths, the smallest whose reranked
    recall@``final_k`` is within ``tolerance`` of their best is recommended. With none,
    the advice says whether reranking is worse than none somewhere, and whether the
    queries are too few to tell (no interval excludes 0 and a gain of
    :data:`SMALLEST_GAIN` is not ruled out).

    Raises:
        ValidationError: No points.
    """
    if not points:
        raise ValidationError("sweep advice needs at least one depth")
    n = points[0].comparison.queries
    key = f"recall@{final_k}"
    better = [p for p in points if p.comparison.better]
    worse = tuple(p.depth for p in points if p.comparison.excludes_zero and p.comparison.mean_delta < 0)
    undecided = [p for p in points if not p.comparison.excludes_zero]
    # an interval that reaches SMALLEST_GAIN leaves a worthwhile gain possible at that depth
    open_gain = [p for p in undecided if p.comparison.ci_high is None or p.comparison.ci_high >= SMALLEST_GAIN]
    rough = f" With only {n} queries, treat every interval as rough." if n < FEW_QUERIES else ""
    if better:
        depth = plateau_depth([p.depth for p in better], [p.reranked[key] for p in better], tolerance)
        p = next(x for x in better if x.depth == depth)
        c = p.comparison
        best = max(x.reranked[key] for x in better)
        sentence = (f"Recommended depth: {depth}: reranking beats no reranking there (nDCG@10 {c.baseline_mean:.3f} "
                    f"→ {c.setup_mean:.3f}, {paired_phrase(c)} over {n} queries), and it is the smallest such depth "
                    f"whose reranked recall@{final_k} is within {tolerance:.3f} of their best ({best:.3f}).")
        if worse:
            sentence += f" At depth {_depth_list(worse)} reranking is worse than none."
        return SweepAdvice(depth=depth, helps=True, worse_depths=worse, too_few_queries=False,
                           sentence=sentence + rough)
    parts = [f"No depth beats not reranking: nDCG@10 with reranking is not better than without at any depth "
             f"with 95% confidence ({n} queries, paired bootstrap)."]
    if worse:
        detail = "; ".join(f"depth {p.depth}: {paired_phrase(p.comparison)}" for p in points if p.depth in worse)
        parts.append(f"Reranking is worse than none at depth {_depth_list(worse)} ({detail}).")
    too_few = bool(open_gain)
    if too_few:
        high = max(math.inf if p.comparison.ci_high is None else p.comparison.ci_high for p in open_gain)
        reach = "cannot be bounded" if math.isinf(high) else f"of up to {high:+.3f} is not ruled out"
        parts.append(f"{n} queries are too few to tell: a gain {reach} at depth "
                     f"{_depth_list([p.depth for p in open_gain])}; measure on more judged queries "
                     "(a few hundred) before deciding.")
    else:
        parts.append(f"A gain of {SMALLEST_GAIN} nDCG@10 or more is ruled out at every depth.")
    parts.append("Keep hybrid (--reranker none)" + (" until more queries say otherwise." if too_few else "."))
    return SweepAdvice(depth=None, helps=False, worse_depths=worse, too_few_queries=too_few,
                       sentence=" ".join(parts) + rough)


def run_sweep(
    searcher: Searcher,
    data: BeirData,
    *,
    depths: Sequence[int] = (20, 50, 100),
    final_k: int = 5,
    reranker: Reranker,
    reranker_name: str = "cross-encoder",
    model: str = "",
    blend: str | None = None,
    blend_weight: float | None = None,
    tolerance: float = 0.01,
    fusion: str | None = None,
    max_queries: int | None = None,
    exclude_own: bool | None = None,
    seed: int = DEFAULT_SEED,
    on_query: Callable[[int, int], None] | None = None,
) -> SweepReport:
    """Rerank the hybrid candidates at each depth; report quality before and after, and added latency.

    Each depth retrieves anew (the RRF window equals the depth) and reranks every
    candidate with no score cache, so the latency is what a query at that depth costs.
    At each depth the reranked ranking is compared with hybrid's, query by query.

    Args:
        searcher: Searcher over an index holding the collection's corpus.
        data: Queries and judgments.
        depths: Depths to try, each >= ``final_k``. Defaults to 20, 50, 100.
        final_k: The k of recall@k. Defaults to 5.
        reranker: The reranker.
        reranker_name: Its kind, for the record. Defaults to ``cross-encoder``.
        model: Its model, named in the plot and the record. Defaults to "".
        blend: ``none``, ``rrf`` or ``linear``. Defaults to the searcher's settings.
        blend_weight: The reranker's weight of a ``linear`` blend. Defaults to the settings'.
        tolerance: Recall@k tolerance of the recommended depth. Defaults to 0.01.
        fusion: Hybrid fusion. Defaults to the settings'.
        max_queries: Only the first N queries. Defaults to all.
        exclude_own: Drop each query's own document (see :func:`run_eval`). Defaults to deciding from the data.
        seed: Seed of the bootstrap intervals. Defaults to 0.
        on_query: Progress callback ``(done, total)``.

    Raises:
        ValidationError: No depth, or a depth < ``final_k``.
    """
    depths = sorted(set(depths))
    if not depths or depths[0] < final_k:
        raise ValidationError(f"every depth must be >= final_k ({final_k}), got {depths}")
    s = searcher.settings
    blend = s.blend if blend is None else blend
    blend_weight = s.blend_weight if blend_weight is None else blend_weight
    rule = own_document_rule(data, exclude_own)
    started = time.perf_counter()
    qids = query_ids(data, max_queries)
    qrels = {q: data.qrels[q] for q in qids}
    key = f"recall@{final_k}"
    names = list(dict.fromkeys([key, PRIMARY_METRIC, "mrr@10"]))
    points = []
    values: dict[str, dict[str, float]] = {}
    rankings: dict[str, dict[str, tuple[Hit, ...]]] = {}
    runs: dict[str, dict[str, dict[str, float]]] = {}
    total = len(qids) * len(depths)
    done = found = 0
    warm_up(searcher, data.queries[qids[0]], [reranker], fusion)
    for depth in depths:
        before: dict[str, dict[str, float]] = {}
        after: dict[str, dict[str, float]] = {}
        rankings[f"hybrid@{depth}"], rankings[f"reranked@{depth}"] = {}, {}
        r_ms, rr_ms = [], []
        for qid in qids:
            query = data.queries[qid]
            hits, ms, dropped = retrieve_candidates(searcher, qid, query, depth=depth, mode="hybrid", fusion=fusion,
                                            exclude_own=rule.exclude)
            if dropped and depth == depths[-1]:
                found += 1
            before[qid] = doc_scores(hits)
            out = searcher.rerank(query, hits, final_k=None, reranker=reranker, blend=blend,
                                  blend_weight=blend_weight, results="chunks")
            after[qid] = doc_scores(out.hits)
            rankings[f"hybrid@{depth}"][qid] = view_hits(hits)
            rankings[f"reranked@{depth}"][qid] = view_hits(out.hits)
            r_ms.append(ms)
            rr_ms.append(out.rerank_ms)
            done += 1
            if on_query is not None:
                on_query(done, total)
        base_ndcg, new_ndcg = per_query(qrels, before, PRIMARY_METRIC), per_query(qrels, after, PRIMARY_METRIC)
        values[f"hybrid@{depth}"], values[f"reranked@{depth}"] = base_ndcg, new_ndcg
        runs[f"hybrid@{depth}"], runs[f"reranked@{depth}"] = before, after
        points.append(SweepPoint(
            depth=depth, retrieval=evaluate_run(qrels, before, names), reranked=evaluate_run(qrels, after, names),
            retrieval_ms=percentiles(r_ms), rerank_ms=percentiles(rr_ms),
            comparison=paired_comparison(base_ndcg, new_ndcg, metric=PRIMARY_METRIC, seed=seed),
            recall_comparison=compare_runs(qrels, before, after, key, seed=seed)))
    advice = sweep_advice(points, final_k=final_k, tolerance=tolerance)
    return SweepReport(
        data=str(data.root), split=data.split, queries=len(qids), final_k=final_k, reranker=reranker_name,
        model=model, blend=blend, blend_weight=blend_weight, tolerance=tolerance, points=tuple(points),
        advice=advice, own_document=rule.to_dict(found),
        environment=environment(searcher, fusion=fusion or s.fusion, blend=blend, blend_weight=blend_weight),
        wall_seconds=time.perf_counter() - started,
        details=QueryDetails({q: data.queries[q] for q in qids}, qrels, values, rankings, runs))


