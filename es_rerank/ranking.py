"""Pure ranking steps after retrieval: rerank order, blend of the two stages, collapse to documents.

The Searcher, the evaluation runs and ``tune`` all call these functions, so a setting
measured in evaluation is exactly what a search does:

1. :func:`order_by_rerank` orders the candidates by reranker score;
2. :func:`blend` combines that order with the retrieval order (``none`` keeps the
   reranker's order, ``rrf`` fuses the two ranks, ``linear`` mixes normalised scores);
3. :func:`collapse` turns chunks into documents, each at its best chunk's place.

No I/O; every function returns new :class:`~es_rerank.types.Hit` objects and never
mutates its input.

Example:
    >>> from es_rerank.types import Hit
    >>> hits = [Hit(f"{d}#0", d, 0, "", "", {}, 1.0 / r, r) for r, d in enumerate("abc", start=1)]
    >>> ordered = order_by_rerank(hits, [0.1, 2.0, 0.5])
    >>> [h.doc_id for h in ordered], [h.rerank_rank for h in ordered]
    (['b', 'c', 'a'], [1, 2, 3])
    >>> [h.doc_id for h in blend(ordered, "rrf", rank_constant=1)]
    ['b', 'a', 'c']
"""

from __future__ import annotations

import logging
import math
from dataclasses import replace
from typing import Iterable, Sequence

from .errors import ConfigError, RerankerError
from .types import Hit

logger = logging.getLogger(__name__)

BLEND_METHODS = ("none", "rrf", "linear")
"""``none``: the reranker's order; ``rrf``: reciprocal rank fusion of both ranks;
``linear``: ``alpha * norm(rerank) + (1 - alpha) * norm(retrieval)``."""

DEFAULT_BLEND = "none"
DEFAULT_ALPHA = 0.5
DEFAULT_RANK_CONSTANT = 60


def _as_score(value: object, position: int) -> float | None:
    """A finite float, or None for a non-finite score (the reranker's fallback)."""
    if isinstance(value, bool):
        raise RerankerError(f"reranker returned a boolean score {value!r} for candidate {position}")
    try:
        score = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError) as e:
        raise RerankerError(f"reranker returned a non-numeric score {value!r} for candidate {position}") from e
    return score if math.isfinite(score) else None


def order_by_rerank(hits: Sequence[Hit], scores: Sequence[float]) -> list[Hit]:
    """All ``hits`` ordered by reranker score, best first, with ``rerank_score`` and ``rerank_rank`` set.

    Ties keep the retrieval order (``retrieval_rank``, then input position). A
    non-finite score (NaN, inf, -inf) is treated as the reranker's fallback: the hit
    keeps ``rerank_score=None``, sorts below every finite score (in retrieval order)
    and still gets a ``rerank_rank``; :func:`fallback_count` counts such hits and a
    warning is logged. ``final_score`` is reset to None and ``passages`` are kept.

    Args:
        hits: Candidates, usually in retrieval order.
        scores: One reranker score per hit, in the same order (numpy scalars are fine).

    Returns:
        A new list holding every hit once.

    Raises:
        RerankerError: ``scores`` and ``hits`` differ in length, or a score is not a number.

    Example:
        >>> from es_rerank.types import Hit
        >>> hits = [Hit("a#0", "a", 0, "", "", {}, 0.9, 1), Hit("b#0", "b", 0, "", "", {}, 0.8, 2)]
        >>> [(h.doc_id, h.rerank_score, h.rerank_rank) for h in order_by_rerank(hits, [float("nan"), 1.5])]
        [('b', 1.5, 1), ('a', None, 2)]
    """
    if len(scores) != len(hits):
        raise RerankerError(f"reranker returned {len(scores)} scores for {len(hits)} candidates")
    clean = [_as_score(s, i) for i, s in enumerate(scores)]
    order = sorted(
        range(len(hits)),
        key=lambda i: (clean[i] is None, -(clean[i] or 0.0), hits[i].retrieval_rank, i),
    )
    unscored = sum(s is None for s in clean)
    if unscored:
        logger.warning("reranker gave %d of %d candidates a non-finite score; they rank last",
                       unscored, len(hits))
    return [replace(hits[i], rerank_score=clean[i], rerank_rank=rank, final_score=None)
            for rank, i in enumerate(order, start=1)]


def fallback_count(hits: Iterable[Hit]) -> int:
    """How many hits the reranker ranked without a usable score (``rerank_rank`` set, ``rerank_score`` None)."""
    return sum(1 for h in hits if h.rerank_rank is not None and h.rerank_score is None)


def check_blend(method: str, alpha: float = DEFAULT_ALPHA, rank_constant: int = DEFAULT_RANK_CONSTANT) -> None:
    """Validate blend settings, naming the bad value.

    Raises:
        ConfigError: ``method`` is not one of :data:`BLEND_METHODS`, ``alpha`` is not a
            number in [0, 1], or ``rank_constant`` < 1.
    """
    if method not in BLEND_METHODS:
        raise ConfigError(f"blend method must be one of {', '.join(BLEND_METHODS)}, got {method!r}")
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0.0 <= alpha <= 1.0:
        raise ConfigError(f"blend alpha (the reranker's weight) must be a number in [0, 1], got {alpha!r}")
    if isinstance(rank_constant, bool) or not isinstance(rank_constant, int) or rank_constant < 1:
        raise ConfigError(f"rank_constant must be an integer >= 1, got {rank_constant!r}")


def _min_max(values: Sequence[float | None]) -> list[float]:
    """Min-max normalise the finite values to [0, 1]; None and a constant list give 0."""
    finite = [v for v in values if v is not None]
    if not finite:
        return [0.0] * len(values)
    low, high = min(finite), max(finite)
    span = high - low
    if span == 0.0 or not math.isfinite(span):
        return [0.0] * len(values)
    return [0.0 if v is None else (v - low) / span for v in values]


def blend(
    hits: Sequence[Hit],
    method: str = DEFAULT_BLEND,
    *,
    alpha: float = DEFAULT_ALPHA,
    rank_constant: int = DEFAULT_RANK_CONSTANT,
) -> list[Hit]:
    """Combine the retrieval and rerank orders of reranked hits into ``final_score``.

    * ``none``: ``final = rerank_score``, the reranker's order (today's behaviour).
      A hit the reranker could not score keeps ``final_score=None`` and stays last.
    * ``rrf``: ``final = 1 / (k + retrieval_rank) + 1 / (k + rerank_rank)``.
    * ``linear``: ``final = alpha * norm(rerank_score) + (1 - alpha) * norm(retrieval_score)``,
      each min-max normalised over these hits (one query's candidates); a constant list,
      and a hit without a rerank score, normalise to 0.

    Every hit keeps its retrieval and rerank scores and ranks (``rerank_rank`` stays the
    reranker's own rank). The result is ordered by final score, ties by retrieval rank.
    Nothing is cut: apply ``final_k`` afterwards (:func:`collapse` with ``limit``).

    Args:
        hits: Output of :func:`order_by_rerank` (every hit needs a ``rerank_rank``), any order.
        method: One of :data:`BLEND_METHODS`. Defaults to ``none``.
        alpha: Weight of the reranker in ``linear``, in [0, 1]. Defaults to 0.5.
        rank_constant: k of ``rrf``. Defaults to 60.

    Returns:
        A new list of the same hits with ``final_score`` set.

    Raises:
        ConfigError: Bad ``method``, ``alpha`` or ``rank_constant`` (see :func:`check_blend`),
            or a hit that was not reranked, or a non-finite retrieval score.

    Example:
        >>> from es_rerank.types import Hit
        >>> hits = [Hit("a#0", "a", 0, "", "", {}, 0.9, 1, 0.0, 2), Hit("b#0", "b", 0, "", "", {}, 0.5, 2, 4.0, 1)]
        >>> [(h.doc_id, h.final_score) for h in blend(hits, "linear", alpha=0.25)]
        [('a', 0.75), ('b', 0.25)]
    """
    return [replace(hits[i], final_score=final) for i, final in blend_order(
        hits, method, alpha=alpha, rank_constant=rank_constant)]


def blend_order(
    hits: Sequence[Hit],
    method: str = DEFAULT_BLEND,
    *,
    alpha: float = DEFAULT_ALPHA,
    rank_constant: int = DEFAULT_RANK_CONSTANT,
) -> list[tuple[int, float | None]]:
    """The order and final scores :func:`blend` gives, as ``(position in hits, final_score)`` pairs.

    For callers that need only the order (tuning evaluates thousands of blends) and
    would waste time building new hits; :func:`blend` is this plus the hits. Arguments
    and errors are those of :func:`blend`.
    """
    check_blend(method, alpha, rank_constant)
    for h in hits:
        if h.rerank_rank is None:
            raise ConfigError(f"blend needs reranked hits; {h.chunk_id!r} has no rerank_rank")
        if not math.isfinite(h.retrieval_score):
            raise ConfigError(f"retrieval score of {h.chunk_id!r} must be finite, got {h.retrieval_score!r}")
    if method == "none":
        finals: list[float | None] = [h.rerank_score for h in hits]
        # the reranker's own order; its ties were already broken by retrieval rank
        order = sorted(range(len(hits)), key=lambda i: (hits[i].rerank_rank, i))
        return [(i, finals[i]) for i in order]
    if method == "rrf":
        finals = [1.0 / (rank_constant + h.retrieval_rank) + 1.0 / (rank_constant + h.rerank_rank) for h in hits]
    else:
        rerank_norm = _min_max([h.rerank_score for h in hits])
        retrieval_norm = _min_max([h.retrieval_score for h in hits])
        finals = [alpha * r + (1.0 - alpha) * q for r, q in zip(rerank_norm, retrieval_norm)]
    order = sorted(range(len(hits)), key=lambda i: (-finals[i], hits[i].retrieval_rank, i))  # type: ignore[operator]
    return [(i, finals[i]) for i in order]


def order_and_blend(
    hits: Sequence[Hit],
    scores: Sequence[float],
    *,
    method: str = DEFAULT_BLEND,
    alpha: float = DEFAULT_ALPHA,
    rank_constant: int = DEFAULT_RANK_CONSTANT,
) -> list[Hit]:
    """The ordering and blending step: :func:`order_by_rerank`, then :func:`blend`, on one query's
    candidates (the rerank step, :mod:`es_rerank.rerank_step`, scores them and calls this).

    Raises:
        ConfigError: Bad blend settings (checked before anything else).
        RerankerError: ``scores`` do not fit ``hits``.
    """
    check_blend(method, alpha, rank_constant)
    return blend(order_by_rerank(hits, scores), method, alpha=alpha, rank_constant=rank_constant)


def collapse(hits: Iterable[Hit], *, limit: int | None = None) -> list[Hit]:
    """One entry per document, in the order of each document's best chunk.

    ``hits`` must already be ordered best first; a document's best chunk is its first
    occurrence. The entry is that chunk, with the document's other chunks (in order)
    appended to its ``passages``. Collapsing an already collapsed list changes nothing.

    Args:
        hits: Ranked chunk hits, best first.
        limit: Keep at most this many documents (``final_k`` counts documents). Defaults
            to all.

    Returns:
        A new list with one hit per ``doc_id``.

    Raises:
        ConfigError: ``limit`` < 1.

    Example:
        >>> from es_rerank.types import Hit
        >>> hits = [Hit(c, c[0], int(c[2]), "", "", {}, 1.0, r) for r, c in enumerate(["a#1", "b#0", "a#0"], 1)]
        >>> [(h.chunk_id, [p.chunk_id for p in h.passages]) for h in collapse(hits)]
        [('a#1', ['a#0']), ('b#0', [])]
    """
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ConfigError(f"limit must be an integer >= 1 or None, got {limit!r}")
    best: dict[str, Hit] = {}
    others: dict[str, list[Hit]] = {}
    for h in hits:
        if h.doc_id not in best:
            best[h.doc_id] = h
            others[h.doc_id] = []
        else:
            # a chunk that was itself collapsed brings its passages along, flattened
            others[h.doc_id] += [replace(h, passages=()), *h.passages]
    docs = list(best)[:limit] if limit is not None else list(best)
    return [replace(best[d], passages=best[d].passages + tuple(others[d])) if others[d] else best[d]
            for d in docs]
