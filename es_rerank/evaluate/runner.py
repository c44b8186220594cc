"""Run a BEIR split through every setup and measure quality and latency.

``run_eval`` compares BM25, kNN, hybrid and hybrid + each reranker at one depth;
``run_sweep`` reranks at several depths to find where recall stops improving.
Queries run in file order and nothing is sampled, so the same index and models give
the same quality numbers every time.
"""

from __future__ import annotations

import datetime as _dt
import os
import platform
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Mapping, Sequence

from ..client import Searcher
from ..errors import ValidationError
from ..rerankers import Reranker
from ..types import Usage
from .data import BeirData
from .metrics import doc_scores, evaluate_run, metric_names, percentiles

RETRIEVAL_MODES = ("bm25", "knn", "hybrid")


@dataclass
class Row:
    """One setup's numbers: mean metrics and latency percentiles (ms)."""

    setup: str
    metrics: dict[str, float]
    retrieval_ms: dict[str, float]
    rerank_ms: dict[str, float] = field(default_factory=lambda: percentiles([]))
    tokens_per_query: float | None = None
    fallbacks: int | None = None


@dataclass
class EvalReport:
    data: str
    split: str
    queries: int
    depth: int
    final_k: int
    rows: list[Row]
    gap: dict[str, Any]
    environment: dict[str, Any]
    wall_seconds: float = 0.0

    def row(self, setup: str) -> Row:
        for r in self.rows:
            if r.setup == setup:
                return r
        raise KeyError(setup)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


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
        _rerank_all(searcher, reranker, query, hits)


def _rerank_all(searcher: Searcher, reranker: Reranker, query: str, hits) -> tuple[list, float, Usage | None]:
    """Every candidate reordered by ``reranker`` through the searcher's one rerank step."""
    out = searcher.rerank(query, hits, final_k=None, reranker=reranker, blend="none", results="chunks")
    return list(out.hits), out.rerank_ms, out.usage


def run_eval(
    searcher: Searcher,
    data: BeirData,
    *,
    depth: int = 50,
    final_k: int = 5,
    rerankers: Mapping[str, Reranker] | None = None,
    fusion: str | None = None,
    max_queries: int | None = None,
    on_query: Callable[[int, int], None] | None = None,
) -> EvalReport:
    """Evaluate BM25, kNN, hybrid and hybrid + each reranker on one split.

    Every reranker reorders the same hybrid candidates (all ``depth`` of them), so
    recall@depth is the same before and after and recall@final_k shows the lift.

    Args:
        searcher: Searcher over an index holding the collection's corpus.
        data: Queries and judgments.
        depth: Candidates retrieved (and reranked). Defaults to 50.
        final_k: The k the gap analysis speaks of. Defaults to 5.
        rerankers: Setup name -> reranker. Defaults to none (retrieval rows only).
        fusion: Hybrid fusion (``auto``, ``server``, ``client``). Defaults to the settings'.
        max_queries: Evaluate only the first N queries (file order). Defaults to all.
        on_query: Progress callback ``(done, total)``.

    Returns:
        The report: one row per setup, the gap analysis and the environment.
    """
    if not 1 <= final_k <= depth:
        raise ValidationError(f"final_k must be between 1 and depth ({depth}), got {final_k}")
    rerankers = dict(rerankers or {})
    started = time.perf_counter()
    qids = list(data.queries)[:max_queries] if max_queries is not None else list(data.queries)
    setups = list(RETRIEVAL_MODES) + [f"hybrid+{name}" for name in rerankers]
    runs: dict[str, dict[str, dict[str, float]]] = {s: {} for s in setups}
    retrieval_ms: dict[str, list[float]] = {s: [] for s in setups}
    rerank_ms: dict[str, list[float]] = {s: [] for s in setups}
    _warm_up(searcher, data.queries[qids[0]], list(rerankers.values()), fusion)
    usage: dict[str, Usage | None] = {name: None for name in rerankers}
    for i, qid in enumerate(qids, start=1):
        query = data.queries[qid]
        for mode in RETRIEVAL_MODES:
            first = searcher.retrieve(query, depth=depth, mode=mode, fusion=fusion)
            runs[mode][qid] = doc_scores(h.doc_id for h in first.hits)
            retrieval_ms[mode].append(first.timings.retrieval_ms)
            if mode == "hybrid":
                for name, reranker in rerankers.items():
                    setup = f"hybrid+{name}"
                    ordered, ms, used = _rerank_all(searcher, reranker, query, first.hits)
                    runs[setup][qid] = doc_scores(h.doc_id for h in ordered)
                    retrieval_ms[setup].append(first.timings.retrieval_ms)
                    rerank_ms[setup].append(ms)
                    if used is not None:
                        usage[name] = used if usage[name] is None else usage[name] + used
        if on_query is not None:
            on_query(i, len(qids))
    ks = sorted(k for k in {1, 3, 5, 10, final_k, depth} if k <= depth)
    names = metric_names(ks, final_k=final_k, depth=depth)
    qrels = {q: data.qrels[q] for q in qids}
    rows = [Row(s, evaluate_run(qrels, runs[s], names), percentiles(retrieval_ms[s]), percentiles(rerank_ms[s]))
            for s in setups]
    for row in rows:
        name = row.setup.removeprefix("hybrid+")
        if name in rerankers and usage[name] is not None and usage[name].requests:
            row.tokens_per_query = usage[name].tokens / len(qids)
            row.fallbacks = usage[name].fallbacks
    report = EvalReport(str(data.root), data.split, len(qids), depth, final_k, rows, {},
                        environment(searcher, fusion=fusion or searcher.settings.fusion))
    report.gap = gap_analysis(report)
    report.wall_seconds = time.perf_counter() - started
    return report


def gap_analysis(report: EvalReport) -> dict[str, Any]:
    """The depth-vs-k gap of the hybrid retriever, and what each reranker made of it."""
    k, d = report.final_k, report.depth
    hybrid = report.row("hybrid").metrics
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
        f"but ranked into the top {k} for only {h_k:.0%} (recall@{d} {r_d:.3f} vs recall@{k} {r_k:.3f}); "
        f"a perfect reranker could lift recall@{k} by at most {r_d - r_k:+.3f}."
    ]
    for row in report.rows:
        if not row.setup.startswith("hybrid+"):
            continue
        after = row.metrics[f"recall@{k}"]
        lift = after - r_k
        share = lift / (r_d - r_k) if r_d > r_k else 0.0
        gap["rerankers"][row.setup] = {"recall_after": after, "lift": lift, "share_of_gap": share,
                                       "added_ms_p50": row.rerank_ms["p50"]}
        sentences.append(
            f"{row.setup} moved recall@{k} from {r_k:.3f} to {after:.3f} ({lift:+.3f}, {share:.0%} of the gap) "
            f"for {row.rerank_ms['p50']:.0f} ms added per query (p50)."
        )
    gap["summary"] = " ".join(sentences)
    return gap


@dataclass
class SweepPoint:
    depth: int
    retrieval: dict[str, float]
    reranked: dict[str, float]
    retrieval_ms: dict[str, float]
    rerank_ms: dict[str, float]


@dataclass
class SweepReport:
    data: str
    split: str
    queries: int
    final_k: int
    reranker: str
    tolerance: float
    points: list[SweepPoint]
    recommended_depth: int
    environment: dict[str, Any]
    wall_seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


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


def run_sweep(
    searcher: Searcher,
    data: BeirData,
    *,
    depths: Sequence[int] = (20, 50, 100),
    final_k: int = 5,
    reranker: Reranker,
    reranker_name: str = "cross-encoder",
    tolerance: float = 0.01,
    fusion: str | None = None,
    max_queries: int | None = None,
    on_query: Callable[[int, int], None] | None = None,
) -> SweepReport:
    """Rerank the hybrid candidates at each depth; report quality and added latency.

    Each depth retrieves anew (the RRF window equals the depth) and reranks every
    candidate with no score cache, so the latency is what a query at that depth costs.
    """
    depths = sorted(set(depths))
    if not depths or depths[0] < final_k:
        raise ValidationError(f"every depth must be >= final_k ({final_k}), got {depths}")
    started = time.perf_counter()
    qids = list(data.queries)[:max_queries] if max_queries is not None else list(data.queries)
    qrels = {q: data.qrels[q] for q in qids}
    names = [f"recall@{final_k}", "ndcg@10", "mrr@10"]
    points = []
    total = len(qids) * len(depths)
    done = 0
    _warm_up(searcher, data.queries[qids[0]], [reranker], fusion)
    for depth in depths:
        before: dict[str, dict[str, float]] = {}
        after: dict[str, dict[str, float]] = {}
        r_ms, rr_ms = [], []
        for qid in qids:
            query = data.queries[qid]
            first = searcher.retrieve(query, depth=depth, mode="hybrid", fusion=fusion)
            before[qid] = doc_scores(h.doc_id for h in first.hits)
            ordered, ms, _ = _rerank_all(searcher, reranker, query, first.hits)
            after[qid] = doc_scores(h.doc_id for h in ordered)
            r_ms.append(first.timings.retrieval_ms)
            rr_ms.append(ms)
            done += 1
            if on_query is not None:
                on_query(done, total)
        points.append(SweepPoint(depth, evaluate_run(qrels, before, names), evaluate_run(qrels, after, names),
                                 percentiles(r_ms), percentiles(rr_ms)))
    recommended = plateau_depth([p.depth for p in points], [p.reranked[f"recall@{final_k}"] for p in points],
                                tolerance)
    return SweepReport(str(data.root), data.split, len(qids), final_k, reranker_name, tolerance, points,
                       recommended, environment(searcher, fusion=fusion or searcher.settings.fusion),
                       time.perf_counter() - started)
