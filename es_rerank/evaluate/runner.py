"""What the evaluation tools share: one pass of candidates per query, the environment, comparisons.

The tools themselves: :mod:`es_rerank.evaluate.evaluation` (``run_eval``: BM25, kNN, hybrid and
hybrid + each reranker at one depth), :mod:`es_rerank.evaluate.sweep` (``run_sweep``: rerank at
several depths to find where reranking pays) and :mod:`es_rerank.evaluate.tuning` (``run_tune``:
score every candidate once at the largest depth and choose depth, blend and reranker from that
pass). Every row is compared with hybrid query by query (a paired bootstrap with a fixed seed,
:mod:`es_rerank.evaluate.stats`), so a difference comes with its wins, ties, losses and
confidence interval.

Queries run in file order and nothing is sampled, so the same index and models give
the same quality numbers every time. Reranking goes through
:meth:`es_rerank.client.Searcher.rerank`, the step a search uses.
"""

from __future__ import annotations

import datetime as _dt
import logging
import os
import platform
from dataclasses import dataclass, field, replace
from typing import Any, Mapping, Sequence

from ..client import Searcher
from ..errors import ValidationError
from ..ranking import collapse
from ..rerankers import Reranker
from ..types import Hit
from .data import BeirData, drop_own_document
from .metrics import per_query
from .stats import DEFAULT_SEED, PairedComparison, paired_comparison

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


def check_max_queries(max_queries: int | None) -> None:
    if max_queries is not None and (isinstance(max_queries, bool) or not isinstance(max_queries, int)
                                    or max_queries < 1):
        raise ValidationError(f"max_queries must be an integer >= 1, got {max_queries!r}")


def query_ids(data: BeirData, max_queries: int | None) -> list[str]:
    check_max_queries(max_queries)
    qids = list(data.queries)
    return qids[:max_queries] if max_queries is not None else qids


def view_hits(hits: Sequence[Hit], limit: int = VIEW_DOCS) -> tuple[Hit, ...]:
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


def warm_up(searcher: Searcher, query: str, rerankers: Sequence[Reranker], fusion: str | None) -> None:
    """One untimed query: loads the models and detects fusion, so no timing carries that cost."""
    hits = searcher.retrieve(query, depth=5, mode="hybrid", fusion=fusion).hits
    for reranker in rerankers:
        searcher.rerank(query, hits, final_k=None, reranker=reranker, blend="none", results="chunks")


def retrieve_candidates(searcher: Searcher, qid: str, query: str, *, depth: int, mode: str, fusion: str | None,
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


