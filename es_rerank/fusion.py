"""Reciprocal rank fusion (Cormack et al., 2009), computed client-side.

RRF scores an item by ``sum(1 / (rank_constant + rank))`` over the lists that hold
it, with 1-based ranks. ``rank_constant`` (k, default 60) dampens the head of each
list; ``window`` (how many items of each list take part) is a separate knob.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Hashable, Sequence, TypeVar

from .errors import ConfigError
from .types import Hit

K = TypeVar("K", bound=Hashable)


def reciprocal_rank_fusion(
    ranked_lists: Sequence[Sequence[K]],
    *,
    rank_constant: int = 60,
    window: int | None = None,
) -> list[tuple[K, float]]:
    """Fuse ranked lists of ids into one ranking.

    Args:
        ranked_lists: Each list holds ids best first; an id repeated within one list
            counts at its first (best) position only.
        rank_constant: k in ``1 / (k + rank)``. Defaults to 60.
        window: Only the first ``window`` items of each list take part. Defaults to all.

    Returns:
        ``(id, score)`` pairs, best first. Ties are broken by the id's string form,
        so the result does not depend on the order of ``ranked_lists``.

    Raises:
        ConfigError: ``rank_constant`` < 1 or ``window`` < 1.

    Example:
        >>> reciprocal_rank_fusion([["a", "b"], ["b", "c"]], rank_constant=1)
        [('b', 0.8333333333333333), ('a', 0.5), ('c', 0.3333333333333333)]
    """
    if rank_constant < 1:
        raise ConfigError(f"rank_constant must be >= 1, got {rank_constant}")
    if window is not None and window < 1:
        raise ConfigError(f"window must be >= 1, got {window}")
    # fsum is exactly rounded, so the sum (and the order) cannot depend on list order.
    contributions: dict[K, list[float]] = {}
    for ranked in ranked_lists:
        seen: set[K] = set()
        items = ranked if window is None else ranked[:window]
        for rank, item in enumerate(items, start=1):
            if item in seen:
                continue
            seen.add(item)
            contributions.setdefault(item, []).append(1.0 / (rank_constant + rank))
    scores = {item: math.fsum(parts) for item, parts in contributions.items()}
    return sorted(scores.items(), key=lambda kv: (-kv[1], str(kv[0])))


def fuse_hits(ranked: Sequence[Sequence[Hit]], *, rank_constant: int, window: int) -> list[Hit]:
    """Client-side RRF over hit lists (BM25 and kNN, or any child retrievers).

    Each fused hit carries its RRF score as ``retrieval_score`` and its fused rank; the
    first list that holds a chunk supplies its fields. At most ``window`` hits come back.

    Example:
        >>> a = Hit("a#0", "a", 0, "", "", {}, 1.0, 1)
        >>> b = Hit("b#0", "b", 0, "", "", {}, 1.0, 1)
        >>> [h.chunk_id for h in fuse_hits([[a, b], [b]], rank_constant=60, window=10)]
        ['b#0', 'a#0']
    """
    by_id: dict[str, Hit] = {}
    for hits in ranked:
        for h in hits:
            by_id.setdefault(h.chunk_id, h)
    fused = reciprocal_rank_fusion([[h.chunk_id for h in hits] for hits in ranked], rank_constant=rank_constant,
                                   window=window)
    return [dataclasses.replace(by_id[cid], retrieval_score=score, retrieval_rank=rank)
            for rank, (cid, score) in enumerate(fused[:window], start=1)]
