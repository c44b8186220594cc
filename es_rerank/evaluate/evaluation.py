"""``es-rerank eval``: BM25, kNN, hybrid and hybrid + each reranker at one depth, on a BEIR split.

Every row is compared with hybrid query by query (a paired bootstrap with a fixed seed,
:mod:`es_rerank.evaluate.stats`), so a difference comes with its wins, ties, losses and
confidence interval; :func:`gap_analysis` and :func:`verdict` say what the numbers mean.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Mapping

from ..client import Searcher
from ..errors import ValidationError
from ..rerankers import Reranker
from ..types import Hit, Usage
from .data import BeirData, own_document_rule
from .metrics import doc_scores, evaluate_run, metric_names, per_query, percentiles
from .records import IN_MEMORY, Record
from .runner import (BASELINE, PRIMARY_METRIC, RETRIEVAL_MODES, QueryDetails, environment, query_ids,
                     retrieve_candidates, view_hits, warm_up)
from .stats import DEFAULT_SEED, PairedComparison, paired_comparison, paired_phrase, verdict

logger = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class Row(Record):
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


@dataclass(frozen=True, kw_only=True)
class EvalReport(Record):
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

    :meth:`to_dict` is results.json: every field but ``details``, in this order.
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
    details: QueryDetails | None = field(default=None, repr=False, compare=False, metadata=IN_MEMORY)

    def row(self, setup: str) -> Row:
        for r in self.rows:
            if r.setup == setup:
                return r
        raise KeyError(setup)

    @property
    def compared(self) -> tuple[str, ...]:
        """The metrics every row is compared on: recall@final_k and nDCG@10."""
        return tuple(dict.fromkeys((f"recall@{self.final_k}", PRIMARY_METRIC)))


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
    qids = query_ids(data, max_queries)
    warm_up(searcher, data.queries[qids[0]], list(rerankers.values()), fusion)
    passed = _Pass(RETRIEVAL_MODES + tuple(f"hybrid+{name}" for name in rerankers), rerankers)
    for i, qid in enumerate(qids, start=1):
        passed.query(searcher, qid, data.queries[qid], depth=depth, fusion=fusion, exclude_own=rule.exclude,
                     blend=blend, blend_weight=blend_weight)
        if on_query is not None:
            on_query(i, len(qids))
    qrels = {q: data.qrels[q] for q in qids}
    rows, values = passed.rows(qrels, final_k=final_k, depth=depth, seed=seed)
    report = EvalReport(
        data=str(data.root), split=data.split, queries=len(qids), depth=depth, final_k=final_k, blend=blend,
        blend_weight=blend_weight, rows=rows, gap={}, own_document=rule.to_dict(passed.found),
        environment=environment(searcher, fusion=fusion or s.fusion, blend=blend, blend_weight=blend_weight),
        details=QueryDetails({q: data.queries[q] for q in qids}, qrels, values, passed.rankings, passed.runs),
    )
    return replace(report, gap=gap_analysis(report), wall_seconds=time.perf_counter() - started)


class _Pass:
    """One pass over the queries collecting every setup's run, rankings, latencies and LLM usage."""

    def __init__(self, setups: tuple[str, ...], rerankers: Mapping[str, Reranker]):
        self.setups, self.rerankers = setups, rerankers
        self.runs: dict[str, dict[str, dict[str, float]]] = {x: {} for x in setups}
        self.rankings: dict[str, dict[str, tuple[Hit, ...]]] = {x: {} for x in setups if x.startswith(BASELINE)}
        self.retrieval_ms: dict[str, list[float]] = {x: [] for x in setups}
        self.rerank_ms: dict[str, list[float]] = {x: [] for x in setups}
        self.usage: dict[str, Usage | None] = {name: None for name in rerankers}
        self.found = 0

    def query(self, searcher: Searcher, qid: str, query: str, *, depth: int, fusion: str | None, exclude_own: bool,
              blend: str, blend_weight: float) -> None:
        """Retrieve in every mode; rerank the hybrid candidates with every reranker."""
        for mode in RETRIEVAL_MODES:
            hits, ms, dropped = retrieve_candidates(searcher, qid, query, depth=depth, mode=mode, fusion=fusion,
                                                    exclude_own=exclude_own)
            self.runs[mode][qid] = doc_scores(hits)
            self.retrieval_ms[mode].append(ms)
            if mode != BASELINE:
                continue
            self.found += dropped
            self.rankings[BASELINE][qid] = view_hits(hits)
            for name, reranker in self.rerankers.items():
                setup = f"hybrid+{name}"
                out = searcher.rerank(query, hits, final_k=None, reranker=reranker, blend=blend,
                                      blend_weight=blend_weight, results="chunks")
                self.runs[setup][qid] = doc_scores(out.hits)
                self.rankings[setup][qid] = view_hits(out.hits)
                self.retrieval_ms[setup].append(ms)
                self.rerank_ms[setup].append(out.rerank_ms)
                if out.usage is not None:
                    self.usage[name] = out.usage if self.usage[name] is None else self.usage[name] + out.usage

    def rows(self, qrels: Mapping[str, Mapping[str, int]], *, final_k: int, depth: int,
             seed: int) -> tuple[tuple[Row, ...], dict[str, dict[str, float]]]:
        """Every setup's row (compared with hybrid), and the per-query nDCG@10 of the ranked setups."""
        runs, n = self.runs, len(qrels)
        names = metric_names(sorted(k for k in {1, 3, 5, 10, final_k, depth} if k <= depth), final_k=final_k,
                             depth=depth)
        compared = tuple(dict.fromkeys((f"recall@{final_k}", PRIMARY_METRIC)))
        base_values = {m: per_query(qrels, runs[BASELINE], m) for m in compared}
        values: dict[str, dict[str, float]] = {}
        rows = []
        for setup in self.setups:
            comparisons = {}
            if setup != BASELINE:
                for m in compared:
                    comparisons[m] = paired_comparison(base_values[m], per_query(qrels, runs[setup], m), metric=m,
                                                       seed=seed)
            if setup in self.rankings:
                values[setup] = (base_values[PRIMARY_METRIC] if setup == BASELINE
                                 else per_query(qrels, runs[setup], PRIMARY_METRIC))
            used = self.usage.get(setup.removeprefix("hybrid+")) if setup.startswith("hybrid+") else None
            llm = used is not None and used.requests
            rows.append(Row(setup=setup, metrics=evaluate_run(qrels, runs[setup], names),
                            retrieval_ms=percentiles(self.retrieval_ms[setup]),
                            rerank_ms=percentiles(self.rerank_ms[setup]),
                            tokens_per_query=used.tokens / n if llm else None, fallbacks=used.fallbacks if llm else None,
                            comparisons=comparisons))
        return tuple(rows), values


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


