"""Run a BEIR split through every setup and measure quality and latency.

``run_eval`` compares BM25, kNN, hybrid and hybrid + each reranker at one depth;
``run_sweep`` reranks at several depths to find where reranking pays; ``run_tune``
scores every candidate once at the largest depth and chooses depth, blend and reranker
from that one pass. Every row is compared with hybrid query by query (a paired
bootstrap with a fixed seed, :mod:`es_rerank.evaluate.stats`), so a difference comes
with its wins, ties, losses and confidence interval.

Queries run in file order and nothing is sampled, so the same index and models give
the same quality numbers every time. Reranking goes through
:meth:`es_rerank.client.Searcher.rerank`, the step a search uses.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import logging
import math
import os
import platform
import time
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Mapping, Sequence

from ..client import Searcher
from ..errors import RerankerError, ValidationError
from ..ranking import DEFAULT_ALPHA, collapse
from ..rerankers import Reranker
from ..types import Hit, Usage
from .data import BeirData, drop_own_document, own_document_rule
from .metrics import doc_scores, evaluate_run, metric_names, per_query, percentiles
from .stats import DEFAULT_SEED, PairedComparison, paired_comparison
from .tune import (
    BLENDS,
    DEFAULT_ALPHAS,
    DEFAULT_DEPTHS,
    Grid,
    KFoldResult,
    Recommendation,
    Setting,
    TuneResult,
    apply_setting,
    check_metric,
    cross_validate,
    evaluate_grid,
    select,
)

logger = logging.getLogger(__name__)

RETRIEVAL_MODES = ("bm25", "knn", "hybrid")
BASELINE = "hybrid"
PRIMARY_METRIC = "ndcg@10"
VIEW_DOCS = 10
"""Documents kept per query and setup for the report's per-query view."""

SMALLEST_GAIN = 0.01
"""The smallest nDCG@10 gain worth reranking for: when no interval excludes 0 and a gain
of this size is not ruled out either, the queries are too few to tell."""
FEW_QUERIES = 30
"""Under this many queries a bootstrap interval is itself rough; the advice says so."""


def _check_max_queries(max_queries: int | None) -> None:
    if max_queries is not None and (isinstance(max_queries, bool) or not isinstance(max_queries, int)
                                    or max_queries < 1):
        raise ValidationError(f"max_queries must be an integer >= 1, got {max_queries!r}")


def _query_ids(data: BeirData, max_queries: int | None) -> list[str]:
    _check_max_queries(max_queries)
    qids = list(data.queries)
    return qids[:max_queries] if max_queries is not None else qids


def _view_hits(hits: Sequence[Hit], limit: int = VIEW_DOCS) -> tuple[Hit, ...]:
    """The top ``limit`` documents of a ranking, lean enough to keep for every query (no texts)."""
    return tuple(replace(h, text="", passages=()) for h in collapse(hits, limit=limit))


def compare_runs(
    qrels: Mapping[str, Mapping[str, int]],
    baseline: Mapping[str, Mapping[str, float]],
    run: Mapping[str, Mapping[str, float]],
    metric: str,
    *,
    seed: int = DEFAULT_SEED,
) -> PairedComparison:
    """``run`` against ``baseline`` on ``metric``, paired over the judged queries.

    Example:
        >>> qrels = {"q1": {"a": 1}, "q2": {"b": 1}}
        >>> base = {"q1": {"x": 2.0, "a": 1.0}, "q2": {"x": 2.0, "b": 1.0}}
        >>> new = {"q1": {"a": 2.0, "x": 1.0}, "q2": {"b": 2.0, "x": 1.0}}
        >>> c = compare_runs(qrels, base, new, "recall@1", seed=0)
        >>> c.mean_delta, (c.wins, c.ties, c.losses)
        (1.0, (2, 0, 0))
    """
    return paired_comparison(per_query(qrels, baseline, metric), per_query(qrels, run, metric), metric=metric,
                             seed=seed)


# -- environment ----------------------------------------------------------------------------

def environment(searcher: Searcher, **extra: Any) -> dict[str, Any]:
    """Where and with what a result was produced, for the record (secrets never included)."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    s = searcher.settings
    return {
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "engine": searcher.engine.name,
        "embedding_model": s.embedding_model,
        "embedding_backend": s.embedding_backend,
        "reranker_backend": s.reranker_backend,
        "index": s.index,
        "rank_constant": s.rank_constant,
        **_library_versions(),
        **extra,
    }


def _library_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("onnxruntime", "openvino", "torch"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            pass
    return out


def _warm_up(searcher: Searcher, query: str, rerankers: Sequence[Reranker], fusion: str | None) -> None:
    """One untimed query: loads the models and detects fusion, so no timing carries that cost."""
    hits = searcher.retrieve(query, depth=5, mode="hybrid", fusion=fusion).hits
    for reranker in rerankers:
        searcher.rerank(query, hits, final_k=None, reranker=reranker, blend="none", results="chunks")


def _candidates(searcher: Searcher, qid: str, query: str, *, depth: int, mode: str, fusion: str | None,
                exclude_own: bool) -> tuple[list[Hit], float, bool]:
    """First-stage hits (without the query's own document when asked), retrieval ms, and whether it was there."""
    first = searcher.retrieve(query, depth=depth, mode=mode, fusion=fusion)
    hits, dropped = drop_own_document(qid, first.hits) if exclude_own else (list(first.hits), False)
    return hits, first.timings.retrieval_ms, dropped


@dataclass(frozen=True)
class QueryDetails:
    """Per-query material for the HTML report (never written to results.json).

    Attributes:
        texts: ``query_id -> query text``.
        qrels: The judgments of the evaluated queries.
        values: ``setup -> query_id ->`` the primary metric (nDCG@10) of that query.
        rankings: ``setup -> query_id ->`` its top documents (no texts).
        runs: ``row -> query_id -> doc_id -> score``: every row's whole ranking, the run its
            metrics were computed from (written as TREC run files, :mod:`es_rerank.evaluate.trec`).
    """

    texts: Mapping[str, str]
    qrels: Mapping[str, Mapping[str, int]]
    values: Mapping[str, Mapping[str, float]]
    rankings: Mapping[str, Mapping[str, tuple[Hit, ...]]]
    runs: Mapping[str, Mapping[str, Mapping[str, float]]] = field(default_factory=dict)


# -- eval ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Row:
    """One setup's numbers: mean metrics, latency percentiles (ms) and its comparison with hybrid.

    Attributes:
        setup: ``bm25``, ``knn``, ``hybrid`` or ``hybrid+<reranker>``.
        metrics: Metric name -> mean over the queries.
        retrieval_ms: Retrieval latency percentiles.
        rerank_ms: Latency reranking adds (zeros for retrieval rows).
        tokens_per_query: LLM tokens per query (LLM rerankers only).
        fallbacks: Candidates the LLM reranker could not score.
        comparisons: Metric -> this setup against hybrid, paired over the queries (empty
            for hybrid itself).
    """

    setup: str
    metrics: Mapping[str, float]
    retrieval_ms: Mapping[str, float]
    rerank_ms: Mapping[str, float] = field(default_factory=lambda: percentiles([]))
    tokens_per_query: float | None = None
    fallbacks: int | None = None
    comparisons: Mapping[str, PairedComparison] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"setup": self.setup, "metrics": dict(self.metrics), "retrieval_ms": dict(self.retrieval_ms),
                "rerank_ms": dict(self.rerank_ms), "tokens_per_query": self.tokens_per_query,
                "fallbacks": self.fallbacks,
                "comparisons": {m: c.to_dict() for m, c in self.comparisons.items()}}


@dataclass(frozen=True)
class EvalReport:
    """Every setup on one split at one depth.

    Attributes:
        data: The collection folder.
        split: The qrels split.
        queries: Queries evaluated.
        depth: Candidates retrieved (and reranked).
        final_k: The k the gap analysis speaks of.
        blend: How the reranker's order was blended with retrieval's.
        blend_weight: The reranker's weight in a ``linear`` blend.
        rows: One per setup: bm25, knn, hybrid, then hybrid + each reranker.
        gap: The gap analysis (numbers and a ``summary`` sentence).
        own_document: The own-document rule applied (:meth:`OwnDocumentRule.to_dict`).
        environment: Where and with what the numbers were produced.
        wall_seconds: Wall time (the CLI replaces it with the command's, indexing included).
        details: Per-query material for the HTML report (not in :meth:`to_dict`).
    """

    data: str
    split: str
    queries: int
    depth: int
    final_k: int
    blend: str
    blend_weight: float
    rows: tuple[Row, ...]
    gap: Mapping[str, Any]
    own_document: Mapping[str, Any]
    environment: Mapping[str, Any]
    wall_seconds: float = 0.0
    details: QueryDetails | None = field(default=None, repr=False, compare=False)

    def row(self, setup: str) -> Row:
        for r in self.rows:
            if r.setup == setup:
                return r
        raise KeyError(setup)

    @property
    def compared(self) -> tuple[str, ...]:
        """The metrics every row is compared on: recall@final_k and nDCG@10."""
        return tuple(dict.fromkeys((f"recall@{self.final_k}", PRIMARY_METRIC)))

    def to_dict(self) -> dict[str, Any]:
        return {"data": self.data, "split": self.split, "queries": self.queries, "depth": self.depth,
                "final_k": self.final_k, "blend": self.blend, "blend_weight": self.blend_weight,
                "rows": [r.to_dict() for r in self.rows], "gap": dict(self.gap),
                "own_document": dict(self.own_document), "environment": dict(self.environment),
                "wall_seconds": self.wall_seconds}


def run_eval(
    searcher: Searcher,
    data: BeirData,
    *,
    depth: int = 50,
    final_k: int = 5,
    rerankers: Mapping[str, Reranker] | None = None,
    blend: str | None = None,
    blend_weight: float | None = None,
    fusion: str | None = None,
    max_queries: int | None = None,
    exclude_own: bool | None = None,
    seed: int = DEFAULT_SEED,
    on_query: Callable[[int, int], None] | None = None,
) -> EvalReport:
    """Evaluate BM25, kNN, hybrid and hybrid + each reranker on one split.

    Every reranker reorders the same hybrid candidates (all ``depth`` of them), so
    recall@depth is the same before and after and recall@final_k shows the lift. Every
    row is compared with hybrid on recall@final_k and nDCG@10, query by query.

    Args:
        searcher: Searcher over an index holding the collection's corpus.
        data: Queries and judgments.
        depth: Candidates retrieved (and reranked); any depth >= 1. Defaults to 50.
        final_k: The k the gap analysis speaks of, <= depth. Defaults to 5.
        rerankers: Setup name -> reranker. Defaults to none (retrieval rows only).
        blend: ``none``, ``rrf`` or ``linear``. Defaults to the searcher's settings.
        blend_weight: The reranker's weight of a ``linear`` blend. Defaults to the settings'.
        fusion: Hybrid fusion (``auto``, ``server``, ``client``). Defaults to the settings'.
        max_queries: Evaluate only the first N queries (file order). Defaults to all.
        exclude_own: Drop each query's own document from its rankings (see
            :func:`es_rerank.evaluate.data.own_document_rule`). Defaults to deciding from the data.
        seed: Seed of the bootstrap intervals. Defaults to 0.
        on_query: Progress callback ``(done, total)``.

    Returns:
        The report: one row per setup, the gap analysis and the environment.

    Raises:
        ValidationError: ``depth`` < 1, ``final_k`` outside 1..depth, bad ``max_queries``.
    """
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < 1:
        raise ValidationError(f"depth must be an integer >= 1, got {depth!r}")
    if isinstance(final_k, bool) or not isinstance(final_k, int) or not 1 <= final_k <= depth:
        raise ValidationError(f"final_k must be between 1 and depth ({depth}), got {final_k!r}")
    s = searcher.settings
    blend = s.blend if blend is None else blend
    blend_weight = s.blend_weight if blend_weight is None else blend_weight
    rerankers = dict(rerankers or {})
    rule = own_document_rule(data, exclude_own)
    started = time.perf_counter()
    qids = _query_ids(data, max_queries)
    setups = list(RETRIEVAL_MODES) + [f"hybrid+{name}" for name in rerankers]
    runs: dict[str, dict[str, dict[str, float]]] = {x: {} for x in setups}
    rankings: dict[str, dict[str, tuple[Hit, ...]]] = {x: {} for x in setups if x.startswith(BASELINE)}
    retrieval_ms: dict[str, list[float]] = {x: [] for x in setups}
    rerank_ms: dict[str, list[float]] = {x: [] for x in setups}
    usage: dict[str, Usage | None] = {name: None for name in rerankers}
    found = 0
    _warm_up(searcher, data.queries[qids[0]], list(rerankers.values()), fusion)
    for i, qid in enumerate(qids, start=1):
        query = data.queries[qid]
        for mode in RETRIEVAL_MODES:
            hits, ms, dropped = _candidates(searcher, qid, query, depth=depth, mode=mode, fusion=fusion,
                                            exclude_own=rule.exclude)
            runs[mode][qid] = doc_scores(hits)
            retrieval_ms[mode].append(ms)
            if mode != BASELINE:
                continue
            found += dropped
            rankings[BASELINE][qid] = _view_hits(hits)
            for name, reranker in rerankers.items():
                setup = f"hybrid+{name}"
                out = searcher.rerank(query, hits, final_k=None, reranker=reranker, blend=blend,
                                      blend_weight=blend_weight, results="chunks")
                runs[setup][qid] = doc_scores(out.hits)
                rankings[setup][qid] = _view_hits(out.hits)
                retrieval_ms[setup].append(ms)
                rerank_ms[setup].append(out.rerank_ms)
                if out.usage is not None:
                    usage[name] = out.usage if usage[name] is None else usage[name] + out.usage
        if on_query is not None:
            on_query(i, len(qids))
    ks = sorted(k for k in {1, 3, 5, 10, final_k, depth} if k <= depth)
    names = metric_names(ks, final_k=final_k, depth=depth)
    qrels = {q: data.qrels[q] for q in qids}
    compared = tuple(dict.fromkeys((f"recall@{final_k}", PRIMARY_METRIC)))
    base_values = {m: per_query(qrels, runs[BASELINE], m) for m in compared}
    values: dict[str, dict[str, float]] = {}
    rows = []
    for setup in setups:
        comparisons = {}
        if setup != BASELINE:
            for m in compared:
                comparisons[m] = paired_comparison(base_values[m], per_query(qrels, runs[setup], m), metric=m,
                                                   seed=seed)
        if setup in rankings:
            values[setup] = (base_values[PRIMARY_METRIC] if setup == BASELINE
                             else per_query(qrels, runs[setup], PRIMARY_METRIC))
        name = setup.removeprefix("hybrid+")
        used = usage.get(name) if setup.startswith("hybrid+") else None
        rows.append(Row(setup, evaluate_run(qrels, runs[setup], names), percentiles(retrieval_ms[setup]),
                        percentiles(rerank_ms[setup]),
                        used.tokens / len(qids) if used is not None and used.requests else None,
                        used.fallbacks if used is not None and used.requests else None, comparisons))
    report = EvalReport(
        str(data.root), data.split, len(qids), depth, final_k, blend, blend_weight, tuple(rows), {},
        rule.to_dict(found), environment(searcher, fusion=fusion or s.fusion, blend=blend, blend_weight=blend_weight),
        details=QueryDetails({q: data.queries[q] for q in qids}, qrels, values, rankings, runs),
    )
    return replace(report, gap=gap_analysis(report), wall_seconds=time.perf_counter() - started)


def _interval(c: PairedComparison) -> str:
    if c.ci_low is None or c.ci_high is None:
        return "no interval from 1 query"
    return f"{c.confidence:.0%} CI {c.ci_low:+.3f} to {c.ci_high:+.3f}"


def verdict(c: PairedComparison) -> str:
    """``better``, ``worse`` or ``within noise``: what the interval says."""
    return "better" if c.better else "worse" if c.excludes_zero else "within noise"


def _count(n: int, one: str, many: str) -> str:
    return f"{n} {one if n == 1 else many}"


def paired_phrase(c: PairedComparison) -> str:
    """``+0.012, 95% CI -0.004 to +0.029; 41 wins, 230 ties, 29 losses: within noise``."""
    return (f"{c.mean_delta:+.3f}, {_interval(c)}; {_count(c.wins, 'win', 'wins')}, {_count(c.ties, 'tie', 'ties')}, "
            f"{_count(c.losses, 'loss', 'losses')}: {verdict(c)}")


def gap_analysis(report: EvalReport) -> dict[str, Any]:
    """The depth-vs-k gap of the hybrid retriever, and what each reranker made of it, with its noise."""
    k, d = report.final_k, report.depth
    hybrid = report.row(BASELINE).metrics
    r_k, r_d = hybrid[f"recall@{k}"], hybrid[f"recall@{d}"]
    h_k, h_d = hybrid[f"hit_rate@{k}"], hybrid[f"hit_rate@{d}"]
    gap: dict[str, Any] = {
        f"hybrid_recall@{k}": r_k, f"hybrid_recall@{d}": r_d,
        f"hybrid_hit_rate@{k}": h_k, f"hybrid_hit_rate@{d}": h_d,
        "predicted_max_lift": r_d - r_k,
        "rerankers": {},
    }
    sentences = [
        f"Without reranking, a relevant document is in the hybrid top {d} for {h_d:.0%} of queries "
        + (f"but ranked into the top {k} for only {h_k:.0%}" if h_k < h_d
           else f"and ranked into the top {k} for {h_k:.0%}")
        + f" (recall@{d} {r_d:.3f} vs recall@{k} {r_k:.3f}); "
        f"a perfect reranker could lift recall@{k} by at most {r_d - r_k:+.3f}."
    ]
    for row in report.rows:
        if not row.setup.startswith("hybrid+"):
            continue
        after = row.metrics[f"recall@{k}"]
        lift = after - r_k
        share = lift / (r_d - r_k) if r_d > r_k else 0.0
        recall_c, ndcg_c = row.comparisons[f"recall@{k}"], row.comparisons[PRIMARY_METRIC]
        gap["rerankers"][row.setup] = {
            "recall_after": after, "lift": lift, "share_of_gap": share, "added_ms_p50": row.rerank_ms["p50"],
            "recall_verdict": verdict(recall_c), "ndcg_verdict": verdict(ndcg_c),
            "recall_ci": [recall_c.ci_low, recall_c.ci_high], "ndcg_ci": [ndcg_c.ci_low, ndcg_c.ci_high],
        }
        sentences.append(
            f"{row.setup} moved recall@{k} from {r_k:.3f} to {after:.3f} ({paired_phrase(recall_c)}; "
            f"{share:.0%} of the gap) and nDCG@10 from {ndcg_c.baseline_mean:.3f} to {ndcg_c.setup_mean:.3f} "
            f"({paired_phrase(ndcg_c)}) for {row.rerank_ms['p50']:.0f} ms added per query (p50), "
            f"over {recall_c.queries} queries."
        )
    gap["summary"] = " ".join(sentences)
    return gap


# -- sweep ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class SweepPoint:
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

    def to_dict(self) -> dict[str, Any]:
        return {"depth": self.depth, "retrieval": dict(self.retrieval), "reranked": dict(self.reranked),
                "retrieval_ms": dict(self.retrieval_ms), "rerank_ms": dict(self.rerank_ms),
                "comparison": self.comparison.to_dict(), "recall_comparison": self.recall_comparison.to_dict()}


@dataclass(frozen=True)
class SweepAdvice:
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

    def to_dict(self) -> dict[str, Any]:
        return {"depth": self.depth, "helps": self.helps, "worse_depths": list(self.worse_depths),
                "too_few_queries": self.too_few_queries, "sentence": self.sentence}


@dataclass(frozen=True)
class SweepReport:
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
    advice: SweepAdvice
    own_document: Mapping[str, Any]
    environment: Mapping[str, Any]
    wall_seconds: float = 0.0
    details: QueryDetails | None = field(default=None, repr=False, compare=False)

    @property
    def recommended_depth(self) -> int | None:
        return self.advice.depth

    def to_dict(self) -> dict[str, Any]:
        return {"data": self.data, "split": self.split, "queries": self.queries, "final_k": self.final_k,
                "reranker": self.reranker, "model": self.model, "blend": self.blend,
                "blend_weight": self.blend_weight, "tolerance": self.tolerance,
                "points": [p.to_dict() for p in self.points], "recommended_depth": self.advice.depth,
                "advice": self.advice.to_dict(), "own_document": dict(self.own_document),
                "environment": dict(self.environment), "wall_seconds": self.wall_seconds}


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
        return SweepAdvice(depth, True, worse, False, sentence + rough)
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
    return SweepAdvice(None, False, worse, too_few, " ".join(parts) + rough)


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
    qids = _query_ids(data, max_queries)
    qrels = {q: data.qrels[q] for q in qids}
    key = f"recall@{final_k}"
    names = list(dict.fromkeys([key, PRIMARY_METRIC, "mrr@10"]))
    points = []
    values: dict[str, dict[str, float]] = {}
    rankings: dict[str, dict[str, tuple[Hit, ...]]] = {}
    runs: dict[str, dict[str, dict[str, float]]] = {}
    total = len(qids) * len(depths)
    done = found = 0
    _warm_up(searcher, data.queries[qids[0]], [reranker], fusion)
    for depth in depths:
        before: dict[str, dict[str, float]] = {}
        after: dict[str, dict[str, float]] = {}
        rankings[f"hybrid@{depth}"], rankings[f"reranked@{depth}"] = {}, {}
        r_ms, rr_ms = [], []
        for qid in qids:
            query = data.queries[qid]
            hits, ms, dropped = _candidates(searcher, qid, query, depth=depth, mode="hybrid", fusion=fusion,
                                            exclude_own=rule.exclude)
            if dropped and depth == depths[-1]:
                found += 1
            before[qid] = doc_scores(hits)
            out = searcher.rerank(query, hits, final_k=None, reranker=reranker, blend=blend,
                                  blend_weight=blend_weight, results="chunks")
            after[qid] = doc_scores(out.hits)
            rankings[f"hybrid@{depth}"][qid] = _view_hits(hits)
            rankings[f"reranked@{depth}"][qid] = _view_hits(out.hits)
            r_ms.append(ms)
            rr_ms.append(out.rerank_ms)
            done += 1
            if on_query is not None:
                on_query(done, total)
        base_ndcg, new_ndcg = per_query(qrels, before, PRIMARY_METRIC), per_query(qrels, after, PRIMARY_METRIC)
        values[f"hybrid@{depth}"], values[f"reranked@{depth}"] = base_ndcg, new_ndcg
        runs[f"hybrid@{depth}"], runs[f"reranked@{depth}"] = before, after
        points.append(SweepPoint(
            depth, evaluate_run(qrels, before, names), evaluate_run(qrels, after, names), percentiles(r_ms),
            percentiles(rr_ms), paired_comparison(base_ndcg, new_ndcg, metric=PRIMARY_METRIC, seed=seed),
            compare_runs(qrels, before, after, key, seed=seed)))
    advice = sweep_advice(points, final_k=final_k, tolerance=tolerance)
    return SweepReport(
        str(data.root), data.split, len(qids), final_k, reranker_name, model, blend, blend_weight, tolerance,
        tuple(points), advice, rule.to_dict(found),
        environment(searcher, fusion=fusion or s.fusion, blend=blend, blend_weight=blend_weight),
        time.perf_counter() - started, QueryDetails({q: data.queries[q] for q in qids}, qrels, values, rankings,
                                                    runs))


# -- tune ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class TuneDetails:
    """What the HTML report needs beyond the numbers (never written to results.json).

    Attributes:
        texts: ``query_id -> query text``.
        qrels: The judgments of the evaluated queries.
        grid: Every setting's per-query values.
        candidates: ``query_id ->`` hybrid candidates at the largest depth.
        scores: ``reranker -> query_id ->`` one score per candidate (NaN: unusable).
        rank_constant: k of the ``rrf`` blend used.
    """

    texts: Mapping[str, str]
    qrels: Mapping[str, Mapping[str, int]]
    grid: Grid
    candidates: Mapping[str, tuple[Hit, ...]]
    scores: Mapping[str, Mapping[str, tuple[float, ...]]]
    rank_constant: int


@dataclass(frozen=True)
class TuneReport:
    """The tuning run: the grid's choice, its comparison with hybrid, what it costs, and the advice.

    Attributes:
        data: The collection folder.
        split: The qrels split tuned on.
        queries: Judged queries used.
        metric: The metric tuned for.
        folds: k of the cross-validation, or None when choosing on all queries (a dev split).
        depths: Depths in the grid.
        dropped_depths: Depths left out: above the candidates' depth or below the metric's cut-off.
        max_depth: The depth of the one deep rerank pass.
        rerankers: Rerankers in the grid.
        alphas: Reranker weights of the ``linear`` blend.
        result: The choice on all queries (every cell's mean, the best, its comparison).
        kfold: The held-out estimate, when ``folds`` is set.
        recommendation: The advice (from the held-out comparison with folds).
        latency: Latency the chosen setting adds, measured through the rerank step: ``depth``,
            ``queries`` and ``p50``/``p95``/``mean`` ms; ``estimated_ms_p50`` from the deep pass.
        deep_pass: ``queries``, ``pairs``, ``seconds`` and per-query ``rerank_ms`` percentiles of the
            one deep rerank pass, per reranker.
        timings: Seconds spent retrieving, in the deep pass, evaluating the grid, and measuring latency.
        own_document: The own-document rule applied.
        environment: Where and with what.
        wall_seconds: Wall time.
        details: Per-query material (not in :meth:`to_dict`).
    """

    data: str
    split: str
    queries: int
    metric: str
    folds: int | None
    depths: tuple[int, ...]
    dropped_depths: tuple[int, ...]
    max_depth: int
    rerankers: tuple[str, ...]
    alphas: tuple[float, ...]
    result: TuneResult
    kfold: KFoldResult | None
    recommendation: Recommendation
    latency: Mapping[str, Any]
    deep_pass: Mapping[str, Any]
    timings: Mapping[str, float]
    own_document: Mapping[str, Any]
    environment: Mapping[str, Any]
    wall_seconds: float = 0.0
    details: TuneDetails | None = field(default=None, repr=False, compare=False)

    @property
    def chosen(self) -> Setting:
        """The best cell on all queries (deployed only when the recommendation says it helps)."""
        return self.result.best.setting

    @property
    def comparison(self) -> PairedComparison:
        """The comparison the advice rests on: held-out with folds, else on the tuning queries."""
        return self.kfold.comparison if self.kfold is not None else self.result.comparison

    def to_dict(self) -> dict[str, Any]:
        return {"data": self.data, "split": self.split, "queries": self.queries, "metric": self.metric,
                "folds": self.folds, "depths": list(self.depths), "dropped_depths": list(self.dropped_depths),
                "max_depth": self.max_depth, "rerankers": list(self.rerankers), "alphas": list(self.alphas),
                "result": self.result.to_dict(), "kfold": None if self.kfold is None else self.kfold.to_dict(),
                "recommendation": self.recommendation.to_dict(), "latency": dict(self.latency),
                "deep_pass": dict(self.deep_pass), "timings": dict(self.timings),
                "own_document": dict(self.own_document), "environment": dict(self.environment),
                "wall_seconds": self.wall_seconds}


def metric_cutoff(metric: str) -> int:
    """The K of ``ndcg@K`` / ``recall@K``."""
    return int(check_metric(metric).split("@", 1)[1])


def tune_depths(depths: Sequence[int], metric: str) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """``(kept, dropped)``: a depth below the metric's K is dropped (a search at that depth
    returns fewer than K documents, so it would be compared unfairly).

    Raises:
        ValidationError: A depth that is not an integer >= 1, a repeated depth, or none kept.

    Example:
        >>> tune_depths((10, 20, 30, 50, 100), "recall@20")
        ((20, 30, 50, 100), (10,))
    """
    for d in depths:
        if isinstance(d, bool) or not isinstance(d, int) or d < 1:
            raise ValidationError(f"depths must be integers >= 1, got {d!r}")
    if len(set(depths)) != len(depths):
        raise ValidationError(f"depths must not repeat, got {list(depths)}")
    k = metric_cutoff(metric)
    kept = tuple(sorted(d for d in depths if d >= k))
    if not kept:
        raise ValidationError(f"no depth of {sorted(depths)} is >= {k}, the cut-off of {metric}: add a deeper one")
    return kept, tuple(sorted(d for d in depths if d < k))


def _scores_in_order(hits: Sequence[Hit], ranked: Sequence[Hit]) -> tuple[float, ...]:
    """Each candidate's rerank score, matched by chunk id (never by position); NaN when unusable."""
    by_id = {h.chunk_id: h.rerank_score for h in ranked}
    missing = [h.chunk_id for h in hits if h.chunk_id not in by_id]
    if missing or len(by_id) != len(hits):
        raise RerankerError(f"the rerank step returned {len(ranked)} results for {len(hits)} candidates "
                            f"(missing {missing[:3]})")
    return tuple(math.nan if by_id[h.chunk_id] is None else float(by_id[h.chunk_id]) for h in hits)


def run_tune(
    searcher: Searcher,
    data: BeirData,
    *,
    rerankers: Mapping[str, Reranker],
    metric: str = PRIMARY_METRIC,
    depths: Sequence[int] = DEFAULT_DEPTHS,
    alphas: Sequence[float] = DEFAULT_ALPHAS,
    folds: int | None = None,
    fusion: str | None = None,
    max_queries: int | None = None,
    exclude_own: bool | None = None,
    latency_queries: int = 20,
    seed: int = DEFAULT_SEED,
    on_query: Callable[[int, int], None] | None = None,
    blends: Sequence[str] = BLENDS,
) -> TuneReport:
    """Choose depth, blend and reranker from one deep rerank pass, or advise keeping hybrid.

    For every judged query, the hybrid candidates are retrieved once at the largest depth
    and each reranker scores every (query, candidate) pair once, through the searcher's
    rerank step. A shallower depth is a prefix of that list, so the whole grid (depths x
    blend none, rrf, linear by alpha x rerankers) is evaluated from these scores
    (:func:`es_rerank.evaluate.tune.evaluate_grid`) without another model call. The best
    cell is compared with hybrid (paired bootstrap); with ``folds``, each fold's choice is
    measured on queries it was not chosen on (:func:`es_rerank.evaluate.tune.cross_validate`).
    Finally the chosen setting's added latency is measured on ``latency_queries`` queries.

    Args:
        searcher: Searcher over an index holding the collection's corpus.
        data: Queries and judgments (a dev split; or any split with ``folds``).
        rerankers: Name (as in ``ES_RERANK_RERANKER``) -> reranker; at least one.
        metric: ``ndcg@K`` or ``recall@K``. Defaults to ``ndcg@10``.
        depths: Depths to try; those below the metric's K are dropped. Defaults to 10, 20, 30, 50, 100.
        alphas: Reranker weights of the ``linear`` blend. Defaults to 0.1 .. 0.9.
        folds: k-fold cross-validation over the queries; None chooses on all of them. Defaults to None.
        fusion: Hybrid fusion. Defaults to the settings'.
        max_queries: Only the first N queries. Defaults to all.
        exclude_own: Drop each query's own document. Defaults to deciding from the data.
        latency_queries: Queries the chosen setting's latency is measured on (0: estimate it
            from the deep pass). Defaults to 20.
        seed: Seed of the folds and of the bootstrap. Defaults to 0.
        on_query: Progress callback ``(done, total)`` over the deep pass.
        blends: The blends to try. Defaults to none, rrf and linear.

    Raises:
        ValidationError: Bad metric, depths, folds or arguments.
        RerankerError: A reranker failed on a query (failures are not tolerated while tuning).
    """
    if not rerankers:
        raise ValidationError("tune needs at least one reranker")
    if isinstance(latency_queries, bool) or not isinstance(latency_queries, int) or latency_queries < 0:
        raise ValidationError(f"latency_queries must be an integer >= 0, got {latency_queries!r}")
    kept, dropped_depths = tune_depths(depths, metric)
    qids = _query_ids(data, max_queries)
    if folds is not None and (isinstance(folds, bool) or not isinstance(folds, int) or not 2 <= folds <= len(qids)):
        raise ValidationError(f"folds must be an integer from 2 to the number of queries ({len(qids)}), got {folds!r}")
    s = searcher.settings
    rule = own_document_rule(data, exclude_own)
    max_depth = kept[-1]
    started = time.perf_counter()
    _warm_up(searcher, data.queries[qids[0]], list(rerankers.values()), fusion)
    candidates: dict[str, tuple[Hit, ...]] = {}
    scores: dict[str, dict[str, tuple[float, ...]]] = {name: {} for name in rerankers}
    rerank_ms: dict[str, list[float]] = {name: [] for name in rerankers}
    retrieval_s = deep_s = 0.0
    found = pairs = 0
    for i, qid in enumerate(qids, start=1):
        query = data.queries[qid]
        t0 = time.perf_counter()
        hits, _, dropped = _candidates(searcher, qid, query, depth=max_depth, mode="hybrid", fusion=fusion,
                                       exclude_own=rule.exclude)
        retrieval_s += time.perf_counter() - t0
        found += dropped
        candidates[qid] = tuple(hits)
        for name, reranker in rerankers.items():
            t0 = time.perf_counter()
            out = searcher.rerank(query, hits, final_k=None, reranker=reranker, blend="none", results="chunks")
            deep_s += time.perf_counter() - t0
            if hits and not out.reranked:
                raise RerankerError(f"reranker {name} failed on query {qid!r}: {out.error}", reranker=name)
            scores[name][qid] = _scores_in_order(hits, out.hits)
            rerank_ms[name].append(out.rerank_ms)
            pairs += len(hits)
        if on_query is not None:
            on_query(i, len(qids))
    qrels = {q: data.qrels[q] for q in qids}
    t0 = time.perf_counter()
    g = evaluate_grid(candidates, scores, qrels, metric=metric, depths=kept, alphas=alphas, max_depth=max_depth,
                      rank_constant=s.rank_constant, blends=blends)
    result = select(g, seed=seed)
    kfold = cross_validate(g, k=folds, seed=seed) if folds is not None else None
    grid_s = time.perf_counter() - t0
    recommendation = kfold.recommendation if kfold is not None else result.recommendation
    chosen = result.best.setting
    t0 = time.perf_counter()
    measured: list[float] = []
    for qid in qids[:latency_queries]:
        out = searcher.rerank(data.queries[qid], candidates[qid][:chosen.depth], final_k=None,
                              reranker=rerankers[chosen.reranker], blend=chosen.blend,
                              blend_weight=DEFAULT_ALPHA if chosen.alpha is None else chosen.alpha,
                              results="documents")
        measured.append(out.rerank_ms)
    latency_s = time.perf_counter() - t0
    deep_p50 = percentiles(rerank_ms[chosen.reranker])["p50"]
    latency = {"setting": chosen.label(), "depth": chosen.depth, "queries": len(measured), **percentiles(measured),
               "estimated_ms_p50": deep_p50 * chosen.depth / max_depth}
    deep_pass = {"queries": len(qids), "max_depth": max_depth, "pairs": pairs, "seconds": deep_s,
                 "rerank_ms": {name: percentiles(v) for name, v in rerank_ms.items()}}
    timings = {"retrieval_s": retrieval_s, "deep_pass_s": deep_s, "grid_s": grid_s, "latency_s": latency_s}
    logger.info("tune: deep pass %.1fs (%d pairs), grid %.1fs (%d settings)", deep_s, pairs, grid_s,
                len(g.settings))
    return TuneReport(
        str(data.root), data.split, len(qids), metric, folds, kept, dropped_depths, max_depth, tuple(rerankers),
        tuple(float(a) for a in alphas), result, kfold, recommendation, latency, deep_pass, timings,
        rule.to_dict(found), environment(searcher, fusion=fusion or s.fusion), time.perf_counter() - started,
        TuneDetails({q: data.queries[q] for q in qids}, qrels, g, candidates, scores, s.rank_constant))


# -- the pipeline a tuning run recommends ------------------------------------------------------------

EVIDENCE_METRICS = ("ndcg@10", "recall@10")
"""What a pipeline's evidence reports against hybrid, whatever the run was tuned for."""


def question_fingerprint(texts: Mapping[str, str], qrels: Mapping[str, Mapping[str, int]]) -> str:
    """``sha256:<hex>`` of a question set: the query texts and their judgments, in id order."""
    h = hashlib.sha256()
    for qid in sorted(texts):
        h.update(json.dumps([qid, texts[qid], sorted((qrels.get(qid) or {}).items())]).encode())
    return "sha256:" + h.hexdigest()


def pipeline_evidence(report: TuneReport, setting: Setting, *, seed: int = DEFAULT_SEED) -> dict[str, Any]:
    """What ``setting`` was chosen on: the question set, and its paired comparisons with hybrid.

    ``tuned`` is the comparison the advice rests on (held out across folds when there were
    folds) and is given only for the best cell; ``metrics`` holds nDCG@10 and recall@10 of
    ``setting`` against hybrid on the tuning queries (the same candidates and scores).

    Raises:
        ValidationError: The report has no per-query details (one read back from results.json).
    """
    d = report.details
    if d is None:
        raise ValidationError("this tuning report has no per-query details; run tune again to apply its choice")
    hybrid, chosen = {}, {}
    for qid, hits in d.candidates.items():
        hybrid[qid] = doc_scores(hits)
        scores = None if setting.is_baseline else d.scores[setting.reranker][qid]
        chosen[qid] = doc_scores(collapse(apply_setting(hits, scores, setting, rank_constant=d.rank_constant)))
    metrics = {}
    for m in EVIDENCE_METRICS:
        metrics[m] = paired_comparison(per_query(d.qrels, hybrid, m), per_query(d.qrels, chosen, m), metric=m,
                                       seed=seed).to_dict(with_deltas=False)
    tuned = report.comparison.to_dict(with_deltas=False) if setting == report.chosen else None
    return {
        "questions": {"data": report.data, "split": report.split, "queries": report.queries,
                      "fingerprint": question_fingerprint(d.texts, d.qrels)},
        "setting": setting.label(), "tuned_for": report.metric, "folds": report.folds,
        "held_out": report.folds is not None, "tuned": tuned, "metrics": metrics,
        # what the best reranked cell did, when something else (hybrid) is applied
        "best_tried": None if setting == report.chosen else {
            "setting": report.chosen.label(), **report.comparison.to_dict(with_deltas=False)},
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }


def worse_than_hybrid(evidence: Mapping[str, Any]) -> list[str]:
    """The comparisons of ``evidence`` whose interval lies wholly below 0 (each as one sentence)."""
    out = []
    for c in [evidence.get("tuned"), *(evidence.get("metrics") or {}).values()]:
        if c and c.get("excludes_zero") and c.get("mean_delta", 0) < 0:
            out.append(f"{c['metric']} {c['setup_mean']:.4f} vs hybrid {c['baseline_mean']:.4f}, delta "
                       f"{c['mean_delta']:+.4f} ({c['confidence']:.0%} CI {c['ci_low']:+.4f} to {c['ci_high']:+.4f})")
    return out
