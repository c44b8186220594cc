"""Choose depth, blend and reranker from judged queries, or say that reranking does not help.

Pure selection logic: the caller retrieves, for each judged query, the hybrid
candidates at the largest depth and has each reranker score every candidate once.
A shallower depth is a prefix of that list (its reranking is the same scores,
reordered within the prefix), so the whole grid costs one deep rerank pass:

    depths (10, 20, 30, 50, 100; those <= the largest)
    x blend (none, rrf, linear with alpha 0.1 .. 0.9)
    x rerankers,

plus the hybrid baseline (no reranking). Each cell is ranked exactly as a search
would rank it (:mod:`es_rerank.ranking`: rerank order, blend, collapse to documents)
and scored per query with ranx. The best cell is compared against hybrid with a
paired bootstrap (:mod:`es_rerank.evaluate.stats`); it is recommended only when it
wins with an interval that excludes 0, otherwise the answer is to keep hybrid.

Choosing the best of many cells and testing it on the same queries flatters it (the
winner's curse). Tune on a dev split and confirm on test, or use :func:`cross_validate`
(k-fold: choose on k-1 folds, measure on the held-out fold) when there is no dev split.

Note that a prefix of the deepest candidate list is an approximation of retrieving at
that depth: hybrid fusion over a smaller window can order the head slightly differently.

Example:
    >>> from es_rerank.types import Hit
    >>> cands = {"q1": [Hit("a#0", "a", 0, "", "", {}, 0.9, 1), Hit("b#0", "b", 0, "", "", {}, 0.8, 2)],
    ...          "q2": [Hit("c#0", "c", 0, "", "", {}, 0.9, 1), Hit("d#0", "d", 0, "", "", {}, 0.8, 2)]}
    >>> scores = {"ce": {"q1": [0.1, 2.0], "q2": [0.3, 4.0]}}
    >>> qrels = {"q1": {"b": 1}, "q2": {"d": 1}}
    >>> result = tune(cands, scores, qrels, metric="ndcg@10", depths=(2,), resamples=200)
    >>> result.best.setting.label(), round(result.best.mean, 3), round(result.baseline.mean, 3)
    ('ce depth=2 blend=none', 1.0, 0.631)
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np

from ..errors import ValidationError
from ..ranking import DEFAULT_ALPHA, DEFAULT_RANK_CONSTANT, blend, blend_order, check_blend, order_by_rerank
from ..types import Hit
from .metrics import doc_scores, per_query
from .records import Record, as_dict
from .stats import DEFAULT_CONFIDENCE, DEFAULT_RESAMPLES, DEFAULT_SEED, PairedComparison, paired_comparison

logger = logging.getLogger(__name__)

DEFAULT_DEPTHS = (10, 20, 30, 50, 100)
DEFAULT_ALPHAS = tuple(round(0.1 * i, 1) for i in range(1, 10))
NO_RERANKER = "none"
NO_HELP = "reranking does not help on this data; keep hybrid"

# Environment variables the recommendation is written for (Settings reads them).
ENV_DEPTH = "ES_RERANK_DEPTH"
ENV_BLEND = "ES_RERANK_BLEND"
ENV_BLEND_WEIGHT = "ES_RERANK_BLEND_WEIGHT"
ENV_RERANKER = "ES_RERANK_RERANKER"

_METRIC = re.compile(r"(ndcg|recall)@([1-9][0-9]*)")


def check_metric(metric: str) -> str:
    """``metric`` if it is ``ndcg@K`` or ``recall@K`` (K >= 1).

    Raises:
        ValidationError: Any other value.
    """
    if not isinstance(metric, str) or _METRIC.fullmatch(metric) is None:
        raise ValidationError(f"tune metric must be ndcg@K or recall@K (e.g. ndcg@10, recall@20), got {metric!r}")
    return metric


@dataclass(frozen=True)
class Setting:
    """One cell of the grid: which reranker, how deep, how the two stages are blended.

    Attributes:
        reranker: Reranker name (as in ``ES_RERANK_RERANKER``), or ``none`` for hybrid alone.
        depth: Candidates reranked.
        blend: One of :data:`es_rerank.ranking.BLEND_METHODS`.
        alpha: The reranker's weight for ``linear``; None otherwise.
    """

    reranker: str
    depth: int
    blend: str = "none"
    alpha: float | None = None

    @property
    def is_baseline(self) -> bool:
        """Hybrid alone, no reranking."""
        return self.reranker == NO_RERANKER

    def label(self) -> str:
        """Short human label, e.g. ``cross-encoder depth=30 blend=linear alpha=0.3``."""
        if self.is_baseline:
            return "hybrid"
        text = f"{self.reranker} depth={self.depth} blend={self.blend}"
        return text if self.alpha is None else f"{text} alpha={self.alpha:g}"

    def env(self) -> dict[str, str]:
        """The environment variables that select this setting (hybrid: only the reranker)."""
        if self.is_baseline:
            return {ENV_RERANKER: NO_RERANKER}
        out = {ENV_RERANKER: self.reranker, ENV_DEPTH: str(self.depth), ENV_BLEND: self.blend}
        if self.alpha is not None:
            out[ENV_BLEND_WEIGHT] = f"{self.alpha:g}"
        return out

    def cli_args(self) -> tuple[str, ...]:
        """The same as command-line options (``--reranker none`` for hybrid)."""
        if self.is_baseline:
            return ("--reranker", NO_RERANKER)
        out = ("--reranker", self.reranker, "--depth", str(self.depth), "--blend", self.blend)
        return out if self.alpha is None else (*out, "--blend-weight", f"{self.alpha:g}")

    def to_dict(self) -> dict[str, Any]:
        return as_dict(self, label=self.label())


BLENDS = ("none", "rrf", "linear")


def grid(depths: Sequence[int], rerankers: Sequence[str], *, alphas: Sequence[float] = DEFAULT_ALPHAS,
         blends: Sequence[str] = BLENDS) -> list[Setting]:
    """Every reranked cell, in a fixed order: reranker, then depth, then none, rrf, linear by alpha.

    ``blends`` keeps only some blends (all three by default).

    Raises:
        ValidationError: No depth or reranker, a depth < 1, a reranker named ``none``,
            duplicates, an alpha outside [0, 1], or an unknown or no blend.
    """
    if not blends or any(b not in BLENDS for b in blends):
        raise ValidationError(f"blends must be some of {', '.join(BLENDS)}, got {list(blends)}")
    if not depths or not rerankers:
        raise ValidationError(f"tune needs at least one depth and one reranker, got depths={list(depths)} "
                              f"rerankers={list(rerankers)}")
    for d in depths:
        if isinstance(d, bool) or not isinstance(d, int) or d < 1:
            raise ValidationError(f"depths must be integers >= 1, got {d!r}")
    for name in rerankers:
        if not isinstance(name, str) or not name or name == NO_RERANKER:
            raise ValidationError(f"reranker names must be non-empty and not {NO_RERANKER!r}, got {name!r}")
    for values, what in ((depths, "depths"), (rerankers, "rerankers"), (alphas, "alphas")):
        if len(set(values)) != len(values):
            raise ValidationError(f"{what} must not repeat, got {list(values)}")
    for a in alphas:
        check_blend("linear", a)
    cells = []
    for name in rerankers:
        for d in sorted(depths):
            cells += [Setting(name, d, b) for b in ("none", "rrf") if b in blends]
            if "linear" in blends:
                cells += [Setting(name, d, "linear", float(a)) for a in alphas]
    return cells


def apply_setting(
    candidates: Sequence[Hit],
    scores: Sequence[float] | None,
    setting: Setting,
    *,
    rank_constant: int = DEFAULT_RANK_CONSTANT,
) -> list[Hit]:
    """One query's hits ranked as ``setting`` would rank them (chunks, best first, not collapsed).

    The hybrid baseline returns ``candidates`` as they are (the whole list); a reranked
    setting keeps the first ``depth`` candidates, orders them by their ``scores`` and
    blends. Collapse the result with :func:`es_rerank.ranking.collapse`.

    Args:
        candidates: The query's candidates at the largest depth, in retrieval order.
        scores: The reranker's score of each candidate (ignored for the baseline).
        setting: The cell to apply.
        rank_constant: k of the ``rrf`` blend. Defaults to 60.

    Raises:
        ValidationError: ``scores`` missing or of the wrong length for a reranked setting.
    """
    if setting.is_baseline:
        return list(candidates)
    if scores is None or len(scores) != len(candidates):
        raise ValidationError(f"{setting.reranker} needs one score per candidate: "
                              f"{len(candidates)} candidates, {None if scores is None else len(scores)} scores")
    d = setting.depth
    return _blended(order_by_rerank(candidates[:d], list(scores[:d])), setting, rank_constant)


def _alpha(setting: Setting) -> float:
    return DEFAULT_ALPHA if setting.alpha is None else setting.alpha


def _blended(ordered: Sequence[Hit], setting: Setting, rank_constant: int) -> list[Hit]:
    return blend(ordered, setting.blend, alpha=_alpha(setting), rank_constant=rank_constant)


@dataclass(frozen=True, eq=False)
class Grid:
    """Per-query metric values of every setting.

    Attributes:
        metric: The metric (``ndcg@10``, ``recall@20`` ...).
        qids: Queries, in the order of the candidates given.
        settings: The hybrid baseline first, then every reranked cell in grid order.
        values: Read-only array, one row per setting, one column per query.
    """

    metric: str
    qids: tuple[str, ...]
    settings: tuple[Setting, ...]
    values: np.ndarray = field(repr=False)

    @property
    def baseline(self) -> Setting:
        return self.settings[0]

    def row(self, setting: Setting) -> np.ndarray:
        return self.values[self.settings.index(setting)]

    def per_query(self, setting: Setting, qids: Sequence[str] | None = None) -> dict[str, float]:
        """``query_id -> value`` of one setting (all queries, or those given)."""
        values = dict(zip(self.qids, (float(v) for v in self.row(setting))))
        return values if qids is None else {q: values[q] for q in qids}

    def means(self, qids: Sequence[str] | None = None) -> np.ndarray:
        """Mean value of every setting over all queries, or over ``qids``."""
        if qids is None:
            return self.values.mean(axis=1)
        index = {q: i for i, q in enumerate(self.qids)}
        missing = [q for q in qids if q not in index]
        if missing or not qids:
            raise ValidationError(f"means need known, non-empty query ids; unknown: {missing[:5]}")
        return self.values[:, [index[q] for q in qids]].mean(axis=1)

    def best(self, qids: Sequence[str] | None = None) -> tuple[Setting, float]:
        """The reranked cell with the highest mean (ties: the smaller depth, then grid order)."""
        means = self.means(qids)
        top = max(range(1, len(self.settings)),
                  key=lambda i: (means[i], -self.settings[i].depth, -i))
        return self.settings[top], float(means[top])


def _validate_inputs(
    candidates: Mapping[str, Sequence[Hit]],
    scores: Mapping[str, Mapping[str, Sequence[float]]],
    qrels: Mapping[str, Mapping[str, int]],
) -> None:
    if not candidates:
        raise ValidationError("tune needs candidates for at least one judged query, got none")
    unjudged = [q for q in candidates if q not in qrels]
    if unjudged:
        raise ValidationError(f"{len(unjudged)} queries have candidates but no judgments: {unjudged[:5]}")
    for qid, hits in candidates.items():
        ranks = [h.retrieval_rank for h in hits]
        if ranks != list(range(1, len(hits) + 1)):
            raise ValidationError(f"candidates of query {qid!r} must be in retrieval order with ranks 1..{len(hits)}, "
                                  f"got ranks {ranks[:10]}")
    for name, by_query in scores.items():
        missing = [q for q in candidates if q not in by_query]
        if missing:
            raise ValidationError(f"reranker {name!r} has no scores for {len(missing)} queries: {missing[:5]}")
        for qid, hits in candidates.items():
            if len(by_query[qid]) != len(hits):
                raise ValidationError(f"reranker {name!r} gave {len(by_query[qid])} scores for the "
                                      f"{len(hits)} candidates of query {qid!r}")


def evaluate_grid(
    candidates: Mapping[str, Sequence[Hit]],
    scores: Mapping[str, Mapping[str, Sequence[float]]],
    qrels: Mapping[str, Mapping[str, int]],
    *,
    metric: str = "ndcg@10",
    depths: Sequence[int] = DEFAULT_DEPTHS,
    alphas: Sequence[float] = DEFAULT_ALPHAS,
    max_depth: int | None = None,
    rank_constant: int = DEFAULT_RANK_CONSTANT,
    blends: Sequence[str] = BLENDS,
) -> Grid:
    """Score every cell of the grid, and the hybrid baseline, on every query.

    Args:
        candidates: ``query_id -> hits`` at the largest depth, in retrieval order (ranks 1..n).
            Every query must be judged in ``qrels``; only these queries are evaluated.
        scores: ``reranker name -> query_id -> one score per candidate`` (non-finite
            scores are the reranker's fallback, see :func:`es_rerank.ranking.order_by_rerank`).
        qrels: ``query_id -> doc_id -> gain``.
        metric: ``ndcg@K`` or ``recall@K``, computed on documents. Defaults to ``ndcg@10``.
        depths: Candidate depths to try; those above ``max_depth`` are dropped. Defaults
            to 10, 20, 30, 50, 100.
        alphas: Reranker weights of the ``linear`` blend. Defaults to 0.1 .. 0.9.
        max_depth: The depth the candidates were retrieved at. Defaults to the longest
            candidate list.
        rank_constant: k of the ``rrf`` blend. Defaults to 60.
        blends: The blends to try. Defaults to all (none, rrf, linear).

    Returns:
        The :class:`Grid` of per-query values.

    Raises:
        ValidationError: Bad metric or depths, mismatched or missing inputs, a candidate list
            longer than ``max_depth``, or no depth <= ``max_depth``.
    """
    check_metric(metric)
    _validate_inputs(candidates, scores, qrels)
    for d in (*depths, *(() if max_depth is None else (max_depth,))):
        if isinstance(d, bool) or not isinstance(d, int) or d < 1:
            raise ValidationError(f"depths must be integers >= 1, got {d!r}")
    longest = max(len(h) for h in candidates.values())
    if max_depth is not None and longest > max_depth:
        raise ValidationError(f"candidates were said to be retrieved at depth {max_depth} but a query has {longest}")
    max_depth = longest if max_depth is None else max_depth
    kept = sorted(d for d in set(depths) if d <= max_depth)
    if not kept:
        raise ValidationError(f"no depth of {sorted(depths)} is <= the candidates' depth {max_depth}")
    cells = grid(kept, list(scores), alphas=alphas, blends=blends)
    baseline = Setting(NO_RERANKER, max_depth)
    by_cell: dict[tuple[str, int], list[Setting]] = {}
    for s in cells:
        by_cell.setdefault((s.reranker, s.depth), []).append(s)
    qids = tuple(candidates)
    judged = {q: qrels[q] for q in qids}
    runs: dict[Setting, dict[str, dict[str, float]]] = {s: {} for s in [baseline, *cells]}
    for qid in qids:
        hits = list(candidates[qid])
        runs[baseline][qid] = doc_scores(hits)
        for name, by_query in scores.items():
            query_scores = list(by_query[qid])
            for d in kept:
                # one rerank order per (reranker, depth), shared by every blend of that depth
                ordered = order_by_rerank(hits[:d], query_scores[:d])
                for s in by_cell[(name, d)]:
                    # only the order matters here: blend_order is blend without building new hits
                    order = blend_order(ordered, s.blend, alpha=_alpha(s), rank_constant=rank_constant)
                    runs[s][qid] = doc_scores([ordered[i] for i, _ in order])
    settings = (baseline, *cells)
    rows = []
    for s in settings:
        values_of = per_query(judged, runs[s], metric)
        rows.append([values_of[q] for q in qids])
    values = np.array(rows, dtype=float)
    values.setflags(write=False)
    logger.info("tune grid: %d settings x %d queries on %s", len(settings), len(qids), metric)
    return Grid(metric, qids, settings, values)


@dataclass(frozen=True)
class Cell:
    """A setting and its mean metric."""

    setting: Setting
    mean: float

    def to_dict(self) -> dict[str, Any]:
        return {**self.setting.to_dict(), "mean": self.mean}


@dataclass(frozen=True, kw_only=True)
class Recommendation(Record):
    """What to run with.

    Attributes:
        helps: True when a reranked setting beat hybrid with an interval excluding 0.
        setting: The setting to use (the hybrid baseline when reranking does not help).
        sentence: The advice in one sentence (exactly :data:`NO_HELP` when it does not help).
        reason: The numbers behind it.
        env: Environment variables selecting ``setting``.
        cli_args: The same as command-line options.
    """

    helps: bool
    setting: Setting
    sentence: str
    reason: str
    env: Mapping[str, str]
    cli_args: tuple[str, ...]


def recommend(
    best: Setting, comparison: PairedComparison, baseline: Setting, *, held_out: bool = False
) -> Recommendation:
    """Recommend ``best`` when it beats the baseline with an interval excluding 0; else keep hybrid."""
    measured = "on held-out folds" if held_out else "on the tuning queries"
    reason = f"{best.label()} {measured}: " + comparison.summary(setup=best.label(), baseline="hybrid")
    if comparison.better:
        sentence = (f"use {best.reranker} at depth {best.depth} with blend {best.blend}"
                    + ("" if best.alpha is None else f" (reranker weight {best.alpha:g})")
                    + f": {comparison.metric} {comparison.setup_mean:.4f} vs hybrid {comparison.baseline_mean:.4f} "
                    f"({comparison.mean_delta:+.4f})")
        return Recommendation(helps=True, setting=best, sentence=sentence, reason=reason, env=best.env(),
                              cli_args=best.cli_args())
    return Recommendation(helps=False, setting=baseline, sentence=NO_HELP, reason=reason, env=baseline.env(),
                          cli_args=baseline.cli_args())


@dataclass(frozen=True, kw_only=True)
class TuneResult(Record):
    """Every cell's mean, the best cell, its comparison against hybrid, and the advice.

    Attributes:
        metric: The metric tuned for.
        queries: Queries evaluated.
        depths: Depths tried.
        rerankers: Rerankers tried.
        baseline: The hybrid baseline and its mean.
        cells: Every reranked cell with its mean, in grid order.
        best: The cell with the highest mean.
        comparison: ``best`` against hybrid, paired over the queries.
        recommendation: The advice.
    """

    metric: str
    queries: int
    depths: tuple[int, ...]
    rerankers: tuple[str, ...]
    baseline: Cell
    cells: tuple[Cell, ...]
    best: Cell
    comparison: PairedComparison
    recommendation: Recommendation


def select(
    g: Grid,
    *,
    resamples: int = DEFAULT_RESAMPLES,
    confidence: float = DEFAULT_CONFIDENCE,
    seed: int = DEFAULT_SEED,
) -> TuneResult:
    """Pick the best cell of an evaluated grid over all its queries and compare it with hybrid."""
    means = g.means()
    best, best_mean = g.best()
    comparison = paired_comparison(g.per_query(g.baseline), g.per_query(best), metric=g.metric,
                                   resamples=resamples, confidence=confidence, seed=seed)
    cells = tuple(Cell(s, float(m)) for s, m in zip(g.settings[1:], means[1:]))
    return TuneResult(
        metric=g.metric, queries=len(g.qids),
        depths=tuple(sorted({s.depth for s in g.settings[1:]})),
        rerankers=tuple(dict.fromkeys(s.reranker for s in g.settings[1:])),
        baseline=Cell(g.baseline, float(means[0])), cells=cells, best=Cell(best, best_mean),
        comparison=comparison, recommendation=recommend(best, comparison, g.baseline),
    )


def tune(
    candidates: Mapping[str, Sequence[Hit]],
    scores: Mapping[str, Mapping[str, Sequence[float]]],
    qrels: Mapping[str, Mapping[str, int]],
    *,
    metric: str = "ndcg@10",
    depths: Sequence[int] = DEFAULT_DEPTHS,
    alphas: Sequence[float] = DEFAULT_ALPHAS,
    max_depth: int | None = None,
    rank_constant: int = DEFAULT_RANK_CONSTANT,
    resamples: int = DEFAULT_RESAMPLES,
    confidence: float = DEFAULT_CONFIDENCE,
    seed: int = DEFAULT_SEED,
) -> TuneResult:
    """Evaluate the grid (:func:`evaluate_grid`) and choose on all its queries (:func:`select`).

    Use on a dev split; on the only split you have, prefer :func:`cross_validate`.
    Arguments are those of :func:`evaluate_grid`, plus the bootstrap's ``resamples``,
    ``confidence`` and ``seed``.
    """
    g = evaluate_grid(candidates, scores, qrels, metric=metric, depths=depths, alphas=alphas,
                      max_depth=max_depth, rank_constant=rank_constant)
    return select(g, resamples=resamples, confidence=confidence, seed=seed)


def kfold_split(qids: Sequence[str], k: int, *, seed: int = DEFAULT_SEED) -> tuple[tuple[str, ...], ...]:
    """Split query ids into ``k`` disjoint folds covering all of them, deterministically.

    The ids are sorted, shuffled with numpy's generator seeded by ``seed`` and dealt
    round-robin, so the folds depend on the set of ids and the seed only (not on their
    order) and differ in size by at most one. Each fold lists its ids in sorted order.

    Raises:
        ValidationError: Repeated ids, or ``k`` not in 2 .. number of queries.

    Example:
        >>> kfold_split(["q1", "q2", "q3", "q4", "q5"], 2, seed=0)
        (('q2', 'q3', 'q4'), ('q1', 'q5'))
    """
    ids = sorted(qids)
    if len(set(ids)) != len(ids):
        raise ValidationError("query ids must not repeat in a k-fold split")
    if isinstance(k, bool) or not isinstance(k, int) or not 2 <= k <= len(ids):
        raise ValidationError(f"folds must be an integer from 2 to the number of queries ({len(ids)}), got {k!r}")
    order = np.random.default_rng(seed).permutation(len(ids))
    folds: list[list[str]] = [[] for _ in range(k)]
    for position, i in enumerate(order):
        folds[position % k].append(ids[i])
    return tuple(tuple(sorted(f)) for f in folds)


@dataclass(frozen=True, kw_only=True)
class Fold(Record):
    """One fold of :func:`cross_validate`: chosen on the other folds, measured on this one."""

    index: int
    held_out: tuple[str, ...]
    chosen: Setting
    train_mean: float
    held_out_mean: float
    baseline_held_out_mean: float


@dataclass(frozen=True, kw_only=True)
class KFoldResult(Record):
    """An honest estimate of tuning: each query is scored by a setting chosen without it.

    Attributes:
        metric: The metric tuned for.
        k: Number of folds.
        seed: Seed of the split (the bootstrap uses the same seed).
        queries: Queries evaluated.
        folds: Per fold: the setting chosen on the other folds and its held-out mean.
        held_out_mean: Mean over all queries, each scored by its own fold's choice.
        baseline_mean: Hybrid's mean over the same queries.
        comparison: Held-out values against hybrid, paired over all queries.
        final: The choice made on all queries (what to deploy when tuning helps).
        recommendation: ``final`` when the held-out comparison says it helps; else keep hybrid.
    """

    metric: str
    k: int
    seed: int
    queries: int
    folds: tuple[Fold, ...]
    held_out_mean: float
    baseline_mean: float
    comparison: PairedComparison
    final: TuneResult
    recommendation: Recommendation


def cross_validate(
    g: Grid,
    *,
    k: int = 5,
    seed: int = DEFAULT_SEED,
    resamples: int = DEFAULT_RESAMPLES,
    confidence: float = DEFAULT_CONFIDENCE,
) -> KFoldResult:
    """k-fold tuning for collections without a dev split.

    For each fold, the best cell is chosen on the other k-1 folds and measured on the
    held-out fold; every query thus gets a value from a setting chosen without it. Those
    held-out values are compared with hybrid (paired bootstrap over all queries). The
    setting to deploy is the one chosen on all queries, recommended only when the
    held-out comparison shows a gain with an interval excluding 0.

    Args:
        g: An evaluated grid (:func:`evaluate_grid`).
        k: Number of folds, 2 .. number of queries. Defaults to 5.
        seed: Seed of the split and of the bootstrap. Defaults to 0.
        resamples: Bootstrap resamples. Defaults to 10,000.
        confidence: Interval level. Defaults to 0.95.

    Raises:
        ValidationError: Bad ``k``.
    """
    folds = kfold_split(g.qids, k, seed=seed)
    held_out_values: dict[str, float] = {}
    results = []
    for i, test in enumerate(folds):
        train = [q for j, f in enumerate(folds) if j != i for q in f]
        chosen, train_mean = g.best(train)
        values = g.per_query(chosen, test)
        held_out_values.update(values)
        baseline = g.per_query(g.baseline, test)
        results.append(Fold(index=i, held_out=test, chosen=chosen, train_mean=train_mean,
                            held_out_mean=float(np.mean(list(values.values()))),
                            baseline_held_out_mean=float(np.mean(list(baseline.values())))))
    held_out_values = {q: held_out_values[q] for q in g.qids}
    comparison = paired_comparison(g.per_query(g.baseline), held_out_values, metric=g.metric,
                                   resamples=resamples, confidence=confidence, seed=seed)
    final = select(g, resamples=resamples, confidence=confidence, seed=seed)
    return KFoldResult(
        metric=g.metric, k=k, seed=seed, queries=len(g.qids), folds=tuple(results),
        held_out_mean=comparison.setup_mean, baseline_mean=comparison.baseline_mean, comparison=comparison,
        final=final, recommendation=recommend(final.best.setting, comparison, g.baseline, held_out=True),
    )

