"""``es-rerank tune``: score every candidate once at the largest depth and choose depth, blend and
reranker from that one pass (the selection itself is pure: :mod:`es_rerank.evaluate.tune`).
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

from ..client import Searcher
from ..errors import RerankerError, ValidationError
from ..ranking import DEFAULT_ALPHA, collapse
from ..rerankers import Reranker
from ..types import Hit
from .data import BeirData, own_document_rule
from .metrics import doc_scores, per_query, percentiles
from .records import IN_MEMORY, Record
from .runner import PRIMARY_METRIC, environment, query_ids, retrieve_candidates, warm_up
from .stats import DEFAULT_SEED, PairedComparison, paired_comparison
from .tune import (BLENDS, DEFAULT_ALPHAS, DEFAULT_DEPTHS, Grid, KFoldResult, Recommendation, Setting, TuneResult,
                   apply_setting, check_metric, cross_validate, evaluate_grid, select)

logger = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
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


@dataclass(frozen=True, kw_only=True)
class TuneReport(Record):
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
    details: TuneDetails | None = field(default=None, repr=False, compare=False, metadata=IN_MEMORY)

    @property
    def chosen(self) -> Setting:
        """The best cell on all queries (deployed only when the recommendation says it helps)."""
        return self.result.best.setting

    @property
    def comparison(self) -> PairedComparison:
        """The comparison the advice rests on: held-out with folds, else on the tuning queries."""
        return self.kfold.comparison if self.kfold is not None else self.result.comparison


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
    qids = query_ids(data, max_queries)
    if folds is not None and (isinstance(folds, bool) or not isinstance(folds, int) or not 2 <= folds <= len(qids)):
        raise ValidationError(f"folds must be an integer from 2 to the number of queries ({len(qids)}), got {folds!r}")
    s = searcher.settings
    rule = own_document_rule(data, exclude_own)
    started = time.perf_counter()
    warm_up(searcher, data.queries[qids[0]], list(rerankers.values()), fusion)
    deep = _DeepPass(rerankers, max_depth=kept[-1])
    for i, qid in enumerate(qids, start=1):
        deep.query(searcher, qid, data.queries[qid], fusion=fusion, exclude_own=rule.exclude)
        if on_query is not None:
            on_query(i, len(qids))
    qrels = {q: data.qrels[q] for q in qids}
    t0 = time.perf_counter()
    g = evaluate_grid(deep.candidates, deep.scores, qrels, metric=metric, depths=kept, alphas=alphas,
                      max_depth=deep.max_depth, rank_constant=s.rank_constant, blends=blends)
    result = select(g, seed=seed)
    kfold = cross_validate(g, k=folds, seed=seed) if folds is not None else None
    grid_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    latency = deep.latency(searcher, result.best.setting, {q: data.queries[q] for q in qids[:latency_queries]})
    timings = {"retrieval_s": deep.retrieval_s, "deep_pass_s": deep.seconds, "grid_s": grid_s,
               "latency_s": time.perf_counter() - t0}
    logger.info("tune: deep pass %.1fs (%d pairs), grid %.1fs (%d settings)", deep.seconds, deep.pairs, grid_s,
                len(g.settings))
    return TuneReport(
        data=str(data.root), split=data.split, queries=len(qids), metric=metric, folds=folds, depths=kept,
        dropped_depths=dropped_depths, max_depth=deep.max_depth, rerankers=tuple(rerankers),
        alphas=tuple(float(a) for a in alphas), result=result, kfold=kfold,
        recommendation=kfold.recommendation if kfold is not None else result.recommendation, latency=latency,
        deep_pass=deep.record(len(qids)), timings=timings, own_document=rule.to_dict(deep.found),
        environment=environment(searcher, fusion=fusion or s.fusion), wall_seconds=time.perf_counter() - started,
        details=TuneDetails(texts={q: data.queries[q] for q in qids}, qrels=qrels, grid=g,
                            candidates=deep.candidates, scores=deep.scores, rank_constant=s.rank_constant))


class _DeepPass:
    """The one deep rerank pass: hybrid candidates at the largest depth, every one scored by every reranker."""

    def __init__(self, rerankers: Mapping[str, Reranker], *, max_depth: int):
        self.rerankers, self.max_depth = rerankers, max_depth
        self.candidates: dict[str, tuple[Hit, ...]] = {}
        self.scores: dict[str, dict[str, tuple[float, ...]]] = {name: {} for name in rerankers}
        self.rerank_ms: dict[str, list[float]] = {name: [] for name in rerankers}
        self.retrieval_s = self.seconds = 0.0
        self.found = self.pairs = 0

    def query(self, searcher: Searcher, qid: str, query: str, *, fusion: str | None, exclude_own: bool) -> None:
        """Retrieve the query's candidates once and have every reranker score each of them once."""
        t0 = time.perf_counter()
        hits, _, dropped = retrieve_candidates(searcher, qid, query, depth=self.max_depth, mode="hybrid",
                                               fusion=fusion, exclude_own=exclude_own)
        self.retrieval_s += time.perf_counter() - t0
        self.found += dropped
        self.candidates[qid] = tuple(hits)
        for name, reranker in self.rerankers.items():
            t0 = time.perf_counter()
            out = searcher.rerank(query, hits, final_k=None, reranker=reranker, blend="none", results="chunks")
            self.seconds += time.perf_counter() - t0
            if hits and not out.reranked:
                raise RerankerError(f"reranker {name} failed on query {qid!r}: {out.error}", reranker=name)
            self.scores[name][qid] = _scores_in_order(hits, out.hits)
            self.rerank_ms[name].append(out.rerank_ms)
            self.pairs += len(hits)

    def latency(self, searcher: Searcher, chosen: Setting, queries: Mapping[str, str]) -> dict[str, Any]:
        """What ``chosen`` adds per query through the rerank step, measured on ``queries``; and the estimate."""
        measured: list[float] = []
        for qid, query in queries.items():
            out = searcher.rerank(query, self.candidates[qid][:chosen.depth], final_k=None,
                                  reranker=self.rerankers[chosen.reranker], blend=chosen.blend,
                                  blend_weight=DEFAULT_ALPHA if chosen.alpha is None else chosen.alpha,
                                  results="documents")
            measured.append(out.rerank_ms)
        deep_p50 = percentiles(self.rerank_ms[chosen.reranker])["p50"]
        return {"setting": chosen.label(), "depth": chosen.depth, "queries": len(measured), **percentiles(measured),
                "estimated_ms_p50": deep_p50 * chosen.depth / self.max_depth}

    def record(self, queries: int) -> dict[str, Any]:
        """The ``deep_pass`` entry of results.json."""
        return {"queries": queries, "max_depth": self.max_depth, "pairs": self.pairs, "seconds": self.seconds,
                "rerank_ms": {name: percentiles(v) for name, v in self.rerank_ms.items()}}


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
