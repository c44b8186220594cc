"""The ranking metrics es-rerank reports, in plain Python, for an install without ranx.

The quick start tunes on 22 questions with the runtime install only (no ``eval`` extra: ranx
brings numba, llvmlite, scipy, pandas and pyarrow, about 600 MB); :mod:`es_rerank.evaluate.metrics`
uses these functions there, and ranx wherever it is installed. The definitions are ranx's
(tests/test_plain_metrics.py checks them against it): a document is relevant when its grade is
at least 1; ``ndcg@k`` uses the grade as the gain with a ``log2(rank + 1)`` discount (Järvelin and
Kekäläinen), divided by the ideal ordering's; ``recall@k`` is the share of the relevant documents
in the top k; ``hit_rate@k`` 1 when any is; ``mrr@k`` the reciprocal rank of the first one. A
query with no relevant document scores 0. Rankings are by score, highest first (es-rerank's runs
have no ties: :func:`es_rerank.evaluate.metrics.doc_scores`).

Example:
    >>> value({"d1": 2, "d2": 1}, {"d2": 2.0, "d1": 1.0}, "recall@1")
    0.5
"""

from __future__ import annotations

import math
from typing import Mapping

from ..errors import ValidationError

METRICS = ("ndcg", "recall", "hit_rate", "mrr")


def parse(metric: str) -> tuple[str, int]:
    """``("ndcg", 10)`` from ``"ndcg@10"``.

    Raises:
        ValidationError: Not one of :data:`METRICS` with a cut-off of at least 1.
    """
    name, _, k = metric.partition("@")
    if name not in METRICS or not k.isdigit() or int(k) < 1:
        raise ValidationError(f"without ranx (pip install 'es-rerank[eval]') the metrics are "
                              f"{', '.join(m + '@K' for m in METRICS)}; got {metric!r}")
    return name, int(k)


def value(judged: Mapping[str, int], ranking: Mapping[str, float], metric: str) -> float:
    """One query's ``metric`` (see the module's definitions)."""
    name, k = parse(metric)
    relevant = {d: int(g) for d, g in judged.items() if int(g) >= 1}
    if not relevant:
        return 0.0
    top = sorted(ranking, key=lambda d: ranking[d], reverse=True)[:k]
    found = [i for i, d in enumerate(top) if d in relevant]
    if name == "recall":
        return len(found) / len(relevant)
    if name == "hit_rate":
        return 1.0 if found else 0.0
    if name == "mrr":
        return 1.0 / (found[0] + 1) if found else 0.0
    dcg = sum(relevant[top[i]] / math.log2(i + 2) for i in found)
    ideal = sorted(relevant.values(), reverse=True)[:k]
    return dcg / sum(g / math.log2(i + 2) for i, g in enumerate(ideal))


def per_query(qrels: Mapping[str, Mapping[str, int]], run: Mapping[str, Mapping[str, float]],
              metric: str) -> dict[str, float]:
    """``metric`` for every judged query, in ``qrels`` order (a query missing from ``run`` scores 0)."""
    parse(metric)
    return {q: value(judged, run.get(q) or {}, metric) for q, judged in qrels.items()}


__all__ = ["METRICS", "parse", "value", "per_query"]
