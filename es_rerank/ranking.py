"""Interim ordering helpers (replaced by the full ranking module)."""

from __future__ import annotations

import dataclasses
import math
from typing import Sequence

from .errors import RerankerError, ValidationError
from .types import Hit


def order_by_rerank(hits: Sequence[Hit], scores: Sequence[float]) -> tuple[list[Hit], int]:
    if len(scores) != len(hits):
        raise RerankerError(f"reranker returned {len(scores)} scores for {len(hits)} candidates")
    finite = [float(s) for s in scores if math.isfinite(float(s))]
    floor = (min(finite) if finite else 0.0) - 1.0
    clean = [float(s) if math.isfinite(float(s)) else floor for s in scores]
    fallbacks = sum(1 for s in scores if not math.isfinite(float(s)))
    order = sorted(range(len(hits)), key=lambda i: (-clean[i], hits[i].retrieval_rank))
    return [dataclasses.replace(hits[i], rerank_score=clean[i], rerank_rank=r) for r, i in enumerate(order, 1)], fallbacks


def blend(hits: Sequence[Hit], method: str, *, alpha: float = 0.5, rank_constant: int = 60) -> list[Hit]:
    if method != "none":
        raise ValidationError(f"blend {method!r} is not available yet")
    return list(hits)


def collapse(hits: Sequence[Hit], *, limit: int | None = None) -> list[Hit]:
    out: dict[str, Hit] = {}
    rest: dict[str, list[Hit]] = {}
    for h in hits:
        if h.doc_id in out:
            rest[h.doc_id].append(h)
        else:
            out[h.doc_id] = h
            rest[h.doc_id] = []
    docs = [dataclasses.replace(h, passages=tuple(rest[d])) for d, h in out.items()]
    return docs if limit is None else docs[:limit]
